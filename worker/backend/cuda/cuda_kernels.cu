// The CUDA backend's custom kernels (launchers declared in cuda_kernels.hpp). The arithmetic is in
// cuda_math.hpp (shared with the CPU-side test); what is here is indexing and reductions.
// Reductions are fixed trees: warp butterflies (__shfl_xor_sync: every lane ends with the same
// value, since a + b == b + a bitwise) and then the warps' partials, reduced again the same way.
// No floating-point atomics anywhere, so the results depend only on the shapes and inputs.
// One translation unit on purpose: nvcc is slow, and each .cu is compiled per architecture.
#include "worker/backend/cuda/cuda_kernels.hpp"

#include "worker/backend/cuda/cuda_math.hpp"

#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>

#include <algorithm>

namespace ptrain::cuda_kernels {
namespace {

using cuda_math::ArgMax;
using cuda_math::MaxSum;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loops beyond this

unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(b, kMaxBlocks)));
}

// Grid-stride loop over [0, n) in int64.
#define PTRAIN_GRID_LOOP(i, n)                                                             \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---- reductions ---------------------------------------------------------------------------------
__device__ __forceinline__ float shfl_xor(float v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}
__device__ __forceinline__ MaxSum shfl_xor(MaxSum v, int m) {
  return {__shfl_xor_sync(0xffffffffu, v.m, m), __shfl_xor_sync(0xffffffffu, v.s, m)};
}
__device__ __forceinline__ ArgMax shfl_xor(ArgMax v, int m) {
  return {__shfl_xor_sync(0xffffffffu, v.v, m),
          static_cast<int64_t>(__shfl_xor_sync(0xffffffffu, static_cast<long long>(v.i), m))};
}

struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MaxSumOp {
  __device__ MaxSum operator()(MaxSum a, MaxSum b) const { return cuda_math::maxsum_combine(a, b); }
};
struct ArgMaxOp {
  __device__ ArgMax operator()(ArgMax a, ArgMax b) const { return cuda_math::argmax_combine(a, b); }
};

// Every lane returns the reduction of the warp's 32 values (op commutative).
template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int m = 16; m >= 1; m /= 2) v = op(v, shfl_xor(v, m));
  return v;
}

// Every thread of the block returns the reduction of the block's values. blockDim.x a multiple
// of 32 (at most 1024). Ends with a barrier, so it may be called again at once.
template <class T, class Op>
__device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T part[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_reduce(v, op);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x / 32;
  T r = lane < nwarps ? part[lane] : identity;
  r = warp_reduce(r, op);  // every warp reduces the same partials the same way
  __syncthreads();
  return r;
}

// ---- memory / elementwise -------------------------------------------------------------------------
__global__ void fill_kernel(float* dst, float value, int64_t n) {
  PTRAIN_GRID_LOOP(i, n) dst[i] = value;
}

__global__ void fill_columns_kernel(float* dst, float value, int64_t rows, int64_t c0, int64_t w,
                                    int64_t ld) {
  PTRAIN_GRID_LOOP(i, rows * w) dst[(i / w) * ld + c0 + i % w] = value;
}

__global__ void scale_matrix_kernel(float* c, float beta, int64_t rows, int64_t cols, int64_t ld) {
  PTRAIN_GRID_LOOP(i, rows * cols) {
    float* p = c + (i / cols) * ld + i % cols;
    *p = beta == 0.0f ? 0.0f : beta * *p;
  }
}

__global__ void residual_kernel(float* out, const float* a, const float* b, int64_t n) {
  PTRAIN_GRID_LOOP(i, n) out[i] = a[i] + b[i];
}

template <Unary kOp>
__global__ void unary_forward_kernel(float* out, const float* inp, int64_t n) {
  PTRAIN_GRID_LOOP(i, n) {
    const float x = inp[i];
    if constexpr (kOp == Unary::kGeluTanh) out[i] = cuda_math::gelu_tanh(x);
    if constexpr (kOp == Unary::kGeluErf) out[i] = cuda_math::gelu_erf(x);
    if constexpr (kOp == Unary::kTanh) out[i] = tanhf(x);
  }
}

