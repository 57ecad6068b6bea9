// The checkpoints/ folder of a run (common/io/run_checkpoints): publish, `latest` as a relative
// symlink, keep-K, re-publishing a step, and find_latest_checkpoint: the stale temporaries of a
// killed publish removed and the fallback when `latest` is damaged, dangling or missing.
#include "common/io/checkpoint_format.hpp"
#include "common/io/run_checkpoints.hpp"
#include "support/checkpoint_test_util.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace ptrain;
using namespace ptrain::testing;

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
