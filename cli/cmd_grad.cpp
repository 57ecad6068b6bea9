// `ptrain grad --checkpoint CKPT --data FILE.tok --batch-size B --out OUT.h5 [--device D]`: one
// gradient, for comparisons with other implementations (PyTorch). Takes the first B windows of
// FILE.tok in file order (T = model.seq_len), computes the mean cross-entropy over the B·T targets
// and its gradient (grad_scale 1/(B·T), micro-batches of train.micro_batch sequences folded in
// fp32 as a worker folds them, worker/model/gpt_state.hpp), on --device (default: the stored
// device.type), and writes
//   /inputs       int32 (B, T+1)   the windows
//   /loss         float32 scalar   mean loss
//   /grad/<name>  float32, each tensor at full shape (attr crc32c like a checkpoint's)
// plus root attributes naming the checkpoint, data file, step and layout hash. Everything is
// checked before the output is written, and it is written atomically (no file on failure).
#include "cli/checkpoint_model.hpp"
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "common/io/hdf5.hpp"
#include "common/io/token_file.hpp"
#include "common/util/hash.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>

namespace ptrain::cli {

void add_grad_command(CLI::App& app, Action& action) {
  struct Args {
    std::string checkpoint, data, out, device;
    int64_t batch_size = 0;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "grad", "Loss and gradient of a checkpoint on the first B windows of a token file");
  sub->add_option("--checkpoint", args->checkpoint, "Checkpoint .h5 file or its directory")->required();
  sub->add_option("--data", args->data, ".tok file; its first B windows (file order) are used")
      ->required();
  sub->add_option("--batch-size", args->batch_size, "Sequences B")->required();
  sub->add_option("--out", args->out, "HDF5 file to write (/inputs, /loss, /grad/<name>)")->required();
  add_device_option(sub, args->device);
  sub->callback([&action, args] {
    action = [args] {
      if (!args->device.empty()) check_device(args->device, "--device");  // before any work
      if (args->batch_size < 1) {
        throw UsageError(fmt::format("--batch-size must be >= 1, got {}", args->batch_size));
      }
      const CheckpointModel cm = open_checkpoint_model(args->checkpoint);
      const ParamLayout& layout = *cm.layout;
      const int64_t B = args->batch_size;
      const int64_t T = layout.dims().T;
      const TokenFile tf = TokenFile::open(args->data);
      check_token_file_vocab(tf, cm);
      const int64_t have = tf.num_windows(T);
      if (have < B) {
        throw DataError(fmt::format("{} has {} windows of T+1 = {} tokens, --batch-size {} needs {}",
                                    tf.path(), have, T + 1, B, B));
      }
      std::vector<int32_t> inputs;
      read_windows(tf, 0, B, T, layout.dims().V, inputs);

      auto backend = tool_backend(args->device, cm.config);
      const int64_t micro = std::clamp<int64_t>(cm.config.train.micro_batch, 1, B);
      Gpt gpt(layout, *backend, micro);
      GptState state(layout, *backend);
      state.upload_params(cm.params);
      state.zero_grads();
      const float scale = 1.0f / static_cast<float>(B * T);
      LossSum total;
      for (int64_t b0 = 0; b0 < B; b0 += micro) {
        const int64_t n = std::min(micro, B - b0);
        const LossSum ls = gpt.forward_backward(
            state,
            std::span<const int32_t>(inputs).subspan(static_cast<size_t>(b0 * (T + 1)),
                                                     static_cast<size_t>(n * (T + 1))),
            n, T, scale);
        total.loss_sum += ls.loss_sum;
        total.tokens += ls.tokens;
      }
      std::vector<float> grads(static_cast<size_t>(layout.total()));
      state.download_grads(grads);
      const float loss = static_cast<float>(total.mean());

      h5::write_file_atomically(args->out, [&](h5::File& f) {
        f.set_attr("checkpoint", cm.file);
        f.set_attr("data", tf.path());
        f.set_attr("step", cm.meta.step);
        f.set_attr("batch_size", B);
        f.set_attr("seq_len", T);
        f.set_attr("layout_hash", layout.hash());
        f.create_dataset("inputs", h5::DType::kInt32, {B, T + 1}).write(std::span<const int32_t>(inputs));
        f.create_dataset("loss", h5::DType::kFloat32, {}).write(std::span<const float>(&loss, 1));
        h5::Group g = f.create_group("grad");
        for (const auto& t : layout.tensors()) {
          std::span<const float> v(grads.data() + t.offset, static_cast<size_t>(t.count));
          h5::Dataset ds = g.create_dataset(t.name, h5::DType::kFloat32, t.shape);
          ds.write(v);
          ds.set_attr("crc32c", crc32c(v.data(), v.size() * sizeof(float)));
        }
      });
      spdlog::info("wrote {}: loss {:.6f} over {} windows of {} tokens (step {} of {})", args->out,
                   loss, B, T, cm.meta.step, cm.file);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
