// The pipelined tensor-core variant of the fprop / dgrad kernel (16-bit types, sm_80+), for problems whose
// A rows and weight rows are whole 16-byte vectors (channel counts divisible by 8, aligned pointers):
// the common case. Same tiles, tile ownership, K order and epilogue as rowgemm_kernel (conv_rowgemm.cuh),
// but A and B tiles go straight from global to shared memory by cp.async (zero fill for padding and
// bounds, no register staging, no per-element branches), through a ring of STAGES buffers with one
// barrier per K block, and the warps read MMA fragments with ldmatrix and multiply with mma.sync m16n8k16.
// Included by conv_fprop.cu and conv_dgrad.cu through conv_rowgemm.cuh.
#pragma once

#include "device_mma.cuh"

namespace adjoined {
namespace dev {

// Shared-memory geometry of one ring stage: A0 and A1 [BM][TC_LDK] (K-major; A1 for paired tiles), then
// B: K-major [BN][TC_LDK] for fprop, N-major [BK][TC_LDN] for dgrad.
struct TcLayout {
  static constexpr int STAGES = 3;
  static constexpr int A_ELEMS = BM * TC_LDK;
  static constexpr int B_ELEMS = BN * TC_LDK > BK * TC_LDN ? BN * TC_LDK : BK * TC_LDN;
  static constexpr int STAGE_ELEMS = 2 * A_ELEMS + B_ELEMS;
  static constexpr int RING_BYTES = STAGES * STAGE_ELEMS * 2;
  static constexpr int C_BYTES = BM * TC_LDC * 4;
  static constexpr int SMEM_BYTES = RING_BYTES > C_BYTES ? RING_BYTES : C_BYTES;
};

// The K blocks of a tile in order: (filter tap of the class, channel block), channel blocks fastest,
// advanced by counters (no divisions per block). oh/ow: the tap's A-pixel offset from the row's base pixel;
// in dgrad it moves by an exact -step*dil/stride per tap step.
template <bool DGRAD>
struct KIter {
  int cb = 0, si = 0, tap, oh, ow;
  int ncb, ns, sstep, tap_wrap, oh_step, ow_step, ow0;

  __device__ __forceinline__ KIter(const RowGemmParams& p, const TapAxis& tr, const TapAxis& ts, int qh, int qw,
                                   int ncb_) {
    ncb = ncb_;
    ns = ts.count;
    sstep = ts.step;
    tap = tr.r0 * p.S + ts.r0;
    tap_wrap = tr.step * p.S - (ns - 1) * sstep;  // from the last s of a row of taps to the first of the next
    oh = DGRAD ? (qh + p.ph - tr.r0 * p.dh) / p.sh : tr.r0 * p.dh;
    ow0 = ow = DGRAD ? (qw + p.pw - ts.r0 * p.dw) / p.sw : ts.r0 * p.dw;
    oh_step = DGRAD ? -(tr.step * p.dh) / p.sh : tr.step * p.dh;
    ow_step = DGRAD ? -(ts.step * p.dw) / p.sw : ts.step * p.dw;
  }

  __device__ __forceinline__ void next() {
    if (++cb < ncb) return;
    cb = 0;
    if (++si < ns) {
      tap += sstep;
      ow += ow_step;
      return;
    }
    si = 0;
    tap += tap_wrap;
    ow = ow0;
    oh += oh_step;
  }
};

// Row `rc`'s A source: the image base and the base pixel, for 16-byte copies at any tap and channel.
template <typename T, bool DGRAD>
struct ARow {
  const T* img = nullptr;  // the row's image, NHWC [Hs][Ws][Ka]; a valid address even without a row
  int ha = 0, wa = 0, Hs = 0, Ws = 0, Ka = 0;  // held in registers, not re-read from the parameters

  __device__ __forceinline__ ARow(const RowBranch& b, const RowCtx<DGRAD>& rc) {
    img = static_cast<const T*>(b.a) + (rc.ok ? static_cast<int64_t>(rc.n) * b.Hs * b.Ws * b.Ka : 0);
    ha = rc.ha;
    wa = rc.wa;
    Hs = rc.ok ? b.Hs : 0;  // no row: every copy is out of bounds
    Ws = b.Ws;
    Ka = b.Ka;
  }

