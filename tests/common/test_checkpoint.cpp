// Checkpoint format and checkpoints/ folder: bitwise round trip, every refusal of the reader (with
// its message), publish / latest / keep-K, and the fallback when `latest` is damaged. Damage is
// done the way it happens: a truncated copy, a value rewritten through the HDF5 API (so the stored
// CRC no longer matches), an attribute rewritten, a killed publish's leftovers.
#include "common/error.hpp"
#include "common/io/checkpoint.hpp"
#include "common/io/hdf5.hpp"
#include "common/util/hash.hpp"
#include "ptrain/build_config.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <sys/wait.h>

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
