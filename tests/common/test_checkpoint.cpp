// Checkpoint format and checkpoints/ folder: bitwise round trip, every refusal of the reader (with
// its message), publish / latest / keep-K, and the fallback when `latest` is damaged. Damage is
// done the way it happens: a truncated copy, a value rewritten through the HDF5 API (so the stored
// CRC no longer matches), an attribute rewritten, a killed publish's leftovers.
//
// Sharded checkpoints (second half): round trips with 1, 2, 3 and many shards, shards written
// from several threads at once, every refusal naming the shard (missing, damaged, truncated,
// another layout, step or index), what h5py and h5dump see from another cwd, and crash safety:
// a partial temp folder is never used, also when the writer is killed with SIGKILL.
#include "common/error.hpp"
#include "common/io/checkpoint.hpp"
#include "common/io/hdf5.hpp"
#include "common/util/hash.hpp"
#include "ptrain/build_config.hpp"

#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <sys/wait.h>
#include <thread>

namespace fs = std::filesystem;
using namespace ptrain;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() / ("ptrain-test-ckpt-" + std::to_string(::getpid()) + "-" +
                                        std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};

ModelDims tiny_dims(int64_t C = 8) {
  ModelDims d;
  d.V = 11;
  d.Vp = 16;
  d.T = 5;
  d.L = 2;
  d.NH = 2;
  d.C = C;
  return d;
}

CheckpointData sample_data(const ParamLayout& layout, int64_t step, uint32_t seed) {
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

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::string error_of(const std::function<void()>& f) {
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

void truncate_file(const std::string& path, double fraction) {
  const auto size = fs::file_size(path);
  fs::resize_file(path, static_cast<uintmax_t>(static_cast<double>(size) * fraction));
}

// Adds 1.0 to element 0 of dataset `rel`, leaving its crc32c attribute as it was.
void poke_value(const std::string& file, const std::string& rel) {
  h5::File f = h5::File::open(file, h5::Access::kReadWrite);
  h5::Dataset ds = f.open_dataset(rel);
  std::vector<float> v(static_cast<size_t>(ds.size()));
  ds.read(v);
  v[0] += 1.0f;
  ds.write(v);
  f.close();
}

std::string read_link(const fs::path& p) { return fs::read_symlink(p).string(); }

// Restores the working directory on scope exit.
struct Chdir {
  fs::path old = fs::current_path();
  explicit Chdir(const fs::path& to) { fs::current_path(to); }
  ~Chdir() {
    std::error_code ec;
    fs::current_path(old, ec);
  }
};

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

std::string step_name(int64_t step) { return fmt::format("step-{:08d}", step); }

// Writes every shard of `d` into `tmp` (the servers' part), optionally skipping one.
void write_shards(const std::string& tmp, const ParamLayout& layout, const CheckpointData& d,
                  int64_t n, int64_t skip = -1) {
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
std::string tensor_in_shard(const ParamLayout& layout, int64_t n, int64_t k) {
  const auto [b, e] = layout.shard_ranges(n)[static_cast<size_t>(k)];
  for (const auto& t : layout.tensors()) {
    if (t.offset < e && t.offset + t.count > b) return t.name;
  }
  return {};
}

int shell(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace

TEST_CASE("checkpoint: round trip is bitwise equal and attributes have the contract's types") {
  TempDir dir;
  ParamLayout layout(tiny_dims());
  const CheckpointData d = sample_data(layout, 42, 7);
  const std::string file = dir / "c.h5";
  write_checkpoint_file(file, layout, d);

  const CheckpointData r = read_checkpoint(file, layout);
  CHECK(bitwise_equal(r.params, d.params));
  CHECK(bitwise_equal(r.m, d.m));
  CHECK(bitwise_equal(r.v, d.v));
  CHECK(r.meta.format_version == kCheckpointFormatVersion);
  CHECK(r.meta.step == 42);
  CHECK(r.meta.tokens_seen == 42 * 40);
  CHECK(r.meta.config_yaml == d.meta.config_yaml);
  CHECK(r.meta.tokenizer_json == d.meta.tokenizer_json);
  CHECK(r.meta.layout_hash == layout.hash());
  CHECK(r.meta.ptrain_version == PTRAIN_VERSION);
  CHECK(r.meta.created_utc.size() == 20);  // 2024-01-02T03:04:05Z
  CHECK(r.meta.created_utc.back() == 'Z');
  CHECK(r.meta.data.seed == 1337);
  CHECK(r.meta.data.epoch == 2);
  CHECK(r.meta.data.position == 59);

  // Without the optimizer: params only.
  const CheckpointData p = read_checkpoint(file, layout, false);
  CHECK(bitwise_equal(p.params, d.params));
  CHECK(p.m.empty());

  // Meta alone, and the directory form of CKPT.
  const CheckpointMeta meta = read_checkpoint_meta(file);
  CHECK(meta.step == 42);
  fs::create_directories(dir.path / "d");
  fs::copy_file(file, dir / "d/checkpoint.h5");
  CHECK(checkpoint_file(dir / "d") == dir / "d/checkpoint.h5");
  CHECK(read_checkpoint_meta(dir / "d").step == 42);
  verify_checkpoint(dir / "d");

  // Stored types, through the HDF5 API.
  h5::File f = h5::File::open(file);
  for (const char* s : {"format", "config_yaml", "layout_hash", "ptrain_version", "created_utc"}) {
    const h5::TypeInfo t = f.attr_type(s);
    CHECK_MESSAGE(t.dtype == h5::DType::kString, s);
    CHECK_MESSAGE(t.variable_string, s);
    CHECK_MESSAGE(t.utf8, s);
  }
  CHECK(f.attr_string("format") == "ptrain-checkpoint");
  CHECK(f.attr_type("format_version").dtype == h5::DType::kInt32);
  CHECK(f.attr_type("step").dtype == h5::DType::kInt64);
  CHECK(f.attr_type("tokens_seen").dtype == h5::DType::kInt64);
  const TensorSpec& wte = layout.find("transformer.wte.weight");
  for (const char* g : {"model", "optimizer/m", "optimizer/v"}) {
    h5::Dataset ds = f.open_dataset(std::string(g) + "/transformer.wte.weight");
    CHECK(ds.type().dtype == h5::DType::kFloat32);
    CHECK(ds.shape() == std::vector<int64_t>{16, 8});
    CHECK(ds.attr_type("crc32c").dtype == h5::DType::kUInt32);
  }
  CHECK(f.open_dataset("model/transformer.wte.weight").attr_uint64("crc32c") ==
        crc32c(d.params.data() + wte.offset, static_cast<size_t>(wte.count) * sizeof(float)));
  CHECK(f.open_dataset("tokenizer").type().dtype == h5::DType::kUInt8);
  CHECK(f.open_group("data").attr_type("seed").dtype == h5::DType::kUInt64);
  CHECK(f.open_group("model").children().size() == layout.tensors().size());
}

TEST_CASE("checkpoint: empty moments are written as zeros") {
  TempDir dir;
  ParamLayout layout(tiny_dims());
  CheckpointData d = sample_data(layout, 0, 3);
  d.m.clear();
  d.v.clear();
  write_checkpoint_file(dir / "c.h5", layout, d);
  const CheckpointData r = read_checkpoint(dir / "c.h5", layout);
  CHECK(r.m == std::vector<float>(static_cast<size_t>(layout.total()), 0.0f));
  CHECK(r.v == std::vector<float>(static_cast<size_t>(layout.total()), 0.0f));
}

TEST_CASE("checkpoint: atomic write leaves no partial file and keeps the old one on failure") {
  TempDir dir;
  ParamLayout layout(tiny_dims());
  const CheckpointData d = sample_data(layout, 5, 1);
  const std::string file = dir / "init.h5";
  write_checkpoint_file_atomic(file, layout, d);
  CHECK(read_checkpoint_meta(file).step == 5);
  // A failing write (params of the wrong size) leaves the old file and no temp.
  CheckpointData bad = d;
  bad.params.resize(3);
  CHECK(throws_as<InternalError>([&] { write_checkpoint_file_atomic(file, layout, bad); }));
  CHECK(read_checkpoint_meta(file).step == 5);
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path)) ++entries;
  CHECK(entries == 1);
}

TEST_CASE("checkpoint: refuses a missing file or a non-HDF5 file or a truncated file") {
  TempDir dir;
  ParamLayout layout(tiny_dims());
  const std::string file = dir / "c.h5";
  write_checkpoint_file(file, layout, sample_data(layout, 1, 1));

  const std::string missing = dir / "nope.h5";
  CHECK(throws_as<IoError>([&] { read_checkpoint_meta(missing); }));
  CHECK(error_of([&] { read_checkpoint_meta(missing); }).find(missing) != std::string::npos);

  const std::string text = dir / "text.h5";
  std::ofstream(text) << "model weights, honest\n";
  std::string msg = error_of([&] { read_checkpoint(text, layout); });
  CHECK(throws_as<CheckpointError>([&] { read_checkpoint(text, layout); }));
  CHECK_MESSAGE(msg.find(text) != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("not an HDF5 file") != std::string::npos, msg);

  for (double frac : {0.5, 0.9, 0.999}) {
    const std::string cut = dir / "cut.h5";
    fs::copy_file(file, cut, fs::copy_options::overwrite_existing);
    truncate_file(cut, frac);
    msg = error_of([&] { read_checkpoint(cut, layout); });
    CHECK(throws_as<CheckpointError>([&] { read_checkpoint(cut, layout); }));
    CHECK_MESSAGE(msg.find(cut) != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("truncated or damaged") != std::string::npos, msg);
    CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(cut); }));
  }
}

