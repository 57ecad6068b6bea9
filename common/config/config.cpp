// YAML config → typed Config. The only file in ptrain that includes yaml-cpp.
//
// One table (kKeys) drives everything: which keys exist and in what order (config_keys(), to_yaml()
// and configs/defaults.yaml all follow it), how each value is parsed, and its simple range. A load
// runs in four passes so that a later source can fix an earlier one:
//   1. the file, key by key: only the syntax and the type of each value are checked here;
//   2. the --set overrides, the same way;
//   3. relative paths resolved: run.dir against the working directory, the others against the
//      base of whoever set them (the file's folder, or cwd for --set);
//   4. ranges, things not built yet, and the checks that involve two keys.
// Every message starts with where the offending value came from: FILE:LINE:COL (1-based) for a
// YAML node, "--set key=value" for an override, or just FILE for a default that fails a cross-check.
//
// Not here: what the values mean to the model or the run (their users check that), environment
// variables (none are read), and `~` expansion (paths are taken literally).
#include "common/config/config.hpp"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string_view>
#include <system_error>
#include <variant>

#include "common/error.hpp"
#include "common/util/fs.hpp"
#include "ptrain/build_config.hpp"

namespace ptrain {
namespace {

// ---- the key table ------------------------------------------------------------------------------

// A typed pointer into a Config. Every std::string key is a path (or one of its key's words).
using FieldRef =
    std::variant<int64_t*, int*, uint64_t*, double*, bool*, std::string*, Launch*, DataTransport*,
                 SyncMode*, DeviceType*, DevicePrecision*, ModelArch*, WireDtype*>;

template <auto Section, auto Member>
FieldRef field(Config& c) {
  return &(c.*Section.*Member);
}

constexpr double kInf = std::numeric_limits<double>::infinity();

// The values a key accepts on its own: [lo, hi] with either end optionally open.
struct Bounds {
  double lo = -kInf;
  bool lo_open = false;
  double hi = kInf;
  bool hi_open = false;
};
constexpr Bounds at_least(double lo) { return {lo, false, kInf, false}; }
constexpr Bounds above(double lo) { return {lo, true, kInf, false}; }
// Counts and sizes: beyond these, a config is a typo or a unit mistake, not a job.
constexpr Bounds within(double lo, double hi) { return {lo, false, hi, false}; }
constexpr Bounds kFraction{0, false, 1, true};  // [0, 1): Adam's betas

struct Key {
  std::string_view name;  // "section.key"
  FieldRef (*field)(Config&);
  Bounds bounds = {};
  // Spelled-out values. For a path: words that are not paths ("byte", "auto", "never"). For an
  // integer: "auto", stored as 0 (so an explicit 0 is refused: 0 would read back as auto).
  std::array<std::string_view, 2> words = {};
};

// In configs/defaults.yaml order; the default of each key is its struct initialiser in config.hpp.
const Key kKeys[] = {
    {"run.dir", field<&Config::run, &RunConfig::dir>},
    {"run.seed", field<&Config::run, &RunConfig::seed>},
    {"run.threads", field<&Config::run, &RunConfig::threads>, at_least(0)},
    {"run.max_memory", field<&Config::run, &RunConfig::max_memory>, at_least(1), {"auto"}},
    {"data.train", field<&Config::data, &DataConfig::train>},
    {"data.val", field<&Config::data, &DataConfig::val>},
    {"data.tokenizer", field<&Config::data, &DataConfig::tokenizer>, {}, {"byte"}},
    {"model.arch", field<&Config::model, &ModelConfig::arch>},
    {"model.vocab_size", field<&Config::model, &ModelConfig::vocab_size>, within(1, 0x1p31),
     {"auto"}},
    {"model.seq_len", field<&Config::model, &ModelConfig::seq_len>, within(1, 0x1p20)},
    {"model.n_layer", field<&Config::model, &ModelConfig::n_layer>, within(1, 4096)},
    {"model.n_head", field<&Config::model, &ModelConfig::n_head>, within(1, 4096)},
    {"model.n_embd", field<&Config::model, &ModelConfig::n_embd>, within(1, 0x1p17)},
    {"model.num_labels", field<&Config::model, &ModelConfig::num_labels>, within(0, 0x1p20)},
    {"device.type", field<&Config::device, &DeviceConfig::type>},
    {"device.precision", field<&Config::device, &DeviceConfig::precision>},
    {"device.allow_tf32", field<&Config::device, &DeviceConfig::allow_tf32>},
    {"train.steps", field<&Config::train, &TrainConfig::steps>, at_least(1)},
    {"train.batch_size", field<&Config::train, &TrainConfig::batch_size>, within(1, 0x1p24)},
    {"train.micro_batch", field<&Config::train, &TrainConfig::micro_batch>, within(1, 0x1p24)},
    {"train.eval_every", field<&Config::train, &TrainConfig::eval_every>, at_least(0)},
    {"train.eval_windows", field<&Config::train, &TrainConfig::eval_windows>, at_least(0)},
    {"train.log_every", field<&Config::train, &TrainConfig::log_every>, at_least(1)},
    {"train.sample_tokens", field<&Config::train, &TrainConfig::sample_tokens>, within(0, 4096)},
    {"optim.lr", field<&Config::optim, &OptimConfig::lr>, at_least(0)},
    {"optim.min_lr", field<&Config::optim, &OptimConfig::min_lr>, at_least(0)},
    {"optim.warmup_steps", field<&Config::optim, &OptimConfig::warmup_steps>, at_least(0)},
    {"optim.weight_decay", field<&Config::optim, &OptimConfig::weight_decay>, at_least(0)},
    {"optim.beta1", field<&Config::optim, &OptimConfig::beta1>, kFraction},
    {"optim.beta2", field<&Config::optim, &OptimConfig::beta2>, kFraction},
    {"optim.eps", field<&Config::optim, &OptimConfig::eps>, above(0)},
    {"optim.grad_clip", field<&Config::optim, &OptimConfig::grad_clip>, at_least(0)},
    {"cluster.workers", field<&Config::cluster, &ClusterConfig::workers>, within(1, 4096)},
    {"cluster.servers", field<&Config::cluster, &ClusterConfig::servers>, within(1, 1024)},
    {"cluster.launch", field<&Config::cluster, &ClusterConfig::launch>},
    {"cluster.transport", field<&Config::cluster, &ClusterConfig::transport>},
    {"cluster.sync", field<&Config::cluster, &ClusterConfig::sync>},
    {"cluster.staleness", field<&Config::cluster, &ClusterConfig::staleness>, at_least(0)},
    {"cluster.wire_dtype", field<&Config::cluster, &ClusterConfig::wire_dtype>},
    {"cluster.wire_error_feedback", field<&Config::cluster, &ClusterConfig::wire_error_feedback>},
    {"cluster.local_steps", field<&Config::cluster, &ClusterConfig::local_steps>, within(1, 0x1p20)},
    {"cluster.outer_lr", field<&Config::cluster, &ClusterConfig::outer_lr>, above(0)},
    {"cluster.outer_momentum", field<&Config::cluster, &ClusterConfig::outer_momentum>, kFraction},
    {"cluster.bucket_mb", field<&Config::cluster, &ClusterConfig::bucket_mb>, at_least(0)},
    {"cluster.heartbeat_s", field<&Config::cluster, &ClusterConfig::heartbeat_s>, above(0)},
    {"cluster.peer_timeout_s", field<&Config::cluster, &ClusterConfig::peer_timeout_s>, above(0)},
    {"cluster.min_workers", field<&Config::cluster, &ClusterConfig::min_workers>, at_least(1)},
    {"cluster.max_workers", field<&Config::cluster, &ClusterConfig::max_workers>, at_least(0)},
    {"cluster.wait_timeout_s", field<&Config::cluster, &ClusterConfig::wait_timeout_s>, above(0)},
    {"cluster.step_deadline_s", field<&Config::cluster, &ClusterConfig::step_deadline_s>,
     at_least(0)},
    {"cluster.max_restarts", field<&Config::cluster, &ClusterConfig::max_restarts>, at_least(0)},
    {"checkpoint.every_steps", field<&Config::checkpoint, &CheckpointConfig::every_steps>,
     at_least(0)},
    {"checkpoint.every_minutes", field<&Config::checkpoint, &CheckpointConfig::every_minutes>,
     at_least(0)},
    {"checkpoint.keep", field<&Config::checkpoint, &CheckpointConfig::keep>, at_least(1)},
    {"checkpoint.resume", field<&Config::checkpoint, &CheckpointConfig::resume>, {},
     {"auto", "never"}},
    {"status.port", field<&Config::status, &StatusConfig::port>, Bounds{0, false, 65535, false}},
    {"finetune.checkpoint", field<&Config::finetune, &FinetuneConfig::checkpoint>},
    {"finetune.train", field<&Config::finetune, &FinetuneConfig::train>},
    {"finetune.val", field<&Config::finetune, &FinetuneConfig::val>},
    {"finetune.epochs", field<&Config::finetune, &FinetuneConfig::epochs>, at_least(1)},
};

// Enum spellings; `built` = usable now. The others are refused with "not implemented yet" rather
// than accepted and ignored (docs/contracts.md).
template <class E>
struct Choice {
  E value;
  std::string_view name;
  bool built;
};
constexpr Choice<Launch> kLaunchChoices[] = {{Launch::kThreads, "threads", true},
                                             {Launch::kProcesses, "processes", true},
                                             {Launch::kMpi, "mpi", PTRAIN_HAS_MPI != 0}};
constexpr Choice<DataTransport> kTransportChoices[] = {{DataTransport::kAuto, "auto", true},
                                                       {DataTransport::kTcp, "tcp", true},
                                                       {DataTransport::kMpi, "mpi", PTRAIN_HAS_MPI != 0}};
constexpr Choice<SyncMode> kSyncChoices[] = {{SyncMode::kBsp, "bsp", true},
                                             {SyncMode::kSsp, "ssp", true},
                                             {SyncMode::kAsync, "async", true},
                                             {SyncMode::kLocal, "local", true}};
constexpr Choice<WireDtype> kWireDtypeChoices[] = {{WireDtype::kFp32, "fp32", true},
                                                   {WireDtype::kBf16, "bf16", true}};
constexpr Choice<DeviceType> kDeviceChoices[] = {{DeviceType::kCpu, "cpu", true},
                                                 {DeviceType::kCuda, "cuda", PTRAIN_HAS_CUDA != 0}};
constexpr Choice<DevicePrecision> kPrecisionChoices[] = {{DevicePrecision::kFp32, "fp32", true},
                                                         {DevicePrecision::kBf16, "bf16", true}};
std::span<const Choice<DevicePrecision>> choices_for(const DevicePrecision*) {
  return kPrecisionChoices;
}
constexpr Choice<ModelArch> kArchChoices[] = {{ModelArch::kGpt, "gpt", true},
                                              {ModelArch::kBert, "bert", true}};
std::span<const Choice<ModelArch>> choices_for(const ModelArch*) { return kArchChoices; }
std::span<const Choice<Launch>> choices_for(const Launch*) { return kLaunchChoices; }
std::span<const Choice<DataTransport>> choices_for(const DataTransport*) {
  return kTransportChoices;
}
std::span<const Choice<SyncMode>> choices_for(const SyncMode*) { return kSyncChoices; }
std::span<const Choice<DeviceType>> choices_for(const DeviceType*) { return kDeviceChoices; }
std::span<const Choice<WireDtype>> choices_for(const WireDtype*) { return kWireDtypeChoices; }

template <class E>
std::string choice_names(const E* tag, bool built_only) {
  std::string out;
  for (const auto& c : choices_for(tag)) {
    if (built_only && !c.built) continue;
    out += out.empty() ? "" : ", ";
    out += c.name;
  }
  return out;
}

std::string_view section_of(std::string_view key) { return key.substr(0, key.find('.')); }
std::string_view leaf_of(std::string_view key) { return key.substr(key.find('.') + 1); }
bool has_word(const Key& key, std::string_view text) {
  return !text.empty() && std::find(key.words.begin(), key.words.end(), text) != key.words.end();
}

const Key* find_key(std::string_view name) {
  for (const Key& k : kKeys) {
    if (k.name == name) return &k;
  }
  return nullptr;
}
bool is_section(std::string_view name) {
  return std::any_of(std::begin(kKeys), std::end(kKeys),
                     [&](const Key& k) { return section_of(k.name) == name; });
}

// ---- "did you mean" -----------------------------------------------------------------------------

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The valid key nearest to `wanted` ("section.key"). A key filed under the wrong section
// ("train.lr") is found by its leaf name first, since the edit distance of the whole path would
// favour a same-section key that merely looks alike.
std::string_view nearest_key(std::string_view wanted) {
  const std::string_view leaf =
      wanted.find('.') == std::string_view::npos ? wanted : leaf_of(wanted);
  for (const Key& k : kKeys) {
    if (leaf_of(k.name) == leaf) return k.name;
  }
  std::string_view best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const Key& k : kKeys) {
    size_t d = edit_distance(wanted, k.name);
    if (d < best_d) best = k.name, best_d = d;
  }
  return best;
}

// For an unknown top-level name: a key's leaf put at the top ("lr:") points to that key;
// otherwise the nearest section.
std::string_view nearest_section(std::string_view wanted) {
  for (const Key& k : kKeys) {
    if (leaf_of(k.name) == wanted) return k.name;
  }
  std::string_view best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const Key& k : kKeys) {
    size_t d = edit_distance(wanted, section_of(k.name));
    if (d < best_d) best = section_of(k.name), best_d = d;
  }
  return best;
}

