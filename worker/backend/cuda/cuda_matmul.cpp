// LtMatmul (cuda_matmul.hpp).
#include "worker/backend/cuda/cuda_matmul.hpp"

#include "common/error.hpp"
#include "worker/backend/cuda/cuda_check.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <memory>
#include <type_traits>

namespace ptrain {
namespace {

// The largest power of two (up to 256) dividing the address: what cuBLASLt's heuristic must be
// told, since by default it assumes 256-byte aligned operands.
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t low = a & (~a + 1);
  return low == 0 || low > 256 ? 256u : static_cast<uint32_t>(low);
}

struct DescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* d) const { cublasLtMatmulDescDestroy(d); }
  void operator()(cublasLtMatrixLayoutOpaque_t* d) const { cublasLtMatrixLayoutDestroy(d); }
  void operator()(cublasLtMatmulPreferenceOpaque_t* d) const { cublasLtMatmulPreferenceDestroy(d); }
};
template <class T>
using Owned = std::unique_ptr<std::remove_pointer_t<T>, DescDeleter>;

Owned<cublasLtMatrixLayout_t> layout(cudaDataType type, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t l = nullptr;
  PTRAIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, type, static_cast<uint64_t>(rows),
                                                 static_cast<uint64_t>(cols), ld));
  return Owned<cublasLtMatrixLayout_t>(l);
}

