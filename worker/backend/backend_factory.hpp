// Compute backends by device name: the one place that turns `device.type` (config) or `--device`
// (command line) into a Backend: `cpu`, and `cuda` / `cuda:N` (GPU N; `cuda` = GPU 0) in a build
// with CUDA. In a build without CUDA, `cuda` is refused with "not implemented yet" naming the
// build option; with CUDA but no driver or no such GPU, with a DeviceError saying which. Anything
// else is refused naming the value and the valid ones.
#pragma once

#include "common/config/config.hpp"
#include "worker/model/backend.hpp"

#include <memory>
#include <string>

namespace ptrain {

// Checks a device name without building anything (to refuse a bad --device before a role joins
// a job). Throws UsageError for a name that is no device (naming it and the valid ones) and
// NotImplementedError ("not implemented yet") for a device this build lacks. Messages start with
// `origin` (where the name came from: "--device", "device.type"). Does not touch the GPU.
void check_device(const std::string& device, const std::string& origin = "device");

// check_device, and for a cuda device also that the GPU can be opened (driver, device number),
// throwing DeviceError as make_backend would; for roles that must fail before joining a job.
void probe_device(const std::string& device, const std::string& origin = "device");

// How a backend computes, besides its device name (from the config's device section).
struct BackendOptions {
  int threads = 0;  // OpenMP/OpenBLAS threads of the CPU backend (0 = all cores)
  DevicePrecision precision = DevicePrecision::kFp32;  // cuda: matmul operands fp32 or bf16
  bool allow_tf32 = false;                             // cuda: fp32 products may use TF32
  // cuda: the MLP's bias + GELU in cuBLASLt's epilogues where it has them (not a config key: the
  // GPU tests turn it off to check the unfused kernels too).
  bool fuse_epilogues = true;
};
BackendOptions backend_options(const DeviceConfig& device, int threads);

// The backend for `device`. Throws as check_device, and DeviceError for a cuda device that
// cannot be opened (no driver, no GPU, no such GPU).
std::unique_ptr<Backend> make_backend(const std::string& device, const BackendOptions& options,
                                      const std::string& origin = "device");
// The same with default options and `threads` CPU threads.
std::unique_ptr<Backend> make_backend(const std::string& device, int threads,
                                      const std::string& origin = "device");

// The backend of a tool or a benchmark run in this process: `device_flag` (--device) when given,
// else the config's device.type; the config's device.precision and device.allow_tf32; run.threads
// threads (0 = all cores). Messages name the origin.
std::unique_ptr<Backend> make_backend_for(const std::string& device_flag, const Config& config);

// Device facts for benchmarks, for a backend from make_backend (not a wrapper around one).
struct DeviceInfo {
  bool is_device = false;          // false: not a GPU backend (cpu, a test fake): the rest is 0
  double bf16_matmul_flops = 0.0;  // dense bf16 product rate measured now (FLOP/s)
  size_t memory_used = 0;          // device memory in use, bytes (all processes)
  size_t memory_total = 0;
  std::string epilogues;  // how the GELU epilogue products ran so far (cuda_epilogue_report)
};
// Measures the bf16 rate with an n×n·n×n product (only when measure_n > 0).
DeviceInfo device_info(Backend& backend, int64_t measure_n);

}  // namespace ptrain
