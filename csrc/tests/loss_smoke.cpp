// Stand-alone smoke test of the CMake build: asks the dispatcher whether every adjoined::cuda_* op has a
// CUDA kernel (one line per op, then the count; exit 1 if one is missing). On a GPU it also runs the loss op
// once against an ATen reference (loss value, and rows of both gradients summing to zero, which holds for
// CE + KL with softmax inputs). Without a GPU it says so and exits 0.
#include <cmath>
#include <cstdio>
#include <iterator>
#include <string>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAFunctions.h>

extern "C" const char* adjoined_kernels_namespace();

static const char* const kOps[] = {"cuda_conv2d_fprop", "cuda_conv2d_dgrad", "cuda_conv2d_wgrad",
                                   "cuda_adjoined_loss_fwd"};

// Number of kOps that the dispatcher knows with a CUDA kernel.
static int count_cuda_kernels() {
  const std::string ns = adjoined_kernels_namespace();
  int n = 0;
  for (const char* name : kOps) {
    auto op = c10::Dispatcher::singleton().findOp({ns + "::" + name, ""});
    const bool ok = op.has_value() && op->hasKernelForDispatchKey(c10::DispatchKey::CUDA);
    std::printf("%s::%s: %s\n", ns.c_str(), name, ok ? "CUDA kernel registered" : "MISSING");
    n += ok;
  }
  return n;
}

int main() {
  const int registered = count_cuda_kernels();
  std::printf("adjoined ops with a CUDA kernel: %d of %zu\n", registered, std::size(kOps));
  if (registered != static_cast<int>(std::size(kOps))) return 1;
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("adjoined::cuda_adjoined_loss_fwd", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                      const at::Tensor&, const at::Tensor&, double,
                                                                      double, int64_t, int64_t, bool, bool)>();
  if (c10::cuda::device_count() == 0) {
    std::printf("no CUDA GPU present: the op is registered, its kernel was not run\n");
    return 0;
  }
  const int64_t B = 16, C = 1000;
  const double eps = 1e-6, T = 2.0, lam = 0.7;
  at::manual_seed(0);
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  at::Tensor lf = at::randn({B, C}, opts) * 3, ls = at::randn({B, C}, opts) * 3;
  at::Tensor tg = at::randint(0, C, {B}, opts.dtype(at::kLong));
  at::Tensor lam_t = at::full({}, lam, opts);
  auto [loss, gf, gs] = op.call(lf, ls, tg, lam_t, eps, T, /*reduction=mean*/ 2, -100, false, true);

  at::Tensor ce = -at::log_softmax(lf, 1).gather(1, tg.unsqueeze(1)).squeeze(1);
  at::Tensor p = at::softmax(lf / T, 1), q = at::softmax(ls / T, 1);
  at::Tensor kl = (p * (at::log(p + eps) - at::log(q + eps))).sum(1);
  at::Tensor ref = ce.mean() + lam * T * T * kl.mean();
  const double err = (loss - ref).abs().item<double>();
  const double row_f = gf.sum(1).abs().max().item<double>(), row_s = gs.sum(1).abs().max().item<double>();
  std::printf("loss %.6f reference %.6f |diff| %.2e; max |row sum| of the gradients: %.2e, %.2e\n",
              loss.item<double>(), ref.item<double>(), err, row_f, row_s);
  const bool ok = err < 1e-4 * std::max(1.0, ref.abs().item<double>()) && row_f < 1e-5 && row_s < 1e-5;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
