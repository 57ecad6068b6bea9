// FakeDeviceBackend (fake_device_backend.hpp): checks every pointer against its allocations, keeps
// backend memory behind PROT_NONE between calls, defers async copies, and delegates the math to
// the CPU backend.
#include "worker/fake_device_backend.hpp"

#include "common/error.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"

#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace ptrain::testing {
namespace {

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

// Elements spanned by `rows` rows of `cols` elements with a row stride of `ld`.
int64_t strided(int64_t rows, int64_t cols, int64_t ld) {
  return rows > 0 && cols > 0 ? (rows - 1) * ld + cols : 0;
}

}  // namespace

// Backend memory is readable and writable for the life of one of these (and queued copies run
// first, in issue order); guarded again afterwards.
class FakeDeviceBackend::Access {
 public:
  explicit Access(FakeDeviceBackend& be) : be_(be) {
    be_.set_protection(true);
    be_.flush();
  }
  ~Access() { be_.set_protection(false); }
  Access(const Access&) = delete;
  Access& operator=(const Access&) = delete;

 private:
  FakeDeviceBackend& be_;
};

FakeDeviceBackend::FakeDeviceBackend(int threads, bool guard_pages)
    : cpu_(make_cpu_backend(threads)), guard_pages_(guard_pages) {}

FakeDeviceBackend::~FakeDeviceBackend() {
  for (auto& [begin, r] : regions_) {  // leaked buffers (a test that failed midway)
    if (r.kind == Kind::kDevice) {
      munmap(reinterpret_cast<void*>(begin), r.mapped);
    } else {
      std::free(reinterpret_cast<void*>(begin));
    }
  }
}

std::string FakeDeviceBackend::name() const { return "fake device over " + cpu_->name(); }

// ---- memory ------------------------------------------------------------------------------------

void* FakeDeviceBackend::allocate_bytes(size_t bytes) {
  const size_t pg = page_size();
  const size_t mapped = std::max(pg, (bytes + pg - 1) / pg * pg);
  void* p = mmap(nullptr, mapped, guard_pages_ ? PROT_NONE : PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  regions_[reinterpret_cast<uintptr_t>(p)] = Region{bytes, mapped, Kind::kDevice};
  return p;
}

void FakeDeviceBackend::free_bytes(void* p) noexcept {
  auto it = regions_.find(reinterpret_cast<uintptr_t>(p));
  if (it == regions_.end() || it->second.kind != Kind::kDevice) std::abort();  // a broken Buffer
  munmap(p, it->second.mapped);
  regions_.erase(it);
}

void* FakeDeviceBackend::allocate_host_bytes(size_t bytes) {
  void* p = std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64));
  if (p == nullptr) throw std::bad_alloc();
  regions_[reinterpret_cast<uintptr_t>(p)] = Region{bytes, 0, Kind::kHost};
  return p;
}

void FakeDeviceBackend::free_host_bytes(void* p) noexcept {
  auto it = regions_.find(reinterpret_cast<uintptr_t>(p));
  if (it == regions_.end() || it->second.kind != Kind::kHost) std::abort();  // a broken HostBuffer
  std::free(p);
  regions_.erase(it);
}

const FakeDeviceBackend::Region* FakeDeviceBackend::find(const void* p, uintptr_t* begin) const {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  auto it = regions_.upper_bound(addr);
  if (it == regions_.begin()) return nullptr;
  --it;
  if (addr >= it->first + std::max<size_t>(it->second.bytes, 1)) return nullptr;
  *begin = it->first;
  return &it->second;
}

void FakeDeviceBackend::expect(const char* op, const char* arg, const void* p, size_t bytes,
                               Kind kind) const {
  const char* want = kind == Kind::kDevice ? "backend (device) memory" : "pinned host memory";
  uintptr_t begin = 0;
  const Region* r = find(p, &begin);
  std::string why;
  if (r == nullptr) {
    why = "it lies in no allocation of this backend";
  } else if (r->kind != kind) {
    why = r->kind == Kind::kDevice ? "it is backend (device) memory" : "it is pinned host memory";
  } else if (reinterpret_cast<uintptr_t>(p) + bytes > begin + r->bytes) {
    why = fmt::format("it runs {} bytes past the end of a {}-byte allocation",
                      reinterpret_cast<uintptr_t>(p) + bytes - (begin + r->bytes), r->bytes);
  } else {
    return;
  }
  throw InternalError(fmt::format("FakeDeviceBackend::{}: argument {} ({}, {} bytes) must be {} "
                                  "allocated by this backend: {}",
                                  op, arg, p, bytes, want, why));
}

