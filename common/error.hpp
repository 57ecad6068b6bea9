// The error policy (docs/errors.md): recoverable failures are exceptions from this small hierarchy,
// each mapped to a process exit code by the command-line front end; broken invariants go through
// PTRAIN_ENFORCE. Messages name the file, key, tensor or peer concerned.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace ptrain {

// Exit codes used by `ptrain` (all within 1..127).
enum class ExitCode : int {
  kOk = 0,
  kInternal = 1,   // a broken invariant (a bug)
  kUsage = 2,      // bad command line
  kConfig = 3,     // bad config file / --set value
  kIo = 4,         // missing/unreadable/corrupt file
  kData = 5,       // bad corpus / token file content
  kCheckpoint = 6, // checkpoint refused (version, layout, checksum, truncation)
  kNumeric = 7,    // NaN/Inf during training
  kNotImplemented = 8,
  kInterrupted = 9,
  kDevice = 10,    // compute device unusable or failed (no driver, no GPU, a CUDA/cuBLAS error)
};

class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& what) : std::runtime_error(what), code_(code) {}
  ExitCode code() const noexcept { return code_; }

 private:
  ExitCode code_;
};

#define PTRAIN_DEFINE_ERROR(Name, Code)                                        \
  class Name : public Error {                                                  \
   public:                                                                     \
    explicit Name(const std::string& what) : Error(ExitCode::Code, what) {}    \
  };

PTRAIN_DEFINE_ERROR(UsageError, kUsage)
PTRAIN_DEFINE_ERROR(ConfigError, kConfig)
PTRAIN_DEFINE_ERROR(IoError, kIo)
PTRAIN_DEFINE_ERROR(DataError, kData)
PTRAIN_DEFINE_ERROR(CheckpointError, kCheckpoint)
PTRAIN_DEFINE_ERROR(NumericError, kNumeric)
PTRAIN_DEFINE_ERROR(NotImplementedError, kNotImplemented)
PTRAIN_DEFINE_ERROR(InternalError, kInternal)
PTRAIN_DEFINE_ERROR(DeviceError, kDevice)
#undef PTRAIN_DEFINE_ERROR

}  // namespace ptrain

// A broken invariant: throws InternalError naming the condition and file:line.
#define PTRAIN_ENFORCE(cond, ...)                                                              \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      throw ::ptrain::InternalError(::fmt::format("{}:{}: invariant `{}` failed: {}", __FILE__, \
                                                  __LINE__, #cond, ::fmt::format(__VA_ARGS__))); \
    }                                                                                          \
  } while (0)
