// The HDF5 checkpoint format (CONTRACTS.md "Checkpoint (HDF5)", docs/formats.md) and the run
// directory's checkpoints/ folder (publish, keep-last-K, `latest`, fallback).
//
// Reading is defensive: every refusal is a CheckpointError that names the file and what is wrong
// (not HDF5, truncated or damaged, wrong format, wrong format_version, different layout, missing
// tensor, wrong shape or type, checksum mismatch). Tensors are read through plain H5Dread, so a
// /model dataset may later be a virtual dataset over shard files; read_tensor() already checks
// that every source file of a virtual dataset is present (a missing one would read as zeros).
#include "common/io/checkpoint.hpp"

#include "common/error.hpp"
#include "common/io/hdf5.hpp"
#include "common/util/fs.hpp"
#include "common/util/hash.hpp"
#include "ptrain/build_config.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

static_assert(std::endian::native == std::endian::little,
              "checkpoint CRCs are over little-endian bytes; add byte swapping for this CPU");

namespace ptrain {
namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "ptrain-checkpoint";
constexpr const char* kFileName = "checkpoint.h5";
const char* const kTensorGroups[] = {"model", "optimizer/m", "optimizer/v"};

std::string utc_now_iso8601() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

uint32_t crc_of(std::span<const float> v) { return crc32c(v.data(), v.size() * sizeof(float)); }

// Runs `f`; HDF5 failures (IoError from the wrappers) while reading become "truncated or damaged".
template <class F>
auto damaged_guard(const std::string& file, F&& f) {
  try {
    return f();
  } catch (const IoError& e) {
    throw CheckpointError(fmt::format("{}: truncated or damaged: {}", file, e.what()));
  }
}

h5::File open_checkpoint(const std::string& file) {
  std::error_code ec;
  const auto st = fs::status(file, ec);
  if (!fs::exists(st)) throw IoError(fmt::format("{}: no such checkpoint file", file));
  if (!fs::is_regular_file(st)) throw IoError(fmt::format("{}: not a regular file", file));
  if (!h5::has_hdf5_signature(file)) {
    throw CheckpointError(fmt::format(
        "{}: not an HDF5 file (no HDF5 signature at its start; truncated or not a checkpoint)",
        file));
  }
  try {
    return h5::File::open(file, h5::Access::kReadOnly);
  } catch (const IoError& e) {
    const std::string what = e.what();
    if (what.find("unable to lock") != std::string::npos) {
      throw IoError(fmt::format(
          "{}: cannot open, the file is locked (is it being written?). On file systems without "
          "locking set HDF5_USE_FILE_LOCKING=FALSE. {}",
          file, what));
    }
    throw CheckpointError(fmt::format("{}: truncated or damaged: {}", file, what));
  }
}

// format + format_version, the first things checked.
void check_header(const h5::File& f, const std::string& file) {
  if (!f.has_attr("format")) {
    throw CheckpointError(
        fmt::format("{}: not a ptrain checkpoint (no `format` attribute on the root group)", file));
  }
  const std::string format = f.attr_string("format");
  if (format != kFormat) {
    throw CheckpointError(fmt::format("{}: not a ptrain checkpoint (`format` is \"{}\", expected \"{}\")",
                                      file, format, kFormat));
  }
  if (!f.has_attr("format_version")) {
    throw CheckpointError(fmt::format("{}: attribute `format_version` is missing", file));
  }
  const int64_t version = f.attr_int64("format_version");
  if (version != kCheckpointFormatVersion) {
    throw CheckpointError(fmt::format("{}: format_version {}, this ptrain reads {}{}", file, version,
                                      kCheckpointFormatVersion,
                                      version > kCheckpointFormatVersion
                                          ? " (written by a newer ptrain)"
                                          : " (written by an older ptrain)"));
  }
}

CheckpointMeta read_meta(const h5::File& f, const std::string& file) {
  CheckpointMeta m;
  m.format_version = static_cast<int32_t>(f.attr_int64("format_version"));
  m.step = f.attr_int64("step");
  m.tokens_seen = f.attr_int64("tokens_seen");
  m.config_yaml = f.attr_string("config_yaml");
  m.layout_hash = f.attr_string("layout_hash");
  m.ptrain_version = f.attr_string("ptrain_version");
  m.created_utc = f.attr_string("created_utc");
  if (f.kind("tokenizer") != h5::ObjectKind::kDataset) {
    throw CheckpointError(fmt::format("{}: dataset /tokenizer is missing", file));
  }
  const h5::Dataset tok = f.open_dataset("tokenizer");
  if (tok.type().dtype != h5::DType::kUInt8 || tok.shape().size() != 1) {
    throw CheckpointError(fmt::format("{}: /tokenizer is {} of shape [{}], expected a 1-D uint8 dataset",
                                      file, tok.type().describe(), fmt::join(tok.shape(), ",")));
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(tok.size()));
  tok.read(bytes);
  m.tokenizer_json.assign(bytes.begin(), bytes.end());
  if (f.kind("data") != h5::ObjectKind::kGroup) {
    throw CheckpointError(fmt::format("{}: group /data is missing", file));
  }
  const h5::Group data = f.open_group("data");
  m.data.seed = data.attr_uint64("seed");
  m.data.epoch = data.attr_int64("epoch");
  m.data.position = data.attr_int64("position");
  return m;
}

// Checks that every source file of a virtual dataset is there and is HDF5 (sharded checkpoints,
// later): a missing source would silently read as the fill value.
void check_virtual_sources(const h5::Dataset& ds, const std::string& file, const std::string& label) {
  if (!ds.is_virtual()) return;
  const fs::path dir = fs::path(file).parent_path();
  for (const std::string& src : ds.virtual_sources()) {
    if (src == ".") continue;
    const fs::path p = fs::path(src).is_absolute() ? fs::path(src) : dir / src;
    if (!fs::exists(p) || !h5::has_hdf5_signature(p.string())) {
      throw CheckpointError(fmt::format("{}: tensor {} reads from {}, which is missing or not HDF5",
                                        file, label, p.string()));
    }
  }
}

// Reads group/name into `dst`, checking presence, dtype, shape and CRC32C.
void read_tensor(const h5::File& f, const std::string& file, const std::string& group,
                 const TensorSpec& t, std::span<float> dst) {
  const std::string rel = group + "/" + t.name;
  if (f.kind(rel) != h5::ObjectKind::kDataset) {
    throw CheckpointError(fmt::format("{}: tensor {} is missing", file, rel));
  }
  const h5::Dataset ds = f.open_dataset(rel);
  const h5::TypeInfo type = ds.type();
  if (type.dtype != h5::DType::kFloat32) {
    throw CheckpointError(
        fmt::format("{}: tensor {} is {}, expected float32", file, rel, type.describe()));
  }
  const std::vector<int64_t> shape = ds.shape();
  if (shape != t.shape) {
    throw CheckpointError(fmt::format("{}: tensor {} has shape [{}], expected [{}]", file, rel,
                                      fmt::join(shape, ", "), fmt::join(t.shape, ", ")));
  }
  if (!ds.has_attr("crc32c")) {
    throw CheckpointError(fmt::format("{}: tensor {} has no crc32c attribute", file, rel));
  }
  const uint64_t stored = ds.attr_uint64("crc32c");
  check_virtual_sources(ds, file, rel);
  ds.read(dst);
  const uint32_t actual = crc_of(dst);
  if (stored != actual) {
    throw CheckpointError(fmt::format(
        "{}: tensor {} fails its checksum (crc32c stored {:#010x}, computed {:#010x}): the file is "
        "damaged",
        file, rel, stored, actual));
  }
}

void write_tensor(h5::Group& g, const TensorSpec& t, std::span<const float> v) {
  h5::Dataset ds = g.create_dataset(t.name, h5::DType::kFloat32, t.shape);
  ds.write(v);
  ds.set_attr("crc32c", crc_of(v));
}

void write_checkpoint(h5::File& f, const ParamLayout& layout, const CheckpointData& data) {
  const auto total = static_cast<size_t>(layout.total());
  PTRAIN_ENFORCE(data.params.size() == total, "checkpoint params: {} floats, the layout has {}",
                 data.params.size(), total);
  PTRAIN_ENFORCE(data.m.empty() || data.m.size() == total, "checkpoint m: {} floats, layout {}",
                 data.m.size(), total);
  PTRAIN_ENFORCE(data.v.empty() || data.v.size() == total, "checkpoint v: {} floats, layout {}",
                 data.v.size(), total);
  const CheckpointMeta& meta = data.meta;
  f.set_attr("format", kFormat);
  f.set_attr("format_version", kCheckpointFormatVersion);
  f.set_attr("step", meta.step);
  f.set_attr("tokens_seen", meta.tokens_seen);
  f.set_attr("config_yaml", meta.config_yaml);
  f.set_attr("layout_hash", layout.hash());
  f.set_attr("ptrain_version", PTRAIN_VERSION);
  f.set_attr("created_utc", utc_now_iso8601());

  {
    h5::Group g = f.create_group("model");
    for (const auto& t : layout.tensors()) {
      write_tensor(g, t, std::span<const float>(data.params).subspan(t.offset, t.count));
    }
  }
  {
    h5::Group opt = f.create_group("optimizer");
    std::vector<float> zeros;
    for (const auto* which : {"m", "v"}) {
      const std::vector<float>& src = which[0] == 'm' ? data.m : data.v;
      h5::Group g = opt.create_group(which);
      for (const auto& t : layout.tensors()) {
        if (src.empty()) {
          zeros.assign(static_cast<size_t>(t.count), 0.0f);
          write_tensor(g, t, zeros);
        } else {
          write_tensor(g, t, std::span<const float>(src).subspan(t.offset, t.count));
        }
      }
    }
  }
  {
    const std::string& j = meta.tokenizer_json;
    h5::Dataset tok = f.create_dataset("tokenizer", h5::DType::kUInt8,
                                       {static_cast<int64_t>(j.size())});
    tok.write(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(j.data()), j.size()));
  }
  {
    h5::Group d = f.create_group("data");
    d.set_attr("seed", static_cast<uint64_t>(meta.data.seed));
    d.set_attr("epoch", static_cast<int64_t>(meta.data.epoch));
    d.set_attr("position", static_cast<int64_t>(meta.data.position));
  }
}

