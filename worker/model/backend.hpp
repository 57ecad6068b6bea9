// The compute backend the GPT model (gpt.cpp) is written against: memory and the handful of layer
// ops a GPT-2 forward/backward pass needs. The model math lives once in gpt.cpp; a backend only
// supplies kernels (cpu: OpenBLAS + OpenMP in worker/backend/cpu/; cuda later).
//
// Not a tensor library: ops are stateless functions over raw buffers with explicit shapes.
// Arguments: outputs first, then inputs/weights, then dimensions. Every pointer passed to an op is
// backend memory (a Buffer). Only the CPU backend also takes plain host memory (its own tests use
// vectors); the model never relies on that, and the tests' fake device backend throws on it. Shape
// letters: B batch, T sequence, C channels, N = B·T rows, V vocab (real tokens), Vp padded vocab,
// NH heads, hd = C/NH.
//
// Gradient convention of every *_backward op (gpt.cpp relies on it):
//   parameter gradients (dweight, dbias, dwte, dwpe) are ACCUMULATED (+=);
//   activation gradients are WRITTEN (=), except layernorm_backward's dinp, which is ACCUMULATED
//   because it feeds the residual stream.
// Reductions (bias and LayerNorm parameter gradients, embedding scatter) are done in a fixed order
// that does not depend on the thread count, so results are bitwise reproducible run to run.
//
// Memory: Buffer<T> is backend (device) memory; HostBuffer<T> is host memory allocated by the
// backend for transfers (pinned / page-locked on a device backend, so asynchronous copies can run
// by DMA; plain aligned memory on the CPU).
//
// Completion (one in-order queue per backend, like one CUDA stream): ops and *_async copies may
// return before they are done and run in the order they were issued; synchronize() waits for all
// of them. The synchronous copies (copy_to_device, copy_to_host) wait for every earlier op and are
// complete when they return. After an *_async copy the host buffer must be left alone until
// synchronize(): the source of an upload may still be read, the destination of a download is not
// written yet. A Backend is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

