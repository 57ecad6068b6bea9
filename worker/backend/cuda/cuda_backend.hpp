// The CUDA backend: one GPU, the Backend ops as cuBLASLt products (cuda_matmul.hpp) and custom
// kernels (cuda_kernels.hpp). Built only with CUDA (PTRAIN_HAS_CUDA); created through the
// backend factory (cuda_factory.hpp), which is the only code outside this folder that names it.
//
// Streams: every op runs on one compute stream (stream(), the Backend's in-order queue). Uploads
// and downloads run on their own copy streams. The *_async copies are joined to the compute stream
// by events on both sides (the copy waits for earlier ops, later ops wait for the copy), which
// keeps the Backend's in-order contract exact. The ticketed transfers (start_upload,
// start_download) are joined on one side only, so they overlap compute: an upload starts at once
// and ops wait for its event after order_after(); a download waits for an event recorded on the
// compute stream and nothing waits for it but the host (transfer_done polls its event,
// wait_transfer synchronizes on it). Host transfer memory (HostBuffer) is pinned (cudaHostAlloc),
// so all of these are DMA transfers that return at once.
//
// GELU epilogues: the MLP's c_fc runs bias + GELU in the product's store (matmul_gelu_forward)
// and its backward applies GELU's derivative (and sums b1's gradient) in the store of dy·w2ᵀ
// (matmul_gelu_backward), where cuBLASLt allows it (see cuda_backend.cpp); elsewhere the unfused
// kernels, which give the same numbers up to cuBLASLt's GELU arithmetic.
//
// Precision (device.precision): fp32 products, TF32 tensor cores when device.allow_tf32; or bf16:
// each product's operands are rounded to bf16 copies in a workspace just before the product
// (weights included: the fp32 weights in GptState stay the only copy, so nothing can go stale),
// accumulated and written in fp32. Everything else (LayerNorm statistics, softmax, the loss,
// gradient sums) is fp32 in both modes. docs/cuda.md gives the reasons and the tolerances.
//
// Determinism: no floating-point atomics; cuBLASLt's algorithm is fixed per shape. Results are
// bitwise repeatable on the same GPU model and build.
// Like every Backend: used by one thread at a time (the thread that created it: CUDA's current
// device is per thread).
#pragma once

#include "worker/backend/cuda/cuda_factory.hpp"
#include "worker/backend/cuda/cuda_matmul.hpp"

#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace ptrain {

class CudaBackend final : public Backend {
 public:
  CudaBackend(const CudaBackendOptions& options, const std::string& origin);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  // The compute stream: where every op runs (for kernels written outside this class).
  cudaStream_t stream() const { return compute_; }
  int device() const { return options_.device; }
  // Bytes of device memory in use on this GPU (all processes) and its total.
  std::pair<size_t, size_t> memory_used_total() const;
  // cuda_bf16_matmul_peak (cuda_factory.hpp).
  double bf16_matmul_peak(int64_t n);

  std::string name() const override { return name_; }
  int threads() const override { return 1; }
  bool host_accessible() const override { return false; }

  void* allocate_bytes(size_t bytes) override;
  void free_bytes(void* p) noexcept override;
  void* allocate_host_bytes(size_t bytes) override;
  void free_host_bytes(void* p) noexcept override;
  void copy_to_device(void* dst, const void* src_host, size_t bytes) override;
  void copy_to_host(void* dst_host, const void* src, size_t bytes) override;
  void copy_to_device_async(void* dst, const void* src_host, size_t bytes) override;
  void copy_to_host_async(void* dst_host, const void* src, size_t bytes) override;
  void copy(float* dst, const float* src, int64_t n) override;
  void fill(float* dst, float value, int64_t n) override;
  void fill_columns(float* dst, float value, int64_t rows, int64_t col_begin, int64_t col_end,
                    int64_t ld) override;
  void synchronize() override;
  TransferTicket start_upload(void* dst, const void* src_host, size_t bytes) override;
  void order_after(TransferTicket t) override;
  TransferTicket start_download(void* dst_host, const void* src, size_t bytes) override;
  bool transfer_done(TransferTicket t) override;
  void wait_transfer(TransferTicket t) override;
  // cuda_epilogue_report (cuda_factory.hpp).
  std::string epilogue_report() const;

