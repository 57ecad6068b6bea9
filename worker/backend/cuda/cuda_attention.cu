// Flash-style attention kernels (see cuda_attention.hpp for the algorithm and how it matches the
// CPU backend). Only device code and launches live here; shapes are validated and errors turned
// into exceptions in cuda_attention.cpp (plain C++: fmt, which common/error.hpp uses, does not
// compile under nvcc's C++20 host pass). Shared-memory rows a thread owns are padded to hd + 1 floats so that the 32
// threads of a warp, each on its own row, hit 32 different banks; rows every thread reads at the
// same address (the other operand's tile) are unpadded broadcasts.
#include "worker/backend/cuda/cuda_attention_launch.hpp"

#include "worker/backend/kernel_math.hpp"

namespace ptrain::cuda::detail {
namespace {

// Loads rows r0..r0+kTile-1 of one head's column block (row stride ld_src) into dst (row stride
// ld_dst), zero-filling rows past T. All threads of the block take part.
__device__ void load_tile(float* dst, int ld_dst, const float* src, int64_t ld_src, int64_t r0,
                          int64_t T, int hd) {
  for (int i = threadIdx.x; i < kTile * hd; i += blockDim.x) {
    const int r = i / hd, c = i - r * hd;
    dst[r * ld_dst + c] = r0 + r < T ? src[(r0 + r) * ld_src + c] : 0.0f;
  }
}

__device__ float dot(const float* a, const float* b, int n) {
  float acc = 0.0f;
  for (int i = 0; i < n; ++i) acc = fmaf(a[i], b[i], acc);
  return acc;
}

// ---- forward ---------------------------------------------------------------------------------
__global__ void __launch_bounds__(kTile) flash_fwd_kernel(float* out, float* lse, const float* qkv,
                                                          Dims d) {
  extern __shared__ float smem[];
  const int hd = d.hd, ldp = hd + 1;
  float* sQ = smem;               // (kTile, hd+1) own rows
  float* sO = sQ + kTile * ldp;   // (kTile, hd+1) own accumulators
  float* sK = sO + kTile * ldp;   // (kTile, hd) broadcast
  float* sV = sK + kTile * hd;    // (kTile, hd) broadcast
  const int64_t b = blockIdx.z, h = blockIdx.y, r0 = int64_t{blockIdx.x} * kTile;
  const int row = threadIdx.x;
  const int64_t t = r0 + row;
  const int64_t C3 = 3 * d.C;
  const kmath::HeadView hv = kmath::head_view(qkv, d.key_valid, b, h, d.T, d.C, d.NH);
  const float *q = hv.q, *k = hv.k, *v = hv.v;
  const int32_t* valid = hv.valid;

  load_tile(sQ, ldp, q, C3, r0, d.T, hd);
  for (int c = 0; c < hd; ++c) sO[row * ldp + c] = 0.0f;
  kmath::OnlineSoftmaxRow st;
  const int64_t kend = d.causal ? min(d.T, r0 + kTile) : d.T;
  for (int64_t c0 = 0; c0 < kend; c0 += kTile) {
    __syncthreads();  // the previous tile's K/V are no longer read
    load_tile(sK, hd, k, C3, c0, d.T, hd);
    load_tile(sV, hd, v, C3, c0, d.T, hd);
    __syncthreads();
    if (t >= d.T) continue;  // still takes part in the barriers above
    float s[kTile];
    float tmax = kmath::neg_inf();
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      const int64_t key = c0 + j;
      s[j] = kmath::neg_inf();
      if (key < d.T && kmath::key_visible(d.causal, valid, t, key)) {
        s[j] = d.scale * dot(sQ + row * ldp, sK + j * hd, hd);
      }
      tmax = fmaxf(tmax, s[j]);
    }
    const float corr = st.begin_tile(tmax);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      s[j] = st.prob(s[j]);
      sum += s[j];
    }
    st.l += sum;
    float* o = sO + row * ldp;
    for (int c = 0; c < hd; ++c) {
      float acc = o[c] * corr;
#pragma unroll
      for (int j = 0; j < kTile; ++j) acc = fmaf(s[j], sV[j * hd + c], acc);
      o[c] = acc;
    }
  }
  if (t < d.T) {
    const float inv = st.inv_l();
    float* dst = out + hv.io_at + t * d.C;
    for (int c = 0; c < hd; ++c) dst[c] = sO[row * ldp + c] * inv;
    lse[hv.stat_at + t] = st.lse();
  }
}

// ---- backward --------------------------------------------------------------------------------
// D[b,h,t] = Σ_c dout[b,t,h·hd + c] · out[b,t,h·hd + c]; one thread per (b, h, t).
__global__ void rowsum_dout_out_kernel(float* D, const float* dout, const float* out, Dims d) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= d.B * d.NH * d.T) return;
  const int64_t t = i % d.T, bh = i / d.T, h = bh % d.NH, b = bh / d.NH;
  const int64_t off = (b * d.T + t) * d.C + h * d.hd;
  D[i] = dot(dout + off, out + off, d.hd);
}

