// GPT-2 forward and backward passes, written once against the Backend interface (backend.hpp).
// What it is: the model math and the activation memory plan. What it is not: kernels (backends),
// the optimizer (paramserver/), or data loading (worker/).
//
// ---- Gradient convention (everything below depends on it) -----------------------------------
//  * Parameter gradients are ACCUMULATED: G += ...  G is the zeroed buffer GptState hands out for
//    the micro-batch (gpt_state.hpp: the first micro-batch of a step accumulates straight into the
//    step's sum, later ones into a buffer that is then folded into the sum in fp32).
//  * Activation gradients are WRITTEN: d_act = ...  (scratch buffers reused by every layer),
//    EXCEPT the residual stream d_res: it is zeroed once at the top, LayerNorm backward adds each
//    branch's contribution into it (+=), and the residual adds pass it through unchanged.
//  * forward_backward adds d(grad_scale · Σ_tokens loss_token)/dθ: the cross-entropy backward
//    seeds dlogits with grad_scale, so grad_scale = 1/(B·T) gives the gradient of the mean loss and
//    grad_scale = 1 the token-sum gradient a worker pushes.
//  * Padded vocabulary rows (V..Vp-1 of wte): their logits are never computed in training (the LM
//    head GEMM runs over the V real rows only) and no token names them, so their gradient is never
//    written and stays exactly 0.
//  * Parameters, gradients and activations are all backend memory; the host sees only token ids
//    going in, and losses or logits coming out.
//
// Shapes: B batch, T sequence, C channels, N = B·T rows, V vocab, Vp padded vocab, L layers,
// NH heads. The LM head is tied: logits (N,V) = lnf (N,C) · wte[0..V)ᵀ.
#include "worker/model/gpt.hpp"

#include "common/error.hpp"
#include "worker/model/backend.hpp"


#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace ptrain {

namespace {

void check_dims(const ModelDims& d) {
  PTRAIN_ENFORCE(d.V > 0 && d.Vp >= d.V, "vocabulary V={} Vp={}", d.V, d.Vp);
  PTRAIN_ENFORCE(d.T > 0 && d.L > 0 && d.NH > 0 && d.C > 0, "model dims T={} L={} NH={} C={}", d.T,
                 d.L, d.NH, d.C);
  PTRAIN_ENFORCE(d.C % d.NH == 0, "n_embd {} is not divisible by n_head {}", d.C, d.NH);
  PTRAIN_ENFORCE(d.V <= std::numeric_limits<int32_t>::max(), "vocabulary too large: {}", d.V);
}

// Activations saved by the forward pass of one transformer block, all (N, ·) row-major.
struct LayerActs {
  float* ln1;       // (N,C)
  float* ln1_mean;  // (N)
  float* ln1_rstd;  // (N)
  float* qkv;       // (N,3C)
  float* lse;       // (B,NH,T) attention rows' log-sum-exp
  float* atty;      // (N,C) attention output before c_proj
  float* res2;      // (N,C) residual after the attention branch
  float* ln2;       // (N,C)
  float* ln2_mean;  // (N)
  float* ln2_rstd;  // (N)
  float* fch;       // (N,4C) c_fc output (GELU input)
  float* fch_gelu;  // (N,4C)
  float* res3;      // (N,C) residual after the MLP branch (the block's output)
};

// Pointers to one block's parameters (F = const float) or gradients (F = float) in a flat vector.
template <typename F>
struct LayerPtrs {
  F *ln_1_w, *ln_1_b, *c_attn_w, *c_attn_b, *attn_proj_w, *attn_proj_b;
  F *ln_2_w, *ln_2_b, *c_fc_w, *c_fc_b, *mlp_proj_w, *mlp_proj_b;
};

template <typename F>
LayerPtrs<F> layer_ptrs(const ParamLayout& layout, int64_t l, F* base) {
  const auto& o = layout.layer(l);
  return {base + o.ln_1_w,      base + o.ln_1_b,      base + o.c_attn_w, base + o.c_attn_b,
          base + o.attn_proj_w, base + o.attn_proj_b, base + o.ln_2_w,   base + o.ln_2_b,
          base + o.c_fc_w,      base + o.c_fc_b,      base + o.mlp_proj_w, base + o.mlp_proj_b};
}

// Splits (B, T+1) windows into inputs and targets (B, T), checking every id against V.
void split_windows(std::span<const int32_t> windows, int64_t B, int64_t T, int64_t V,
                   std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  if (static_cast<int64_t>(windows.size()) != B * (T + 1)) {
    throw InternalError(fmt::format("windows: expected B·(T+1) = {}·{} = {} ids, got {}", B, T + 1,
                                    B * (T + 1), windows.size()));
  }
  inputs.resize(static_cast<size_t>(B * T));
  targets.resize(static_cast<size_t>(B * T));
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* w = windows.data() + b * (T + 1);
    for (int64_t t = 0; t <= T; ++t) {
      if (w[t] < 0 || w[t] >= V) {
        throw DataError(fmt::format(
            "token id {} at window {}, position {} is outside the vocabulary [0, {})", w[t], b, t,
            V));
      }
    }
    std::memcpy(inputs.data() + b * T, w, static_cast<size_t>(T) * sizeof(int32_t));
    std::memcpy(targets.data() + b * T, w + 1, static_cast<size_t>(T) * sizeof(int32_t));
  }
}

