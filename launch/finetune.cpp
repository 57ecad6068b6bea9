// Fine-tuning a BERT checkpoint for sequence classification (finetune.hpp).
#include "launch/finetune.hpp"

#include "common/data/mlm.hpp"
#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/tensor/gpt_init.hpp"
#include "common/tensor/param_layout.hpp"
#include "common/util/fs.hpp"
#include "coordinator/data_plan.hpp"
#include "coordinator/step_machine.hpp"
#include "launch/threads_job.hpp"
#include "paramserver/update_rule.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/bert.hpp"

#include <nlohmann/json.hpp>
#include <omp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace ptrain {
namespace {

struct Example {
  std::vector<int32_t> seq;  // [CLS] text [SEP], at most T ids
  int32_t label = 0;
};

// JSONL records {"text": string, "label": string | integer}, in file order; labels as text.
std::vector<std::pair<std::string, std::string>> read_jsonl(const std::string& path,
                                                            const char* key) {
  if (path.empty()) throw ConfigError(fmt::format("{} is not set", key));
  std::ifstream in(path);
  if (!in) throw IoError(fmt::format("{}: cannot open ({})", path, key));
  std::vector<std::pair<std::string, std::string>> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw DataError(fmt::format("{}:{}: not JSON: {}", path, n, e.what()));
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string() || !j.contains("label") ||
        !(j["label"].is_string() || j["label"].is_number_integer())) {
      throw DataError(fmt::format(
          "{}:{}: expected {{\"text\": string, \"label\": string or integer}}", path, n));
    }
    out.emplace_back(j["text"].get<std::string>(),
                     j["label"].is_string() ? j["label"].get<std::string>() : j["label"].dump());
  }
  if (out.empty()) throw DataError(fmt::format("{}: no records ({})", path, key));
  return out;
}

std::vector<Example> encode(const std::vector<std::pair<std::string, std::string>>& records,
                            const std::map<std::string, int32_t>& classes, const Tokenizer& tk,
                            const BertTokens& tok, int64_t T, const std::string& path) {
  std::vector<Example> out;
  for (size_t i = 0; i < records.size(); ++i) {
    const auto it = classes.find(records[i].second);
    if (it == classes.end()) {
      throw DataError(fmt::format("{}: record {} has label {} that finetune.train does not have",
                                  path, i + 1, records[i].second));
    }
    std::vector<int32_t> ids = tk.encode(records[i].first);
    ids.resize(std::min<size_t>(ids.size(), static_cast<size_t>(T - 2)));  // truncated, as HF
    Example e;
    e.seq.resize(ids.size() + 2);
    bert_sequence(ids, tok, e.seq);
    e.label = it->second;
    out.push_back(std::move(e));
  }
  return out;
}

// A batch padded to its longest sequence: inputs, key mask, labels; returns its T.
int64_t make_batch(const std::vector<Example>& ex, std::span<const int64_t> idx,
                   const BertTokens& tok, std::vector<int32_t>& inputs, std::vector<int32_t>& valid,
                   std::vector<int32_t>& labels) {
  int64_t T = 1;
  for (int64_t i : idx) T = std::max<int64_t>(T, static_cast<int64_t>(ex[static_cast<size_t>(i)].seq.size()));
  const auto B = idx.size();
  inputs.assign(B * static_cast<size_t>(T), tok.pad);
  valid.assign(inputs.size(), 0);
  labels.resize(B);
  for (size_t b = 0; b < B; ++b) {
    const Example& e = ex[static_cast<size_t>(idx[b])];
    std::copy(e.seq.begin(), e.seq.end(), inputs.begin() + static_cast<std::ptrdiff_t>(b * T));
    std::fill_n(valid.begin() + static_cast<std::ptrdiff_t>(b * T), e.seq.size(), 1);
    labels[b] = e.label;
  }
  return T;
}

}  // namespace