// dK, dV for one key tile; thread = key row j, walking the query tiles in order.
__global__ void __launch_bounds__(kTile) flash_bwd_dkdv_kernel(float* dqkv, const float* dout,
                                                               const float* qkv, const float* lse,
                                                               const float* D, Dims d) {
  extern __shared__ float smem[];
  const int hd = d.hd, ldp = hd + 1;
  float* sK = smem;                 // own rows (kTile, hd+1)
  float* sV = sK + kTile * ldp;
  float* sdK = sV + kTile * ldp;
  float* sdV = sdK + kTile * ldp;
  float* sQ = sdV + kTile * ldp;    // broadcast (kTile, hd)
  float* sdO = sQ + kTile * hd;
  float* sL = sdO + kTile * hd;     // (kTile)
  float* sD = sL + kTile;           // (kTile)
  const int64_t b = blockIdx.z, h = blockIdx.y, c0 = int64_t{blockIdx.x} * kTile;
  const int row = threadIdx.x;
  const int64_t j = c0 + row;  // this thread's key
  const int64_t C3 = 3 * d.C;
  const kmath::HeadView hv = kmath::head_view(qkv, d.key_valid, b, h, d.T, d.C, d.NH);
  const float *q = hv.q, *k = hv.k, *v = hv.v;
  const int32_t* valid = hv.valid;
  const float* dO = dout + hv.io_at;
  const float* L = lse + hv.stat_at;
  const float* Dr = D + hv.stat_at;

  load_tile(sK, ldp, k, C3, c0, d.T, hd);
  load_tile(sV, ldp, v, C3, c0, d.T, hd);
  for (int c = 0; c < hd; ++c) sdK[row * ldp + c] = sdV[row * ldp + c] = 0.0f;
  // Causal: queries before this key tile never see its keys.
  for (int64_t r0 = d.causal ? c0 : 0; r0 < d.T; r0 += kTile) {
    __syncthreads();
    load_tile(sQ, hd, q, C3, r0, d.T, hd);
    load_tile(sdO, hd, dO, d.C, r0, d.T, hd);
    if (threadIdx.x < kTile) {
      const int64_t t = r0 + threadIdx.x;
      sL[threadIdx.x] = t < d.T ? L[t] : 0.0f;
      sD[threadIdx.x] = t < d.T ? Dr[t] : 0.0f;
    }
    __syncthreads();
    if (j >= d.T) continue;
    const float* kj = sK + row * ldp;
    const float* vj = sV + row * ldp;
    float* dkj = sdK + row * ldp;
    float* dvj = sdV + row * ldp;
    for (int i = 0; i < kTile; ++i) {
      const int64_t t = r0 + i;
      if (t >= d.T || !kmath::key_visible(d.causal, valid, t, j)) continue;  // p = 0 there
      const float* qi = sQ + i * hd;
      const float* doi = sdO + i * hd;
      const float p = kmath::prob_from_lse(d.scale * dot(qi, kj, hd), sL[i]);
      const float ds = kmath::score_grad(p, dot(doi, vj, hd), sD[i], d.scale);
      for (int c = 0; c < hd; ++c) {
        dvj[c] = fmaf(p, doi[c], dvj[c]);
        dkj[c] = fmaf(ds, qi[c], dkj[c]);
      }
    }
  }
  if (j < d.T) {
    float* dk = dqkv + hv.qkv_at + j * C3 + d.C;
    float* dv = dk + d.C;
    for (int c = 0; c < hd; ++c) {
      dk[c] = sdK[row * ldp + c];
      dv[c] = sdV[row * ldp + c];
    }
  }
}