std::string step_dir_name(int64_t step) { return fmt::format("step-{:08d}", step); }

// Step of a "step-NNNNNNNN" name, or -1.
int64_t parse_step_dir(const std::string& name) {
  if (name.size() <= 5 || name.compare(0, 5, "step-") != 0) return -1;
  int64_t step = -1;
  const char* b = name.data() + 5;
  const char* e = name.data() + name.size();
  auto [p, ec] = std::from_chars(b, e, step);
  if (ec != std::errc() || p != e || step < 0) return -1;
  return step;
}

// step-* directories under `dir`, newest first.
std::vector<std::pair<int64_t, fs::path>> step_dirs(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const int64_t step = parse_step_dir(e.path().filename().string());
    std::error_code ec2;
    if (step >= 0 && !e.is_symlink(ec2) && e.is_directory(ec2)) out.emplace_back(step, e.path());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

// The directory `latest` points to (lexically resolved), or empty.
fs::path latest_target(const fs::path& dir) {
  std::error_code ec;
  const fs::path link = dir / "latest";
  if (!fs::is_symlink(fs::symlink_status(link, ec))) return {};
  const fs::path target = fs::read_symlink(link, ec);
  if (ec) return {};
  return (target.is_absolute() ? target : dir / target).lexically_normal();
}

void remove_tree(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
  if (ec) throw IoError(fmt::format("cannot remove {}: {}", p.string(), ec.message()));
}

}  // namespace

