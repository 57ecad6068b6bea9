// BERT forward and backward passes over the Backend (bert.hpp). The gradient convention is the GPT
// model's (gpt.cpp): parameter gradients are ACCUMULATED into the zeroed buffer the GptState hands
// out; activation gradients are WRITTEN, except where a LayerNorm backward adds into a buffer
// zeroed for it, or a linear backward adds (accumulate_dinp) onto a residual gradient copied there
// first.
//
// One post-LN block (HF BertLayer), x the block input:
//   q,k,v = x·Wqᵀ+bq, …   a = attention(q,k,v; key mask)   s1 = a·Waoᵀ + bao + x   h1 = LN1(s1)
//   i = gelu(h1·Wiᵀ + bi)                                   s2 = i·Woᵀ + bo + h1   h2 = LN2(s2)
// Embeddings: LN(word + token_type + position). MLM head on the gathered predicted rows m:
//   logits = LN(gelu(h·Wtᵀ + bt))·wte[0..V)ᵀ + cls.predictions.bias
// Shapes: B batch, T sequence, C channels, I = 4C, N = B·T rows, M predicted rows, V vocab, Vp
// padded vocab, K labels.
#include "worker/model/bert.hpp"

#include "common/error.hpp"
#include "worker/model/backend.hpp"

#include <fmt/format.h>

#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace ptrain {

namespace {

constexpr float kBertLayerNormEps = 1e-12f;

struct BlockOffsets {
  int64_t q_w, q_b, k_w, k_b, v_w, v_b, ao_w, ao_b, ln1_w, ln1_b, i_w, i_b, o_w, o_b, ln2_w, ln2_b;
};

struct BlockActs {
  float* qkv;   // (N,3C) [Q|K|V]
  float* lse;   // (B,NH,T) attention rows' log-sum-exp
  float* a;     // (N,C) attention output before the dense
  float* s1;    // (N,C) LN1 input
  float* ln1_mean;
  float* ln1_rstd;
  float* h1;    // (N,C)
  float* ipre;  // (N,I) GELU input
  float* igelu; // (N,I)
  float* s2;    // (N,C) LN2 input
  float* ln2_mean;
  float* ln2_rstd;
  float* h2;    // (N,C) the block's output
};

void check_ids(std::span<const int32_t> ids, int64_t V, const char* what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= V) {
      throw DataError(fmt::format("{}: token id {} at position {} is outside the vocabulary [0, {})",
                                  what, ids[i], i, V));
    }
  }
}

}  // namespace

struct Bert::Impl {
  Impl(const ParamLayout& layout, Backend& backend, int64_t max_batch)
      : layout(layout), be(backend), d(layout.dims()), max_batch(max_batch) {
    PTRAIN_ENFORCE(d.arch == ModelArch::kBert, "Bert needs a BERT layout");
    PTRAIN_ENFORCE(d.V > 0 && d.Vp >= d.V, "vocabulary V={} Vp={}", d.V, d.Vp);
    PTRAIN_ENFORCE(d.T > 0 && d.L > 0 && d.NH > 0 && d.C > 0 && d.C % d.NH == 0,
                   "model dims T={} L={} NH={} C={}", d.T, d.L, d.NH, d.C);
    PTRAIN_ENFORCE(max_batch >= 1, "max_batch must be >= 1, got {}", max_batch);
    resolve_offsets();
    allocate();
    // The hooks' ranges (step_hooks.hpp): [0, layer 0) = the embeddings, each layer, the head.
    const int64_t head = d.num_labels > 0 ? pool_w : pred_bias;
    PTRAIN_ENFORCE(wte == 0 && blocks.front().q_w > 0 && head > blocks.back().q_w,
                   "the BERT layout is not [embeddings | layers | head]");
    bounds.push_back(0);
    for (const BlockOffsets& o : blocks) bounds.push_back(o.q_w);
    bounds.push_back(head);
    bounds.push_back(layout.total());
  }

  const ParamLayout& layout;
  Backend& be;
  ModelDims d;
  int64_t max_batch;

