// CudaBackend (cuda_backend.hpp) and make_cuda_backend (cuda_factory.hpp).
#include "worker/backend/cuda/cuda_backend.hpp"

#include "worker/backend/cuda/cuda_attention.hpp"

#include "common/error.hpp"
#include "worker/backend/cuda/cuda_check.hpp"
#include "worker/backend/cuda/cuda_kernels.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace ptrain {
namespace {

constexpr float kLayerNormEps = 1e-5f;  // GPT-2's (Backend::layernorm_forward)
constexpr int kMinMajor = 8;            // the build's oldest architecture (sm_80)

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// Opens GPU `index` or throws DeviceError saying what is missing. Returns its description.
std::string open_device(int index, const std::string& origin) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver) {
    int driver = 0;
    cudaDriverGetVersion(&driver);
    int runtime = 0;
    cudaRuntimeGetVersion(&runtime);
    if (driver == 0) {
      throw DeviceError(fmt::format(
          "{}: no CUDA driver on this machine (libcuda could not be loaded): the cuda backend "
          "needs an NVIDIA driver and GPU; use --device cpu / device.type: cpu",
          origin));
    }
    throw DeviceError(fmt::format(
        "{}: the CUDA driver supports CUDA {}.{}, older than this build's runtime {}.{}: "
        "update the NVIDIA driver",
        origin, driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10));
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    throw DeviceError(fmt::format(
        "{}: a CUDA driver is installed but no GPU is visible to this process (check nvidia-smi "
        "and CUDA_VISIBLE_DEVICES); use --device cpu / device.type: cpu",
        origin));
  }
  if (e != cudaSuccess) {
    throw DeviceError(fmt::format("{}: CUDA cannot list the GPUs: {} ({})", origin,
                                  cudaGetErrorName(e), cudaGetErrorString(e)));
  }
  if (index >= count) {
    throw DeviceError(fmt::format("{}: no GPU number {}: this machine has {} (cuda:0 to cuda:{})",
                                  origin, index, count, count - 1));
  }
  PTRAIN_CUDA_CHECK(cudaSetDevice(index));
  cudaDeviceProp prop{};
  PTRAIN_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  if (prop.major < kMinMajor) {
    throw DeviceError(fmt::format(
        "{}: GPU {} ({}) has compute capability {}.{}; this build's kernels need 8.0 or newer "
        "(bf16 tensor cores)",
        origin, index, prop.name, prop.major, prop.minor));
  }
  return fmt::format("{}, cc {}.{}, {:.0f} GiB", prop.name, prop.major, prop.minor,
                     static_cast<double>(prop.totalGlobalMem) / (1 << 30));
}

}  // namespace

void check_cuda_device(int index, const std::string& origin) { open_device(index, origin); }

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options,
                                           const std::string& origin) {
  return std::make_unique<CudaBackend>(options, origin);
}

CudaBackend::CudaBackend(const CudaBackendOptions& options, const std::string& origin)
    : options_(options) {
  const std::string gpu = open_device(options.device, origin);
  name_ = fmt::format("cuda:{} ({}; {})", options.device, gpu,
                      bf16() ? "bf16 products, fp32 accumulation"
                             : (options.allow_tf32 ? "fp32, TF32 products" : "fp32"));
  PTRAIN_CUDA_CHECK(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
  PTRAIN_CUDA_CHECK(cudaStreamCreateWithFlags(&upload_, cudaStreamNonBlocking));
  PTRAIN_CUDA_CHECK(cudaStreamCreateWithFlags(&download_, cudaStreamNonBlocking));
  PTRAIN_CUDA_CHECK(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming));
  PTRAIN_CUDA_CHECK(cudaEventCreateWithFlags(&upload_done_, cudaEventDisableTiming));
  PTRAIN_CUDA_CHECK(cudaEventCreateWithFlags(&download_done_, cudaEventDisableTiming));
  PTRAIN_CUDA_CHECK(cudaEventCreateWithFlags(&download_mark_, cudaEventDisableTiming));
  lt_ = std::make_unique<LtMatmul>(compute_, options.allow_tf32);
}