void FakeDeviceBackend::expect_no_pending_upload(const char* op, const char* arg, const void* p,
                                                 size_t bytes) const {
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (const Ticketed& u : uploads_) {
    const auto d = reinterpret_cast<uintptr_t>(u.dst);
    if (!u.ordered && a < d + u.bytes && d < a + bytes) {
      throw InternalError(fmt::format(
          "FakeDeviceBackend::{}: argument {} ({}, {} bytes) overlaps what upload ticket {} writes, "
          "and no op was ordered after that upload (order_after): a race on a device",
          op, arg, p, bytes, u.id));
    }
  }
}

template <typename T>
void FakeDeviceBackend::dev(const char* op, const char* arg, const T* p, int64_t count,
                            bool optional) const {
  if (p == nullptr && optional) return;
  if (count <= 0) return;
  expect(op, arg, p, static_cast<size_t>(count) * sizeof(T), Kind::kDevice);
  expect_no_pending_upload(op, arg, p, static_cast<size_t>(count) * sizeof(T));
}

void FakeDeviceBackend::expect_not_device(const char* op, const char* arg, const void* p) const {
  uintptr_t begin = 0;
  const Region* r = find(p, &begin);
  if (r != nullptr && r->kind == Kind::kDevice) {
    throw InternalError(fmt::format(
        "FakeDeviceBackend::{}: argument {} ({}) is backend (device) memory, host memory expected",
        op, arg, p));
  }
}

void FakeDeviceBackend::set_protection(bool accessible) {
  if (!guard_pages_) return;
  for (const auto& [begin, r] : regions_) {
    if (r.kind != Kind::kDevice) continue;
    if (mprotect(reinterpret_cast<void*>(begin), r.mapped,
                 accessible ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) {
      std::abort();  // cannot happen for our own mappings; continuing would hide memory errors
    }
  }
}

void FakeDeviceBackend::flush() {
  for (const PendingCopy& c : queue_) std::memcpy(c.dst, c.src, c.bytes);
  queue_.clear();
}

void FakeDeviceBackend::count(bool upload, bool async, size_t bytes, bool ticketed) {
  (upload ? counters_.uploads : counters_.downloads) += 1;
  (upload ? counters_.upload_bytes : counters_.download_bytes) += static_cast<int64_t>(bytes);
  counters_.log.push_back({upload, async, ticketed, bytes});
}

void FakeDeviceBackend::copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  expect("copy_to_device", "dst", dst, bytes, Kind::kDevice);
  expect_no_pending_upload("copy_to_device", "dst", dst, bytes);
  expect_not_device("copy_to_device", "src_host", src);
  Access a(*this);
  std::memcpy(dst, src, bytes);
  count(true, false, bytes);
}

void FakeDeviceBackend::copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  expect("copy_to_host", "src", src, bytes, Kind::kDevice);
  expect_no_pending_upload("copy_to_host", "src", src, bytes);
  expect_not_device("copy_to_host", "dst_host", dst);
  Access a(*this);
  std::memcpy(dst, src, bytes);
  count(false, false, bytes);
}

void FakeDeviceBackend::copy_to_device_async(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  expect("copy_to_device_async", "dst", dst, bytes, Kind::kDevice);
  expect_no_pending_upload("copy_to_device_async", "dst", dst, bytes);
  expect("copy_to_device_async", "src_host", src, bytes, Kind::kHost);
  queue_.push_back({dst, src, bytes});
  count(true, true, bytes);
}

void FakeDeviceBackend::copy_to_host_async(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  expect("copy_to_host_async", "src", src, bytes, Kind::kDevice);
  expect_no_pending_upload("copy_to_host_async", "src", src, bytes);
  expect("copy_to_host_async", "dst_host", dst, bytes, Kind::kHost);
  queue_.push_back({dst, src, bytes});
  count(false, true, bytes);
}

void FakeDeviceBackend::synchronize() {
  if (!uploads_.empty()) complete_uploads(uploads_.back().id);
  if (!downloads_.empty()) complete_downloads(downloads_.back().id);
  Access a(*this);
  cpu_->synchronize();
}

// ---- ticketed transfers ----------------------------------------------------------------------

TransferTicket FakeDeviceBackend::start_upload(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) {
    expect("start_upload", "dst", dst, bytes, Kind::kDevice);
    expect("start_upload", "src_host", src, bytes, Kind::kHost);
  }
  Ticketed u;
  u.id = next_ticket_++;
  u.dst = dst;
  u.src = src;
  u.bytes = bytes;
  uploads_.push_back(std::move(u));
  count(true, true, bytes, true);
  return {uploads_.back().id};
}