FinetuneResult run_finetune(const Config& config) {
  const FinetuneConfig& fc = config.finetune;
  if (fc.checkpoint.empty()) throw ConfigError("finetune.checkpoint is not set");
  // The pretrained model: its config, tokenizer and weights.
  const std::string ckpt = checkpoint_file(fc.checkpoint);
  const CheckpointMeta meta = read_checkpoint_meta(ckpt);
  const Config pre = parse_config_text(meta.config_yaml, ckpt + " (attribute config_yaml)",
                                       std::filesystem::path(ckpt).parent_path().string());
  if (pre.model.arch != ModelArch::kBert) {
    throw ConfigError(fmt::format("finetune.checkpoint: {} is model.arch {}, fine-tuning needs bert",
                                  ckpt, model_arch_name(pre.model.arch)));
  }
  if (pre.model.num_labels > 0) {
    throw ConfigError(fmt::format("finetune.checkpoint: {} is already a {}-way classifier "
                                  "(model.num_labels); fine-tuning starts from a masked-LM checkpoint",
                                  ckpt, pre.model.num_labels));
  }
  const auto tk = tokenizer_from_json(meta.tokenizer_json, ckpt + " (dataset /tokenizer)");
  const ParamLayout mlm_layout(model_dims(pre.model, tk->vocab_size()));
  const CheckpointData pretrained = read_checkpoint(ckpt, mlm_layout, false);

  // The data and its classes (sorted labels of the training file).
  const auto train_rec = read_jsonl(fc.train, "finetune.train");
  const auto val_rec = read_jsonl(fc.val, "finetune.val");
  std::map<std::string, int32_t> classes;
  for (const auto& r : train_rec) classes.emplace(r.second, 0);
  if (classes.size() < 2) {
    throw DataError(fmt::format("{}: needs at least 2 distinct labels, has {}", fc.train,
                                classes.size()));
  }
  FinetuneResult res;
  for (auto& [name, k] : classes) {
    k = static_cast<int32_t>(res.labels.size());
    res.labels.push_back(name);
  }
  ModelDims dims = mlm_layout.dims();
  dims.num_labels = static_cast<int64_t>(classes.size());
  const ParamLayout layout(dims);
  const BertTokens tok = bert_tokens(dims);
  const std::vector<Example> train = encode(train_rec, classes, *tk, tok, dims.T, fc.train);
  const std::vector<Example> val = encode(val_rec, classes, *tk, tok, dims.T, fc.val);
  res.train_examples = static_cast<int64_t>(train.size());
  res.val_examples = static_cast<int64_t>(val.size());

  // Majority baseline: train's most frequent class, scored on val.
  std::vector<int64_t> freq(classes.size(), 0);
  for (const Example& e : train) ++freq[static_cast<size_t>(e.label)];
  const auto majority = static_cast<int32_t>(std::max_element(freq.begin(), freq.end()) - freq.begin());
  int64_t hits = 0;
  for (const Example& e : val) hits += e.label == majority;
  res.majority_accuracy = static_cast<double>(hits) / static_cast<double>(val.size());

  // Weights: pooler and classifier initialised, the encoder from the checkpoint.
  std::vector<float> w(static_cast<size_t>(layout.total()));
  init_gpt_params(layout, config.run.seed, w);
  for (const TensorSpec& t : layout.tensors()) {
    if (const TensorSpec* p = mlm_layout.try_find(t.name)) {
      std::copy_n(pretrained.params.begin() + p->offset, t.count, w.begin() + t.offset);
    }
  }
  std::vector<float> m(w.size(), 0.0f), v(w.size(), 0.0f), g(w.size());

  const int64_t B = std::min<int64_t>(config.train.batch_size, res.train_examples);
  const int64_t batches = (res.train_examples + B - 1) / B;
  Config opt = config;
  opt.train.steps = fc.epochs * batches;
  res.steps = opt.train.steps;
  const UpdateRule rule = update_rule_for(opt, layout, {0, layout.total()});
  const int threads = threads_per_role(config.run.threads, 1);
  omp_set_num_threads(threads);
  std::unique_ptr<Backend> be = make_backend(device_type_name(config.device.type),
                                               backend_options(config.device, threads));
  Bert bert(layout, *be, B);
  GptState state(layout, *be);

  const std::string log_path = config.run.dir + "/finetune.jsonl";
  std::filesystem::create_directories(config.run.dir);
  std::ofstream log(log_path, std::ios::trunc);
  if (!log) throw IoError(fmt::format("{}: cannot write", log_path));
  spdlog::info("finetune: {} ({} parameters, {} classes), {} train / {} val examples, {} epochs of "
               "{} batches of {}",
               ckpt, layout.total(), classes.size(), train.size(), val.size(), fc.epochs, batches, B);

  std::vector<int32_t> inputs, valid, labels;
  std::vector<int64_t> idx;
  int64_t step = 0;
  for (int64_t epoch = 0; epoch < fc.epochs; ++epoch) {
    const std::vector<int64_t> perm = window_permutation(config.run.seed, epoch, res.train_examples);
    LossSum ep;
    for (int64_t k = 0; k < batches; ++k, ++step) {
      const int64_t b0 = k * B, n = std::min(B, res.train_examples - b0);
      idx.assign(perm.begin() + b0, perm.begin() + b0 + n);
      const int64_t T = make_batch(train, idx, tok, inputs, valid, labels);
      state.upload_params(w);
      state.zero_grads();
      const LossSum l = bert.classify_forward_backward(state, inputs, valid, labels, n, T,
                                                       1.0f / static_cast<float>(n));
      state.download_grads(g);
      double sq = 0;
      for (float x : g) sq += static_cast<double>(x) * x;
      const double norm = std::sqrt(sq);
      if (!std::isfinite(norm) || !std::isfinite(l.loss_sum)) {
        throw NumericError(fmt::format("finetune step {}: loss or gradient is not finite", step));
      }
      rule.apply(step, 0, static_cast<float>(clip_coefficient(norm, config.optim.grad_clip)), g, w,
                 m, v);
      ep.loss_sum += l.loss_sum;
      ep.tokens += l.tokens;
    }
    // Held-out accuracy with the weights after this epoch.
    state.upload_params(w);
    LossSum vl;
    for (int64_t b0 = 0; b0 < res.val_examples; b0 += B) {
      const int64_t n = std::min(B, res.val_examples - b0);
      idx.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = b0 + i;
      const int64_t T = make_batch(val, idx, tok, inputs, valid, labels);
      const LossSum l = bert.classify_loss(state, inputs, valid, labels, n, T);
      vl.loss_sum += l.loss_sum;
      vl.tokens += l.tokens;
      vl.correct += l.correct;
    }
    res.train_loss = ep.mean();
    res.val_loss = vl.mean();
    res.val_accuracy = static_cast<double>(vl.correct) / static_cast<double>(vl.tokens);
    nlohmann::json j = {{"epoch", epoch + 1},         {"step", step},
                        {"train_loss", res.train_loss}, {"val_loss", res.val_loss},
                        {"val_accuracy", res.val_accuracy},
                        {"majority_accuracy", res.majority_accuracy}};
    log << j.dump() << "\n" << std::flush;
    spdlog::info("finetune epoch {}: train loss {:.4f}, val loss {:.4f}, val accuracy {:.4f} "
                 "(majority class {:.4f})",
                 epoch + 1, res.train_loss, res.val_loss, res.val_accuracy, res.majority_accuracy);
  }

  // The fine-tuned model: HF BertForSequenceClassification names (the layout's), its config the
  // pretraining one with model.num_labels K (so every reader rebuilds this layout) and this
  // run's finetune.* keys; the class names beside it, index k = class k, as HF's id2label.
  Config saved = pre;
  saved.model.num_labels = dims.num_labels;
  saved.finetune = config.finetune;
  CheckpointData out;
  out.meta.step = res.steps;
  out.meta.tokens_seen = pretrained.meta.tokens_seen;
  out.meta.config_yaml = saved.to_yaml();
  out.meta.tokenizer_json = meta.tokenizer_json;
  out.meta.data = DataState{config.run.seed, 0, 0, {}};
  out.params = std::move(w);
  out.m = std::move(m);
  out.v = std::move(v);
  res.checkpoint = config.run.dir + "/finetuned.h5";
  write_checkpoint_file_atomic(res.checkpoint, layout, out);
  nlohmann::json id2label = nlohmann::json::object();
  for (size_t k = 0; k < res.labels.size(); ++k) id2label[std::to_string(k)] = res.labels[k];
  res.labels_file = config.run.dir + "/finetuned.labels.json";
  write_file_atomic(res.labels_file,
                    nlohmann::json{{"num_labels", res.labels.size()}, {"id2label", id2label}}
                            .dump(1) + "\n");
  spdlog::info("finetune: wrote {} and {}", res.checkpoint, res.labels_file);
  return res;
}

}  // namespace ptrain