CudaBackend::~CudaBackend() {
  // Errors here cannot be reported (a destructor); the GPU work is finished or abandoned.
  if (compute_ != nullptr) cudaStreamSynchronize(compute_);
  lt_.reset();
  if (workspace_ != nullptr) cudaFree(workspace_);
  for (cudaStream_t s : {upload_, download_}) {
    if (s != nullptr) cudaStreamSynchronize(s);
  }
  for (cudaEvent_t e : {compute_done_, upload_done_, download_done_, download_mark_}) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  for (const auto& [id, e] : tickets_) cudaEventDestroy(e);
  for (cudaEvent_t e : spare_events_) cudaEventDestroy(e);
  for (cudaStream_t s : {compute_, upload_, download_}) {
    if (s != nullptr) cudaStreamDestroy(s);
  }
}

bool is_cuda_backend(const Backend& backend) {
  return dynamic_cast<const CudaBackend*>(&backend) != nullptr;
}

double cuda_bf16_matmul_peak(Backend& backend, int64_t n) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  PTRAIN_ENFORCE(cuda != nullptr, "backend {} is not a cuda backend", backend.name());
  return cuda->bf16_matmul_peak(n);
}

std::pair<size_t, size_t> cuda_memory(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  PTRAIN_ENFORCE(cuda != nullptr, "backend {} is not a cuda backend", backend.name());
  return cuda->memory_used_total();
}

std::string cuda_epilogue_report(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  PTRAIN_ENFORCE(cuda != nullptr, "backend {} is not a cuda backend", backend.name());
  return cuda->epilogue_report();
}

std::string CudaBackend::epilogue_report() const {
  const EpilogueStats& s = stats_;
  std::string r = fmt::format(
      "GELU epilogue: forward {} fused / {} unfused; backward {} fused with the bias gradient "
      "(DGELU_BGRAD), {} fused without (DGELU), {} unfused",
      s.gelu_fused, s.gelu_unfused, s.dgelu_bgrad, s.dgelu, s.dgelu_unfused);
  if (!s.last_refusal.empty()) r += fmt::format(" (last fallback: {})", s.last_refusal);
  return r;
}

double CudaBackend::bf16_matmul_peak(int64_t n) {
  PTRAIN_ENFORCE(n > 0, "matrix size {}", n);
  Buffer<float> d = alloc<float>(n * n);
  Buffer<uint16_t> a = alloc<uint16_t>(n * n), b = alloc<uint16_t>(n * n);
  fill(d.data(), 0.01f, n * n);  // finite operands: the values do not change the speed
  cuda_kernels::to_bf16(a.data(), n, d.data(), n, n, n, compute_);
  cuda_kernels::to_bf16(b.data(), n, d.data(), n, n, n, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
  LtProduct p;
  p.M = p.N = p.K = n;
  p.a = a.data();
  p.lda = n;
  p.b = b.data();
  p.ldb = n;
  p.d = d.data();
  p.ldd = n;
  p.input = LtInput::kBf16;
  cudaEvent_t start = nullptr, stop = nullptr;
  PTRAIN_CUDA_CHECK(cudaEventCreate(&start));
  PTRAIN_CUDA_CHECK(cudaEventCreate(&stop));
  float best_ms = 0.0f;
  try {
    for (int i = 0; i < 7; ++i) {
      PTRAIN_CUDA_CHECK(cudaEventRecord(start, compute_));
      lt_->run(p);
      PTRAIN_CUDA_CHECK(cudaEventRecord(stop, compute_));
      PTRAIN_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0.0f;
      PTRAIN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (i >= 2 && (best_ms == 0.0f || ms < best_ms)) best_ms = ms;
    }
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    throw;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) /
         (static_cast<double>(best_ms) * 1e-3);
}

std::pair<size_t, size_t> CudaBackend::memory_used_total() const {
  size_t free = 0, total = 0;
  PTRAIN_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return {total - free, total};
}

// ---- memory ---------------------------------------------------------------------------------------

void* CudaBackend::allocate_bytes(size_t bytes) {
  void* p = nullptr;
  // cudaMalloc aligns to 256 bytes; a zero-size request still gets a distinct pointer.
  PTRAIN_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 256)));
  return p;
}
void CudaBackend::free_bytes(void* p) noexcept {
  if (p != nullptr) cudaFree(p);
}
void* CudaBackend::allocate_host_bytes(size_t bytes) {
  void* p = nullptr;
  PTRAIN_CUDA_CHECK(cudaHostAlloc(&p, std::max<size_t>(bytes, 64), cudaHostAllocDefault));
  return p;
}
void CudaBackend::free_host_bytes(void* p) noexcept {
  if (p != nullptr) cudaFreeHost(p);
}