TransferTicket FakeDeviceBackend::start_download(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) {
    expect("start_download", "src", src, bytes, Kind::kDevice);
    expect_no_pending_upload("start_download", "src", src, bytes);
    expect("start_download", "dst_host", dst, bytes, Kind::kHost);
  }
  Ticketed d;
  d.id = next_ticket_++;
  d.dst = dst;
  d.src = src;
  d.bytes = bytes;
  {
    Access a(*this);  // every op issued so far has run (they run at issue here)
    const auto* p = static_cast<const char*>(src);
    d.snapshot.assign(p, p + bytes);
  }
  downloads_.push_back(std::move(d));
  count(false, true, bytes, true);
  return {downloads_.back().id};
}

void FakeDeviceBackend::check_ticket(const char* op, TransferTicket t) const {
  if (t.id < 1 || t.id >= next_ticket_) {
    throw InternalError(fmt::format("FakeDeviceBackend::{}: ticket {} was never issued", op, t.id));
  }
}

void FakeDeviceBackend::complete_uploads(int64_t id) {
  Access a(*this);  // in-order copies issued earlier land first
  while (!uploads_.empty() && uploads_.front().id <= id) {
    const Ticketed& u = uploads_.front();
    std::memcpy(u.dst, u.src, u.bytes);  // the host source as it is now: as late as allowed
    uploads_.pop_front();
  }
}

void FakeDeviceBackend::complete_downloads(int64_t id) {
  Access a(*this);
  while (!downloads_.empty() && downloads_.front().id <= id) {
    const Ticketed d = std::move(downloads_.front());
    downloads_.pop_front();  // complete either way: a race is reported once
    if (std::memcmp(d.src, d.snapshot.data(), d.bytes) != 0) {
      throw InternalError(fmt::format(
          "FakeDeviceBackend: the source of download ticket {} ({}, {} bytes) was written by an op "
          "issued after the download started, before it was complete: a race on a device",
          d.id, d.src, d.bytes));
    }
    std::memcpy(d.dst, d.snapshot.data(), d.bytes);
  }
}

void FakeDeviceBackend::order_after(TransferTicket t) {
  check_ticket("order_after", t);
  for (Ticketed& u : uploads_) {
    if (u.id == t.id) {
      u.ordered = true;
      complete_uploads(t.id);  // the next op must see it
      return;
    }
  }
  for (const Ticketed& d : downloads_) {
    if (d.id == t.id) {
      throw InternalError(
          fmt::format("FakeDeviceBackend::order_after: ticket {} is a download", t.id));
    }
  }
}

bool FakeDeviceBackend::transfer_done(TransferTicket t) {
  check_ticket("transfer_done", t);
  for (auto* q : {&uploads_, &downloads_}) {
    for (Ticketed& x : *q) {
      if (x.id != t.id) continue;
      if (x.polls++ == 0) return false;  // still running, the first time anyone asks
      if (q == &uploads_) {
        complete_uploads(t.id);
      } else {
        complete_downloads(t.id);
      }
      return true;
    }
  }
  return true;  // completed earlier
}

void FakeDeviceBackend::wait_transfer(TransferTicket t) {
  check_ticket("wait_transfer", t);
  for (const Ticketed& u : uploads_) {
    if (u.id == t.id) return complete_uploads(t.id);
  }
  for (const Ticketed& d : downloads_) {
    if (d.id == t.id) return complete_downloads(t.id);
  }
}

void FakeDeviceBackend::copy(float* dst, const float* src, int64_t n) {
  dev("copy", "dst", dst, n);
  dev("copy", "src", src, n);
  Access a(*this);
  cpu_->copy(dst, src, n);
}

void FakeDeviceBackend::fill(float* dst, float value, int64_t n) {
  dev("fill", "dst", dst, n);
  Access a(*this);
  cpu_->fill(dst, value, n);
}

void FakeDeviceBackend::fill_columns(float* dst, float value, int64_t rows, int64_t col_begin,
                                     int64_t col_end, int64_t ld) {
  dev("fill_columns", "dst", dst, col_end > col_begin ? strided(rows, col_end, ld) : 0);
  Access a(*this);
  cpu_->fill_columns(dst, value, rows, col_begin, col_end, ld);
}

// ---- ops ---------------------------------------------------------------------------------------