namespace ptrain {

class Backend;

// Where a backend allocation lives: device memory (ops' operands) or the backend's transfer
// memory on the host (pinned).
enum class MemoryKind { kDevice, kHost };

// An array of T allocated by a backend and released through it. Move-only.
template <typename T, MemoryKind K>
class BackendArray {
 public:
  BackendArray() = default;
  BackendArray(Backend* owner, T* data, int64_t size) : owner_(owner), data_(data), size_(size) {}
  BackendArray(BackendArray&& o) noexcept { swap(o); }
  BackendArray& operator=(BackendArray&& o) noexcept {
    BackendArray tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  BackendArray(const BackendArray&) = delete;
  BackendArray& operator=(const BackendArray&) = delete;
  ~BackendArray();

  T* data() const { return data_; }
  int64_t size() const { return size_; }
  int64_t size_bytes() const { return size_ * static_cast<int64_t>(sizeof(T)); }
  bool empty() const { return size_ == 0; }
  // For a HostBuffer: always valid. For a Buffer: only when the backend is host_accessible().
  std::span<T> span() const { return {data_, static_cast<size_t>(size_)}; }

 private:
  void swap(BackendArray& o) noexcept {
    std::swap(owner_, o.owner_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
  }
  Backend* owner_ = nullptr;
  T* data_ = nullptr;
  int64_t size_ = 0;
};

// Backend (device) memory: what ops take.
template <typename T>
using Buffer = BackendArray<T, MemoryKind::kDevice>;
// The backend's host transfer memory (pinned): the host side of *_async copies.
template <typename T>
using HostBuffer = BackendArray<T, MemoryKind::kHost>;

enum class Trans { kNo, kYes };

// The shape of one attention call (see Backend::attention_forward). key_valid: (B,T) int32 in
// backend memory, 0 = a padding key no query may attend to; null = every key valid.
struct AttentionShape {
  int64_t B = 0, T = 0, C = 0, NH = 0;
  bool causal = true;
  const int32_t* key_valid = nullptr;
};

// The operands of Backend::matmul_gelu_backward: the MLP core h = gelu(pre), pre = inp·w1 + b1
// (matmul_gelu_forward), whose output h feeds the product y = h·w2 (+ b2 + anything). Shapes: N
// rows, IC inputs, H hidden (pre, h), OC outputs (y).
struct GeluMlpBackward {
  float* dinp = nullptr;  // (N,IC) WRITTEN = dpre · w1ᵀ; skipped when null
  float* dw1 = nullptr;   // (IC,H) += inpᵀ · dpre
  float* db1 = nullptr;   // (H) += Σ_rows dpre; skipped when null
  float* dpre = nullptr;  // (N,H) WRITTEN = (dy · w2ᵀ) ⊙ gelu'(pre): the caller's scratch
  float* dw2 = nullptr;   // (H,OC) += hᵀ · dy
  float* db2 = nullptr;   // (OC) += Σ_rows dy; skipped when null
  const float* dy = nullptr;   // (N,OC) the gradient at y
  const float* inp = nullptr;  // (N,IC)
  const float* w1 = nullptr;   // (IC,H)
  const float* pre = nullptr;  // (N,H) saved by matmul_gelu_forward
  const float* h = nullptr;    // (N,H) = gelu(pre), as matmul_gelu_forward wrote it
  const float* w2 = nullptr;   // (H,OC)
  int64_t N = 0, IC = 0, H = 0, OC = 0;
};

// A copy started by Backend::start_upload or start_download. It is complete (its host side may be
// reused, a download's data read) after wait_transfer(), after transfer_done() returned true for
// it or for a later transfer in the same direction, or after synchronize().
struct TransferTicket {
  int64_t id = -1;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;  // e.g. "cpu (OpenBLAS, 2 threads)"
  virtual int threads() const = 0;
  // True when backend memory is ordinary host memory (Buffer::span() may be read on the host).
  virtual bool host_accessible() const = 0;

  // ---- memory ------------------------------------------------------------------------------
  template <typename T>
  Buffer<T> alloc(int64_t count) {
    void* p = allocate_bytes(static_cast<size_t>(count > 0 ? count : 0) * sizeof(T));
    return Buffer<T>(this, static_cast<T*>(p), count);
  }
  template <typename T>
  HostBuffer<T> alloc_host(int64_t count) {
    void* p = allocate_host_bytes(static_cast<size_t>(count > 0 ? count : 0) * sizeof(T));
    return HostBuffer<T>(this, static_cast<T*>(p), count);
  }
  // Backend memory. Contents unspecified; 64-byte aligned. Throws on failure.
  virtual void* allocate_bytes(size_t bytes) = 0;
  virtual void free_bytes(void* p) noexcept = 0;
  // Host memory for transfers (pinned on a device backend). Contents unspecified; 64-byte
  // aligned. Throws on failure.
  virtual void* allocate_host_bytes(size_t bytes) = 0;
  virtual void free_host_bytes(void* p) noexcept = 0;
  // Synchronous: wait for earlier work, copy, return when done. Any host memory.
  virtual void copy_to_device(void* dst, const void* src_host, size_t bytes) = 0;
  virtual void copy_to_host(void* dst_host, const void* src, size_t bytes) = 0;
  // Queued after earlier work; complete at synchronize(). The host side must be HostBuffer memory
  // of this backend and must not be touched until then (see "Completion" above).
  virtual void copy_to_device_async(void* dst, const void* src_host, size_t bytes) = 0;
  virtual void copy_to_host_async(void* dst_host, const void* src, size_t bytes) = 0;
  virtual void copy(float* dst, const float* src, int64_t n) = 0;  // device to device
  virtual void fill(float* dst, float value, int64_t n) = 0;
  // dst[r·ld + c] = value for r < rows, c in [col_begin, col_end) (e.g. -inf on padded logits).
  virtual void fill_columns(float* dst, float value, int64_t rows, int64_t col_begin,
                            int64_t col_end, int64_t ld) = 0;
  virtual void synchronize() = 0;

  // ---- overlapped transfers (copy queues beside the op queue) --------------------------------
  // The *_async copies above keep the single in-order queue: each waits for every earlier op and
  // every later op waits for it, so none overlaps compute. These are ordered by tickets instead,
  // so a device backend can run them on its copy engines while ops compute (TrainStep uploads
  // weights layer by layer just before forward reads them, and downloads gradients layer by
  // layer while backward goes on). Host memory: this backend's HostBuffer memory, left alone
  // until the ticket is complete. The defaults (what a host-accessible backend keeps) are the
  // in-order copies above: correct for every use below, with nothing overlapped.
  //
  // An upload that may start at once, before ops issued earlier have run: none of them may read
  // or write dst (the caller's guarantee). Ops see what it wrote only after order_after(ticket).
  virtual TransferTicket start_upload(void* dst, const void* src_host, size_t bytes);
  // Every op issued from now on runs after upload `t` is complete.
  virtual void order_after(TransferTicket t);
  // A download of what the ops issued so far leave in src. Ops issued later do not wait for it,
  // so they must not write src until the ticket is complete (the caller's guarantee).
  virtual TransferTicket start_download(void* dst_host, const void* src, size_t bytes);
  // Whether transfer `t` is complete. A device backend answers without blocking; the default
  // synchronizes and says true.
  virtual bool transfer_done(TransferTicket t);
  // Blocks until transfer `t` is complete.
  virtual void wait_transfer(TransferTicket t);

  // ---- dense algebra -----------------------------------------------------------------------
  // Row-major GEMM: c (M,N; ld ldc) = alpha · op(a) · op(b) + beta · c, op(a) (M,K), op(b) (K,N).
  virtual void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc) = 0;

  // out (N,OC) = inp (N,IC) · w (IC,OC) + bias (OC; may be null).
  virtual void matmul_forward(float* out, const float* inp, const float* w, const float* bias,
                              int64_t N, int64_t IC, int64_t OC) = 0;
  // out (N,OC) = residual (N,OC) + inp · w + bias (may be null); out may alias residual.
  virtual void matmul_residual_forward(float* out, const float* residual, const float* inp,
                                       const float* w, const float* bias, int64_t N, int64_t IC,
                                       int64_t OC) = 0;
  // dinp (N,IC) = dout · wᵀ  (skipped when dinp is null); dw (IC,OC) += inpᵀ · dout;
  // dbias (OC) += Σ_rows dout (skipped when null).
  virtual void matmul_backward(float* dinp, float* dw, float* dbias, const float* dout,
                               const float* inp, const float* w, int64_t N, int64_t IC,
                               int64_t OC) = 0;

  // ---- elementwise / row ops ---------------------------------------------------------------
  // out (N,C) = wte[tokens[n]] + wpe[n mod T]; tokens (B,T) contiguous, n = b·T + t.
  virtual void encoder_forward(float* out, const int32_t* tokens, const float* wte,
                               const float* wpe, int64_t B, int64_t T, int64_t C) = 0;
  // dwte[tokens[n]] += dout[n]; dwpe[t] += Σ_b dout[b,t]. Rows of dwte not named by a token are
  // untouched (so padded vocabulary rows keep an exactly-zero gradient).
  virtual void encoder_backward(float* dwte, float* dwpe, const float* dout,
                                const int32_t* tokens, int64_t B, int64_t T, int64_t C) = 0;

  // out (N,C) = (inp − mean)·rstd·w + b per row, eps 1e-5, biased variance. mean/rstd (N) are
  // saved for backward; either may be null (not saved).
  virtual void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                 const float* w, const float* b, int64_t N, int64_t C) = 0;
  // dinp (N,C) += ..., dw (C) += ..., db (C) += ...
  virtual void layernorm_backward(float* dinp, float* dw, float* db, const float* dout,
                                  const float* inp, const float* w, const float* mean,
                                  const float* rstd, int64_t N, int64_t C) = 0;

