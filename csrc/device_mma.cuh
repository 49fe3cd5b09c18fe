// Tensor-core primitives of the pipelined conv kernel (sm_80+ PTX): 16-byte cp.async with zero fill,
// ldmatrix x4 (plain and transposed) and mma.sync m16n8k16 with fp32 accumulation. Under ADJ_EMULATE they
// are the CPU emulations of csrc/emu/cuda_emu.h, which follow the PTX ISA's fragment layouts.
#pragma once

#include "device_common.cuh"

namespace adjoined {
namespace dev {

// The 32-bit shared-memory address of a pointer into the kernel's dynamic shared memory (the emulation
// uses the offset into its buffer). Kernels compute it once and add byte offsets: cheaper than generic
// 64-bit pointers in the K loop.
__device__ __forceinline__ unsigned smem_u32(const void* p) {
#ifdef ADJ_EMULATE
  return static_cast<unsigned>(static_cast<const unsigned char*>(p) - emu::dynamic_smem());
#else
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
#endif
}

// 16 bytes from global src to shared address dst (both 16-byte aligned); src_bytes in {0, 16}: 0 writes
// zeros and reads nothing (src must still be a valid address).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
#ifdef ADJ_EMULATE
  emu::cp_async16(emu::dynamic_smem() + dst, src, src_bytes);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if !defined(ADJ_EMULATE) && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if !defined(ADJ_EMULATE) && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ldmatrix .x4 (.trans when TRANS): lane l passes the shared address of row l % 8 of 8x8 b16 matrix l / 8
// (16-byte aligned); r[j] gets matrix j's (row l / 4, columns 2(l % 4), 2(l % 4) + 1), or with
// TRANS its (rows 2(l % 4), 2(l % 4) + 1, column l / 4).
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned a) {
#ifdef ADJ_EMULATE
  emu::ldmatrix_x4(r, emu::dynamic_smem() + a, TRANS);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
  __trap();
#else
  if (TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#endif
}

// d += A (16x16, row) * B (16x8, col) on one warp; T = __nv_bfloat16 or __half. Lane l, g = l / 4,
// t = l % 4: a = {(g, 2t..), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)}, b = {(k 2t.., n g), (k 2t+8.., n g)},
// d = {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef ADJ_EMULATE
  emu::mma_16816<T>(d, a, b0, b1);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the host never launches the pipelined kernel below sm_80 (rowgemm_tc_ok)
#else
  if (std::is_same<T, __nv_bfloat16>::value)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Whether the current GPU runs the tensor-core kernels (cp.async, bf16 mma.sync: compute capability 8.0+).
inline bool tc_arch_ok() {
#ifdef ADJ_EMULATE
  return true;
#else
  int dev = 0, major = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  return major >= 8;
#endif
}

// Padded shared-memory row lengths (elements) of the tensor-core tiles: K-major (BK + 8), M- or N-major
// (BM + 8, BN + 8), and the fp32 staging tile (BN + 4). The 16 bytes of padding keep rows 16-byte aligned
// and spread ldmatrix's eight row reads over all 32 banks.
constexpr int TC_LDK = BK + 8, TC_LDM = BM + 8, TC_LDN = BN + 8, TC_LDC = BN + 4;

// One warp's 32x32 share of a 128x64 tile (8 warps, 4 x 2): 2 x 4 MMA tiles of 16x8, fp32. A is K-major
// [m][TC_LDK] or, with A_MMAJOR, M-major [k][TC_LDM]; B is K-major [n][TC_LDK] or, with B_NMAJOR, N-major
// [k][TC_LDN]; the major-first operands are read transposed by ldmatrix.trans. ldmatrix addresses are
// per-lane byte offsets from a stage's buffers, fixed for the whole K loop.
template <bool A_MMAJOR, bool B_NMAJOR>
struct WarpAcc {
  float c[2][4][4];
  unsigned a_off[2], b_off[2];

  __device__ __forceinline__ WarpAcc(int wm, int wn) {
    const int lane = threadIdx.x & 31;
    // x4 matrices: A (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) = a0..a3;
    // B (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) = b0, b1 of n8 tiles 2jj, 2jj + 1
#pragma unroll
    for (int i = 0; i < 2; ++i)
      a_off[i] = A_MMAJOR ? 2 * (((lane & 7) + ((lane >> 4) << 3)) * TC_LDM + wm + 16 * i + ((lane >> 3) & 1) * 8)
                          : 2 * ((wm + 16 * i + (lane & 15)) * TC_LDK + (lane >> 4) * 8);
#pragma unroll
    for (int jj = 0; jj < 2; ++jj)
      b_off[jj] = B_NMAJOR ? 2 * (((lane & 7) + ((lane >> 3) & 1) * 8) * TC_LDN + wn + 16 * jj + (lane >> 4) * 8)
                           : 2 * ((wn + 16 * jj + (lane & 7) + ((lane >> 4) << 3)) * TC_LDK + ((lane >> 3) & 1) * 8);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[i][j][e] = 0.f;
  }

  // acc += A * B over one BK block, and with PAIR other += A1 * B from the same B fragments (a shared
  // weight tile). As, As1, Bs: shared addresses of a stage's A buffers and B buffer.
  template <typename T, bool PAIR>
  __device__ __forceinline__ void step(WarpAcc& other, unsigned As, unsigned As1, unsigned Bs) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      const unsigned ka = 2 * kk * (A_MMAJOR ? TC_LDM : 1), kb = 2 * kk * (B_NMAJOR ? TC_LDN : 1);
      unsigned a[2][4], b[2][4];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) ldmatrix_x4<B_NMAJOR>(b[jj], Bs + b_off[jj] + kb);
#pragma unroll
      for (int i = 0; i < 2; ++i) ldmatrix_x4<A_MMAJOR>(a[i], As + a_off[i] + ka);
      mma_tile<T>(a, b);
      if (PAIR) {
#pragma unroll
        for (int i = 0; i < 2; ++i) ldmatrix_x4<A_MMAJOR>(a[i], As1 + a_off[i] + ka);
        other.template mma_tile<T>(a, b);
      }
    }
  }

  template <typename T>
  __device__ __forceinline__ void mma_tile(const unsigned (&a)[2][4], const unsigned (&b)[2][4]) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) mma_16816<T>(c[i][j], a[i], b[j / 2][2 * (j % 2)], b[j / 2][2 * (j % 2) + 1]);
  }

  // The accumulators into Cs [BM][TC_LDC] fp32.
  __device__ __forceinline__ void store(float* Cs, int wm, int wn) const {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          Cs[(wm + 16 * i + g + 8 * (e / 2)) * TC_LDC + wn + 8 * j + 2 * t + (e % 2)] = c[i][j][e];
  }
};

}  // namespace dev
}  // namespace adjoined
