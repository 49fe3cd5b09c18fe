// Fused adjoined conv, data gradient: dx_full = dgrad(dz_full, W), dx_small = dgrad(dz_small * s,
// W[:c_out_s, :c_in_s]) in one launch. The kernel lives in conv_rowgemm.cuh (shared with fprop).
// Stride > 1: rows are grouped by stride phase class, each class loops only over the taps that reach it.
#include "conv_rowgemm.cuh"

namespace adjoined {

void launch_conv_dgrad(const RowGemmParams& p, DType dt, cudaStream_t stream) {
  switch (dt) {
    case DType::kFloat32: dev::launch_rowgemm_t<float, true>(p, stream); break;
    case DType::kFloat16: dev::launch_rowgemm_t<__half, true>(p, stream); break;
    case DType::kBFloat16: dev::launch_rowgemm_t<__nv_bfloat16, true>(p, stream); break;
  }
  ADJ_LAUNCH_CHECK();
}

}  // namespace adjoined
