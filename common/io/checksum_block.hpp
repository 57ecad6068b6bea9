// The checksum block at the start of every checkpoint file ptrain writes (docs/formats.md "The
// checksum block"): the file's first 512 bytes are an HDF5 user block (HDF5 itself skips it and
// finds its superblock at offset 512) holding a CRC32C of everything after it. The writer fills
// it in after HDF5 has closed the file and before the file is fsync'd and renamed into place;
// every reader checks it before HDF5 parses a single byte of the file, so a damaged or truncated
// checkpoint is refused by ptrain instead of reaching libhdf5's parser (which reads past buffers
// or hangs on some damaged files: docs/reliability.md, "Findings").
//
// The block is text, so `head -c 512 FILE` shows it:
//   ptrain-checkpoint-checksum\n
//   format_version 1\n          the checkpoint format version of the file
//   length 123456\n             bytes after the block (the HDF5 part)
//   crc32c 0x1a2b3c4d\n         CRC32C (Castagnoli) of those bytes
// and NUL bytes up to 512. Not here: what the HDF5 part holds (checkpoint_format.hpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ptrain {

// Size of the user block every checkpoint file is created with (H5Pset_userblock).
inline constexpr uint64_t kChecksumBlockBytes = 512;

// Fills in the checksum block of `path`, a closed HDF5 file created with a kChecksumBlockBytes
// user block: the CRC32C of bytes [512, end of file). The data is written (not fsync'd: the
// atomic writer does that next). IoError naming the file when it cannot be read or written.
void write_checksum_block(const std::string& path);

// What a reader found at the start of a file.
enum class ChecksumBlockState {
  kVerified,  // a checksum block that matches the rest of the file
  kAbsent,    // no block: the HDF5 signature at offset 0 (a file written before the block)
};

// Checks the checksum block of `path` before anything parses the file; `who` starts every
// message (the file name, or "INDEX: shard PATH"). kVerified when the block matches; kAbsent when
// the file starts with the HDF5 signature instead (no block to check). Throws CheckpointError
// "WHO: damaged or truncated: ..." with the expected and actual CRC32C and lengths on a mismatch,
// for a block that cannot be parsed, and for a file that starts with neither; IoError when the
// file cannot be read. Reads the whole file once, in 4 MiB pieces.
ChecksumBlockState verify_checksum_block(const std::string& path, const std::string& who);

// What the block of `path` says, for display once a reader has verified the file (nothing is
// checksummed here): its CRC32C and length, or nullopt for a file without a block (or whose block
// does not parse).
struct ChecksumBlockFields {
  uint32_t crc32c = 0;
  uint64_t length = 0;
};
std::optional<ChecksumBlockFields> read_checksum_block(const std::string& path);

}  // namespace ptrain
