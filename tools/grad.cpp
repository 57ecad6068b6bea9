// Loss and gradient of a checkpoint on the first windows of a token file (grad.hpp).
#include "tools/grad.hpp"

#include "common/error.hpp"
#include "common/io/hdf5.hpp"
#include "common/io/token_file.hpp"
#include "common/util/hash.hpp"
#include "tools/checkpoint_model.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/model/backend.hpp"
#include "common/data/mlm.hpp"
#include "worker/model/bert.hpp"
#include "worker/model/gpt.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <vector>

namespace ptrain::tools {
namespace {

// The root attributes naming where the gradient comes from.
void write_header(h5::File& f, const CheckpointModel& cm, const TokenFile& tf, int64_t B) {
  f.set_attr("checkpoint", cm.file);
  f.set_attr("data", tf.path());
  f.set_attr("step", cm.meta.step);
  f.set_attr("batch_size", B);
  f.set_attr("seq_len", cm.layout->dims().T);
  f.set_attr("layout_hash", cm.layout->hash());
}

// The parameter gradients under /grad, each with its CRC32C.
void write_grads(h5::File& f, const ParamLayout& layout, const std::vector<float>& grads) {
  h5::Group g = f.create_group("grad");
  for (const auto& t : layout.tensors()) {
    std::span<const float> v(grads.data() + t.offset, static_cast<size_t>(t.count));
    h5::Dataset ds = g.create_dataset(t.name, h5::DType::kFloat32, t.shape);
    ds.write(v);
    ds.set_attr("crc32c", crc32c(v.data(), v.size() * sizeof(float)));
  }
}

// BERT: window b gets the fixed evaluation masks of window b (common/data/mlm.hpp); the loss is
// the mean over the predicted positions (BertForMaskedLM's), so grad_scale = 1/M.
GradResult write_bert_grad(const GradOptions& o, const CheckpointModel& cm, const TokenFile& tf,
                           const std::vector<int32_t>& windows) {
  const ParamLayout& layout = *cm.layout;
  const int64_t B = o.batch_size, T = layout.dims().T;
  const BertTokens tok = bert_tokens(layout.dims());
  std::vector<int32_t> inputs(static_cast<size_t>(B * T)), labels(inputs.size());
  int64_t M = 0;
  for (int64_t b = 0; b < B; ++b) {
    mlm_example(std::span<const int32_t>(windows).subspan(static_cast<size_t>(b * (T + 1)),
                                                          static_cast<size_t>(T + 1)),
                T, tok, mlm_mask_key(0, kEvalMaskStep, b),
                std::span<int32_t>(inputs).subspan(static_cast<size_t>(b * T), static_cast<size_t>(T)),
                std::span<int32_t>(labels).subspan(static_cast<size_t>(b * T), static_cast<size_t>(T)));
  }
  for (int32_t y : labels) M += y != kIgnoreLabel;
  auto backend = make_backend_for(o.device, cm.config);
  const int64_t micro = std::clamp<int64_t>(cm.config.train.micro_batch, 1, B);
  Bert bert(layout, *backend, micro);
  GptState state(layout, *backend);
  state.upload_params(cm.params);
  state.zero_grads();
  LossSum total;
  for (int64_t b0 = 0; b0 < B; b0 += micro) {
    const int64_t n = std::min(micro, B - b0);
    const auto part = [&](const std::vector<int32_t>& v) {
      return std::span<const int32_t>(v).subspan(static_cast<size_t>(b0 * T),
                                                 static_cast<size_t>(n * T));
    };
    const LossSum ls = bert.mlm_forward_backward(state, part(inputs), part(labels), n, T,
                                                 1.0f / static_cast<float>(M));
    total.loss_sum += ls.loss_sum;
    total.tokens += ls.tokens;
  }
  std::vector<float> grads(static_cast<size_t>(layout.total()));
  state.download_grads(grads);
  const float loss = static_cast<float>(total.mean());
  h5::write_file_atomically(o.out, [&](h5::File& f) {
    write_header(f, cm, tf, B);
    f.set_attr("arch", "bert");
    f.create_dataset("inputs", h5::DType::kInt32, {B, T}).write(std::span<const int32_t>(inputs));
    f.create_dataset("labels", h5::DType::kInt32, {B, T}).write(std::span<const int32_t>(labels));
    f.create_dataset("loss", h5::DType::kFloat32, {}).write(std::span<const float>(&loss, 1));
    write_grads(f, layout, grads);
  });
  spdlog::info("wrote {}: masked-LM loss {:.6f} over {} predicted positions of {} sequences of {} "
               "tokens (step {} of {})",
               o.out, loss, M, B, T, cm.meta.step, cm.file);
  return GradResult{loss};
}

}  // namespace

GradResult write_grad(const GradOptions& o) {
  const CheckpointModel cm = open_checkpoint_model(o.checkpoint);
  const ParamLayout& layout = *cm.layout;
  const int64_t B = o.batch_size;
  const int64_t T = layout.dims().T;
  const TokenFile tf = TokenFile::open(o.data);
  check_token_file_vocab(tf, cm);
  const int64_t have = tf.num_windows(T);
  if (have < B) {
    throw DataError(fmt::format("{} has {} windows of T+1 = {} tokens, --batch-size {} needs {}",
                                tf.path(), have, T + 1, B, B));
  }
  std::vector<int32_t> inputs;
  read_windows(tf, 0, B, T, layout.dims().V, inputs);
  if (layout.dims().arch == ModelArch::kBert) return write_bert_grad(o, cm, tf, inputs);

  auto backend = make_backend_for(o.device, cm.config);
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

  h5::write_file_atomically(o.out, [&](h5::File& f) {
    write_header(f, cm, tf, B);
    f.create_dataset("inputs", h5::DType::kInt32, {B, T + 1}).write(std::span<const int32_t>(inputs));
    f.create_dataset("loss", h5::DType::kFloat32, {}).write(std::span<const float>(&loss, 1));
    write_grads(f, layout, grads);
  });
  spdlog::info("wrote {}: loss {:.6f} over {} windows of {} tokens (step {} of {})", o.out,
               loss, B, T, cm.meta.step, cm.file);
  return GradResult{loss};
}

}  // namespace ptrain::tools