  int64_t wte = 0, wpe = 0, wtt = 0, emb_ln_w = 0, emb_ln_b = 0;
  std::vector<BlockOffsets> blocks;
  int64_t pred_bias = 0, tr_w = 0, tr_b = 0, tr_ln_w = 0, tr_ln_b = 0;  // MLM head
  int64_t pool_w = 0, pool_b = 0, cls_w = 0, cls_b = 0;                  // classifier
  // Range k of the hooks is [bounds[k], bounds[k+1]): k = 0 embeddings, 1..L layers, L+1 head.
  std::vector<int64_t> bounds;

  void before_forward(StepHooks* hooks, size_t k) const {
    if (hooks != nullptr) hooks->before_forward(bounds[k], bounds[k + 1]);
  }
  // Range k's gradient is complete for this micro-batch: fold it into the sum, then say so.
  void after_backward(GptState& state, StepHooks* hooks, size_t k) const {
    state.fold_range(bounds[k], bounds[k + 1]);
    if (hooks != nullptr) hooks->after_backward(bounds[k], bounds[k + 1]);
  }

  Buffer<float> act_mem, grad_mem;
  Buffer<int32_t> int_mem;
  int32_t *tokens = nullptr, *valid = nullptr, *rows = nullptr, *targets = nullptr,
          *preds = nullptr;
  float *emb = nullptr, *emb_mean = nullptr, *emb_rstd = nullptr, *x0 = nullptr;
  std::vector<BlockActs> acts;
  // The key-padding mask of the last encode() (null = none), which its backward reapplies.
  const int32_t* key_mask = nullptr;
  // Head (MLM: M ≤ N rows; classification: B rows use the first rows of the same buffers).
  float *hm = nullptr, *t = nullptr, *tg = nullptr, *tl = nullptr, *tl_mean = nullptr,
        *tl_rstd = nullptr, *logits = nullptr, *losses = nullptr;
  // Backward scratch.
  float *dh = nullptr, *ds = nullptr, *dx = nullptr, *da = nullptr, *dqkv = nullptr, *di = nullptr,
        *datt = nullptr;

  std::vector<int32_t> host_rows, host_targets, host_preds;
  std::vector<float> host_losses;

  void resolve_offsets() {
    const ParamLayout& L = layout;
    wte = L.offset_of("bert.embeddings.word_embeddings.weight");
    wpe = L.offset_of("bert.embeddings.position_embeddings.weight");
    wtt = L.offset_of("bert.embeddings.token_type_embeddings.weight");
    emb_ln_w = L.offset_of("bert.embeddings.LayerNorm.weight");
    emb_ln_b = L.offset_of("bert.embeddings.LayerNorm.bias");
    for (int64_t l = 0; l < d.L; ++l) {
      const std::string p = fmt::format("bert.encoder.layer.{}.", l);
      auto o = [&](const char* s) { return L.offset_of(p + s); };
      blocks.push_back({o("attention.self.query.weight"), o("attention.self.query.bias"),
                        o("attention.self.key.weight"), o("attention.self.key.bias"),
                        o("attention.self.value.weight"), o("attention.self.value.bias"),
                        o("attention.output.dense.weight"), o("attention.output.dense.bias"),
                        o("attention.output.LayerNorm.weight"), o("attention.output.LayerNorm.bias"),
                        o("intermediate.dense.weight"), o("intermediate.dense.bias"),
                        o("output.dense.weight"), o("output.dense.bias"),
                        o("output.LayerNorm.weight"), o("output.LayerNorm.bias")});
    }
    if (d.num_labels > 0) {
      pool_w = L.offset_of("bert.pooler.dense.weight");
      pool_b = L.offset_of("bert.pooler.dense.bias");
      cls_w = L.offset_of("classifier.weight");
      cls_b = L.offset_of("classifier.bias");
    } else {
      pred_bias = L.offset_of("cls.predictions.bias");
      tr_w = L.offset_of("cls.predictions.transform.dense.weight");
      tr_b = L.offset_of("cls.predictions.transform.dense.bias");
      tr_ln_w = L.offset_of("cls.predictions.transform.LayerNorm.weight");
      tr_ln_b = L.offset_of("cls.predictions.transform.LayerNorm.bias");
    }
  }

