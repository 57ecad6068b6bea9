// The HDF5 checkpoint format (docs/formats.md "Checkpoint (HDF5)"): the single file, the shard
// files and the index over them; writing them, and reading, verifying and range-reading either
// form. Not here: where checkpoints live in a run directory (run_checkpoints.cpp) and the order of
// a sharded checkpoint across servers and coordinator (sharded_checkpoint.cpp).
//
// Reading is defensive: every refusal is a CheckpointError that names the file and what is wrong
// (a checksum block that does not match, not HDF5, truncated or damaged, wrong format, wrong
// format_version, different layout, missing tensor, wrong shape or type, checksum mismatch) and,
// for a sharded checkpoint, the shard. Every file (index and shards alike) is checked against its
// checksum block (checksum_block.hpp) before HDF5 opens it; every file written gets one.
//
// Sharded checkpoints (root attribute `shard_count` > 0): the tensors of checkpoint.h5 are
// virtual datasets over shard-K.h5 in the same folder. Readers here open every shard themselves
// (path = the index's real folder / shard-K.h5), check its header against the index, check that
// each virtual dataset's mappings are exactly the row blocks the shards' ranges imply, and read
// the pieces from the shards directly, checking each piece's CRC32C and the whole tensor's
// (continued piece by piece). HDF5's own resolution of virtual sources (HDF5_VDS_PREFIX, the
// dataset access prefix, the index's folder, the cwd) is only used by other readers (h5py).
#include "common/io/checkpoint_format.hpp"

#include "common/error.hpp"
#include "common/io/checkpoint_internal.hpp"
#include "common/io/checksum_block.hpp"
#include "common/io/hdf5.hpp"
#include "common/io/inner_state.hpp"
#include "common/util/hash.hpp"
#include "ptrain/build_config.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <limits>

static_assert(std::endian::native == std::endian::little,
              "checkpoint CRCs are over little-endian bytes; add byte swapping for this CPU");

