// Fused adjoined conv, weight gradient (docs/maths.md, "Gradients"):
//   dW = wgrad(x_full, dz_full) + wgrad(x_small, dz_small * s) on the [:c_out_s, :c_in_s] block,
//   db = sum(dz_full) + s * sum(dz_small) on [:c_out_s],  d small_scale = sum(dz_small * u_small).
// Three launches: the split-K GEMM (both branches, one grid) into an fp32 workspace, per-channel
// partial sums for db / d small_scale, and one reduction writing dW, db and d small_scale. The GEMM reads
// dz_small already multiplied by s (the host does it: s runs along the GEMM's M). 16-bit problems with
// 16-byte rows run the GEMM on the pipelined kernel of conv_wgrad_tc.cuh.
// Every sum runs in a fixed order: the result is deterministic and no atomics are used.
#include <algorithm>

#include "device_mma.cuh"

namespace adjoined {
namespace dev {

// Block bid = (tile, split), split-major so that blocks running together share K ranges in L2; tile =
// (tm over C_out, filter tap, cbn over C_in). Its K blocks [lo, hi): the full branch's first, then, on
// tiles inside the [:c_out_s, :c_in_s] prefix, the small branch's (kb1 = the full branch's count).
struct WgTile {
  int split, tm, cbn, tap, r, s, kb1, lo, hi;

  __device__ __forceinline__ WgTile(const WgradParams& p, int bid) {
    split = bid / p.tiles;
    const int tile = bid - split * p.tiles;
    tm = tile % p.nm;
    const int rest = tile / p.nm;
    cbn = rest % p.ncbn;
    tap = rest / p.ncbn;
    r = tap / p.S;
    s = tap - r * p.S;
    kb1 = p.br[0].kb;
    const int kbt = kb1 + (tm < p.pm && cbn < p.pcbn ? p.br[1].kb : 0);
    const int per = (kbt + p.splits - 1) / p.splits;
    lo = min(kbt, split * per);
    hi = min(kbt, lo + per);
  }

  // The finished tile, staged in Cs [BM][ldc] fp32, to its split's workspace slice. Every (tile, split)
  // writes its whole in-bounds tile, zeros included: the workspace needs no memset.
  __device__ __forceinline__ void store(const WgradParams& p, const float* Cs, int ldc) const {
    const int RS = p.R * p.S;
    float* ws = p.ws + static_cast<int64_t>(split) * p.C_out * RS * p.C_in;
    for (int idx = threadIdx.x; idx < BM * BN; idx += NT) {
      const int i = idx / BN, j = idx - (idx / BN) * BN;
      const int co = tm * BM + i, ci = cbn * BN + j;
      if (co < p.C_out && ci < p.C_in) ws[(static_cast<int64_t>(co) * RS + tap) * p.C_in + ci] = Cs[i * ldc + j];
    }
  }
};

}  // namespace dev
}  // namespace adjoined

#include "conv_wgrad_tc.cuh"

