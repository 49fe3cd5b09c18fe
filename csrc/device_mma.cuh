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

}  // namespace dev
}  // namespace adjoined
