// Host helpers for the ATen side of the ops: argument checks, dtype mapping, output allocation
// (NaN-poisoned when ADJOINED_POISON_OUTPUTS=1, as the Python allocator does), device attributes.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "launch.h"

#ifdef ADJ_EMULATE  // CPU emulation build (csrc/emu/): CPU tensors, no streams
#define ADJ_ON_DEVICE(t) ((t).is_cpu())
#define ADJ_DEVICE_GUARD(t) ((void)0)
#define ADJ_STREAM(t) (static_cast<cudaStream_t>(nullptr))
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define ADJ_ON_DEVICE(t) ((t).is_cuda())
#define ADJ_DEVICE_GUARD(t) c10::cuda::CUDAGuard adj_device_guard_((t).device())
#define ADJ_STREAM(t) (c10::cuda::getCurrentCUDAStream((t).get_device()).stream())
#endif

namespace adjoined {

inline DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

inline bool poison_outputs() {
  const char* e = std::getenv("ADJOINED_POISON_OUTPUTS");
  return e != nullptr && std::strcmp(e, "1") == 0;
}

// at::empty, filled with NaN when ADJOINED_POISON_OUTPUTS=1 so that skipped elements fail tests.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& opts,
                             at::MemoryFormat fmt = at::MemoryFormat::Contiguous) {
  at::Tensor t = at::empty(sizes, opts.memory_format(fmt));
  if (poison_outputs() && t.numel() > 0) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

inline int sm_count(int device) {
#ifdef ADJ_EMULATE
  (void)device;
  return 132;
#endif
  static int cache[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (cache[device] == 0) {
    int n = 0;
#ifndef ADJ_EMULATE
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
#endif
    cache[device] = n > 0 ? n : 1;
  }
  return cache[device];
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline int checked_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= std::numeric_limits<int>::max() - 1024, what, " = ", v,
              " is too large for the adjoined CUDA kernels (32-bit index)");
  return static_cast<int>(v);
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace adjoined