namespace ptrain {
namespace fs = std::filesystem;
using checkpoint_internal::check_sizes;
using checkpoint_internal::kFileName;
using checkpoint_internal::kMaxShards;
using checkpoint_internal::check_crc;
using checkpoint_internal::crc_of;
using checkpoint_internal::damaged_guard;
using checkpoint_internal::open_checkpoint;
using checkpoint_internal::open_readonly;
using checkpoint_internal::open_tensor;
using checkpoint_internal::utc_now_iso8601;
using checkpoint_internal::with_checksum_block;

namespace checkpoint_internal {

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

h5::File open_readonly(const std::string& path, const std::string& who) {
  // A file that cannot be read is not "not an HDF5 file": say why it cannot be read.
  {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    char probe[8];
    const int err = fd < 0 ? errno : (::read(fd, probe, sizeof probe) < 0 ? errno : 0);
    if (fd >= 0) ::close(fd);
    if (err != 0) {
      throw IoError(fmt::format("{}: cannot read {}: {}", who, path, std::strerror(err)));
    }
  }
  // Before HDF5 parses anything: libhdf5 reads past buffers or hangs on some damaged files, so
  // a file whose checksum block does not match is refused here. A file without the block (written
  // before it existed) goes to HDF5 unchecked, as before.
  verify_checksum_block(path, who);
  try {
    return h5::File::open(path, h5::Access::kReadOnly);
  } catch (const IoError& e) {
    const std::string what = e.what();
    if (what.find("unable to lock") != std::string::npos) {
      throw IoError(fmt::format(
          "{}: cannot open, the file is locked (is it being written?). On file systems without "
          "locking set HDF5_USE_FILE_LOCKING=FALSE. {}",
          who, what));
    }
    throw CheckpointError(fmt::format("{}: truncated or damaged: {}", who, what));
  }
}

h5::File open_checkpoint(const std::string& file) {
  std::error_code ec;
  const auto st = fs::status(file, ec);
  if (!fs::exists(st)) throw IoError(fmt::format("{}: no such checkpoint file", file));
  if (!fs::is_regular_file(st)) throw IoError(fmt::format("{}: not a regular file", file));
  return open_readonly(file, file);
}

h5::AtomicWriteOptions with_checksum_block() {
  return {kChecksumBlockBytes, [](const std::string& tmp) { write_checksum_block(tmp); }};
}

}  // namespace checkpoint_internal

namespace {

constexpr const char* kFormat = "ptrain-checkpoint";
constexpr const char* kShardFormat = "ptrain-checkpoint-shard";
// Floats read at a time when a tensor is only verified (bounds the buffer).
constexpr int64_t kVerifyChunkFloats = int64_t{1} << 20;
const char* const kTensorGroups[] = {"model", "optimizer/m", "optimizer/v"};
// Present only in checkpoints of cluster.sync local (the outer SGD's momentum buffer); its tensors
// have the same names, shapes and attributes as those of the groups above.
constexpr const char* kOuterMomentumGroup = "optimizer/outer_momentum";
// Present only in checkpoints of cluster.sync local that hold workers' inner optimizer states:
// the slots of the inner-R.h5 files beside the shards (inner_state.hpp).
constexpr const char* kInnerStateSlots = "inner_state_slots";

// format + format_version, the first things checked.
void check_header(const h5::File& f, const std::string& file) {
  if (!f.has_attr("format")) {
    throw CheckpointError(
        fmt::format("{}: not a ptrain checkpoint (no `format` attribute on the root group)", file));
  }
  const std::string format = f.attr_string("format");
  if (format == kShardFormat) {
    throw CheckpointError(fmt::format(
        "{}: this is one shard of a sharded checkpoint; give its folder or the checkpoint.h5 "
        "next to it",
        file));
  }
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
  if (data.exists("returned")) {
    const h5::Dataset r = data.open_dataset("returned");
    const std::vector<int64_t> shape = r.shape();
    if (r.type().dtype != h5::DType::kInt64 || shape.size() != 2 || shape[1] != 2) {
      throw CheckpointError(fmt::format("{}: /data/returned is {} of shape [{}], expected int64 "
                                        "(n, 2) rows [epoch, window]",
                                        file, r.type().describe(), fmt::join(shape, ",")));
    }
    std::vector<int64_t> flat(static_cast<size_t>(r.size()));
    r.read(flat);
    for (size_t i = 0; i + 1 < flat.size(); i += 2) m.data.returned.push_back({flat[i], flat[i + 1]});
  }
  if (f.exists(kInnerStateSlots)) {
    const h5::Dataset r = f.open_dataset(kInnerStateSlots);
    if (r.type().dtype != h5::DType::kInt64 || r.shape().size() != 1) {
      throw CheckpointError(fmt::format("{}: /{} is {} of shape [{}], expected a 1-D int64 dataset",
                                        file, kInnerStateSlots, r.type().describe(),
                                        fmt::join(r.shape(), ",")));
    }
    m.inner_state_slots.resize(static_cast<size_t>(r.size()));
    r.read(m.inner_state_slots);
    for (size_t i = 0; i < m.inner_state_slots.size(); ++i) {
      if (m.inner_state_slots[i] < 0 || (i > 0 && m.inner_state_slots[i] <= m.inner_state_slots[i - 1])) {
        throw CheckpointError(fmt::format("{}: /{} is [{}], expected increasing slots >= 0", file,
                                          kInnerStateSlots, fmt::join(m.inner_state_slots, ", ")));
      }
    }
  }
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

}  // namespace

namespace checkpoint_internal {

// Opens tensor `rel` ("model/<name>") of a checkpoint: present, float32, of `expect_shape` (when
// given), with a crc32c attribute (returned in `stored`).
h5::Dataset open_tensor(const h5::File& f, const std::string& file, const std::string& rel,
                        const std::vector<int64_t>* expect_shape, uint64_t& stored) {
  if (f.kind(rel) != h5::ObjectKind::kDataset) {
    throw CheckpointError(fmt::format("{}: tensor {} is missing", file, rel));
  }
  h5::Dataset ds = f.open_dataset(rel);
  const h5::TypeInfo type = ds.type();
  if (type.dtype != h5::DType::kFloat32) {
    throw CheckpointError(
        fmt::format("{}: tensor {} is {}, expected float32", file, rel, type.describe()));
  }
  if (expect_shape != nullptr) {
    const std::vector<int64_t> shape = ds.shape();
    if (shape != *expect_shape) {
      throw CheckpointError(fmt::format("{}: tensor {} has shape [{}], expected [{}]", file, rel,
                                        fmt::join(shape, ", "), fmt::join(*expect_shape, ", ")));
    }
  }
  if (!ds.has_attr("crc32c")) {
    throw CheckpointError(fmt::format("{}: tensor {} has no crc32c attribute", file, rel));
  }
  stored = ds.attr_uint64("crc32c");
  return ds;
}

// `actual`, the CRC32C of the whole tensor `rel`, must be the stored one.
void check_crc(const std::string& file, const std::string& rel, uint64_t stored, uint32_t actual,
               bool sharded) {
  if (stored != actual) {
    throw CheckpointError(fmt::format(
        "{}: tensor {} fails its checksum (crc32c stored {:#010x}, computed {}{:#010x}): the {} is "
        "damaged",
        file, rel, stored, sharded ? "over its shards " : "", actual,
        sharded ? "checkpoint" : "file"));
  }
}

}  // namespace checkpoint_internal

namespace {

// Reads group/name of a single-file checkpoint into `dst`, checking presence, dtype, shape and
// CRC32C.
void read_tensor(const h5::File& f, const std::string& file, const std::string& rel,
                 const std::vector<int64_t>& shape, std::span<float> dst) {
  uint64_t stored = 0;
  const h5::Dataset ds = open_tensor(f, file, rel, &shape, stored);
  check_virtual_sources(ds, file, rel);
  ds.read(dst);
  check_crc(file, rel, stored, crc_of(dst), false);
}

void write_tensor(h5::Group& g, const TensorSpec& t, std::span<const float> v) {
  h5::Dataset ds = g.create_dataset(t.name, h5::DType::kFloat32, t.shape);
  ds.write(v);
  ds.set_attr("crc32c", crc_of(v));
}

void write_root_attrs(h5::File& f, const ParamLayout& layout, const CheckpointMeta& meta) {
  f.set_attr("format", kFormat);
  f.set_attr("format_version", kCheckpointFormatVersion);
  f.set_attr("step", meta.step);
  f.set_attr("tokens_seen", meta.tokens_seen);
  f.set_attr("config_yaml", meta.config_yaml);
  f.set_attr("layout_hash", layout.hash());
  f.set_attr("ptrain_version", PTRAIN_VERSION);
  f.set_attr("created_utc", utc_now_iso8601());
}

void write_tokenizer_and_data(h5::File& f, const CheckpointMeta& meta) {
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
    if (!meta.data.returned.empty()) {
      std::vector<int64_t> flat;
      for (const DataWindow& w : meta.data.returned) {
        flat.push_back(w.epoch);
        flat.push_back(w.window);
      }
      h5::Dataset r = d.create_dataset("returned", h5::DType::kInt64,
                                       {static_cast<int64_t>(meta.data.returned.size()), 2});
      r.write(std::span<const int64_t>(flat));
    }
  }
  if (!meta.inner_state_slots.empty()) {
    h5::Dataset r = f.create_dataset(kInnerStateSlots, h5::DType::kInt64,
                                     {static_cast<int64_t>(meta.inner_state_slots.size())});
    r.write(std::span<const int64_t>(meta.inner_state_slots));
  }
}

void write_checkpoint(h5::File& f, const ParamLayout& layout, const CheckpointData& data) {
  check_sizes(layout, data);
  write_root_attrs(f, layout, data.meta);

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
  write_tokenizer_and_data(f, data.meta);
}

// ---- Sharded checkpoints: shared by the index writer (write_shard_index) and the readers -------

// Root attribute `shard_count` of an index (0: a single-file checkpoint).
int64_t index_shard_count(const h5::File& f, const std::string& file) {
  if (!f.has_attr("shard_count")) return 0;
  const int64_t n = f.attr_int64("shard_count");
  if (n < 1 || n > kMaxShards) {
    throw CheckpointError(fmt::format("{}: attribute `shard_count` is {}, expected 1 to {}", file,
                                      n, kMaxShards));
  }
  return n;
}

// The folder that holds the shards of `file`: the index's own folder, symlinks resolved once (a
// `latest` that moves while we read must not mix two checkpoints).
fs::path shard_dir_of(const std::string& file) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(file, ec), ec);
  if (ec || p.empty()) p = fs::absolute(file);
  return p.parent_path();
}