void CudaBackend::copy_to_device(void* dst, const void* src_host, size_t bytes) {
  if (bytes == 0) return;
  PTRAIN_CUDA_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, compute_));
  PTRAIN_CUDA_CHECK(cudaStreamSynchronize(compute_));
}
void CudaBackend::copy_to_host(void* dst_host, const void* src, size_t bytes) {
  if (bytes == 0) return;
  PTRAIN_CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, compute_));
  PTRAIN_CUDA_CHECK(cudaStreamSynchronize(compute_));
}
// A copy stream waits for every op queued so far (it may read their outputs or overwrite their
// inputs) and the compute stream waits for the copy (later ops may read what it wrote, or
// overwrite what it reads): the Backend's single in-order queue, kept exactly.
void CudaBackend::copy_to_device_async(void* dst, const void* src_host, size_t bytes) {
  if (bytes == 0) return;
  PTRAIN_CUDA_CHECK(cudaEventRecord(compute_done_, compute_));
  PTRAIN_CUDA_CHECK(cudaStreamWaitEvent(upload_, compute_done_, 0));
  PTRAIN_CUDA_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, upload_));
  PTRAIN_CUDA_CHECK(cudaEventRecord(upload_done_, upload_));
  PTRAIN_CUDA_CHECK(cudaStreamWaitEvent(compute_, upload_done_, 0));
}
void CudaBackend::copy_to_host_async(void* dst_host, const void* src, size_t bytes) {
  if (bytes == 0) return;
  PTRAIN_CUDA_CHECK(cudaEventRecord(compute_done_, compute_));
  PTRAIN_CUDA_CHECK(cudaStreamWaitEvent(download_, compute_done_, 0));
  PTRAIN_CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, download_));
  PTRAIN_CUDA_CHECK(cudaEventRecord(download_done_, download_));
  PTRAIN_CUDA_CHECK(cudaStreamWaitEvent(compute_, download_done_, 0));
}
void CudaBackend::copy(float* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  PTRAIN_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(float),
                                    cudaMemcpyDeviceToDevice, compute_));
}
void CudaBackend::fill(float* dst, float value, int64_t n) {
  cuda_kernels::fill(dst, value, n, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}
void CudaBackend::fill_columns(float* dst, float value, int64_t rows, int64_t col_begin,
                               int64_t col_end, int64_t ld) {
  cuda_kernels::fill_columns(dst, value, rows, col_begin, col_end, ld, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}
void CudaBackend::synchronize() {
  PTRAIN_CUDA_CHECK(cudaStreamSynchronize(compute_));
  // Ticketed transfers are not joined to the compute stream.
  PTRAIN_CUDA_CHECK(cudaStreamSynchronize(upload_));
  PTRAIN_CUDA_CHECK(cudaStreamSynchronize(download_));
  for (const auto& [id, e] : tickets_) spare_events_.push_back(e);
  tickets_.clear();
}

// ---- ticketed transfers ---------------------------------------------------------------------------

cudaEvent_t CudaBackend::ticket_event(TransferTicket t, const char* op) const {
  PTRAIN_ENFORCE(t.id >= 1 && t.id < next_ticket_, "{}: ticket {} was never issued", op, t.id);
  const auto it = tickets_.find(t.id);
  return it == tickets_.end() ? nullptr : it->second;
}

void CudaBackend::release_ticket(TransferTicket t) {
  const auto it = tickets_.find(t.id);
  if (it == tickets_.end()) return;
  spare_events_.push_back(it->second);
  tickets_.erase(it);
}

// An upload does not wait for the compute stream (its destination is no queued op's business, the
// caller's guarantee); ops wait for it once order_after() is called.
TransferTicket CudaBackend::new_ticket(cudaEvent_t* event) {
  cudaEvent_t e = nullptr;
  if (spare_events_.empty()) {
    PTRAIN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  } else {
    e = spare_events_.back();
    spare_events_.pop_back();
  }
  const TransferTicket t{next_ticket_++};
  tickets_.emplace(t.id, e);
  *event = e;
  return t;
}

TransferTicket CudaBackend::start_upload(void* dst, const void* src_host, size_t bytes) {
  cudaEvent_t e = nullptr;
  const TransferTicket t = new_ticket(&e);
  if (bytes > 0) {
    PTRAIN_CUDA_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, upload_));
  }
  PTRAIN_CUDA_CHECK(cudaEventRecord(e, upload_));
  return t;
}

