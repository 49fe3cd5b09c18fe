// The pipelined tensor-core variant of the wgrad GEMM (16-bit types, sm_80+), for problems whose dz and x
// rows are whole 16-byte vectors (channel counts divisible by 8, aligned pointers). Same tiles, split-K
// ranges and workspace as wgrad_kernel (conv_wgrad.cu), but the tiles go global -> shared by cp.async with
// zero fill through a 3-stage ring (one barrier per K block), and warps multiply with ldmatrix.trans
// fragments (both operands are stored major-first: A = dz^T runs along C_out, B = im2col(x) along C_in)
// and mma.sync m16n8k16. Included by conv_wgrad.cu only, after its WgTile.
#pragma once

#include "device_mma.cuh"

namespace adjoined {
namespace dev {

// One ring stage: A [BK][TC_LDM] (a pixel row of dz per K row, C_out contiguous), B [BK][TC_LDN] (the
// tap's input pixel per K row, C_in contiguous). Three stages fit in 48 KB (no opt-in needed); the buffer is
// dynamic shared memory all the same, where the emulation keeps the shared addresses of cp.async/ldmatrix.
struct WgTcLayout {
  static constexpr int STAGES = 3;
  static constexpr int A_ELEMS = BK * TC_LDM, B_ELEMS = BK * TC_LDN;
  static constexpr int STAGE_BYTES = 2 * (A_ELEMS + B_ELEMS);
  static constexpr int C_BYTES = BM * TC_LDC * 4;
  static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES > C_BYTES ? STAGES * STAGE_BYTES : C_BYTES;
};

// (n, p, q) of a thread's K row (an output pixel), advanced by BK rows per K block with carries instead of
// two divisions by runtime values per block; re-derived by division where a branch's rows start.
struct PixelRow {
  int n = 0, op = 0, oq = 0, dn = 0, dp = 0, dq = 0;

  __device__ __forceinline__ void init(int row, int P, int Q) {
    const int pq = P * Q;
    n = row / pq;
    const int rem = row - n * pq;
    op = rem / Q;
    oq = rem - op * Q;
    dn = BK / pq;
    dp = (BK - dn * pq) / Q;
    dq = BK - dn * pq - dp * Q;
  }

  __device__ __forceinline__ void next(int P, int Q) {
    oq += dq;
    op += dp;
    if (oq >= Q) {
      oq -= Q;
      ++op;
    }
    n += dn;
    if (op >= P) {
      op -= P;
      ++n;
    }
  }
};

template <typename T>
__global__ void __launch_bounds__(NT, 2) wgrad_tc_kernel(const __grid_constant__ WgradParams p) {
  using L = WgTcLayout;
  static_assert(L::SMEM_BYTES <= 48 * 1024, "over the default dynamic shared memory limit");
#ifdef ADJ_EMULATE
  unsigned char* smem = emu::dynamic_smem();
#else
  extern __shared__ __align__(128) unsigned char smem[];
#endif
  float* Cs = reinterpret_cast<float*>(smem);

  const WgTile t(p, static_cast<int>(blockIdx.x));
  if (t.split >= p.splits) return;  // never happens with the host's grid; whole block exits
  const int tm = t.tm, cbn = t.cbn, r = t.r, s = t.s, kb1 = t.kb1, lo = t.lo, hi = t.hi;

  // ---- per-thread copies of one K row (a pixel): A two 8-channel chunks of dz, B one of x
  const int tid = threadIdx.x;
  const int k_loc = tid >> 3;
  const int cout0 = tm * BM + (tid & 7) * 16, cin0 = cbn * BN + (tid & 7) * 8;
  const unsigned ring = smem_u32(smem);
  const unsigned a_dst = 2 * (k_loc * TC_LDM + (tid & 7) * 16);
  const unsigned b_dst = 2 * (L::A_ELEMS + k_loc * TC_LDN + (tid & 7) * 8);

  PixelRow px;
  int px_branch = -1;  // the branch px follows
  auto issue = [&](int kbi, unsigned stage) {  // K block kbi (full branch's first, then the small's), ascending
    const int bi = kbi < kb1 ? 0 : 1;
    const WgBranch& b = p.br[bi];
    const int row = (kbi - (bi ? kb1 : 0)) * BK + k_loc;
    if (bi != px_branch) {
      px.init(row, b.P, b.Q);
      px_branch = bi;
    } else {
      px.next(b.P, b.Q);
    }
    const bool in_row = row < b.M;
    const T* dy = static_cast<const T*>(b.dy) + (in_row ? static_cast<int64_t>(row) * b.cout : 0);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool in = in_row && cout0 + 8 * h < b.cout;
      cp_async16(stage + a_dst + 16 * h, in ? dy + cout0 + 8 * h : dy, in ? 16 : 0);
    }
    const T* x = static_cast<const T*>(b.x);
    int bytes = 0;
    if (in_row && cin0 < b.cin) {
      const int hh = px.op * p.sh - p.ph + r * p.dh;
      const int ww = px.oq * p.sw - p.pw + s * p.dw;
      if (hh >= 0 && hh < b.H && ww >= 0 && ww < b.W) {
        x += ((static_cast<int64_t>(px.n) * b.H + hh) * b.W + ww) * b.cin + cin0;
        bytes = 16;
      }
    }
    cp_async16(stage + b_dst, x, bytes);
  };