TEST_CASE("checkpoint: refuses a wrong format and a wrong format_version") {
  TempDir dir;
  ParamLayout layout(tiny_dims());
  const std::string file = dir / "c.h5";
  write_checkpoint_file(file, layout, sample_data(layout, 1, 1));
  {
    h5::File f = h5::File::open(file, h5::Access::kReadWrite);
    f.set_attr("format_version", int32_t{2});
    f.close();
  }
  std::string msg = error_of([&] { read_checkpoint_meta(file); });
  CHECK_MESSAGE(msg.find("format_version 2, this ptrain reads 1") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find(file) != std::string::npos, msg);
  CHECK(throws_as<CheckpointError>([&] { read_checkpoint(file, layout); }));

  {
    h5::File f = h5::File::open(file, h5::Access::kReadWrite);
    f.set_attr("format_version", int32_t{1});
    f.set_attr("format", "something-else");
    f.close();
  }
  msg = error_of([&] { read_checkpoint(file, layout); });
  CHECK_MESSAGE(msg.find("not a ptrain checkpoint") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("something-else") != std::string::npos, msg);

  // An HDF5 file that is not a checkpoint at all.
  const std::string other = dir / "other.h5";
  {
    h5::File f = h5::File::create(other);
    f.create_dataset("x", h5::DType::kFloat32, {3}).write(std::vector<float>{1, 2, 3});
    f.close();
  }
  msg = error_of([&] { read_checkpoint(other, layout); });
  CHECK_MESSAGE(msg.find("not a ptrain checkpoint") != std::string::npos, msg);
}

TEST_CASE("checkpoint: refuses a layout from a different config showing both hashes") {
  TempDir dir;
  ParamLayout layout(tiny_dims(8));
  ParamLayout other(tiny_dims(12));
  const std::string file = dir / "c.h5";
  write_checkpoint_file(file, layout, sample_data(layout, 1, 1));
  const std::string msg = error_of([&] { read_checkpoint(file, other); });
  CHECK(throws_as<CheckpointError>([&] { read_checkpoint(file, other); }));
  CHECK_MESSAGE(msg.find(layout.hash()) != std::string::npos, msg);
  CHECK_MESSAGE(msg.find(other.hash()) != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("different model config") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find(file) != std::string::npos, msg);
}

TEST_CASE("checkpoint: refuses a missing tensor or a wrong shape or dtype") {
  TempDir dir;
  ParamLayout layout(tiny_dims());
  const std::string file = dir / "c.h5";
  const std::string t = "transformer.h.1.attn.c_attn.bias";
  write_checkpoint_file(file, layout, sample_data(layout, 1, 1));
  {
    h5::File f = h5::File::open(file, h5::Access::kReadWrite);
    f.remove("model/" + t);
    f.close();
  }
  std::string msg = error_of([&] { read_checkpoint(file, layout); });
  CHECK_MESSAGE(msg.find("tensor model/" + t + " is missing") != std::string::npos, msg);
  CHECK(throws_as<CheckpointError>([&] { read_checkpoint(file, layout); }));
  CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(file); }));  // /optimizer differs

  {
    h5::File f = h5::File::open(file, h5::Access::kReadWrite);
    h5::Group g = f.open_group("model");
    std::vector<float> v(25, 0.5f);
    h5::Dataset ds = g.create_dataset(t, h5::DType::kFloat32, {5, 5});
    ds.write(v);
    ds.set_attr("crc32c", crc32c(v.data(), v.size() * sizeof(float)));
    f.close();
  }
  msg = error_of([&] { read_checkpoint(file, layout); });
  CHECK_MESSAGE(msg.find("tensor model/" + t + " has shape [5, 5], expected [24]") !=
                    std::string::npos,
                msg);

  {
    h5::File f = h5::File::open(file, h5::Access::kReadWrite);
    f.remove("model/" + t);
    h5::Group g = f.open_group("model");
    g.create_dataset(t, h5::DType::kInt32, {24}).write(std::vector<int32_t>(24, 1));
    f.close();
  }
  msg = error_of([&] { read_checkpoint(file, layout); });
  CHECK_MESSAGE(msg.find("tensor model/" + t + " is int32, expected float32") != std::string::npos,
                msg);
}