  // 16 bytes at the tap's offset (oh, ow), channels [c0, c0 + 8), to shared address dst; zeros outside.
  __device__ __forceinline__ void issue(unsigned dst, int oh, int ow, int c0) const {
    const int h = ha + oh, w = wa + ow;
    const bool in = c0 < Ka && h >= 0 && h < Hs && w >= 0 && w < Ws;
    cp_async16(dst, in ? img + (h * Ws + w) * Ka + c0 : img, in ? 16 : 0);
  }
};

template <typename T, bool DGRAD>
__global__ void __launch_bounds__(NT, 2) rowgemm_tc_kernel(const __grid_constant__ RowGemmParams p) {
  using L = TcLayout;
  constexpr unsigned A_BYTES = 2 * L::A_ELEMS, STAGE_BYTES = 2 * L::STAGE_ELEMS;
#ifdef ADJ_EMULATE
  unsigned char* smem = emu::dynamic_smem();
#else
  extern __shared__ __align__(128) unsigned char smem[];
#endif
  __shared__ int row_pix[2][BM];  // output pixel of each tile row, per accumulator (-1: no row)
  const unsigned ring = smem_u32(smem);
  float* Cs = reinterpret_cast<float*>(smem);

  const TileSel sel = select_tile<DGRAD>(p, static_cast<int>(blockIdx.x));
  const int tm = sel.tm, tn = sel.tn, mode = sel.mode, qh = sel.qh, qw = sel.qw;
  if (mode < 0) return;  // never happens with the host's grid; the whole block exits
  const int psh = DGRAD ? p.sh : 1, psw = DGRAD ? p.sw : 1;
  const RowBranch& b0 = mode == kSmall ? p.br[1] : p.br[0];  // the branch of accumulator 0
  const RowBranch& b1 = p.br[1];                             // accumulator 1 (paired tiles only)
  const bool pair = mode == kPair;
  const TapAxis tr(DGRAD, qh, p.ph, p.dh, p.sh, p.R), ts(DGRAD, qw, p.pw, p.dw, p.sw, p.S);

  // ---- per-thread copies: A two 8-channel chunks of one row (per accumulator), B one 8-element chunk
  const int tid = threadIdx.x;
  const int a_row = tid >> 1, a_k0 = (tid & 1) * 16;
  RowCtx<DGRAD> rc0, rc1;
  rc0.setup(b0, p, PhaseDims(b0, qh, qw, psh, psw), qh, qw, tm * BM + a_row);
  if (pair) rc1.setup(b1, p, PhaseDims(b1, qh, qw, psh, psw), qh, qw, tm * BM + a_row);
  if ((tid & 1) == 0) {  // published by the first barrier of the K loop (or the one before the epilogue)
    row_pix[0][a_row] = rc0.pix;
    row_pix[1][a_row] = rc1.pix;
  }
  const ARow<T, DGRAD> ar0(b0, rc0), ar1(b1, rc1);
  const unsigned a_dst = 2 * (a_row * TC_LDK + a_k0);
  // B chunk: fprop B[n = cout][k = cin] (8 input channels of one output channel, along k); dgrad
  // B[k = cout][n = cin] (8 input channels, along n). The weight is KRSC: [C_out][R*S][C_in].
  const int RS = p.R * p.S;
  const int b_n = DGRAD ? tid & 7 : tid >> 2, b_k = DGRAD ? tid >> 3 : tid & 3;
  const int cout0 = DGRAD ? b_k : tn * BN + b_n;           // fprop: fixed; dgrad: plus cb * BK
  const int cin0 = DGRAD ? tn * BN + 8 * b_n : 8 * b_k;    // fprop: plus cb * BK; dgrad: fixed
  const unsigned b_dst = 2 * (2 * L::A_ELEMS + (DGRAD ? b_k * TC_LDN + 8 * b_n : b_n * TC_LDK + 8 * b_k));
  const T* wgt = static_cast<const T*>(p.w);

  const int ncb_pair = b1.ncb;  // paired: accumulator 1 takes channel blocks below this
  const int nkb = tr.count * ts.count * b0.ncb;
  KIter<DGRAD> ki(p, tr, ts, qh, qw, b0.ncb);

  auto issue = [&](unsigned stage) {  // the K block `ki` points at, into the ring stage at `stage`
    const int c0 = ki.cb * BK + a_k0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      ar0.issue(stage + a_dst + 16 * h, ki.oh, ki.ow, c0 + 8 * h);
      if (pair && ki.cb < ncb_pair) ar1.issue(stage + A_BYTES + a_dst + 16 * h, ki.oh, ki.ow, c0 + 8 * h);
    }
    const int cout = cout0 + (DGRAD ? ki.cb * BK : 0), cin = cin0 + (DGRAD ? 0 : ki.cb * BK);
    const bool in = cout < p.C_out && cin < p.C_in;
    cp_async16(stage + b_dst, in ? wgt + (static_cast<int64_t>(cout) * RS + ki.tap) * p.C_in + cin : wgt, in ? 16 : 0);
    ki.next();
  };