template <Unary kOp>
__global__ void unary_backward_kernel(float* dinp, const float* x, const float* dout, int64_t n) {
  PTRAIN_GRID_LOOP(i, n) {
    float g = 0.0f;
    if constexpr (kOp == Unary::kGeluTanh) g = cuda_math::gelu_tanh_grad(x[i]);
    if constexpr (kOp == Unary::kGeluErf) g = cuda_math::gelu_erf_grad(x[i]);
    if constexpr (kOp == Unary::kTanh) g = cuda_math::tanh_grad_from_out(x[i]);
    // The CPU's order: local · dout for GELU, dout · local for the others.
    dinp[i] = kOp == Unary::kGeluTanh ? g * dout[i] : dout[i] * g;
  }
}

__global__ void to_bf16_kernel(__nv_bfloat16* dst, int64_t ld_dst, const float* src, int64_t rows,
                               int64_t cols, int64_t ld) {
  PTRAIN_GRID_LOOP(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    dst[r * ld_dst + c] = __float2bfloat16_rn(src[r * ld + c]);
  }
}

// ---- embeddings -----------------------------------------------------------------------------------
__global__ void embedding_forward_kernel(float* out, const int32_t* tokens, const int32_t* types,
                                         const float* wte, const float* wpe, const float* wtt,
                                         int64_t N, int64_t T, int64_t C) {
  PTRAIN_GRID_LOOP(i, N * C) {
    const int64_t n = i / C, c = i % C;
    const float e = wte[static_cast<int64_t>(tokens[n]) * C + c];
    const float p = wpe[(n % T) * C + c];
    if (wtt != nullptr) {
      const float y = wtt[static_cast<int64_t>(types != nullptr ? types[n] : 0) * C + c];
      out[i] = (e + y) + p;
    } else {
      out[i] = e + p;
    }
  }
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  PTRAIN_GRID_LOOP(i, n) v[i] = static_cast<int32_t>(i);
}

__global__ void zero_keys_iota_kernel(int32_t* keys, int32_t* pos, int64_t n) {
  PTRAIN_GRID_LOOP(i, n) {
    keys[i] = 0;
    pos[i] = static_cast<int32_t>(i);
  }
}

// keys (N) sorted, pos (N) the row each came from (ascending within equal keys: the sort is
// stable). Block (i, column chunk): if i starts a run of equal keys, it adds the run's rows of
// dout, in order, onto dst[key] — one thread per column, starting from the old value, which is
// the CPU backend's order (dst += row, row after row).
__global__ void add_rows_by_key_kernel(float* dst, const float* dout, const int32_t* keys,
                                       const int32_t* pos, int64_t N, int64_t C) {
  const int64_t i = blockIdx.x;
  if (i > 0 && keys[i] == keys[i - 1]) return;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int32_t key = keys[i];
  float* d = dst + static_cast<int64_t>(key) * C + c;
  float acc = *d;
  for (int64_t j = i; j < N && keys[j] == key; ++j) acc += dout[static_cast<int64_t>(pos[j]) * C + c];
  *d = acc;
}

// dwpe[t, c] += dout[b, t, c] for b = 0..B-1 in order.
__global__ void position_grad_kernel(float* dwpe, const float* dout, int64_t B, int64_t T,
                                     int64_t C) {
  PTRAIN_GRID_LOOP(i, T * C) {
    float acc = dwpe[i];
    for (int64_t b = 0; b < B; ++b) acc += dout[b * T * C + i];
    dwpe[i] = acc;
  }
}

size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

size_t sort_temp_bytes(int64_t N) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr),
                                  static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<int>(N), 0, 31);
  return bytes;
}

// ---- LayerNorm ------------------------------------------------------------------------------------
constexpr int kRowsPerBlock = kThreads / 32;  // one warp per row
constexpr int64_t kChunkRows = 256;            // rows per partial in column reductions
constexpr int kColTile = 32, kRowLanes = 8;    // column-reduction block: 32 columns × 8 row lanes