TEST_CASE("checkpoint: refuses a CRC mismatch naming the tensor") {
  TempDir dir;
  ParamLayout layout(tiny_dims());
  const std::string file = dir / "c.h5";
  write_checkpoint_file(file, layout, sample_data(layout, 1, 1));
  poke_value(file, "model/transformer.h.0.mlp.c_fc.weight");
  std::string msg = error_of([&] { read_checkpoint(file, layout); });
  CHECK(throws_as<CheckpointError>([&] { read_checkpoint(file, layout); }));
  CHECK_MESSAGE(msg.find("model/transformer.h.0.mlp.c_fc.weight fails its checksum") !=
                    std::string::npos,
                msg);
  CHECK_MESSAGE(msg.find(file) != std::string::npos, msg);
  CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(file); }));

  // A damaged moment is caught when the optimizer is read, not otherwise.
  const std::string file2 = dir / "c2.h5";
  write_checkpoint_file(file2, layout, sample_data(layout, 1, 1));
  poke_value(file2, "optimizer/v/transformer.wpe.weight");
  CHECK_NOTHROW(read_checkpoint(file2, layout, false));
  msg = error_of([&] { read_checkpoint(file2, layout, true); });
  CHECK_MESSAGE(msg.find("optimizer/v/transformer.wpe.weight fails its checksum") !=
                    std::string::npos,
                msg);
}

TEST_CASE("checkpoint publish: latest is a relative symlink and keep-K prunes and no temporaries remain") {
  TempDir run;
  ParamLayout layout(tiny_dims());
  const fs::path ck = run.path / "checkpoints";
  for (int64_t step = 1; step <= 5; ++step) {
    const std::string d = publish_checkpoint(run.path.string(), layout,
                                             sample_data(layout, step, static_cast<uint32_t>(step)), 2);
    CHECK(d == (ck / fmt::format("step-{:08d}", step)).string());
    CHECK(read_link(ck / "latest") == fmt::format("step-{:08d}", step));
  }
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(ck)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"latest", "step-00000004", "step-00000005"});
  CHECK(read_checkpoint_meta((ck / "latest").string()).step == 5);
  CHECK(find_latest_checkpoint(run.path.string()) == (ck / "step-00000005").string());

  // keep 0 keeps everything.
  publish_checkpoint(run.path.string(), layout, sample_data(layout, 6, 6), 0);
  CHECK(fs::exists(ck / "step-00000004"));

  // Publishing an older step moves `latest` to it; keep never removes what `latest` names.
  publish_checkpoint(run.path.string(), layout, sample_data(layout, 2, 2), 1);
  CHECK(read_link(ck / "latest") == "step-00000002");
  CHECK(fs::exists(ck / "step-00000002"));
  CHECK(fs::exists(ck / "step-00000006"));
  CHECK_FALSE(fs::exists(ck / "step-00000005"));
}

TEST_CASE("checkpoint publish: re-publishing a step replaces it safely") {
  TempDir run;
  ParamLayout layout(tiny_dims());
  const fs::path ck = run.path / "checkpoints";
  publish_checkpoint(run.path.string(), layout, sample_data(layout, 3, 1), 3);
  const CheckpointData second = sample_data(layout, 3, 2);
  publish_checkpoint(run.path.string(), layout, second, 3);
  const CheckpointData r = read_checkpoint((ck / "latest").string(), layout);
  CHECK(bitwise_equal(r.params, second.params));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(ck)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"latest", "step-00000003"});
}

TEST_CASE("checkpoint find_latest: stale temporaries of a killed publish are removed") {
  TempDir run;
  ParamLayout layout(tiny_dims());
  const fs::path ck = run.path / "checkpoints";
  CHECK_FALSE(find_latest_checkpoint(run.path.string()).has_value());  // no folder at all
  publish_checkpoint(run.path.string(), layout, sample_data(layout, 4, 4), 3);
  // Killed while writing step 8: a half file in step-8.tmp, a temp symlink, an old-aside dir.
  fs::create_directories(ck / "step-00000008.tmp");
  {
    std::ofstream out(ck / "step-00000008.tmp" / "checkpoint.h5", std::ios::binary);
    out << "\x89HDF\r\n\x1a\n" << std::string(100, '\0');
  }
  fs::create_symlink("step-00000008.tmp", ck / "latest.999.tmp");
  fs::create_directories(ck / "step-00000003.old.tmp");
  CHECK(find_latest_checkpoint(run.path.string()) == (ck / "step-00000004").string());
  CHECK_FALSE(fs::exists(ck / "step-00000008.tmp"));
  CHECK_FALSE(fs::exists(fs::symlink_status(ck / "latest.999.tmp")));
  CHECK_FALSE(fs::exists(ck / "step-00000003.old.tmp"));
  CHECK(read_link(ck / "latest") == "step-00000004");
}

TEST_CASE("checkpoint find_latest: a damaged latest falls back to the newest valid one") {
  TempDir run;
  ParamLayout layout(tiny_dims());
  const fs::path ck = run.path / "checkpoints";
  for (int64_t s : {10, 20, 30}) publish_checkpoint(run.path.string(), layout, sample_data(layout, s, 1), 5);

  SUBCASE("truncated latest") {
    truncate_file((ck / "step-00000030" / "checkpoint.h5").string(), 0.6);
    CHECK(find_latest_checkpoint(run.path.string()) == (ck / "step-00000020").string());
  }
  SUBCASE("checksum damage in latest") {
    poke_value((ck / "step-00000030" / "checkpoint.h5").string(), "optimizer/m/transformer.ln_f.bias");
    CHECK(find_latest_checkpoint(run.path.string()) == (ck / "step-00000020").string());
  }
  SUBCASE("dangling latest") {
    fs::remove_all(ck / "step-00000030");
    CHECK(find_latest_checkpoint(run.path.string()) == (ck / "step-00000020").string());
  }
  SUBCASE("latest missing") {
    fs::remove(ck / "latest");
    CHECK(find_latest_checkpoint(run.path.string()) == (ck / "step-00000030").string());
  }
  SUBCASE("latest and the one before damaged") {
    truncate_file((ck / "step-00000030" / "checkpoint.h5").string(), 0.5);
    std::ofstream(ck / "step-00000020" / "checkpoint.h5", std::ios::trunc) << "garbage";
    CHECK(find_latest_checkpoint(run.path.string()) == (ck / "step-00000010").string());
  }
  SUBCASE("all damaged is an error, not a fresh start") {
    for (int s : {10, 20, 30}) {
      truncate_file((ck / fmt::format("step-{:08d}", s) / "checkpoint.h5").string(), 0.5);
    }
    const std::string msg = error_of([&] { find_latest_checkpoint(run.path.string()); });
    CHECK_MESSAGE(msg.find("none of the 3 checkpoint directories reads back") != std::string::npos,
                  msg);
  }
}