  void allocate() {
    const int64_t N = max_batch * d.T, C = d.C, I = 4 * C;
    const int64_t att = max_batch * d.NH * d.T;
    const int64_t width = d.num_labels > 0 ? d.num_labels : d.Vp;
    const int64_t per_block = 3 * N * C + att + 5 * N * C + 2 * N * I + 4 * N;
    const int64_t total = 2 * N * C + 2 * N + d.L * per_block + 4 * N * C + 2 * N + N * width + N;
    act_mem = be.alloc<float>(total);
    int_mem = be.alloc<int32_t>(5 * N);
    tokens = int_mem.data();
    valid = tokens + N;
    rows = valid + N;
    targets = rows + N;
    preds = targets + N;
    float* p = act_mem.data();
    auto take = [&p](int64_t n) {
      float* r = p;
      p += n;
      return r;
    };
    emb = take(N * C);
    emb_mean = take(N);
    emb_rstd = take(N);
    x0 = take(N * C);
    acts.resize(static_cast<size_t>(d.L));
    for (BlockActs& a : acts) {
      a.qkv = take(3 * N * C);
      a.lse = take(att);
      a.a = take(N * C);
      a.s1 = take(N * C);
      a.ln1_mean = take(N);
      a.ln1_rstd = take(N);
      a.h1 = take(N * C);
      a.ipre = take(N * I);
      a.igelu = take(N * I);
      a.s2 = take(N * C);
      a.ln2_mean = take(N);
      a.ln2_rstd = take(N);
      a.h2 = take(N * C);
    }
    hm = take(N * C);
    t = take(N * C);
    tg = take(N * C);
    tl = take(N * C);
    tl_mean = take(N);
    tl_rstd = take(N);
    logits = take(N * width);
    losses = take(N);
    PTRAIN_ENFORCE(p <= act_mem.data() + total, "activation plan overflow");
  }

  void allocate_gradients() {
    if (!grad_mem.empty()) return;
    const int64_t N = max_batch * d.T, C = d.C, I = 4 * C;
    const int64_t att = max_batch * d.NH * d.T;
    grad_mem = be.alloc<float>(4 * N * C + 3 * N * C + N * I + att);
    float* p = grad_mem.data();
    dh = p, p += N * C;
    ds = p, p += N * C;
    dx = p, p += N * C;
    da = p, p += N * C;
    dqkv = p, p += 3 * N * C;
    di = p, p += N * I;
    datt = p;
  }

  void check_call(const GptState& state, int64_t B, int64_t T, bool classify) const {
    PTRAIN_ENFORCE(&state.backend() == &be, "the model state belongs to another backend ({})",
                   state.backend().name());
    PTRAIN_ENFORCE(state.layout().hash() == layout.hash(), "the model state has another layout");
    PTRAIN_ENFORCE(B >= 1 && B <= max_batch, "batch {} outside [1, {}]", B, max_batch);
    PTRAIN_ENFORCE(T >= 1 && T <= d.T, "sequence length {} outside [1, {}]", T, d.T);
    PTRAIN_ENFORCE(classify == (d.num_labels > 0), "{} on a BERT layout with {} labels",
                   classify ? "classification" : "the masked-LM head", d.num_labels);
  }

  void upload_inputs(std::span<const int32_t> inputs, std::span<const int32_t> key_valid,
                     int64_t N) {
    PTRAIN_ENFORCE(static_cast<int64_t>(inputs.size()) == N, "inputs: expected {} ids, got {}", N,
                   inputs.size());
    check_ids(inputs, d.V, "inputs");
    be.copy_to_device(tokens, inputs.data(), inputs.size_bytes());
    if (!key_valid.empty()) {
      PTRAIN_ENFORCE(static_cast<int64_t>(key_valid.size()) == N,
                     "key_valid: expected {} values, got {}", N, key_valid.size());
      be.copy_to_device(valid, key_valid.data(), key_valid.size_bytes());
    }
  }