// ---- scalars ------------------------------------------------------------------------------------
// Parsed by hand with from_chars: yaml-cpp's as<int>() reads "010" as octal, accepts "1.5" for
// nothing useful, and fails with a bare "bad conversion".

[[noreturn]] void fail(std::string_view where, std::string_view message) {
  throw ConfigError(fmt::format("{}: {}", where, message));
}

template <class Int>
std::optional<Int> parse_int(std::string_view text, bool* out_of_range) {
  if (text.starts_with('+')) text.remove_prefix(1);
  Int value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  *out_of_range = ec == std::errc::result_out_of_range;
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

std::optional<double> parse_double(std::string_view text) {
  if (text.starts_with('+')) text.remove_prefix(1);
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  if (!std::isfinite(value)) return std::nullopt;
  return value;
}

// What a key wants, for "expected ..." messages.
std::string expected_kind(const Key& key, FieldRef ref) {
  return std::visit(
      [&](auto* p) -> std::string {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, double>) {
          return "a number";
        } else if constexpr (std::is_same_v<T, bool>) {
          return "true or false";
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          return "a non-negative integer";
        } else if constexpr (std::is_integral_v<T>) {
          return key.words[0].empty() ? "an integer" : fmt::format("an integer or {}", key.words[0]);
        } else if constexpr (std::is_same_v<T, std::string>) {
          return "a path";
        } else {
          return fmt::format("one of {}", choice_names(p, false));
        }
      },
      ref);
}