// The state must describe this model (same layout: the same vector) on the same backend (its
// pointers are that backend's memory).
void check_state(const GptState& state, const ParamLayout& layout, const Backend& be) {
  PTRAIN_ENFORCE(&state.backend() == &be, "the GptState belongs to another backend ({})",
                 state.backend().name());
  PTRAIN_ENFORCE(state.layout().total() == layout.total() && state.layout().hash() == layout.hash(),
                 "the GptState has another layout ({} parameters, model {})",
                 state.layout().total(), layout.total());
}

}  // namespace

// ---- Gpt -------------------------------------------------------------------------------------

struct Gpt::Impl {
  Impl(const ParamLayout& layout, Backend& backend, int64_t max_batch)
      : layout(layout), be(backend), d(layout.dims()), max_batch(max_batch) {
    check_dims(d);
    PTRAIN_ENFORCE(max_batch >= 1, "max_batch must be >= 1, got {}", max_batch);
    allocate_activations();
  }

  const ParamLayout& layout;
  Backend& be;
  ModelDims d;
  int64_t max_batch;

  Buffer<float> act_mem;
  Buffer<int32_t> tokens, targets;  // (maxB·T) each
  float* encoded = nullptr;         // (N,C)
  std::vector<LayerActs> layers;
  float* lnf = nullptr;       // (N,C)
  float* lnf_mean = nullptr;  // (N)
  float* lnf_rstd = nullptr;  // (N)
  float* logits = nullptr;    // (N,Vp); columns V..Vp-1 only written by forward_logits
  float* losses = nullptr;    // (N)

  // Backward scratch, allocated on the first forward_backward.
  Buffer<float> grad_mem;
  float* d_res = nullptr;   // (N,C) the residual stream's gradient
  float* d_ln = nullptr;    // (N,C) gradient at a LayerNorm output
  float* d_atty = nullptr;  // (N,C)
  float* d_qkv = nullptr;   // (N,3C)
  float* d_fch = nullptr;   // (N,4C) at the GELU output, then (in place) at its input
  float* d_att = nullptr;   // (B,NH,T) attention backward scratch

  // Host staging of token ids and losses.
  std::vector<int32_t> host_inputs, host_targets;
  std::vector<float> host_losses;