__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                         const float* w, const float* b, int64_t N, int64_t C,
                                         float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;  // the whole warp: no block barrier below
  const float* x = inp + row * C;
  const float inv_c = 1.0f / static_cast<float>(C);
  float sum = 0.0f;
  for (int64_t c = lane; c < C; c += 32) sum += x[c];
  const float m = warp_reduce(sum, SumOp{}) * inv_c;
  float sq = 0.0f;
  for (int64_t c = lane; c < C; c += 32) {
    const float d = x[c] - m;
    sq += d * d;
  }
  const float s = cuda_math::layernorm_rstd(warp_reduce(sq, SumOp{}) * inv_c, eps);
  float* o = out + row * C;
  for (int64_t c = lane; c < C; c += 32) o[c] = cuda_math::layernorm_out(x[c], m, s, w[c], b[c]);
  if (lane == 0) {
    if (mean != nullptr) mean[row] = m;
    if (rstd != nullptr) rstd[row] = s;
  }
}

__global__ void layernorm_dinp_kernel(float* dinp, const float* dout, const float* inp,
                                      const float* w, const float* mean, const float* rstd,
                                      int64_t N, int64_t C) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = inp + row * C;
  const float* d = dout + row * C;
  const float m = mean[row], s = rstd[row];
  const float inv_c = 1.0f / static_cast<float>(C);
  float a1 = 0.0f, a2 = 0.0f;
  for (int64_t c = lane; c < C; c += 32) {
    const float dn = w[c] * d[c];
    a1 += dn;
    a2 += dn * (x[c] - m) * s;
  }
  const float dn_mean = warp_reduce(a1, SumOp{}) * inv_c;
  const float dn_xhat_mean = warp_reduce(a2, SumOp{}) * inv_c;
  float* di = dinp + row * C;
  for (int64_t c = lane; c < C; c += 32) {
    di[c] += cuda_math::layernorm_dinp(x[c], d[c], w[c], m, s, dn_mean, dn_xhat_mean);
  }
}

// Column partial sums over one 256-row chunk (grid.y) of 32 columns (grid.x). kLayerNorm: two
// sums, d·x̂ into part[0..) and d into part[nchunks·C..); else one sum of src.
template <bool kLayerNorm>
__global__ void column_partials_kernel(float* part, const float* src, const float* inp,
                                       const float* mean, const float* rstd, int64_t N, int64_t C,
                                       int64_t ld) {
  __shared__ float s1[kRowLanes][kColTile];
  __shared__ float s2[kRowLanes][kColTile];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kChunkRows;
  const int64_t r1 = r0 + kChunkRows < N ? r0 + kChunkRows : N;
  float a = 0.0f, b = 0.0f;
  if (c < C) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const float d = src[r * ld + c];
      if constexpr (kLayerNorm) {
        a += d * ((inp[r * C + c] - mean[r]) * rstd[r]);
        b += d;
      } else {
        a += d;
      }
    }
  }
  s1[threadIdx.y][threadIdx.x] = a;
  s2[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float ta = 0.0f, tb = 0.0f;
    for (int j = 0; j < kRowLanes; ++j) {
      ta += s1[j][threadIdx.x];
      tb += s2[j][threadIdx.x];
    }
    part[blockIdx.y * C + c] = ta;
    if constexpr (kLayerNorm) part[(gridDim.y + blockIdx.y) * C + c] = tb;
  }
}

// dst[c] += Σ_chunk part[chunk·C + c], chunks in order.
__global__ void column_finish_kernel(float* dst, const float* part, int64_t nchunks, int64_t C) {
  PTRAIN_GRID_LOOP(c, C) {
    float acc = 0.0f;
    for (int64_t k = 0; k < nchunks; ++k) acc += part[k * C + c];
    dst[c] += acc;
  }
}

int64_t chunks_for(int64_t N) { return (N + kChunkRows - 1) / kChunkRows; }

// ---- loss, rows -------------------------------------------------------------------------------------
constexpr int kRowThreads = 512;  // threads per row in row-wise kernels (vocab-sized rows)