  // Predicted rows of an MLM batch: their indices and targets, uploaded. Returns M.
  int64_t upload_labels(std::span<const int32_t> labels, int64_t N) {
    PTRAIN_ENFORCE(static_cast<int64_t>(labels.size()) == N, "labels: expected {} values, got {}",
                   N, labels.size());
    host_rows.clear();
    host_targets.clear();
    for (int64_t n = 0; n < N; ++n) {
      const int32_t y = labels[static_cast<size_t>(n)];
      if (y == kIgnoreLabel) continue;
      if (y < 0 || y >= d.V) {
        throw DataError(fmt::format("labels: {} at position {} is neither {} nor in [0, {})", y, n,
                                    kIgnoreLabel, d.V));
      }
      host_rows.push_back(static_cast<int32_t>(n));
      host_targets.push_back(y);
    }
    const auto M = static_cast<int64_t>(host_rows.size());
    be.copy_to_device(rows, host_rows.data(), host_rows.size() * sizeof(int32_t));
    be.copy_to_device(targets, host_targets.data(), host_targets.size() * sizeof(int32_t));
    return M;
  }

  // Embeddings and every block; returns the last hidden states (N,C).
  const float* encode(const float* P, int64_t B, int64_t T, bool masked,
                      StepHooks* hooks = nullptr) {
    key_mask = masked ? valid : nullptr;
    const int64_t N = B * T, C = d.C, I = 4 * C;
    before_forward(hooks, 0);
    be.embedding_forward(emb, tokens, nullptr, P + wte, P + wpe, P + wtt, B, T, C);
    be.layernorm_forward_eps(x0, emb_mean, emb_rstd, emb, P + emb_ln_w, P + emb_ln_b, N, C,
                             kBertLayerNormEps);
    const float* x = x0;
    for (int64_t l = 0; l < d.L; ++l) {
      before_forward(hooks, static_cast<size_t>(l + 1));
      const BlockOffsets& o = blocks[static_cast<size_t>(l)];
      BlockActs& a = acts[static_cast<size_t>(l)];
      be.linear_forward(a.qkv, 3 * C, x, P + o.q_w, P + o.q_b, N, C, C);
      be.linear_forward(a.qkv + C, 3 * C, x, P + o.k_w, P + o.k_b, N, C, C);
      be.linear_forward(a.qkv + 2 * C, 3 * C, x, P + o.v_w, P + o.v_b, N, C, C);
      be.attention_forward(a.a, a.lse, a.qkv,
                           AttentionShape{B, T, C, d.NH, false, key_mask});
      be.linear_forward(a.s1, C, a.a, P + o.ao_w, P + o.ao_b, N, C, C);
      be.residual_forward(a.s1, a.s1, x, N * C);
      be.layernorm_forward_eps(a.h1, a.ln1_mean, a.ln1_rstd, a.s1, P + o.ln1_w, P + o.ln1_b, N, C,
                               kBertLayerNormEps);
      be.linear_forward(a.ipre, I, a.h1, P + o.i_w, P + o.i_b, N, C, I);
      be.gelu_erf_forward(a.igelu, a.ipre, N * I);
      be.linear_forward(a.s2, C, a.igelu, P + o.o_w, P + o.o_b, N, I, C);
      be.residual_forward(a.s2, a.s2, a.h1, N * C);
      be.layernorm_forward_eps(a.h2, a.ln2_mean, a.ln2_rstd, a.s2, P + o.ln2_w, P + o.ln2_b, N, C,
                               kBertLayerNormEps);
      x = a.h2;
    }
    return x;
  }