void CudaBackend::order_after(TransferTicket t) {
  cudaEvent_t e = ticket_event(t, "order_after");
  if (e != nullptr) PTRAIN_CUDA_CHECK(cudaStreamWaitEvent(compute_, e, 0));
}

// A download waits for the ops queued so far (a mark on the compute stream; cudaStreamWaitEvent
// takes the mark's state when called, so the one event serves every download) and nothing on
// the compute stream waits for it.
TransferTicket CudaBackend::start_download(void* dst_host, const void* src, size_t bytes) {
  cudaEvent_t e = nullptr;
  const TransferTicket t = new_ticket(&e);
  PTRAIN_CUDA_CHECK(cudaEventRecord(download_mark_, compute_));
  PTRAIN_CUDA_CHECK(cudaStreamWaitEvent(download_, download_mark_, 0));
  if (bytes > 0) {
    PTRAIN_CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, download_));
  }
  PTRAIN_CUDA_CHECK(cudaEventRecord(e, download_));
  return t;
}

bool CudaBackend::transfer_done(TransferTicket t) {
  cudaEvent_t e = ticket_event(t, "transfer_done");
  if (e == nullptr) return true;
  const cudaError_t q = cudaEventQuery(e);
  if (q == cudaErrorNotReady) return false;
  PTRAIN_CUDA_CHECK(q);
  release_ticket(t);
  return true;
}

void CudaBackend::wait_transfer(TransferTicket t) {
  cudaEvent_t e = ticket_event(t, "wait_transfer");
  if (e == nullptr) return;
  PTRAIN_CUDA_CHECK(cudaEventSynchronize(e));
  release_ticket(t);
}

char* CudaBackend::workspace(size_t bytes) {
  if (bytes > workspace_bytes_) {
    if (workspace_ != nullptr) PTRAIN_CUDA_CHECK(cudaFree(workspace_));
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    const size_t grown = align256(std::max(bytes, bytes / 4 * 5));  // room for the next shape
    void* p = nullptr;
    PTRAIN_CUDA_CHECK(cudaMalloc(&p, grown));
    workspace_ = static_cast<char*>(p);
    workspace_bytes_ = grown;
  }
  return workspace_;
}

// ---- products ---------------------------------------------------------------------------------------

// bf16 copies have rows padded to a multiple of 8 elements (16 bytes): the alignment cuBLASLt's
// tensor-core kernels want for every row, whatever the source's row length.
int64_t CudaBackend::bf16_ld(int64_t cols) { return (cols + 7) / 8 * 8; }
size_t CudaBackend::bf16_bytes(int64_t rows, int64_t cols) {
  return align256(static_cast<size_t>(rows * bf16_ld(cols)) * 2);
}

CudaBackend::Operand CudaBackend::operand(const float* x, int64_t rows, int64_t cols, int64_t ld,
                                          char** slot) {
  if (!bf16()) return {x, ld};
  auto* dst = reinterpret_cast<uint16_t*>(*slot);
  cuda_kernels::to_bf16(dst, bf16_ld(cols), x, rows, cols, ld, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
  *slot += bf16_bytes(rows, cols);
  return {dst, bf16_ld(cols)};
}

bool CudaBackend::product(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                          Operand a, Operand b, float beta, const float* c, int64_t ldc, float* d,
                          int64_t ldd, const float* bias, LtEpilogue epilogue, float* aux,
                          int64_t ld_aux, float* bias_grad, std::string* why) {
  if (M <= 0 || N <= 0) return true;
  if (K <= 0) {  // d = beta·c: only reached in place (gemm), never with a bias
    PTRAIN_ENFORCE((c == nullptr || c == d) && bias == nullptr && epilogue == LtEpilogue::kNone,
                   "an empty product (K = 0) with a separate C, a bias or an epilogue");
    cuda_kernels::scale_matrix(d, c == nullptr ? 0.0f : beta, M, N, ldd, compute_);
    PTRAIN_CUDA_CHECK_LAUNCH();
    return true;
  }
  LtProduct p;
  p.ta = ta;
  p.tb = tb;
  p.M = M;
  p.N = N;
  p.K = K;
  p.alpha = alpha;
  p.a = a.p;
  p.lda = a.ld;
  p.b = b.p;
  p.ldb = b.ld;
  p.beta = beta;
  p.c = c;
  p.ldc = ldc;
  p.d = d;
  p.ldd = ldd;
  p.bias = bias;
  p.input = bf16() ? LtInput::kBf16 : LtInput::kFp32;
  p.epilogue = epilogue;
  p.aux = aux;
  p.ld_aux = ld_aux;
  p.bias_grad = bias_grad;
  return lt_->run(p, why);
}

void CudaBackend::gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                       const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                       float* c, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  // Stored shapes: a is (M,K), or (K,M) when transposed; b likewise (K,N) or (N,K).
  const int64_t ar = ta == Trans::kNo ? M : K, ac = ta == Trans::kNo ? K : M;
  const int64_t br = tb == Trans::kNo ? K : N, bc = tb == Trans::kNo ? N : K;
  char* slot = K > 0 && bf16() ? workspace(bf16_bytes(ar, ac) + bf16_bytes(br, bc)) : nullptr;
  const Operand oa = K > 0 ? operand(a, ar, ac, lda, &slot) : Operand{a, lda};
  const Operand ob = K > 0 ? operand(b, br, bc, ldb, &slot) : Operand{b, ldb};
  product(ta, tb, M, N, K, alpha, oa, ob, beta, c, ldc, c, ldc, nullptr);
}