struct Shard {
  int64_t k = 0;
  std::string name;  // shard-K.h5
  std::string path;  // DIR/shard-K.h5, used in messages
  int64_t begin = 0, end = 0;
  h5::File file;
};

// Runs `f` on the shard at `shard_path`; an HDF5 failure becomes "shard PATH is truncated or
// damaged".
template <class F>
auto shard_guard(const std::string& label, const std::string& shard_path, F&& f) {
  try {
    return f();
  } catch (const IoError& e) {
    throw CheckpointError(
        fmt::format("{}: shard {} is truncated or damaged: {}", label, shard_path, e.what()));
  }
}

// Opens shard-0 … shard-(n-1) in `dir` and checks each header against what the index (or the
// writer) expects: format, format_version, shard_index, shard_count, layout_hash, step, and that
// the ranges tile [0, total) in order (`total` < 0: not known here, checked later). `label` names
// the checkpoint in messages.
std::vector<Shard> open_shards(const std::string& label, const fs::path& dir, int64_t n,
                               const std::string& layout_hash, int64_t step, int64_t total) {
  std::vector<Shard> shards;
  int64_t expect_begin = 0;
  for (int64_t k = 0; k < n; ++k) {
    Shard s;
    s.k = k;
    s.name = shard_file_name(k);
    s.path = (dir / s.name).string();
    std::error_code ec;
    const auto st = fs::status(s.path, ec);
    if (!fs::exists(st)) {
      throw CheckpointError(fmt::format(
          "{}: shard {} of {} is missing ({}); without it its tensors would read as the fill "
          "value",
          label, s.name, n, s.path));
    }
    if (!fs::is_regular_file(st)) {
      throw CheckpointError(fmt::format("{}: shard {} is not a regular file", label, s.path));
    }
    s.file = open_readonly(s.path, fmt::format("{}: shard {}", label, s.path));
    shard_guard(label, s.path, [&] {
      const h5::File& f = s.file;
      auto refuse = [&](const std::string& why) {
        throw CheckpointError(fmt::format("{}: shard {} {}", label, s.path, why));
      };
      if (!f.has_attr("format") || f.attr_string("format") != kShardFormat) {
        refuse(fmt::format("is not a ptrain checkpoint shard (attribute `format` is not \"{}\")",
                           kShardFormat));
      }
      const int64_t version = f.attr_int64("format_version");
      if (version != kCheckpointFormatVersion) {
        refuse(fmt::format("has format_version {}, this ptrain reads {}", version,
                           kCheckpointFormatVersion));
      }
      const int64_t index = f.attr_int64("shard_index");
      const int64_t count = f.attr_int64("shard_count");
      if (index != k || count != n) {
        refuse(fmt::format("says it is shard {} of {}, expected {} of {}", index, count, k, n));
      }
      const std::string hash = f.attr_string("layout_hash");
      if (hash != layout_hash) {
        refuse(fmt::format("has layout hash {}, the checkpoint's is {}: it was written for a "
                           "different model config",
                           hash, layout_hash));
      }
      const int64_t shard_step = f.attr_int64("step");
      if (shard_step != step) {
        refuse(fmt::format("is of step {}, the checkpoint is of step {}: it belongs to another "
                           "checkpoint",
                           shard_step, step));
      }
      s.begin = f.attr_int64("range_begin");
      s.end = f.attr_int64("range_end");
      if (s.begin != expect_begin || s.end < s.begin || (total >= 0 && s.end > total)) {
        refuse(fmt::format("has range [{}, {}), expected one starting at {}{}", s.begin, s.end,
                           expect_begin,
                           total >= 0 ? fmt::format(" within [0, {})", total) : std::string()));
      }
      return 0;
    });
    expect_begin = s.end;
    shards.push_back(std::move(s));
  }
  if (total >= 0 && expect_begin != total) {
    throw CheckpointError(fmt::format("{}: the {} shards cover [0, {}), the layout has {} floats",
                                      label, n, expect_begin, total));
  }
  return shards;
}

// One tensor's piece in one shard: rows [row_begin, row_begin + rows) of the tensor.
struct Piece {
  int64_t shard = 0;
  int64_t row_begin = 0;
  int64_t rows = 0;
  bool operator==(const Piece&) const = default;
};