  // out = a + b, n elements (out may alias a or b). Each element is one fp32 addition, so
  // residual_forward(acc, acc, x, n) is exactly `acc[i] += x[i]` (the gradient fold uses it).
  virtual void residual_forward(float* out, const float* a, const float* b, int64_t n) = 0;

  // tanh-approximation GELU: out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
  virtual void gelu_forward(float* out, const float* inp, int64_t n) = 0;
  // dinp = dout · gelu'(inp); dinp may alias dout.
  virtual void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) = 0;

  // ---- the MLP's product + bias + GELU, fused where the backend can -------------------------
  // pre (N,OC) = inp (N,IC) · w (IC,OC) + bias (OC; may be null); out (N,OC) = gelu(pre) (the tanh
  // form of gelu_forward). pre is kept for matmul_gelu_backward. The default is exactly
  // matmul_forward then gelu_forward; a device backend may apply bias and GELU in the product's
  // store (cuBLASLt's GELU_AUX_BIAS epilogue, which also stores pre).
  virtual void matmul_gelu_forward(float* out, float* pre, const float* inp, const float* w,
                                   const float* bias, int64_t N, int64_t IC, int64_t OC);
  // The backward of that GELU and its product, together with the backward of the product y = h·w2
  // that consumes h (GeluMlpBackward says what is written and what accumulated). It spans both
  // products because GELU's derivative is applied where dh is produced: in the store of dy·w2ᵀ
  // (cuBLASLt's DGELU epilogue, with b1's gradient from the same pass: DGELU_BGRAD). The default
  // is exactly matmul_backward (w2), gelu_backward in place, matmul_backward (w1).
  virtual void matmul_gelu_backward(const GeluMlpBackward& g);

