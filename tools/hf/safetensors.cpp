// Reading and writing safetensors files (safetensors.hpp).
#include "tools/hf/safetensors.hpp"

#include "common/error.hpp"
#include "common/util/fs.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstring>

namespace ptrain::tools::hf {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors are little-endian");

// The size of one element of `dtype`, 0 for a dtype this reader does not take.
size_t dtype_width(const std::string& dtype) {
  if (dtype == "F32") return 4;
  if (dtype == "BF16" || dtype == "F16") return 2;
  return 0;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // Inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {        // subnormal half: normalise (exact in float32)
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

}  // namespace

void write_safetensors(const std::string& file, const std::map<std::string, SafeTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    int64_t count = 1;
    for (int64_t d : t.shape) count *= d;
    PTRAIN_ENFORCE(count == static_cast<int64_t>(t.data.size()), "tensor {}: shape holds {} floats, data {}",
                   name, count, t.data.size());
    const uint64_t bytes = static_cast<uint64_t>(count) * 4;
    header[name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = text.size();
  std::memcpy(out.data(), &n, 8);
  out += text;
  out.reserve(out.size() + offset);
  for (const auto& [name, t] : tensors) {
    out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size() * 4);
  }
  write_file_atomic(file, out);
}

SafeTensorsFile read_safetensors(const std::string& file) {
  const std::string bytes = read_file(file);
  if (bytes.size() < 8) throw DataError(fmt::format("{}: shorter than a safetensors header (8 bytes)", file));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  if (n > bytes.size() - 8) {
    throw DataError(fmt::format("{}: header length {} runs past the end of the file ({} bytes)", file, n,
                                bytes.size()));
  }
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.substr(8, n));
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("{}: the safetensors header is not valid JSON: {}", file, e.what()));
  }
  if (!header.is_object()) throw DataError(fmt::format("{}: the safetensors header is not a JSON object", file));
  const size_t data_begin = 8 + n;
  const uint64_t data_size = bytes.size() - data_begin;
  SafeTensorsFile out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw DataError(fmt::format("{}: __metadata__ is not an object", file));
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) throw DataError(fmt::format("{}: __metadata__.{} is not a string", file, k));
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const auto where = fmt::format("{}: tensor {}", file, name);
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets") || !entry["dtype"].is_string() || !entry["shape"].is_array() ||
        !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
      throw DataError(fmt::format("{}: needs \"dtype\", \"shape\" and two \"data_offsets\"", where));
    }
    const std::string dtype = entry["dtype"].get<std::string>();
    const size_t width = dtype_width(dtype);
    if (width == 0) {
      throw DataError(fmt::format("{}: dtype {} is not supported (F32, BF16 and F16 are)", where, dtype));
    }
    SafeTensor t;
    uint64_t count = 1;
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_unsigned()) throw DataError(fmt::format("{}: shape {} is not a list of sizes", where, entry["shape"].dump()));
      t.shape.push_back(d.get<int64_t>());
      count *= d.get<uint64_t>();
    }
    const auto& offs = entry["data_offsets"];
    if (!offs[0].is_number_unsigned() || !offs[1].is_number_unsigned()) {
      throw DataError(fmt::format("{}: data_offsets {} are not byte offsets", where, offs.dump()));
    }
    const uint64_t b = offs[0].get<uint64_t>(), e = offs[1].get<uint64_t>();
    if (b > e || e > data_size) {
      throw DataError(fmt::format("{}: data_offsets [{}, {}] outside the {} data bytes", where, b, e, data_size));
    }
    if (e - b != count * width) {
      throw DataError(fmt::format("{}: {} bytes for shape {} of {} ({} expected)", where, e - b,
                                  entry["shape"].dump(), dtype, count * width));
    }
    ranges.emplace_back(b, e);
    t.data.resize(count);
    const char* src = bytes.data() + data_begin + b;
    if (dtype == "F32") {
      std::memcpy(t.data.data(), src, count * 4);
    } else {
      for (uint64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        t.data[i] = dtype == "BF16" ? std::bit_cast<float>(static_cast<uint32_t>(h) << 16) : half_to_float(h);
      }
    }
    out.tensors.emplace(name, std::move(t));
  }
  // The reference reader insists the byte ranges tile the data exactly; so does this one, so a
  // file it accepts is one every reader accepts.
  std::sort(ranges.begin(), ranges.end());
  uint64_t at = 0;
  for (const auto& [b, e] : ranges) {
    if (b != at) throw DataError(fmt::format("{}: tensor data ranges overlap or leave a gap at byte {}", file, at));
    at = e;
  }
  if (at != data_size) {
    throw DataError(fmt::format("{}: {} bytes after the last tensor's data", file, data_size - at));
  }
  return out;
}

}  // namespace ptrain::tools::hf
