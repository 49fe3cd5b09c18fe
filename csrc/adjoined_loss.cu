// Fused adjoined loss (DESIGN §1; seeds/000 Def. 1, Eq. 3): one block per row computes the row's loss
// term and both gradients in the forward pass, over rows of any length C:
//   pass 1: online log-sum-exp of lf, lf/T and ls/T (and, for eps == 0, E_p[lf/T - ls/T] under the
//           same rescaling), merged across the block;
//   pass 2 (eps > 0 only): KL, <p, b> and sum r from explicit p and q;
//   pass 3: both gradients, already scaled by the reduction (1/n_valid for CE, 1/B for KL under "mean").
// "sum"/"mean" reduce the per-row fp32 shares with one single-block kernel in a fixed order.
// n_valid and lam stay on the device: nothing syncs with the host.
#include <cmath>

#include "device_common.cuh"

namespace adjoined {
namespace dev {

constexpr int kLossThreads = 256;
constexpr float kNegInf = -INFINITY;

// Fold v into a running (max, sum exp(. - max), sum exp(. - max) * d).
__device__ __forceinline__ void online_add(float& m, float& s, float& num, float v, float d) {
  if (v == kNegInf) return;  // exp(-inf) = 0 adds nothing (and would make exp(-inf + inf) NaN)
  if (v > m) {
    const float a = expf(m - v);  // m = -inf gives 0
    s = s * a + 1.f;
    num = num * a + d;
    m = v;
  } else {
    const float e = expf(v - m);
    s += e;
    if (e > 0.f) num += e * d;
  }
}

__device__ __forceinline__ void online_merge(float& m, float& s, float& num, float m2, float s2, float n2) {
  const float mx = fmaxf(m, m2);
  if (mx == kNegInf) return;  // both empty
  const float a = m == kNegInf ? 0.f : expf(m - mx);
  const float b = m2 == kNegInf ? 0.f : expf(m2 - mx);
  s = s * a + s2 * b;
  num = num * a + n2 * b;
  m = mx;
}

// Block-wide merge of three online (max, sum, num) triples; every thread gets the result.
__device__ void block_merge3(float (&m)[3], float (&s)[3], float (&n)[3]) {
  __shared__ float sh[kLossThreads / 32][9];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[k], off);
      const float s2 = __shfl_xor_sync(0xffffffffu, s[k], off);
      const float n2 = __shfl_xor_sync(0xffffffffu, n[k], off);
      online_merge(m[k], s[k], n[k], m2, s2, n2);
    }
  }
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
    for (int w = 1; w < kLossThreads / 32; ++w) online_merge(m[k], s[k], n[k], sh[w][3 * k], sh[w][3 * k + 1], sh[w][3 * k + 2]);
  }
  __syncthreads();
}

// Block-wide sums of N floats; every thread gets the result.
template <int N>
__device__ void block_sum(float (&v)[N]) {
  __shared__ float sh[kLossThreads / 32][N];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
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

__device__ __forceinline__ int64_t load_target(const void* t, int is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(t)[i] : static_cast<int64_t>(static_cast<const int32_t*>(t)[i]);
}

template <typename T>
__global__ void __launch_bounds__(kLossThreads) loss_rows_kernel(const LossParams p) {
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const int C = p.C;
  const T* x = static_cast<const T*>(p.lf) + row * p.s_lf;
  const T* y = static_cast<const T*>(p.ls) + row * p.s_ls;
  const float inv_t = p.inv_t;
  const bool eps_pos = p.eps > 0.f;

  // pass 1: [0] lf, [1] lf/T (num: E_p[lf/T - ls/T] numerator), [2] ls/T
  float m[3] = {kNegInf, kNegInf, kNegInf}, s[3] = {0.f, 0.f, 0.f}, nm[3] = {0.f, 0.f, 0.f};
  for (int c = tid; c < C; c += kLossThreads) {
    const float xv = to_f<T>(x[c]), yv = to_f<T>(y[c]);
    const float xt = xv * inv_t, yt = yv * inv_t;
    online_add(m[0], s[0], nm[0], xv, 0.f);
    online_add(m[1], s[1], nm[1], xt, xt - yt);
    online_add(m[2], s[2], nm[2], yt, 0.f);
  }
  block_merge3(m, s, nm);
  const float lse1 = m[0] + logf(s[0]);
  const float lse_p = m[1] + logf(s[1]);
  const float lse_q = m[2] + logf(s[2]);

  // KL and, for eps > 0, <p, b> and sum r
  float kl, pb, rs = 0.f;
  if (eps_pos) {
    float acc[3] = {0.f, 0.f, 0.f};
    for (int c = tid; c < C; c += kLossThreads) {
      const float pv = expf(to_f<T>(x[c]) * inv_t - lse_p);
      const float qv = expf(to_f<T>(y[c]) * inv_t - lse_q);
      const float d = logf(pv + p.eps) - logf(qv + p.eps);
      acc[0] += pv * d;
      acc[1] += pv * (d + pv / (pv + p.eps));
      acc[2] += pv * qv / (qv + p.eps);
    }
    block_sum<3>(acc);
    kl = acc[0];
    pb = acc[1];
    rs = acc[2];
  } else {
    kl = nm[1] / s[1] - lse_p + lse_q;
    pb = kl;
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
      for (int i = tid; i < p.B; i += kLossThreads) cnt[0] += load_target(p.target, p.tgt64, i) != p.ignore_index ? 1.f : 0.f;
      block_sum<1>(cnt);
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
    for (int c = tid; c < C; c += kLossThreads) {
      const float xv = to_f<T>(x[c]), yv = to_f<T>(y[c]);
      const float lp = xv * inv_t - lse_p, lq = yv * inv_t - lse_q;
      const float p1 = expf(xv - lse1), pv = expf(lp), qv = expf(lq);
      float g_full = ce_coef * (p1 - (c == t ? 1.f : 0.f));  // p1 - 1 formed in fp32
      float g_small;
      if (eps_pos) {
        const float b = logf(pv + p.eps) - logf(qv + p.eps) + pv / (pv + p.eps);
        g_full += kl_full * pv * (b - pb);
        g_small = kl_small * (qv * rs - pv * qv / (qv + p.eps));
      } else {
        if (pv > 0.f) g_full += kl_full * pv * (lp - lq - kl);
        g_small = kl_small * (qv - pv);
      }
      gf[c] = from_f<T>(g_full);
      gs[c] = from_f<T>(g_small);
    }
  }

  if (tid == 0) {
    float ce = 0.f;
    if (valid) ce = (t >= 0 && t < C) ? lse1 - to_f<T>(x[t]) : NAN;  // NaN flags a bad target (no host sync)
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

void launch_loss_rows(const LossParams& p, DType dt, cudaStream_t stream) {
  if (p.B <= 0) return;
  switch (dt) {
    case DType::kFloat32: dev::launch_kernel(dev::loss_rows_kernel<float>, dim3(p.B), dim3(dev::kLossThreads), stream, p); break;
    case DType::kFloat16: dev::launch_kernel(dev::loss_rows_kernel<__half>, dim3(p.B), dim3(dev::kLossThreads), stream, p); break;
    case DType::kBFloat16: dev::launch_kernel(dev::loss_rows_kernel<__nv_bfloat16>, dim3(p.B), dim3(dev::kLossThreads), stream, p); break;
  }
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