  // ---- attention (softmax(q·kᵀ/√hd)·v per head; causal for GPT, bidirectional for BERT) -------
  // qkv (B,T,3C) with columns [Q|K|V], head h owning columns h·hd..(h+1)·hd of each block.
  // out (B,T,C). lse (B,NH,T): each query row's log-sum-exp of its visible scores, saved for
  // backward, which recomputes the probabilities from it (no (T,T) matrix is kept: memory is
  // O(B·NH·T), and a backend may tile the computation flash-style). Keys visible to row t: s ≤ t
  // when shape.causal; and only keys with shape.key_valid[b,s] ≠ 0 when key_valid is non-null
  // (padding; such keys get probability exactly 0). Every row needs at least one visible key.
  virtual void attention_forward(float* out, float* lse, const float* qkv,
                                 const AttentionShape& shape) = 0;
  // dqkv (B,T,3C) = d(Σ dout·out)/dqkv, WRITTEN. out and lse are what attention_forward returned
  // for this qkv; scratch (B,NH,T) is overwritten (rowsum(dout ∘ out)).
  virtual void attention_backward(float* dqkv, float* scratch, const float* dout,
                                  const float* out, const float* qkv, const float* lse,
                                  const AttentionShape& shape) = 0;
  // One query against a KV cache (decoding): out (C) for query q (C) attending to positions
  // 0..npos-1 of kcache/vcache (rows of C floats, row stride ld). scratch: at least npos floats.
  virtual void attention_decode(float* out, float* scratch, const float* q, const float* kcache,
                                const float* vcache, int64_t npos, int64_t ld, int64_t C,
                                int64_t NH) = 0;

  // ---- loss --------------------------------------------------------------------------------
  // losses (N) = −log softmax(logits[n, 0..V))[targets[n]]; logits rows have stride ld (≥ V).
  virtual void crossentropy_forward(float* losses, const float* logits, const int32_t* targets,
                                    int64_t N, int64_t V, int64_t ld) = 0;
  // The same, and overwrites logits[n, 0..V) in place with d(dloss · Σ losses)/dlogits
  // = dloss · (softmax − onehot(target)). Columns V..ld-1 are not touched.
  virtual void crossentropy_forward_backward(float* losses, float* logits, const int32_t* targets,
                                             float dloss, int64_t N, int64_t V, int64_t ld) = 0;