  // From dh = d(last hidden states) (N,C) down to the embedding tables, into G (+=), folding each
  // finished range into state's sum.
  void encode_backward(const float* P, float* G, GptState& state, StepHooks* hooks, int64_t B,
                       int64_t T) {
    const int64_t N = B * T, C = d.C, I = 4 * C;
    for (int64_t l = d.L - 1; l >= 0; --l) {
      const BlockOffsets& o = blocks[static_cast<size_t>(l)];
      const BlockActs& a = acts[static_cast<size_t>(l)];
      const float* x = l == 0 ? x0 : acts[static_cast<size_t>(l - 1)].h2;
      be.fill(ds, 0.0f, N * C);
      be.layernorm_backward(ds, G + o.ln2_w, G + o.ln2_b, dh, a.s2, P + o.ln2_w, a.ln2_mean,
                            a.ln2_rstd, N, C);  // ds = d s2
      be.linear_backward(di, false, G + o.o_w, G + o.o_b, ds, C, a.igelu, P + o.o_w, N, I, C);
      be.gelu_erf_backward(di, a.ipre, di, N * I);
      be.copy(dx, ds, N * C);  // the residual's share of d h1
      be.linear_backward(dx, true, G + o.i_w, G + o.i_b, di, I, a.h1, P + o.i_w, N, C, I);
      be.fill(ds, 0.0f, N * C);
      be.layernorm_backward(ds, G + o.ln1_w, G + o.ln1_b, dx, a.s1, P + o.ln1_w, a.ln1_mean,
                            a.ln1_rstd, N, C);  // ds = d s1
      be.linear_backward(da, false, G + o.ao_w, G + o.ao_b, ds, C, a.a, P + o.ao_w, N, C, C);
      be.attention_backward(dqkv, datt, da, a.a, a.qkv, a.lse,
                            AttentionShape{B, T, C, d.NH, false, key_mask});
      be.copy(dh, ds, N * C);  // the residual's share of d x
      be.linear_backward(dh, true, G + o.q_w, G + o.q_b, dqkv, 3 * C, x, P + o.q_w, N, C, C);
      be.linear_backward(dh, true, G + o.k_w, G + o.k_b, dqkv + C, 3 * C, x, P + o.k_w, N, C, C);
      be.linear_backward(dh, true, G + o.v_w, G + o.v_b, dqkv + 2 * C, 3 * C, x, P + o.v_w, N, C,
                         C);
      after_backward(state, hooks, static_cast<size_t>(l + 1));
    }
    be.fill(ds, 0.0f, N * C);
    be.layernorm_backward(ds, G + emb_ln_w, G + emb_ln_b, dh, emb, P + emb_ln_w, emb_mean,
                          emb_rstd, N, C);
    be.embedding_backward(G + wte, G + wpe, G + wtt, ds, tokens, nullptr, B, T, C);
    after_backward(state, hooks, 0);
  }

  // A micro-batch that reads no parameter (nothing predicted): every range is reported in order,
  // with a zero gradient.
  void no_work(GptState& state, StepHooks* hooks) const {
    for (size_t k = 0; k + 1 < bounds.size(); ++k) before_forward(hooks, k);
    for (size_t k = bounds.size() - 1; k-- > 0;) after_backward(state, hooks, k);
  }

  // MLM head on the M rows named by `rows`: logits (M, 0..V) with row stride Vp.
  void mlm_head(const float* P, const float* h, int64_t M) {
    const int64_t C = d.C;
    be.gather_rows(hm, h, rows, M, C);
    be.linear_forward(t, C, hm, P + tr_w, P + tr_b, M, C, C);
    be.gelu_erf_forward(tg, t, M * C);
    be.layernorm_forward_eps(tl, tl_mean, tl_rstd, tg, P + tr_ln_w, P + tr_ln_b, M, C,
                             kBertLayerNormEps);
    be.linear_forward(logits, d.Vp, tl, P + wte, P + pred_bias, M, C, d.V);
  }

  // From dlogits (in `logits`) back to dh (N,C), zero outside the predicted rows.
  void mlm_head_backward(const float* P, float* G, int64_t N, int64_t M) {
    const int64_t C = d.C;
    be.linear_backward(dx, false, G + wte, G + pred_bias, logits, d.Vp, tl, P + wte, M, C, d.V);
    be.fill(ds, 0.0f, M * C);
    be.layernorm_backward(ds, G + tr_ln_w, G + tr_ln_b, dx, tg, P + tr_ln_w, tl_mean, tl_rstd, M,
                          C);
    be.gelu_erf_backward(ds, t, ds, M * C);
    be.linear_backward(dx, false, G + tr_w, G + tr_b, ds, C, hm, P + tr_w, M, C, C);
    be.fill(dh, 0.0f, N * C);
    be.scatter_rows(dh, dx, rows, M, C);
  }

