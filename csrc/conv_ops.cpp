// ATen side of the fused adjoined conv ops: argument checks, channels_last conversion, output and
// workspace allocation, kernel parameters. The kernels are in conv_fprop.cu, conv_dgrad.cu, conv_wgrad.cu.
#include <algorithm>
#include <utility>
#include <vector>

#include <ATen/ops/mul.h>

#include "host_common.h"
#include "ops.h"

namespace adjoined {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

struct ConvArgs {
  int sh, sw, ph, pw, dh, dw;
};

ConvArgs conv_args(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "adjoined conv: stride, padding and dilation must have 2 elements each, got ", stride, ", ", padding,
              ", ", dilation);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, "adjoined conv: stride must be >= 1, got ", stride);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, "adjoined conv: dilation must be >= 1, got ", dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "adjoined conv: padding must be >= 0, got ", padding);
  ConvArgs a;
  a.sh = checked_int(stride[0], "stride");
  a.sw = checked_int(stride[1], "stride");
  a.ph = checked_int(padding[0], "padding");
  a.pw = checked_int(padding[1], "padding");
  a.dh = checked_int(dilation[0], "dilation");
  a.dw = checked_int(dilation[1], "dilation");
  return a;
}

// Output length as in F.conv2d; 0 when the dilated kernel does not fit (no rounding toward zero).
int64_t out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  const int64_t num = in + 2 * pad - dil * (k - 1) - 1;
  return num < 0 ? 0 : num / stride + 1;
}

void check_cuda_tensor(const at::Tensor& t, const char* name, int64_t dim, const at::Tensor& like) {
  TORCH_CHECK(t.defined(), "adjoined conv: ", name, " is undefined");
  TORCH_CHECK(ADJ_ON_DEVICE(t), "adjoined conv: ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == dim, "adjoined conv: ", name, " must have ", dim, " dims, got shape ", t.sizes());
  TORCH_CHECK(t.device() == like.device(), "adjoined conv: ", name, " is on ", t.device(), " but the inputs are on ",
              like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "adjoined conv: ", name, " has dtype ", t.scalar_type(),
              " but the inputs have ", like.scalar_type());
}

// Grid of the fprop/dgrad kernel: (full tiles, small tiles nobody paired), summed over the stride phase
// classes (pixel strides psh x psw; 1 x 1 for fprop). Classes at or past the larger branch's output size
// are empty and not enumerated (p.nqh x p.nqw classes). Must match the tile decode in conv_rowgemm.cuh.
std::pair<int64_t, int64_t> row_tiles(RowGemmParams& p, int psh, int psw) {
  p.nqh = std::min(psh, std::max(p.br[0].Ho, p.br[1].Ho));
  p.nqw = std::min(psw, std::max(p.br[0].Wo, p.br[1].Wo));
  int64_t full = 0, small = 0;
  for (int qh = 0; qh < p.nqh; ++qh)
    for (int qw = 0; qw < p.nqw; ++qw) {
      int64_t nm[2];
      for (int i = 0; i < 2; ++i) {
        const RowBranch& b = p.br[i];
        const int64_t hq = qh < b.Ho ? (b.Ho - qh - 1) / psh + 1 : 0;
        const int64_t wq = qw < b.Wo ? (b.Wo - qw - 1) / psw + 1 : 0;
        nm[i] = cdiv(static_cast<int64_t>(b.Nb) * hq * wq, kConvBM);
      }
      full += nm[0] * p.br[0].nn;
      small += (p.share ? std::max<int64_t>(nm[1] - nm[0], 0) : nm[1]) * p.br[1].nn;
    }
  return {full, small};
}

void set_row_tiles(RowGemmParams& p, int psh, int psw) {
  const auto [full, small] = row_tiles(p, psh, psw);
  p.tiles_full = checked_int(full, "full tiles");
  p.tiles_small = checked_int(small, "small tiles");
  checked_int(full + small, "grid size");
}

bool vec_ok(const at::Tensor& t, int64_t row_elems) {
  const int64_t vec = 16 / static_cast<int64_t>(t.element_size());
  return t.numel() == 0 || (row_elems % vec == 0 && aligned16(t.data_ptr()));
}

// Weight and geometry fields of fprop's and dgrad's parameters (after the branches' ncb).
void set_weight_params(RowGemmParams& p, const at::Tensor& w, const ConvArgs& ca, bool share_weights) {
  const int64_t C_out = w.size(0), C_in = w.size(1), R = w.size(2), S = w.size(3);
  p.w = w.data_ptr();
  p.C_out = checked_int(C_out, "C_out");
  p.C_in = checked_int(C_in, "C_in");
  p.R = checked_int(R, "kh");
  p.S = checked_int(S, "kw");
  checked_int(C_out * R * S * C_in, "weight numel");
  checked_int(R * S * p.br[0].ncb, "K blocks");
  p.sh = ca.sh; p.sw = ca.sw; p.ph = ca.ph; p.pw = ca.pw; p.dh = ca.dh; p.dw = ca.dw;
  p.vec_w = vec_ok(w, C_in);
  p.share = share_weights ? 1 : 0;
}

}  // namespace