  // ---- encoder (BERT) ops -------------------------------------------------------------------
  // Used only by the BERT model (bert.cpp); the GPT path never calls them. A backend that has not
  // built them inherits these defaults, which throw NotImplementedError naming the backend and the
  // op (so a BERT job on such a backend stops with a clear message instead of computing nonsense).
  // Linear layers here store weights as nn.Linear does, w (OC, IC): y = x·wᵀ + b.

  // out (N,OC; row stride ldo ≥ OC) = inp (N,IC) · wᵀ + bias (OC; may be null); w (OC,IC).
  virtual void linear_forward(float* out, int64_t ldo, const float* inp, const float* w,
                              const float* bias, int64_t N, int64_t IC, int64_t OC);
  // dinp (N,IC) = dout · w, WRITTEN, or ADDED when accumulate_dinp (skipped when dinp is null);
  // dw (OC,IC) += doutᵀ · inp; dbias (OC) += Σ_rows dout (skipped when null). dout rows have
  // stride lddo ≥ OC.
  virtual void linear_backward(float* dinp, bool accumulate_dinp, float* dw, float* dbias,
                               const float* dout, int64_t lddo, const float* inp, const float* w,
                               int64_t N, int64_t IC, int64_t OC);
  // layernorm_forward with a given eps (BERT: 1e-12). layernorm_backward serves both.
  virtual void layernorm_forward_eps(float* out, float* mean, float* rstd, const float* inp,
                                     const float* w, const float* b, int64_t N, int64_t C,
                                     float eps);
  // Exact GELU: out = 0.5·x·(1 + erf(x/√2)); backward dinp = dout · gelu'(inp) (may alias dout).
  virtual void gelu_erf_forward(float* out, const float* inp, int64_t n);
  virtual void gelu_erf_backward(float* dinp, const float* inp, const float* dout, int64_t n);
  // out = tanh(inp); backward from the saved output: dinp = dout · (1 − out²) (may alias dout).
  virtual void tanh_forward(float* out, const float* inp, int64_t n);
  virtual void tanh_backward(float* dinp, const float* out, const float* dout, int64_t n);
  // out (N,C) = wte[tokens[n]] + wtt[types[n]] + wpe[n mod T]; types null = all 0.
  virtual void embedding_forward(float* out, const int32_t* tokens, const int32_t* types,
                                 const float* wte, const float* wpe, const float* wtt, int64_t B,
                                 int64_t T, int64_t C);
  // dwte[tokens[n]] += dout[n]; dwpe[t] += Σ_b dout[b,t]; dwtt[types[n]] += dout[n]; fixed order.
  virtual void embedding_backward(float* dwte, float* dwpe, float* dwtt, const float* dout,
                                  const int32_t* tokens, const int32_t* types, int64_t B,
                                  int64_t T, int64_t C);
  // dst (M,C) row m = src row idx[m].
  virtual void gather_rows(float* dst, const float* src, const int32_t* idx, int64_t M, int64_t C);
  // dst row idx[m] = src row m (other rows of dst untouched); idx has no repeats.
  virtual void scatter_rows(float* dst, const float* src, const int32_t* idx, int64_t M,
                            int64_t C);
  // out[n] = the first index of the largest of logits[n, 0..V) (rows of stride ld).
  virtual void argmax_rows(int32_t* out, const float* logits, int64_t N, int64_t V, int64_t ld);
};

template <typename T, MemoryKind K>
BackendArray<T, K>::~BackendArray() {
  if (owner_ == nullptr || data_ == nullptr) return;
  if constexpr (K == MemoryKind::kDevice) {
    owner_->free_bytes(data_);
  } else {
    owner_->free_host_bytes(data_);
  }
}

}  // namespace ptrain