int64_t rows_of(const std::vector<int64_t>& shape) { return shape.empty() ? 1 : shape[0]; }

// The rows of tensor `t` that flat range [begin, end) holds, as a piece of shard k (rows == 0:
// none). Throws CheckpointError naming `who` when the range cuts a row of `t`.
Piece piece_in_range(const TensorSpec& t, int64_t k, int64_t begin, int64_t end,
                     const std::string& who) {
  const int64_t lo = std::max(begin, t.offset);
  const int64_t hi = std::min(end, t.offset + t.count);
  if (lo >= hi) return Piece{k, 0, 0};
  const int64_t row = t.row_size();
  if ((lo - t.offset) % row != 0 || (hi - t.offset) % row != 0) {
    throw CheckpointError(fmt::format(
        "{} has range [{}, {}), which cuts a row of {} (rows of {} floats): sharded checkpoints "
        "need row-aligned ranges",
        who, begin, end, t.name, row));
  }
  return Piece{k, (lo - t.offset) / row, (hi - lo) / row};
}

// The pieces of tensor `t` implied by the shards' ranges, in shard order (= row order).
std::vector<Piece> expected_pieces(const std::string& label, const TensorSpec& t,
                                   const std::vector<Shard>& shards) {
  std::vector<Piece> out;
  for (const Shard& s : shards) {
    const Piece p =
        piece_in_range(t, s.k, s.begin, s.end, fmt::format("{}: shard {}", label, s.path));
    if (p.rows > 0) out.push_back(p);
  }
  return out;
}

// The dataset path a piece has in its shard and the index's mappings name: "/model/<name>".
std::string source_dataset(const std::string& rel) { return "/" + rel; }

// Pieces as the index's virtual dataset `ds` (group/name `rel`, shape `shape`) maps them,
// checked: every mapping a full-width block of whole rows read from the whole of `/rel` in a
// shard-K.h5 (bare name, K < n), together tiling the rows in order.
std::vector<Piece> mapped_pieces(const std::string& file, const h5::Dataset& ds,
                                 const std::string& rel, const std::vector<int64_t>& shape,
                                 int64_t n) {
  if (!ds.is_virtual()) {
    throw CheckpointError(fmt::format(
        "{}: tensor {} is not a virtual dataset, but the checkpoint is sharded", file, rel));
  }
  auto refuse = [&](const std::string& why) {
    throw CheckpointError(fmt::format("{}: tensor {}: {}", file, rel, why));
  };
  std::vector<Piece> out;
  for (const h5::VirtualMapping& m : ds.virtual_mappings()) {
    int64_t k = -1;
    for (int64_t j = 0; j < n; ++j) {
      if (m.file == shard_file_name(j)) k = j;
    }
    if (k < 0) {
      refuse(fmt::format("a mapping reads from \"{}\", not one of shard-0.h5 … shard-{}.h5",
                         m.file, n - 1));
    }
    if (m.dataset != source_dataset(rel) && m.dataset != rel) {
      refuse(fmt::format("a mapping reads {}:{}, expected {}", m.file, m.dataset,
                         source_dataset(rel)));
    }
    if (!m.block || !m.source_all || m.start.size() != shape.size() ||
        m.count.size() != shape.size()) {
      refuse(fmt::format("the mapping from {} is not a block of whole rows", m.file));
    }
    for (size_t d = 1; d < shape.size(); ++d) {
      if (m.start[d] != 0 || m.count[d] != shape[d]) {
        refuse(fmt::format("the mapping from {} is not a block of whole rows", m.file));
      }
    }
    out.push_back(Piece{k, m.start[0], m.count[0]});
  }
  std::sort(out.begin(), out.end(),
            [](const Piece& a, const Piece& b) { return a.row_begin < b.row_begin; });
  int64_t next = 0;
  for (const Piece& p : out) {
    if (p.row_begin != next || p.rows <= 0) {
      refuse(fmt::format("the mappings do not tile its rows (a block starts at row {}, expected "
                         "{})",
                         p.row_begin, next));
    }
    next += p.rows;
  }
  if (next != rows_of(shape)) {
    refuse(fmt::format("the mappings cover {} of its {} rows", next, rows_of(shape)));
  }
  return out;
}

// Opens the dataset of piece `p` of tensor `rel` (shape `shape`) in shard `s` and checks it:
// present, float32, p.rows whole rows, the right row_begin, a crc32c attribute (in `stored`).
h5::Dataset open_piece(const std::string& label, const Shard& s, const std::string& rel,
                       const std::vector<int64_t>& shape, const Piece& p, uint64_t& stored) {
  auto refuse = [&](const std::string& why) {
    throw CheckpointError(fmt::format("{}: shard {}: tensor {} (rows {} to {}) {}", label, s.path,
                                      rel, p.row_begin, p.row_begin + p.rows, why));
  };
  if (s.file.kind(rel) != h5::ObjectKind::kDataset) refuse("is missing");
  h5::Dataset ds = s.file.open_dataset(rel);
  const h5::TypeInfo type = ds.type();
  if (type.dtype != h5::DType::kFloat32) {
    refuse(fmt::format("is {}, expected float32", type.describe()));
  }
  std::vector<int64_t> want = shape;
  if (want.empty()) want.push_back(1);
  want[0] = p.rows;
  const std::vector<int64_t> got = ds.shape();
  if (got != want) {
    refuse(fmt::format("has shape [{}], expected [{}]", fmt::join(got, ", "),
                       fmt::join(want, ", ")));
  }
  if (!ds.has_attr("row_begin") || ds.attr_int64("row_begin") != p.row_begin) {
    refuse("has a missing or wrong row_begin attribute");
  }
  if (!ds.has_attr("crc32c")) refuse("has no crc32c attribute");
  stored = ds.attr_uint64("crc32c");
  return ds;
}