// ------------------------------------------------------------------------------------------- fprop
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_fprop_cuda(
    const at::Tensor& x_full, const at::Tensor& x_small, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& small_scale, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t c_out_s, bool save_pre, bool share_weights) {
  check_cuda_tensor(x_full, "x_full", 4, x_full);
  const DType dt = dtype_of(x_full, "x_full");
  check_cuda_tensor(x_small, "x_small", 4, x_full);
  check_cuda_tensor(weight, "weight", 4, x_full);
  const ConvArgs ca = conv_args(stride, padding, dilation);
  const int64_t C_out = weight.size(0), C_in = weight.size(1), R = weight.size(2), S = weight.size(3);
  TORCH_CHECK(C_out >= 1 && C_in >= 1 && R >= 1 && S >= 1, "adjoined conv: empty weight ", weight.sizes());
  TORCH_CHECK(x_full.size(1) == C_in, "adjoined conv: x_full must have C_in=", C_in, " channels, got ", x_full.sizes());
  const int64_t c_in_s = x_small.size(1);
  TORCH_CHECK(c_in_s >= 1 && c_in_s <= C_in, "adjoined conv: x_small must have 1 <= c_in_s <= ", C_in,
              " channels, got ", x_small.sizes());
  TORCH_CHECK(c_out_s >= 1 && c_out_s <= C_out, "adjoined conv: c_out_s must be in [1, ", C_out, "], got ", c_out_s);
  at::Tensor b, sc;
  if (bias.has_value() && bias->defined()) {
    check_cuda_tensor(*bias, "bias", 1, x_full);
    TORCH_CHECK(bias->size(0) == C_out, "adjoined conv: bias must have shape [", C_out, "], got ", bias->sizes());
    b = bias->contiguous();
  }
  if (small_scale.has_value() && small_scale->defined()) {
    check_cuda_tensor(*small_scale, "small_scale", 1, x_full);
    TORCH_CHECK(small_scale->size(0) == c_out_s, "adjoined conv: small_scale must have shape [", c_out_s, "], got ",
                small_scale->sizes());
    sc = small_scale->contiguous();
  }
  const int64_t N1 = x_full.size(0), H1 = x_full.size(2), W1 = x_full.size(3);
  const int64_t N2 = x_small.size(0), H2 = x_small.size(2), W2 = x_small.size(3);
  const int64_t P1 = out_size(H1, R, ca.sh, ca.ph, ca.dh), Q1 = out_size(W1, S, ca.sw, ca.pw, ca.dw);
  const int64_t P2 = out_size(H2, R, ca.sh, ca.ph, ca.dh), Q2 = out_size(W2, S, ca.sw, ca.pw, ca.dw);
  TORCH_CHECK(P1 >= 1 && Q1 >= 1, "adjoined conv: x_full spatial size ", x_full.sizes(),
              " is smaller than the dilated kernel plus padding");
  TORCH_CHECK(P2 >= 1 && Q2 >= 1, "adjoined conv: x_small spatial size ", x_small.sizes(),
              " is smaller than the dilated kernel plus padding");

  ADJ_DEVICE_GUARD(x_full);
  const at::Tensor xf = x_full.contiguous(kCL), xs = x_small.contiguous(kCL), w = weight.contiguous(kCL);
  const auto opts = xf.options();
  at::Tensor zf = new_output({N1, C_out, P1, Q1}, opts, kCL);
  at::Tensor zs = new_output({N2, c_out_s, P2, Q2}, opts, kCL);
  at::Tensor us = save_pre ? new_output({N2, c_out_s, P2, Q2}, opts, kCL) : new_output({0}, opts);

  RowGemmParams p;
  const int64_t Ms[2] = {N1 * P1 * Q1, N2 * P2 * Q2};
  const at::Tensor* xs_[2] = {&xf, &xs};
  at::Tensor* zs_[2] = {&zf, &zs};
  const int64_t ka[2] = {C_in, c_in_s}, nout[2] = {C_out, c_out_s};
  const int64_t hs[2] = {H1, H2}, wsz[2] = {W1, W2}, ho[2] = {P1, P2}, wo[2] = {Q1, Q2};
  for (int i = 0; i < 2; ++i) {
    RowBranch& br = p.br[i];
    br.a = xs_[i]->data_ptr();
    br.out = zs_[i]->data_ptr();
    br.out_pre = (i == 1 && save_pre) ? us.data_ptr() : nullptr;
    checked_int(Ms[i], "N*P*Q");
    br.Nb = checked_int(i ? N2 : N1, "N");
    br.Ho = checked_int(ho[i], "P");
    br.Wo = checked_int(wo[i], "Q");
    br.Hs = checked_int(hs[i], "H");
    br.Ws = checked_int(wsz[i], "W");
    br.Ka = checked_int(ka[i], "C_in");
    br.n_out = checked_int(nout[i], "C_out");
    br.nn = static_cast<int>(cdiv(br.n_out, kConvBN));
    br.ncb = static_cast<int>(cdiv(br.Ka, kConvBK));
    br.vec_a = vec_ok(*xs_[i], ka[i]);
  }
  set_weight_params(p, w, ca, share_weights);
  p.bias = b.defined() ? b.data_ptr() : nullptr;
  p.scale = sc.defined() ? sc.data_ptr() : nullptr;
  set_row_tiles(p, 1, 1);
  launch_conv_fprop(p, dt, ADJ_STREAM(x_full));
  return {zf, zs, us};
}

