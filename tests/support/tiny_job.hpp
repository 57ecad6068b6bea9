// The tiny model of the multi-process tests (dist, mpi): its layout (T 16, L 1, NH 2, C 16, byte
// vocabulary) and the weights of a run's latest checkpoint.
#pragma once

#include "common/config/config.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/tensor/param_layout.hpp"

#include <string>
#include <vector>

namespace ptrain::testing {

inline ParamLayout tiny_layout() {
  ModelConfig m;
  m.seq_len = 16;
  m.n_layer = 1;
  m.n_head = 2;
  m.n_embd = 16;
  return ParamLayout(model_dims(m, 257));
}

inline std::vector<float> final_weights(const std::string& run_dir) {
  return read_checkpoint(run_dir + "/checkpoints/latest/checkpoint.h5", tiny_layout(), false)
      .params;
}

}  // namespace ptrain::testing