namespace adjoined {
namespace dev {

// The general GEMM kernel (any channel count, fp32 by FMA). A = dz^T (M-major runs along C_out),
// B = im2col(x) for the tile's tap (N-major runs along C_in).
template <typename T>
__global__ void __launch_bounds__(NT) wgrad_kernel(const __grid_constant__ WgradParams p) {
  using Lay = TileLayout<T, false, false>;
  using Mma = TileMma<T, false, false>;
  constexpr int AB_BYTES = (Lay::A_ELEMS + Lay::B_ELEMS) * static_cast<int>(sizeof(T));
  constexpr int SMEM = AB_BYTES > Lay::C_BYTES ? AB_BYTES : Lay::C_BYTES;
  static_assert(SMEM <= 48 * 1024, "static shared memory limit");
  __shared__ __align__(128) unsigned char smem[SMEM];
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + Lay::A_ELEMS;
  float* Cs = reinterpret_cast<float*>(smem);

  const WgTile t(p, static_cast<int>(blockIdx.x));
  if (t.split >= p.splits) return;  // never happens with the host's grid; whole block exits
  const int tm = t.tm, cbn = t.cbn, r = t.r, s = t.s, kb1 = t.kb1, lo = t.lo, hi = t.hi;

  const int tid = threadIdx.x;
  const int k_loc = tid >> 3;                        // the K row (N*P*Q index) this thread loads
  const int a_m0 = (tid & 7) * 16;                   // A: 16 output channels
  const int b_n0 = (tid & 7) * 8;                    // B: 8 input channels
  const int cout0 = tm * BM + a_m0;
  const int cin0 = cbn * BN + b_n0;
  T ra[16], rb[8];
  auto load = [&](int kbi) {
    const int bi = kbi < kb1 ? 0 : 1;
    const WgBranch& b = p.br[bi];
    const int row = (kbi - (bi ? kb1 : 0)) * BK + k_loc;
    int la = 0, lb = 0;
    const T* pa = nullptr;
    const T* pb = nullptr;
    if (row < b.M) {
      la = b.cout - cout0;
      pa = static_cast<const T*>(b.dy) + static_cast<int64_t>(row) * b.cout + cout0;
      const int pq = b.P * b.Q;
      const int n = row / pq;
      const int rem = row - n * pq;
      const int op = rem / b.Q, oq = rem - (rem / b.Q) * b.Q;
      const int h = op * p.sh - p.ph + r * p.dh;
      const int w = oq * p.sw - p.pw + s * p.dw;
      if (h >= 0 && h < b.H && w >= 0 && w < b.W) {
        lb = b.cin - cin0;
        pb = static_cast<const T*>(b.x) + ((static_cast<int64_t>(n) * b.H + h) * b.W + w) * b.cin + cin0;
      }
    }
    load_run<T, 16>(ra, pa, la, b.vec_dy != 0);
    load_run<T, 8>(rb, pb, lb, b.vec_x != 0);
  };
  auto commit = [&]() {
    store_run_smem<T, 16>(As + k_loc * Lay::LDA + a_m0, ra);
    store_run_smem<T, 8>(Bs + k_loc * Lay::LDB + b_n0, rb);
  };

  Mma acc;
  acc.zero();
  if (lo < hi) {
    load(lo);
    commit();
    __syncthreads();
    for (int kb = lo; kb < hi; ++kb) {
      const bool more = kb + 1 < hi;
      if (more) load(kb + 1);
      acc.step(As, Bs);
      __syncthreads();
      if (more) commit();
      __syncthreads();
    }
  }
  acc.store(Cs);
  __syncthreads();
  t.store(p, Cs, Lay::LDC);
}

// Per-channel partial sums over row slices: blockDim (32, 8), blockIdx.x = channel block,
// blockIdx.y = row slice. Writes cws[slice][q][c] for q = sum dz_full, sum dz_small, sum dz_small*u.
template <typename T>
__global__ void __launch_bounds__(256) chan_partial_kernel(const ChanParams p) {
  __shared__ float red[3][8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * 32 + tx;
  const int slice = blockIdx.y;
  const int step = p.csplits * 8;
  float sf = 0.f, ss = 0.f, su = 0.f;
  if (c < p.C_out && p.dzf != nullptr) {
    const T* dz = static_cast<const T*>(p.dzf);
    for (int row = slice * 8 + ty; row < p.M1; row += step) sf += to_f<T>(dz[static_cast<int64_t>(row) * p.C_out + c]);
  }
  if (c < p.c_out_s && p.dzs != nullptr) {
    const T* dz = static_cast<const T*>(p.dzs);
    const T* u = static_cast<const T*>(p.us);
    for (int row = slice * 8 + ty; row < p.M2; row += step) {
      const int64_t o = static_cast<int64_t>(row) * p.c_out_s + c;
      const float g = to_f<T>(dz[o]);
      ss += g;
      if (u != nullptr) su += g * to_f<T>(u[o]);
    }
  }
  red[0][ty][tx] = sf;
  red[1][ty][tx] = ss;
  red[2][ty][tx] = su;
  __syncthreads();
  if (ty < 3 && c < p.C_out) {
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < 8; ++k) acc += red[ty][k][tx];
    p.cws[(static_cast<int64_t>(slice) * 3 + ty) * p.C_out + c] = acc;
  }
}

// dW[e] = sum_s ws[s][e] for e < E; then, for the C_out indices after E: db and d small_scale.
template <typename T>
__global__ void __launch_bounds__(256) wgrad_reduce_kernel(const WgradReduceParams p) {
  const int64_t total = (p.dw != nullptr ? p.E : 0) + (p.csplits > 0 ? p.C_out : 0);
  const int64_t e_end = p.dw != nullptr ? p.E : 0;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (e < e_end) {
      float acc = 0.f;
      for (int s = 0; s < p.splits; ++s) acc += p.ws[s * p.E + e];
      static_cast<T*>(p.dw)[e] = from_f<T>(acc);
    } else {
      const int c = static_cast<int>(e - e_end);
      float sf = 0.f, ss = 0.f, su = 0.f;
      for (int k = 0; k < p.csplits; ++k) {
        const float* w = p.cws + static_cast<int64_t>(k) * 3 * p.C_out;
        sf += w[c];
        ss += w[p.C_out + c];
        su += w[2 * p.C_out + c];
      }
      if (p.db != nullptr) {
        float v = sf;
        if (c < p.c_out_s) v += p.scale != nullptr ? to_f<T>(static_cast<const T*>(p.scale)[c]) * ss : ss;
        static_cast<T*>(p.db)[c] = from_f<T>(v);
      }
      if (p.dscale != nullptr && c < p.c_out_s) static_cast<T*>(p.dscale)[c] = from_f<T>(su);
    }
  }
}

template <typename T>
void launch_reduce_t(const WgradReduceParams& p, cudaStream_t stream) {
  const int64_t total = (p.dw != nullptr ? p.E : 0) + (p.csplits > 0 ? p.C_out : 0);
  if (total <= 0) return;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65536);
  launch_kernel(wgrad_reduce_kernel<T>, dim3(static_cast<unsigned>(blocks)), dim3(256), stream, p);
}

}  // namespace dev

