// Helpers for the checkpoint tests (test_checkpoint_format, test_run_checkpoints,
// test_sharded_checkpoint): a tiny layout, sample data, damage done the way it happens (a
// truncated copy, a value rewritten through the HDF5 API so the stored CRC no longer matches),
// the servers' part of a sharded checkpoint, and small checks of what was thrown. The temporary
// folder is job_test_util.hpp's TempDir.
#pragma once

#include "common/io/checkpoint_format.hpp"
#include "common/io/checksum_block.hpp"
#include "common/io/hdf5.hpp"
#include "common/tensor/param_layout.hpp"
#include "support/job_test_util.hpp"

#include <fmt/format.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace ptrain::testing {

inline ModelDims tiny_dims(int64_t C = 8) {
  ModelDims d;
  d.V = 11;
  d.Vp = 16;
  d.T = 5;
  d.L = 2;
  d.NH = 2;
  d.C = C;
  return d;
}

inline CheckpointData sample_data(const ParamLayout& layout, int64_t step, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  CheckpointData d;
  const auto total = static_cast<size_t>(layout.total());
  d.params.resize(total);
  d.m.resize(total);
  d.v.resize(total);
  for (size_t i = 0; i < total; ++i) {
    d.params[i] = n(gen);
    d.m[i] = n(gen) * 1e-3f;
    d.v[i] = std::abs(n(gen)) * 1e-6f;
  }
  d.meta.step = step;
  d.meta.tokens_seen = step * 40;
  d.meta.config_yaml = "model:\n  n_embd: 8\n# step " + std::to_string(step) + "\n";
  d.meta.tokenizer_json = R"({"kind":"byte","vocab_size":257})";
  d.meta.data = DataState{1337, 2, 17 + static_cast<int64_t>(step)};
  return d;
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}

// The exception's type name, for checks that the right class was thrown.
template <class E>
bool throws_as(const std::function<void()>& f) {
  try {
    f();
  } catch (const E&) {
    return true;
  } catch (...) {
    return false;
  }
  return false;
}

inline void truncate_file(const std::string& path, double fraction) {
  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, static_cast<uintmax_t>(static_cast<double>(size) * fraction));
}

// Rewrites the checksum block of `file` after an edit through HDF5: the file then reads as if
// ptrain had written it so, and the readers' checks behind the block (format, layout, each
// tensor's crc32c) are the ones that see the edit.
inline void reseal(const std::string& file) { write_checksum_block(file); }

enum class Reseal { kYes, kNo };

// Adds 1.0 to element 0 of dataset `rel`, leaving its crc32c attribute as it was. kYes: the
// checksum block is rewritten (the tensor's crc32c is what catches it); kNo: damage on disk, which
// the checksum block catches before HDF5 opens the file.
inline void poke_value(const std::string& file, const std::string& rel,
                       Reseal again = Reseal::kYes) {
  h5::File f = h5::File::open(file, h5::Access::kReadWrite);
  h5::Dataset ds = f.open_dataset(rel);
  std::vector<float> v(static_cast<size_t>(ds.size()));
  ds.read(v);
  v[0] += 1.0f;
  ds.write(v);
  f.close();
  if (again == Reseal::kYes) reseal(file);
}

inline std::string read_link(const std::filesystem::path& p) {
  return std::filesystem::read_symlink(p).string();
}

// Restores the working directory on scope exit.
struct Chdir {
  std::filesystem::path old = std::filesystem::current_path();
  explicit Chdir(const std::filesystem::path& to) { std::filesystem::current_path(to); }
  ~Chdir() {
    std::error_code ec;
    std::filesystem::current_path(old, ec);
  }
};

inline bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

inline std::string step_name(int64_t step) { return fmt::format("step-{:08d}", step); }

// Writes every shard of `d` into `tmp` (the servers' part), optionally skipping one.
inline void write_shards(const std::string& tmp, const ParamLayout& layout,
                         const CheckpointData& d, int64_t n, int64_t skip = -1) {
  const auto ranges = layout.shard_ranges(n);
  for (int64_t k = 0; k < n; ++k) {
    if (k == skip) continue;
    const auto [b, e] = ranges[static_cast<size_t>(k)];
    const auto off = static_cast<size_t>(b);
    const auto cnt = static_cast<size_t>(e - b);
    write_checkpoint_shard(tmp, k, n, layout, ranges[static_cast<size_t>(k)],
                           std::span<const float>(d.params).subspan(off, cnt),
                           std::span<const float>(d.m).subspan(off, cnt),
                           std::span<const float>(d.v).subspan(off, cnt), d.meta.step);
  }
}

// A /model tensor that has a piece in shard k (of n) of `layout`.
inline std::string tensor_in_shard(const ParamLayout& layout, int64_t n, int64_t k) {
  const auto [b, e] = layout.shard_ranges(n)[static_cast<size_t>(k)];
  for (const auto& t : layout.tensors()) {
    if (t.offset < e && t.offset + t.count > b) return t.name;
  }
  return {};
}

inline int shell(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace ptrain::testing
