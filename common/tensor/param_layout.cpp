#include "common/tensor/param_layout.hpp"

#include "common/config/config.hpp"
#include "common/error.hpp"
#include "common/util/hash.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <iterator>

namespace ptrain {

ModelDims model_dims(const ModelConfig& model, int64_t tokenizer_vocab) {
  PTRAIN_ENFORCE(tokenizer_vocab > 0, "tokenizer vocabulary must be positive");
  ModelDims d;
  d.arch = model.arch;
  d.V = tokenizer_vocab + (model.arch == ModelArch::kBert ? kBertSpecialTokens : 0);
  d.Vp = model.vocab_size == 0 ? d.V : model.vocab_size;
  if (d.Vp < d.V) {
    throw ConfigError(fmt::format(
        "model.vocab_size: {} is smaller than the model's vocabulary ({}{}); use `auto` or a "
        "larger value",
        d.Vp, d.V, model.arch == ModelArch::kBert ? ": the tokenizer's and BERT's 4 special tokens" : ""));
  }
  d.T = model.seq_len;
  d.L = model.n_layer;
  d.NH = model.n_head;
  d.C = model.n_embd;
  d.num_labels = model.num_labels;
  return d;
}

ParamLayout::ParamLayout(const ModelDims& dims) : dims_(dims) {
  const AddTensor add = [this](std::string name, std::vector<int64_t> shape) {
    TensorSpec t;
    t.name = std::move(name);
    t.shape = std::move(shape);
    t.count = 1;
    for (int64_t s : t.shape) t.count *= s;
    t.offset = total_;
    t.decay = t.shape.size() >= 2;
    total_ += t.count;
    tensors_.push_back(std::move(t));
    return tensors_.back().offset;
  };
  if (dims.arch == ModelArch::kBert) {
    build_bert(add);
  } else {
    build_gpt(add);
  }
  std::string lines;
  for (const auto& t : tensors_) {
    lines += fmt::format("{}\t{}\t{}\n", t.name, fmt::join(t.shape, ","), t.offset);
  }
  hash_ = sha256_hex(lines);
}

void ParamLayout::build_gpt(const AddTensor& add) {
  const ModelDims& dims = dims_;
  const int64_t C = dims.C;
  wte_ = add("transformer.wte.weight", {dims.Vp, C});
  wpe_ = add("transformer.wpe.weight", {dims.T, C});
  for (int64_t l = 0; l < dims.L; ++l) {
    const std::string p = fmt::format("transformer.h.{}.", l);
    LayerOffsets o{};
    o.ln_1_w = add(p + "ln_1.weight", {C});
    o.ln_1_b = add(p + "ln_1.bias", {C});
    o.c_attn_w = add(p + "attn.c_attn.weight", {C, 3 * C});
    o.c_attn_b = add(p + "attn.c_attn.bias", {3 * C});
    o.attn_proj_w = add(p + "attn.c_proj.weight", {C, C});
    o.attn_proj_b = add(p + "attn.c_proj.bias", {C});
    o.ln_2_w = add(p + "ln_2.weight", {C});
    o.ln_2_b = add(p + "ln_2.bias", {C});
    o.c_fc_w = add(p + "mlp.c_fc.weight", {C, 4 * C});
    o.c_fc_b = add(p + "mlp.c_fc.bias", {4 * C});
    o.mlp_proj_w = add(p + "mlp.c_proj.weight", {4 * C, C});
    o.mlp_proj_b = add(p + "mlp.c_proj.bias", {C});
    layers_.push_back(o);
  }
  ln_f_w_ = add("transformer.ln_f.weight", {C});
  ln_f_b_ = add("transformer.ln_f.bias", {C});
}

// Hugging Face BertForMaskedLM's state_dict order (BertForSequenceClassification's with labels);
// the MLM decoder weight is tied to the word embeddings and not stored twice. The intermediate
// width is 4·C. wte()/wpe() name the word and position embeddings, so the initialisation and the
// padded-row rules are the GPT ones.
void ParamLayout::build_bert(const AddTensor& add) {
  const ModelDims& dims = dims_;
  const int64_t C = dims.C, I = 4 * dims.C;
  wte_ = add("bert.embeddings.word_embeddings.weight", {dims.Vp, C});
  wpe_ = add("bert.embeddings.position_embeddings.weight", {dims.T, C});
  add("bert.embeddings.token_type_embeddings.weight", {2, C});
  add("bert.embeddings.LayerNorm.weight", {C});
  add("bert.embeddings.LayerNorm.bias", {C});
  for (int64_t l = 0; l < dims.L; ++l) {
    const std::string p = fmt::format("bert.encoder.layer.{}.", l);
    for (const char* qkv : {"query", "key", "value"}) {
      add(p + "attention.self." + qkv + ".weight", {C, C});
      add(p + "attention.self." + qkv + ".bias", {C});
    }
    add(p + "attention.output.dense.weight", {C, C});
    add(p + "attention.output.dense.bias", {C});
    add(p + "attention.output.LayerNorm.weight", {C});
    add(p + "attention.output.LayerNorm.bias", {C});
    add(p + "intermediate.dense.weight", {I, C});
    add(p + "intermediate.dense.bias", {I});
    add(p + "output.dense.weight", {C, I});
    add(p + "output.dense.bias", {C});
    add(p + "output.LayerNorm.weight", {C});
    add(p + "output.LayerNorm.bias", {C});
  }
  if (dims.num_labels > 0) {
    add("bert.pooler.dense.weight", {C, C});
    add("bert.pooler.dense.bias", {C});
    add("classifier.weight", {dims.num_labels, C});
    add("classifier.bias", {dims.num_labels});
  } else {
    add("cls.predictions.bias", {dims.Vp});
    add("cls.predictions.transform.dense.weight", {C, C});
    add("cls.predictions.transform.dense.bias", {C});
    add("cls.predictions.transform.LayerNorm.weight", {C});
    add("cls.predictions.transform.LayerNorm.bias", {C});
  }
}

const TensorSpec* ParamLayout::try_find(const std::string& name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const TensorSpec& ParamLayout::find(const std::string& name) const {
  const TensorSpec* t = try_find(name);
  PTRAIN_ENFORCE(t != nullptr, "no tensor named '{}' in the layout", name);
  return *t;
}

int64_t shape_row_size(const std::vector<int64_t>& shape) {
  int64_t r = 1;
  for (size_t i = 1; i < shape.size(); ++i) r *= shape[i];
  return r;
}

int64_t ParamLayout::nearest_row_boundary(int64_t x) const {
  PTRAIN_ENFORCE(x >= 0 && x <= total_, "offset {} outside [0, {}]", x, total_);
  // The tensor whose [offset, offset + count) holds x (x == total: none; it is a boundary).
  auto it = std::upper_bound(tensors_.begin(), tensors_.end(), x,
                             [](int64_t v, const TensorSpec& t) { return v < t.offset; });
  if (it == tensors_.begin()) return x;
  const TensorSpec& t = *std::prev(it);
  if (x >= t.offset + t.count) return x;  // x == total
  const int64_t row = t.row_size();
  const int64_t below = t.offset + (x - t.offset) / row * row;
  const int64_t above = std::min(below + row, t.offset + t.count);
  return (x - below <= above - x) ? below : above;
}

bool ParamLayout::is_row_boundary(int64_t x) const {
  return x >= 0 && x <= total_ && nearest_row_boundary(x) == x;
}

std::vector<std::pair<int64_t, int64_t>> ParamLayout::shard_ranges(int64_t n) const {
  PTRAIN_ENFORCE(n >= 1, "shard count must be >= 1, got {}", n);
  // Balanced by size: boundary k is the row boundary nearest to the ideal total·k/n, so every
  // boundary cuts the tensor it falls in between whole rows (sharded checkpoints store each
  // server's piece of a tensor as a block of rows: a rectangular selection for HDF5's virtual
  // datasets). A boundary is never more than half a row of that tensor from the ideal.
  std::vector<std::pair<int64_t, int64_t>> ranges;
  int64_t begin = 0;
  for (int64_t k = 0; k < n; ++k) {
    int64_t end = total_;
    if (k + 1 < n) {
      const int64_t ideal = static_cast<int64_t>((static_cast<__int128>(total_) * (k + 1)) / n);
      end = std::max(begin, nearest_row_boundary(ideal));
    }
    ranges.emplace_back(begin, end);
    begin = end;
  }
  return ranges;
}

}  // namespace ptrain
