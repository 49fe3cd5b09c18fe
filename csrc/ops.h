// The ATen entry points of the adjoined CUDA ops (registered in torch_bindings.cpp).
#pragma once

#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace adjoined {

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_fprop_cuda(
    const at::Tensor& x_full, const at::Tensor& x_small, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& small_scale, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t c_out_s, bool save_pre, bool share_weights);

std::tuple<at::Tensor, at::Tensor> conv2d_dgrad_cuda(
    const at::Tensor& dz_full, const at::Tensor& dz_small, const at::Tensor& weight,
    const std::optional<at::Tensor>& small_scale, at::IntArrayRef full_hw, at::IntArrayRef small_hw, int64_t c_in_s,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool share_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_wgrad_cuda(
    const at::Tensor& x_full, const at::Tensor& x_small, const at::Tensor& dz_full, const at::Tensor& dz_small,
    const std::optional<at::Tensor>& small_scale, const std::optional<at::Tensor>& u_small,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    bool need_weight, bool need_bias);

std::tuple<at::Tensor, at::Tensor, at::Tensor> adjoined_loss_fwd_cuda(
    const at::Tensor& logits_full, const at::Tensor& logits_small, const at::Tensor& target, const at::Tensor& lam,
    double eps, double temperature, int64_t reduction, int64_t ignore_index, bool detach_full, bool compute_grad);

}  // namespace adjoined