// ------------------------------------------------------------------------------------------- dgrad
std::tuple<at::Tensor, at::Tensor> conv2d_dgrad_cuda(
    const at::Tensor& dz_full, const at::Tensor& dz_small, const at::Tensor& weight,
    const std::optional<at::Tensor>& small_scale, at::IntArrayRef full_hw, at::IntArrayRef small_hw, int64_t c_in_s,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool share_weights) {
  check_cuda_tensor(dz_full, "dz_full", 4, dz_full);
  const DType dt = dtype_of(dz_full, "dz_full");
  check_cuda_tensor(dz_small, "dz_small", 4, dz_full);
  check_cuda_tensor(weight, "weight", 4, dz_full);
  const ConvArgs ca = conv_args(stride, padding, dilation);
  TORCH_CHECK(full_hw.size() == 2 && small_hw.size() == 2, "adjoined conv dgrad: full_hw and small_hw must be "
              "[H, W] pairs, got ", full_hw, " and ", small_hw);
  const int64_t C_out = weight.size(0), C_in = weight.size(1), R = weight.size(2), S = weight.size(3);
  TORCH_CHECK(C_out >= 1 && C_in >= 1 && R >= 1 && S >= 1, "adjoined conv dgrad: empty weight ", weight.sizes());
  const int64_t c_out_s = dz_small.size(1);
  TORCH_CHECK(dz_full.size(1) == C_out, "adjoined conv dgrad: dz_full must have ", C_out, " channels, got ",
              dz_full.sizes());
  TORCH_CHECK(c_out_s >= 1 && c_out_s <= C_out, "adjoined conv dgrad: dz_small must have 1..", C_out,
              " channels, got ", dz_small.sizes());
  TORCH_CHECK(c_in_s >= 1 && c_in_s <= C_in, "adjoined conv dgrad: c_in_s must be in [1, ", C_in, "], got ", c_in_s);
  at::Tensor sc;
  if (small_scale.has_value() && small_scale->defined()) {
    check_cuda_tensor(*small_scale, "small_scale", 1, dz_full);
    TORCH_CHECK(small_scale->size(0) == c_out_s, "adjoined conv dgrad: small_scale must have shape [", c_out_s,
                "], got ", small_scale->sizes());
    sc = small_scale->contiguous();
  }
  const int64_t N1 = dz_full.size(0), N2 = dz_small.size(0);
  const int64_t H[2] = {full_hw[0], small_hw[0]}, W[2] = {full_hw[1], small_hw[1]};
  const at::Tensor* dzs_[2] = {&dz_full, &dz_small};
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(H[i] >= 1 && W[i] >= 1, "adjoined conv dgrad: input sizes must be >= 1, got ", H[i], "x", W[i]);
    const int64_t P = out_size(H[i], R, ca.sh, ca.ph, ca.dh), Q = out_size(W[i], S, ca.sw, ca.pw, ca.dw);
    TORCH_CHECK(P >= 1 && Q >= 1, "adjoined conv dgrad: an input of ", H[i], "x", W[i],
                " is smaller than the dilated kernel plus padding");
    TORCH_CHECK(dzs_[i]->size(2) == P && dzs_[i]->size(3) == Q, "adjoined conv dgrad: ", i ? "dz_small" : "dz_full",
                " has spatial size ", dzs_[i]->sizes(), " but an input of ", H[i], "x", W[i], " gives ", P, "x", Q);
  }

  ADJ_DEVICE_GUARD(dz_full);
  const at::Tensor dzf = dz_full.contiguous(kCL), w = weight.contiguous(kCL);
  // small_scale runs along dgrad's K (output channels): scale dz_small once, in its dtype as the reference does,
  // so the kernels copy A tiles straight to shared memory.
  const at::Tensor dzs = sc.defined() ? at::mul(dz_small, sc.view({1, -1, 1, 1})).contiguous(kCL)
                                      : dz_small.contiguous(kCL);
  const auto opts = dzf.options();
  at::Tensor dxf = new_output({N1, C_in, H[0], W[0]}, opts, kCL);
  at::Tensor dxs = new_output({N2, c_in_s, H[1], W[1]}, opts, kCL);

  RowGemmParams p;
  const at::Tensor* a_[2] = {&dzf, &dzs};
  at::Tensor* o_[2] = {&dxf, &dxs};
  const int64_t N[2] = {N1, N2}, ka[2] = {C_out, c_out_s}, nout[2] = {C_in, c_in_s};
  for (int i = 0; i < 2; ++i) {
    RowBranch& br = p.br[i];
    br.a = a_[i]->data_ptr();
    br.out = o_[i]->data_ptr();
    br.out_pre = nullptr;
    checked_int(N[i] * H[i] * W[i], "N*H*W");
    br.Nb = checked_int(N[i], "N");
    br.Ho = checked_int(H[i], "H");
    br.Wo = checked_int(W[i], "W");
    br.Hs = checked_int(a_[i]->size(2), "P");
    br.Ws = checked_int(a_[i]->size(3), "Q");
    br.Ka = checked_int(ka[i], "C_out");
    br.n_out = checked_int(nout[i], "C_in");
    br.nn = static_cast<int>(cdiv(br.n_out, kConvBN));
    br.ncb = static_cast<int>(cdiv(br.Ka, kConvBK));
    br.vec_a = vec_ok(*a_[i], ka[i]);
    checked_int(a_[i]->numel(), "dz numel");
  }
  set_weight_params(p, w, ca, share_weights);  // dgrad: no bias, and dz_small already carries small_scale
  set_row_tiles(p, ca.sh, ca.sw);  // one group of tiles per stride phase class
  launch_conv_dgrad(p, dt, ADJ_STREAM(dz_full));
  return {dxf, dxs};
}