__global__ void crossentropy_kernel(float* losses, float* logits, const int32_t* targets,
                                    float dloss, int64_t V, int64_t ld, bool grad) {
  const int64_t n = blockIdx.x;
  float* row = logits + n * ld;
  const int32_t y = targets[n];
  const float xy = row[y];  // read before the barrier inside block_reduce; writes come after it
  MaxSum st = cuda_math::maxsum_empty();
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) st = cuda_math::maxsum_push(st, row[i]);
  st = block_reduce(st, MaxSumOp{}, cuda_math::maxsum_empty());
  if (threadIdx.x == 0) losses[n] = cuda_math::crossentropy_loss(st, xy);
  if (!grad) return;
  const float scale = dloss / st.s;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    row[i] = cuda_math::crossentropy_grad(row[i], i == y, st, scale, dloss);
  }
}

__global__ void argmax_kernel(int32_t* out, const float* logits, int64_t V, int64_t ld) {
  const int64_t n = blockIdx.x;
  const float* row = logits + n * ld;
  const ArgMax none{-INFINITY, INT64_MAX};
  ArgMax best = none;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    best = cuda_math::argmax_combine(best, ArgMax{row[i], i});
  }
  best = block_reduce(best, ArgMaxOp{}, none);
  if (threadIdx.x == 0) out[n] = static_cast<int32_t>(best.i == INT64_MAX ? 0 : best.i);
}

__global__ void gather_rows_kernel(float* dst, const float* src, const int32_t* idx, int64_t M,
                                   int64_t C) {
  PTRAIN_GRID_LOOP(i, M * C) dst[i] = src[static_cast<int64_t>(idx[i / C]) * C + i % C];
}

__global__ void scatter_rows_kernel(float* dst, const float* src, const int32_t* idx, int64_t M,
                                    int64_t C) {
  PTRAIN_GRID_LOOP(i, M * C) dst[static_cast<int64_t>(idx[i / C]) * C + i % C] = src[i];
}

// One block; heads one after another through the npos-float scratch.
__global__ void attention_decode_kernel(float* out, float* scratch, const float* q,
                                        const float* kcache, const float* vcache, int64_t npos,
                                        int64_t ld, int64_t C, int64_t NH) {
  const int64_t hd = C / NH;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  for (int64_t h = 0; h < NH; ++h) {
    const float* qh = q + h * hd;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < npos; j += blockDim.x) {
      const float* kj = kcache + j * ld + h * hd;
      float dot = 0.0f;
      for (int64_t i = 0; i < hd; ++i) dot += qh[i] * kj[i];
      scratch[j] = dot * scale;
      mx = fmaxf(mx, scratch[j]);
    }
    mx = block_reduce(mx, MaxOp{}, -INFINITY);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < npos; j += blockDim.x) {
      const float e = expf(scratch[j] - mx);
      scratch[j] = e;
      sum += e;
    }
    sum = block_reduce(sum, SumOp{}, 0.0f);  // its barriers publish scratch to the block
    const float inv = 1.0f / sum;
    for (int64_t i = threadIdx.x; i < hd; i += blockDim.x) {
      float acc = 0.0f;
      for (int64_t j = 0; j < npos; ++j) acc += scratch[j] * inv * vcache[j * ld + h * hd + i];
      out[h * hd + i] = acc;
    }
    __syncthreads();  // scratch is rewritten by the next head
  }
}

}  // namespace

// ---- launchers --------------------------------------------------------------------------------------

void fill(float* dst, float value, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, s>>>(dst, value, n);
}

void fill_columns(float* dst, float value, int64_t rows, int64_t col_begin, int64_t col_end,
                  int64_t ld, cudaStream_t s) {
  const int64_t w = col_end - col_begin;
  if (rows <= 0 || w <= 0) return;
  fill_columns_kernel<<<blocks_for(rows * w), kThreads, 0, s>>>(dst, value, rows, col_begin, w,
                                                                 ld);
}

void scale_matrix(float* c, float beta, int64_t rows, int64_t cols, int64_t ld, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  scale_matrix_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(c, beta, rows, cols, ld);
}

