// GPT-2's tokenizer (tokenizer.hpp): the reference's pre-tokenizer
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// written out as a scanner over UTF-8 code points (classes from unicode_classes.hpp; a byte that
// is not valid UTF-8 counts as one code point of class "other", so any bytes encode and decode
// back), then byte-level BPE on each piece with GPT-2's merges, in GPT-2's byte-to-unicode alphabet
// (bytes that print as themselves keep their code point, the others map to 256 + n in order).
#include "common/data/bpe.hpp"
#include "common/data/tokenizer.hpp"
#include "common/data/unicode_classes.hpp"
#include "common/error.hpp"
#include "common/util/fs.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <array>
#include <climits>
#include <unordered_map>

namespace ptrain {
namespace {

using unicode::Class;

constexpr std::string_view kEot = "<|endoftext|>";
constexpr std::string_view kPretokenizer = "gpt2-regex-v1";

// GPT-2's bytes_to_unicode(): byte -> code point of its stand-in character.
std::array<char32_t, 256> byte_to_unicode() {
  std::array<char32_t, 256> t{};
  char32_t n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    t[b] = printable ? static_cast<char32_t>(b) : 256 + n++;
  }
  return t;
}

void append_utf8(std::string& s, char32_t c) {
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else if (c < 0x800) {
    s += static_cast<char>(0xC0 | (c >> 6));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += static_cast<char>(0xE0 | (c >> 12));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (c >> 18));
    s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// The code point at s[i] and its length in bytes; invalid UTF-8 gives {U+FFFD-like other, 1}.
struct CodePoint {
  char32_t c;
  size_t len;
  bool valid;
};
CodePoint decode_at(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {b0, 1, true};
  size_t len = 0;
  char32_t c = 0, min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, c = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, c = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, c = b0 & 0x07, min = 0x10000;
  } else {
    return {0, 1, false};
  }
  if (i + len > s.size()) return {0, 1, false};
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return {0, 1, false};
    c = (c << 6) | (b & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return {0, 1, false};
  return {c, len, true};
}

// The regex above, one match at a time; appends the pieces (byte ranges of `s`) to `out`.
void gpt2_pretokenize(std::string_view s, std::vector<std::string_view>& out) {
  // Code points with their byte offsets and classes (a sentinel at the end).
  std::vector<size_t> at;
  std::vector<Class> cls;
  std::vector<char32_t> cp;
  for (size_t i = 0; i < s.size();) {
    const CodePoint p = decode_at(s, i);
    at.push_back(i);
    cp.push_back(p.valid ? p.c : 0xFFFFFFFF);
    cls.push_back(p.valid ? unicode::class_of(p.c) : Class::kOther);
    i += p.len;
  }
  const size_t n = at.size();
  at.push_back(s.size());
  auto emit = [&](size_t b, size_t e) { out.push_back(s.substr(at[b], at[e] - at[b])); };
  auto run = [&](size_t j, Class k) {
    while (j < n && cls[j] == k) ++j;
    return j;
  };
  size_t i = 0;
  while (i < n) {
    // 's 't 're 've 'm 'll 'd
    if (cp[i] == '\'' && i + 1 < n) {
      const char32_t d = cp[i + 1];
      if (d == 's' || d == 't' || d == 'm' || d == 'd') {
        emit(i, i + 2);
        i += 2;
        continue;
      }
      if (i + 2 < n && ((d == 'r' && cp[i + 2] == 'e') || (d == 'v' && cp[i + 2] == 'e') ||
                        (d == 'l' && cp[i + 2] == 'l'))) {
        emit(i, i + 3);
        i += 3;
        continue;
      }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': a run of one class, led by at most one space.
    const size_t j = (cp[i] == ' ' && i + 1 < n && cls[i + 1] != Class::kSpace) ? i + 1 : i;
    if (cls[j] != Class::kSpace) {
      const size_t e = run(j, cls[j]);
      emit(i, e);
      i = e;
      continue;
    }
    // '\s+(?!\S)': the whitespace run, less its last code point when a non-space follows;
    // '\s+': a lone space before a non-space.
    size_t e = run(i, Class::kSpace);
    if (e < n && e - i > 1) --e;
    emit(i, e);
    i = e;
  }
}

class Gpt2Tokenizer final : public Tokenizer {
 public:
  Gpt2Tokenizer(std::vector<std::string> tokens, const std::vector<std::string>& merges, const std::string& origin)
      : tokens_(std::move(tokens)), merges_(merges) {
    const auto b2u = byte_to_unicode();
    std::unordered_map<char32_t, int> u2b;
    for (int b = 0; b < 256; ++b) u2b[b2u[b]] = b;
    std::unordered_map<std::string_view, int32_t> ids;
    for (size_t id = 0; id < tokens_.size(); ++id) {
      if (!ids.emplace(tokens_[id], static_cast<int32_t>(id)).second) {
        throw DataError(fmt::format("{}: token {} \"{}\" appears twice", origin, id, tokens_[id]));
      }
    }
    for (int b = 0; b < 256; ++b) {
      std::string u;
      append_utf8(u, b2u[b]);
      auto it = ids.find(u);
      if (it == ids.end()) throw DataError(fmt::format("{}: no token for byte {} (\"{}\")", origin, b, u));
      byte_id_[b] = it->second;
    }
    auto eot = ids.find(kEot);
    if (eot == ids.end()) throw DataError(fmt::format("{}: no {} token", origin, kEot));
    eot_ = eot->second;
    // Each token's bytes, through the inverse of the byte-to-unicode map.
    bytes_.resize(tokens_.size());
    for (size_t id = 0; id < tokens_.size(); ++id) {
      if (static_cast<int32_t>(id) == eot_) continue;
      const std::string& t = tokens_[id];
      for (size_t i = 0; i < t.size();) {
        const CodePoint p = decode_at(t, i);
        auto it = p.valid ? u2b.find(p.c) : u2b.end();
        if (it == u2b.end()) {
          throw DataError(fmt::format("{}: token {} \"{}\" is not in GPT-2's byte alphabet", origin, id, t));
        }
        bytes_[id] += static_cast<char>(it->second);
        i += p.len;
      }
    }
    ranks_.reserve(merges.size() * 2);
    for (size_t r = 0; r < merges.size(); ++r) {
      const std::string& m = merges[r];
      const size_t sp = m.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 >= m.size() || m.find(' ', sp + 1) != std::string::npos) {
        throw DataError(fmt::format("{}: merge {} \"{}\" is not two tokens separated by one space", origin, r + 1, m));
      }
      const std::string a = m.substr(0, sp), b = m.substr(sp + 1);
      auto ia = ids.find(a), ib = ids.find(b), iab = ids.find(a + b);
      if (ia == ids.end() || ib == ids.end() || iab == ids.end()) {
        throw DataError(fmt::format("{}: merge {} \"{}\" names a token missing from the vocabulary", origin, r + 1, m));
      }
      ranks_.emplace(key(ia->second, ib->second), std::pair{static_cast<int32_t>(r), iab->second});
    }
  }

  std::string kind() const override { return "gpt2"; }
  int64_t vocab_size() const override { return static_cast<int64_t>(tokens_.size()); }
  int32_t eot() const override { return eot_; }

  std::vector<int32_t> encode(std::string_view text) const override {
    return bpe::encode_cached(text, serial_, gpt2_pretokenize, [this](std::string_view w) { return encode_word(w); });
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id == eot_) continue;
      if (id < 0 || id >= vocab_size()) {
        throw DataError(fmt::format("cannot decode token id {}: outside the gpt2 vocabulary of {}", id, vocab_size()));
      }
      out += bytes_[id];
    }
    return out;
  }