void CudaBackend::matmul_forward(float* out, const float* inp, const float* w, const float* bias,
                                 int64_t N, int64_t IC, int64_t OC) {
  matmul_residual_forward(out, nullptr, inp, w, bias, N, IC, OC);
}

void CudaBackend::matmul_residual_forward(float* out, const float* residual, const float* inp,
                                          const float* w, const float* bias, int64_t N, int64_t IC,
                                          int64_t OC) {
  char* slot = bf16() ? workspace(bf16_bytes(N, IC) + bf16_bytes(IC, OC)) : nullptr;
  const Operand x = operand(inp, N, IC, IC, &slot);
  const Operand wt = operand(w, IC, OC, OC, &slot);
  // out = residual + inp·w + bias: residual as C (beta 1; C may be out itself), bias fused.
  product(Trans::kNo, Trans::kNo, N, OC, IC, 1.0f, x, wt, residual != nullptr ? 1.0f : 0.0f,
          residual, OC, out, OC, bias);
}

void CudaBackend::matmul_backward(float* dinp, float* dw, float* dbias, const float* dout,
                                  const float* inp, const float* w, int64_t N, int64_t IC,
                                  int64_t OC) {
  const size_t ws_bf16 =
      bf16() ? bf16_bytes(N, OC) + bf16_bytes(N, IC) + (dinp ? bf16_bytes(IC, OC) : 0) : 0;
  const size_t ws_sums =
      dbias != nullptr ? static_cast<size_t>(cuda_kernels::column_partials(N, OC)) * 4 : 0;
  char* ws = workspace(align256(ws_sums) + ws_bf16);
  char* slot = ws + align256(ws_sums);
  const Operand d = operand(dout, N, OC, OC, &slot);
  if (dinp != nullptr) {  // dinp (N,IC) = dout (N,OC) · wᵀ
    const Operand wt = operand(w, IC, OC, OC, &slot);
    product(Trans::kNo, Trans::kYes, N, IC, OC, 1.0f, d, wt, 0.0f, nullptr, IC, dinp, IC, nullptr);
  }
  // dw (IC,OC) += inpᵀ (IC,N) · dout (N,OC)
  const Operand x = operand(inp, N, IC, IC, &slot);
  product(Trans::kYes, Trans::kNo, IC, OC, N, 1.0f, x, d, 1.0f, dw, OC, dw, OC, nullptr);
  if (dbias != nullptr) {
    cuda_kernels::column_sums_add(dbias, dout, N, OC, OC, reinterpret_cast<float*>(ws), compute_);
    PTRAIN_CUDA_CHECK_LAUNCH();
  }
}

// ---- the MLP's GELU in cuBLASLt's epilogues -------------------------------------------------------
// What the GELU epilogues need (cublasLt.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD): the aux
// matrix's leading dimension a multiple of 8 elements; here the aux matrix is the caller's (N,H)
// pre-activation with rows of H, so H % 8 == 0 (GPT: 4·n_embd, C even). We also ask for a 16-byte
// aligned aux (vector stores; the activation plan's offsets need not give it). Where either is
// missing, where fuse_epilogues is off, or where cuBLASLt has no algorithm for the type and
// layout (it says so through the heuristic, remembered per shape), the unfused kernels run: the
// same math with our GELU (Backend's default sequence).
const char* CudaBackend::unfusable(const void* aux, int64_t ld) const {
  if (!options_.fuse_epilogues) return "fuse_epilogues is off";
  if (ld % 8 != 0) return "the hidden width is not a multiple of 8 (cuBLASLt's aux leading dimension)";
  if (reinterpret_cast<uintptr_t>(aux) % 16 != 0) return "the pre-activation is not 16-byte aligned";
  return nullptr;
}