cublasOperation_t op(Trans t) { return t == Trans::kYes ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace

LtMatmul::LtMatmul(cudaStream_t stream, bool allow_tf32) : stream_(stream), tf32_(allow_tf32) {
  PTRAIN_CUBLAS_CHECK(cublasLtCreate(&handle_));
  PTRAIN_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
}

LtMatmul::~LtMatmul() {
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

bool LtMatmul::run(const LtProduct& p, std::string* why) {
  PTRAIN_ENFORCE(p.M > 0 && p.N > 0 && p.K > 0, "empty product ({}, {}, {}) reached cuBLASLt", p.M,
                 p.N, p.K);
  const cudaDataType in = p.input == LtInput::kBf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute =
      p.input == LtInput::kFp32 && tf32_ ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const float* c = p.c != nullptr ? p.c : p.d;
  const int64_t ldc = p.c != nullptr ? p.ldc : p.ldd;
  PTRAIN_ENFORCE(p.c != nullptr || p.beta == 0.0f, "beta {} without a C matrix", p.beta);

  cublasLtMatmulDesc_t raw_desc = nullptr;
  PTRAIN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&raw_desc, compute, CUDA_R_32F));
  Owned<cublasLtMatmulDesc_t> desc(raw_desc);
  // cuBLASLt's A is our b, its B our a (see the header).
  const cublasOperation_t opa = op(p.tb), opb = op(p.ta);
  PTRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSA, &opa,
                                                     sizeof(opa)));
  PTRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSB, &opb,
                                                     sizeof(opb)));
  const bool gelu = p.epilogue != LtEpilogue::kNone;
  PTRAIN_ENFORCE(!gelu || (p.aux != nullptr && p.ld_aux >= p.N && p.ld_aux % 8 == 0),
                 "a GELU epilogue needs an aux matrix with ld a multiple of 8 and >= {} (got {})",
                 p.N, p.ld_aux);
  PTRAIN_ENFORCE(p.epilogue == LtEpilogue::kGeluAux || p.bias == nullptr,
                 "a bias with a backward epilogue");
  PTRAIN_ENFORCE((p.epilogue == LtEpilogue::kDGeluBgrad) == (p.bias_grad != nullptr),
                 "bias_grad is kDGeluBgrad's output and only its");
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  switch (p.epilogue) {
    case LtEpilogue::kNone:
      epi = p.bias != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
      break;
    case LtEpilogue::kGeluAux:
      epi = p.bias != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
      break;
    case LtEpilogue::kDGelu:
      epi = CUBLASLT_EPILOGUE_DGELU;
      break;
    case LtEpilogue::kDGeluBgrad:
      epi = CUBLASLT_EPILOGUE_DGELU_BGRAD;
      break;
  }
  if (epi != CUBLASLT_EPILOGUE_DEFAULT) {
    PTRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                       &epi, sizeof(epi)));
  }
  // Pointers are set before the heuristic: it reads their alignment. The bias pointer is the
  // bias (an input) or, for BGRAD, the bias gradient (an output); either has N elements, one per
  // row of cuBLASLt's column-major D (our columns).
  const void* bias_ptr = p.bias_grad != nullptr ? static_cast<const void*>(p.bias_grad) : p.bias;
  if (bias_ptr != nullptr) {
    PTRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)));
  }
  if (gelu) {
    // The aux matrix is laid out like D: cuBLASLt's (N rows, M columns), leading dimension ld_aux.
    void* aux = p.aux;
    const int64_t ld_aux = p.ld_aux;
    PTRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    PTRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_aux, sizeof(ld_aux)));
  }
  // Column-major views: b is (N,K) (op N) or (K,N) (op T) with ld ldb; a is (K,M) or (M,K).
  auto la = p.tb == Trans::kNo ? layout(in, p.N, p.K, p.ldb) : layout(in, p.K, p.N, p.ldb);
  auto lb = p.ta == Trans::kNo ? layout(in, p.K, p.M, p.lda) : layout(in, p.M, p.K, p.lda);
  auto lc = layout(CUDA_R_32F, p.N, p.M, ldc);
  auto ld = layout(CUDA_R_32F, p.N, p.M, p.ldd);

  const std::array<int64_t, 21> key{
      p.M, p.N, p.K, static_cast<int64_t>(p.ta), static_cast<int64_t>(p.tb), p.lda, p.ldb, ldc,
      p.ldd, static_cast<int64_t>(in), static_cast<int64_t>(compute), p.bias != nullptr,
      alignment(p.a), alignment(p.b), alignment(c), alignment(p.d),
      bias_ptr != nullptr ? alignment(bias_ptr) : 0, static_cast<int64_t>(p.epilogue),
      gelu ? p.ld_aux : 0, gelu ? alignment(p.aux) : 0, 0};
  auto it = algos_.find(key);
  if (it == algos_.end()) {
    cublasLtMatmulPreference_t raw_pref = nullptr;
    PTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw_pref));
    Owned<cublasLtMatmulPreference_t> pref(raw_pref);
    const uint64_t ws = kWorkspaceBytes;
    PTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment(p.b)},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment(p.a)},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment(c)},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment(p.d)}};
    for (const auto& [attr, value] : aligns) {
      PTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.get(), attr, &value,
                                                               sizeof(value)));
    }
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
        handle_, desc.get(), la.get(), lb.get(), lc.get(), ld.get(), pref.get(), 1, &result,
        &found);
    if (gelu && (st != CUBLAS_STATUS_SUCCESS || found == 0)) {
      // Not every type, layout and alignment has a GELU epilogue kernel: remember the refusal,
      // and the caller runs the unfused sequence.
      Choice none;
      none.why = st != CUBLAS_STATUS_SUCCESS
                     ? fmt::format("cublasLtMatmulAlgoGetHeuristic: {}", cublasLtGetStatusName(st))
                     : std::string("cuBLASLt has no algorithm for it");
      it = algos_.emplace(key, none).first;
    } else {
      PTRAIN_CUBLAS_CHECK(st);
    }
    if (!gelu && found == 0) {
      throw DeviceError(fmt::format(
          "cuBLASLt has no algorithm for the product ({}x{}) = op{}({}x{}) op{}({}x{}), "
          "inputs {}, lda {} ldb {} ldd {}{}",
          p.M, p.N, p.ta == Trans::kYes ? "T" : "", p.M, p.K, p.tb == Trans::kYes ? "T" : "", p.K,
          p.N, p.input == LtInput::kBf16 ? "bf16" : "fp32", p.lda, p.ldb, p.ldd,
          p.bias != nullptr ? ", with bias" : ""));
    }
    if (it == algos_.end()) {
      Choice chosen;
      chosen.found = true;
      chosen.algo = result.algo;
      it = algos_.emplace(key, chosen).first;
    }
  }
  if (!it->second.found) {
    if (why != nullptr) *why = it->second.why;
    return false;
  }
  const cublasStatus_t st =
      cublasLtMatmul(handle_, desc.get(), &p.alpha, p.b, la.get(), p.a, lb.get(), &p.beta, c,
                     lc.get(), p.d, ld.get(), &it->second.algo, workspace_, kWorkspaceBytes,
                     stream_);
  if (gelu && st == CUBLAS_STATUS_NOT_SUPPORTED) {  // refused at launch: nothing was queued
    it->second.found = false;
    it->second.why = "cublasLtMatmul: CUBLAS_STATUS_NOT_SUPPORTED";
    if (why != nullptr) *why = it->second.why;
    return false;
  }
  PTRAIN_CUBLAS_CHECK(st);
  return true;
}

}  // namespace ptrain
