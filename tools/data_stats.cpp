// `ptrain data stats` (data_stats.hpp).
#include "tools/data_stats.hpp"

#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/util/fs.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>

namespace ptrain::tools {

std::string data_stats_json(const DataStatsOptions& o) {
  namespace fs = std::filesystem;
  const std::string manifest = fs::is_directory(o.dir) ? (fs::path(o.dir) / "manifest.json").string() : o.dir;
  if (o.seq_len < 0) throw UsageError(fmt::format("--seq-len must be >= 1, got {}", o.seq_len));
  if (o.steps && (*o.steps < 0 || o.batch_size < 1 || o.seq_len < 1)) {
    throw UsageError("--steps needs --batch-size >= 1 and --seq-len >= 1");
  }
  nlohmann::ordered_json out;
  out["manifest"] = manifest;
  for (const char* split : {"train", "val"}) {
    const TokenFile data = TokenFile::open(manifest, split);  // checks every shard header
    const auto m = nlohmann::json::parse(read_file(manifest));
    const auto& s = m["splits"][split];
    if (!out.contains("tokenizer")) {
      out["tokenizer"] = {{"kind", m["tokenizer"]["kind"]}, {"vocab_size", m["tokenizer"]["vocab_size"]},
                          {"hash", m["tokenizer"]["hash"]}};
      out["documents"] = m["documents"];
    }
    nlohmann::ordered_json j;
    j["documents"] = s["documents"];
    j["bytes"] = s["bytes"];
    j["tokens"] = data.size();
    j["shards"] = nlohmann::json::array();
    const int64_t T = o.seq_len;
    const int64_t windows = T > 0 ? data.num_windows(T) : 0;
    int64_t begin = 0;
    for (const auto& sh : s["shards"]) {
      nlohmann::ordered_json e{{"file", sh["file"]}, {"tokens", sh["tokens"]}};
      const int64_t n = sh["tokens"].get<int64_t>();
      if (T > 0) {  // windows whose first token lies in this shard
        const int64_t first = (begin + T - 1) / T, last = std::min(windows, (begin + n + T - 1) / T);
        e["windows"] = std::max<int64_t>(0, last - first);
      }
      j["shards"].push_back(e);
      begin += n;
    }
    if (T > 0) j["windows"] = windows;
    if (o.steps && std::string(split) == "train") {
      j["epochs"] = windows > 0 ? static_cast<double>(*o.steps) * static_cast<double>(o.batch_size) /
                                      static_cast<double>(windows)
                                : 0.0;
    }
    out["splits"][split] = j;
  }
  return out.dump(2) + "\n";
}

std::string data_stats_text(const std::string& json) {
  const auto j = nlohmann::json::parse(json);
  std::string s = fmt::format("{}: {} documents; tokenizer {} (V = {}, hash {})\n", j["manifest"].get<std::string>(),
                              j["documents"].get<int64_t>(), j["tokenizer"]["kind"].get<std::string>(),
                              j["tokenizer"]["vocab_size"].get<int64_t>(),
                              j["tokenizer"]["hash"].get<std::string>().substr(0, 16));
  for (const char* split : {"train", "val"}) {
    const auto& p = j["splits"][split];
    s += fmt::format("{}: {} documents, {} tokens in {} shard(s)", split, p["documents"].get<int64_t>(),
                     p["tokens"].get<int64_t>(), p["shards"].size());
    if (p.contains("windows")) s += fmt::format(", {} windows", p["windows"].get<int64_t>());
    if (p.contains("epochs")) s += fmt::format(", {:.3f} epochs in the given steps", p["epochs"].get<double>());
    s += "\n";
    for (const auto& sh : p["shards"]) {
      s += fmt::format("  {}  {} tokens", sh["file"].get<std::string>(), sh["tokens"].get<int64_t>());
      if (sh.contains("windows")) s += fmt::format("  {} windows", sh["windows"].get<int64_t>());
      s += "\n";
    }
  }
  return s;
}

}  // namespace ptrain::tools