  void allocate_activations() {
    const int64_t N = max_batch * d.T, C = d.C;
    const int64_t att = max_batch * d.NH * d.T;
    // ln1, qkv (3), atty, res2, ln2, res3; fch, fch_gelu (4 each); 4 row statistics; lse.
    const int64_t per_layer = 8 * N * C + 8 * N * C + 4 * N + att;
    const int64_t total = N * C + d.L * per_layer + N * C + 2 * N + N * d.Vp + N;
    act_mem = be.alloc<float>(total);
    tokens = be.alloc<int32_t>(N);
    targets = be.alloc<int32_t>(N);
    float* p = act_mem.data();
    auto take = [&p](int64_t n) {
      float* r = p;
      p += n;
      return r;
    };
    encoded = take(N * C);
    layers.resize(static_cast<size_t>(d.L));
    for (auto& a : layers) {
      a.ln1 = take(N * C);
      a.ln1_mean = take(N);
      a.ln1_rstd = take(N);
      a.qkv = take(3 * N * C);
      a.lse = take(att);
      a.atty = take(N * C);
      a.res2 = take(N * C);
      a.ln2 = take(N * C);
      a.ln2_mean = take(N);
      a.ln2_rstd = take(N);
      a.fch = take(4 * N * C);
      a.fch_gelu = take(4 * N * C);
      a.res3 = take(N * C);
    }
    lnf = take(N * C);
    lnf_mean = take(N);
    lnf_rstd = take(N);
    logits = take(N * d.Vp);
    losses = take(N);
    PTRAIN_ENFORCE(p <= act_mem.data() + total, "activation plan overflow");
  }

  void allocate_gradients() {
    if (!grad_mem.empty()) return;
    const int64_t N = max_batch * d.T, C = d.C;
    const int64_t att = max_batch * d.NH * d.T;
    grad_mem = be.alloc<float>(3 * N * C + 3 * N * C + 4 * N * C + att);
    float* p = grad_mem.data();
    d_res = p, p += N * C;
    d_ln = p, p += N * C;
    d_atty = p, p += N * C;
    d_qkv = p, p += 3 * N * C;
    d_fch = p, p += 4 * N * C;
    d_att = p;
  }

  void check_call(const GptState& state, int64_t B, int64_t T) const {
    check_state(state, layout, be);
    PTRAIN_ENFORCE(B >= 1 && B <= max_batch, "batch {} outside [1, {}]", B, max_batch);
    PTRAIN_ENFORCE(T >= 1 && T <= d.T, "sequence length {} outside [1, {}]", T, d.T);
  }


  void upload_tokens(std::span<const int32_t> windows, int64_t B, int64_t T, bool with_targets) {
    split_windows(windows, B, T, d.V, host_inputs, host_targets);
    be.copy_to_device(tokens.data(), host_inputs.data(), host_inputs.size() * sizeof(int32_t));
    if (with_targets) {
      be.copy_to_device(targets.data(), host_targets.data(), host_targets.size() * sizeof(int32_t));
    }
  }

  // The flat ranges the hooks name (step_hooks.hpp): the embeddings, layer l, the final LayerNorm.
  int64_t layer_begin(int64_t l) const { return l < d.L ? layout.layer(l).ln_1_w : layout.ln_f_w(); }
  void hook_forward(StepHooks* h, int64_t l) const {  // l = -1: embeddings, L: final LayerNorm
    if (h == nullptr) return;
    if (l < 0) h->before_forward(0, layer_begin(0));
    else if (l < d.L) h->before_forward(layer_begin(l), layer_begin(l + 1));
    else h->before_forward(layout.ln_f_w(), layout.total());
  }
  void hook_backward(StepHooks* h, int64_t l) const {
    if (h == nullptr) return;
    if (l < 0) h->after_backward(0, layer_begin(0));
    else if (l < d.L) h->after_backward(layer_begin(l), layer_begin(l + 1));
    else h->after_backward(layout.ln_f_w(), layout.total());
  }