#define ADJ_DISPATCH(dt, FN, ...)                                                   \
  switch (dt) {                                                                     \
    case DType::kFloat32: FN<float>(__VA_ARGS__); break;                            \
    case DType::kFloat16: FN<__half>(__VA_ARGS__); break;                           \
    case DType::kBFloat16: FN<__nv_bfloat16>(__VA_ARGS__); break;                   \
  }

namespace {
// The pipelined tensor-core kernel where it applies (wgrad_tc_ok), else the general one.
template <typename T>
void wgrad_t(const WgradParams& p, cudaStream_t stream) {
  if constexpr (sizeof(T) == 2) {
    if (dev::wgrad_tc_ok(p, 2)) return dev::launch_wgrad_tc_t<T>(p, stream);
  }
  const long long blocks = static_cast<long long>(p.tiles) * p.splits;
  if (blocks <= 0) return;
  dev::launch_kernel(dev::wgrad_kernel<T>, dim3(static_cast<unsigned>(blocks)), dim3(dev::NT), stream, p);
}
template <typename T>
void chan_t(const ChanParams& p, cudaStream_t stream) {
  dim3 grid((p.C_out + 31) / 32, p.csplits);
  dev::launch_kernel(dev::chan_partial_kernel<T>, grid, dim3(32, 8), stream, p);
}
}  // namespace

void launch_conv_wgrad(const WgradParams& p, DType dt, cudaStream_t stream) {
  ADJ_DISPATCH(dt, wgrad_t, p, stream);
  ADJ_LAUNCH_CHECK();
}

void launch_conv_chan_partial(const ChanParams& p, DType dt, cudaStream_t stream) {
  ADJ_DISPATCH(dt, chan_t, p, stream);
  ADJ_LAUNCH_CHECK();
}

void launch_conv_wgrad_reduce(const WgradReduceParams& p, DType dt, cudaStream_t stream) {
  ADJ_DISPATCH(dt, dev::launch_reduce_t, p, stream);
  ADJ_LAUNCH_CHECK();
}

}  // namespace adjoined