// ------------------------------------------------------------------------------------------- wgrad
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_wgrad_cuda(
    const at::Tensor& x_full, const at::Tensor& x_small, const at::Tensor& dz_full, const at::Tensor& dz_small,
    const std::optional<at::Tensor>& small_scale, const std::optional<at::Tensor>& u_small,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    bool need_weight, bool need_bias) {
  check_cuda_tensor(x_full, "x_full", 4, x_full);
  const DType dt = dtype_of(x_full, "x_full");
  check_cuda_tensor(x_small, "x_small", 4, x_full);
  check_cuda_tensor(dz_full, "dz_full", 4, x_full);
  check_cuda_tensor(dz_small, "dz_small", 4, x_full);
  const ConvArgs ca = conv_args(stride, padding, dilation);
  TORCH_CHECK(kernel_size.size() == 2 && kernel_size[0] >= 1 && kernel_size[1] >= 1,
              "adjoined conv wgrad: kernel_size must be a pair of ints >= 1, got ", kernel_size);
  const int64_t R = kernel_size[0], S = kernel_size[1];
  const int64_t C_in = x_full.size(1), c_in_s = x_small.size(1), C_out = dz_full.size(1), c_out_s = dz_small.size(1);
  TORCH_CHECK(C_in >= 1 && c_in_s >= 1 && c_in_s <= C_in, "adjoined conv wgrad: need 1 <= c_in_s <= C_in, got x_full ",
              x_full.sizes(), " and x_small ", x_small.sizes());
  TORCH_CHECK(C_out >= 1 && c_out_s >= 1 && c_out_s <= C_out, "adjoined conv wgrad: need 1 <= c_out_s <= C_out, got "
              "dz_full ", dz_full.sizes(), " and dz_small ", dz_small.sizes());
  TORCH_CHECK(dz_full.size(0) == x_full.size(0) && dz_small.size(0) == x_small.size(0),
              "adjoined conv wgrad: batch sizes of x and dz differ");
  const at::Tensor* x_[2] = {&x_full, &x_small};
  const at::Tensor* d_[2] = {&dz_full, &dz_small};
  for (int i = 0; i < 2; ++i) {
    const int64_t P = out_size(x_[i]->size(2), R, ca.sh, ca.ph, ca.dh), Q = out_size(x_[i]->size(3), S, ca.sw, ca.pw, ca.dw);
    TORCH_CHECK(P >= 1 && Q >= 1, "adjoined conv wgrad: ", i ? "x_small" : "x_full", " ", x_[i]->sizes(),
                " is smaller than the dilated kernel plus padding");
    TORCH_CHECK(d_[i]->size(2) == P && d_[i]->size(3) == Q, "adjoined conv wgrad: ", i ? "dz_small" : "dz_full",
                " has spatial size ", d_[i]->sizes(), " but the input ", x_[i]->sizes(), " gives ", P, "x", Q);
  }
  at::Tensor sc, us;
  if (small_scale.has_value() && small_scale->defined()) {
    check_cuda_tensor(*small_scale, "small_scale", 1, x_full);
    TORCH_CHECK(small_scale->size(0) == c_out_s, "adjoined conv wgrad: small_scale must have shape [", c_out_s,
                "], got ", small_scale->sizes());
    sc = small_scale->contiguous();
  }
  const bool need_scale = u_small.has_value() && u_small->defined() && u_small->numel() > 0;
  if (need_scale) {
    check_cuda_tensor(*u_small, "u_small", 4, x_full);
    TORCH_CHECK(u_small->sizes() == dz_small.sizes(), "adjoined conv wgrad: u_small must have the shape of dz_small ",
                dz_small.sizes(), ", got ", u_small->sizes());
  }

  ADJ_DEVICE_GUARD(x_full);
  const auto opts = x_full.options();
  at::Tensor dw = need_weight ? new_output({C_out, C_in, R, S}, opts, kCL) : new_output({0}, opts);
  at::Tensor db = need_bias ? new_output({C_out}, opts) : new_output({0}, opts);
  at::Tensor dscale = need_scale ? new_output({c_out_s}, opts) : new_output({0}, opts);
  if (!need_weight && !need_bias && !need_scale) return {dw, db, dscale};

  const at::Tensor xf = x_full.contiguous(kCL), xs = x_small.contiguous(kCL);
  const at::Tensor dzf = dz_full.contiguous(kCL), dzs = dz_small.contiguous(kCL);
  if (need_scale) us = u_small->contiguous(kCL);
  const cudaStream_t stream = ADJ_STREAM(x_full);
  const int sms = sm_count(x_full.get_device());
  const int64_t M1 = dzf.size(0) * dzf.size(2) * dzf.size(3), M2 = dzs.size(0) * dzs.size(2) * dzs.size(3);
  checked_int(M1, "N*P*Q");
  checked_int(M2, "N*P*Q");
  checked_int(dzf.numel(), "dz numel");
  checked_int(dzs.numel(), "dz numel");
  checked_int(xf.numel(), "x numel");
  checked_int(xs.numel(), "x numel");
  const int64_t E = C_out * R * S * C_in;
  checked_int(E, "weight numel");

  WgradReduceParams rp;
  rp.C_out = static_cast<int>(C_out);
  rp.c_out_s = static_cast<int>(c_out_s);
  at::Tensor ws, cws;
  const auto fopts = opts.dtype(at::kFloat);
  if (need_weight) {
    WgradParams p;
    // The GEMM's dz_small carries small_scale (one mul, in dz's dtype as the reference does); the channel
    // sums below use dz_small as it is.
    const at::Tensor dzs_gemm = sc.defined() ? at::mul(dzs, sc.view({1, -1, 1, 1})).contiguous(kCL) : dzs;
    const at::Tensor* xx[2] = {&xf, &xs};
    const at::Tensor* dd[2] = {&dzf, &dzs_gemm};
    for (int i = 0; i < 2; ++i) {
      WgBranch& b = p.br[i];
      b.x = xx[i]->data_ptr();
      b.dy = dd[i]->data_ptr();
      b.M = static_cast<int>(i ? M2 : M1);
      b.P = static_cast<int>(dd[i]->size(2));
      b.Q = static_cast<int>(dd[i]->size(3));
      b.H = checked_int(xx[i]->size(2), "H");
      b.W = checked_int(xx[i]->size(3), "W");
      b.cin = static_cast<int>(xx[i]->size(1));
      b.cout = static_cast<int>(dd[i]->size(1));
      b.kb = static_cast<int>(cdiv(b.M, kConvBK));
      b.vec_x = vec_ok(*xx[i], b.cin);
      b.vec_dy = vec_ok(*dd[i], b.cout);
    }
    p.C_out = static_cast<int>(C_out);
    p.C_in = static_cast<int>(C_in);
    p.R = checked_int(R, "kh");
    p.S = checked_int(S, "kw");
    p.sh = ca.sh; p.sw = ca.sw; p.ph = ca.ph; p.pw = ca.pw; p.dh = ca.dh; p.dw = ca.dw;
    p.nm = static_cast<int>(cdiv(C_out, kConvBM));
    p.ncbn = static_cast<int>(cdiv(C_in, kConvBN));
    p.pm = M2 > 0 ? static_cast<int>(cdiv(c_out_s, kConvBM)) : 0;
    p.pcbn = M2 > 0 ? static_cast<int>(cdiv(c_in_s, kConvBN)) : 0;
    p.tiles = checked_int(static_cast<int64_t>(p.nm) * R * S * p.ncbn, "wgrad tiles");
    // Split K so the grid covers the GPU about twice, with >= 4 K blocks per split on the longest
    // tiles and a workspace of at most 256 MiB. The choice depends on shapes and the SM count only.
    const int64_t kb_max = static_cast<int64_t>(p.br[0].kb) + (p.pm > 0 ? p.br[1].kb : 0);
    int64_t splits = std::min<int64_t>(cdiv(2LL * sms, p.tiles), 64);
    splits = std::min<int64_t>(splits, std::max<int64_t>(1, kb_max / 4));
    splits = std::min<int64_t>(splits, std::max<int64_t>(1, (256LL << 20) / (E * 4)));
    splits = std::max<int64_t>(splits, 1);
    p.splits = static_cast<int>(splits);
    checked_int(static_cast<int64_t>(p.tiles) * p.splits, "wgrad grid size");
    ws = new_output({splits * E}, fopts);
    p.ws = ws.data_ptr<float>();
    launch_conv_wgrad(p, dt, stream);
    rp.ws = p.ws;
    rp.dw = dw.data_ptr();
    rp.E = E;
    rp.splits = p.splits;
  }
  if (need_bias || need_scale) {
    ChanParams cp;
    cp.dzf = need_bias ? dzf.data_ptr() : nullptr;
    cp.M1 = static_cast<int>(M1);
    cp.dzs = dzs.data_ptr();
    cp.us = need_scale ? us.data_ptr() : nullptr;
    cp.M2 = static_cast<int>(M2);
    cp.C_out = static_cast<int>(C_out);
    cp.c_out_s = static_cast<int>(c_out_s);
    int64_t cs = cdiv(2LL * sms, cdiv(C_out, 32));
    cs = std::min<int64_t>(cs, std::max<int64_t>(1, cdiv(std::max(M1, M2), 64)));
    cs = std::max<int64_t>(1, std::min<int64_t>(cs, 64));
    cp.csplits = static_cast<int>(cs);
    cws = new_output({cs * 3 * C_out}, fopts);
    cp.cws = cws.data_ptr<float>();
    launch_conv_chan_partial(cp, dt, stream);
    rp.cws = cp.cws;
    rp.csplits = cp.csplits;
    rp.db = need_bias ? db.data_ptr() : nullptr;
    rp.dscale = need_scale ? dscale.data_ptr() : nullptr;
    rp.scale = sc.defined() ? sc.data_ptr() : nullptr;
  }
  launch_conv_wgrad_reduce(rp, dt, stream);
  return {dw, db, dscale};
}

}  // namespace adjoined
