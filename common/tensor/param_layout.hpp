// The flat parameter vector and the table that names its pieces. Built once from the model
// dimensions; gradients and AdamW moments mirror it; a server's shard is a [begin,end) range of it.
// Names and shapes follow Hugging Face: GPT-2 for model.arch gpt (y = x·W + b, W of shape (in, out));
// BertForMaskedLM for model.arch bert (nn.Linear: y = x·Wᵀ + b, W of shape (out, in)), or
// BertForSequenceClassification when the dims name a number of labels (fine-tuning).
#pragma once

#include "common/config/config.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ptrain {

// Shape letters used throughout: B batch, T sequence, C channels, V vocab (tokenizer),
// Vp vocab padded (model rows), L layers, NH heads.
struct ModelDims {
  int64_t V = 0;   // tokenizer vocabulary (real tokens)
  int64_t Vp = 0;  // model vocabulary rows (>= V; rows >= V are padding)
  int64_t T = 0;   // maximum sequence length (wpe rows)
  int64_t L = 0;
  int64_t NH = 0;
  int64_t C = 0;
  ModelArch arch = ModelArch::kGpt;
  // BERT only: 0 = the masked-LM head (cls.predictions.*, BertForMaskedLM); K > 0 = the pooler and
  // a K-way classifier instead (bert.pooler.*, classifier.*, BertForSequenceClassification).
  int64_t num_labels = 0;
};

// BERT adds four tokens after the tokenizer's ids (at model level: token files and tokenizers
// are the same for both architectures): V_model = V_tokenizer + 4.
constexpr int64_t kBertSpecialTokens = 4;

// Floats in one row of a tensor of `shape`: the product of the dimensions after the first (1 for
// a 1-D tensor, whose "rows" are single elements). Shard boundaries fall between rows.
int64_t shape_row_size(const std::vector<int64_t>& shape);

// Resolves `model.vocab_size` (0 = auto) against the tokenizer's size (plus BERT's special tokens
// for model.arch bert). Throws ConfigError when the configured size is smaller.
ModelDims model_dims(const ModelConfig& model, int64_t tokenizer_vocab);

struct TensorSpec {
  std::string name;            // HF GPT-2 name, e.g. "transformer.h.0.attn.c_attn.weight"
  std::vector<int64_t> shape;  // e.g. {C, 3*C}
  int64_t offset = 0;          // into the flat vector, in floats
  int64_t count = 0;           // product of shape
  bool decay = false;          // AdamW weight decay applies (tensors with >= 2 dims)

  int64_t row_size() const { return shape_row_size(shape); }  // floats in one row
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelDims& dims);

  const ModelDims& dims() const { return dims_; }
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  int64_t total() const { return total_; }  // floats in the flat vector
  // Hex SHA-256 of the lines "name\tshape\toffset\n" (shape as "d0,d1"); compared on load.
  const std::string& hash() const { return hash_; }

  const TensorSpec& find(const std::string& name) const;  // throws InternalError if absent
  const TensorSpec* try_find(const std::string& name) const;

  // Offsets of the per-layer tensors, by layer, in the order of LayerOffsets' members.
  struct LayerOffsets {
    int64_t ln_1_w, ln_1_b, c_attn_w, c_attn_b, attn_proj_w, attn_proj_b;
    int64_t ln_2_w, ln_2_b, c_fc_w, c_fc_b, mlp_proj_w, mlp_proj_b;
  };
  const LayerOffsets& layer(int64_t l) const { return layers_.at(static_cast<size_t>(l)); }
  int64_t wte() const { return wte_; }
  int64_t wpe() const { return wpe_; }
  int64_t ln_f_w() const { return ln_f_w_; }
  int64_t ln_f_b() const { return ln_f_b_; }
  // Offset of a named tensor (find(name).offset): how the BERT model addresses its tensors.
  int64_t offset_of(const std::string& name) const { return find(name).offset; }

  // Splits [0,total) into `n` contiguous ranges balanced by size; range k is server k's shard.
  // Every boundary falls on a row boundary of the tensor it cuts (see TensorSpec::row_size; a
  // tensor's start and end are row boundaries), at most half a row of that tensor from the ideal
  // total·k/n. Ranges may be empty when n exceeds the number of rows.
  std::vector<std::pair<int64_t, int64_t>> shard_ranges(int64_t n) const;
  // The row boundary nearest to flat offset x in [0, total] (ties go down).
  int64_t nearest_row_boundary(int64_t x) const;
  // Whether flat offset x is a row boundary of the tensor holding it (0 and total are).
  bool is_row_boundary(int64_t x) const;

 private:
  using AddTensor = std::function<int64_t(std::string, std::vector<int64_t>)>;
  void build_gpt(const AddTensor& add);
  void build_bert(const AddTensor& add);

  ModelDims dims_;
  std::vector<TensorSpec> tensors_;
  std::vector<LayerOffsets> layers_;
  int64_t total_ = 0;
  int64_t wte_ = 0, wpe_ = 0, ln_f_w_ = 0, ln_f_b_ = 0;
  std::string hash_;
};

}  // namespace ptrain
