// Test code only: a Backend that behaves like a device whose memory the host cannot touch, built
// from host memory, so that the non-host-accessible path (what a CUDA backend will take) runs and
// is checked on any machine. The math is delegated to the CPU backend, so every result must be
// bitwise what the CPU backend gives; what differs is the discipline it enforces:
//
//  * host_accessible() is false.
//  * Every pointer an op, copy or fill is given must lie, with its whole extent (from the op's
//    shapes), inside one allocation of the right kind: backend memory for op operands and the
//    device side of copies; this backend's pinned host memory for the host side of *_async copies;
//    anything but backend memory for the host side of synchronous copies. Otherwise the call
//    throws InternalError naming the op and the argument.
//  * Backend memory is mapped PROT_NONE between calls (guard_pages): host code that reads or
//    writes it directly (a Buffer::span() used on the host) crashes the test instead of passing.
//  * *_async copies are queued and only run when a later call needs them (stream order: before the
//    next op or synchronous copy) or at synchronize(). A host buffer read before synchronize()
//    holds stale data, as it may on a real device.
//  * Ticketed transfers (start_upload / start_download) run on their own queues, each in issue
//    order, as late as their contract allows, so that a missing order_after() or an early read of
//    a download shows: an upload lands only at order_after(), wait_transfer(), synchronize() (or a
//    transfer_done() that says true); a download copies src as the ops issued before it left it,
//    and reaches the host only when the ticket completes. transfer_done() says false the first
//    time it is asked about a ticket (a copy still running). An op or copy touching the
//    destination of an upload not yet ordered, or writing the source of a download still running
//    (seen when it completes), throws InternalError naming the ticket.
//  * Transfers are counted (uploads, downloads, bytes), so tests can pin "one upload of the
//    weights and one download of the gradient per step".
// Like every Backend: used by one thread at a time.
#pragma once

#include "worker/model/backend.hpp"

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace ptrain::testing {

class FakeDeviceBackend final : public Backend {
 public:
  struct Transfer {
    bool upload = false;  // host → device; else device → host
    bool async = false;
    bool ticketed = false;  // start_upload / start_download (else an in-order copy)
    size_t bytes = 0;
  };
  struct Counters {
    int64_t uploads = 0, upload_bytes = 0;      // host → device copies (sync and async)
    int64_t downloads = 0, download_bytes = 0;  // device → host copies (sync and async)
    std::vector<Transfer> log;                  // every copy, in issue order
  };

  explicit FakeDeviceBackend(int threads, bool guard_pages = true);
  ~FakeDeviceBackend() override;

  std::string name() const override;
  int threads() const override { return cpu_->threads(); }
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

  const Counters& counters() const { return counters_; }
  void reset_counters() { counters_ = {}; }
  // Copies not complete yet: in-order async copies and ticketed transfers.
  size_t queued_copies() const { return queue_.size() + uploads_.size() + downloads_.size(); }

 private:
  enum class Kind { kDevice, kHost };
  struct Region {
    size_t bytes = 0;   // as asked
    size_t mapped = 0;  // whole pages (device memory)
    Kind kind = Kind::kDevice;
  };
  struct PendingCopy {
    void* dst;
    const void* src;
    size_t bytes;
  };
  struct Ticketed {
    int64_t id = 0;
    void* dst = nullptr;
    const void* src = nullptr;
    size_t bytes = 0;
    std::vector<char> snapshot;  // a download's src, as the ops issued before it left it
    bool ordered = false;        // an upload that ops were ordered after (order_after)
    int polls = 0;               // transfer_done() questions so far
  };
  class Access;  // makes backend memory accessible for one call, then guards it again

  // Throws unless [p, p + bytes) lies inside one allocation of `kind`.
  void expect(const char* op, const char* arg, const void* p, size_t bytes, Kind kind) const;
  // The same for `count` elements of T; a null pointer is allowed when `optional`.
  template <typename T>
  void dev(const char* op, const char* arg, const T* p, int64_t count, bool optional = false) const;
  // Throws when p is backend memory (the host side of a synchronous copy).
  void expect_not_device(const char* op, const char* arg, const void* p) const;
  const Region* find(const void* p, uintptr_t* begin) const;
  void set_protection(bool accessible);
  void flush();
  // Throws when [p, p + bytes) overlaps the destination of an upload no op was ordered after.
  void expect_no_pending_upload(const char* op, const char* arg, const void* p,
                                size_t bytes) const;
  // Completes the queue's transfers up to and including ticket `id` (in issue order).
  void complete_uploads(int64_t id);
  void complete_downloads(int64_t id);
  void check_ticket(const char* op, TransferTicket t) const;
  void count(bool upload, bool async, size_t bytes, bool ticketed = false);

  std::unique_ptr<Backend> cpu_;
  bool guard_pages_;
  std::map<uintptr_t, Region> regions_;
  std::vector<PendingCopy> queue_;
  std::deque<Ticketed> uploads_, downloads_;
  int64_t next_ticket_ = 1;
  Counters counters_;
};

}  // namespace ptrain::testing