std::string checkpoint_file(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return (fs::path(path) / kFileName).string();
  return path;
}

void write_checkpoint_file(const std::string& file, const ParamLayout& layout,
                           const CheckpointData& data) {
  h5::File f = h5::File::create(file);
  write_checkpoint(f, layout, data);
  f.close();
}

void write_checkpoint_file_atomic(const std::string& file, const ParamLayout& layout,
                                  const CheckpointData& data) {
  h5::write_file_atomically(file, [&](h5::File& f) { write_checkpoint(f, layout, data); });
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  const std::string file = checkpoint_file(path);
  h5::File f = open_checkpoint(file);
  return damaged_guard(file, [&] {
    check_header(f, file);
    return read_meta(f, file);
  });
}

void verify_checkpoint(const std::string& path) {
  const std::string file = checkpoint_file(path);
  h5::File f = open_checkpoint(file);
  damaged_guard(file, [&] {
    check_header(f, file);
    (void)read_meta(f, file);
    std::vector<std::string> names;
    std::vector<float> buf;
    for (const char* group : kTensorGroups) {
      if (f.kind(group) != h5::ObjectKind::kGroup) {
        throw CheckpointError(fmt::format("{}: group /{} is missing", file, group));
      }
      const h5::Group g = f.open_group(group);
      const std::vector<std::string> here = g.children();
      if (group == kTensorGroups[0]) {
        names = here;
        if (names.empty()) throw CheckpointError(fmt::format("{}: /model holds no tensors", file));
      } else if (here != names) {
        throw CheckpointError(
            fmt::format("{}: /{} does not hold the same tensors as /model", file, group));
      }
      for (const auto& name : here) {
        const std::string rel = std::string(group) + "/" + name;
        if (f.kind(rel) != h5::ObjectKind::kDataset) {
          throw CheckpointError(fmt::format("{}: {} is not a dataset", file, rel));
        }
        TensorSpec t;
        t.name = name;
        t.shape = f.open_dataset(rel).shape();
        t.count = 1;
        for (int64_t d : t.shape) t.count *= d;
        buf.resize(static_cast<size_t>(t.count));
        read_tensor(f, file, group, t, buf);
      }
    }
    return 0;
  });
}