TEST_CASE("checkpoint: scripts/check_checkpoint.py reads it with h5py alone") {
  const std::string py = PTRAIN_TORCH_PYTHON;
  if (py.empty() || std::system((py + " -c 'import h5py, numpy' >/dev/null 2>&1").c_str()) != 0) {
    MESSAGE("skipped: no h5py for " << py);
    return;
  }
  TempDir dir;
  ParamLayout layout(tiny_dims());
  const std::string file = dir / "c.h5";
  write_checkpoint_file(file, layout, sample_data(layout, 9, 9));
  const std::string script = std::string(PTRAIN_TEST_SCRIPTS) + "/check_checkpoint.py";
  auto run = [&](const std::string& args) {
    const int rc = std::system((py + " " + script + " " + args + " >/dev/null 2>&1").c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  };
  CHECK(run(file) == 0);
  CHECK(run(dir.path.string() + "/c.h5 --tensor transformer.wte.weight") == 0);
  poke_value(file, "model/transformer.h.1.ln_2.weight");
  CHECK(run(file) == 1);
  CHECK(run(file + " --tensor transformer.wte.weight") == 0);
}

// ---- Sharded checkpoints: shard-K.h5 per server plus checkpoint.h5 (virtual datasets) ----------

TEST_CASE("checkpoint sharded: 1 2 and 3 shards round trip bitwise equal") {
  ParamLayout layout(tiny_dims());
  for (int64_t n : {1, 2, 3}) {
    INFO("shards: ", n);
    TempDir run;
    const CheckpointData d = sample_data(layout, 7 + n, static_cast<uint32_t>(n));
    const std::string dir = publish_sharded_checkpoint(run.path.string(), layout, d, n, 3);
    const fs::path ck = run.path / "checkpoints";
    CHECK(dir == (ck / step_name(7 + n)).string());
    CHECK(read_link(ck / "latest") == step_name(7 + n));

    // The folder: the index and one file per shard, nothing else.
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    std::vector<std::string> want = {"checkpoint.h5"};
    for (int64_t k = 0; k < n; ++k) want.push_back(shard_file_name(k));
    CHECK(names == want);

    const CheckpointData r = read_checkpoint(dir, layout);
    CHECK(bitwise_equal(r.params, d.params));
    CHECK(bitwise_equal(r.m, d.m));
    CHECK(bitwise_equal(r.v, d.v));
    CHECK(r.meta.step == 7 + n);
    CHECK(r.meta.tokens_seen == d.meta.tokens_seen);
    CHECK(r.meta.config_yaml == d.meta.config_yaml);
    CHECK(r.meta.tokenizer_json == d.meta.tokenizer_json);
    CHECK(r.meta.layout_hash == layout.hash());
    CHECK(r.meta.data.position == d.meta.data.position);
    const CheckpointData p = read_checkpoint((ck / "latest").string(), layout, false);
    CHECK(bitwise_equal(p.params, d.params));
    CHECK(p.m.empty());
    CHECK(read_checkpoint_meta(dir).step == 7 + n);
    CHECK(checkpoint_shard_count(dir) == n);
    CHECK_NOTHROW(verify_checkpoint(dir));
    CHECK(find_latest_checkpoint(run.path.string()) == dir);

    // The index: the contract's attributes, every tensor a virtual dataset over bare shard names
    // with the whole tensor's crc32c; the shards: row blocks with row_begin and crc32c.
    h5::File f = h5::File::open(dir + "/checkpoint.h5");
    CHECK(f.attr_string("format") == "ptrain-checkpoint");
    CHECK(f.attr_type("format_version").dtype == h5::DType::kInt32);
    CHECK(f.attr_int64("shard_count") == n);
    const auto ranges = layout.shard_ranges(n);
    const std::pair<const char*, const std::vector<float>*> groups[] = {
        {"model", &d.params}, {"optimizer/m", &d.m}, {"optimizer/v", &d.v}};
    for (const auto& [g, values] : groups) {
      const std::vector<float>& full = *values;
      for (const auto& t : layout.tensors()) {
        const std::string rel = std::string(g) + "/" + t.name;
        h5::Dataset ds = f.open_dataset(rel);
        CHECK(ds.is_virtual());
        CHECK(ds.shape() == t.shape);
        CHECK(ds.attr_type("crc32c").dtype == h5::DType::kUInt32);
        CHECK(ds.attr_uint64("crc32c") ==
              crc32c(full.data() + t.offset, static_cast<size_t>(t.count) * sizeof(float)));
        for (const auto& src : ds.virtual_sources()) {
          CHECK(src.find('/') == std::string::npos);
          CHECK(src.rfind("shard-", 0) == 0);
        }
      }
    }
    for (int64_t k = 0; k < n; ++k) {
      h5::File s = h5::File::open(dir + "/" + shard_file_name(k));
      CHECK(s.attr_string("format") == "ptrain-checkpoint-shard");
      CHECK(s.attr_int64("format_version") == kCheckpointFormatVersion);
      CHECK(s.attr_int64("shard_index") == k);
      CHECK(s.attr_int64("shard_count") == n);
      CHECK(s.attr_int64("range_begin") == ranges[static_cast<size_t>(k)].first);
      CHECK(s.attr_int64("range_end") == ranges[static_cast<size_t>(k)].second);
      CHECK(s.attr_string("layout_hash") == layout.hash());
      CHECK(s.attr_int64("step") == 7 + n);
      for (const std::string& name : s.open_group("model").children()) {
        h5::Dataset ds = s.open_dataset("model/" + name);
        const TensorSpec& t = layout.find(name);
        const int64_t row_begin = ds.attr_int64("row_begin");
        std::vector<float> piece(static_cast<size_t>(ds.size()));
        ds.read(piece);
        const size_t at = static_cast<size_t>(t.offset + row_begin * t.row_size());
        CHECK(std::memcmp(piece.data(), d.params.data() + at, piece.size() * sizeof(float)) == 0);
        CHECK(ds.attr_uint64("crc32c") == crc32c(piece.data(), piece.size() * sizeof(float)));
        CHECK(at >= static_cast<size_t>(ranges[static_cast<size_t>(k)].first));
      }
    }
    f.close();

    // Read through the virtual datasets by HDF5 itself, from another working directory.
    {
      TempDir elsewhere;
      Chdir cd(elsewhere.path);
      h5::File vf = h5::File::open(dir + "/checkpoint.h5");
      for (const auto& t : layout.tensors()) {
        std::vector<float> got(static_cast<size_t>(t.count));
        vf.open_dataset("model/" + t.name).read(got);
        CHECK_MESSAGE(std::memcmp(got.data(), d.params.data() + t.offset,
                                  got.size() * sizeof(float)) == 0,
                      t.name);
      }
    }
  }
}

TEST_CASE("checkpoint sharded: empty moments more shards than rows and a re-publish") {
  ParamLayout layout(tiny_dims(4));
  TempDir run;
  CheckpointData d = sample_data(layout, 3, 5);
  d.m.clear();
  d.v.clear();
  // Many shards: some hold a few elements of a 1-D tensor, some pieces are a single row.
  const std::string dir = publish_sharded_checkpoint(run.path.string(), layout, d, 37, 2);
  const CheckpointData r = read_checkpoint(dir, layout);
  CHECK(bitwise_equal(r.params, d.params));
  CHECK(r.m == std::vector<float>(static_cast<size_t>(layout.total()), 0.0f));
  CHECK(r.v == std::vector<float>(static_cast<size_t>(layout.total()), 0.0f));
  CHECK_NOTHROW(verify_checkpoint(dir));
  // The same step again, now with 2 shards: the folder is swapped; no stale shard remains.
  const CheckpointData d2 = sample_data(layout, 3, 6);
  publish_sharded_checkpoint(run.path.string(), layout, d2, 2, 2);
  CHECK(bitwise_equal(read_checkpoint(dir, layout).params, d2.params));
  CHECK_FALSE(fs::exists(fs::path(dir) / "shard-2.h5"));
  // A single-file checkpoint published over it reads as before (both forms side by side).
  publish_checkpoint(run.path.string(), layout, sample_data(layout, 4, 7), 2);
  CHECK(checkpoint_shard_count(run / "checkpoints/latest") == 0);
  CHECK(checkpoint_shard_count(dir) == 2);
}

TEST_CASE("checkpoint sharded: shards written from several threads at once") {
  ParamLayout layout(tiny_dims(16));
  for (int round = 0; round < 3; ++round) {
    TempDir run;
    const int64_t n = 4;
    const CheckpointData d = sample_data(layout, 100 + round, static_cast<uint32_t>(round));
    const std::string tmp = begin_checkpoint(run.path.string(), d.meta.step);
    CHECK(tmp == checkpoint_tmp_dir(run.path.string(), d.meta.step));
    const auto ranges = layout.shard_ranges(n);
    std::vector<std::thread> threads;
    std::vector<std::string> errors(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      threads.emplace_back([&, k] {
        try {
          const auto [b, e] = ranges[static_cast<size_t>(k)];
          // Each "server" owns copies of its slice, as a ShardStore does.
          const std::vector<float> w(d.params.begin() + b, d.params.begin() + e);
          const std::vector<float> m(d.m.begin() + b, d.m.begin() + e);
          const std::vector<float> v(d.v.begin() + b, d.v.begin() + e);
          write_checkpoint_shard(tmp, k, n, layout, ranges[static_cast<size_t>(k)], w, m, v,
                                 d.meta.step);
        } catch (const std::exception& ex) {
          errors[static_cast<size_t>(k)] = ex.what();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& e : errors) CHECK_MESSAGE(e.empty(), e);
    const std::string dir =
        finish_sharded_checkpoint(run.path.string(), tmp, layout, d.meta, n, 2);
    CHECK_FALSE(fs::exists(tmp));
    const CheckpointData r = read_checkpoint(dir, layout);
    CHECK(bitwise_equal(r.params, d.params));
    CHECK(bitwise_equal(r.m, d.m));
    CHECK(bitwise_equal(r.v, d.v));
  }
}

TEST_CASE("checkpoint sharded: readers refuse a damaged shard naming it") {
  ParamLayout layout(tiny_dims());
  const int64_t n = 3;
  TempDir run;
  const fs::path ck = run.path / "checkpoints";
  publish_sharded_checkpoint(run.path.string(), layout, sample_data(layout, 10, 1), n, 5);
  const CheckpointData good = sample_data(layout, 20, 2);
  const std::string dir = publish_sharded_checkpoint(run.path.string(), layout, good, n, 5);
  const std::string shard1 = dir + "/shard-1.h5";

  // Each reader refuses with a CheckpointError naming the shard; find_latest falls back.
  auto refused_by_all = [&](const std::string& shard, const std::string& what,
                            bool meta_too = true) {
    const std::string msg = error_of([&] { read_checkpoint(dir, layout); });
    CHECK_MESSAGE(contains(msg, shard), msg);
    CHECK_MESSAGE(contains(msg, what), msg);
    CHECK(throws_as<CheckpointError>([&] { read_checkpoint(dir, layout); }));
    const std::string vmsg = error_of([&] { verify_checkpoint(dir); });
    CHECK_MESSAGE(contains(vmsg, shard), vmsg);
    CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(dir); }));
    if (meta_too) {
      CHECK(throws_as<CheckpointError>([&] { read_checkpoint_meta(dir); }));
      CHECK_MESSAGE(contains(error_of([&] { read_checkpoint_meta(dir); }), shard), shard);
    }
    CHECK(find_latest_checkpoint(run.path.string()) == (ck / step_name(10)).string());
  };

  SUBCASE("missing shard") {
    fs::remove(shard1);
    refused_by_all("shard-1.h5", "is missing");
  }
  SUBCASE("corrupted shard fails its CRC") {
    const std::string t = tensor_in_shard(layout, n, 1);
    poke_value(shard1, "model/" + t);
    refused_by_all("shard-1.h5", "fails its checksum", false);
    CHECK(contains(error_of([&] { read_checkpoint(dir, layout); }), t));
    CHECK_NOTHROW(read_checkpoint_meta(dir));  // headers are fine; the data is not
  }
  SUBCASE("corrupted moment in a shard") {
    poke_value(dir + "/shard-2.h5", "optimizer/v/" + tensor_in_shard(layout, n, 2));
    CHECK_NOTHROW(read_checkpoint(dir, layout, false));  // moments checked when read
    const std::string msg = error_of([&] { read_checkpoint(dir, layout, true); });
    CHECK_MESSAGE(contains(msg, "shard-2.h5"), msg);
    CHECK_MESSAGE(contains(msg, "fails its checksum"), msg);
    CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(dir); }));
  }
  SUBCASE("truncated shard") {
    for (double frac : {0.0, 0.5, 0.999}) {
      const auto size = fs::file_size(shard1);
      const std::string copy = dir + "/shard-1.keep";
      fs::copy_file(shard1, copy, fs::copy_options::overwrite_existing);
      fs::resize_file(shard1, static_cast<uintmax_t>(static_cast<double>(size) * frac));
      const std::string msg = error_of([&] { read_checkpoint(dir, layout); });
      CHECK_MESSAGE(contains(msg, "shard-1.h5"), msg);
      CHECK_MESSAGE((contains(msg, "truncated or damaged") || contains(msg, "not an HDF5 file")),
                    msg);
      CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(dir); }));
      fs::rename(copy, shard1);
    }
    CHECK_NOTHROW(verify_checkpoint(dir));
    fs::resize_file(shard1, fs::file_size(shard1) / 2);
    refused_by_all("shard-1.h5", "truncated or damaged");
  }
  SUBCASE("shard of another layout") {
    {
      h5::File f = h5::File::open(dir + "/shard-0.h5", h5::Access::kReadWrite);
      f.set_attr("layout_hash", ParamLayout(tiny_dims(12)).hash());
      f.close();
    }
    refused_by_all("shard-0.h5", "layout hash");
  }
  SUBCASE("shard of another step") {
    // A shard left from the checkpoint of step 10 copied over step 20's.
    fs::copy_file(ck / step_name(10) / "shard-2.h5", dir + "/shard-2.h5",
                  fs::copy_options::overwrite_existing);
    refused_by_all("shard-2.h5", "is of step 10");
  }
  SUBCASE("shard of another shard count") {
    {
      h5::File f = h5::File::open(dir + "/shard-1.h5", h5::Access::kReadWrite);
      f.set_attr("shard_index", int32_t{2});
      f.close();
    }
    refused_by_all("shard-1.h5", "says it is shard 2 of 3");
  }
  SUBCASE("a shard given as the checkpoint") {
    const std::string msg = error_of([&] { read_checkpoint(shard1, layout); });
    CHECK_MESSAGE(contains(msg, "one shard of a sharded checkpoint"), msg);
  }
  SUBCASE("the index names an unknown source") {
    // Rebuild one virtual dataset in place, mapping its first block to a file that is no shard.
    {
      h5::File f = h5::File::open(dir + "/checkpoint.h5", h5::Access::kReadWrite);
      const std::string t = "transformer.wpe.weight";
      h5::Dataset old = f.open_dataset("model/" + t);
      auto maps = old.virtual_mappings();
      const uint64_t crc = old.attr_uint64("crc32c");
      REQUIRE_FALSE(maps.empty());
      maps[0].file = "elsewhere.h5";
      old.close();
      f.remove("model/" + t);
      h5::Group g = f.open_group("model");
      h5::Dataset ds = g.create_virtual_dataset(t, h5::DType::kFloat32,
                                                layout.find(t).shape, maps, 0.0);
      ds.set_attr("crc32c", static_cast<uint32_t>(crc));
      f.close();
    }
    const std::string msg = error_of([&] { read_checkpoint(dir, layout); });
    CHECK_MESSAGE(contains(msg, "elsewhere.h5"), msg);
    CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(dir); }));
  }
  // Whatever was damaged, the other checkpoint still reads back.
  CHECK_NOTHROW(read_checkpoint((ck / step_name(10)).string(), layout));
}