// `actual`, the CRC32C of a piece as read, must be the stored one.
void check_piece_crc(const std::string& label, const Shard& s, const std::string& rel,
                     const Piece& p, uint64_t stored, uint32_t actual) {
  if (stored != actual) {
    throw CheckpointError(fmt::format(
        "{}: shard {}: tensor {} (rows {} to {}) fails its checksum (crc32c stored {:#010x}, "
        "computed {:#010x}): the shard is damaged",
        label, s.path, rel, p.row_begin, p.row_begin + p.rows, stored, actual));
  }
}

// Reads piece `p` (p.rows whole rows) into `out` and checks its CRC32C; returns that CRC.
uint32_t read_piece(const std::string& label, const Shard& s, const std::string& rel,
                    const std::vector<int64_t>& shape, const Piece& p, std::span<float> out) {
  return shard_guard(label, s.path, [&] {
    uint64_t stored = 0;
    const h5::Dataset ds = open_piece(label, s, rel, shape, p, stored);
    ds.read_rows(0, p.rows, out);
    const uint32_t crc = crc32c(out.data(), out.size_bytes());
    check_piece_crc(label, s, rel, p, stored, crc);
    return crc;
  });
}

// Verifies tensor `rel` of shape `shape` piece by piece from the shards through a bounded buffer,
// checking each piece's dataset (float32, shape, row_begin, crc32c). Adds each piece's floats to
// floats_per_shard. Returns the CRC32C of the whole tensor (pieces in row order).
uint32_t verify_pieces(const std::string& label, const std::vector<Shard>& shards,
                       const std::string& rel, const std::vector<int64_t>& shape,
                       const std::vector<Piece>& pieces, std::vector<int64_t>& floats_per_shard) {
  const int64_t row = shape_row_size(shape);
  uint32_t whole = 0;
  std::vector<float> buf;
  for (const Piece& p : pieces) {
    const Shard& s = shards[static_cast<size_t>(p.shard)];
    shard_guard(label, s.path, [&] {
      uint64_t stored = 0;
      const h5::Dataset ds = open_piece(label, s, rel, shape, p, stored);
      uint32_t piece = 0;
      const int64_t step_rows =
          std::max<int64_t>(1, kVerifyChunkFloats / std::max<int64_t>(1, row));
      for (int64_t r = 0; r < p.rows; r += step_rows) {
        const int64_t nr = std::min(step_rows, p.rows - r);
        buf.resize(static_cast<size_t>(nr * row));
        ds.read_rows(r, nr, buf);
        piece = crc32c(buf.data(), buf.size() * sizeof(float), piece);
        whole = crc32c(buf.data(), buf.size() * sizeof(float), whole);
      }
      check_piece_crc(label, s, rel, p, stored, piece);
      return 0;
    });
    floats_per_shard[static_cast<size_t>(p.shard)] += p.rows * row;
  }
  return whole;
}

// The per-shard float counts of one tensor group must be the shards' range sizes, and the shards
// must cover exactly the group's `total` floats.
void check_shard_totals(const std::string& file, const std::vector<Shard>& shards,
                        const std::vector<int64_t>& floats, const char* group, int64_t total) {
  for (const Shard& s : shards) {
    if (floats[static_cast<size_t>(s.k)] != s.end - s.begin) {
      throw CheckpointError(fmt::format(
          "{}: shard {} has range [{}, {}) ({} floats), but /{} maps {} floats to it", file,
          s.path, s.begin, s.end, s.end - s.begin, group, floats[static_cast<size_t>(s.k)]));
    }
  }
  if (shards.back().end != total) {
    throw CheckpointError(fmt::format("{}: the shards cover [0, {}), the tensors of /{} hold {} "
                                      "floats",
                                      file, shards.back().end, group, total));
  }
}

// The pieces of sharded tensor `rel` as the index maps them, checked to be exactly those the
// shards' ranges imply; `stored` gets the whole tensor's crc32c.
std::vector<Piece> checked_pieces(const h5::File& f, const std::string& file,
                                  const std::vector<Shard>& shards, const std::string& rel,
                                  const TensorSpec& t, uint64_t& stored) {
  const h5::Dataset ds = open_tensor(f, file, rel, &t.shape, stored);
  const auto n = static_cast<int64_t>(shards.size());
  std::vector<Piece> mapped = mapped_pieces(file, ds, rel, t.shape, n);
  if (mapped != expected_pieces(file, t, shards)) {
    throw CheckpointError(fmt::format(
        "{}: tensor {}: its virtual dataset's mappings do not match the shards' ranges", file,
        rel));
  }
  return mapped;
}

// Elements [lo, hi) (offsets within tensor t) of tensor `rel` of a sharded checkpoint into `dst`
// (hi - lo floats). Reads only the pieces that overlap; each piece read is checked against its
// crc32c, and the whole tensor's crc32c too when every piece is read. A piece that overlaps only
// in part is read whole into `buf` (its CRC covers it whole).
void read_sharded_tensor_part(const h5::File& f, const std::string& file,
                              const std::vector<Shard>& shards, const std::string& rel,
                              const TensorSpec& t, int64_t lo, int64_t hi, std::span<float> dst,
                              std::vector<float>& buf) {
  uint64_t stored = 0;
  const std::vector<Piece> mapped = checked_pieces(f, file, shards, rel, t, stored);
  const int64_t row = t.row_size();
  const bool whole = lo == 0 && hi == t.count;
  uint32_t crc = 0;
  for (const Piece& p : mapped) {
    const int64_t plo = p.row_begin * row;
    const int64_t phi = plo + p.rows * row;
    const int64_t a = std::max(lo, plo);
    const int64_t b = std::min(hi, phi);
    if (a >= b) continue;
    const Shard& s = shards[static_cast<size_t>(p.shard)];
    std::span<float> out;
    if (a == plo && b == phi) {
      out = dst.subspan(static_cast<size_t>(plo - lo), static_cast<size_t>(phi - plo));
      read_piece(file, s, rel, t.shape, p, out);
    } else {
      buf.resize(static_cast<size_t>(phi - plo));
      out = buf;
      read_piece(file, s, rel, t.shape, p, out);
      std::copy(buf.begin() + (a - plo), buf.begin() + (b - plo), dst.begin() + (a - lo));
    }
    if (whole) crc = crc32c(out.data(), out.size_bytes(), crc);
  }
  if (whole) check_crc(file, rel, stored, crc, true);
}

