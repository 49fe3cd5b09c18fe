// The fprop / dgrad kernel: a grouped implicit GEMM over NHWC rows (output pixels), both branches in
// one launch. Included by conv_fprop.cu (DGRAD = false) and conv_dgrad.cu (DGRAD = true) only.
//
// Blocks [0, tiles_full) own one full-branch output tile (swizzled). When sharing is on and the small
// branch has the tile with the same (M, N) index, the block owns it as well ("paired"): every weight
// tile it loads for a channel block inside the small branch's K range feeds both accumulators. The
// remaining blocks own the small tiles nobody paired.
//
// A (K-major, from x or dz) is gathered per filter tap with bounds checks; B is the weight in KRSC
// order: K-major for fprop (B[k=(tap,c)][n=cout]), N-major for dgrad (B[k=(tap,cout)][n=cin]).
// dgrad with stride > 1 uses the same gather: a row/tap pair whose (h + pad - r*dil) is not a
// multiple of the stride contributes zero (correct, but wastes up to 1 - 1/(sh*sw) of the MMA work).
#pragma once

#include "device_common.cuh"

namespace adjoined {
namespace dev {

enum TileMode : int { kFull = 0, kPair = 1, kSmall = 2 };

template <bool DGRAD>
struct RowCtx {
  int n = 0, ha = 0, wa = 0;
  bool ok = false;

