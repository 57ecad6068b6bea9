// The byte tokenizer and the tokenizer.json reader (format in docs/formats.md). The BPE tokenizer
// itself lives in bpe.cpp.
#include "common/data/tokenizer.hpp"

#include "common/data/bpe.hpp"
#include "common/error.hpp"
#include "common/util/fs.hpp"
#include "common/util/hash.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace ptrain {
namespace {

constexpr int32_t kByteEot = 256;

class ByteTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "byte"; }
  int64_t vocab_size() const override { return kByteEot + 1; }
  int32_t eot() const override { return kByteEot; }

  std::vector<int32_t> encode(std::string_view bytes) const override {
    std::vector<int32_t> ids(bytes.size());
    for (size_t i = 0; i < bytes.size(); ++i) ids[i] = static_cast<unsigned char>(bytes[i]);
    return ids;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (int32_t id : ids) {
      if (id == kByteEot) continue;
      if (id < 0 || id > kByteEot) {
        throw DataError(fmt::format("cannot decode token id {}: outside the byte vocabulary of 257", id));
      }
      out.push_back(static_cast<char>(id));
    }
    return out;
  }

  std::string to_json() const override {
    return "{\n  \"format\": \"ptrain-tokenizer\",\n  \"version\": 1,\n  \"kind\": \"byte\",\n"
           "  \"vocab_size\": 257,\n  \"eot\": 256\n}\n";
  }
};

// nlohmann's messages start with "[json.exception.parse_error.101] "; the rest is what users need.
std::string json_message(const nlohmann::json::exception& e) {
  std::string m = e.what();
  if (!m.empty() && m[0] == '[') {
    if (auto p = m.find("] "); p != std::string::npos) m.erase(0, p + 2);
  }
  return m;
}

int64_t require_int(const nlohmann::json& j, const char* key, const std::string& origin) {
  if (!j.contains(key)) throw DataError(fmt::format("{}: missing key \"{}\"", origin, key));
  const auto& v = j.at(key);
  if (!v.is_number_integer()) {
    throw DataError(fmt::format("{}: \"{}\" must be an integer, got {}", origin, key, v.dump()));
  }
  return v.get<int64_t>();
}

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::unique_ptr<Tokenizer> tokenizer_from_json(const std::string& json, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("{}: not valid JSON: {}", origin, json_message(e)));
  }
  if (!j.is_object()) throw DataError(fmt::format("{}: a tokenizer must be a JSON object", origin));
  if (j.value("format", std::string()) != "ptrain-tokenizer") {
    throw DataError(fmt::format("{}: \"format\" is not \"ptrain-tokenizer\"; not a ptrain tokenizer file", origin));
  }
  if (const int64_t version = require_int(j, "version", origin); version != 1) {
    throw DataError(fmt::format("{}: tokenizer format version {} is not supported (this ptrain reads "
                                "version 1)", origin, version));
  }
  const std::string kind = j.contains("kind") && j["kind"].is_string() ? j["kind"].get<std::string>() : "";
  const int64_t vocab = require_int(j, "vocab_size", origin);
  const int64_t eot = require_int(j, "eot", origin);

  std::unique_ptr<Tokenizer> tok;
  if (kind == "byte") {
    tok = make_byte_tokenizer();
  } else if (kind == "bpe") {
    const std::string pre = j.value("pretokenizer", std::string(bpe::kPretokenizerName));
    if (pre != bpe::kPretokenizerName) {
      throw DataError(fmt::format("{}: pretokenizer \"{}\" is not supported (this ptrain has \"{}\")",
                                  origin, pre, bpe::kPretokenizerName));
    }
    if (!j.contains("merges") || !j["merges"].is_array()) {
      throw DataError(fmt::format("{}: a bpe tokenizer needs a \"merges\" array", origin));
    }
    std::vector<BpeMerge> merges;
    merges.reserve(j["merges"].size());
    for (const auto& m : j["merges"]) {
      if (!m.is_array() || m.size() != 2 || !m[0].is_number_integer() || !m[1].is_number_integer()) {
        throw DataError(fmt::format("{}: merge {} must be a pair of integer ids, got {}", origin,
                                    merges.size(), m.dump()));
      }
      const int64_t a = m[0].get<int64_t>(), b = m[1].get<int64_t>();
      if (a < 0 || b < 0 || a > INT32_MAX || b > INT32_MAX) {
        throw DataError(fmt::format("{}: merge {} has an id out of range: {}", origin, merges.size(), m.dump()));
      }
      merges.emplace_back(static_cast<int32_t>(a), static_cast<int32_t>(b));
    }
    try {
      tok = make_bpe_tokenizer(std::move(merges));
    } catch (const DataError& e) {
      throw DataError(fmt::format("{}: {}", origin, e.what()));
    }
  } else if (kind == "gpt2") {
    if (j.value("pretokenizer", std::string()) != "gpt2-regex-v1") {
      throw DataError(fmt::format("{}: a gpt2 tokenizer needs \"pretokenizer\": \"gpt2-regex-v1\"", origin));
    }
    auto strings = [&](const char* key) {
      if (!j.contains(key) || !j[key].is_array()) {
        throw DataError(fmt::format("{}: a gpt2 tokenizer needs a \"{}\" array of strings", origin, key));
      }
      std::vector<std::string> out;
      out.reserve(j[key].size());
      for (const auto& e : j[key]) {
        if (!e.is_string()) throw DataError(fmt::format("{}: \"{}\"[{}] is not a string", origin, key, out.size()));
        out.push_back(e.get<std::string>());
      }
      return out;
    };
    tok = make_gpt2_tokenizer(strings("tokens"), strings("merges"), origin);
  } else {
    throw DataError(fmt::format("{}: unknown tokenizer kind {} (expected \"byte\", \"bpe\" or \"gpt2\")", origin,
                                j.contains("kind") ? j["kind"].dump() : "(missing)"));
  }
  if (vocab != tok->vocab_size() || eot != tok->eot()) {
    throw DataError(fmt::format("{}: vocab_size {} / eot {} do not match the {} tokenizer described "
                                "(vocab_size {}, eot {})", origin, vocab, eot, kind, tok->vocab_size(),
                                tok->eot()));
  }
  return tok;
}

std::string tokenizer_hash(const Tokenizer& tok) { return sha256_hex(tok.to_json()); }

void check_data_tokenizer(const std::string& data, const std::string& data_hash, const Tokenizer& tok,
                          const std::string& tok_origin) {
  if (data_hash.empty()) return;
  const std::string want = tokenizer_hash(tok).substr(0, data_hash.size());
  if (data_hash != want) {
    throw DataError(fmt::format(
        "{} was made with tokenizer {} but {} uses tokenizer {} ({}, {} tokens): the data was prepared with "
        "another tokenizer; prepare it again with that tokenizer", data, data_hash, tok_origin, want, tok.kind(),
        tok.vocab_size()));
  }
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "byte") return make_byte_tokenizer();
  return tokenizer_from_json(read_file(spec), spec);
}

}  // namespace ptrain