// The checkpoint must have been written for `layout`.
void check_layout_hash(const std::string& file, const CheckpointMeta& meta,
                       const ParamLayout& layout) {
  if (meta.layout_hash != layout.hash()) {
    throw CheckpointError(fmt::format(
        "{}: layout hash {} does not match this model's {}: the checkpoint was written for a "
        "different model config",
        file, meta.layout_hash, layout.hash()));
  }
}


}  // namespace


std::string checkpoint_file(const std::string& path) {
  // Symlinks (`latest`) are resolved here, once: a reader then opens checkpoint.h5 and its shards
  // in one step-* folder even if `latest` moves to a newer checkpoint while it reads.
  std::error_code ec;
  const fs::path file =
      fs::is_directory(path, ec) ? fs::path(path) / kFileName : fs::path(path);
  const fs::path resolved = fs::weakly_canonical(file, ec);
  return ec ? file.string() : resolved.string();
}

void write_checkpoint_file(const std::string& file, const ParamLayout& layout,
                           const CheckpointData& data) {
  h5::File f = h5::File::create(file, kChecksumBlockBytes);
  write_checkpoint(f, layout, data);
  f.close();
  write_checksum_block(file);
}

void write_checkpoint_file_atomic(const std::string& file, const ParamLayout& layout,
                                  const CheckpointData& data) {
  h5::write_file_atomically(
      file, [&](h5::File& f) { write_checkpoint(f, layout, data); }, with_checksum_block());
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  const std::string file = checkpoint_file(path);
  h5::File f = open_checkpoint(file);
  return damaged_guard(file, [&] {
    check_header(f, file);
    CheckpointMeta m = read_meta(f, file);
    // A sharded checkpoint: every shard present, readable, and of this checkpoint (headers only).
    if (const int64_t n = index_shard_count(f, file); n > 0) {
      (void)open_shards(file, shard_dir_of(file), n, m.layout_hash, m.step, -1);
    }
    return m;
  });
}

int64_t checkpoint_shard_count(const std::string& path) {
  const std::string file = checkpoint_file(path);
  h5::File f = open_checkpoint(file);
  return damaged_guard(file, [&] {
    check_header(f, file);
    return index_shard_count(f, file);
  });
}

void verify_checkpoint(const std::string& path) {
  const std::string file = checkpoint_file(path);
  h5::File f = open_checkpoint(file);
  damaged_guard(file, [&] {
    check_header(f, file);
    const CheckpointMeta meta = read_meta(f, file);
    const int64_t n = index_shard_count(f, file);
    std::vector<Shard> shards;
    if (n > 0) shards = open_shards(file, shard_dir_of(file), n, meta.layout_hash, meta.step, -1);
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
      std::vector<int64_t> floats(static_cast<size_t>(n), 0);
      int64_t group_total = 0;
      for (const auto& name : here) {
        const std::string rel = std::string(group) + "/" + name;
        if (f.kind(rel) != h5::ObjectKind::kDataset) {
          throw CheckpointError(fmt::format("{}: {} is not a dataset", file, rel));
        }
        const std::vector<int64_t> shape = f.open_dataset(rel).shape();
        int64_t count = 1;
        for (int64_t d : shape) count *= d;
        group_total += count;
        if (n == 0) {
          buf.resize(static_cast<size_t>(count));
          read_tensor(f, file, rel, shape, buf);
          continue;
        }
        // Sharded, no layout at hand: the index's mappings say where each piece is; they are
        // checked to tile the tensor and, below, to add up to each shard's range.
        uint64_t stored = 0;
        const h5::Dataset ds = open_tensor(f, file, rel, &shape, stored);
        const std::vector<Piece> mapped = mapped_pieces(file, ds, rel, shape, n);
        check_crc(file, rel, stored, verify_pieces(file, shards, rel, shape, mapped, floats),
                  true);
      }
      if (n > 0) check_shard_totals(file, shards, floats, group, group_total);
    }
    for (int64_t slot : meta.inner_state_slots) {
      verify_inner_state(shard_dir_of(file).string(), meta.layout_hash, meta.step, slot);
    }
    return 0;
  });
}

CheckpointData read_checkpoint(const std::string& path, const ParamLayout& layout,
                               bool with_optimizer) {
  // The whole vector is the range [0, total): every tensor and every shard piece, all checked.
  CheckpointSlice s = read_checkpoint_range(path, layout, {0, layout.total()}, with_optimizer);
  return CheckpointData{std::move(s.meta), std::move(s.params), std::move(s.m), std::move(s.v)};
}