// Stores one scalar (`text`; nullopt for a YAML null) into the key's field. Checks type only:
// ranges wait until every source has been applied (an override may fix a file's value).
void assign(const Key& key, Config& cfg, const std::optional<std::string>& text,
            std::string_view where) {
  FieldRef ref = key.field(cfg);
  auto bad = [&](std::string_view note = {}) {
    fail(where, fmt::format("{}: expected {}, got {}{}", key.name, expected_kind(key, ref),
                            text ? fmt::format("'{}'", *text) : "nothing", note));
  };
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, std::string>) {
          *p = text.value_or("");  // null and "" both mean unset (data.val: no validation)
        } else {
          if (!text) bad();
          if constexpr (std::is_same_v<T, double>) {
            auto v = parse_double(*text);
            if (!v) bad();
            *p = *v;
          } else if constexpr (std::is_same_v<T, bool>) {
            if (*text != "true" && *text != "false") bad();
            *p = *text == "true";
          } else if constexpr (std::is_integral_v<T>) {
            if (has_word(key, *text)) {
              *p = 0;
              return;
            }
            bool out_of_range = false;
            auto v = parse_int<T>(*text, &out_of_range);
            if (!v) bad(out_of_range ? " (out of range)" : "");
            if (!key.words[0].empty() && *v == 0) {
              fail(where, fmt::format("{}: must be >= 1 or {}, got 0", key.name, key.words[0]));
            }
            *p = *v;
          } else {
            const auto choices = choices_for(p);
            auto it = std::find_if(choices.begin(), choices.end(),
                                   [&](const auto& c) { return c.name == *text; });
            if (it == choices.end()) bad();
            *p = it->value;
          }
        }
      },
      ref);
}

