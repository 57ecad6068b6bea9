// The outer optimizer of cluster.sync local (DiLoCo; docs/local_sgd.md): SGD with Nesterov momentum
// exactly as torch.optim.SGD(lr, momentum=μ, nesterov=True) (dampening 0, no weight decay), applied
// by each server to its slice with the averaged pseudo-gradient Δ (start weights − weights after the
// workers' inner steps) as the gradient:
//   buf ← μ·buf + Δ          (buf starts at zero, so the first step's buf is Δ, as torch's clone)
//   p   ← p − lr·(Δ + μ·buf)
// In float, in torch's operation order; element-wise (OpenMP), so neither the thread count nor
// how the vector is cut into server slices changes a bit. buf is the server's momentum buffer
// (ShardStore::momentum), kept in checkpoints as /optimizer/outer_momentum.
#pragma once

#include <span>

namespace ptrain {

struct OuterSgdOptions {
  double lr = 0.7;        // cluster.outer_lr
  double momentum = 0.9;  // cluster.outer_momentum, in [0, 1)
};

// One outer step on a slice: `delta` is the averaged pseudo-gradient. Spans have equal sizes.
void outer_sgd_update(const OuterSgdOptions& o, std::span<const float> delta,
                      std::span<float> weights, std::span<float> momentum);

}  // namespace ptrain
