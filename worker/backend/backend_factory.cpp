// make_backend / check_device (backend_factory.hpp).
#include "worker/backend/backend_factory.hpp"

#include "common/error.hpp"
#include "ptrain/build_config.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#if PTRAIN_HAS_CUDA
#include "worker/backend/cuda/cuda_factory.hpp"
#endif

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <tuple>

namespace ptrain {
namespace {

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;  // cuda:N
};

constexpr const char* kValid = "cpu, cuda, cuda:N";

// `origin` names where the value came from ("--device", "device.type") in messages.
Device parse_device(const std::string& device, const std::string& origin) {
  if (device == "cpu") return {DeviceType::kCpu, 0};
  if (device == "cuda") return {DeviceType::kCuda, 0};
  if (device.starts_with("cuda:")) {
    const std::string index = device.substr(5);
    const bool digits = !index.empty() && index.size() <= 4 &&
                        std::all_of(index.begin(), index.end(),
                                    [](unsigned char c) { return std::isdigit(c) != 0; });
    if (!digits) {
      throw UsageError(fmt::format("{} '{}': the index after 'cuda:' must be a GPU number "
                                   "(e.g. cuda:0); valid devices: {}",
                                   origin, device, kValid));
    }
    return {DeviceType::kCuda, std::stoi(index)};
  }
  throw UsageError(
      fmt::format("{} '{}' is not a device; valid devices: {}", origin, device, kValid));
}

}  // namespace

void check_device(const std::string& device, const std::string& origin) {
  if (parse_device(device, origin).type == DeviceType::kCuda && !PTRAIN_HAS_CUDA) {
    throw NotImplementedError(fmt::format(
        "{} '{}': this build has no CUDA backend, so it is not implemented yet here (rebuild "
        "with the CUDA toolkit's nvcc found, PTRAIN_CUDA=auto or ON; valid now: cpu)",
        origin, device));
  }
}

void probe_device(const std::string& device, const std::string& origin) {
  check_device(device, origin);
#if PTRAIN_HAS_CUDA
  const Device d = parse_device(device, origin);
  if (d.type == DeviceType::kCuda) check_cuda_device(d.index, fmt::format("{} '{}'", origin, device));
#endif
}

BackendOptions backend_options(const DeviceConfig& device, int threads) {
  BackendOptions o;
  o.threads = threads;
  o.precision = device.precision;
  o.allow_tf32 = device.allow_tf32;
  return o;
}

std::unique_ptr<Backend> make_backend(const std::string& device, const BackendOptions& options,
                                      const std::string& origin) {
  check_device(device, origin);
  const Device d = parse_device(device, origin);
  if (d.type == DeviceType::kCpu) return make_cpu_backend(options.threads);
#if PTRAIN_HAS_CUDA
  CudaBackendOptions cuda;
  cuda.device = d.index;
  cuda.precision = options.precision;
  cuda.allow_tf32 = options.allow_tf32;
  cuda.fuse_epilogues = options.fuse_epilogues;
  return make_cuda_backend(cuda, fmt::format("{} '{}'", origin, device));
#else
  PTRAIN_ENFORCE(false, "check_device let {} through in a build without CUDA", device);
  return nullptr;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& device, int threads,
                                      const std::string& origin) {
  BackendOptions options;
  options.threads = threads;
  return make_backend(device, options, origin);
}

std::unique_ptr<Backend> make_backend_for(const std::string& device_flag, const Config& config) {
  const BackendOptions options =
      backend_options(config.device, static_cast<int>(config.run.threads));
  if (!device_flag.empty()) return make_backend(device_flag, options, "--device");
  return make_backend(device_type_name(config.device.type), options, "device.type");
}

DeviceInfo device_info(Backend& backend, int64_t measure_n) {
  DeviceInfo info;
#if PTRAIN_HAS_CUDA
  if (!is_cuda_backend(backend)) return info;
  info.is_device = true;
  if (measure_n > 0) info.bf16_matmul_flops = cuda_bf16_matmul_peak(backend, measure_n);
  std::tie(info.memory_used, info.memory_total) = cuda_memory(backend);
  info.epilogues = cuda_epilogue_report(backend);
#endif
  return info;
}

}  // namespace ptrain
