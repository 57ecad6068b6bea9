// The end-of-run summary (run_summary.hpp).
#include "launch/run_summary.hpp"

#include "common/data/tokenizer.hpp"
#include "common/io/run_checkpoints.hpp"
#include "coordinator/run_log.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>

namespace ptrain {
namespace {

namespace fs = std::filesystem;

struct Seen {
  std::optional<nlohmann::json> last_step, first_val, last_val;
};

Seen read_train_jsonl(const std::string& path) {
  Seen s;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) continue;  // a torn last line
    if (j.contains("val_loss") && j["val_loss"].is_number()) {
      if (!s.first_val) s.first_val = j;
      s.last_val = j;
    } else if (j.contains("loss") && j["loss"].is_number()) {
      s.last_step = j;
    }
  }
  return s;
}

// The tokenizer's vocabulary (ln V is the loss of a uniform guess), or nullopt.
std::optional<int64_t> tokenizer_vocab(const Config& config) {
  try {
    return load_tokenizer(config.data.tokenizer)->vocab_size();
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::string quoted(const std::string& s) {
  return s.find_first_of(" \t'\"$") == std::string::npos ? s : "\"" + s + "\"";
}

}  // namespace

std::string display_path(const std::string& path) {
  std::error_code ec;
  const fs::path cwd = fs::current_path(ec);
  if (ec) return path;
  const fs::path rel = fs::path(path).lexically_relative(cwd);
  if (rel.empty() || *rel.begin() == "..") return path;
  return rel.string();
}

std::string run_summary(const Config& config, const std::string& config_path) {
  const std::string run = config.run.dir;
  const Seen s = read_train_jsonl(run + "/train.jsonl");
  if (!s.last_step) return "";
  const nlohmann::json& last = *s.last_step;
  std::string out = fmt::format("---- run summary: {} ----\n", display_path(run));

  if (s.last_val) {
    const double v = (*s.last_val)["val_loss"].get<double>();
    const int64_t at = (*s.last_val).value("step", int64_t{0});
    std::string from;
    if (const std::optional<int64_t> V = tokenizer_vocab(config)) {
      from = fmt::format("{:.3f} (ln V, V = {}: a uniform guess) -> ", std::log(static_cast<double>(*V)), *V);
    }
    out += fmt::format("val loss    {}{:.3f} at step {} (perplexity {:.1f})\n", from, v, at, std::exp(v));
  }
  const int64_t step = last.value("step", int64_t{0});
  out += fmt::format("train loss  {:.3f} (mean of the steps before step {})\n",
                     last.value("loss", 0.0), step);
  const double elapsed = last.value("elapsed_s", 0.0);
  const int64_t tokens = last.value("tokens", int64_t{0});
  out += fmt::format("time        {} for {} steps, {:.2f}M tokens: {:.0f} tokens/s\n",
                     format_duration(elapsed), step, static_cast<double>(tokens) / 1e6,
                     elapsed > 0 ? static_cast<double>(tokens) / elapsed : 0.0);

  std::string ckpt_arg;
  if (const std::optional<std::string> latest = find_latest_checkpoint(run)) {
    out += fmt::format("checkpoint  {}\n", display_path(*latest));
    ckpt_arg = quoted(display_path(run + "/checkpoints/latest"));
  }
  if (fs::exists(run + "/report.html")) {
    out += fmt::format("report      {} (open it in a browser)\n", display_path(run + "/report.html"));
  }
  if (fs::is_directory(run + "/logs")) out += fmt::format("logs        {}/\n", display_path(run + "/logs"));
  out += fmt::format("metrics     {} (one JSON object per logged step and per evaluation)\n",
                     display_path(run + "/train.jsonl"));

  out += "next:\n";
  if (!ckpt_arg.empty()) {
    out += fmt::format("  ptrain generate --checkpoint {} --prompt \"Q: Why\" --num-samples 3 "
                       "--temperature 0.8 --top-k 40\n",
                       ckpt_arg);
    if (!config.data.val.empty()) {
      out += fmt::format("  ptrain eval --checkpoint {} --data {}\n", ckpt_arg,
                         quoted(display_path(config.data.val)));
    }
    out += fmt::format("  ptrain export-hf {} {}   # a Hugging Face GPT-2 folder\n", ckpt_arg,
                       quoted(display_path(run + "/hf")));
  }
  out += fmt::format("  ptrain run {} --set train.steps={}   # resumes from the checkpoint and trains on\n",
                     quoted(config_path), step * 2);
  return out;
}

}  // namespace ptrain
