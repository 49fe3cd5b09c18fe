// Device helpers shared by the conv and loss kernels: type conversions, guarded vector loads, and the
// per-warp MMA of one 128x64x32 tile (WMMA on tensor cores for fp16/bf16, exact fp32 FMA for fp32).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "launch.h"

#ifdef ADJ_EMULATE  // CPU emulation for checks without a GPU (csrc/emu/); never used by the real build
#include "emu/cuda_emu.h"
#define ADJ_LAUNCH_CHECK() ((void)0)
#else
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define ADJ_ASSERT_ALIGNED16(p) ((void)0)
#define ADJ_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#endif

// Tensor-core WMMA for bf16 needs sm_80; older archs (not built by default) take the FMA path.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
#define ADJ_TC_ARCH 0
#else
#define ADJ_TC_ARCH 1
#endif

namespace adjoined {
namespace dev {

constexpr int BM = kConvBM, BN = kConvBN, BK = kConvBK, NT = kConvThreads;
static_assert(NT == 256 && BM == 128 && BN == 64 && BK == 32, "thread mappings below assume these tiles");

// ---------------------------------------------------------------------------------------- conversions
template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> __device__ __forceinline__ T zero_v() { return from_f<T>(0.f); }

template <typename T> struct Cfg {
  static constexpr int VEC = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte vector
  static constexpr int PAD = VEC;                                // smem row padding (keeps 16-byte rows)
  static constexpr bool TC = (sizeof(T) == 2) && ADJ_TC_ARCH;
};

// Load the run p[0, L) into r, zero-filling indices >= limit (limit <= 0: all zero, p is not touched).
// Whole 16-byte chunks inside [0, limit) use vector loads when vec_ok (the caller guarantees that
// p is 16-byte aligned whenever vec_ok holds and limit > 0).
template <typename T, int L>
__device__ __forceinline__ void load_run(T (&r)[L], const T* __restrict__ p, int limit, bool vec_ok) {
  constexpr int V = Cfg<T>::VEC;
  static_assert(L % V == 0, "run length must be a whole number of vectors");
#pragma unroll
  for (int j = 0; j < L / V; ++j) {
    if (vec_ok && (j + 1) * V <= limit) {
      ADJ_ASSERT_ALIGNED16(p + j * V);
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p + j * V));
      *reinterpret_cast<uint4*>(&r[j * V]) = v;
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const int idx = j * V + i;
        r[idx] = idx < limit ? p[idx] : zero_v<T>();
      }
    }
  }
}

// Store a run of L elements (a whole number of 16-byte vectors) to 16-byte aligned shared memory.
template <typename T, int L>
__device__ __forceinline__ void store_run_smem(T* dst, const T (&r)[L]) {
  constexpr int V = Cfg<T>::VEC;
#pragma unroll
  for (int j = 0; j < L / V; ++j) {
    ADJ_ASSERT_ALIGNED16(dst + j * V);
    *reinterpret_cast<uint4*>(dst + j * V) = *reinterpret_cast<const uint4*>(&r[j * V]);
  }
}

// ------------------------------------------------------------------------------------ tile MMA
// Shared-memory tile layouts. A (BM x BK): K-major As[m*LDA + k] (A_K) or M-major As[k*LDA + m].
// B (BK x BN): K-major Bs[n*LDB + k] (B_K) or N-major Bs[k*LDB + n]. Staging Cs[m*LDC + n] in fp32.
template <typename T, bool A_K, bool B_K>
struct TileLayout {
  static constexpr int LDA = A_K ? BK + Cfg<T>::PAD : BM + Cfg<T>::PAD;
  static constexpr int LDB = B_K ? BK + Cfg<T>::PAD : BN + Cfg<T>::PAD;
  static constexpr int A_ELEMS = A_K ? BM * LDA : BK * LDA;
  static constexpr int B_ELEMS = B_K ? BN * LDB : BK * LDB;
  static constexpr int LDC = BN + 4;
  static constexpr int C_BYTES = BM * LDC * static_cast<int>(sizeof(float));
};

template <typename T, bool A_K, bool B_K, bool TC = Cfg<T>::TC>
struct TileMma;

// Tensor cores: 8 warps in a 4x2 grid, 32x32 per warp = 2x2 WMMA 16x16x16 fragments, fp32 accumulate.
template <typename T, bool A_K, bool B_K>
struct TileMma<T, A_K, B_K, true> {
  using L = TileLayout<T, A_K, B_K>;
  using ALay = typename std::conditional<A_K, nvcuda::wmma::row_major, nvcuda::wmma::col_major>::type;
  using BLay = typename std::conditional<B_K, nvcuda::wmma::col_major, nvcuda::wmma::row_major>::type;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> c[2][2];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(c[i][j], 0.f);
  }

  __device__ __forceinline__ void step(const T* As, const T* Bs) {
    const int warp = threadIdx.x >> 5;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, ALay> fa[2];
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, BLay> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const T* pa = A_K ? As + (wm + 16 * i) * L::LDA + kk : As + kk * L::LDA + wm + 16 * i;
        nvcuda::wmma::load_matrix_sync(fa[i], pa, L::LDA);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const T* pb = B_K ? Bs + (wn + 16 * j) * L::LDB + kk : Bs + kk * L::LDB + wn + 16 * j;
        nvcuda::wmma::load_matrix_sync(fb[j], pb, L::LDB);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(c[i][j], fa[i], fb[j], c[i][j]);
    }
  }

  __device__ __forceinline__ void store(float* Cs) const {
    const int warp = threadIdx.x >> 5;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(Cs + (wm + 16 * i) * L::LDC + wn + 16 * j, c[i][j], L::LDC,
                                        nvcuda::wmma::mem_row_major);
  }
};

// FMA: 16x16 threads, each owns rows ty + 16*i (i < 8) and columns tx + 16*j (j < 4); exact fp32.
template <typename T, bool A_K, bool B_K>
struct TileMma<T, A_K, B_K, false> {
  using L = TileLayout<T, A_K, B_K>;
  float c[8][4];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) c[i][j] = 0.f;
  }

  __device__ __forceinline__ void step(const T* As, const T* Bs) {
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll 4
    for (int kk = 0; kk < BK; ++kk) {
      float a[8], b[4];
#pragma unroll
      for (int i = 0; i < 8; ++i)
        a[i] = to_f<T>(A_K ? As[(ty + 16 * i) * L::LDA + kk] : As[kk * L::LDA + ty + 16 * i]);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        b[j] = to_f<T>(B_K ? Bs[(tx + 16 * j) * L::LDB + kk] : Bs[kk * L::LDB + tx + 16 * j]);
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) c[i][j] = fmaf(a[i], b[j], c[i][j]);
    }
  }

  __device__ __forceinline__ void store(float* Cs) const {
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) Cs[(ty + 16 * i) * L::LDC + tx + 16 * j] = c[i][j];
  }
};

// Linear tile id -> (tile_m, tile_n) in bands of group_m tile rows (neighbours share N tiles in L2).
__device__ __forceinline__ void swizzle(int pid, int nm, int nn, int group_m, int& tm, int& tn) {
  const int width = group_m * nn;
  const int group = pid / width;
  const int first = group * group_m;
  const int size = min(nm - first, group_m);
  tm = first + (pid % width) % size;
  tn = (pid % width) / size;
}

// kernel<<<grid, block, 0, stream>>>(args...) (or its CPU emulation).
template <typename... KArgs, typename... Args>
inline void launch_kernel(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
#ifdef ADJ_EMULATE
  (void)stream;
  emu::launch(kernel, grid, block, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
#endif
}

}  // namespace dev
}  // namespace adjoined
