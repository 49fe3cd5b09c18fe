// The fprop / dgrad kernel: a grouped implicit GEMM over NHWC rows (output pixels), both branches in
// one launch. Included by conv_fprop.cu (DGRAD = false) and conv_dgrad.cu (DGRAD = true) only. This is
// the general kernel (any channel count and alignment, fp32 by FMA); 16-bit problems with 16-byte rows
// take the pipelined tensor-core kernel of conv_rowgemm_tc.cuh, which shares the tile logic below.
//
// Rows are grouped into phase classes (qh, qw) of the output pixels, h = qh + sh*i, w = qw + sw*j, for
// dgrad (one class, the identity, for fprop). Within a class, a filter row r either reaches a dz row for
// every pixel or for none, so a dgrad block loops only over its class's taps: stride > 1 costs no wasted
// MMA work (the sub-pixel decomposition of strided dgrad). The valid r of a class form an arithmetic
// progression r0 + k * sh / gcd(sh, dh).
//
// Blocks first own the full branch's tiles, class by class (swizzled within a class). When sharing is on
// and the small branch has the tile with the same (class, M, N) index, the block owns it as well
// ("paired"): every weight tile it loads for a channel block inside the small branch's K range feeds both
// accumulators. The remaining blocks own the small tiles nobody paired.
//
// A (K-major, from x or dz) is gathered per filter tap with bounds checks; B is the weight in KRSC
// order: K-major for fprop (B[k=(tap,c)][n=cout]), N-major for dgrad (B[k=(tap,cout)][n=cin]).
#pragma once

#include "device_common.cuh"

namespace adjoined {
namespace dev {

enum TileMode : int { kFull = 0, kPair = 1, kSmall = 2 };

// Rows of phase class (qh, qw) in branch b: Hq x Wq pixels per image, ceil(Nb*Hq*Wq / BM) M tiles.
// The host computes the same counts (conv_ops.cpp, row_tiles); keep them in step.
struct PhaseDims {
  int Hq = 0, Wq = 0, nm = 0;
  __device__ __forceinline__ PhaseDims(const RowBranch& b, int qh, int qw, int psh, int psw) {
    Hq = qh < b.Ho ? (b.Ho - qh - 1) / psh + 1 : 0;
    Wq = qw < b.Wo ? (b.Wo - qw - 1) / psw + 1 : 0;
    nm = (b.Nb * Hq * Wq + BM - 1) / BM;
  }
};

template <bool DGRAD>
struct RowCtx {
  int n = 0, ha = 0, wa = 0, pix = -1;  // pix: output pixel index (n*Ho + h)*Wo + w, -1 past the end
  bool ok = false;