std::string describe(const Bounds& b) {
  if (b.hi == kInf) return fmt::format("{} {}", b.lo_open ? ">" : ">=", b.lo);
  return fmt::format("in {}{}, {}{}", b.lo_open ? "(" : "[", b.lo, b.hi, b.hi_open ? ")" : "]");
}

// A key's own range and, for enums, whether the choice is built. Returns an error or "".
std::string check_key(const Key& key, Config& cfg) {
  return std::visit(
      [&](auto* p) -> std::string {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, bool>) {
          return "";
        } else if constexpr (std::is_arithmetic_v<T>) {
          if (!key.words[0].empty() && *p == 0) return "";  // "auto"
          const double v = static_cast<double>(*p);
          const Bounds& b = key.bounds;
          const bool ok = (b.lo_open ? v > b.lo : v >= b.lo) && (b.hi_open ? v < b.hi : v <= b.hi);
          if (!ok) return fmt::format("{} must be {}, got {}", key.name, describe(b), *p);
          return "";
        } else if constexpr (std::is_same_v<T, std::string>) {
          return "";
        } else {
          for (const auto& c : choices_for(p)) {
            if (c.value == *p && !c.built) {
              return fmt::format("{}: '{}' is not implemented yet (valid now: {})", key.name, c.name,
                                 choice_names(p, true));
            }
          }
          return "";
        }
      },
      key.field(cfg));
}