void FakeDeviceBackend::gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                             const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                             float* c, int64_t ldc) {
  dev("gemm", "a", a, ta == Trans::kNo ? strided(M, K, lda) : strided(K, M, lda));
  dev("gemm", "b", b, tb == Trans::kNo ? strided(K, N, ldb) : strided(N, K, ldb));
  dev("gemm", "c", c, strided(M, N, ldc));
  Access acc(*this);
  cpu_->gemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}

void FakeDeviceBackend::matmul_forward(float* out, const float* inp, const float* w,
                                       const float* bias, int64_t N, int64_t IC, int64_t OC) {
  dev("matmul_forward", "out", out, N * OC);
  dev("matmul_forward", "inp", inp, N * IC);
  dev("matmul_forward", "w", w, IC * OC);
  dev("matmul_forward", "bias", bias, OC, true);
  Access a(*this);
  cpu_->matmul_forward(out, inp, w, bias, N, IC, OC);
}

void FakeDeviceBackend::matmul_residual_forward(float* out, const float* residual,
                                                const float* inp, const float* w,
                                                const float* bias, int64_t N, int64_t IC,
                                                int64_t OC) {
  dev("matmul_residual_forward", "out", out, N * OC);
  dev("matmul_residual_forward", "residual", residual, N * OC);
  dev("matmul_residual_forward", "inp", inp, N * IC);
  dev("matmul_residual_forward", "w", w, IC * OC);
  dev("matmul_residual_forward", "bias", bias, OC, true);
  Access a(*this);
  cpu_->matmul_residual_forward(out, residual, inp, w, bias, N, IC, OC);
}

void FakeDeviceBackend::matmul_backward(float* dinp, float* dw, float* dbias, const float* dout,
                                        const float* inp, const float* w, int64_t N, int64_t IC,
                                        int64_t OC) {
  dev("matmul_backward", "dinp", dinp, N * IC, true);
  dev("matmul_backward", "dw", dw, IC * OC);
  dev("matmul_backward", "dbias", dbias, OC, true);
  dev("matmul_backward", "dout", dout, N * OC);
  dev("matmul_backward", "inp", inp, N * IC);
  dev("matmul_backward", "w", w, IC * OC);
  Access a(*this);
  cpu_->matmul_backward(dinp, dw, dbias, dout, inp, w, N, IC, OC);
}

void FakeDeviceBackend::encoder_forward(float* out, const int32_t* tokens, const float* wte,
                                        const float* wpe, int64_t B, int64_t T, int64_t C) {
  dev("encoder_forward", "out", out, B * T * C);
  dev("encoder_forward", "tokens", tokens, B * T);
  dev("encoder_forward", "wpe", wpe, T * C);
  Access a(*this);
  // wte's extent depends on the ids (device memory: readable inside the Access).
  const int32_t top = B * T > 0 ? *std::max_element(tokens, tokens + B * T) : -1;
  dev("encoder_forward", "wte", wte, (static_cast<int64_t>(top) + 1) * C);
  cpu_->encoder_forward(out, tokens, wte, wpe, B, T, C);
}

void FakeDeviceBackend::encoder_backward(float* dwte, float* dwpe, const float* dout,
                                         const int32_t* tokens, int64_t B, int64_t T, int64_t C) {
  dev("encoder_backward", "dwpe", dwpe, T * C);
  dev("encoder_backward", "dout", dout, B * T * C);
  dev("encoder_backward", "tokens", tokens, B * T);
  Access a(*this);
  const int32_t top = B * T > 0 ? *std::max_element(tokens, tokens + B * T) : -1;
  dev("encoder_backward", "dwte", dwte, (static_cast<int64_t>(top) + 1) * C);
  cpu_->encoder_backward(dwte, dwpe, dout, tokens, B, T, C);
}

void FakeDeviceBackend::layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                          const float* w, const float* b, int64_t N, int64_t C) {
  dev("layernorm_forward", "out", out, N * C);
  dev("layernorm_forward", "mean", mean, N, true);
  dev("layernorm_forward", "rstd", rstd, N, true);
  dev("layernorm_forward", "inp", inp, N * C);
  dev("layernorm_forward", "w", w, C);
  dev("layernorm_forward", "b", b, C);
  Access a(*this);
  cpu_->layernorm_forward(out, mean, rstd, inp, w, b, N, C);
}