TEST_CASE("checkpoint sharded: finish refuses a missing or bad shard and keeps latest") {
  ParamLayout layout(tiny_dims());
  const int64_t n = 3;
  TempDir run;
  const fs::path ck = run.path / "checkpoints";
  const CheckpointData first = sample_data(layout, 5, 1);
  publish_sharded_checkpoint(run.path.string(), layout, first, n, 5);
  const CheckpointData next = sample_data(layout, 6, 2);

  auto check_untouched = [&] {
    CHECK(read_link(ck / "latest") == step_name(5));
    CHECK_FALSE(fs::exists(ck / step_name(6)));
    CHECK_FALSE(fs::exists(checkpoint_tmp_dir(run.path.string(), 6)));
    CHECK(bitwise_equal(read_checkpoint((ck / "latest").string(), layout).params, first.params));
  };

  SUBCASE("missing shard") {
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    write_shards(tmp, layout, next, n, /*skip=*/1);
    const std::string msg = error_of(
        [&] { finish_sharded_checkpoint(run.path.string(), tmp, layout, next.meta, n, 5); });
    CHECK_MESSAGE(contains(msg, "shard-1.h5"), msg);
    CHECK_MESSAGE(contains(msg, "missing"), msg);
    check_untouched();
  }
  SUBCASE("corrupted shard") {
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    write_shards(tmp, layout, next, n);
    poke_value(tmp + "/shard-0.h5", "optimizer/m/" + tensor_in_shard(layout, n, 0));
    CHECK(throws_as<CheckpointError>(
        [&] { finish_sharded_checkpoint(run.path.string(), tmp, layout, next.meta, n, 5); }));
    check_untouched();
  }
  SUBCASE("shard of another step") {
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    write_shards(tmp, layout, next, n);
    CheckpointData stale = next;
    stale.meta.step = 4;
    const auto ranges = layout.shard_ranges(n);
    const auto [b, e] = ranges[2];
    write_checkpoint_shard(tmp, 2, n, layout, ranges[2],
                           std::span<const float>(next.params).subspan(b, e - b), {}, {}, 4);
    const std::string msg = error_of(
        [&] { finish_sharded_checkpoint(run.path.string(), tmp, layout, next.meta, n, 5); });
    CHECK_MESSAGE(contains(msg, "shard-2.h5"), msg);
    CHECK_MESSAGE(contains(msg, "is of step 4"), msg);
    check_untouched();
  }
  SUBCASE("shards of another model") {
    ParamLayout other(tiny_dims(12));
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    write_shards(tmp, other, sample_data(other, 6, 3), n);
    const std::string msg = error_of(
        [&] { finish_sharded_checkpoint(run.path.string(), tmp, layout, next.meta, n, 5); });
    CHECK_MESSAGE(contains(msg, "shard-0.h5"), msg);
    CHECK_MESSAGE(contains(msg, "layout hash"), msg);
    check_untouched();
  }
  SUBCASE("wrong shard count") {
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    write_shards(tmp, layout, next, 2);
    const std::string msg = error_of(
        [&] { finish_sharded_checkpoint(run.path.string(), tmp, layout, next.meta, n, 5); });
    CHECK_MESSAGE(contains(msg, "shard-0.h5"), msg);
    check_untouched();
  }
  SUBCASE("a shard range that cuts a row is refused by the writer") {
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    const std::vector<float> w(5, 1.0f);
    CHECK(throws_as<InternalError>(
        [&] { write_checkpoint_shard(tmp, 0, 2, layout, {0, 5}, w, {}, {}, 6); }));
    CHECK_FALSE(fs::exists(tmp + "/shard-0.h5"));
  }
  SUBCASE("no temp folder") {
    CHECK(throws_as<IoError>([&] {
      write_checkpoint_shard(run / "nowhere", 0, 1, layout, {0, layout.total()}, next.params, {},
                             {}, 6);
    }));
  }
}

