// cluster.launch: mpi and cluster.transport: how they parse, resolve and refuse.
#include <doctest/doctest.h>

#include "common/config/config.hpp"
#include "common/error.hpp"
#include "ptrain/build_config.hpp"

#include <string>

using namespace ptrain;

namespace {
const std::string kBase = "data: {train: /abs/train.tok}\n";

Config parse(const std::string& extra, std::vector<ConfigOverride> sets = {}) {
  return parse_config_text(kBase + extra, "cfg.yaml", "/base", sets);
}

std::string refusal(const std::string& extra) {
  try {
    (void)parse(extra);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("config: cluster.transport auto is TCP except under cluster.launch mpi") {
  CHECK(effective_transport(parse("").cluster) == DataTransport::kTcp);
  CHECK(effective_transport(parse("cluster: {launch: threads}\n").cluster) == DataTransport::kTcp);
  CHECK(effective_transport(parse("cluster: {transport: tcp}\n").cluster) == DataTransport::kTcp);
  if (PTRAIN_HAS_MPI) {
    const Config c = parse("cluster: {launch: mpi}\n");
    CHECK(c.cluster.transport == DataTransport::kAuto);
    CHECK(effective_transport(c.cluster) == DataTransport::kMpi);
    CHECK(effective_transport(parse("cluster: {launch: mpi, transport: tcp}\n").cluster) ==
          DataTransport::kTcp);
    // The resolved text keeps the word and reads back the same.
    CHECK(parse_config_text(c.to_yaml(), "<checkpoint>", "/x") == c);
  }
}

TEST_CASE("config: cluster.transport mpi without the MPI launch is refused naming both keys") {
  const std::string why = refusal("cluster: {transport: mpi}\n");
  CAPTURE(why);
  if (PTRAIN_HAS_MPI) {
    CHECK(why.find("cluster.transport: mpi needs cluster.launch: mpi") != std::string::npos);
  } else {
    CHECK(why.find("not implemented yet") != std::string::npos);
  }
  CHECK(refusal("cluster: {transport: infiniband}\n").find("one of auto, tcp, mpi") !=
        std::string::npos);
}

TEST_CASE("config: cluster.launch mpi is refused as not implemented by a build without MPI") {
  const std::string why = refusal("cluster: {launch: mpi}\n");
  if (PTRAIN_HAS_MPI) {
    CHECK(why.empty());
  } else {
    CHECK(why.find("cluster.launch: 'mpi' is not implemented yet") != std::string::npos);
  }
}