void CudaBackend::matmul_gelu_forward(float* out, float* pre, const float* inp, const float* w,
                                      const float* bias, int64_t N, int64_t IC, int64_t OC) {
  const char* skip = unfusable(pre, OC);
  if (skip == nullptr && N > 0 && IC > 0 && OC > 0) {
    char* slot = bf16() ? workspace(bf16_bytes(N, IC) + bf16_bytes(IC, OC)) : nullptr;
    const Operand x = operand(inp, N, IC, IC, &slot);
    const Operand wt = operand(w, IC, OC, OC, &slot);
    // out = gelu(inp·w + bias), pre = inp·w + bias (the aux output), one store.
    std::string why;
    if (product(Trans::kNo, Trans::kNo, N, OC, IC, 1.0f, x, wt, 0.0f, nullptr, OC, out, OC, bias,
                LtEpilogue::kGeluAux, pre, OC, nullptr, &why)) {
      ++stats_.gelu_fused;
      return;
    }
    stats_.last_refusal = "forward: " + why;
  } else if (skip != nullptr) {
    stats_.last_refusal = std::string("forward: ") + skip;
  }
  ++stats_.gelu_unfused;
  Backend::matmul_gelu_forward(out, pre, inp, w, bias, N, IC, OC);
}

void CudaBackend::matmul_gelu_backward(const GeluMlpBackward& g) {
  const int64_t N = g.N, IC = g.IC, H = g.H, OC = g.OC;
  const char* skip = unfusable(g.pre, H);
  if (skip != nullptr || N <= 0 || H <= 0 || OC <= 0) {
    if (skip != nullptr) stats_.last_refusal = std::string("backward: ") + skip;
    ++stats_.dgelu_unfused;
    Backend::matmul_gelu_backward(g);
    return;
  }
  // The second product's own gradients: dw2 += hᵀ·dy, db2 += Σ dy.
  matmul_backward(nullptr, g.dw2, g.db2, g.dy, g.h, g.w2, N, H, OC);
  // dpre = (dy·w2ᵀ) ⊙ gelu'(pre) in the product's store; with BGRAD the same pass writes
  // Σ_rows dpre (b1's gradient) into a scratch vector, added onto db1 (gradients accumulate).
  const size_t ws_bias = g.db1 != nullptr ? align256(static_cast<size_t>(H) * sizeof(float)) : 0;
  const size_t ws_bf16 = bf16() ? bf16_bytes(N, OC) + bf16_bytes(H, OC) : 0;
  char* ws = workspace(ws_bias + ws_bf16);
  float* bgrad = g.db1 != nullptr ? reinterpret_cast<float*>(ws) : nullptr;
  char* slot = ws + ws_bias;
  const Operand d = operand(g.dy, N, OC, OC, &slot);
  const Operand wt = operand(g.w2, H, OC, OC, &slot);
  auto* pre = const_cast<float*>(g.pre);  // the aux matrix: only read by the DGELU epilogues
  float* db1 = g.db1;
  std::string why;
  bool done = false;
  if (bgrad != nullptr &&
      product(Trans::kNo, Trans::kYes, N, H, OC, 1.0f, d, wt, 0.0f, nullptr, H, g.dpre, H, nullptr,
              LtEpilogue::kDGeluBgrad, pre, H, bgrad, &why)) {
    cuda_kernels::residual(db1, db1, bgrad, H, compute_);
    PTRAIN_CUDA_CHECK_LAUNCH();
    db1 = nullptr;  // done: the last product below must not add it again
    done = true;
    ++stats_.dgelu_bgrad;
  }
  if (!done) {
    if (bgrad != nullptr) stats_.last_refusal = "backward (DGELU_BGRAD): " + why;
    if (product(Trans::kNo, Trans::kYes, N, H, OC, 1.0f, d, wt, 0.0f, nullptr, H, g.dpre, H,
                nullptr, LtEpilogue::kDGelu, pre, H, nullptr, &why)) {
      done = true;
      ++stats_.dgelu;
    } else {
      stats_.last_refusal = "backward (DGELU): " + why;
    }
  }
  if (!done) {
    product(Trans::kNo, Trans::kYes, N, H, OC, 1.0f, d, wt, 0.0f, nullptr, H, g.dpre, H, nullptr);
    gelu_backward(g.dpre, g.pre, g.dpre, N * H);
    ++stats_.dgelu_unfused;
  }
  // The first product's gradients from dpre (its bias gradient unless BGRAD gave it).
  matmul_backward(g.dinp, g.dw1, db1, g.dpre, g.inp, g.w1, N, IC, H);
}