TEST_CASE("checkpoint sharded: a partial temp folder is never picked up") {
  ParamLayout layout(tiny_dims());
  TempDir run;
  const fs::path ck = run.path / "checkpoints";
  const CheckpointData first = sample_data(layout, 1, 1);
  publish_sharded_checkpoint(run.path.string(), layout, first, 2, 3);
  // Step 2: two of three shards written, then the job died (no index, no rename).
  const CheckpointData second = sample_data(layout, 2, 2);
  const std::string tmp = begin_checkpoint(run.path.string(), 2);
  write_shards(tmp, layout, second, 3, /*skip=*/2);
  // Step 3: every shard and even an index, but never renamed.
  const std::string tmp3 = begin_checkpoint(run.path.string(), 3);
  write_shards(tmp3, layout, sample_data(layout, 3, 3), 1);
  fs::copy_file(ck / step_name(1) / "checkpoint.h5", tmp3 + "/checkpoint.h5");
  // A server killed mid-write leaves its own temp file in the folder.
  std::ofstream(tmp + "/shard-2.h5.tmp.12345") << "\x89HDF\r\n\x1a\n";

  CHECK(find_latest_checkpoint(run.path.string()) == (ck / step_name(1)).string());
  CHECK_FALSE(fs::exists(tmp));
  CHECK_FALSE(fs::exists(tmp3));
  CHECK(read_link(ck / "latest") == step_name(1));
  CHECK(bitwise_equal(read_checkpoint((ck / "latest").string(), layout).params, first.params));

  // begin_checkpoint clears a stale temp folder of the same step.
  const std::string again = begin_checkpoint(run.path.string(), 2);
  std::ofstream(again + "/junk") << "x";
  CHECK(begin_checkpoint(run.path.string(), 2) == again);
  CHECK(fs::is_empty(again));
}

