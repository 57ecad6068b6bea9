// Shared by the libFuzzer targets: failing loudly on a broken invariant, and a scratch file for
// readers that take a path (one per process, in /dev/shm when it exists).
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace ptrain::fuzz {

[[noreturn]] inline void invariant_failed(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "INVARIANT FAILED: %s %s\n", what, detail.c_str());
  std::abort();
}

// A path this process may overwrite for each input.
inline const std::string& scratch_path(const char* suffix) {
  static const std::string path = [suffix] {
    const std::filesystem::path dir =
        std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
    return (dir / ("ptrain-fuzz-" + std::to_string(::getpid()) + suffix)).string();
  }();
  return path;
}

inline void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace ptrain::fuzz
