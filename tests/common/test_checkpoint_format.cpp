// The checkpoint file format (common/io/checkpoint_format): bitwise round trip of a single file,
// every refusal of the readers (with its message), the independent h5py checker; for the sharded
// form, every refusal naming the shard (missing, damaged, truncated, another layout, step or
// index) and what h5py and h5dump see from another cwd; one server's slice (read_checkpoint_range).
// Damage is done the way it happens: a truncated copy, a value rewritten through the HDF5 API (so
// the stored CRC no longer matches), an attribute rewritten.
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/checksum_block.hpp"
#include "common/io/hdf5.hpp"
#include "common/io/run_checkpoints.hpp"
#include "common/io/sharded_checkpoint.hpp"
#include "common/util/hash.hpp"
#include "ptrain/build_config.hpp"
#include "support/checkpoint_test_util.hpp"

#include <doctest/doctest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace fs = std::filesystem;
using namespace ptrain;
using namespace ptrain::testing;

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
    CHECK_MESSAGE(msg.find("damaged or truncated") != std::string::npos, msg);
    CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(cut); }));
  }
}

// Flips one bit at byte `at` of `path`, as damage on disk would (no HDF5 involved).
void flip_bit(const std::string& path, uint64_t at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(at));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(at));
  f.put(static_cast<char>(c ^ 0x10));
}

std::string head_of(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::string s(n, '\0');
  in.read(s.data(), static_cast<std::streamsize>(n));
  s.resize(static_cast<size_t>(in.gcount()));
  return s;
}

TEST_CASE("checkpoint: the checksum block holds the CRC32C of the HDF5 part after it") {
  TempDir dir;
  ParamLayout layout(tiny_dims());
  const std::string file = dir / "c.h5";
  write_checkpoint_file(file, layout, sample_data(layout, 1, 1));
  const std::string head = head_of(file, kChecksumBlockBytes);
  REQUIRE(head.size() == kChecksumBlockBytes);
  const uint64_t length = fs::file_size(file) - kChecksumBlockBytes;
  const std::string rest = head_of(file, fs::file_size(file)).substr(kChecksumBlockBytes);
  const std::string text = fmt::format(
      "ptrain-checkpoint-checksum\nformat_version {}\nlength {}\ncrc32c {:#010x}\n",
      kCheckpointFormatVersion, length, crc32c(rest.data(), rest.size()));
  CHECK(head.substr(0, text.size()) == text);
  CHECK(head.find_first_not_of('\0', text.size()) == std::string::npos);
  CHECK(head_of(file, kChecksumBlockBytes + 8).substr(kChecksumBlockBytes) == "\x89HDF\r\n\x1a\n");
  CHECK(verify_checksum_block(file, file) == ChecksumBlockState::kVerified);
  // Every writer adds it: the atomic single file, each shard and the index.
  const std::string atomic = dir / "atomic.h5";
  write_checkpoint_file_atomic(atomic, layout, sample_data(layout, 2, 2));
  CHECK(verify_checksum_block(atomic, atomic) == ChecksumBlockState::kVerified);
  TempDir run;
  const std::string ck = publish_sharded_checkpoint(run.path.string(), layout,
                                                    sample_data(layout, 3, 3), 2, 1);
  for (const char* name : {"checkpoint.h5", "shard-0.h5", "shard-1.h5"}) {
    CHECK_MESSAGE(verify_checksum_block(ck + "/" + name, name) == ChecksumBlockState::kVerified,
                  name);
  }
}