TEST_CASE("checkpoint sharded: kill -9 of the writer leaves the previous checkpoint usable") {
  // A child process publishes sharded checkpoints of a larger model in a loop (steps 2, 3, ...)
  // and is killed with SIGKILL at some point; whatever `latest` then names must read back
  // bitwise equal to the data of its step, and no temp folder may survive find_latest.
  ModelDims dims = tiny_dims(96);
  dims.Vp = 512;
  dims.T = 64;
  const ParamLayout layout(dims);
  for (int delay_ms : {5, 40, 150}) {
    TempDir run;
    const fs::path ck = run.path / "checkpoints";
    publish_sharded_checkpoint(run.path.string(), layout, sample_data(layout, 1, 1), 3, 2);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      try {
        for (int64_t step = 2;; ++step) {
          publish_sharded_checkpoint(run.path.string(), layout,
                                     sample_data(layout, step, static_cast<uint32_t>(step)), 3,
                                     2);
        }
      } catch (...) {
      }
      ::_exit(3);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status));
    const auto latest = find_latest_checkpoint(run.path.string());
    REQUIRE(latest.has_value());
    const CheckpointMeta meta = read_checkpoint_meta(*latest);
    INFO("killed after ", delay_ms, " ms; latest is step ", meta.step);
    const CheckpointData r = read_checkpoint(*latest, layout);
    CHECK(bitwise_equal(r.params,
                        sample_data(layout, meta.step, static_cast<uint32_t>(meta.step)).params));
    for (const auto& e : fs::directory_iterator(ck)) {
      const std::string name = e.path().filename().string();
      CHECK_MESSAGE(name.find(".tmp") == std::string::npos, name);
    }
  }
}

TEST_CASE("checkpoint sharded: h5py reads whole tensors through the virtual datasets from another cwd") {
  const std::string py = "/usr/bin/python3";
  if (!fs::exists(py) || shell(py + " -c 'import h5py, numpy' >/dev/null 2>&1") != 0) {
    MESSAGE("skipped: /usr/bin/python3 has no h5py and numpy");
    return;
  }
  ParamLayout layout(tiny_dims());
  TempDir run;
  const CheckpointData d = sample_data(layout, 12, 12);
  const std::string dir = publish_sharded_checkpoint(run.path.string(), layout, d, 3, 2);
  // A decoy: another sharded checkpoint whose shards sit in the cwd h5py runs from. HDF5 1.10
  // looks next to checkpoint.h5 before the cwd, so the decoy must not be read.
  TempDir decoy_run;
  const std::string decoy = publish_sharded_checkpoint(decoy_run.path.string(), layout,
                                                       sample_data(layout, 12, 99), 3, 2);
  const TensorSpec& wte = layout.find("transformer.wte.weight");
  const std::string expect = run / "wte.f32";
  {
    std::ofstream out(expect, std::ios::binary);
    out.write(reinterpret_cast<const char*>(d.params.data() + wte.offset),
              static_cast<std::streamsize>(wte.count * sizeof(float)));
  }
  const std::string code =
      "import h5py, numpy as np, sys\n"
      "f = h5py.File(sys.argv[1], 'r')\n"
      "x = f['model/transformer.wte.weight'][...]\n"
      "want = np.fromfile(sys.argv[2], dtype='<f4').reshape(x.shape)\n"
      "assert x.shape == (16, 8), x.shape\n"
      "assert x.dtype == np.float32\n"
      "assert np.array_equal(x.view(np.uint32), want.view(np.uint32)), 'values differ'\n"
      "assert f['model/transformer.wte.weight'].is_virtual\n"
      "assert sorted({s.file_name for s in f['model/transformer.wte.weight'].virtual_sources()})"
      " <= ['shard-0.h5', 'shard-1.h5', 'shard-2.h5']\n";
  const std::string script = run / "check.py";
  std::ofstream(script) << code;
  // Absolute path, through `latest`, and a relative path, each from a cwd other than the folder.
  CHECK(shell("cd / && " + py + " " + script + " " + dir + "/checkpoint.h5 " + expect) == 0);
  CHECK(shell("cd " + decoy + " && " + py + " " + script + " " + run.path.string() +
              "/checkpoints/latest/checkpoint.h5 " + expect) == 0);
  const std::string rel = fs::relative(fs::path(dir) / "checkpoint.h5", decoy).string();
  CHECK(shell("cd " + decoy + " && " + py + " " + script + " " + rel + " " + expect) == 0);
  // The independent h5py checker accepts the whole sharded checkpoint.
  const std::string checker = std::string(PTRAIN_TEST_SCRIPTS) + "/check_checkpoint.py";
  if (fs::exists(checker)) {
    CHECK(shell("cd / && " + py + " " + checker + " " + dir + " >/dev/null 2>&1") == 0);
  }
}

