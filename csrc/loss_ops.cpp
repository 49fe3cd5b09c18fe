// ATen side of the fused adjoined loss op: checks, allocation, launches (kernels in adjoined_loss.cu).

#include <algorithm>
#include "host_common.h"
#include "ops.h"

namespace adjoined {

std::tuple<at::Tensor, at::Tensor, at::Tensor> adjoined_loss_fwd_cuda(
    const at::Tensor& logits_full, const at::Tensor& logits_small, const at::Tensor& target, const at::Tensor& lam,
    double eps, double temperature, int64_t reduction, int64_t ignore_index, bool detach_full, bool compute_grad) {
  TORCH_CHECK(ADJ_ON_DEVICE(logits_full) && logits_full.dim() == 2, "adjoined loss: logits_full must be a 2-D CUDA tensor, "
              "got ", logits_full.sizes(), " on ", logits_full.device());
  const DType dt = dtype_of(logits_full, "logits_full");
  TORCH_CHECK(logits_small.sizes() == logits_full.sizes(), "adjoined loss: logits_small must have the shape ",
              logits_full.sizes(), ", got ", logits_small.sizes());
  TORCH_CHECK(logits_small.device() == logits_full.device() && logits_small.scalar_type() == logits_full.scalar_type(),
              "adjoined loss: logits_small must match logits_full in device and dtype");
  const int64_t B = logits_full.size(0), C = logits_full.size(1);
  TORCH_CHECK(B >= 1 && C >= 1, "adjoined loss: logits must have at least one row and one class, got ",
              logits_full.sizes());
  checked_int(B, "B");
  checked_int(C, "C");
  TORCH_CHECK(target.device() == logits_full.device() && target.dim() == 1 && target.size(0) == B &&
                  (target.scalar_type() == at::kLong || target.scalar_type() == at::kInt),
              "adjoined loss: target must be an int64/int32 tensor of shape [", B, "] on ", logits_full.device(),
              ", got ", target.scalar_type(), " ", target.sizes(), " on ", target.device());
  TORCH_CHECK(lam.device() == logits_full.device() && lam.numel() == 1 && at::isFloatingType(lam.scalar_type()),
              "adjoined loss: lam must be a 0-dim floating tensor on ", logits_full.device(), ", got ",
              lam.scalar_type(), " ", lam.sizes(), " on ", lam.device());
  TORCH_CHECK(eps >= 0.0, "adjoined loss: eps must be >= 0, got ", eps);
  TORCH_CHECK(temperature > 0.0, "adjoined loss: temperature must be > 0, got ", temperature);
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "adjoined loss: reduction must be 0 (none), 1 (sum) or 2 (mean), got ",
              reduction);

  ADJ_DEVICE_GUARD(logits_full);
  const cudaStream_t stream = ADJ_STREAM(logits_full);
  const at::Tensor lf = logits_full.stride(1) == 1 ? logits_full : logits_full.contiguous();
  const at::Tensor ls = logits_small.stride(1) == 1 ? logits_small : logits_small.contiguous();
  const at::Tensor tg = target.contiguous();
  const at::Tensor lamf = lam.reshape({}).to(at::kFloat).contiguous();  // a device-side cast, no host sync
  const auto opts = lf.options();
  at::Tensor loss = reduction == 0 ? new_output({B}, opts) : new_output({}, opts);
  at::Tensor gf = compute_grad ? new_output({B, C}, opts) : new_output({0}, opts);
  at::Tensor gs = compute_grad ? new_output({B, C}, opts) : new_output({0}, opts);
  at::Tensor rows, nvalid;

  LossParams p;
  p.lf = lf.data_ptr();
  p.ls = ls.data_ptr();
  p.s_lf = lf.stride(0);
  p.s_ls = ls.stride(0);
  p.target = tg.data_ptr();
  p.tgt64 = tg.scalar_type() == at::kLong ? 1 : 0;
  p.lam = lamf.data_ptr<float>();
  p.gf = compute_grad ? gf.data_ptr() : nullptr;
  p.gs = compute_grad ? gs.data_ptr() : nullptr;
  // eps only ever meets probabilities in the kernel's rcp/lg2.approx.ftz: keep it a normal fp32 number
  p.eps = eps > 0.0 ? std::max(static_cast<float>(eps), 0x1p-126f) : 0.f;
  p.temp = static_cast<float>(temperature);
  p.inv_t = static_cast<float>(1.0 / temperature);
  p.ignore_index = ignore_index;
  p.B = static_cast<int>(B);
  p.C = static_cast<int>(C);
  p.reduction = static_cast<int>(reduction);
  p.detach = detach_full ? 1 : 0;
  if (reduction == 0) {
    p.loss = loss.data_ptr();
  } else {
    rows = new_output({B}, opts.dtype(at::kFloat));
    p.rows = rows.data_ptr<float>();
  }
  if (reduction == 2 && B > kLossCountInlineMax) {
    nvalid = at::empty({1}, opts.dtype(at::kInt));
    launch_loss_count(p.target, p.tgt64, ignore_index, p.B, nvalid.data_ptr<int>(), stream);
    p.nvalid = nvalid.data_ptr<int>();
  }
  launch_loss_rows(p, dt, stream);
  if (reduction != 0) launch_loss_sum(p.rows, p.B, loss.data_ptr(), dt, stream);
  return {loss, gf, gs};
}

}  // namespace adjoined