  const int warp = tid >> 5, wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  WarpAcc<false, DGRAD> acc0(wm, wn), acc1(wm, wn);
#pragma unroll
  for (int s = 0; s < L::STAGES - 1; ++s) {  // prologue: the first STAGES - 1 K blocks in flight
    if (s < nkb) issue(ring + s * STAGE_BYTES);
    cp_async_commit();
  }
  unsigned use = ring, fill = ring + (L::STAGES - 1) * STAGE_BYTES;  // stage multiplied / being filled
  const unsigned ring_end = ring + L::STAGES * STAGE_BYTES;
  int cb = 0;  // channel block of the K block being multiplied
  for (int kb = 0; kb < nkb; ++kb) {
    cp_async_wait<L::STAGES - 2>();  // this thread's copies of block kb have landed
    __syncthreads();                 // everyone's have; and block kb - 1's stage is free again
    if (kb + L::STAGES - 1 < nkb) issue(fill);
    cp_async_commit();
    if (pair && cb < ncb_pair)  // block-uniform
      acc0.template step<T, true>(acc1, use, use + A_BYTES, use + 2 * A_BYTES);
    else
      acc0.template step<T, false>(acc1, use, use, use + 2 * A_BYTES);
    if (++cb == b0.ncb) cb = 0;
    use = use + STAGE_BYTES == ring_end ? ring : use + STAGE_BYTES;
    fill = fill + STAGE_BYTES == ring_end ? ring : fill + STAGE_BYTES;
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the ring: the epilogue reuses it

  // ---- epilogue: stage each accumulator in shared memory, then coalesced, bounds-checked stores
  acc0.store(Cs, wm, wn);
  __syncthreads();
  write_tile<T, DGRAD>(p, b0, Cs, TC_LDC, row_pix[0], tn, mode == kSmall);
  if (pair) {
    __syncthreads();
    acc1.store(Cs, wm, wn);
    __syncthreads();
    write_tile<T, DGRAD>(p, b1, Cs, TC_LDC, row_pix[1], tn, true);
  }
}

// Whether the pipelined kernel takes these parameters: 16-bit type, a GPU of compute capability 8.0 or newer
// (cp.async, bf16 mma.sync), and every A and weight row a whole number of 16-byte vectors at 16-byte
// aligned addresses (the host's vec flags). Otherwise rowgemm_kernel runs.
inline bool rowgemm_tc_ok(const RowGemmParams& p, int elem_size) {
  return elem_size == 2 && p.vec_w && p.br[0].vec_a && p.br[1].vec_a && tc_arch_ok();
}

template <typename T, bool DGRAD>
void launch_rowgemm_tc_t(const RowGemmParams& p, cudaStream_t stream) {
  const long long blocks = static_cast<long long>(p.tiles_full) + p.tiles_small;
  if (blocks <= 0) return;
  constexpr int smem = TcLayout::SMEM_BYTES;  // over the 48 KB default: opted in per launch (per device)
#ifdef ADJ_EMULATE
  emu::set_dynamic_smem(smem);
  emu::launch(rowgemm_tc_kernel<T, DGRAD>, dim3(static_cast<unsigned>(blocks)), dim3(NT), p);
#else
  C10_CUDA_CHECK(cudaFuncSetAttribute(rowgemm_tc_kernel<T, DGRAD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  rowgemm_tc_kernel<T, DGRAD><<<dim3(static_cast<unsigned>(blocks)), dim3(NT), smem, stream>>>(p);
#endif
}

}  // namespace dev
}  // namespace adjoined
