// Turns the window indices a worker was given for a step into micro-batches of token ids.
// Window i of a token file = tokens [i·T, i·T + T + 1) (docs/contracts.md "Data").
#pragma once

#include "common/io/token_file.hpp"

#include <cstdint>
#include <span>
#include <vector>

namespace ptrain {

class BatchLoader {
 public:
  // `file` must outlive the loader. T = model.seq_len.
  BatchLoader(const TokenFile& file, int64_t T);

  // Copies `windows` into `out` as (windows.size(), T+1) int32, in order. Throws DataError naming
  // the file when a window index is out of range.
  void load(std::span<const int64_t> windows, std::vector<int32_t>& out) const;

  int64_t T() const { return T_; }
  int64_t num_windows() const { return num_windows_; }

 private:
  const TokenFile& file_;
  int64_t T_;
  int64_t num_windows_;
};

// Splits n sequences into consecutive micro-batches of at most `micro` sequences:
// returns [begin, end) pairs (empty for n == 0).
std::vector<std::pair<int64_t, int64_t>> micro_batches(int64_t n, int64_t micro);

}  // namespace ptrain