CheckpointSlice read_checkpoint_range(const std::string& path, const ParamLayout& layout,
                                      std::pair<int64_t, int64_t> range, bool with_optimizer) {
  // Plain variables, not a binding: clang 14 cannot capture bindings in the lambda below.
  const int64_t begin = range.first;
  const int64_t end = range.second;
  PTRAIN_ENFORCE(begin >= 0 && begin <= end && end <= layout.total(),
                 "checkpoint range [{}, {}) outside the parameter vector [0, {})", begin, end,
                 layout.total());
  const std::string file = checkpoint_file(path);
  h5::File f = open_checkpoint(file);
  return damaged_guard(file, [&] {
    check_header(f, file);
    CheckpointSlice d;
    d.meta = read_meta(f, file);
    check_layout_hash(file, d.meta, layout);
    const int64_t n = index_shard_count(f, file);
    std::vector<Shard> shards;
    if (n > 0) {
      shards = open_shards(file, shard_dir_of(file), n, d.meta.layout_hash, d.meta.step,
                           layout.total());
    }
    std::vector<float> buf;
    auto read_group = [&](const std::string& group, std::vector<float>& out) {
      out.resize(static_cast<size_t>(end - begin));
      for (const auto& t : layout.tensors()) {
        const int64_t lo = std::max(begin, t.offset) - t.offset;
        const int64_t hi = std::min(end, t.offset + t.count) - t.offset;
        if (lo >= hi) continue;
        const std::string rel = group + "/" + t.name;
        const std::span<float> dst =
            std::span<float>(out).subspan(static_cast<size_t>(t.offset + lo - begin),
                                          static_cast<size_t>(hi - lo));
        if (n > 0) {
          read_sharded_tensor_part(f, file, shards, rel, t, lo, hi, dst, buf);
        } else if (lo == 0 && hi == t.count) {
          read_tensor(f, file, rel, t.shape, dst);
        } else {
          // A single file has one crc32c per tensor: the whole tensor is read to check it.
          buf.resize(static_cast<size_t>(t.count));
          read_tensor(f, file, rel, t.shape, buf);
          std::copy(buf.begin() + lo, buf.begin() + hi, dst.begin());
        }
      }
    };
    read_group("model", d.params);
    if (with_optimizer) {
      read_group("optimizer/m", d.m);
      read_group("optimizer/v", d.v);
      if (f.exists(kOuterMomentumGroup)) read_group(kOuterMomentumGroup, d.outer_momentum);
    }
    return d;
  });
}

// ---- Shard files -------------------------------------------------------------------------------

std::string shard_file_name(int64_t k) { return fmt::format("shard-{}.h5", k); }

void write_checkpoint_shard(const std::string& tmp_dir, int64_t k, int64_t n_shards,
                            const ParamLayout& layout, std::pair<int64_t, int64_t> range,
                            std::span<const float> weights, std::span<const float> m,
                            std::span<const float> v, int64_t step,
                            std::span<const float> outer_momentum) {
  const int64_t begin = range.first;  // not a binding: clang 14 cannot capture one (below)
  const int64_t end = range.second;
  PTRAIN_ENFORCE(n_shards >= 1 && n_shards <= kMaxShards, "shard count {} outside 1..{}",
                 n_shards, kMaxShards);
  PTRAIN_ENFORCE(k >= 0 && k < n_shards, "shard index {} outside 0..{}", k, n_shards - 1);
  PTRAIN_ENFORCE(step >= 0, "checkpoint step must be >= 0, got {}", step);
  PTRAIN_ENFORCE(0 <= begin && begin <= end && end <= layout.total(),
                 "shard {} range [{}, {}) outside [0, {})", k, begin, end, layout.total());
  PTRAIN_ENFORCE(layout.is_row_boundary(begin) && layout.is_row_boundary(end),
                 "shard {} range [{}, {}) cuts a row of a tensor (use ParamLayout::shard_ranges)",
                 k, begin, end);
  const auto size = static_cast<size_t>(end - begin);
  PTRAIN_ENFORCE(weights.size() == size, "shard {}: {} weights, its range has {}", k,
                 weights.size(), size);
  PTRAIN_ENFORCE(m.empty() || m.size() == size, "shard {}: {} m, its range has {}", k, m.size(),
                 size);
  PTRAIN_ENFORCE(v.empty() || v.size() == size, "shard {}: {} v, its range has {}", k, v.size(),
                 size);
  PTRAIN_ENFORCE(outer_momentum.empty() || outer_momentum.size() == size,
                 "shard {}: {} outer momentum values, its range has {}", k, outer_momentum.size(),
                 size);
  std::error_code ec;
  if (!fs::is_directory(tmp_dir, ec)) {
    throw IoError(fmt::format("{}: no such checkpoint folder (begin_checkpoint creates it)",
                              tmp_dir));
  }
  const std::string path = (fs::path(tmp_dir) / shard_file_name(k)).string();
  h5::write_file_atomically(path, [&](h5::File& f) {
    f.set_attr("format", kShardFormat);
    f.set_attr("format_version", kCheckpointFormatVersion);
    f.set_attr("shard_index", static_cast<int32_t>(k));
    f.set_attr("shard_count", static_cast<int32_t>(n_shards));
    f.set_attr("range_begin", begin);
    f.set_attr("range_end", end);
    f.set_attr("layout_hash", layout.hash());
    f.set_attr("step", step);
    f.set_attr("ptrain_version", PTRAIN_VERSION);
    f.set_attr("created_utc", utc_now_iso8601());
    f.create_group("optimizer");
    std::vector<std::span<const float>> sources = {weights, m, v};  // in kTensorGroups' order
    std::vector<h5::Group> groups;
    for (const char* g : kTensorGroups) groups.push_back(f.create_group(g));
    if (!outer_momentum.empty()) {
      sources.push_back(outer_momentum);
      groups.push_back(f.create_group(kOuterMomentumGroup));
    }
    std::vector<float> zeros;
    for (const TensorSpec& t : layout.tensors()) {
      const Piece p = piece_in_range(t, k, begin, end, path);
      if (p.rows == 0) continue;
      const int64_t row = t.row_size();
      std::vector<int64_t> shape = t.shape;
      shape[0] = p.rows;
      const auto offset = static_cast<size_t>(t.offset + p.row_begin * row - begin);
      const auto count = static_cast<size_t>(p.rows * row);
      for (size_t g = 0; g < groups.size(); ++g) {
        std::span<const float> piece;
        if (sources[g].empty()) {
          zeros.assign(count, 0.0f);
          piece = zeros;
        } else {
          piece = sources[g].subspan(offset, count);
        }
        h5::Dataset ds = groups[g].create_dataset(t.name, h5::DType::kFloat32, shape);
        ds.write(piece);
        ds.set_attr("row_begin", p.row_begin);
        ds.set_attr("crc32c", crc_of(piece));
      }
    }
  }, with_checksum_block());
}