  __device__ __forceinline__ void setup(const RowBranch& b, const RowGemmParams& p, const PhaseDims& d, int qh,
                                        int qw, int m) {
    ok = m < b.Nb * d.Hq * d.Wq;
    const int mm = ok ? m : 0;
    const int hw = d.Hq * d.Wq;
    n = hw > 0 ? mm / hw : 0;
    const int rem = mm - n * hw;
    const int i = d.Wq > 0 ? rem / d.Wq : 0;
    const int j = rem - i * d.Wq;
    const int psh = DGRAD ? p.sh : 1, psw = DGRAD ? p.sw : 1;
    pix = ok ? (n * b.Ho + qh + psh * i) * b.Wo + qw + psw * j : -1;
    if (!DGRAD) {  // input pixel of tap (0, 0); the tap (r, s) adds (r*dh, s*dw)
      ha = i * p.sh - p.ph;
      wa = j * p.sw - p.pw;
    } else {       // dz pixel (i, j) plus the tap's offset ((qh + ph - r*dh) / sh, (qw + pw - s*dw) / sw)
      ha = i;
      wa = j;
    }
  }
};

// Valid filter offsets along one axis for phase q: r = r0 + k*step, k < count, with
// (q + pad - r*dil) divisible by the stride (fprop: every r; stride 1: every r).
struct TapAxis {
  int r0 = 0, step = 1, count = 0;
  __device__ __forceinline__ TapAxis(bool dgrad, int q, int pad, int dil, int stride, int K) {
    if (!dgrad || stride == 1) {
      count = K;
      return;
    }
    int a = stride, b = dil % stride;  // step = stride / gcd(stride, dil)
    while (b != 0) {
      const int t = a % b;
      a = b;
      b = t;
    }
    step = stride / a;
    r0 = -1;
    for (int r = 0; r < K && r < step; ++r)
      if (((q + pad - r * dil) % stride + stride) % stride == 0) {
        r0 = r;
        break;
      }
    count = r0 < 0 ? 0 : (K - 1 - r0) / step + 1;
    if (r0 < 0) r0 = 0;
  }
};

struct TileSel {
  int tm = 0, tn = 0, mode = -1, qh = 0, qw = 0;  // mode: kFull, kPair or kSmall; -1: no tile
};

// Block bid -> its tile(s): the full tiles class by class, paired with the small tile of the same index
// when sharing finds it, then the small tiles nobody paired. Matches row_tiles in conv_ops.cpp.
template <bool DGRAD>
__device__ __forceinline__ TileSel select_tile(const RowGemmParams& p, int bid) {
  const int psh = DGRAD ? p.sh : 1, psw = DGRAD ? p.sw : 1;
  const RowBranch& bf = p.br[0];
  const RowBranch& bs = p.br[1];
  TileSel t;
  int rem = bid;
  for (int q = 0; q < p.nqh * p.nqw && t.mode < 0; ++q) {  // full tiles, paired where possible
    t.qh = q / p.nqw;
    t.qw = q - t.qh * p.nqw;
    const PhaseDims df(bf, t.qh, t.qw, psh, psw), ds(bs, t.qh, t.qw, psh, psw);
    const int cnt = df.nm * bf.nn;
    if (rem < cnt) {
      swizzle(rem, df.nm, bf.nn, p.group_m, t.tm, t.tn);
      t.mode = (p.share && t.tm < ds.nm && t.tn < bs.nn) ? kPair : kFull;
    } else {
      rem -= cnt;
    }
  }
  for (int q = 0; q < p.nqh * p.nqw && t.mode < 0; ++q) {  // small tiles nobody paired
    t.qh = q / p.nqw;
    t.qw = q - t.qh * p.nqw;
    const PhaseDims df(bf, t.qh, t.qw, psh, psw), ds(bs, t.qh, t.qw, psh, psw);
    const int first = p.share ? df.nm : 0;
    const int cnt = (ds.nm > first ? ds.nm - first : 0) * bs.nn;
    if (rem < cnt) {
      t.tm = first + rem / bs.nn;
      t.tn = rem - (rem / bs.nn) * bs.nn;
      t.mode = kSmall;
    } else {
      rem -= cnt;
    }
  }
  return t;
}

// Epilogue of one accumulator staged in Cs [BM][ldc] fp32: coalesced, bounds-checked stores to the
// rows' output pixels (pix[i] < 0: no row). fprop adds the bias; a small tile (``small``) also stores the
// pre-scale value (out_pre) and applies small_scale.
template <typename T, bool DGRAD>
__device__ __forceinline__ void write_tile(const RowGemmParams& p, const RowBranch& b, const float* Cs, int ldc,
                                           const int* pix, int tn, bool small) {
  const T* bias = static_cast<const T*>(p.bias);
  const T* scale = static_cast<const T*>(p.scale);
  T* out = static_cast<T*>(b.out);
  T* pre = static_cast<T*>(b.out_pre);
  for (int idx = threadIdx.x; idx < BM * BN; idx += NT) {
    const int i = idx / BN, j = idx - (idx / BN) * BN;
    const int px = pix[i], n = tn * BN + j;
    if (px >= 0 && n < b.n_out) {
      const int64_t o = static_cast<int64_t>(px) * b.n_out + n;
      float v = Cs[i * ldc + j];
      if (!DGRAD) {
        if (bias != nullptr) v += to_f<T>(bias[n]);
        if (small) {
          if (pre != nullptr) pre[o] = from_f<T>(v);
          if (scale != nullptr) v *= to_f<T>(scale[n]);
        }
      }
      out[o] = from_f<T>(v);
    }
  }
}

// A run: 16 channels [c0, c0 + 16) of the A-source pixel that row `rc` reads at a tap whose offset from
// the row's base pixel is (oh, ow).
template <typename T, bool DGRAD>
__device__ __forceinline__ void load_a(T (&ra)[16], const RowBranch& b, const RowCtx<DGRAD>& rc, int oh, int ow,
                                       int c0) {
  int limit = 0;
  const T* ptr = nullptr;
  if (rc.ok) {
    const int h = rc.ha + oh, w = rc.wa + ow;
    if (h >= 0 && h < b.Hs && w >= 0 && w < b.Ws) {
      limit = b.Ka - c0;
      ptr = static_cast<const T*>(b.a) + ((static_cast<int64_t>(rc.n) * b.Hs + h) * b.Ws + w) * b.Ka + c0;
    }
  }
  load_run<T, 16>(ra, ptr, limit, b.vec_a != 0);
}

template <typename T, bool DGRAD>
__global__ void __launch_bounds__(NT, sizeof(T) == 2 ? 2 : 1) rowgemm_kernel(const __grid_constant__ RowGemmParams p) {
  using Lay = TileLayout<T, true, !DGRAD>;
  using Mma = TileMma<T, true, !DGRAD>;
  constexpr int AB_BYTES = (2 * Lay::A_ELEMS + Lay::B_ELEMS) * static_cast<int>(sizeof(T));
  constexpr int SMEM = AB_BYTES > Lay::C_BYTES ? AB_BYTES : Lay::C_BYTES;
  static_assert(SMEM + 2 * BM * 4 <= 48 * 1024, "static shared memory limit");
  __shared__ __align__(128) unsigned char smem[SMEM];
  __shared__ int row_pix[2][BM];  // output pixel of each tile row, per accumulator (-1: no row)
  T* As0 = reinterpret_cast<T*>(smem);
  T* As1 = As0 + Lay::A_ELEMS;
  T* Bs = As1 + Lay::A_ELEMS;
  float* Cs = reinterpret_cast<float*>(smem);

  // ---- which tile(s) this block owns: (phase class, tm, tn) and the mode
  const TileSel sel = select_tile<DGRAD>(p, static_cast<int>(blockIdx.x));
  const int tm = sel.tm, tn = sel.tn, mode = sel.mode, qh = sel.qh, qw = sel.qw;
  if (mode < 0) return;  // never happens with the host's grid; the whole block exits
  const int psh = DGRAD ? p.sh : 1, psw = DGRAD ? p.sw : 1;
  const RowBranch& bf = p.br[0];
  const RowBranch& bs = p.br[1];
  const RowBranch& b0 = mode == kSmall ? bs : bf;  // the branch of accumulator 0
  const RowBranch& b1 = bs;                        // accumulator 1 (paired tiles only)
  const TapAxis tr(DGRAD, qh, p.ph, p.dh, p.sh, p.R), ts(DGRAD, qw, p.pw, p.dw, p.sw, p.S);

  // ---- per-thread load assignments
  const int tid = threadIdx.x;
  const int a_row = tid >> 1, a_k0 = (tid & 1) * 16;           // A: K-major, 16-element runs
  const int bk_n = tid >> 2, bk_k0 = (tid & 3) * 8;            // B K-major (fprop): runs along k
  const int bn_k = tid >> 3, bn_n0 = (tid & 7) * 8;            // B N-major (dgrad): runs along n
  RowCtx<DGRAD> rc0, rc1;
  rc0.setup(b0, p, PhaseDims(b0, qh, qw, psh, psw), qh, qw, tm * BM + a_row);
  if (mode == kPair) rc1.setup(b1, p, PhaseDims(b1, qh, qw, psh, psw), qh, qw, tm * BM + a_row);
  if ((tid & 1) == 0) {  // published by the barrier after the first commit
    row_pix[0][a_row] = rc0.pix;
    row_pix[1][a_row] = rc1.pix;
  }

  const int RS = p.R * p.S;
  const int ncb_loop = b0.ncb;      // full: ceil(C_k/BK); small-only: the small branch's own
  const int ncb_pair = b1.ncb;      // paired: accumulator 1 takes channel blocks below this
  const int nkb = tr.count * ts.count * ncb_loop;
  const T* wgt = static_cast<const T*>(p.w);

  T ra0[16], ra1[16], rb[8];
  auto load = [&](int kb) {
    const int ti = kb / ncb_loop, cb = kb - ti * ncb_loop;
    const int ri = ti / ts.count, si = ti - (ti / ts.count) * ts.count;
    const int r = tr.r0 + ri * tr.step, s = ts.r0 + si * ts.step;
    const int tap = r * p.S + s;
    // offset of the tap's A pixel from the row's base pixel
    const int oh = DGRAD ? (qh + p.ph - r * p.dh) / p.sh : r * p.dh;
    const int ow = DGRAD ? (qw + p.pw - s * p.dw) / p.sw : s * p.dw;
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
    load_a<T, DGRAD>(ra0, b0, rc0, oh, ow, cb * BK + a_k0);
    if (mode == kPair && cb < ncb_pair) load_a<T, DGRAD>(ra1, b1, rc1, oh, ow, cb * BK + a_k0);
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
  if (nkb > 0) {  // a dgrad phase class may have no tap at all: its pixels get zeros
    load(0);
    commit(0);
  }
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
  acc0.store(Cs);  // the loop ended with a barrier, so the A/B tiles are free
  __syncthreads();
  write_tile<T, DGRAD>(p, b0, Cs, Lay::LDC, row_pix[0], tn, mode == kSmall);
  if (mode == kPair) {
    __syncthreads();
    acc1.store(Cs);
    __syncthreads();
    write_tile<T, DGRAD>(p, b1, Cs, Lay::LDC, row_pix[1], tn, true);
  }
}

}  // namespace dev
}  // namespace adjoined

#include "conv_rowgemm_tc.cuh"

namespace adjoined {
namespace dev {

// The pipelined tensor-core kernel where it applies (rowgemm_tc_ok), else the general one.
template <typename T, bool DGRAD>
void launch_rowgemm_t(const RowGemmParams& p, cudaStream_t stream) {
  if constexpr (sizeof(T) == 2) {
    if (rowgemm_tc_ok(p, 2)) return launch_rowgemm_tc_t<T, DGRAD>(p, stream);
  }
  const long long blocks = static_cast<long long>(p.tiles_full) + p.tiles_small;
  if (blocks <= 0) return;
  launch_kernel(rowgemm_kernel<T, DGRAD>, dim3(static_cast<unsigned>(blocks)), dim3(NT), stream, p);
}

}  // namespace dev
}  // namespace adjoined
