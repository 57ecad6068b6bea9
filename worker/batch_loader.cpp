#include "worker/batch_loader.hpp"

#include "common/error.hpp"

#include <fmt/format.h>

namespace ptrain {

BatchLoader::BatchLoader(const TokenFile& file, int64_t T)
    : file_(file), T_(T), num_windows_(file.num_windows(T)) {
  PTRAIN_ENFORCE(T >= 1, "sequence length {}", T);
}

void BatchLoader::load(std::span<const int64_t> windows, std::vector<int32_t>& out) const {
  const auto W = static_cast<size_t>(T_ + 1);
  out.resize(windows.size() * W);
  for (size_t i = 0; i < windows.size(); ++i) {
    const int64_t w = windows[i];
    if (w < 0 || w >= num_windows_) {
      throw DataError(fmt::format("{}: window {} requested, the file has {} windows of {} tokens",
                                  file_.path(), w, num_windows_, T_ + 1));
    }
    file_.window(w, T_, std::span<int32_t>(out.data() + i * W, W));
  }
}

std::vector<std::pair<int64_t, int64_t>> micro_batches(int64_t n, int64_t micro) {
  PTRAIN_ENFORCE(micro >= 1, "micro batch {}", micro);
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t b = 0; b < n; b += micro) out.emplace_back(b, std::min(n, b + micro));
  return out;
}

}  // namespace ptrain
