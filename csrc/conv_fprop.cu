// Fused adjoined conv, forward pass: z_full and z_small (with bias and the small_scale epilogue) in
// one launch. The kernel lives in conv_rowgemm.cuh (shared with dgrad).
#include "conv_rowgemm.cuh"

namespace adjoined {

void launch_conv_fprop(const RowGemmParams& p, DType dt, cudaStream_t stream) {
  switch (dt) {
    case DType::kFloat32: dev::launch_rowgemm_t<float, false>(p, stream); break;
    case DType::kFloat16: dev::launch_rowgemm_t<__half, false>(p, stream); break;
    case DType::kBFloat16: dev::launch_rowgemm_t<__nv_bfloat16, false>(p, stream); break;
  }
  ADJ_LAUNCH_CHECK();
}

}  // namespace adjoined
