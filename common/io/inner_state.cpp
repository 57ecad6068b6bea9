#include "common/io/inner_state.hpp"

#include "common/error.hpp"
#include "common/io/checkpoint_internal.hpp"
#include "common/io/hdf5.hpp"
#include "ptrain/build_config.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>

namespace ptrain {
namespace fs = std::filesystem;
using checkpoint_internal::crc_of;
using checkpoint_internal::damaged_guard;
using checkpoint_internal::open_checkpoint;

namespace {

constexpr const char* kFormat = "ptrain-inner-state";
constexpr int64_t kFormatVersion = 1;
const char* const kGroups[] = {"optimizer/m", "optimizer/v"};

// DIR/inner-R.h5 where DIR is a checkpoint folder or the folder of its checkpoint.h5.
std::string file_of(const std::string& dir, int64_t slot) {
  std::error_code ec;
  const fs::path base = fs::is_directory(dir, ec) ? fs::path(dir) : fs::path(dir).parent_path();
  return (base / inner_state_file_name(slot)).string();
}

// Opens `file`, which the checkpoint lists: a missing one is a damaged checkpoint.
h5::File open_listed(const std::string& file, int64_t slot) {
  std::error_code ec;
  if (!fs::exists(file, ec)) {
    throw CheckpointError(fmt::format(
        "{}: the inner optimizer state of slot {} is missing (the checkpoint lists it)", file,
        slot));
  }
  return open_checkpoint(file);
}

// The root attributes against what the checkpoint expects.
void check_header(const h5::File& f, const std::string& file, const std::string& layout_hash,
                  int64_t step, int64_t slot) {
  auto refuse = [&](const std::string& why) {
    throw CheckpointError(fmt::format("{}: {}", file, why));
  };
  if (!f.has_attr("format") || f.attr_string("format") != kFormat) {
    refuse(fmt::format("not a ptrain inner optimizer state (attribute `format` is not \"{}\")",
                       kFormat));
  }
  if (const int64_t v = f.attr_int64("format_version"); v != kFormatVersion) {
    refuse(fmt::format("format_version {}, this ptrain reads {}", v, kFormatVersion));
  }
  if (const std::string h = f.attr_string("layout_hash"); h != layout_hash) {
    refuse(fmt::format("layout hash {} does not match the checkpoint's {}", h, layout_hash));
  }
  if (const int64_t s = f.attr_int64("step"); s != step) {
    refuse(fmt::format("written at step {}, the checkpoint is of step {}", s, step));
  }
  if (const int64_t r = f.attr_int64("slot"); r != slot) {
    refuse(fmt::format("holds slot {}, expected slot {}", r, slot));
  }
  if (f.attr_int64("inner_steps") < 0) {
    refuse(fmt::format("inner_steps is {}", f.attr_int64("inner_steps")));
  }
}

// group/name: a float32 tensor (of `shape` when given) read into `data`, its crc32c checked.
void read_checked(const h5::File& f, const std::string& file, const std::string& rel,
                  const std::vector<int64_t>* shape, std::vector<float>& data) {
  uint64_t stored = 0;
  const h5::Dataset ds = checkpoint_internal::open_tensor(f, file, rel, shape, stored);
  data.resize(static_cast<size_t>(ds.size()));
  ds.read(data);
  checkpoint_internal::check_crc(file, rel, stored, crc_of(data), /*sharded=*/false);
}

}  // namespace

std::string inner_state_file_name(int64_t slot) { return fmt::format("inner-{}.h5", slot); }

void write_inner_state(const std::string& dir, const ParamLayout& layout, int64_t step,
                       int64_t slot, int64_t inner_steps, std::span<const float> m,
                       std::span<const float> v) {
  const auto total = static_cast<size_t>(layout.total());
  PTRAIN_ENFORCE(m.size() == total && v.size() == total,
                 "inner state of slot {}: {} m and {} v floats, the layout has {}", slot, m.size(),
                 v.size(), total);
  PTRAIN_ENFORCE(slot >= 0 && step >= 0 && inner_steps >= 0,
                 "inner state slot {} step {} inner_steps {}", slot, step, inner_steps);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw IoError(fmt::format("{}: no such checkpoint folder for the inner state of slot {}", dir,
                              slot));
  }
  h5::write_file_atomically(
      (fs::path(dir) / inner_state_file_name(slot)).string(),
      [&](h5::File& f) {
        f.set_attr("format", kFormat);
        f.set_attr("format_version", kFormatVersion);
        f.set_attr("layout_hash", layout.hash());
        f.set_attr("step", step);
        f.set_attr("slot", slot);
        f.set_attr("inner_steps", inner_steps);
        f.set_attr("ptrain_version", PTRAIN_VERSION);
        f.set_attr("created_utc", checkpoint_internal::utc_now_iso8601());
        f.create_group("optimizer");
        for (const char* g : kGroups) {
          h5::Group group = f.create_group(g);
          const std::span<const float> src = g == kGroups[0] ? m : v;
          for (const TensorSpec& t : layout.tensors()) {
            const auto piece = src.subspan(static_cast<size_t>(t.offset), static_cast<size_t>(t.count));
            h5::Dataset ds = group.create_dataset(t.name, h5::DType::kFloat32, t.shape);
            ds.write(piece);
            ds.set_attr("crc32c", crc_of(piece));
          }
        }
      },
      checkpoint_internal::with_checksum_block());
}

InnerState read_inner_state(const std::string& dir, const ParamLayout& layout, int64_t step,
                            int64_t slot) {
  const std::string file = file_of(dir, slot);
  h5::File f = open_listed(file, slot);
  return damaged_guard(file, [&] {
    check_header(f, file, layout.hash(), step, slot);
    InnerState s;
    s.step = step;
    s.slot = slot;
    s.inner_steps = f.attr_int64("inner_steps");
    std::vector<float> piece;
    for (const char* g : kGroups) {
      std::vector<float>& dst = g == kGroups[0] ? s.m : s.v;
      dst.assign(static_cast<size_t>(layout.total()), 0.0f);
      for (const TensorSpec& t : layout.tensors()) {
        read_checked(f, file, std::string(g) + "/" + t.name, &t.shape, piece);
        std::copy(piece.begin(), piece.end(), dst.begin() + t.offset);
      }
    }
    return s;
  });
}

void verify_inner_state(const std::string& dir, const std::string& layout_hash, int64_t step,
                        int64_t slot) {
  const std::string file = file_of(dir, slot);
  h5::File f = open_listed(file, slot);
  damaged_guard(file, [&] {
    check_header(f, file, layout_hash, step, slot);
    std::vector<std::string> names;
    std::vector<float> piece;
    for (const char* g : kGroups) {
      if (f.kind(g) != h5::ObjectKind::kGroup) {
        throw CheckpointError(fmt::format("{}: group /{} is missing", file, g));
      }
      const std::vector<std::string> here = f.open_group(g).children();
      if (g == kGroups[0]) {
        names = here;
      } else if (here != names) {
        throw CheckpointError(fmt::format("{}: /{} does not hold the same tensors as /{}", file,
                                          g, kGroups[0]));
      }
      for (const std::string& name : here) {
        read_checked(f, file, std::string(g) + "/" + name, nullptr, piece);
      }
    }
    return 0;
  });
}

}  // namespace ptrain