  const int warp = tid >> 5, wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  WarpAcc<true, true> acc(wm, wn);
#pragma unroll
  for (int st = 0; st < L::STAGES - 1; ++st) {  // prologue: the first STAGES - 1 K blocks in flight
    if (lo + st < hi) issue(lo + st, ring + st * L::STAGE_BYTES);
    cp_async_commit();
  }
  unsigned use = ring, fill = ring + (L::STAGES - 1) * L::STAGE_BYTES;  // stage multiplied / being filled
  const unsigned ring_end = ring + L::STAGES * L::STAGE_BYTES;
  for (int kb = lo; kb < hi; ++kb) {
    cp_async_wait<L::STAGES - 2>();  // this thread's copies of block kb have landed
    __syncthreads();                 // everyone's have; and block kb - 1's stage is free again
    if (kb + L::STAGES - 1 < hi) issue(kb + L::STAGES - 1, fill);
    cp_async_commit();
    acc.template step<T, false>(acc, use, use, use + 2 * L::A_ELEMS);
    use = use + L::STAGE_BYTES == ring_end ? ring : use + L::STAGE_BYTES;
    fill = fill + L::STAGE_BYTES == ring_end ? ring : fill + L::STAGE_BYTES;
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the ring: the epilogue reuses it

  acc.store(Cs, wm, wn);
  __syncthreads();
  t.store(p, Cs, TC_LDC);
}

// Whether the pipelined kernel takes these parameters: 16-bit type, compute capability 8.0+, and every
// dz and x row a whole number of 16-byte vectors at 16-byte aligned addresses. Otherwise wgrad_kernel runs.
inline bool wgrad_tc_ok(const WgradParams& p, int elem_size) {
  return elem_size == 2 && p.br[0].vec_x && p.br[0].vec_dy && p.br[1].vec_x && p.br[1].vec_dy && tc_arch_ok();
}

template <typename T>
void launch_wgrad_tc_t(const WgradParams& p, cudaStream_t stream) {
  const long long blocks = static_cast<long long>(p.tiles) * p.splits;
  if (blocks <= 0) return;
#ifdef ADJ_EMULATE
  emu::set_dynamic_smem(WgTcLayout::SMEM_BYTES);
  emu::launch(wgrad_tc_kernel<T>, dim3(static_cast<unsigned>(blocks)), dim3(NT), p);
#else
  wgrad_tc_kernel<T><<<dim3(static_cast<unsigned>(blocks)), dim3(NT), WgTcLayout::SMEM_BYTES, stream>>>(p);
#endif
}

}  // namespace dev
}  // namespace adjoined
