// A checkpoint's report: header, config and per-tensor statistics (inspect.hpp).
#include "tools/inspect.hpp"

#include "common/error.hpp"
#include "common/io/checksum_block.hpp"
#include "tools/checkpoint_model.hpp"

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <vector>

namespace ptrain::tools {
namespace {

struct Stats {
  double mean = NAN, std = NAN, min = NAN, max = NAN, l2 = 0.0;
  int64_t finite = 0, nan = 0, inf = 0;
};

Stats stats_of(std::span<const float> v) {
  Stats s;
  double sum = 0.0, sumsq = 0.0;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (float x : v) {
    if (std::isnan(x)) {
      ++s.nan;
    } else if (std::isinf(x)) {
      ++s.inf;
    } else {
      const double d = x;
      sum += d;
      sumsq += d * d;
      lo = std::min(lo, d);
      hi = std::max(hi, d);
      ++s.finite;
    }
  }
  s.l2 = std::sqrt(sumsq);
  if (s.finite > 0) {
    const double n = static_cast<double>(s.finite);
    s.mean = sum / n;
    double acc = 0.0;  // second pass: no cancellation for tensors with a large mean
    for (float x : v) {
      if (std::isfinite(x)) acc += (x - s.mean) * (x - s.mean);
    }
    s.std = std::sqrt(acc / n);
    s.min = lo;
    s.max = hi;
  }
  return s;
}

// ‖a − b‖ / ‖b‖; inf when b is 0 and a is not, 0 when both are 0.
double rel_change(std::span<const float> a, std::span<const float> b) {
  double diff = 0.0, base = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    diff += d * d;
    base += static_cast<double>(b[i]) * b[i];
  }
  if (base == 0.0) return diff == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(diff / base);
}

nlohmann::json num(double x) {
  if (std::isfinite(x)) return x;
  return nullptr;
}

struct Row {
  std::string group, name;
  std::vector<int64_t> shape;
  Stats s;
  std::optional<double> rel;
};

std::string fmt_num(double x) {
  if (std::isnan(x)) return "-";
  return fmt::format("{:.4g}", x);
}

}  // namespace

