// Internals of the byte-level BPE shared by bpe.cpp, tokenizer.cpp and the tests: the pre-tokenizer
// and the name of its rules in tokenizer.json. Not a public interface; use tokenizer.hpp.
#pragma once

#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ptrain::bpe {

// Identifies the pre-tokenizer rules below in tokenizer.json ("pretokenizer"); a change to the
// rules must get a new name, or old tokenizer files would silently encode differently.
inline constexpr std::string_view kPretokenizerName = "gpt2-bytes-v1";

// Longest pre-token in bytes; longer runs are cut into pieces of this size. Bounds the cost of
// merging one word (quadratic in its length) on inputs such as long lines of ASCII art.
inline constexpr size_t kMaxPieceBytes = 128;

// Splits `text` into pre-tokens, GPT-2 style, over bytes: letters (ASCII letters and every byte
// >= 0x80, so UTF-8 sequences stay inside words), digits, whitespace, and everything else. Pieces
// are: the contractions 's 't 'm 'd 're 've 'll; an optional single space followed by a run of
// one class (letters, digits or other); a whitespace run, minus its last character when a
// non-whitespace character follows (that character then leads the next word). Merges never
// cross pieces. The pieces, concatenated, are exactly `text`. Appends to `out`.
void pretokenize(std::string_view text, std::vector<std::string_view>& out);

// GPT-2's merge loop (its bpe()): repeatedly takes the adjacent pair of lowest rank and merges
// every non-overlapping occurrence of it, left to right, until no pair has a rank.
// `find(a, b)` returns {rank, merged id}, rank INT32_MAX when (a, b) never merge.
template <typename Find>
void merge_word(std::vector<int32_t>& ids, Find&& find) {
  while (ids.size() > 1) {
    int32_t best = INT32_MAX, a = 0, b = 0, merged = 0;
    for (size_t k = 0; k + 1 < ids.size(); ++k) {
      const auto [rank, id] = find(ids[k], ids[k + 1]);
      if (rank < best) {
        best = rank;
        a = ids[k];
        b = ids[k + 1];
        merged = id;
      }
    }
    if (best == INT32_MAX) break;
    size_t out = 0;
    for (size_t k = 0; k < ids.size();) {
      if (k + 1 < ids.size() && ids[k] == a && ids[k + 1] == b) {
        ids[out++] = merged;
        k += 2;
      } else {
        ids[out++] = ids[k++];
      }
    }
    ids.resize(out);
  }
}

// Heterogeneous lookup: find a cached word by string_view without building a std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

// A per-thread cache of word encodings, so that threads encoding in parallel never wait on each
// other. It belongs to one tokenizer at a time, named by a serial number (not an address, which a
// later tokenizer could reuse); a thread switching tokenizers starts it afresh.
class WordCache {
 public:
  static uint64_t next_owner() {
    static std::atomic<uint64_t> n{0};
    return ++n;
  }
  template <typename Encode>
  static const std::vector<int32_t>& get(uint64_t owner, std::string_view word, Encode&& encode) {
    thread_local uint64_t current = 0;
    thread_local std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache;
    if (current != owner || cache.size() > kMaxWords) {
      cache.clear();
      current = owner;
    }
    auto it = cache.find(word);
    if (it == cache.end()) it = cache.emplace(std::string(word), encode(word)).first;
    return it->second;
  }

 private:
  static constexpr size_t kMaxWords = size_t{1} << 18;
};

// Encodes `text` piece by piece: `pretokenize(text, pieces)` cuts it, `encode_word(piece)` encodes
// a piece not yet in this thread's cache for tokenizer `owner`.
template <typename Pretokenize, typename EncodeWord>
std::vector<int32_t> encode_cached(std::string_view text, uint64_t owner, Pretokenize&& pretokenize,
                                   EncodeWord&& encode_word) {
  std::vector<std::string_view> words;
  pretokenize(text, words);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  for (std::string_view w : words) {
    const auto& ids = WordCache::get(owner, w, encode_word);
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

}  // namespace ptrain::bpe
