// Fused adjoined loss (docs/maths.md; "Adjoined Networks", Def. 1, Eq. 3): one warp per row (C <= kWarpRowMax, reductions
// by shuffles only) or one block per row computes the row's loss term and both gradients in the forward
// pass, over rows of any length C:
//   pass 1: online log-sum-exp of lf, lf/T and ls/T (and, for eps == 0, E_p[lf/T - ls/T] under the
//           same rescaling), in base 2, each thread rescaling once per kBatch of its elements; merged
//           across the block;
//   pass 2 (eps > 0 only): KL, <p, b> and sum r from explicit p and q;
//   pass 3: both gradients, already scaled by the reduction (1/n_valid for CE, 1/B for KL under "mean").
// Per class the maths is ex2/lg2/rcp.approx (one MUFU each), as in the Triton kernel. sm_90 SASS of the
// loop bodies (bf16, static: both eps paths of a loop counted): about 27 + 25 + 58 instructions per class
// for the three passes, against 125 + 119 + 154 and 4 slow-path calls with expf, logf and '/'.
// "sum"/"mean" reduce the per-row fp32 shares with one single-block kernel in a fixed order.
// n_valid and lam stay on the device: nothing syncs with the host.
#include <cmath>

#include "device_common.cuh"

namespace adjoined {
namespace dev {

constexpr int kLossThreads = 256;
constexpr int kWarpRowMax = 2048;  // rows up to this many classes take one warp each (64 classes per thread)
constexpr int kBatch = 8;  // pass 1: elements per thread between rescales of its running sums
constexpr float kNegInf = -INFINITY;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
// Floor of a running max (base-2 units): finite, so max - max is never inf - inf; -inf logits add 0.
constexpr float kFloor = -3.0e38f;

// One MUFU each, as in the Triton kernel (adjoined_kernels/ops/loss/triton/math.py): ex2.approx (relative
// error ~2^-22; -inf gives 0), lg2.approx (absolute error ~2^-22) and rcp.approx (1 ulp). expf, logf and
// '/' compile to range-reduced sequences and slow-path calls: ~3x the instructions per class. Arguments of
// lg2 and rcp are normal numbers here (the launcher keeps eps >= 2^-126), so ftz changes nothing.
__device__ __forceinline__ float ex2(float x) {
#ifdef ADJ_EMULATE
  return std::exp2(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ float lg2(float x) {
#ifdef ADJ_EMULATE
  return std::log2(x);
#else
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ float rcp(float x) {
#ifdef ADJ_EMULATE
  return 1.f / x;
#else
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// A running (max, sum 2^(u - max), sum 2^(u - max) * d) in base-2 units, rescaled to a new max m2.
__device__ __forceinline__ void rescale(float& m, float& s, float& n, float m2) {
  const float a = ex2(m - m2);
  s *= a;
  n *= a;
  m = m2;
}

__device__ __forceinline__ void merge(float& m, float& s, float& n, float m2, float s2, float n2) {
  const float mx = fmaxf(m, m2);
  const float a = ex2(m - mx), b = ex2(m2 - mx);
  s = s * a + s2 * b;
  n = n * a + n2 * b;
  m = mx;
}

// Merge of three running (max, sum, num) triples over a row's G threads (a warp, or the block); every thread
// gets the result.
template <int G>
__device__ void group_merge3(float (&m)[3], float (&s)[3], float (&n)[3]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[k], off);
      const float s2 = __shfl_xor_sync(0xffffffffu, s[k], off);
      const float n2 = __shfl_xor_sync(0xffffffffu, n[k], off);
      merge(m[k], s[k], n[k], m2, s2, n2);
    }
  }
  if constexpr (G == 32) return;
  __shared__ float sh[kLossThreads / 32][9];
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      sh[warp][3 * k] = m[k];
      sh[warp][3 * k + 1] = s[k];
      sh[warp][3 * k + 2] = n[k];
    }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < 3; ++k) {  // every thread merges the warp results in the same order
    m[k] = sh[0][3 * k];
    s[k] = sh[0][3 * k + 1];
    n[k] = sh[0][3 * k + 2];
    for (int w = 1; w < kLossThreads / 32; ++w) merge(m[k], s[k], n[k], sh[w][3 * k], sh[w][3 * k + 1], sh[w][3 * k + 2]);
  }
  __syncthreads();
}

// Sums of N floats over a row's G threads (a warp, or the block); every thread gets the result.
template <int N, int G>
__device__ void group_sum(float (&v)[N]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
  if constexpr (G == 32) return;
  __shared__ float sh[kLossThreads / 32][N];
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < N; ++k) sh[warp][k] = v[k];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < N; ++k) {
    float a = 0.f;
    for (int w = 0; w < kLossThreads / 32; ++w) a += sh[w][k];
    v[k] = a;
  }
  __syncthreads();
}