  // Forward pass from `tokens` to logits (N, 0..V) (row stride Vp), saving activations.
  void forward(const float* P, int64_t B, int64_t T, StepHooks* hooks = nullptr) {
    const int64_t N = B * T, C = d.C;
    hook_forward(hooks, -1);
    be.encoder_forward(encoded, tokens.data(), P + layout.wte(), P + layout.wpe(), B, T, C);
    const float* res = encoded;
    for (int64_t l = 0; l < d.L; ++l) {
      hook_forward(hooks, l);
      const auto w = layer_ptrs(layout, l, P);
      LayerActs& a = layers[static_cast<size_t>(l)];
      // Attention branch: res2 = res + c_proj(attention(c_attn(ln_1(res)))).
      be.layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, res, w.ln_1_w, w.ln_1_b, N, C);
      be.matmul_forward(a.qkv, a.ln1, w.c_attn_w, w.c_attn_b, N, C, 3 * C);
      be.attention_forward(a.atty, a.lse, a.qkv, AttentionShape{B, T, C, d.NH, true, nullptr});
      be.matmul_residual_forward(a.res2, res, a.atty, w.attn_proj_w, w.attn_proj_b, N, C, C);
      // MLP branch: res3 = res2 + c_proj(gelu(c_fc(ln_2(res2)))).
      be.layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, w.ln_2_w, w.ln_2_b, N, C);
      be.matmul_forward(a.fch, a.ln2, w.c_fc_w, w.c_fc_b, N, C, 4 * C);
      be.gelu_forward(a.fch_gelu, a.fch, N * 4 * C);
      be.matmul_residual_forward(a.res3, a.res2, a.fch_gelu, w.mlp_proj_w, w.mlp_proj_b, N, 4 * C,
                                 C);
      res = a.res3;
    }
    hook_forward(hooks, d.L);
    be.layernorm_forward(lnf, lnf_mean, lnf_rstd, res, P + layout.ln_f_w(), P + layout.ln_f_b(), N,
                         C);
    // Tied LM head over the real vocabulary rows only.
    be.gemm(Trans::kNo, Trans::kYes, N, d.V, C, 1.0f, lnf, C, P + layout.wte(), C, 0.0f, logits,
            d.Vp);
  }

  LossSum sum_losses(int64_t N) {
    host_losses.resize(static_cast<size_t>(N));
    be.copy_to_host(host_losses.data(), losses, static_cast<size_t>(N) * sizeof(float));
    LossSum s;
    for (float x : host_losses) s.loss_sum += static_cast<double>(x);  // fixed order, fp64
    s.tokens = N;
    return s;
  }

  // Backward from dlogits (in `logits`, columns 0..V) into G (+=).
  void backward(const float* P, float* G, int64_t B, int64_t T, StepHooks* hooks = nullptr) {
    const int64_t N = B * T, C = d.C;
    // LM head (tied): d_ln = dlogits · wte[0..V); dwte[0..V) += dlogitsᵀ · lnf.
    be.gemm(Trans::kNo, Trans::kNo, N, C, d.V, 1.0f, logits, d.Vp, P + layout.wte(), C, 0.0f, d_ln,
            C);
    be.gemm(Trans::kYes, Trans::kNo, d.V, C, N, 1.0f, logits, d.Vp, lnf, C, 1.0f,
            G + layout.wte(), C);
    be.fill(d_res, 0.0f, N * C);
    const float* res_top = d.L > 0 ? layers.back().res3 : encoded;
    be.layernorm_backward(d_res, G + layout.ln_f_w(), G + layout.ln_f_b(), d_ln, res_top,
                          P + layout.ln_f_w(), lnf_mean, lnf_rstd, N, C);
    hook_backward(hooks, d.L);
    for (int64_t l = d.L - 1; l >= 0; --l) {
      const auto w = layer_ptrs(layout, l, P);
      const auto g = layer_ptrs(layout, l, G);
      const LayerActs& a = layers[static_cast<size_t>(l)];
      const float* res_in = l == 0 ? encoded : layers[static_cast<size_t>(l - 1)].res3;
      // MLP branch.
      be.matmul_backward(d_fch, g.mlp_proj_w, g.mlp_proj_b, d_res, a.fch_gelu, w.mlp_proj_w, N,
                         4 * C, C);
      be.gelu_backward(d_fch, a.fch, d_fch, N * 4 * C);
      be.matmul_backward(d_ln, g.c_fc_w, g.c_fc_b, d_fch, a.ln2, w.c_fc_w, N, C, 4 * C);
      be.layernorm_backward(d_res, g.ln_2_w, g.ln_2_b, d_ln, a.res2, w.ln_2_w, a.ln2_mean,
                            a.ln2_rstd, N, C);
      // Attention branch.
      be.matmul_backward(d_atty, g.attn_proj_w, g.attn_proj_b, d_res, a.atty, w.attn_proj_w, N, C,
                         C);
      be.attention_backward(d_qkv, d_att, d_atty, a.atty, a.qkv, a.lse,
                            AttentionShape{B, T, C, d.NH, true, nullptr});
      be.matmul_backward(d_ln, g.c_attn_w, g.c_attn_b, d_qkv, a.ln1, w.c_attn_w, N, C, 3 * C);
      be.layernorm_backward(d_res, g.ln_1_w, g.ln_1_b, d_ln, res_in, w.ln_1_w, a.ln1_mean,
                            a.ln1_rstd, N, C);
      hook_backward(hooks, l);
    }
    be.encoder_backward(G + layout.wte(), G + layout.wpe(), d_res, tokens.data(), B, T, C);
    hook_backward(hooks, -1);  // wte's gradient also has the LM head's part: final only now
  }
};