CheckpointData read_checkpoint(const std::string& path, const ParamLayout& layout,
                               bool with_optimizer) {
  const std::string file = checkpoint_file(path);
  h5::File f = open_checkpoint(file);
  return damaged_guard(file, [&] {
    check_header(f, file);
    CheckpointData d;
    d.meta = read_meta(f, file);
    if (d.meta.layout_hash != layout.hash()) {
      throw CheckpointError(fmt::format(
          "{}: layout hash {} does not match this model's {}: the checkpoint was written for a "
          "different model config",
          file, d.meta.layout_hash, layout.hash()));
    }
    const auto total = static_cast<size_t>(layout.total());
    d.params.resize(total);
    for (const auto& t : layout.tensors()) {
      read_tensor(f, file, "model", t, std::span<float>(d.params).subspan(t.offset, t.count));
    }
    if (with_optimizer) {
      d.m.resize(total);
      d.v.resize(total);
      for (const auto& t : layout.tensors()) {
        read_tensor(f, file, "optimizer/m", t, std::span<float>(d.m).subspan(t.offset, t.count));
        read_tensor(f, file, "optimizer/v", t, std::span<float>(d.v).subspan(t.offset, t.count));
      }
    }
    return d;
  });
}

std::string publish_checkpoint(const std::string& run_dir, const ParamLayout& layout,
                               const CheckpointData& data, int64_t keep) {
  PTRAIN_ENFORCE(data.meta.step >= 0, "checkpoint step must be >= 0, got {}", data.meta.step);
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  make_dirs(dir.string());
  const std::string name = step_dir_name(data.meta.step);
  const fs::path final_dir = dir / name;
  const fs::path tmp_dir = dir / (name + ".tmp");

  // 1. Write into step-N.tmp/, close, fsync the file and its folder.
  remove_tree(tmp_dir);  // a stale one from a killed run
  make_dirs(tmp_dir.string());
  const std::string tmp_file = (tmp_dir / kFileName).string();
  try {
    write_checkpoint_file(tmp_file, layout, data);
    fsync_path(tmp_file);
    fsync_path(tmp_dir.string());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp_dir, ec);
    throw;
  }

  // 2. Rename into place. A re-publish of the same step swaps the two directories atomically
  //    (RENAME_EXCHANGE), so `latest` never points at a missing or half directory.
  std::error_code ec;
  if (fs::exists(fs::symlink_status(final_dir, ec))) {
    if (::renameat2(AT_FDCWD, tmp_dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
      remove_tree(tmp_dir);  // now holds the replaced checkpoint
    } else {
      // File system without RENAME_EXCHANGE: move the old one aside (a *.tmp name, cleaned up by
      // find_latest_checkpoint if we die here), then rename.
      const fs::path old_dir = dir / (name + ".old.tmp");
      remove_tree(old_dir);
      if (::rename(final_dir.c_str(), old_dir.c_str()) != 0 ||
          ::rename(tmp_dir.c_str(), final_dir.c_str()) != 0) {
        throw IoError(fmt::format("cannot replace {}: {}", final_dir.string(), std::strerror(errno)));
      }
      remove_tree(old_dir);
    }
  } else if (::rename(tmp_dir.c_str(), final_dir.c_str()) != 0) {
    throw IoError(fmt::format("cannot rename {} to {}: {}", tmp_dir.string(), final_dir.string(),
                              std::strerror(errno)));
  }
  fsync_path(dir.string());

  // 3. Move `latest` atomically: a relative symlink under a temp name, renamed over the old one.
  const fs::path link_tmp = dir / fmt::format("latest.{}.tmp", ::getpid());
  fs::remove(link_tmp, ec);
  if (::symlink(name.c_str(), link_tmp.c_str()) != 0) {
    throw IoError(fmt::format("cannot create symlink {}: {}", link_tmp.string(), std::strerror(errno)));
  }
  if (::rename(link_tmp.c_str(), (dir / "latest").c_str()) != 0) {
    const int err = errno;
    fs::remove(link_tmp, ec);
    throw IoError(fmt::format("cannot move {} to {}: {}", link_tmp.string(),
                              (dir / "latest").string(), std::strerror(err)));
  }
  fsync_path(dir.string());

  // 4. Keep the newest `keep` step directories (and whatever `latest` names); keep <= 0 keeps all.
  if (keep > 0) {
    const fs::path latest = latest_target(dir);
    int64_t kept = 0;
    for (const auto& [step, path] : step_dirs(dir)) {
      if (kept < keep) {
        ++kept;
        continue;
      }
      if (path.lexically_normal() == latest) continue;
      std::error_code rec;
      fs::remove_all(path, rec);
      if (rec) spdlog::warn("cannot remove old checkpoint {}: {}", path.string(), rec.message());
    }
  }
  return final_dir.string();
}

