// make_backend / check_device (backend_factory.hpp).
#include "worker/backend/backend_factory.hpp"

#include "common/error.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

namespace ptrain {
namespace {

enum class Device { kCpu, kCuda };

constexpr const char* kValid = "cpu, cuda, cuda:N";

// `origin` names where the value came from ("--device", "device.type") in messages.
Device parse_device(const std::string& device, const std::string& origin) {
  if (device == "cpu") return Device::kCpu;
  if (device == "cuda") return Device::kCuda;
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
    return Device::kCuda;
  }
  throw UsageError(
      fmt::format("{} '{}' is not a device; valid devices: {}", origin, device, kValid));
}

}  // namespace

void check_device(const std::string& device, const std::string& origin) {
  if (parse_device(device, origin) == Device::kCuda) {
    throw NotImplementedError(fmt::format(
        "{} '{}': the CUDA backend is not implemented yet (valid now: cpu)", origin, device));
  }
}

std::unique_ptr<Backend> make_backend(const std::string& device, int threads,
                                      const std::string& origin) {
  check_device(device, origin);
  return make_cpu_backend(threads);  // the only device built
}

std::unique_ptr<Backend> make_backend_for(const std::string& device_flag, const Config& config) {
  const int threads = static_cast<int>(config.run.threads);
  if (!device_flag.empty()) return make_backend(device_flag, threads, "--device");
  return make_backend(device_type_name(config.device.type), threads, "device.type");
}

}  // namespace ptrain