Gpt::Gpt(const ParamLayout& layout, Backend& backend, int64_t max_batch)
    : layout_(layout), impl_(std::make_unique<Impl>(layout, backend, max_batch)) {}

Gpt::~Gpt() = default;

LossSum Gpt::forward_backward(GptState& state, std::span<const int32_t> windows, int64_t B,
                              int64_t T, float grad_scale, StepHooks* hooks) {
  Impl& m = *impl_;
  m.check_call(state, B, T);
  m.allocate_gradients();
  m.upload_tokens(windows, B, T, true);  // validates the ids before any gradient work
  const float* P = state.params();
  m.forward(P, B, T, hooks);
  const int64_t N = B * T;
  m.be.crossentropy_forward_backward(m.losses, m.logits, m.targets.data(), grad_scale, N, m.d.V,
                                     m.d.Vp);
  const LossSum loss = m.sum_losses(N);
  m.backward(P, state.micro_batch_grads(), B, T, hooks);
  state.fold_micro_batch();
  return loss;
}

LossSum Gpt::forward_loss(const GptState& state, std::span<const int32_t> windows, int64_t B,
                          int64_t T) {
  Impl& m = *impl_;
  m.check_call(state, B, T);
  m.upload_tokens(windows, B, T, true);
  m.forward(state.params(), B, T);
  const int64_t N = B * T;
  m.be.crossentropy_forward(m.losses, m.logits, m.targets.data(), N, m.d.V, m.d.Vp);
  return m.sum_losses(N);
}

void Gpt::forward_logits(const GptState& state, std::span<const int32_t> inputs, int64_t B,
                         int64_t T, std::span<float> logits) {
  Impl& m = *impl_;
  m.check_call(state, B, T);
  PTRAIN_ENFORCE(static_cast<int64_t>(inputs.size()) == B * T, "inputs: expected {} ids, got {}",
                 B * T, inputs.size());
  PTRAIN_ENFORCE(static_cast<int64_t>(logits.size()) == B * T * m.d.Vp,
                 "logits: expected {} floats, got {}", B * T * m.d.Vp, logits.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i] < 0 || inputs[i] >= m.d.V) {
      throw DataError(fmt::format("token id {} at input position {} is outside the vocabulary [0, {})",
                                  inputs[i], i, m.d.V));
    }
  }
  m.be.copy_to_device(m.tokens.data(), inputs.data(), inputs.size_bytes());
  m.forward(state.params(), B, T);
  const int64_t N = B * T;
  m.be.fill_columns(m.logits, -std::numeric_limits<float>::infinity(), N, m.d.V, m.d.Vp, m.d.Vp);
  m.be.copy_to_host(logits.data(), m.logits, logits.size_bytes());
}

// ---- GptDecoder ------------------------------------------------------------------------------

struct GptDecoder::Impl {
  Impl(const ParamLayout& layout, Backend& backend)
      : layout(layout), be(backend), d(layout.dims()) {
    check_dims(d);
    const int64_t C = d.C;
    kcache = be.alloc<float>(d.L * d.T * C);
    vcache = be.alloc<float>(d.L * d.T * C);
    work = be.alloc<float>(C /*x*/ + C /*ln*/ + 3 * C /*qkv*/ + C /*atty*/ +
                           4 * C /*fch*/ + 4 * C /*fcg*/ + d.Vp /*logits*/ + d.T /*scratch*/);
    float* p = work.data();
    x = p, p += C;
    ln = p, p += C;
    qkv = p, p += 3 * C;
    atty = p, p += C;
    fch = p, p += 4 * C;
    fcg = p, p += 4 * C;
    logits = p, p += d.Vp;
    scratch = p;
    token = be.alloc<int32_t>(1);
    host_logits.resize(static_cast<size_t>(d.Vp));
  }