  void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* a,
            int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) override;
  void matmul_forward(float* out, const float* inp, const float* w, const float* bias, int64_t N,
                      int64_t IC, int64_t OC) override;
  void matmul_residual_forward(float* out, const float* residual, const float* inp, const float* w,
                               const float* bias, int64_t N, int64_t IC, int64_t OC) override;
  void matmul_backward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                       const float* w, int64_t N, int64_t IC, int64_t OC) override;
  void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                       int64_t B, int64_t T, int64_t C) override;
  void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                        int64_t B, int64_t T, int64_t C) override;
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                         const float* b, int64_t N, int64_t C) override;
  void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                          const float* w, const float* mean, const float* rstd, int64_t N,
                          int64_t C) override;
  void residual_forward(float* out, const float* a, const float* b, int64_t n) override;
  void gelu_forward(float* out, const float* inp, int64_t n) override;
  void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) override;
  void matmul_gelu_forward(float* out, float* pre, const float* inp, const float* w,
                           const float* bias, int64_t N, int64_t IC, int64_t OC) override;
  void matmul_gelu_backward(const GeluMlpBackward& g) override;
  void attention_forward(float* out, float* lse, const float* qkv,
                         const AttentionShape& shape) override;
  void attention_backward(float* dqkv, float* scratch, const float* dout, const float* out,
                          const float* qkv, const float* lse, const AttentionShape& shape) override;
  void attention_decode(float* out, float* scratch, const float* q, const float* kcache,
                        const float* vcache, int64_t npos, int64_t ld, int64_t C,
                        int64_t NH) override;
  void crossentropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N,
                            int64_t V, int64_t ld) override;
  void crossentropy_forward_backward(float* losses, float* logits, const int32_t* targets,
                                     float dloss, int64_t N, int64_t V, int64_t ld) override;

  void linear_forward(float* out, int64_t ldo, const float* inp, const float* w, const float* bias,
                      int64_t N, int64_t IC, int64_t OC) override;
  void linear_backward(float* dinp, bool accumulate_dinp, float* dw, float* dbias,
                       const float* dout, int64_t lddo, const float* inp, const float* w,
                       int64_t N, int64_t IC, int64_t OC) override;
  void layernorm_forward_eps(float* out, float* mean, float* rstd, const float* inp,
                             const float* w, const float* b, int64_t N, int64_t C,
                             float eps) override;
  void gelu_erf_forward(float* out, const float* inp, int64_t n) override;
  void gelu_erf_backward(float* dinp, const float* inp, const float* dout, int64_t n) override;
  void tanh_forward(float* out, const float* inp, int64_t n) override;
  void tanh_backward(float* dinp, const float* out, const float* dout, int64_t n) override;
  void embedding_forward(float* out, const int32_t* tokens, const int32_t* types, const float* wte,
                         const float* wpe, const float* wtt, int64_t B, int64_t T,
                         int64_t C) override;
  void embedding_backward(float* dwte, float* dwpe, float* dwtt, const float* dout,
                          const int32_t* tokens, const int32_t* types, int64_t B, int64_t T,
                          int64_t C) override;
  void gather_rows(float* dst, const float* src, const int32_t* idx, int64_t M,
                   int64_t C) override;
  void scatter_rows(float* dst, const float* src, const int32_t* idx, int64_t M,
                    int64_t C) override;
  void argmax_rows(int32_t* out, const float* logits, int64_t N, int64_t V, int64_t ld) override;

 private:
  // A row-major matrix operand of a product, as the product will read it.
  struct Operand {
    const void* p;
    int64_t ld;
  };
  // The workspace (device memory, stream-ordered: valid for the op that asked, reused by the
  // next). Grows on demand (cudaFree waits for the GPU, so no queued op loses its memory).
  char* workspace(size_t bytes);
  // `x` (rows, cols; ld) as the product's input: itself in fp32, or its bf16 copy written at
  // `*slot` (which advances) in bf16 mode.
  Operand operand(const float* x, int64_t rows, int64_t cols, int64_t ld, char** slot);
  static int64_t bf16_ld(int64_t cols);
  static size_t bf16_bytes(int64_t rows, int64_t cols);
  // One product through cuBLASLt; K = 0 is beta·c (or the bias) and M·N = 0 nothing. With a
  // GELU epilogue (aux, ld_aux, bias_grad as LtProduct's) it may return false: cuBLASLt has no
  // algorithm for it, nothing was queued, `why` says what it answered.
  bool product(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, Operand a,
               Operand b, float beta, const float* c, int64_t ldc, float* d, int64_t ldd,
               const float* bias, LtEpilogue epilogue = LtEpilogue::kNone,
               float* aux = nullptr, int64_t ld_aux = 0, float* bias_grad = nullptr,
               std::string* why = nullptr);
  // Why a GELU epilogue cannot be asked for with this aux matrix (row length ld), or null.
  const char* unfusable(const void* aux, int64_t ld) const;
  // The event of a transfer not known complete yet (null when it is), or a thrown InternalError
  // for a ticket this backend never issued.
  cudaEvent_t ticket_event(TransferTicket t, const char* op) const;
  void release_ticket(TransferTicket t);
  // A new ticket and its completion event (recorded by the caller).
  TransferTicket new_ticket(cudaEvent_t* event);
  bool bf16() const { return options_.precision == DevicePrecision::kBf16; }

  CudaBackendOptions options_;
  std::string name_;
  cudaStream_t compute_ = nullptr, upload_ = nullptr, download_ = nullptr;
  cudaEvent_t compute_done_ = nullptr, upload_done_ = nullptr, download_done_ = nullptr;
  std::unique_ptr<LtMatmul> lt_;
  char* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  // Ticketed transfers: each one's completion event, until the host knows it is complete.
  std::map<int64_t, cudaEvent_t> tickets_;
  std::vector<cudaEvent_t> spare_events_;
  int64_t next_ticket_ = 1;
  cudaEvent_t download_mark_ = nullptr;  // the compute-stream point a download waits for
  struct EpilogueStats {
    int64_t gelu_fused = 0, gelu_unfused = 0;
    int64_t dgelu_bgrad = 0, dgelu = 0, dgelu_unfused = 0;
    std::string last_refusal;  // cuBLASLt's answer or our own reason, the last time it fell back
  } stats_;
};

}  // namespace ptrain