TEST_CASE("checkpoint: damage anywhere is refused by the checksum block before HDF5 opens the file") {
  TempDir dir;
  ParamLayout layout(tiny_dims());
  const std::string good = dir / "good.h5";
  write_checkpoint_file(good, layout, sample_data(layout, 1, 1));
  const uint64_t size = fs::file_size(good);
  // A bit in the superblock, an object header, the data, the last bytes; a bit of the block's own
  // crc32c and length fields; the file cut short or grown.
  for (const uint64_t at : {uint64_t{512 + 9}, uint64_t{512 + 200}, size / 2, size - 3,
                            uint64_t{70}, uint64_t{50}}) {
    CAPTURE(at);
    const std::string bad = dir / "bad.h5";
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    flip_bit(bad, at);
    const std::string msg = error_of([&] { read_checkpoint_meta(bad); });
    CHECK(throws_as<CheckpointError>([&] { read_checkpoint_meta(bad); }));
    CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(bad); }));
    CHECK(throws_as<CheckpointError>([&] { read_checkpoint(bad, layout); }));
    CHECK_MESSAGE(contains(msg, bad), msg);
    CHECK_MESSAGE(contains(msg, "damaged or truncated"), msg);
  }
  {
    const std::string bad = dir / "bad.h5";
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    flip_bit(bad, size / 2);
    const std::string msg = error_of([&] { read_checkpoint_meta(bad); });
    // Expected and actual checksums, both named.
    const std::string head = head_of(good, 100);
    const std::string expected = head.substr(head.find("crc32c ") + 7, 10);
    CHECK_MESSAGE(contains(msg, "expects crc32c " + expected), msg);
    CHECK_MESSAGE(contains(msg, "the file has crc32c 0x"), msg);
  }
  for (const double frac : {0.0, 0.1, 0.5, 0.999}) {
    CAPTURE(frac);
    const std::string cut = dir / "cut.h5";
    fs::copy_file(good, cut, fs::copy_options::overwrite_existing);
    truncate_file(cut, frac);
    const std::string msg = error_of([&] { read_checkpoint_meta(cut); });
    CHECK(throws_as<CheckpointError>([&] { read_checkpoint_meta(cut); }));
    CHECK_MESSAGE(contains(msg, "damaged or truncated"), msg);
  }
  {
    const std::string longer = dir / "longer.h5";
    fs::copy_file(good, longer, fs::copy_options::overwrite_existing);
    std::ofstream(longer, std::ios::app | std::ios::binary) << "tail";
    const std::string msg = error_of([&] { read_checkpoint_meta(longer); });
    CHECK_MESSAGE(contains(msg, fmt::format("over {} bytes", size - kChecksumBlockBytes + 4)), msg);
  }
  // A damaged tensor through HDF5 without the block rewritten: the block sees it first.
  const std::string poked = dir / "poked.h5";
  fs::copy_file(good, poked, fs::copy_options::overwrite_existing);
  poke_value(poked, "model/transformer.wte.weight", Reseal::kNo);
  const std::string msg = error_of([&] { read_checkpoint(poked, layout); });
  CHECK_MESSAGE(contains(msg, "damaged or truncated"), msg);
  CHECK_MESSAGE(contains(msg, "checksum block"), msg);
}

TEST_CASE("checkpoint: a file without the checksum block (written before it) still reads") {
  // A small checkpoint (step 3, the byte tokenizer, 1 layer of width 8) written by the checkpoint
  // code as it was before the block existed (kept in tests/fixtures): HDF5's signature at offset 0,
  // format_version 1.
  const std::string file = std::string(PTRAIN_TEST_FIXTURES) + "/checkpoint_without_checksum_block.h5";
  REQUIRE(fs::exists(file));
  CHECK(verify_checksum_block(file, file) == ChecksumBlockState::kAbsent);
  CHECK_NOTHROW(verify_checkpoint(file));
  CHECK(read_checkpoint_meta(file).step == 3);
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
    reseal(file);  // the checks behind the checksum block are reached
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
    reseal(file);  // the checks behind the checksum block are reached
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
    reseal(file);  // the checks behind the checksum block are reached
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
    reseal(file);  // the checks behind the checksum block are reached
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
    reseal(file);  // the checks behind the checksum block are reached
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

// ---- Sharded form: shard-K.h5 per server plus checkpoint.h5 (virtual datasets) ---------------

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
      CHECK_MESSAGE((contains(msg, "damaged or truncated") || contains(msg, "not an HDF5 file")),
                    msg);
      CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(dir); }));
      fs::rename(copy, shard1);
    }
    CHECK_NOTHROW(verify_checkpoint(dir));
    fs::resize_file(shard1, fs::file_size(shard1) / 2);
    refused_by_all("shard-1.h5", "damaged or truncated");
  }
  SUBCASE("shard of another layout") {
    {
      h5::File f = h5::File::open(dir + "/shard-0.h5", h5::Access::kReadWrite);
      f.set_attr("layout_hash", ParamLayout(tiny_dims(12)).hash());
      f.close();
      reseal(dir + "/shard-0.h5");  // the checks behind the checksum block are reached
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
      reseal(dir + "/shard-1.h5");  // the checks behind the checksum block are reached
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
      reseal(dir + "/checkpoint.h5");  // the checks behind the checksum block are reached
    }
    const std::string msg = error_of([&] { read_checkpoint(dir, layout); });
    CHECK_MESSAGE(contains(msg, "elsewhere.h5"), msg);
    CHECK(throws_as<CheckpointError>([&] { verify_checkpoint(dir); }));
  }
  // Whatever was damaged, the other checkpoint still reads back.
  CHECK_NOTHROW(read_checkpoint((ck / step_name(10)).string(), layout));
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