// ---- For the other checkpoint files (checkpoint_internal.hpp) ---------------------------------

void checkpoint_internal::check_sizes(const ParamLayout& layout, const CheckpointData& data) {
  const auto total = static_cast<size_t>(layout.total());
  PTRAIN_ENFORCE(data.params.size() == total, "checkpoint params: {} floats, the layout has {}",
                 data.params.size(), total);
  PTRAIN_ENFORCE(data.m.empty() || data.m.size() == total, "checkpoint m: {} floats, layout {}",
                 data.m.size(), total);
  PTRAIN_ENFORCE(data.v.empty() || data.v.size() == total, "checkpoint v: {} floats, layout {}",
                 data.v.size(), total);
}

void checkpoint_internal::write_shard_index(const std::string& dir, const ParamLayout& layout,
                                            const CheckpointMeta& meta, int64_t n_shards) {
  const std::string& label = dir;
  const std::string index = (fs::path(dir) / kFileName).string();
  // 1. Read every shard back: header against this layout and step, every piece's CRC32C; the
  //    whole-tensor CRC32C continued piece by piece in row order.
  struct Entry {
    size_t group;  // into `group_names`
    const TensorSpec* t;
    std::string rel;
    std::vector<Piece> pieces;
    uint32_t crc;
  };
  std::vector<Entry> entries;
  std::vector<std::string> group_names(std::begin(kTensorGroups), std::end(kTensorGroups));
  {
    std::vector<Shard> shards =
        open_shards(label, dir, n_shards, layout.hash(), meta.step, layout.total());
    // The outer momentum is indexed when the shards have it (verify_pieces then requires it of
    // every shard).
    if (!shards.empty() && shards.front().file.exists(kOuterMomentumGroup)) {
      group_names.emplace_back(kOuterMomentumGroup);
    }
    // The workers' inner optimizer states the index will list: each complete and of this step.
    for (int64_t slot : meta.inner_state_slots) {
      verify_inner_state(dir, layout.hash(), meta.step, slot);
    }
    std::vector<int64_t> floats(static_cast<size_t>(n_shards), 0);
    for (size_t g = 0; g < group_names.size(); ++g) {
      for (const TensorSpec& t : layout.tensors()) {
        Entry e{g, &t, group_names[g] + "/" + t.name, {}, 0};
        e.pieces = expected_pieces(label, t, shards);
        e.crc = verify_pieces(label, shards, e.rel, t.shape, e.pieces, floats);
        entries.push_back(std::move(e));
      }
    }
  }

  // 2. The index (written, fsync'd and renamed into the folder atomically): attributes,
  //    virtual datasets over the shards, tokenizer, data plan.
  h5::write_file_atomically(index, [&](h5::File& f) {
    write_root_attrs(f, layout, meta);
    f.set_attr("shard_count", static_cast<int32_t>(n_shards));
    f.create_group("optimizer");
    std::vector<h5::Group> groups;
    for (const std::string& g : group_names) groups.push_back(f.create_group(g));
    for (const Entry& e : entries) {
      std::vector<h5::VirtualMapping> maps;
      for (const Piece& p : e.pieces) {
        h5::VirtualMapping vm;
        vm.file = shard_file_name(p.shard);
        vm.dataset = source_dataset(e.rel);
        vm.start.assign(e.t->shape.size(), 0);
        vm.start[0] = p.row_begin;
        vm.count = e.t->shape;
        vm.count[0] = p.rows;
        maps.push_back(std::move(vm));
      }
      h5::Dataset ds = groups[e.group].create_virtual_dataset(
          e.t->name, h5::DType::kFloat32, e.t->shape, maps,
          std::numeric_limits<double>::quiet_NaN());
      ds.set_attr("crc32c", e.crc);
    }
    write_tokenizer_and_data(f, meta);
  }, with_checksum_block());

  // 3. The index reads back: header, meta, every tensor's crc32c and mappings as written.
  h5::File f = open_checkpoint(index);
  damaged_guard(index, [&] {
    check_header(f, index);
    const CheckpointMeta back = read_meta(f, index);
    for (const Entry& e : entries) {
      uint64_t stored = 0;
      const h5::Dataset ds = open_tensor(f, index, e.rel, &e.t->shape, stored);
      if (stored != e.crc || mapped_pieces(index, ds, e.rel, e.t->shape, n_shards) != e.pieces) {
        throw CheckpointError(fmt::format("{}: tensor {} does not read back", index, e.rel));
      }
    }
    if (back.step != meta.step || index_shard_count(f, index) != n_shards) {
      throw CheckpointError(fmt::format("{}: the index does not read back", index));
    }
    return 0;
  });
  f.close();
}

}  // namespace ptrain