void residual(float* out, const float* a, const float* b, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  residual_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, a, b, n);
}

void unary_forward(Unary op, float* out, const float* inp, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  const unsigned g = blocks_for(n);
  switch (op) {
    case Unary::kGeluTanh: unary_forward_kernel<Unary::kGeluTanh><<<g, kThreads, 0, s>>>(out, inp, n); break;
    case Unary::kGeluErf: unary_forward_kernel<Unary::kGeluErf><<<g, kThreads, 0, s>>>(out, inp, n); break;
    case Unary::kTanh: unary_forward_kernel<Unary::kTanh><<<g, kThreads, 0, s>>>(out, inp, n); break;
  }
}

void unary_backward(Unary op, float* dinp, const float* x, const float* dout, int64_t n,
                    cudaStream_t s) {
  if (n <= 0) return;
  const unsigned g = blocks_for(n);
  switch (op) {
    case Unary::kGeluTanh: unary_backward_kernel<Unary::kGeluTanh><<<g, kThreads, 0, s>>>(dinp, x, dout, n); break;
    case Unary::kGeluErf: unary_backward_kernel<Unary::kGeluErf><<<g, kThreads, 0, s>>>(dinp, x, dout, n); break;
    case Unary::kTanh: unary_backward_kernel<Unary::kTanh><<<g, kThreads, 0, s>>>(dinp, x, dout, n); break;
  }
}

void to_bf16(uint16_t* dst, int64_t ld_dst, const float* src, int64_t rows, int64_t cols,
             int64_t ld, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  to_bf16_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(
      reinterpret_cast<__nv_bfloat16*>(dst), ld_dst, src, rows, cols, ld);
}

void embedding_forward(float* out, const int32_t* tokens, const int32_t* types, const float* wte,
                       const float* wpe, const float* wtt, int64_t B, int64_t T, int64_t C,
                       cudaStream_t s) {
  const int64_t N = B * T;
  if (N <= 0 || C <= 0) return;
  embedding_forward_kernel<<<blocks_for(N * C), kThreads, 0, s>>>(out, tokens, types, wte, wpe,
                                                                   wtt, N, T, C);
}

size_t embedding_backward_scratch(int64_t N) {
  return 3 * align_up(static_cast<size_t>(N) * sizeof(int32_t)) + align_up(sort_temp_bytes(N));
}

cudaError_t embedding_backward(float* dwte, float* dwpe, float* dwtt, const float* dout,
                               const int32_t* tokens, const int32_t* types, int64_t B, int64_t T,
                               int64_t C, void* scratch, size_t scratch_bytes, cudaStream_t s) {
  const int64_t N = B * T;
  if (N <= 0 || C <= 0) return cudaSuccess;
  char* p = static_cast<char*>(scratch);
  const size_t ints = align_up(static_cast<size_t>(N) * sizeof(int32_t));
  auto* keys = reinterpret_cast<int32_t*>(p);
  auto* pos_in = reinterpret_cast<int32_t*>(p + ints);
  auto* pos = reinterpret_cast<int32_t*>(p + 2 * ints);
  void* temp = p + 3 * ints;
  size_t temp_bytes = scratch_bytes - 3 * ints;
  const dim3 run_grid(static_cast<unsigned>(N), static_cast<unsigned>((C + 127) / 128));

  iota_kernel<<<blocks_for(N), kThreads, 0, s>>>(pos_in, N);
  cudaError_t e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tokens, keys, pos_in, pos,
                                                  static_cast<int>(N), 0, 31, s);
  if (e != cudaSuccess) return e;
  add_rows_by_key_kernel<<<run_grid, 128, 0, s>>>(dwte, dout, keys, pos, N, C);
  position_grad_kernel<<<blocks_for(T * C), kThreads, 0, s>>>(dwpe, dout, B, T, C);
  if (dwtt != nullptr) {
    if (types != nullptr) {
      temp_bytes = scratch_bytes - 3 * ints;
      e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, types, keys, pos_in, pos,
                                          static_cast<int>(N), 0, 31, s);
      if (e != cudaSuccess) return e;
    } else {
      zero_keys_iota_kernel<<<blocks_for(N), kThreads, 0, s>>>(keys, pos, N);
    }
    add_rows_by_key_kernel<<<run_grid, 128, 0, s>>>(dwtt, dout, keys, pos, N, C);
  }
  return cudaSuccess;
}

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                       const float* b, int64_t N, int64_t C, float eps, cudaStream_t s) {
  if (N <= 0) return;
  const auto g = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  layernorm_forward_kernel<<<g, kThreads, 0, s>>>(out, mean, rstd, inp, w, b, N, C, eps);
}

