// File-system helpers that make writes safe: atomic replace (tmp + fsync + rename + fsync dir),
// whole-file reads with errors naming the path. Used by token files, tokenizers, manifests,
// checkpoints and run logs.
#pragma once

#include <string>
#include <string_view>

namespace ptrain {

// Reads a whole file. Throws IoError("cannot read PATH: reason").
std::string read_file(const std::string& path);

// Writes `bytes` to PATH.tmp.<pid>, fsyncs it, renames over PATH, fsyncs the folder.
// On failure the old PATH is untouched and the temp file removed. Throws IoError.
void write_file_atomic(const std::string& path, std::string_view bytes);

// fsync a file or directory by path. Throws IoError.
void fsync_path(const std::string& path);

// Creates the directory and its parents (like mkdir -p). Throws IoError.
void make_dirs(const std::string& path);

// Absolute, lexically normalised form of `path` resolved against `base_dir` when relative.
std::string resolve_path(const std::string& path, const std::string& base_dir);

}  // namespace ptrain
