// The checkpoints/ folder of a run directory: step-%08d folders, .tmp folders, the atomic publish
// (rename, `latest`), keep-last-K, and the fallback when `latest` is damaged. Not here: the file
// format (checkpoint_format.cpp: this file only calls write_checkpoint_file and
// verify_checkpoint) and the order of a sharded checkpoint (sharded_checkpoint.cpp, which uses
// publish_dir).
#include "common/io/run_checkpoints.hpp"

#include "common/error.hpp"
#include "common/io/checkpoint_internal.hpp"
#include "common/util/fs.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

namespace ptrain {
namespace fs = std::filesystem;
using checkpoint_internal::kFileName;
using checkpoint_internal::publish_dir;
using checkpoint_internal::remove_tree;
using checkpoint_internal::step_dir_name;

namespace {

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

}  // namespace

std::string checkpoint_internal::step_dir_name(int64_t step) {
  return fmt::format("step-{:08d}", step);
}

void checkpoint_internal::remove_tree(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
  if (ec) throw IoError(fmt::format("cannot remove {}: {}", p.string(), ec.message()));
}

void checkpoint_internal::publish_dir(const fs::path& dir, const std::string& name,
                                      const fs::path& tmp_dir, int64_t keep) {
  const fs::path final_dir = dir / name;
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
  // 2-4.
  publish_dir(dir, name, tmp_dir, keep);
  return final_dir.string();
}

std::string checkpoint_tmp_dir(const std::string& run_dir, int64_t step) {
  PTRAIN_ENFORCE(step >= 0, "checkpoint step must be >= 0, got {}", step);
  return (fs::path(run_dir) / "checkpoints" / (step_dir_name(step) + ".tmp")).string();
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