  std::string to_json() const override {
    nlohmann::ordered_json j;
    j["format"] = "ptrain-tokenizer";
    j["version"] = 1;
    j["kind"] = "gpt2";
    j["vocab_size"] = vocab_size();
    j["eot"] = eot_;
    j["pretokenizer"] = kPretokenizer;
    j["tokens"] = tokens_;
    j["merges"] = merges_;
    return j.dump(1) + "\n";
  }

 private:
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  std::vector<int32_t> encode_word(std::string_view w) const {
    std::vector<int32_t> ids(w.size());
    for (size_t k = 0; k < w.size(); ++k) ids[k] = byte_id_[static_cast<unsigned char>(w[k])];
    bpe::merge_word(ids, [this](int32_t a, int32_t b) {
      auto it = ranks_.find(key(a, b));
      return it == ranks_.end() ? std::pair{INT32_MAX, 0} : it->second;
    });
    return ids;
  }

  std::vector<std::string> tokens_;  // id -> token string (GPT-2's alphabet)
  std::vector<std::string> merges_;  // "a b", by rank
  std::vector<std::string> bytes_;   // id -> its bytes
  std::array<int32_t, 256> byte_id_{};
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> ranks_;  // pair -> (rank, merged id)
  int32_t eot_ = 0;
  uint64_t serial_ = bpe::WordCache::next_owner();
};

}  // namespace

std::unique_ptr<Tokenizer> make_gpt2_tokenizer(std::vector<std::string> tokens, const std::vector<std::string>& merges,
                                               const std::string& origin) {
  return std::make_unique<Gpt2Tokenizer>(std::move(tokens), merges, origin);
}

std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::string& vocab_json, const std::string& merges_txt) {
  nlohmann::json v;
  try {
    v = nlohmann::json::parse(read_file(vocab_json));
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("{}: not valid JSON: {}", vocab_json, e.what()));
  }
  if (!v.is_object()) throw DataError(fmt::format("{}: expected an object of token -> id", vocab_json));
  std::vector<std::string> tokens(v.size());
  std::vector<bool> seen(v.size(), false);
  for (const auto& [tok, id] : v.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= static_cast<int64_t>(v.size()) ||
        seen[id.get<size_t>()]) {
      throw DataError(fmt::format("{}: token \"{}\" has id {}; ids must be 0..{} without gaps or repeats",
                                  vocab_json, tok, id.dump(), v.size() - 1));
    }
    seen[id.get<size_t>()] = true;
    tokens[id.get<size_t>()] = tok;
  }
  std::vector<std::string> merges;
  const std::string text = read_file(merges_txt);
  size_t line_no = 0;
  for (size_t b = 0; b < text.size();) {
    size_t e = text.find('\n', b);
    if (e == std::string::npos) e = text.size();
    std::string line = text.substr(b, e - b);
    b = e + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    merges.push_back(std::move(line));
  }
  try {
    return make_gpt2_tokenizer(std::move(tokens), merges, vocab_json);
  } catch (const DataError& e) {
    throw DataError(fmt::format("{} (with {}): {}", e.what(), merges_txt, "check that both files come from the same "
                                                                        "GPT-2 tokenizer"));
  }
}

}  // namespace ptrain