void CudaBackend::linear_forward(float* out, int64_t ldo, const float* inp, const float* w,
                                 const float* bias, int64_t N, int64_t IC, int64_t OC) {
  char* slot = bf16() ? workspace(bf16_bytes(N, IC) + bf16_bytes(OC, IC)) : nullptr;
  const Operand x = operand(inp, N, IC, IC, &slot);
  const Operand wt = operand(w, OC, IC, IC, &slot);
  // out (N,OC) = inp (N,IC) · wᵀ, w stored (OC,IC)
  product(Trans::kNo, Trans::kYes, N, OC, IC, 1.0f, x, wt, 0.0f, nullptr, ldo, out, ldo, bias);
}

void CudaBackend::linear_backward(float* dinp, bool accumulate_dinp, float* dw, float* dbias,
                                  const float* dout, int64_t lddo, const float* inp,
                                  const float* w, int64_t N, int64_t IC, int64_t OC) {
  const size_t ws_bf16 =
      bf16() ? bf16_bytes(N, OC) + bf16_bytes(N, IC) + (dinp ? bf16_bytes(OC, IC) : 0) : 0;
  const size_t ws_sums =
      dbias != nullptr ? static_cast<size_t>(cuda_kernels::column_partials(N, OC)) * 4 : 0;
  char* ws = workspace(align256(ws_sums) + ws_bf16);
  char* slot = ws + align256(ws_sums);
  const Operand d = operand(dout, N, OC, lddo, &slot);
  if (dinp != nullptr) {  // dinp (N,IC) (+)= dout (N,OC) · w (OC,IC)
    const Operand wt = operand(w, OC, IC, IC, &slot);
    const float beta = accumulate_dinp ? 1.0f : 0.0f;
    product(Trans::kNo, Trans::kNo, N, IC, OC, 1.0f, d, wt, beta, accumulate_dinp ? dinp : nullptr,
            IC, dinp, IC, nullptr);
  }
  // dw (OC,IC) += doutᵀ (OC,N) · inp (N,IC)
  const Operand x = operand(inp, N, IC, IC, &slot);
  product(Trans::kYes, Trans::kNo, OC, IC, N, 1.0f, d, x, 1.0f, dw, IC, dw, IC, nullptr);
  if (dbias != nullptr) {
    cuda_kernels::column_sums_add(dbias, dout, N, OC, lddo, reinterpret_cast<float*>(ws),
                                  compute_);
    PTRAIN_CUDA_CHECK_LAUNCH();
  }
}

// ---- row and elementwise ops --------------------------------------------------------------------------