void inspect(const InspectOptions& o) {
  // With --diff, compare layouts before reading any tensor: the clearer message.
  std::optional<CheckpointModel> other;
  if (!o.diff.empty()) {
    const CheckpointModel a = open_checkpoint_header(o.ckpt);
    const CheckpointModel b = open_checkpoint_header(o.diff);
    if (a.meta.layout_hash != b.meta.layout_hash) {
      const auto& da = a.layout->dims();
      const auto& db = b.layout->dims();
      throw CheckpointError(fmt::format(
          "--diff needs checkpoints of the same layout: {} has layout hash {} (Vp {}, T {}, L {}, "
          "NH {}, C {}), {} has {} (Vp {}, T {}, L {}, NH {}, C {})",
          a.file, a.meta.layout_hash, da.Vp, da.T, da.L, da.NH, da.C, b.file,
          b.meta.layout_hash, db.Vp, db.T, db.L, db.NH, db.C));
    }
    other = open_checkpoint_model(o.diff, o.optimizer);
  }
  const CheckpointModel cm = open_checkpoint_model(o.ckpt, o.optimizer);
  const ParamLayout& layout = *cm.layout;
  const ModelDims& d = layout.dims();

  std::vector<Row> rows;
  double diff_sq = 0.0, base_sq = 0.0;
  auto add_group = [&](const std::string& group, const std::vector<float>& a,
                       const std::vector<float>* b) {
    for (const auto& t : layout.tensors()) {
      std::span<const float> va(a.data() + t.offset, static_cast<size_t>(t.count));
      Row r{group, t.name, t.shape, stats_of(va), std::nullopt};
      if (b) {
        std::span<const float> vb(b->data() + t.offset, static_cast<size_t>(t.count));
        r.rel = rel_change(va, vb);
        if (group == "model") {
          for (size_t i = 0; i < va.size(); ++i) {
            const double dd = static_cast<double>(va[i]) - vb[i];
            diff_sq += dd * dd;
            base_sq += static_cast<double>(vb[i]) * vb[i];
          }
        }
      }
      rows.push_back(std::move(r));
    }
  };
  add_group("model", cm.params, other ? &other->params : nullptr);
  if (o.optimizer) {
    add_group("optimizer/m", cm.m, other ? &other->m : nullptr);
    add_group("optimizer/v", cm.v, other ? &other->v : nullptr);
  }
  const double total_rel = base_sq == 0.0
                               ? (diff_sq == 0.0 ? 0.0 : std::numeric_limits<double>::infinity())
                               : std::sqrt(diff_sq / base_sq);

  // The file's checksum block (verified when the checkpoint was read), or none: written before it.
  const std::optional<ChecksumBlockFields> block = read_checksum_block(cm.file);
  if (o.json) {
    nlohmann::json j;
    j["file"] = cm.file;
    j["checksum_block"] = block ? nlohmann::json{{"crc32c", fmt::format("{:#010x}", block->crc32c)},
                                                 {"length", block->length}}
                                : nlohmann::json(nullptr);
    j["format"] = "ptrain-checkpoint";
    j["format_version"] = cm.meta.format_version;
    j["step"] = cm.meta.step;
    j["tokens_seen"] = cm.meta.tokens_seen;
    j["layout_hash"] = cm.meta.layout_hash;
    j["ptrain_version"] = cm.meta.ptrain_version;
    j["created_utc"] = cm.meta.created_utc;
    j["data"] = {{"seed", cm.meta.data.seed},
                 {"epoch", cm.meta.data.epoch},
                 {"position", cm.meta.data.position}};
    // cluster.sync local: the workers' inner optimizer states beside the shards (inner-R.h5).
    j["inner_state_slots"] = cm.meta.inner_state_slots;
    j["model"] = {{"arch", model_arch_name(d.arch)}, {"vocab_size", d.V}, {"vocab_padded", d.Vp}, {"seq_len", d.T},
                  {"n_layer", d.L},    {"n_head", d.NH},       {"n_embd", d.C},
                  {"parameters", layout.total()}};
    j["tokenizer"] = {{"kind", cm.tokenizer->kind()}, {"vocab_size", cm.tokenizer->vocab_size()}};
    j["config_yaml"] = cm.meta.config_yaml;
    nlohmann::json tensors = nlohmann::json::array();
    for (const Row& r : rows) {
      nlohmann::json t = {{"group", r.group},        {"name", r.name},
                          {"shape", r.shape},        {"dtype", "float32"},
                          {"mean", num(r.s.mean)},   {"std", num(r.s.std)},
                          {"min", num(r.s.min)},     {"max", num(r.s.max)},
                          {"l2", num(r.s.l2)},       {"nan", r.s.nan},
                          {"inf", r.s.inf}};
      if (r.rel) t["rel_change"] = num(*r.rel);
      tensors.push_back(std::move(t));
    }
    j["tensors"] = std::move(tensors);
    if (other) {
      j["diff"] = {{"file", other->file},
                   {"step", other->meta.step},
                   {"rel_change", num(total_rel)}};
    }
    std::printf("%s\n", j.dump().c_str());
    return;
  }

  std::string out;
  auto line = [&out](const std::string& s) { out += s + "\n"; };
  line(fmt::format("checkpoint   {}", cm.file));
  line(fmt::format("step         {}   tokens_seen {}", cm.meta.step, cm.meta.tokens_seen));
  line(fmt::format("format       ptrain-checkpoint v{}   ptrain {}   created {}",
                   cm.meta.format_version, cm.meta.ptrain_version, cm.meta.created_utc));
  line(fmt::format("layout hash  {}", cm.meta.layout_hash));
  line(block ? fmt::format("checksum     crc32c {:#010x} over {} bytes (checked before HDF5 read it)",
                           block->crc32c, block->length)
             : std::string("checksum     none (written before the checksum block)"));
  line(fmt::format("data         seed {}   epoch {}   position {}", cm.meta.data.seed,
                   cm.meta.data.epoch, cm.meta.data.position));
  if (!cm.meta.inner_state_slots.empty()) {
    line(fmt::format("inner state  {} worker(s) (cluster.sync local): slot(s) {} as inner-R.h5",
                     cm.meta.inner_state_slots.size(), fmt::join(cm.meta.inner_state_slots, ", ")));
  }
  line(fmt::format("model        {}   V {} (rows {})   T {}   L {}   NH {}   C {}   {} parameters",
                   model_arch_name(d.arch), d.V, d.Vp, d.T, d.L, d.NH, d.C, layout.total()));
  line(fmt::format("tokenizer    {} ({} tokens)", cm.tokenizer->kind(), cm.tokenizer->vocab_size()));
  if (other) {
    line(fmt::format("diff against {} (step {}): ‖A−B‖/‖B‖ over all weights {}", other->file,
                     other->meta.step, fmt_num(total_rel)));
  }
  line("config:");
  size_t start = 0;
  const std::string& y = cm.meta.config_yaml;
  while (start < y.size()) {
    size_t nl = y.find('\n', start);
    if (nl == std::string::npos) nl = y.size();
    line("  " + y.substr(start, nl - start));
    start = nl + 1;
  }
  size_t w = 6;
  for (const Row& r : rows) w = std::max(w, r.group.size() + 1 + r.name.size());
  std::string header = fmt::format("{:<{}}  {:<14} {:<7} {:>11} {:>11} {:>11} {:>11} {:>11} {:>5} {:>5}",
                                    "tensor", w, "shape", "dtype", "mean", "std", "min", "max",
                                    "l2", "nan", "inf");
  if (other) header += fmt::format(" {:>11}", "rel_change");
  line("");
  line(header);
  for (const Row& r : rows) {
    std::string l = fmt::format("{:<{}}  {:<14} {:<7} {:>11} {:>11} {:>11} {:>11} {:>11} {:>5} {:>5}",
                                r.group + "/" + r.name, w,
                                fmt::format("[{}]", fmt::join(r.shape, ",")), "float32",
                                fmt_num(r.s.mean), fmt_num(r.s.std), fmt_num(r.s.min),
                                fmt_num(r.s.max), fmt_num(r.s.l2), r.s.nan, r.s.inf);
    if (r.rel) l += fmt::format(" {:>11}", fmt_num(*r.rel));
    line(l);
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
}

}  // namespace ptrain::tools
