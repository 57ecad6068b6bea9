// libFuzzer target: the checkpoint reader (read_checkpoint_meta, verify_checkpoint, and the
// layout-checked read_checkpoint), as `ptrain run` (resume), `eval`, `generate` and `inspect` run
// it. The input is a whole checkpoint file; the seed corpus holds real checkpoints (written by the
// -write_seeds flag: a small model's `ptrain init` file, with its checksum block) and damaged ones
// (truncated, bytes flipped in the checksum block, the superblock, the data and the attributes).
// Invariants:
//   1. A damaged file is refused with CheckpointError or IoError naming it; nothing else escapes.
//   2. A file that verifies reads back for its own layout with every CRC32C checked.
// The checksum block (common/io/checksum_block.hpp) is checked before HDF5 parses anything, so
// most mutations stop there; what passes it (or a file without the block, the form written before
// it existed) is parsed by HDF5, and a crash inside libhdf5 is a finding (docs/reliability.md).
#include "common/config/config.hpp"
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/tensor/param_layout.hpp"
#include "fuzz_support.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

using namespace ptrain;

namespace {

ParamLayout small_layout() {
  ModelConfig m;
  m.seq_len = 8;
  m.n_layer = 1;
  m.n_head = 2;
  m.n_embd = 8;
  return ParamLayout(model_dims(m, 16));
}

void write_seeds(const std::string& dir) {
  std::filesystem::create_directories(dir);
  const ParamLayout layout = small_layout();
  CheckpointData d;
  d.params.assign(static_cast<size_t>(layout.total()), 0.25f);
  for (size_t i = 0; i < d.params.size(); ++i) d.params[i] = static_cast<float>(i % 7) * 0.125f;
  d.meta.step = 3;
  d.meta.config_yaml = "run: {seed: 1}\n";
  d.meta.tokenizer_json = "{}";
  const std::string good = dir + "/good.h5";
  write_checkpoint_file(good, layout, d);
  std::ifstream in(good, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  auto save = [&](const std::string& name, std::vector<char> b) {
    std::ofstream(dir + "/" + name, std::ios::binary).write(b.data(), static_cast<std::streamsize>(b.size()));
  };
  save("truncated-half.h5", std::vector<char>(bytes.begin(), bytes.begin() + bytes.size() / 2));
  // In the checksum block (9, 40), in the superblock after it (512 + 9, 512 + 40), the data, the
  // end.
  for (size_t at : {size_t{9}, size_t{40}, size_t{521}, size_t{552}, bytes.size() / 3,
                    bytes.size() - 20}) {
    std::vector<char> b = bytes;
    b[at] ^= 0x5a;
    save("flipped-" + std::to_string(at) + ".h5", b);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  for (int i = 1; i < *argc; ++i) {
    const std::string a = (*argv)[i];
    if (a.rfind("-write_seeds=", 0) == 0) {
      write_seeds(a.substr(13));
      for (int j = i; j + 1 < *argc; ++j) (*argv)[j] = (*argv)[j + 1];
      --*argc;
      --i;
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = fuzz::scratch_path(".h5");
  fuzz::write_bytes(path, data, size);
  try {
    (void)read_checkpoint_meta(path);
    verify_checkpoint(path);
    static const ParamLayout layout = small_layout();
    try {
      const CheckpointData d = read_checkpoint(path, layout);
      if (d.params.size() != static_cast<size_t>(layout.total())) {
        fuzz::invariant_failed("read_checkpoint returned the wrong size");
      }
    } catch (const CheckpointError&) {  // another layout: refused by name
    }
  } catch (const CheckpointError& e) {
    if (std::string(e.what()).find(path) == std::string::npos) {
      fuzz::invariant_failed("a refusal that does not name the file", e.what());
    }
  } catch (const IoError&) {
  } catch (const std::exception& e) {
    fuzz::invariant_failed("an unexpected exception from the checkpoint reader", e.what());
  }
  return 0;
}