void CudaBackend::encoder_forward(float* out, const int32_t* tokens, const float* wte,
                                  const float* wpe, int64_t B, int64_t T, int64_t C) {
  cuda_kernels::embedding_forward(out, tokens, nullptr, wte, wpe, nullptr, B, T, C, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::encoder_backward(float* dwte, float* dwpe, const float* dout,
                                   const int32_t* tokens, int64_t B, int64_t T, int64_t C) {
  embedding_backward(dwte, dwpe, nullptr, dout, tokens, nullptr, B, T, C);
}

void CudaBackend::embedding_forward(float* out, const int32_t* tokens, const int32_t* types,
                                    const float* wte, const float* wpe, const float* wtt,
                                    int64_t B, int64_t T, int64_t C) {
  cuda_kernels::embedding_forward(out, tokens, types, wte, wpe, wtt, B, T, C, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::embedding_backward(float* dwte, float* dwpe, float* dwtt, const float* dout,
                                     const int32_t* tokens, const int32_t* types, int64_t B,
                                     int64_t T, int64_t C) {
  if (B * T <= 0) return;
  const size_t bytes = cuda_kernels::embedding_backward_scratch(B * T);
  char* ws = workspace(bytes);
  PTRAIN_CUDA_CHECK(cuda_kernels::embedding_backward(dwte, dwpe, dwtt, dout, tokens, types, B, T,
                                                     C, ws, bytes, compute_));
  PTRAIN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                    const float* w, const float* b, int64_t N, int64_t C) {
  layernorm_forward_eps(out, mean, rstd, inp, w, b, N, C, kLayerNormEps);
}

void CudaBackend::layernorm_forward_eps(float* out, float* mean, float* rstd, const float* inp,
                                        const float* w, const float* b, int64_t N, int64_t C,
                                        float eps) {
  cuda_kernels::layernorm_forward(out, mean, rstd, inp, w, b, N, C, eps, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::layernorm_backward(float* dinp, float* dw, float* db, const float* dout,
                                     const float* inp, const float* w, const float* mean,
                                     const float* rstd, int64_t N, int64_t C) {
  auto* scratch = reinterpret_cast<float*>(
      workspace(static_cast<size_t>(cuda_kernels::column_partials(N, C)) * sizeof(float)));
  cuda_kernels::layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C, scratch,
                                   compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::residual_forward(float* out, const float* a, const float* b, int64_t n) {
  cuda_kernels::residual(out, a, b, n, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::gelu_forward(float* out, const float* inp, int64_t n) {
  cuda_kernels::unary_forward(cuda_kernels::Unary::kGeluTanh, out, inp, n, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}
void CudaBackend::gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  cuda_kernels::unary_backward(cuda_kernels::Unary::kGeluTanh, dinp, inp, dout, n, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}
void CudaBackend::gelu_erf_forward(float* out, const float* inp, int64_t n) {
  cuda_kernels::unary_forward(cuda_kernels::Unary::kGeluErf, out, inp, n, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}
void CudaBackend::gelu_erf_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  cuda_kernels::unary_backward(cuda_kernels::Unary::kGeluErf, dinp, inp, dout, n, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}
void CudaBackend::tanh_forward(float* out, const float* inp, int64_t n) {
  cuda_kernels::unary_forward(cuda_kernels::Unary::kTanh, out, inp, n, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}
void CudaBackend::tanh_backward(float* dinp, const float* out, const float* dout, int64_t n) {
  cuda_kernels::unary_backward(cuda_kernels::Unary::kTanh, dinp, out, dout, n, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::crossentropy_forward(float* losses, const float* logits, const int32_t* targets,
                                       int64_t N, int64_t V, int64_t ld) {
  // grad = false: the kernel only reads the logits.
  cuda_kernels::crossentropy(losses, const_cast<float*>(logits), targets, 0.0f, N, V, ld, false,
                             compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}
void CudaBackend::crossentropy_forward_backward(float* losses, float* logits,
                                                const int32_t* targets, float dloss, int64_t N,
                                                int64_t V, int64_t ld) {
  cuda_kernels::crossentropy(losses, logits, targets, dloss, N, V, ld, true, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::gather_rows(float* dst, const float* src, const int32_t* idx, int64_t M,
                              int64_t C) {
  cuda_kernels::gather_rows(dst, src, idx, M, C, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}
void CudaBackend::scatter_rows(float* dst, const float* src, const int32_t* idx, int64_t M,
                               int64_t C) {
  cuda_kernels::scatter_rows(dst, src, idx, M, C, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}
void CudaBackend::argmax_rows(int32_t* out, const float* logits, int64_t N, int64_t V,
                              int64_t ld) {
  cuda_kernels::argmax_rows(out, logits, N, V, ld, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::attention_decode(float* out, float* scratch, const float* q, const float* kcache,
                                   const float* vcache, int64_t npos, int64_t ld, int64_t C,
                                   int64_t NH) {
  cuda_kernels::attention_decode(out, scratch, q, kcache, vcache, npos, ld, C, NH, compute_);
  PTRAIN_CUDA_CHECK_LAUNCH();
}

// Training attention (causal and padded bidirectional): the flash-style kernels of
// cuda_attention.cu, on the compute stream like every other op.
void CudaBackend::attention_forward(float* out, float* lse, const float* qkv,
                                    const AttentionShape& shape) {
  cuda::flash_attention_forward(out, lse, qkv, shape, compute_);
}
void CudaBackend::attention_backward(float* dqkv, float* scratch, const float* dout,
                                     const float* out, const float* qkv, const float* lse,
                                     const AttentionShape& shape) {
  cuda::flash_attention_backward(dqkv, scratch, dout, out, qkv, lse, shape, compute_);
}

}  // namespace ptrain
