// Plain parameter structs and launcher declarations shared by the kernels (.cu) and the ATen host code
// (.cpp). No torch headers here, so the .cu files stay cheap to compile.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace adjoined {

// Element type of every floating tensor of one call (inputs, weight, outputs).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// ------------------------------------------------------------------------------------------------
// fprop and dgrad: a grouped implicit GEMM whose rows are output pixels (NHWC), one launch for both
// branches. fprop: M = N*P*Q, N = C_out, K = R*S*C_in.  dgrad: M = N*H*W, N = C_in, K = R*S*C_out, with
// the rows split into stride phase classes so that each class only visits the taps that reach it.
// The K loop runs over (filter tap, channel block); channel blocks of the small branch are a prefix of
// the full branch's, so a tile that owns a full and a small output tile loads each weight tile once.
struct RowBranch {
  const void* a = nullptr;    // A source, NHWC contiguous [Nb, Hs, Ws, Ka]: x (fprop) or dz (dgrad)
  void* out = nullptr;        // output, NHWC contiguous [Nb, Ho, Wo, n_out]: z (fprop) or dx (dgrad)
  void* out_pre = nullptr;    // fprop, small branch: output before small_scale, or nullptr
  int Nb = 0;                 // batch
  int Ho = 1, Wo = 1;         // spatial size of the output
  int Hs = 1, Ws = 1;         // spatial size of the A source
  int Ka = 1;                 // channels of the A source (the K channel extent; its row stride)
  int n_out = 1;              // output channels (GEMM N extent; the output's row stride)
  int nn = 0, ncb = 0;        // ceil(n_out/BN), ceil(Ka/BK)
  int vec_a = 0;              // A rows may be read with 16-byte loads
};

struct RowGemmParams {
  RowBranch br[2];            // 0: full branch, 1: small branch
  const void* w = nullptr;    // weight in KRSC order: [C_out][R*S][C_in] (channels_last [C_out, C_in, R, S])
  const void* bias = nullptr; // fprop: [C_out] or nullptr
  const void* scale = nullptr;  // fprop: small_scale [c_out_s] (small epilogue gate) or nullptr; dgrad: nullptr
  int C_out = 1, C_in = 1, R = 1, S = 1;
  int sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int vec_w = 0;              // weight rows may be read with 16-byte loads
  int nqh = 1, nqw = 1;       // phase classes enumerated: dgrad min(stride, max Ho/Wo of the branches); fprop 1
  int tiles_full = 0;         // blocks [0, tiles_full) own a full tile (and the paired small tile)
  int tiles_small = 0;        // blocks after them own the small tiles no full tile took (see row_tiles)
  int share = 1;              // pair full and small tiles that need the same weight tile
  int group_m = 8;            // tile swizzle band height
};

// ------------------------------------------------------------------------------------------------
// wgrad: M = C_out, N = R*S*C_in (tiled per filter tap), K = N*P*Q. Split-K into an fp32 workspace
// [splits][C_out][R*S][C_in]; tiles inside the [:c_out_s, :c_in_s] prefix take K blocks of both
// branches. A second kernel sums the splits in a fixed order (deterministic, no atomics).
struct WgBranch {
  const void* x = nullptr;    // NHWC contiguous [Nb, H, W, cin]
  const void* dy = nullptr;   // NHWC contiguous [Nb, P, Q, cout] = [M, cout]
  int M = 0;                  // Nb * P * Q
  int P = 1, Q = 1, H = 1, W = 1;
  int cin = 1, cout = 1;
  int kb = 0;                 // ceil(M / BK)
  int vec_x = 0, vec_dy = 0;
};

struct WgradParams {
  WgBranch br[2];               // br[1].dy: dz_small * small_scale
  float* ws = nullptr;          // [splits][C_out][R*S][C_in]
  int C_out = 1, C_in = 1, R = 1, S = 1;
  int sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int nm = 0, ncbn = 0;         // ceil(C_out/BM), ceil(C_in/BN)
  int pm = 0, pcbn = 0;         // prefix tiles: ceil(c_out_s/BM), ceil(c_in_s/BN); 0 when M2 == 0
  int tiles = 0;                // nm * R*S * ncbn
  int splits = 1;
};

// Per-channel partial sums for db and d small_scale: [csplits][3][C_out] fp32 (sum dz_full,
// sum dz_small, sum dz_small * u_small), summed by the reduce kernel.
struct ChanParams {
  const void* dzf = nullptr; int M1 = 0;
  const void* dzs = nullptr; const void* us = nullptr; int M2 = 0;
  int C_out = 1, c_out_s = 1;
  float* cws = nullptr;
  int csplits = 1;
};

struct WgradReduceParams {
  const float* ws = nullptr; void* dw = nullptr; int64_t E = 0; int splits = 1;   // dW = sum of splits
  const float* cws = nullptr; int csplits = 0;                                     // channel partials
  void* db = nullptr; void* dscale = nullptr; const void* scale = nullptr;
  int C_out = 1, c_out_s = 1;
};

// Tile sizes of the conv kernels (host code needs them for the grid).
constexpr int kConvBM = 128, kConvBN = 64, kConvBK = 32, kConvThreads = 256;

void launch_conv_fprop(const RowGemmParams& p, DType dt, cudaStream_t stream);
void launch_conv_dgrad(const RowGemmParams& p, DType dt, cudaStream_t stream);
void launch_conv_wgrad(const WgradParams& p, DType dt, cudaStream_t stream);
void launch_conv_chan_partial(const ChanParams& p, DType dt, cudaStream_t stream);
void launch_conv_wgrad_reduce(const WgradReduceParams& p, DType dt, cudaStream_t stream);

// ------------------------------------------------------------------------------------------------
// Fused adjoined loss: one block per row, loss and both gradients in one kernel.
struct LossParams {
  const void* lf = nullptr; const void* ls = nullptr;   // [B, C], unit class stride
  int64_t s_lf = 0, s_ls = 0;                           // row strides in elements
  const void* target = nullptr; int tgt64 = 1;          // int64 or int32 [B]
  const float* lam = nullptr;                           // 0-dim fp32 on the device
  const int* nvalid = nullptr;                          // "mean": precomputed count, or nullptr (count inline)
  void* gf = nullptr; void* gs = nullptr;               // [B, C] contiguous gradients, or nullptr
  void* loss = nullptr;                                 // "none": [B] in the logits' dtype
  float* rows = nullptr;                                // "sum"/"mean": per-row fp32 shares [B]
  float eps = 0.f, temp = 1.f, inv_t = 1.f;
  int64_t ignore_index = -100;
  int B = 0, C = 0;
  int reduction = 2;                                    // 0 none, 1 sum, 2 mean
  int detach = 0;
};

// "mean": rows count the valid targets themselves up to this B, as the Triton kernel does; beyond it, every
// row loading all B targets (B^2 loads: 16M at B=4096) costs more than one counting launch.
constexpr int kLossCountInlineMax = 1024;

void launch_loss_count(const void* target, int tgt64, int64_t ignore_index, int B, int* out, cudaStream_t stream);
void launch_loss_rows(const LossParams& p, DType dt, cudaStream_t stream);
void launch_loss_sum(const float* rows, int B, void* loss, DType dt, cudaStream_t stream);

}  // namespace adjoined