int64_t column_partials(int64_t N, int64_t C) { return 2 * chunks_for(N) * C; }

void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                        const float* w, const float* mean, const float* rstd, int64_t N,
                        int64_t C, float* scratch, cudaStream_t s) {
  if (N <= 0 || C <= 0) return;
  const auto g = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  layernorm_dinp_kernel<<<g, kThreads, 0, s>>>(dinp, dout, inp, w, mean, rstd, N, C);
  const int64_t nchunks = chunks_for(N);
  const dim3 grid(static_cast<unsigned>((C + kColTile - 1) / kColTile),
                  static_cast<unsigned>(nchunks));
  column_partials_kernel<true><<<grid, dim3(kColTile, kRowLanes), 0, s>>>(scratch, dout, inp, mean,
                                                                          rstd, N, C, C);
  column_finish_kernel<<<blocks_for(C), kThreads, 0, s>>>(dw, scratch, nchunks, C);
  column_finish_kernel<<<blocks_for(C), kThreads, 0, s>>>(db, scratch + nchunks * C, nchunks, C);
}

void column_sums_add(float* dst, const float* src, int64_t N, int64_t C, int64_t ld,
                     float* scratch, cudaStream_t s) {
  if (N <= 0 || C <= 0) return;
  const int64_t nchunks = chunks_for(N);
  const dim3 grid(static_cast<unsigned>((C + kColTile - 1) / kColTile),
                  static_cast<unsigned>(nchunks));
  column_partials_kernel<false><<<grid, dim3(kColTile, kRowLanes), 0, s>>>(
      scratch, src, nullptr, nullptr, nullptr, N, C, ld);
  column_finish_kernel<<<blocks_for(C), kThreads, 0, s>>>(dst, scratch, nchunks, C);
}

void crossentropy(float* losses, float* logits, const int32_t* targets, float dloss, int64_t N,
                  int64_t V, int64_t ld, bool grad, cudaStream_t s) {
  if (N <= 0) return;
  crossentropy_kernel<<<static_cast<unsigned>(N), kRowThreads, 0, s>>>(losses, logits, targets,
                                                                       dloss, V, ld, grad);
}

void gather_rows(float* dst, const float* src, const int32_t* idx, int64_t M, int64_t C,
                 cudaStream_t s) {
  if (M <= 0 || C <= 0) return;
  gather_rows_kernel<<<blocks_for(M * C), kThreads, 0, s>>>(dst, src, idx, M, C);
}

void scatter_rows(float* dst, const float* src, const int32_t* idx, int64_t M, int64_t C,
                  cudaStream_t s) {
  if (M <= 0 || C <= 0) return;
  scatter_rows_kernel<<<blocks_for(M * C), kThreads, 0, s>>>(dst, src, idx, M, C);
}

void argmax_rows(int32_t* out, const float* logits, int64_t N, int64_t V, int64_t ld,
                 cudaStream_t s) {
  if (N <= 0) return;
  argmax_kernel<<<static_cast<unsigned>(N), kRowThreads, 0, s>>>(out, logits, V, ld);
}

void attention_decode(float* out, float* scratch, const float* q, const float* kcache,
                      const float* vcache, int64_t npos, int64_t ld, int64_t C, int64_t NH,
                      cudaStream_t s) {
  if (npos <= 0 || NH <= 0) return;
  attention_decode_kernel<<<1, kThreads, 0, s>>>(out, scratch, q, kcache, vcache, npos, ld, C, NH);
}

}  // namespace ptrain::cuda_kernels