// ---- emission -----------------------------------------------------------------------------------

// A YAML double-quoted scalar: JSON-like escapes that yaml-cpp reads back byte for byte.
std::string yaml_quoted(std::string_view s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20 || ch == 0x7f) {
      out += fmt::format("\\x{:02x}", ch);
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

std::string format_value(const Key& key, FieldRef ref) {
  return std::visit(
      [&](auto* p) -> std::string {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return has_word(key, *p) ? *p : yaml_quoted(*p);
        } else if constexpr (std::is_same_v<T, double>) {
          return fmt::format("{}", *p);  // shortest form that reads back to the same double
        } else if constexpr (std::is_same_v<T, bool>) {
          return *p ? "true" : "false";
        } else if constexpr (std::is_integral_v<T>) {
          return !key.words[0].empty() && *p == 0 ? std::string(key.words[0])
                                                  : fmt::format("{}", *p);
        } else {
          for (const auto& c : choices_for(p)) {
            if (c.value == *p) return std::string(c.name);
          }
          PTRAIN_ENFORCE(false, "{}: enum value {} has no name", key.name, static_cast<int>(*p));
          return {};
        }
      },
      ref);
}

// ---- loading ------------------------------------------------------------------------------------

// Where a key's value came from: for messages, and for resolving a relative path.
struct Origin {
  std::string where;     // "FILE:LINE:COL" or "--set key=value"
  std::string base_dir;  // what a relative path in it is relative to
};

const char* node_kind(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Null: return "nothing";
    default: return "a scalar";
  }
}

