// Export to and import from a Hugging Face GPT-2 directory (hf_model.hpp).
#include "tools/hf/hf_model.hpp"

#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/util/fs.hpp"
#include "ptrain/build_config.hpp"
#include "tools/checkpoint_model.hpp"
#include "tools/hf/hf_tokenizer.hpp"
#include "tools/hf/safetensors.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

namespace ptrain::tools::hf {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPrefix = "transformer.";

std::string join(const std::string& dir, const char* name) { return (fs::path(dir) / name).string(); }

}  // namespace

void export_hf(const ExportOptions& o) {
  const CheckpointModel cm = open_checkpoint_model(o.checkpoint);
  const ModelDims& d = cm.layout->dims();
  // Refuse before writing anything: the tokenizer is the part that can fail.
  const HfTokenizerFiles tok = to_hf_tokenizer(*cm.tokenizer, d.T);

  std::map<std::string, SafeTensor> tensors;
  for (const TensorSpec& t : cm.layout->tensors()) {
    SafeTensor st;
    st.shape = t.shape;
    int64_t count = t.count;
    if (t.name == "transformer.wte.weight") {  // the padded rows are not tokens: cut them
      st.shape[0] = d.V;
      count = d.V * d.C;
    }
    st.data.assign(cm.params.begin() + t.offset, cm.params.begin() + t.offset + count);
    tensors.emplace(t.name, std::move(st));
  }
  make_dirs(o.out_dir);
  write_safetensors(join(o.out_dir, "model.safetensors"), tensors, {{"format", "pt"}});

  const int32_t eot = cm.tokenizer->eot();
  nlohmann::ordered_json config = {
      {"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"},
      {"vocab_size", d.V}, {"n_positions", d.T}, {"n_ctx", d.T}, {"n_embd", d.C}, {"n_layer", d.L},
      {"n_head", d.NH}, {"n_inner", nullptr}, {"activation_function", "gelu_new"},
      {"layer_norm_epsilon", 1e-5}, {"resid_pdrop", 0.0}, {"embd_pdrop", 0.0}, {"attn_pdrop", 0.0},
      {"initializer_range", 0.02}, {"scale_attn_weights", true}, {"scale_attn_by_inverse_layer_idx", false},
      {"reorder_and_upcast_attn", false}, {"tie_word_embeddings", true}, {"use_cache", true},
      {"bos_token_id", eot}, {"eos_token_id", eot}, {"torch_dtype", "float32"},
      {"ptrain_version", PTRAIN_VERSION}, {"ptrain_step", cm.meta.step}};
  write_file_atomic(join(o.out_dir, "config.json"), config.dump(2) + "\n");
  nlohmann::ordered_json gen = {{"bos_token_id", eot}, {"eos_token_id", eot}, {"max_length", d.T}};
  write_file_atomic(join(o.out_dir, "generation_config.json"), gen.dump(2) + "\n");
  write_file_atomic(join(o.out_dir, "tokenizer.json"), tok.tokenizer_json);
  write_file_atomic(join(o.out_dir, "vocab.json"), tok.vocab_json);
  write_file_atomic(join(o.out_dir, "merges.txt"), tok.merges_txt);
  write_file_atomic(join(o.out_dir, "tokenizer_config.json"), tok.tokenizer_config_json);
  write_file_atomic(join(o.out_dir, "special_tokens_map.json"), tok.special_tokens_map_json);
  spdlog::info("exported {} (step {}, V {}{}, T {}, L {}, NH {}, C {}) to {}", cm.file, cm.meta.step, d.V,
               d.Vp > d.V ? fmt::format(", {} padded rows cut", d.Vp - d.V) : "", d.T, d.L, d.NH, d.C,
               o.out_dir);
  for (const std::string& w : tok.warnings) spdlog::warn("tokenizer: {}", w);
}

namespace {

// config.json's value for `key`, required to be an integer.
int64_t config_int(const nlohmann::json& c, const char* key, const std::string& file) {
  if (!c.contains(key) || !c[key].is_number_integer()) {
    throw DataError(fmt::format("{}: \"{}\" must be an integer, got {}", file, key,
                                c.contains(key) ? c[key].dump() : "(missing)"));
  }
  return c[key].get<int64_t>();
}

// Refuses what ptrain's GPT-2 does not compute.
void check_gpt2_config(const nlohmann::json& c, const std::string& file, int64_t C) {
  auto refuse = [&](const char* key, const std::string& why) {
    return DataError(fmt::format("{}: \"{}\" is {}: {}", file, key, c.contains(key) ? c[key].dump() : "(missing)", why));
  };
  if (c.value("model_type", std::string()) != "gpt2") throw refuse("model_type", "only \"gpt2\" is imported");
  const std::string act = c.value("activation_function", std::string("gelu_new"));
  if (act != "gelu_new" && act != "gelu_pytorch_tanh") {
    throw refuse("activation_function", "ptrain computes the tanh GELU (gelu_new)");
  }
  if (c.contains("layer_norm_epsilon") && (!c["layer_norm_epsilon"].is_number() ||
                                           std::fabs(c["layer_norm_epsilon"].get<double>() - 1e-5) > 1e-12)) {
    throw refuse("layer_norm_epsilon", "ptrain's LayerNorm uses 1e-5");
  }
  if (c.contains("n_inner") && !c["n_inner"].is_null() &&
      !(c["n_inner"].is_number_integer() && c["n_inner"].get<int64_t>() == 4 * C)) {
    throw refuse("n_inner", fmt::format("ptrain's MLP is 4 x n_embd = {} wide", 4 * C));
  }
  if (c.value("tie_word_embeddings", true) == false) throw refuse("tie_word_embeddings", "ptrain ties the LM head to wte");
  if (c.value("scale_attn_weights", true) == false) throw refuse("scale_attn_weights", "ptrain scales attention by 1/sqrt(head size)");
  if (c.value("scale_attn_by_inverse_layer_idx", false) == true) {
    throw refuse("scale_attn_by_inverse_layer_idx", "ptrain does not scale attention by layer");
  }
}

}  // namespace

