// The safetensors file format (as Hugging Face writes it): an 8-byte little-endian header length N,
// N bytes of JSON ({"__metadata__": {string: string}, NAME: {"dtype", "shape", "data_offsets":
// [begin, end]}}, offsets relative to the end of the header), then the tensor bytes. Only what
// GPT-2 weights need: writing float32, reading float32, bfloat16 and float16 (widened exactly to
// float32). Not a general library: no other dtypes, no memory mapping.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ptrain::tools::hf {

struct SafeTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order, product of shape floats
};

// Name -> tensor, written in name order, header padded with spaces to a multiple of 8 bytes (as
// the reference writer does, so the data is 8-byte aligned). Atomic (temporary name, fsync,
// rename). Throws IoError naming the file.
void write_safetensors(const std::string& file, const std::map<std::string, SafeTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);

struct SafeTensorsFile {
  std::map<std::string, SafeTensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Reads every tensor. DataError naming the file and tensor on a malformed header, an unsupported
// dtype, offsets that overlap, leave gaps or run past the end, or a shape whose size does not
// match its byte range; IoError when the file cannot be read.
SafeTensorsFile read_safetensors(const std::string& file);

}  // namespace ptrain::tools::hf
