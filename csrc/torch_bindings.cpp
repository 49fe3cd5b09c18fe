// Schemas of the adjoined CUDA ops (namespace "adjoined", names prefixed "cuda_" so that they never clash
// with the Triton ops registered from Python in the same namespace as "triton_*") and their CUDA
// implementations. Each schema is the one contract of its pass, which every backend implements: the strings
// must equal adjoined_kernels/ops/conv/contract.py (SCHEMAS) and adjoined_kernels/ops/loss/schema.py (SCHEMA);
// tests/ops checks that they do. The fake (meta) kernels and the autograd formulas are registered from
// Python, the same for every backend (ops/conv/cuda.py and ops/loss/cuda.py register them for these ops).
#include <torch/library.h>

#include "ops.h"

#ifdef ADJ_EMULATE  // CPU emulation build (csrc/emu/): own namespace unless given, CPU kernels
#ifndef ADJ_NS
#define ADJ_NS adjoined_emu
#endif
#define ADJ_KEY CPU
#else
#define ADJ_NS adjoined
#define ADJ_KEY CUDA
#endif
#define ADJ_STR_(x) #x
#define ADJ_STR(x) ADJ_STR_(x)

// The namespace is shared with Python-registered ops, so this is a fragment, not the one TORCH_LIBRARY.
TORCH_LIBRARY_FRAGMENT(ADJ_NS, m) {
  // -> (z_full [N1, C_out, P1, Q1], z_small [N2, c_out_s, P2, Q2], u_small): channels_last outputs;
  // u_small is z_small before small_scale when save_pre, else an empty [0] tensor.
  m.def(
      "cuda_conv2d_fprop(Tensor x_full, Tensor x_small, Tensor weight, Tensor? bias, Tensor? small_scale, "
      "int[] stride, int[] padding, int[] dilation, int c_out_s, bool save_pre, bool share_weights) "
      "-> (Tensor, Tensor, Tensor)");
  // -> (dx_full [N1, C_in, H1, W1], dx_small [N2, c_in_s, H2, W2]), channels_last; dz_small is scaled by
  // small_scale before the GEMM.
  m.def(
      "cuda_conv2d_dgrad(Tensor dz_full, Tensor dz_small, Tensor weight, Tensor? small_scale, int[] full_hw, "
      "int[] small_hw, int c_in_s, int[] stride, int[] padding, int[] dilation, bool share_weights) "
      "-> (Tensor, Tensor)");
  // -> (dW [C_out, C_in, kh, kw] channels_last or [0], db [C_out] or [0], d small_scale [c_out_s] or [0]).
  m.def(
      "cuda_conv2d_wgrad(Tensor x_full, Tensor x_small, Tensor dz_full, Tensor dz_small, Tensor? small_scale, "
      "Tensor? u_small, int[] kernel_size, int[] stride, int[] padding, int[] dilation, bool need_weight, "
      "bool need_bias) -> (Tensor, Tensor, Tensor)");
  // -> (loss [] or [B], d loss/d logits_full [B, C] or [0], d loss/d logits_small [B, C] or [0]).
  // reduction: 0 none, 1 sum, 2 mean. lam: 0-dim floating tensor on the logits' device.
  m.def(
      "cuda_adjoined_loss_fwd(Tensor logits_full, Tensor logits_small, Tensor target, Tensor lam, float eps, "
      "float temperature, int reduction, int ignore_index, bool detach_full, bool compute_grad) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ADJ_NS, ADJ_KEY, m) {
  m.impl("cuda_conv2d_fprop", &adjoined::conv2d_fprop_cuda);
  m.impl("cuda_conv2d_dgrad", &adjoined::conv2d_dgrad_cuda);
  m.impl("cuda_conv2d_wgrad", &adjoined::conv2d_wgrad_cuda);
  m.impl("cuda_adjoined_loss_fwd", &adjoined::adjoined_loss_fwd_cuda);
}

// Referenced by stand-alone C++ programs (csrc/tests) so that the linker keeps this library, whose
// static registrars above run when it loads. Returns the op namespace.
extern "C" const char* adjoined_kernels_namespace() { return ADJ_STR(ADJ_NS); }
