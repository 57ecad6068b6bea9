// The final checkpoint of a job a test ran (weights, moments, data state), read with the layout of
// the test's config: what the launch tests compare bitwise between two runs.
#pragma once

#include "common/io/checkpoint_format.hpp"
#include "coordinator/coordinator.hpp"
#include "support/job_test_util.hpp"

#include <doctest/doctest.h>

namespace ptrain::testing {

inline CheckpointData final_state(const Config& c, const RunSummary& s) {
  REQUIRE(!s.last_checkpoint.empty());
  return read_checkpoint(s.last_checkpoint, layout_for(c), true);
}

}  // namespace ptrain::testing