std::optional<std::string> find_latest_checkpoint(const std::string& run_dir) {
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;

  // Stale temporaries of a killed publish: step-N.tmp/, step-N.old.tmp/, latest.<pid>.tmp.
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) {
      spdlog::info("removing stale {}", e.path().string());
      std::error_code rec;
      fs::remove_all(e.path(), rec);
      if (rec) spdlog::warn("cannot remove {}: {}", e.path().string(), rec.message());
    }
  }

  const auto candidates = step_dirs(dir);
  const fs::path link = dir / "latest";
  fs::path tried;
  std::string first_problem;
  if (fs::is_symlink(fs::symlink_status(link, ec))) {
    const fs::path target = latest_target(dir);
    std::error_code ec2;
    if (target.empty() || !fs::is_directory(target, ec2)) {
      spdlog::warn("{} points to {}, which does not exist; looking for the newest valid checkpoint",
                   link.string(), fs::read_symlink(link, ec2).string());
    } else {
      try {
        verify_checkpoint(target.string());
        return target.string();
      } catch (const Error& e) {
        spdlog::warn("{} (-> {}) is damaged: {}; looking for the newest valid checkpoint",
                     link.string(), target.filename().string(), e.what());
        tried = target;
        first_problem = e.what();
      }
    }
  } else if (fs::exists(fs::symlink_status(link, ec))) {
    spdlog::warn("{} is not a symlink; looking for the newest valid checkpoint", link.string());
  } else if (!candidates.empty()) {
    spdlog::warn("{} is missing; looking for the newest valid checkpoint", link.string());
  }

  for (const auto& [step, path] : candidates) {
    if (path.lexically_normal() == tried) continue;
    try {
      verify_checkpoint(path.string());
      spdlog::warn("using {} (step {}) instead", path.string(), step);
      return path.string();
    } catch (const Error& e) {
      spdlog::warn("{} is not usable: {}", path.string(), e.what());
      if (first_problem.empty()) first_problem = e.what();
    }
  }
  if (candidates.empty()) return std::nullopt;
  throw CheckpointError(fmt::format(
      "{}: none of the {} checkpoint directories reads back (newest: {}); move them away to start "
      "afresh",
      dir.string(), candidates.size(), first_problem));
}

}  // namespace ptrain
