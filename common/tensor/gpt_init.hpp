// GPT-2 initialisation of the flat parameter vector (or of any slice of it): N(0, 0.02) weights,
// residual projections (attn.c_proj, mlp.c_proj) N(0, 0.02/sqrt(2L)), zero biases, LayerNorm
// weight 1, padded wte rows 0. The same rules initialise a BERT layout as Hugging Face's
// BertPreTrainedModel._init_weights does: every matrix and embedding N(0, 0.02) (BERT has no
// residual-scaled projections), biases (cls.predictions.bias included) 0, LayerNorm weights 1.
//
// Element i of tensor k is a pure function of (seed, k, i): a counter-based generator, so any
// thread, and any parameter server holding only a slice, computes exactly the value that a full
// initialisation puts there — bitwise, whatever the slicing or the thread count. `ptrain init`
// fills the whole vector; each server fills only its own range.
#pragma once

#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <span>

namespace ptrain {

// The whole vector: params.size() == layout.total().
void init_gpt_params(const ParamLayout& layout, uint64_t seed, std::span<float> params);

// The slice [begin, begin + out.size()) of the vector that init_gpt_params would produce.
// Throws InternalError when the slice is not inside [0, layout.total()).
void init_gpt_params_range(const ParamLayout& layout, uint64_t seed, int64_t begin,
                           std::span<float> out);

}  // namespace ptrain
