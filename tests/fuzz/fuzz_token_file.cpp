// libFuzzer target: the token-file reader (TokenFile::open and window reads), as `ptrain run`,
// `eval` and `grad` open data.train / data.val. The input is a whole .tok file. Invariants:
//   1. open() refuses with DataError or IoError naming the file, or accepts; nothing else escapes.
//   2. An accepted file: every token is below its vocab size, windows read in bounds.
// A random mutation almost never has valid CRC32Cs, so an input whose byte 63 is odd (a reserved
// header byte, which must be zero) first gets byte 63 cleared and both checksums recomputed: the
// checks behind them (dtype, sizes, every id) are reached.
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/util/hash.hpp"
#include "fuzz_support.hpp"

#include <cstring>
#include <vector>

using namespace ptrain;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> bytes(data, data + size);
  if (bytes.size() >= 64 && (bytes[63] & 1) != 0) {
    bytes[63] = 0;
    const uint32_t tok = crc32c(bytes.data() + 64, bytes.size() - 64);
    std::memcpy(bytes.data() + 32, &tok, 4);
    const uint32_t head = crc32c(bytes.data(), 36);
    std::memcpy(bytes.data() + 36, &head, 4);
  }
  const std::string& path = fuzz::scratch_path(".tok");
  fuzz::write_bytes(path, bytes.data(), bytes.size());
  try {
    const TokenFile f = TokenFile::open(path);
    for (int64_t i = 0; i < f.size(); ++i) {
      if (f.at(i) < 0 || f.at(i) >= f.vocab_size()) fuzz::invariant_failed("a token past vocab");
    }
    for (int64_t T : {1, 3, 16}) {
      std::vector<int32_t> w(static_cast<size_t>(T + 1));
      const int64_t n = f.num_windows(T);
      for (int64_t i = 0; i < n && i < 64; ++i) f.window(i, T, w);
    }
  } catch (const DataError&) {
  } catch (const IoError&) {
  } catch (const std::exception& e) {
    fuzz::invariant_failed("an unexpected exception from TokenFile", e.what());
  }
  return 0;
}