// dQ for one query tile; thread = query row t, walking the key tiles in order.
__global__ void __launch_bounds__(kTile) flash_bwd_dq_kernel(float* dqkv, const float* dout,
                                                             const float* qkv, const float* lse,
                                                             const float* D, Dims d) {
  extern __shared__ float smem[];
  const int hd = d.hd, ldp = hd + 1;
  float* sQ = smem;                // own rows (kTile, hd+1)
  float* sdO = sQ + kTile * ldp;
  float* sdQ = sdO + kTile * ldp;
  float* sK = sdQ + kTile * ldp;   // broadcast (kTile, hd)
  float* sV = sK + kTile * hd;
  const int64_t b = blockIdx.z, h = blockIdx.y, r0 = int64_t{blockIdx.x} * kTile;
  const int row = threadIdx.x;
  const int64_t t = r0 + row;
  const int64_t C3 = 3 * d.C;
  const kmath::HeadView hv = kmath::head_view(qkv, d.key_valid, b, h, d.T, d.C, d.NH);
  const float *q = hv.q, *k = hv.k, *v = hv.v;
  const int32_t* valid = hv.valid;

  load_tile(sQ, ldp, q, C3, r0, d.T, hd);
  load_tile(sdO, ldp, dout + hv.io_at, d.C, r0, d.T, hd);
  for (int c = 0; c < hd; ++c) sdQ[row * ldp + c] = 0.0f;
  const float lt = t < d.T ? lse[hv.stat_at + t] : 0.0f;
  const float dt = t < d.T ? D[hv.stat_at + t] : 0.0f;
  const int64_t kend = d.causal ? min(d.T, r0 + kTile) : d.T;
  for (int64_t c0 = 0; c0 < kend; c0 += kTile) {
    __syncthreads();
    load_tile(sK, hd, k, C3, c0, d.T, hd);
    load_tile(sV, hd, v, C3, c0, d.T, hd);
    __syncthreads();
    if (t >= d.T) continue;
    const float* qt = sQ + row * ldp;
    const float* dOt = sdO + row * ldp;
    float* dqt = sdQ + row * ldp;
    for (int jj = 0; jj < kTile; ++jj) {
      const int64_t key = c0 + jj;
      if (key >= d.T || !kmath::key_visible(d.causal, valid, t, key)) continue;
      const float p = kmath::prob_from_lse(d.scale * dot(qt, sK + jj * hd, hd), lt);
      const float ds = kmath::score_grad(p, dot(dOt, sV + jj * hd, hd), dt, d.scale);
      for (int c = 0; c < hd; ++c) dqt[c] = fmaf(ds, sK[jj * hd + c], dqt[c]);
    }
  }
  if (t < d.T) {
    float* dq = dqkv + hv.qkv_at + t * C3;
    for (int c = 0; c < hd; ++c) dq[c] = sdQ[row * ldp + c];
  }
}

// Dynamic shared memory of each kernel, in bytes, for head size hd.
size_t fwd_smem(int hd) { return sizeof(float) * (2 * kTile * (hd + 1) + 2 * kTile * hd); }
size_t dkdv_smem(int hd) {
  return sizeof(float) * (4 * kTile * (hd + 1) + 2 * kTile * hd + 2 * kTile);
}
size_t dq_smem(int hd) { return sizeof(float) * (3 * kTile * (hd + 1) + 2 * kTile * hd); }

// Opts a kernel into more than the default 48 KB of dynamic shared memory when it needs it.
template <typename Kernel>
LaunchStatus allow_smem(Kernel kernel, size_t bytes, const char* name) {
  if (bytes <= 48 * 1024) return {};
  const cudaError_t err = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  return {err, name, __LINE__};
}

// The error (if any) of the launch just made.
LaunchStatus launched(const char* name, int line) { return {cudaGetLastError(), name, line}; }

dim3 tile_grid(const Dims& d) {
  return dim3(static_cast<unsigned>((d.T + kTile - 1) / kTile), static_cast<unsigned>(d.NH),
              static_cast<unsigned>(d.B));
}

}  // namespace

LaunchStatus launch_forward(float* out, float* lse, const float* qkv, const Dims& d,
                            cudaStream_t stream) {
  const size_t smem = fwd_smem(d.hd);
  if (LaunchStatus st = allow_smem(flash_fwd_kernel, smem, "cudaFuncSetAttribute(flash_fwd_kernel)"); st.err != cudaSuccess) return st;
  flash_fwd_kernel<<<tile_grid(d), kTile, smem, stream>>>(out, lse, qkv, d);
  return launched("flash_fwd_kernel", __LINE__);
}

LaunchStatus launch_backward(float* dqkv, float* scratch, const float* dout, const float* out,
                             const float* qkv, const float* lse, const Dims& d,
                             cudaStream_t stream) {
  const int64_t rows = d.B * d.NH * d.T;
  constexpr int kThreads = 256;
  rowsum_dout_out_kernel<<<static_cast<unsigned>((rows + kThreads - 1) / kThreads), kThreads, 0,
                           stream>>>(scratch, dout, out, d);
  if (LaunchStatus st = launched("rowsum_dout_out_kernel", __LINE__); st.err != cudaSuccess) return st;
  const size_t smem_kv = dkdv_smem(d.hd);
  if (LaunchStatus st = allow_smem(flash_bwd_dkdv_kernel, smem_kv, "cudaFuncSetAttribute(flash_bwd_dkdv_kernel)"); st.err != cudaSuccess) return st;
  flash_bwd_dkdv_kernel<<<tile_grid(d), kTile, smem_kv, stream>>>(dqkv, dout, qkv, lse, scratch,
                                                                   d);
  if (LaunchStatus st = launched("flash_bwd_dkdv_kernel", __LINE__); st.err != cudaSuccess) return st;
  const size_t smem_q = dq_smem(d.hd);
  if (LaunchStatus st = allow_smem(flash_bwd_dq_kernel, smem_q, "cudaFuncSetAttribute(flash_bwd_dq_kernel)"); st.err != cudaSuccess) return st;
  flash_bwd_dq_kernel<<<tile_grid(d), kTile, smem_q, stream>>>(dqkv, dout, qkv, lse, scratch, d);
  return launched("flash_bwd_dq_kernel", __LINE__);
}

}  // namespace ptrain::cuda::detail