// Only notes where documents start: the first pass of load_single_document below.
class DocumentStarts : public YAML::EventHandler {
 public:
  YAML::Mark last;
  void OnDocumentStart(const YAML::Mark& mark) override { last = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// A refusal of YAML text: WHERE:LINE:COL for a file (`key` empty), WHERE and KEY for a --set value.
[[noreturn]] void refuse_yaml(const std::string& where, const std::string& key, const YAML::Mark& m,
                              const std::string& problem) {
  if (!key.empty()) fail(where, fmt::format("{}: malformed YAML value: {}", key, problem));
  // yaml-cpp's marks are 0-based.
  fail(fmt::format("{}:{}:{}", where, m.line + 1, m.column + 1),
       fmt::format("malformed YAML: {}", problem));
}

// The one YAML document in `text` (a null node for an empty stream), or a refusal (refuse_yaml).
// yaml-cpp 0.7 does not consume a ',' outside any flow collection: its parser reports an empty
// document there and stays put, so LoadAll loops forever on a config holding a stray top-level ','
// (found by fuzzing), and Load reads such a text as empty, silently. So the stream is first walked
// event by event, asking for at most two documents: a second one is either a real second document
// or that stuck token, and both are refused before yaml-cpp builds the node.
YAML::Node load_single_document(const std::string& text, const std::string& where,
                                const std::string& key = "") {
  try {
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentStarts starts;
    if (!parser.HandleNextDocument(starts)) return YAML::Node();  // nothing but comments/space
    const YAML::Mark first = starts.last;
    if (parser.HandleNextDocument(starts)) {
      const YAML::Mark m = starts.last;
      const bool inside = m.pos >= 0 && static_cast<size_t>(m.pos) < text.size();
      if (inside && (text[m.pos] == ',' || m.pos == first.pos)) {
        refuse_yaml(where, key, m,
                    fmt::format("unexpected '{}' outside a [list] or {{mapping}}", text[m.pos]));
      }
      refuse_yaml(where, key, m, "expected one YAML document, found more ('---')");
    }
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    refuse_yaml(where, key, e.mark, e.msg);
  }
}

class Loader {
 public:
  Loader(std::string origin, std::string base_dir)
      : origin_(std::move(origin)), base_dir_(std::move(base_dir)) {
    cfg_.source = origin_;
  }

  void apply_text(const std::string& text) {
    const YAML::Node root = load_single_document(text, origin_);
    if (root.IsNull()) return;  // empty file: all defaults
    if (!root.IsMap()) {
      fail(at(root), fmt::format("expected a mapping of sections (run, data, model, ...), got {}",
                                 node_kind(root)));
    }
    std::map<std::string, std::string> seen_sections;
    for (const auto& section : root) {
      const std::string name = key_name(section.first);
      if (!is_section(name)) {
        fail(at(section.first), fmt::format("unknown section '{}' (did you mean '{}'?)", name,
                                            nearest_section(name)));
      }
      if (auto [it, fresh] = seen_sections.emplace(name, at(section.first)); !fresh) {
        fail(at(section.first), fmt::format("duplicate section '{}' (first at {})", name, it->second));
      }
      apply_section(name, section.second);
    }
  }

  void apply_override(const ConfigOverride& o) {
    const std::string where = fmt::format("--set {}={}", o.key, o.value);
    const Key* key = find_key(o.key);
    if (!key) {
      fail(where, fmt::format("unknown key '{}' (did you mean '{}'?)", o.key, nearest_key(o.key)));
    }
    // The value is a YAML scalar, so quoting works as in a file: --set 'data.val=""'.
    const YAML::Node value = load_single_document(o.value, where, o.key);
    assign_node(*key, value, where, std::filesystem::current_path().string());
  }

  Config finish() {
    resolve_paths();
    validate();
    return cfg_;
  }

 private:
  std::string at(const YAML::Node& n) const {
    const YAML::Mark m = n.Mark();
    if (m.is_null()) return origin_;
    return fmt::format("{}:{}:{}", origin_, m.line + 1, m.column + 1);
  }

  std::string key_name(const YAML::Node& k) const {
    if (!k.IsScalar()) fail(at(k), fmt::format("expected a key name, got {}", node_kind(k)));
    return k.Scalar();
  }

  void apply_section(const std::string& section, const YAML::Node& body) {
    if (body.IsNull()) return;  // "model:" with nothing under it
    if (!body.IsMap()) {
      fail(at(body), fmt::format("{}: expected a mapping of keys, got {}", section, node_kind(body)));
    }
    for (const auto& entry : body) {
      const std::string name = section + "." + key_name(entry.first);
      const Key* key = find_key(name);
      if (!key) {
        fail(at(entry.first),
             fmt::format("unknown key '{}' (did you mean '{}'?)", name, nearest_key(name)));
      }
      if (auto it = origins_.find(key->name); it != origins_.end()) {
        fail(at(entry.first), fmt::format("duplicate key '{}' (first at {})", name, it->second.where));
      }
      // A null value has no useful mark of its own (yaml-cpp puts it after the line): use the key's.
      assign_node(*key, entry.second, at(entry.second.IsNull() ? entry.first : entry.second),
                  base_dir_);
    }
  }

  void assign_node(const Key& key, const YAML::Node& value, const std::string& where,
                   const std::string& base_dir) {
    if (value.IsMap() || value.IsSequence()) {
      fail(where, fmt::format("{}: expected a single value ({}), got {}", key.name,
                              expected_kind(key, key.field(cfg_)), node_kind(value)));
    }
    assign(key, cfg_, value.IsNull() ? std::nullopt : std::optional(value.Scalar()), where);
    origins_[key.name] = {where, base_dir};
  }

  // Inputs (data, tokenizer, a resume checkpoint) resolve against the folder of the file that
  // names them, so a config and its data move together; a key's default resolves like a value
  // written in the file. run.dir, an output, resolves against the working directory wherever it
  // was set, as other launchers' output folders do: `ptrain run sub/job.yaml` writes ./runs/...,
  // not sub/runs/....
  void resolve_paths() {
    const std::string cwd = std::filesystem::current_path().string();
    for (const Key& key : kKeys) {
      FieldRef ref = key.field(cfg_);
      auto* slot = std::get_if<std::string*>(&ref);
      if (!slot) continue;
      std::string& path = **slot;
      if (path.empty() || has_word(key, path)) continue;
      if (key.name == "run.dir") {
        path = resolve_path(path, cwd);
        continue;
      }
      auto it = origins_.find(key.name);
      path = resolve_path(path, it != origins_.end() ? it->second.base_dir : base_dir_);
    }
  }

  // Where to point a message about these keys: the first one that was set, else the source.
  std::string where_of(std::initializer_list<std::string_view> keys) const {
    for (std::string_view k : keys) {
      if (auto it = origins_.find(k); it != origins_.end()) return it->second.where;
    }
    return origin_;
  }

  void validate() {
    for (const Key& key : kKeys) {
      if (std::string error = check_key(key, cfg_); !error.empty()) fail(where_of({key.name}), error);
    }
    const auto& c = cfg_;
    if (c.data.train.empty()) {
      fail(where_of({"data.train"}), "data.train is required (the training .tok file)");
    }
    if (c.optim.min_lr > c.optim.lr) {
      fail(where_of({"optim.min_lr", "optim.lr"}),
           fmt::format("optim.min_lr ({}) must be <= optim.lr ({})", c.optim.min_lr, c.optim.lr));
    }
    if (c.model.n_embd % c.model.n_head != 0) {
      fail(where_of({"model.n_embd", "model.n_head"}),
           fmt::format("model.n_embd ({}) must be divisible by model.n_head ({})", c.model.n_embd,
                       c.model.n_head));
    }
    if (c.model.num_labels > 0 && c.model.arch != ModelArch::kBert) {
      fail(where_of({"model.num_labels", "model.arch"}),
           fmt::format("model.num_labels ({}) needs model.arch bert (a classification head)",
                       c.model.num_labels));
    }
    if (c.model.arch == ModelArch::kBert && c.model.seq_len < 3) {
      fail(where_of({"model.seq_len", "model.arch"}),
           fmt::format("model.seq_len ({}) must be >= 3 for model.arch bert ([CLS] text [SEP])",
                       c.model.seq_len));
    }
    if (c.train.batch_size < c.cluster.workers) {
      fail(where_of({"train.batch_size", "cluster.workers"}),
           fmt::format("train.batch_size ({}) must be >= cluster.workers ({}): every worker takes "
                       "at least one sequence per step",
                       c.train.batch_size, c.cluster.workers));
    }
    if (c.cluster.peer_timeout_s < 2 * c.cluster.heartbeat_s) {
      fail(where_of({"cluster.peer_timeout_s", "cluster.heartbeat_s"}),
           fmt::format("cluster.peer_timeout_s ({}) must be >= 2 x cluster.heartbeat_s ({}): a "
                       "peer would be declared lost between two heartbeats",
                       c.cluster.peer_timeout_s, c.cluster.heartbeat_s));
    }
    if (c.train.sample_tokens > 0 && c.cluster.launch == Launch::kMpi) {
      fail(where_of({"train.sample_tokens", "cluster.launch"}),
           "train.sample_tokens with cluster.launch: mpi is not implemented yet (samples come "
           "from `ptrain run` with cluster.launch threads or processes; use `ptrain generate` on a "
           "checkpoint)");
    }
    if (c.cluster.transport == DataTransport::kMpi && c.cluster.launch != Launch::kMpi) {
      fail(where_of({"cluster.transport", "cluster.launch"}),
           "cluster.transport: mpi needs cluster.launch: mpi (every role a rank of one MPI job, "
           "started by mpirun or srun)");
    }
    if (c.cluster.max_workers > 0 &&
        c.cluster.max_workers < std::max(c.cluster.workers, c.cluster.min_workers)) {
      fail(where_of({"cluster.max_workers", "cluster.workers", "cluster.min_workers"}),
           fmt::format("cluster.max_workers ({}) must be 0 (no cap) or >= cluster.workers ({}) "
                       "and cluster.min_workers ({})",
                       c.cluster.max_workers, c.cluster.workers, c.cluster.min_workers));
    }
    if (c.cluster.sync != SyncMode::kLocal) {
      // The local-mode keys do nothing under another mode: refused, not ignored.
      const ClusterConfig defaults;
      if (c.cluster.local_steps != defaults.local_steps ||
          c.cluster.outer_lr != defaults.outer_lr ||
          c.cluster.outer_momentum != defaults.outer_momentum) {
        fail(where_of({"cluster.local_steps", "cluster.outer_lr", "cluster.outer_momentum"}),
             fmt::format("cluster.local_steps ({}), cluster.outer_lr ({}) and "
                         "cluster.outer_momentum ({}) apply only to cluster.sync: local; leave "
                         "them at their defaults (1, 0.7, 0.9) with cluster.sync: {}",
                         c.cluster.local_steps, c.cluster.outer_lr, c.cluster.outer_momentum,
                         sync_mode_name(c.cluster.sync)));
      }
    }
    if (c.cluster.wire_error_feedback && c.cluster.wire_dtype != WireDtype::kBf16) {
      // fp32 pushes are sent as they are: there is no rounding error to carry.
      fail(where_of({"cluster.wire_error_feedback"}),
           "cluster.wire_error_feedback: true applies only to cluster.wire_dtype: bf16 (fp32 "
           "pushes are not rounded); set cluster.wire_dtype: bf16 or leave it false");
    }
    if (c.cluster.sync != SyncMode::kSsp && c.cluster.staleness != 0) {
      // bsp and local wait for every worker each step; async has no bound at all.
      fail(where_of({"cluster.staleness"}),
           fmt::format("cluster.staleness ({}) applies only to cluster.sync: ssp (bsp and local "
                       "wait for every worker each step, async has no bound); leave it at 0 with "
                       "cluster.sync: {}",
                       c.cluster.staleness, sync_mode_name(c.cluster.sync)));
    }
  }

  std::string origin_;
  std::string base_dir_;
  Config cfg_;
  std::map<std::string_view, Origin, std::less<>> origins_;
};

}  // namespace

// ---- public API ---------------------------------------------------------------------------------

std::string Config::to_yaml() const {
  Config copy = *this;  // the table's accessors take a mutable Config; read a copy to stay const
  std::string out = "# ptrain config, resolved: every key, paths absolute\n";
  std::string_view section;
  for (const Key& key : kKeys) {
    if (section_of(key.name) != section) {
      section = section_of(key.name);
      out += fmt::format("{}:\n", section);
    }
    out += fmt::format("  {}: {}\n", leaf_of(key.name), format_value(key, key.field(copy)));
  }
  return out;
}

std::vector<ConfigDifference> config_differences(const Config& before, const Config& after) {
  Config a = before, b = after;  // the table's accessors take a mutable Config
  std::vector<ConfigDifference> out;
  for (const Key& key : kKeys) {
    std::string va = format_value(key, key.field(a)), vb = format_value(key, key.field(b));
    if (va != vb) out.push_back({std::string(key.name), std::move(va), std::move(vb)});
  }
  return out;
}

bool Config::operator==(const Config& o) const {
  return run == o.run && data == o.data && model == o.model && device == o.device &&
         train == o.train &&
         optim == o.optim && cluster == o.cluster && checkpoint == o.checkpoint &&
         status == o.status && finetune == o.finetune;
}

const char* device_type_name(DeviceType type) {
  for (const auto& c : kDeviceChoices) {
    if (c.value == type) return c.name.data();  // string literals: NUL-terminated
  }
  PTRAIN_ENFORCE(false, "device type {} has no name", static_cast<int>(type));
  return "";
}

const char* model_arch_name(ModelArch arch) {
  for (const auto& c : kArchChoices) {
    if (c.value == arch) return c.name.data();
  }
  PTRAIN_ENFORCE(false, "model architecture {} has no name", static_cast<int>(arch));
  return "";
}

const char* sync_mode_name(SyncMode mode) {
  for (const auto& c : kSyncChoices) {
    if (c.value == mode) return c.name.data();
  }
  PTRAIN_ENFORCE(false, "sync mode {} has no name", static_cast<int>(mode));
  return "";
}

Config parse_config_text(const std::string& yaml_text, const std::string& origin,
                         const std::string& base_dir,
                         const std::vector<ConfigOverride>& overrides) {
  Loader loader(origin, base_dir);
  loader.apply_text(yaml_text);
  for (const ConfigOverride& o : overrides) loader.apply_override(o);
  return loader.finish();
}

Config load_config(const std::string& path, const std::vector<ConfigOverride>& overrides) {
  const std::string text = read_file(path);  // IoError naming the path
  return parse_config_text(text, path, std::filesystem::path(path).parent_path().string(),
                           overrides);
}

ConfigOverride parse_override(const std::string& text) {
  const size_t eq = text.find('=');
  const std::string key = text.substr(0, eq);
  const size_t dot = key.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot == 0 || dot + 1 == key.size()) {
    std::string hint;
    if (eq != std::string::npos && dot == std::string::npos && !key.empty()) {
      hint = fmt::format(" (did you mean '{}'?)", nearest_key(key));
    }
    throw UsageError(fmt::format("--set expects section.key=value (e.g. optim.lr=3e-4), got '{}'{}",
                                 text, hint));
  }
  return {key, text.substr(eq + 1)};
}

const std::vector<std::string>& config_keys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> out;
    for (const Key& k : kKeys) out.emplace_back(k.name);
    return out;
  }();
  return keys;
}

}  // namespace ptrain
