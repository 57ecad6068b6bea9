// Compute backends by device name: the one place that turns `device.type` (config) or `--device`
// (command line) into a Backend. Built now: `cpu`. `cuda` and `cuda:N` are valid names of a
// backend that is not built yet and are refused with "not implemented yet"; anything else is
// refused naming the value and the valid ones.
#pragma once

#include "common/config/config.hpp"
#include "worker/model/backend.hpp"

#include <memory>
#include <string>

namespace ptrain {

// Checks a device name without building anything (to refuse a bad --device before a role joins
// a job). Throws UsageError for a name that is no device (naming it and the valid ones) and
// NotImplementedError ("not implemented yet") for a device that is not built. Messages start with
// `origin` (where the name came from: "--device", "device.type").
void check_device(const std::string& device, const std::string& origin = "device");

// The backend for `device`; threads = OpenMP/OpenBLAS threads of the CPU backend (0 = all cores).
// Throws as check_device.
std::unique_ptr<Backend> make_backend(const std::string& device, int threads,
                                      const std::string& origin = "device");

// The backend of a tool or a benchmark run in this process: `device_flag` (--device) when given,
// else the config's device.type; run.threads threads (0 = all cores). Messages name the origin.
std::unique_ptr<Backend> make_backend_for(const std::string& device_flag, const Config& config);

}  // namespace ptrain