  // Classifier on the [CLS] rows: pooled (B,C) in t, tanh in tg, logits (B,K).
  void classify_head(const float* P, const float* h, int64_t B, int64_t T) {
    const int64_t C = d.C, K = d.num_labels;
    host_rows.resize(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) host_rows[static_cast<size_t>(b)] = static_cast<int32_t>(b * T);
    be.copy_to_device(rows, host_rows.data(), host_rows.size() * sizeof(int32_t));
    be.gather_rows(hm, h, rows, B, C);
    be.linear_forward(t, C, hm, P + pool_w, P + pool_b, B, C, C);
    be.tanh_forward(tg, t, B * C);
    be.linear_forward(logits, K, tg, P + cls_w, P + cls_b, B, C, K);
  }

  void classify_head_backward(const float* P, float* G, int64_t B, int64_t T) {
    const int64_t C = d.C, K = d.num_labels;
    be.linear_backward(dx, false, G + cls_w, G + cls_b, logits, K, tg, P + cls_w, B, C, K);
    be.tanh_backward(dx, tg, dx, B * C);
    be.linear_backward(ds, false, G + pool_w, G + pool_b, dx, C, hm, P + pool_w, B, C, C);
    be.fill(dh, 0.0f, B * T * C);
    be.scatter_rows(dh, ds, rows, B, C);
  }

  // Loss sum and correct count of `M` rows whose logits (stride ld, V real columns) are in
  // `logits`; with grad_scale, the logits become d(grad_scale · Σ losses)/dlogits.
  LossSum loss_rows(int64_t M, int64_t V, int64_t ld, const float* grad_scale) {
    be.argmax_rows(preds, logits, M, V, ld);
    if (grad_scale != nullptr) {
      be.crossentropy_forward_backward(losses, logits, targets, *grad_scale, M, V, ld);
    } else {
      be.crossentropy_forward(losses, logits, targets, M, V, ld);
    }
    host_losses.resize(static_cast<size_t>(M));
    host_preds.resize(static_cast<size_t>(M));
    be.copy_to_host(host_losses.data(), losses, static_cast<size_t>(M) * sizeof(float));
    be.copy_to_host(host_preds.data(), preds, static_cast<size_t>(M) * sizeof(int32_t));
    LossSum s;
    for (float x : host_losses) s.loss_sum += static_cast<double>(x);  // fixed order, fp64
    for (int64_t m = 0; m < M; ++m) {
      s.correct += host_preds[static_cast<size_t>(m)] == host_targets[static_cast<size_t>(m)];
    }
    s.tokens = M;
    return s;
  }

  void upload_class_labels(std::span<const int32_t> labels, int64_t B) {
    PTRAIN_ENFORCE(static_cast<int64_t>(labels.size()) == B, "labels: expected {} values, got {}",
                   B, labels.size());
    host_targets.assign(labels.begin(), labels.end());
    for (int64_t b = 0; b < B; ++b) {
      if (labels[static_cast<size_t>(b)] < 0 || labels[static_cast<size_t>(b)] >= d.num_labels) {
        throw DataError(fmt::format("label {} of sequence {} is outside [0, {})",
                                    labels[static_cast<size_t>(b)], b, d.num_labels));
      }
    }
    be.copy_to_device(targets, labels.data(), labels.size_bytes());
  }
};

Bert::Bert(const ParamLayout& layout, Backend& backend, int64_t max_batch)
    : layout_(layout), impl_(std::make_unique<Impl>(layout, backend, max_batch)) {}

Bert::~Bert() = default;

LossSum Bert::mlm_forward_backward(GptState& state, std::span<const int32_t> inputs,
                                   std::span<const int32_t> labels, int64_t B, int64_t T,
                                   float grad_scale, StepHooks* hooks) {
  Impl& m = *impl_;
  m.check_call(state, B, T, false);
  m.allocate_gradients();
  const int64_t N = B * T;
  m.upload_inputs(inputs, {}, N);
  const int64_t M = m.upload_labels(labels, N);
  float* G = state.micro_batch_grads();
  LossSum loss;
  if (M > 0) {
    const float* P = state.params();
    const float* h = m.encode(P, B, T, false, hooks);
    m.before_forward(hooks, static_cast<size_t>(m.d.L + 1));
    m.mlm_head(P, h, M);
    loss = m.loss_rows(M, m.d.V, m.d.Vp, &grad_scale);
    m.mlm_head_backward(P, G, N, M);
    m.after_backward(state, hooks, static_cast<size_t>(m.d.L + 1));
    m.encode_backward(P, G, state, hooks, B, T);
  } else {  // nothing predicted: a zero gradient and no loss
    m.no_work(state, hooks);
  }
  state.fold_micro_batch();
  return loss;
}