ImportResult import_hf(const ImportOptions& o) {
  const std::string config_file = join(o.hf_dir, "config.json");
  nlohmann::json c;
  try {
    c = nlohmann::json::parse(read_file(config_file));
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("{}: not valid JSON: {}", config_file, e.what()));
  }
  if (!c.is_object()) throw DataError(fmt::format("{}: not a JSON object", config_file));
  const int64_t C = config_int(c, "n_embd", config_file);
  check_gpt2_config(c, config_file, C);
  const int64_t V_model = config_int(c, "vocab_size", config_file);
  const int64_t T = config_int(c, "n_positions", config_file);
  const int64_t L = config_int(c, "n_layer", config_file);
  const int64_t NH = config_int(c, "n_head", config_file);

  const std::string tok_file = join(o.hf_dir, "tokenizer.json");
  const auto tokenizer = from_hf_tokenizer(read_file(tok_file), tok_file);
  if (V_model < tokenizer->vocab_size()) {
    throw DataError(fmt::format("{}: vocab_size {} is smaller than the tokenizer's {} tokens ({})", config_file,
                                V_model, tokenizer->vocab_size(), tok_file));
  }

  const fs::path out = fs::absolute(o.out).lexically_normal();
  const fs::path folder = out.parent_path();
  const std::string stem = out.stem().string();
  ImportResult r{out.string(), (folder / (stem + ".tokenizer.json")).string(), (folder / (stem + ".yaml")).string()};
  // The config a user edits to continue pretraining; every other key keeps its default.
  const std::string yaml = fmt::format(
      "# Written by `ptrain import-hf {}`. Set data.train (and data.val) to token files prepared with\n"
      "# {} (`ptrain prepare` cannot reproduce an imported vocabulary: tokenize text with this\n"
      "# tokenizer), then `ptrain run` this file: it starts from the imported weights.\n"
      "data:\n  train: train.tok\n  tokenizer: {}\nmodel:\n  vocab_size: {}\n  seq_len: {}\n  n_layer: {}\n"
      "  n_head: {}\n  n_embd: {}\ncheckpoint:\n  resume: {}\n",
      o.hf_dir, fs::path(r.tokenizer).filename().string(), fs::path(r.tokenizer).filename().string(), V_model, T,
      L, NH, C, out.filename().string());
  Config config = parse_config_text(yaml, r.config, folder.string());
  const ParamLayout layout(model_dims(config.model, tokenizer->vocab_size()));

  const std::string st_file = join(o.hf_dir, "model.safetensors");
  SafeTensorsFile st = read_safetensors(st_file);
  CheckpointData data;
  data.params.assign(static_cast<size_t>(layout.total()), 0.0f);
  std::set<std::string> used;
  for (const TensorSpec& t : layout.tensors()) {
    // HF's own GPT-2 files name tensors without the "transformer." prefix of GPT2LMHeadModel.
    auto it = st.tensors.find(t.name);
    if (it == st.tensors.end()) it = st.tensors.find(t.name.substr(std::string(kPrefix).size()));
    if (it == st.tensors.end()) throw DataError(fmt::format("{}: tensor {} is missing", st_file, t.name));
    if (it->second.shape != t.shape) {
      throw DataError(fmt::format("{}: tensor {} has shape {} where config.json implies {}", st_file, it->first,
                                  nlohmann::json(it->second.shape).dump(), nlohmann::json(t.shape).dump()));
    }
    std::copy(it->second.data.begin(), it->second.data.end(), data.params.begin() + t.offset);
    used.insert(it->first);
  }
  for (const auto& [name, t] : st.tensors) {
    if (used.count(name)) continue;
    const bool buffer = name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias");  // causal masks
    if (buffer) continue;
    if (name == "lm_head.weight") {
      const TensorSpec& wte = layout.find("transformer.wte.weight");
      if (t.shape != wte.shape ||
          !std::equal(t.data.begin(), t.data.end(), data.params.begin() + wte.offset)) {
        throw DataError(fmt::format("{}: lm_head.weight differs from wte; ptrain ties the LM head to wte", st_file));
      }
      continue;
    }
    throw DataError(fmt::format("{}: unexpected tensor {} (not part of GPT-2 as ptrain builds it)", st_file, name));
  }

  data.meta.config_yaml = config.to_yaml();
  data.meta.tokenizer_json = tokenizer->to_json();
  data.meta.data = DataState{config.run.seed, 0, 0, {}};
  make_dirs(folder.string());
  write_file_atomic(r.tokenizer, data.meta.tokenizer_json);
  write_file_atomic(r.config, yaml);
  write_checkpoint_file_atomic(r.checkpoint, layout, data);  // m, v empty: zeros
  spdlog::info("imported {} (V {}, T {}, L {}, NH {}, C {}) into {}; tokenizer {}; config {}", o.hf_dir,
               tokenizer->vocab_size(), T, L, NH, C, r.checkpoint, r.tokenizer, r.config);
  return r;
}

}  // namespace ptrain::tools::hf