void FakeDeviceBackend::layernorm_backward(float* dinp, float* dw, float* db, const float* dout,
                                           const float* inp, const float* w, const float* mean,
                                           const float* rstd, int64_t N, int64_t C) {
  dev("layernorm_backward", "dinp", dinp, N * C);
  dev("layernorm_backward", "dw", dw, C);
  dev("layernorm_backward", "db", db, C);
  dev("layernorm_backward", "dout", dout, N * C);
  dev("layernorm_backward", "inp", inp, N * C);
  dev("layernorm_backward", "w", w, C);
  dev("layernorm_backward", "mean", mean, N);
  dev("layernorm_backward", "rstd", rstd, N);
  Access a(*this);
  cpu_->layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
}

void FakeDeviceBackend::residual_forward(float* out, const float* a, const float* b, int64_t n) {
  dev("residual_forward", "out", out, n);
  dev("residual_forward", "a", a, n);
  dev("residual_forward", "b", b, n);
  Access acc(*this);
  cpu_->residual_forward(out, a, b, n);
}

void FakeDeviceBackend::gelu_forward(float* out, const float* inp, int64_t n) {
  dev("gelu_forward", "out", out, n);
  dev("gelu_forward", "inp", inp, n);
  Access a(*this);
  cpu_->gelu_forward(out, inp, n);
}

void FakeDeviceBackend::gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  dev("gelu_backward", "dinp", dinp, n);
  dev("gelu_backward", "inp", inp, n);
  dev("gelu_backward", "dout", dout, n);
  Access a(*this);
  cpu_->gelu_backward(dinp, inp, dout, n);
}

void FakeDeviceBackend::attention_forward(float* out, float* lse, const float* qkv,
                                          const AttentionShape& sh) {
  const int64_t B = sh.B, T = sh.T, C = sh.C, NH = sh.NH;
  dev("attention_forward", "out", out, B * T * C);
  dev("attention_forward", "lse", lse, B * NH * T);
  dev("attention_forward", "qkv", qkv, B * T * 3 * C);
  dev("attention_forward", "key_valid", sh.key_valid, B * T, true);
  Access a(*this);
  cpu_->attention_forward(out, lse, qkv, sh);
}

void FakeDeviceBackend::attention_backward(float* dqkv, float* scratch, const float* dout,
                                           const float* out, const float* qkv, const float* lse,
                                           const AttentionShape& sh) {
  const int64_t B = sh.B, T = sh.T, C = sh.C, NH = sh.NH;
  dev("attention_backward", "dqkv", dqkv, B * T * 3 * C);
  dev("attention_backward", "scratch", scratch, B * NH * T);
  dev("attention_backward", "dout", dout, B * T * C);
  dev("attention_backward", "out", out, B * T * C);
  dev("attention_backward", "qkv", qkv, B * T * 3 * C);
  dev("attention_backward", "lse", lse, B * NH * T);
  dev("attention_backward", "key_valid", sh.key_valid, B * T, true);
  Access a(*this);
  cpu_->attention_backward(dqkv, scratch, dout, out, qkv, lse, sh);
}

void FakeDeviceBackend::attention_decode(float* out, float* scratch, const float* q,
                                         const float* kcache, const float* vcache, int64_t npos,
                                         int64_t ld, int64_t C, int64_t NH) {
  dev("attention_decode", "out", out, C);
  dev("attention_decode", "scratch", scratch, npos);
  dev("attention_decode", "q", q, C);
  dev("attention_decode", "kcache", kcache, strided(npos, C, ld));
  dev("attention_decode", "vcache", vcache, strided(npos, C, ld));
  Access a(*this);
  cpu_->attention_decode(out, scratch, q, kcache, vcache, npos, ld, C, NH);
}

void FakeDeviceBackend::crossentropy_forward(float* losses, const float* logits,
                                             const int32_t* targets, int64_t N, int64_t V,
                                             int64_t ld) {
  dev("crossentropy_forward", "losses", losses, N);
  dev("crossentropy_forward", "logits", logits, strided(N, V, ld));
  dev("crossentropy_forward", "targets", targets, N);
  Access a(*this);
  cpu_->crossentropy_forward(losses, logits, targets, N, V, ld);
}

void FakeDeviceBackend::crossentropy_forward_backward(float* losses, float* logits,
                                                      const int32_t* targets, float dloss,
                                                      int64_t N, int64_t V, int64_t ld) {
  dev("crossentropy_forward_backward", "losses", losses, N);
  dev("crossentropy_forward_backward", "logits", logits, strided(N, V, ld));
  dev("crossentropy_forward_backward", "targets", targets, N);
  Access a(*this);
  cpu_->crossentropy_forward_backward(losses, logits, targets, dloss, N, V, ld);
}

}  // namespace ptrain::testing