LossSum Bert::mlm_loss(const GptState& state, std::span<const int32_t> inputs,
                       std::span<const int32_t> labels, int64_t B, int64_t T) {
  Impl& m = *impl_;
  m.check_call(state, B, T, false);
  const int64_t N = B * T;
  m.upload_inputs(inputs, {}, N);
  const int64_t M = m.upload_labels(labels, N);
  if (M == 0) return {};
  const float* h = m.encode(state.params(), B, T, false);
  m.mlm_head(state.params(), h, M);
  return m.loss_rows(M, m.d.V, m.d.Vp, nullptr);
}

void Bert::mlm_logits(const GptState& state, std::span<const int32_t> inputs, int64_t B, int64_t T,
                      std::span<float> logits) {
  Impl& m = *impl_;
  m.check_call(state, B, T, false);
  const int64_t N = B * T;
  PTRAIN_ENFORCE(static_cast<int64_t>(logits.size()) == N * m.d.Vp,
                 "logits: expected {} floats, got {}", N * m.d.Vp, logits.size());
  m.upload_inputs(inputs, {}, N);
  m.host_rows.resize(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) m.host_rows[static_cast<size_t>(n)] = static_cast<int32_t>(n);
  m.be.copy_to_device(m.rows, m.host_rows.data(), m.host_rows.size() * sizeof(int32_t));
  const float* h = m.encode(state.params(), B, T, false);
  m.mlm_head(state.params(), h, N);
  m.be.fill_columns(m.logits, -std::numeric_limits<float>::infinity(), N, m.d.V, m.d.Vp, m.d.Vp);
  m.be.copy_to_host(logits.data(), m.logits, logits.size_bytes());
}

LossSum Bert::classify_forward_backward(GptState& state, std::span<const int32_t> inputs,
                                        std::span<const int32_t> key_valid,
                                        std::span<const int32_t> labels, int64_t B, int64_t T,
                                        float grad_scale, StepHooks* hooks) {
  Impl& m = *impl_;
  m.check_call(state, B, T, true);
  m.allocate_gradients();
  m.upload_inputs(inputs, key_valid, B * T);
  m.upload_class_labels(labels, B);
  const float* P = state.params();
  float* G = state.micro_batch_grads();
  const float* h = m.encode(P, B, T, !key_valid.empty(), hooks);
  m.before_forward(hooks, static_cast<size_t>(m.d.L + 1));
  m.classify_head(P, h, B, T);
  const LossSum loss = m.loss_rows(B, m.d.num_labels, m.d.num_labels, &grad_scale);
  m.classify_head_backward(P, G, B, T);
  m.after_backward(state, hooks, static_cast<size_t>(m.d.L + 1));
  m.encode_backward(P, G, state, hooks, B, T);
  state.fold_micro_batch();
  return loss;
}

LossSum Bert::classify_loss(const GptState& state, std::span<const int32_t> inputs,
                            std::span<const int32_t> key_valid, std::span<const int32_t> labels,
                            int64_t B, int64_t T, std::span<float> logits) {
  Impl& m = *impl_;
  m.check_call(state, B, T, true);
  m.upload_inputs(inputs, key_valid, B * T);
  m.upload_class_labels(labels, B);
  const float* h = m.encode(state.params(), B, T, !key_valid.empty());
  m.classify_head(state.params(), h, B, T);
  if (!logits.empty()) {
    PTRAIN_ENFORCE(static_cast<int64_t>(logits.size()) == B * m.d.num_labels,
                   "logits: expected {} floats, got {}", B * m.d.num_labels, logits.size());
    m.be.copy_to_host(logits.data(), m.logits, logits.size_bytes());
  }
  return m.loss_rows(B, m.d.num_labels, m.d.num_labels, nullptr);
}

}  // namespace ptrain