// eps > 0, per class: p, q, 1/(p+eps), 1/(q+eps) and log2((p+eps)/(q+eps)); 4 MUFU with joint_rcp, else 5.
__device__ __forceinline__ void eps_terms(float xv, float yv, float ct, float lse2_p, float lse2_q, float eps,
                                          bool joint_rcp, float& pv, float& qv, float& rp, float& rq, float& d2) {
  pv = ex2(xv * ct - lse2_p);
  qv = ex2(yv * ct - lse2_q);
  const float pe = pv + eps, qe = qv + eps;
  if (joint_rcp) {
    const float r = rcp(pe * qe);
    rp = qe * r;
    rq = pe * r;
  } else {
    rp = rcp(pe);
    rq = rcp(qe);
  }
  d2 = lg2(pe * rq);
}

__device__ __forceinline__ int64_t load_target(const void* t, int is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(t)[i] : static_cast<int64_t>(static_cast<const int32_t*>(t)[i]);
}

// G threads per row: a warp (kLossThreads / 32 rows per block; short rows, where a block's reductions would
// cost more than the row) or the whole block.
template <typename T, int G>
__global__ void __launch_bounds__(kLossThreads) loss_rows_kernel(const LossParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kLossThreads / G) + threadIdx.x / G;
  if (row >= p.B) return;  // whole warps of the last block (G == 32 uses no block barrier)
  const int tid = threadIdx.x % G;
  const int C = p.C;
  const T* x = static_cast<const T*>(p.lf) + row * p.s_lf;
  const T* y = static_cast<const T*>(p.ls) + row * p.s_ls;
  const float inv_t = p.inv_t, ct = inv_t * kLog2e, eps = p.eps;
  const bool eps_pos = eps > 0.f, t_one = inv_t == 1.f;  // uniform across the block: no divergence
  // One rcp serves 1/(p+eps) and 1/(q+eps) while (p+eps)(q+eps) >= eps^2 is a normal number.
  const bool joint_rcp = eps >= 0x1p-60f;

  // pass 1, in base-2 units: [0] lf * log2(e), [1] lf/T * log2(e) (num: E_p[lf/T - ls/T] numerator, for
  // eps == 0), [2] ls/T * log2(e). Each thread rescales its sums once per kBatch of its elements.
  float m[3] = {kFloor, kFloor, kFloor}, s[3] = {0.f, 0.f, 0.f}, nm[3] = {0.f, 0.f, 0.f};
  for (int c0 = tid; c0 < C; c0 += kBatch * G) {
    float xv[kBatch], yv[kBatch], bx = kNegInf, by = kNegInf;
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int c = c0 + k * G;
      xv[k] = c < C ? to_f<T>(x[c]) : kNegInf;
      yv[k] = c < C ? to_f<T>(y[c]) : kNegInf;
      bx = fmaxf(bx, xv[k]);
      by = fmaxf(by, yv[k]);
    }
    rescale(m[0], s[0], nm[0], fmaxf(m[0], bx * kLog2e));
    rescale(m[1], s[1], nm[1], fmaxf(m[1], bx * ct));  // ct > 0: max(lf) gives max(lf/T); T = 1: m[1] = m[0]
    rescale(m[2], s[2], nm[2], fmaxf(m[2], by * ct));
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const float e1 = ex2(xv[k] * kLog2e - m[0]);
      const float ep = t_one ? e1 : ex2(xv[k] * ct - m[1]);
      s[0] += e1;
      s[1] += ep;
      s[2] += ex2(yv[k] * ct - m[2]);
      if (!eps_pos && ep > 0.f) nm[1] += ep * (xv[k] - yv[k]);  // > 0: -inf - -inf stays out
    }
  }
  group_merge3<G>(m, s, nm);
  const float lse2_1 = m[0] + log2f(s[0]), lse2_p = m[1] + log2f(s[1]), lse2_q = m[2] + log2f(s[2]);
  const float e_pd = nm[1] / s[1] * inv_t;  // E_p[lf/T - ls/T]

  // KL and, for eps > 0, <p, b> and sum r, b = log(p+eps) - log(q+eps) + p/(p+eps), r = p q/(q+eps)
  float kl, pb, rs = 0.f;
  if (eps_pos) {
    float acc[3] = {0.f, 0.f, 0.f};  // KL / ln 2, <p, p/(p+eps)>, sum r
    for (int c = tid; c < C; c += G) {
      float pv, qv, rp, rq, d2;
      eps_terms(to_f<T>(x[c]), to_f<T>(y[c]), ct, lse2_p, lse2_q, eps, joint_rcp, pv, qv, rp, rq, d2);
      acc[0] += pv * d2;
      acc[1] += pv * (pv * rp);
      acc[2] += pv * (qv * rq);
    }
    group_sum<3, G>(acc);
    kl = acc[0] * kLn2;
    pb = kl + acc[1];
    rs = acc[2];
  } else {
    kl = e_pd - (lse2_p - lse2_q) * kLn2;
    pb = e_pd;
  }

  // target, reduction scales and gradient coefficients
  const int64_t t = load_target(p.target, p.tgt64, row);
  const bool valid = t != p.ignore_index;
  float ce_scale = 1.f, kl_scale = 1.f;
  if (p.reduction == 2) {
    float nv;
    if (p.nvalid != nullptr) {
      nv = static_cast<float>(*p.nvalid);
    } else {
      float cnt[1] = {0.f};
      for (int i = tid; i < p.B; i += G) cnt[0] += load_target(p.target, p.tgt64, i) != p.ignore_index ? 1.f : 0.f;
      group_sum<1, G>(cnt);
      nv = cnt[0];
    }
    ce_scale = 1.f / fmaxf(nv, 1.f);
    kl_scale = 1.f / static_cast<float>(p.B);
  }
  const float lam = *p.lam;
  const float w = lam * p.temp * p.temp;
  const float kl_small = lam * p.temp * kl_scale;
  const float kl_full = p.detach ? 0.f : kl_small;
  const float ce_coef = valid ? ce_scale : 0.f;

  // pass 3: gradients
  if (p.gf != nullptr) {
    T* gf = static_cast<T*>(p.gf) + row * C;
    T* gs = static_cast<T*>(p.gs) + row * C;
    for (int c = tid; c < C; c += G) {
      const float xv = to_f<T>(x[c]), yv = to_f<T>(y[c]);
      float pv, qv, g_small, dev;
      if (eps_pos) {
        float rp, rq, d2;
        eps_terms(xv, yv, ct, lse2_p, lse2_q, eps, joint_rcp, pv, qv, rp, rq, d2);
        dev = d2 * kLn2 + pv * rp - pb;                // b - <p, b>
        g_small = kl_small * qv * (rs - pv * rq);      // lam T (q sum r - r)
      } else {
        pv = ex2(xv * ct - lse2_p);
        qv = ex2(yv * ct - lse2_q);
        dev = pv > 0.f ? (xv - yv) * inv_t - pb : 0.f;  // log p - log q - KL
        g_small = kl_small * (qv - pv);
      }
      const float p1 = t_one ? pv : ex2(xv * kLog2e - lse2_1);
      float g_full = ce_coef * (p1 - (c == t ? 1.f : 0.f)) + kl_full * pv * dev;  // p1 - 1 formed in fp32
      gf[c] = from_f<T>(g_full);
      gs[c] = from_f<T>(g_small);
    }
  }

  if (tid == 0) {
    float ce = 0.f;
    if (valid) ce = (t >= 0 && t < C) ? lse2_1 * kLn2 - to_f<T>(x[t]) : NAN;  // NaN flags a bad target (no host sync)
    if (p.reduction == 0) static_cast<T*>(p.loss)[row] = from_f<T>(ce + w * kl);
    else p.rows[row] = ce * ce_scale + w * kl * kl_scale;
  }
}