  __device__ __forceinline__ void setup(const RowBranch& b, const RowGemmParams& p, int m) {
    ok = m < b.M;
    const int mm = ok ? m : 0;
    const int hw = b.Ho * b.Wo;
    n = mm / hw;
    const int rem = mm - n * hw;
    const int ho = rem / b.Wo;
    const int wo = rem - ho * b.Wo;
    if (!DGRAD) {  // input pixel of tap (0, 0)
      ha = ho * p.sh - p.ph;
      wa = wo * p.sw - p.pw;
    } else {       // h + pad; the tap (r, s) reads dz at ((ha - r*dh) / sh, (wa - s*dw) / sw)
      ha = ho + p.ph;
      wa = wo + p.pw;
    }
  }
};

// A run: 16 channels [c0, c0 + 16) of the A-source pixel that row `rc` reads at tap (r, s).
template <typename T, bool DGRAD>
__device__ __forceinline__ void load_a(T (&ra)[16], const RowBranch& b, const RowGemmParams& p,
                                       const RowCtx<DGRAD>& rc, int r, int s, int c0, const T* scale) {
  int limit = 0;
  const T* ptr = nullptr;
  if (rc.ok) {
    int h, w;
    bool v;
    if (!DGRAD) {
      h = rc.ha + r * p.dh;
      w = rc.wa + s * p.dw;
      v = h >= 0 && h < b.Hs && w >= 0 && w < b.Ws;
    } else {
      const int hp = rc.ha - r * p.dh, wp = rc.wa - s * p.dw;
      v = hp >= 0 && wp >= 0 && (hp % p.sh) == 0 && (wp % p.sw) == 0;
      h = v ? hp / p.sh : 0;
      w = v ? wp / p.sw : 0;
      v = v && h < b.Hs && w < b.Ws;
    }
    if (v) {
      limit = b.Ka - c0;
      ptr = static_cast<const T*>(b.a) + ((static_cast<int64_t>(rc.n) * b.Hs + h) * b.Ws + w) * b.Ka + c0;
    }
  }
  load_run<T, 16>(ra, ptr, limit, b.vec_a != 0);
  if (scale != nullptr && limit > 0) scale_run<T, 16>(ra, scale + c0, limit);
}

template <typename T, bool DGRAD>
__global__ void __launch_bounds__(NT, sizeof(T) == 2 ? 2 : 1) rowgemm_kernel(const __grid_constant__ RowGemmParams p) {
  using Lay = TileLayout<T, true, !DGRAD>;
  using Mma = TileMma<T, true, !DGRAD>;
  constexpr int AB_BYTES = (2 * Lay::A_ELEMS + Lay::B_ELEMS) * static_cast<int>(sizeof(T));
  constexpr int SMEM = AB_BYTES > Lay::C_BYTES ? AB_BYTES : Lay::C_BYTES;
  static_assert(SMEM <= 48 * 1024, "static shared memory limit");
  __shared__ __align__(128) unsigned char smem[SMEM];
  T* As0 = reinterpret_cast<T*>(smem);
  T* As1 = As0 + Lay::A_ELEMS;
  T* Bs = As1 + Lay::A_ELEMS;
  float* Cs = reinterpret_cast<float*>(smem);

  // ---- which tile(s) this block owns
  int tm, tn, mode;
  const int bid = static_cast<int>(blockIdx.x);
  if (bid < p.tiles_full) {
    swizzle(bid, p.br[0].nm, p.br[0].nn, p.group_m, tm, tn);
    mode = (p.share && tm < p.br[1].nm && tn < p.br[1].nn) ? kPair : kFull;
  } else {
    const int t = bid - p.tiles_full;
    if (t >= p.tiles_small) return;  // never happens with the host's grid; whole block exits
    tm = t / p.br[1].nn;
    tn = t - tm * p.br[1].nn;
    if (p.share) tm += p.br[0].nm;  // small tiles with tm < nm_full were paired
    mode = kSmall;
  }
  const RowBranch& b0 = p.br[mode == kSmall ? 1 : 0];  // the branch of accumulator 0
  const RowBranch& b1 = p.br[1];                        // accumulator 1 (paired tiles only)
  const T* scale = static_cast<const T*>(p.scale);
  const T* a_scale0 = (DGRAD && mode == kSmall) ? scale : nullptr;
  const T* a_scale1 = DGRAD ? scale : nullptr;

  // ---- per-thread load assignments
  const int tid = threadIdx.x;
  const int a_row = tid >> 1, a_k0 = (tid & 1) * 16;           // A: K-major, 16-element runs
  const int bk_n = tid >> 2, bk_k0 = (tid & 3) * 8;            // B K-major (fprop): runs along k
  const int bn_k = tid >> 3, bn_n0 = (tid & 7) * 8;            // B N-major (dgrad): runs along n
  RowCtx<DGRAD> rc0, rc1;
  rc0.setup(b0, p, tm * BM + a_row);
  if (mode == kPair) rc1.setup(b1, p, tm * BM + a_row);

  const int RS = p.R * p.S;
  const int ncb_loop = b0.ncb;      // full: ceil(C_k/BK); small-only: the small branch's own
  const int ncb_pair = b1.ncb;      // paired: accumulator 1 takes channel blocks below this
  const int nkb = RS * ncb_loop;
  const T* wgt = static_cast<const T*>(p.w);

  T ra0[16], ra1[16], rb[8];
  auto load = [&](int kb) {
    const int tap = kb / ncb_loop, cb = kb - tap * ncb_loop;
    const int r = tap / p.S, s = tap - r * p.S;
    // weight run
    {
      int limit = 0;
      const T* ptr = nullptr;
      if (!DGRAD) {  // B[k = (tap, c)][n = cout]: 8 input channels of one output channel
        const int cout = tn * BN + bk_n, c0 = cb * BK + bk_k0;
        if (cout < p.C_out) {
          limit = p.C_in - c0;
          ptr = wgt + (static_cast<int64_t>(cout) * RS + tap) * p.C_in + c0;
        }
      } else {       // B[k = (tap, cout)][n = cin]: 8 input channels of one output channel
        const int cout = cb * BK + bn_k, c0 = tn * BN + bn_n0;
        if (cout < p.C_out) {
          limit = p.C_in - c0;
          ptr = wgt + (static_cast<int64_t>(cout) * RS + tap) * p.C_in + c0;
        }
      }
      load_run<T, 8>(rb, ptr, limit, p.vec_w != 0);
    }
    load_a<T, DGRAD>(ra0, b0, p, rc0, r, s, cb * BK + a_k0, a_scale0);
    if (mode == kPair && cb < ncb_pair) load_a<T, DGRAD>(ra1, b1, p, rc1, r, s, cb * BK + a_k0, a_scale1);
  };
  auto commit = [&](int kb) {
    const int cb = kb % ncb_loop;
    store_run_smem<T, 16>(As0 + a_row * Lay::LDA + a_k0, ra0);
    if (mode == kPair && cb < ncb_pair) store_run_smem<T, 16>(As1 + a_row * Lay::LDA + a_k0, ra1);
    if (!DGRAD) store_run_smem<T, 8>(Bs + bk_n * Lay::LDB + bk_k0, rb);
    else store_run_smem<T, 8>(Bs + bn_k * Lay::LDB + bn_n0, rb);
  };

  Mma acc0, acc1;
  acc0.zero();
  acc1.zero();
  load(0);
  commit(0);
  __syncthreads();
  for (int kb = 0; kb < nkb; ++kb) {
    const bool more = kb + 1 < nkb;
    if (more) load(kb + 1);  // global loads of the next K block overlap this block's MMAs
    acc0.step(As0, Bs);
    if (mode == kPair && (kb % ncb_loop) < ncb_pair) acc1.step(As1, Bs);  // block-uniform condition
    __syncthreads();
    if (more) commit(kb + 1);
    __syncthreads();
  }

  // ---- epilogue: stage each accumulator in shared memory, then coalesced, bounds-checked stores
  const T* bias = static_cast<const T*>(p.bias);
  auto write_out = [&](const RowBranch& b, bool small) {
    T* out = static_cast<T*>(b.out);
    T* pre = static_cast<T*>(b.out_pre);
    for (int idx = tid; idx < BM * BN; idx += NT) {
      const int i = idx / BN, j = idx - (idx / BN) * BN;
      const int m = tm * BM + i, n = tn * BN + j;
      if (m < b.M && n < b.n_out) {
        float v = Cs[i * Lay::LDC + j];
        if (!DGRAD) {
          if (bias != nullptr) v += to_f<T>(bias[n]);
          if (small) {
            if (pre != nullptr) pre[static_cast<int64_t>(m) * b.n_out + n] = from_f<T>(v);
            if (scale != nullptr) v *= to_f<T>(scale[n]);
          }
        }
        out[static_cast<int64_t>(m) * b.n_out + n] = from_f<T>(v);
      }
    }
  };
  acc0.store(Cs);  // the loop ended with a barrier, so the A/B tiles are free
  __syncthreads();
  write_out(b0, mode == kSmall);
  if (mode == kPair) {
    __syncthreads();
    acc1.store(Cs);
    __syncthreads();
    write_out(b1, true);
  }
}

template <typename T, bool DGRAD>
void launch_rowgemm_t(const RowGemmParams& p, cudaStream_t stream) {
  const long long blocks = static_cast<long long>(p.tiles_full) + p.tiles_small;
  if (blocks <= 0) return;
  launch_kernel(rowgemm_kernel<T, DGRAD>, dim3(static_cast<unsigned>(blocks)), dim3(NT), stream, p);
}

}  // namespace dev
}  // namespace adjoined
