// Flash-style attention on the GPU: the kernels behind the CUDA backend's attention_forward /
// attention_backward (worker/model/backend.hpp gives the op contract; the backend calls these on
// its stream). fp32 throughout: the scores, the online-softmax state and the log-sum-exp must be
// fp32 in any precision mode (the issue with bf16 is the exponent of long rows' sums and the
// cancellation in dP − D), and Q/K/V arrive as the fp32 output of the QKV product; a bf16-input
// variant would only change the tile loads.
//
// Algorithm (FlashAttention-2 style, one thread per query row or key row, tiles of kTile = 32):
//   forward   grid (⌈T/32⌉, NH, B). A block loads its 32 query rows into shared memory, then for
//             each key tile (causal: only tiles at or before its last row) loads K and V (32 rows
//             each), computes its row's 32 scores s = q·k/√hd in registers (-∞ for invisible keys),
//             folds them into the row's online-softmax state (m, l) with kmath::OnlineSoftmaxRow,
//             rescales its accumulator and adds Σ p·v. At the end out = acc / l and
//             lse = m + log l. Nothing of size T×T exists in memory.
//   backward  three kernels, no atomics, so the result is bitwise deterministic:
//             1. D = rowsum(dO ∘ O) per (b, h, row), into `scratch` (B,NH,T);
//             2. dK, dV: grid over key tiles; each thread owns one key row and walks the query
//                tiles (causal: from its own tile on), recomputing p = e^(s − lse) and
//                dS = p·(dP − D)·scale, accumulating dV += p·dO and dK += dS·q in shared memory;
//             3. dQ: grid over query tiles; each thread owns one query row and walks the key
//                tiles, accumulating dQ += dS·k.
//             Each output element is written by exactly one thread after a fixed-order sum.
//
// How it matches the CPU oracle: the CPU backend (worker/backend/cpu/cpu_backend.cpp) runs the
// same algorithm with 64×128 tiles and sgemm for the tile products; both call the same scalar
// functions of worker/backend/kernel_math.hpp (key visibility, the online-softmax row state,
// e^x, the probability recomputed from lse, the softmax backward). The CPU tests check those
// against an fp64 reference (causal and padded bidirectional, sizes crossing tile edges) and
// the whole models against PyTorch; the two backends then differ only in summation order of the
// dot products and the tile size of the online rescaling (fp32 rounding, ~1e-6 relative).
//
// Limits: head size hd = C/NH ≤ 128 (shared memory per block ≤ ~100 KB at hd = 128); every row
// needs one visible key (as the op contract says). Correctness first: one thread per row keeps
// the kernels short and reviewable; a tensor-core (mma) version is the step after measuring.
// All pointers are device memory; the functions only enqueue work on `stream` (no sync) and
// throw ptrain::InternalError naming file:line and the CUDA message if a launch fails.
#pragma once

#include "worker/model/backend.hpp"

#include <cuda_runtime.h>

namespace ptrain::cuda {

// out (B,T,C), lse (B,NH,T) from qkv (B,T,3C) (columns [Q|K|V], head h at h·hd of each block).
void flash_attention_forward(float* out, float* lse, const float* qkv, const AttentionShape& s,
                             cudaStream_t stream);

// dqkv (B,T,3C) WRITTEN; scratch (B,NH,T) overwritten with rowsum(dout ∘ out); out, lse as
// returned by flash_attention_forward for this qkv and shape.
void flash_attention_backward(float* dqkv, float* scratch, const float* dout, const float* out,
                              const float* qkv, const float* lse, const AttentionShape& s,
                              cudaStream_t stream);

}  // namespace ptrain::cuda
