// Launchers of the CUDA backend's custom kernels (cuda_kernels.cu). Each queues its kernel(s) on
// `s` and returns; the caller checks the launch (PTRAIN_CUDA_CHECK_LAUNCH). Every pointer is
// device memory. Shapes and contracts are those of the Backend op of the same name
// (worker/model/backend.hpp). Deterministic: no floating-point atomics; every sum has an order
// fixed by the shapes alone, so a step is bitwise repeatable on the same GPU.
// bf16 data travels as uint16_t (the bit pattern), so this header needs no cuda_bf16.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace ptrain::cuda_kernels {

void fill(float* dst, float value, int64_t n, cudaStream_t s);
void fill_columns(float* dst, float value, int64_t rows, int64_t col_begin, int64_t col_end,
                  int64_t ld, cudaStream_t s);
// c (rows, cols; ld) = beta == 0 ? 0 : beta·c (a product with K = 0).
void scale_matrix(float* c, float beta, int64_t rows, int64_t cols, int64_t ld, cudaStream_t s);
void residual(float* out, const float* a, const float* b, int64_t n, cudaStream_t s);

enum class Unary { kGeluTanh, kGeluErf, kTanh };
void unary_forward(Unary op, float* out, const float* inp, int64_t n, cudaStream_t s);
// dinp = dout · op'(x); x is the input, or for kTanh the saved output. dinp may alias dout.
void unary_backward(Unary op, float* dinp, const float* x, const float* dout, int64_t n,
                    cudaStream_t s);

// dst (rows, cols; row stride ld_dst) bf16 = src (rows, cols; row stride ld) rounded to nearest
// even. Columns cols..ld_dst-1 of dst are not written.
void to_bf16(uint16_t* dst, int64_t ld_dst, const float* src, int64_t rows, int64_t cols,
             int64_t ld, cudaStream_t s);

// out (N,C) = wte[tokens] (+ wtt[types or 0] when wtt) + wpe[n mod T].
void embedding_forward(float* out, const int32_t* tokens, const int32_t* types, const float* wte,
                       const float* wpe, const float* wtt, int64_t B, int64_t T, int64_t C,
                       cudaStream_t s);

// Scratch of embedding_backward: bytes needed for N = B·T rows.
size_t embedding_backward_scratch(int64_t N);
// dwte[tokens[n]] += dout[n] (rows in n order, onto the old value: the CPU's order exactly);
// dwpe[t] += Σ_b dout[b,t] (b in order); dwtt[types[n] or 0] += dout[n] when dwtt. Rows are
// grouped by a stable radix sort of the token ids (so no float atomics); scratch from above.
// Returns the sort's status (the kernels' launches are checked by the caller).
cudaError_t embedding_backward(float* dwte, float* dwpe, float* dwtt, const float* dout,
                        const int32_t* tokens, const int32_t* types, int64_t B, int64_t T,
                        int64_t C, void* scratch, size_t scratch_bytes, cudaStream_t s);

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                       const float* b, int64_t N, int64_t C, float eps, cudaStream_t s);
// Scratch (floats) of the column reductions below for N rows of C columns.
int64_t column_partials(int64_t N, int64_t C);
void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                        const float* w, const float* mean, const float* rstd, int64_t N,
                        int64_t C, float* scratch, cudaStream_t s);
// dst (C) += Σ_rows src (N,C; row stride ld), in 256-row chunks added in order. scratch:
// column_partials(N, C) floats.
void column_sums_add(float* dst, const float* src, int64_t N, int64_t C, int64_t ld,
                     float* scratch, cudaStream_t s);

// losses (N); when grad, logits[n, 0..V) are overwritten with dloss·(softmax − onehot).
void crossentropy(float* losses, float* logits, const int32_t* targets, float dloss, int64_t N,
                  int64_t V, int64_t ld, bool grad, cudaStream_t s);

void gather_rows(float* dst, const float* src, const int32_t* idx, int64_t M, int64_t C,
                 cudaStream_t s);
void scatter_rows(float* dst, const float* src, const int32_t* idx, int64_t M, int64_t C,
                  cudaStream_t s);
void argmax_rows(int32_t* out, const float* logits, int64_t N, int64_t V, int64_t ld,
                 cudaStream_t s);

// One query against a KV cache (Backend::attention_decode); scratch: npos floats.
void attention_decode(float* out, float* scratch, const float* q, const float* kcache,
                      const float* vcache, int64_t npos, int64_t ld, int64_t C, int64_t NH,
                      cudaStream_t s);

}  // namespace ptrain::cuda_kernels