TEST_CASE("checkpoint sharded: h5dump -H reads the index") {
  if (shell("command -v h5dump >/dev/null 2>&1") != 0) {
    MESSAGE("skipped: h5dump is not installed (Debian: hdf5-tools)");
    return;
  }
  ParamLayout layout(tiny_dims());
  TempDir run;
  const std::string dir =
      publish_sharded_checkpoint(run.path.string(), layout, sample_data(layout, 2, 2), 2, 2);
  CHECK(shell("cd / && h5dump -H " + dir + "/checkpoint.h5 >/dev/null 2>&1") == 0);
  // And a data read through the virtual dataset, from another cwd.
  CHECK(shell("cd / && h5dump -d /model/transformer.wte.weight " + dir +
              "/checkpoint.h5 >/dev/null 2>&1") == 0);
}

// ---- one server's slice (read_checkpoint_range) -----------------------------------------------

namespace {

// The ranges of `n` servers, plus ranges that cut rows and tensors anywhere (a slice need not be
// row-aligned for the reader; servers' ranges are).
std::vector<std::pair<int64_t, int64_t>> probe_ranges(const ParamLayout& layout) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t n : {1, 2, 3, 5}) {
    for (const auto& r : layout.shard_ranges(n)) out.push_back(r);
  }
  const int64_t total = layout.total();
  out.push_back({0, 0});
  out.push_back({total, total});
  out.push_back({1, total - 1});
  out.push_back({total / 3 + 1, total / 3 + 2});
  out.push_back({total / 7, total / 2 + 3});
  return out;
}

template <class T>
std::vector<T> slice(const std::vector<T>& v, std::pair<int64_t, int64_t> r) {
  return std::vector<T>(v.begin() + r.first, v.begin() + r.second);
}

}  // namespace

TEST_CASE("checkpoint range: a slice of a single-file or sharded checkpoint equals the slice of the whole - bitwise") {
  ParamLayout layout(tiny_dims());
  const CheckpointData want = sample_data(layout, 12, 5);
  TempDir dir;
  const std::string single = dir / "single.h5";
  write_checkpoint_file(single, layout, want);
  std::vector<std::string> sources{single};
  for (int64_t n : {1, 2, 3}) {  // written by 1, 2 or 3 servers
    sources.push_back(publish_sharded_checkpoint(dir / ("run" + std::to_string(n)), layout,
                                                 want, n, 2));
  }
  for (const auto& src : sources) {
    for (const auto& r : probe_ranges(layout)) {
      CAPTURE(src);
      CAPTURE(r.first);
      CAPTURE(r.second);
      const CheckpointSlice s = read_checkpoint_range(src, layout, r);
      CHECK(s.meta.step == 12);
      CHECK(s.meta.data.position == want.meta.data.position);
      CHECK(bitwise_equal(s.params, slice(want.params, r)));
      CHECK(bitwise_equal(s.m, slice(want.m, r)));
      CHECK(bitwise_equal(s.v, slice(want.v, r)));
      const CheckpointSlice w = read_checkpoint_range(src, layout, r, /*with_optimizer=*/false);
      CHECK(bitwise_equal(w.params, slice(want.params, r)));
      CHECK(w.m.empty());
    }
  }
}

TEST_CASE("checkpoint range: verifies what it reads - and reads only the shards it needs") {
  ParamLayout layout(tiny_dims());
  TempDir run;
  const std::string dir =
      publish_sharded_checkpoint(run.path.string(), layout, sample_data(layout, 3, 9), 2, 2);
  const auto ranges = layout.shard_ranges(2);
  // Damage a tensor piece of shard 0: server 0 (and a range spanning both) refuse naming the
  // shard and the tensor; server 1 reads shard 1's pieces only and loads.
  const std::string t = tensor_in_shard(layout, 2, 0);
  poke_value(dir + "/shard-0.h5", "model/" + t);
  const std::string msg = error_of([&] { read_checkpoint_range(dir, layout, ranges[0]); });
  CHECK(throws_as<CheckpointError>([&] { read_checkpoint_range(dir, layout, ranges[0]); }));
  CHECK_MESSAGE(contains(msg, "shard-0.h5"), msg);
  CHECK_MESSAGE(contains(msg, t), msg);
  CHECK_MESSAGE(contains(msg, "fails its checksum"), msg);
  CHECK(throws_as<CheckpointError>([&] { read_checkpoint_range(dir, layout, {0, layout.total()}); }));
  CHECK_NOTHROW(read_checkpoint_range(dir, layout, ranges[1]));

  // A missing shard is refused by every reader (the headers of all shards are checked).
  fs::remove(dir + "/shard-0.h5");
  const std::string missing = error_of([&] { read_checkpoint_range(dir, layout, ranges[1]); });
  CHECK_MESSAGE(contains(missing, "shard-0.h5"), missing);
  CHECK_MESSAGE(contains(missing, "is missing"), missing);

  // Another model: the layout hash is refused before any tensor is read.
  TempDir other;
  const std::string single = other / "c.h5";
  write_checkpoint_file(single, layout, sample_data(layout, 1, 1));
  const ParamLayout wider(tiny_dims(16));
  const std::string lmsg = error_of([&] { read_checkpoint_range(single, wider, {0, 4}); });
  CHECK(throws_as<CheckpointError>([&] { read_checkpoint_range(single, wider, {0, 4}); }));
  CHECK_MESSAGE(contains(lmsg, "layout hash"), lmsg);
  // Single file: a tensor the range touches is checked whole; one it does not touch is not read.
  const TensorSpec& wpe = layout.find("transformer.wpe.weight");
  poke_value(single, "optimizer/m/transformer.wpe.weight");
  const std::pair<int64_t, int64_t> part{wpe.offset + 1, wpe.offset + 3};
  const std::string smsg = error_of([&] { read_checkpoint_range(single, layout, part); });
  CHECK_MESSAGE(contains(smsg, "optimizer/m/transformer.wpe.weight fails its checksum"), smsg);
  CHECK_NOTHROW(read_checkpoint_range(single, layout, part, /*with_optimizer=*/false));
  CHECK_NOTHROW(read_checkpoint_range(single, layout, {wpe.offset + wpe.count, layout.total()}));
}