// Single block: number of targets != ignore_index.
__global__ void __launch_bounds__(1024) loss_count_kernel(const void* target, int tgt64, int64_t ignore_index, int B, int* out) {
  __shared__ int sh[1024];
  int c = 0;
  for (int i = threadIdx.x; i < B; i += blockDim.x) c += load_target(target, tgt64, i) != ignore_index ? 1 : 0;
  sh[threadIdx.x] = c;
  __syncthreads();
  for (int off = blockDim.x / 2; off > 0; off >>= 1) {
    if (threadIdx.x < off) sh[threadIdx.x] += sh[threadIdx.x + off];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = sh[0];
}

// Single block: loss = sum of the per-row shares, in a fixed order.
template <typename T>
__global__ void __launch_bounds__(1024) loss_sum_kernel(const float* rows, int B, T* loss) {
  __shared__ float sh[1024];
  float a = 0.f;
  for (int i = threadIdx.x; i < B; i += blockDim.x) a += rows[i];
  sh[threadIdx.x] = a;
  __syncthreads();
  for (int off = blockDim.x / 2; off > 0; off >>= 1) {
    if (threadIdx.x < off) sh[threadIdx.x] += sh[threadIdx.x + off];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = from_f<T>(sh[0]);
}

}  // namespace dev

void launch_loss_count(const void* target, int tgt64, int64_t ignore_index, int B, int* out, cudaStream_t stream) {
  dev::launch_kernel(dev::loss_count_kernel, dim3(1), dim3(1024), stream, target, tgt64, ignore_index, B, out);
  ADJ_LAUNCH_CHECK();
}

template <int G>
static void launch_loss_rows_g(const LossParams& p, DType dt, cudaStream_t stream) {
  const dim3 grid((p.B + dev::kLossThreads / G - 1) / (dev::kLossThreads / G)), block(dev::kLossThreads);
  switch (dt) {
    case DType::kFloat32: dev::launch_kernel(dev::loss_rows_kernel<float, G>, grid, block, stream, p); break;
    case DType::kFloat16: dev::launch_kernel(dev::loss_rows_kernel<__half, G>, grid, block, stream, p); break;
    case DType::kBFloat16: dev::launch_kernel(dev::loss_rows_kernel<__nv_bfloat16, G>, grid, block, stream, p); break;
  }
}

void launch_loss_rows(const LossParams& p, DType dt, cudaStream_t stream) {
  if (p.B <= 0) return;
  if (p.C <= dev::kWarpRowMax) launch_loss_rows_g<32>(p, dt, stream);
  else launch_loss_rows_g<dev::kLossThreads>(p, dt, stream);
  ADJ_LAUNCH_CHECK();
}

void launch_loss_sum(const float* rows, int B, void* loss, DType dt, cudaStream_t stream) {
  switch (dt) {
    case DType::kFloat32: dev::launch_kernel(dev::loss_sum_kernel<float>, dim3(1), dim3(1024), stream, rows, B, static_cast<float*>(loss)); break;
    case DType::kFloat16: dev::launch_kernel(dev::loss_sum_kernel<__half>, dim3(1), dim3(1024), stream, rows, B, static_cast<__half*>(loss)); break;
    case DType::kBFloat16:
      dev::launch_kernel(dev::loss_sum_kernel<__nv_bfloat16>, dim3(1), dim3(1024), stream, rows, B,
                         static_cast<__nv_bfloat16*>(loss));
      break;
  }
  ADJ_LAUNCH_CHECK();
}

}  // namespace adjoined