  const ParamLayout& layout;
  Backend& be;
  ModelDims d;
  int64_t pos = 0;
  Buffer<float> kcache, vcache;  // (L, T, C) each
  Buffer<float> work;
  Buffer<int32_t> token;
  float *x, *ln, *qkv, *atty, *fch, *fcg, *logits, *scratch;
  std::vector<float> host_logits;
};

GptDecoder::GptDecoder(const ParamLayout& layout, Backend& backend)
    : impl_(std::make_unique<Impl>(layout, backend)) {}

GptDecoder::~GptDecoder() = default;

void GptDecoder::reset() { impl_->pos = 0; }

int64_t GptDecoder::position() const { return impl_->pos; }

std::span<const float> GptDecoder::step(const GptState& state, int32_t token) {
  Impl& m = *impl_;
  const ModelDims& d = m.d;
  const int64_t C = d.C;
  if (m.pos >= d.T) {
    throw UsageError(fmt::format("the decoder is full: the model's context is {} tokens", d.T));
  }
  if (token < 0 || token >= d.V) {
    throw DataError(fmt::format("token id {} is outside the vocabulary [0, {})", token, d.V));
  }
  check_state(state, m.layout, m.be);
  const float* P = state.params();
  m.be.copy_to_device(m.token.data(), &token, sizeof(int32_t));
  m.be.encoder_forward(m.x, m.token.data(), P + m.layout.wte(), P + m.layout.wpe() + m.pos * C, 1,
                       1, C);
  for (int64_t l = 0; l < d.L; ++l) {
    const auto w = layer_ptrs(m.layout, l, P);
    float* kc = m.kcache.data() + l * d.T * C;
    float* vc = m.vcache.data() + l * d.T * C;
    m.be.layernorm_forward(m.ln, nullptr, nullptr, m.x, w.ln_1_w, w.ln_1_b, 1, C);
    m.be.matmul_forward(m.qkv, m.ln, w.c_attn_w, w.c_attn_b, 1, C, 3 * C);
    m.be.copy(kc + m.pos * C, m.qkv + C, C);
    m.be.copy(vc + m.pos * C, m.qkv + 2 * C, C);
    m.be.attention_decode(m.atty, m.scratch, m.qkv, kc, vc, m.pos + 1, C, C, d.NH);
    m.be.matmul_residual_forward(m.x, m.x, m.atty, w.attn_proj_w, w.attn_proj_b, 1, C, C);
    m.be.layernorm_forward(m.ln, nullptr, nullptr, m.x, w.ln_2_w, w.ln_2_b, 1, C);
    m.be.matmul_forward(m.fch, m.ln, w.c_fc_w, w.c_fc_b, 1, C, 4 * C);
    m.be.gelu_forward(m.fcg, m.fch, 4 * C);
    m.be.matmul_residual_forward(m.x, m.x, m.fcg, w.mlp_proj_w, w.mlp_proj_b, 1, 4 * C, C);
  }
  m.be.layernorm_forward(m.ln, nullptr, nullptr, m.x, P + m.layout.ln_f_w(), P + m.layout.ln_f_b(),
                         1, C);
  m.be.gemm(Trans::kNo, Trans::kYes, 1, d.V, C, 1.0f, m.ln, C, P + m.layout.wte(), C, 0.0f,
            m.logits, d.Vp);
  m.be.fill_columns(m.logits, -std::numeric_limits<float>::infinity(), 1, d.V, d.Vp, d.Vp);
  m.be.copy_to_host(m.host_logits.data(), m.logits, m.host_logits.size() * sizeof(float));
  ++m.pos;
  return m.host_logits;
}

}  // namespace ptrain
