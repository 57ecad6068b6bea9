// Byte-level BPE: the pre-tokenizer, the tokenizer (rank-based merging with a per-word cache) and
// the trainer (incremental pair counts). The JSON format is documented in docs/formats.md.
//
// Ids 0-255 are the bytes themselves, so any byte string, valid UTF-8 or not, NULs included,
// encodes and decodes back exactly; merge k creates id 256 + k; <|endoftext|> is the last id.
#include "common/data/bpe.hpp"

#include "common/data/tokenizer.hpp"
#include "common/error.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <climits>
#include <atomic>
#include <queue>
#include <unordered_map>

namespace ptrain {
namespace bpe {
namespace {

enum class Cls : uint8_t { kSpace, kLetter, kDigit, kOther };

constexpr std::array<Cls, 256> make_classes() {
  std::array<Cls, 256> t{};
  for (int c = 0; c < 256; ++c) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r') {
      t[c] = Cls::kSpace;
    } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) {
      t[c] = Cls::kLetter;
    } else if (c >= '0' && c <= '9') {
      t[c] = Cls::kDigit;
    } else {
      t[c] = Cls::kOther;
    }
  }
  return t;
}
constexpr std::array<Cls, 256> kClasses = make_classes();

inline Cls cls(char c) { return kClasses[static_cast<unsigned char>(c)]; }

// GPT-2's contractions (lowercase only, as there): length of the one starting at s[i], or 0.
size_t contraction_at(std::string_view s, size_t i) {
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  const char d = s[i + 1];
  if (d == 's' || d == 't' || d == 'm' || d == 'd') return 2;
  if (i + 2 < s.size()) {
    const std::string_view two = s.substr(i + 1, 2);
    if (two == "re" || two == "ve" || two == "ll") return 3;
  }
  return 0;
}

}  // namespace

void pretokenize(std::string_view s, std::vector<std::string_view>& out) {
  auto emit = [&](size_t b, size_t e) {
    while (e - b > kMaxPieceBytes) {
      out.push_back(s.substr(b, kMaxPieceBytes));
      b += kMaxPieceBytes;
    }
    out.push_back(s.substr(b, e - b));
  };
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (size_t len = contraction_at(s, i)) {
      emit(i, i + len);
      i += len;
      continue;
    }
    // A single space leads the word that follows it.
    const size_t j = (s[i] == ' ' && i + 1 < n && cls(s[i + 1]) != Cls::kSpace) ? i + 1 : i;
    const Cls k = cls(s[j]);
    size_t e = j + 1;
    while (e < n && cls(s[e]) == k) ++e;
    if (k == Cls::kSpace && e < n && e - i > 1) --e;  // keep the last one for the next word
    emit(i, e);
    i = e;
  }
}

}  // namespace bpe

namespace {

constexpr int32_t kNumBytes = 256;

inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

using bpe::StringHash;

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(std::vector<BpeMerge> merges) : merges_(std::move(merges)) {
    pieces_.reserve(kNumBytes + merges_.size());
    for (int c = 0; c < kNumBytes; ++c) pieces_.emplace_back(1, static_cast<char>(c));
    ranks_.reserve(merges_.size() * 2);
    for (size_t k = 0; k < merges_.size(); ++k) {
      const auto [a, b] = merges_[k];
      const int32_t id = kNumBytes + static_cast<int32_t>(k);
      if (a < 0 || b < 0 || a >= id || b >= id) {
        throw DataError(fmt::format("bpe merge {} = [{}, {}] names an id not defined before it "
                                    "(ids must be < {})", k, a, b, id));
      }
      if (!ranks_.emplace(pair_key(a, b), id).second) {
        throw DataError(fmt::format("bpe merge {} = [{}, {}] repeats merge {}", k, a, b,
                                    ranks_.at(pair_key(a, b)) - kNumBytes));
      }
      pieces_.push_back(pieces_[a] + pieces_[b]);
    }
  }

  std::string kind() const override { return "bpe"; }
  int64_t vocab_size() const override { return kNumBytes + static_cast<int64_t>(merges_.size()) + 1; }
  int32_t eot() const override { return kNumBytes + static_cast<int32_t>(merges_.size()); }

  std::vector<int32_t> encode(std::string_view bytes) const override {
    return bpe::encode_cached(bytes, serial_, bpe::pretokenize, [this](std::string_view w) { return encode_word(w); });
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id == eot()) continue;
      if (id < 0 || id >= eot()) {
        throw DataError(fmt::format("cannot decode token id {}: outside the bpe vocabulary of {}",
                                    id, vocab_size()));
      }
      out += pieces_[id];
    }
    return out;
  }

  std::string to_json() const override {
    // Written by hand so the merge list reads one pair per line.
    std::string s = fmt::format(
        "{{\n  \"format\": \"ptrain-tokenizer\",\n  \"version\": 1,\n  \"kind\": \"bpe\",\n"
        "  \"vocab_size\": {},\n  \"eot\": {},\n  \"pretokenizer\": \"{}\",\n  \"merges\": [",
        vocab_size(), eot(), bpe::kPretokenizerName);
    for (size_t k = 0; k < merges_.size(); ++k) {
      s += fmt::format("{}\n    [{}, {}]", k == 0 ? "" : ",", merges_[k].first, merges_[k].second);
    }
    s += merges_.empty() ? "]\n}\n" : "\n  ]\n}\n";
    return s;
  }

 private:
  // Applies merges in rank order (lowest new id first), each to every occurrence left to right:
  // the same order the trainer created them in, so training-time segmentations are reproduced.
  std::vector<int32_t> encode_word(std::string_view w) const {
    std::vector<int32_t> ids(w.size());
    for (size_t k = 0; k < w.size(); ++k) ids[k] = static_cast<unsigned char>(w[k]);
    bpe::merge_word(ids, [this](int32_t a, int32_t b) {
      auto it = ranks_.find(pair_key(a, b));
      return it == ranks_.end() ? std::pair{INT32_MAX, 0} : std::pair{it->second, it->second};
    });
    return ids;
  }

  std::vector<BpeMerge> merges_;
  std::unordered_map<uint64_t, int32_t> ranks_;  // pair -> the id it merges into
  std::vector<std::string> pieces_;              // id -> its bytes
  uint64_t serial_ = bpe::WordCache::next_owner();
};

// ---- training ----
//
// Classic BPE over distinct pre-token words weighted by their counts, kept incremental so that a
// merge costs time proportional to the words it touches, not the corpus:
//   counts: pair -> occurrences over all words (weighted);
//   where:  pair -> words that contained it when it was last added (may hold stale entries);
//   heap:   (count, pair) entries, lazily invalidated: an entry is used only if its count is
//           still current. Ties go to the smaller (first, second) pair, so the result is a
//           function of the word counts alone.
// A touched word has its old pairs subtracted and its new pairs added, which handles runs like
// "aaaa" (overlapping occurrences) without special cases.

struct HeapEntry {
  int64_t count;
  uint64_t pair;
  bool operator<(const HeapEntry& o) const {  // max-heap on count, then min on pair
    return count != o.count ? count < o.count : pair > o.pair;
  }
};

struct TrainWord {
  std::vector<int32_t> syms;
  int64_t count;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(std::vector<BpeMerge> merges) {
  return std::make_unique<BpeTokenizer>(std::move(merges));
}

namespace {

// Trains from distinct words and their counts (sorted, so the result is a function of the counts).
std::unique_ptr<Tokenizer> train_from_counts(std::vector<std::pair<std::string_view, int64_t>> sorted,
                                             int64_t vocab_size) {
  if (vocab_size < kNumBytes + 1 || vocab_size > INT32_MAX) {
    throw UsageError(fmt::format("bpe vocabulary size must be in [257, {}] (256 bytes + merges + "
                                 "<|endoftext|>), got {}", INT32_MAX, vocab_size));
  }
  const int64_t want_merges = vocab_size - kNumBytes - 1;
  std::sort(sorted.begin(), sorted.end());
  std::vector<TrainWord> words;
  words.reserve(sorted.size());
  for (const auto& [w, c] : sorted) {
    if (w.size() < 2) continue;  // nothing to merge inside it
    TrainWord tw{std::vector<int32_t>(w.size()), c};
    for (size_t k = 0; k < w.size(); ++k) tw.syms[k] = static_cast<unsigned char>(w[k]);
    words.push_back(std::move(tw));
  }

  std::unordered_map<uint64_t, int64_t> counts;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].syms;
    for (size_t k = 0; k + 1 < s.size(); ++k) {
      const uint64_t p = pair_key(s[k], s[k + 1]);
      counts[p] += words[w].count;
      auto& list = where[p];
      if (list.empty() || list.back() != static_cast<int32_t>(w)) list.push_back(static_cast<int32_t>(w));
    }
  }
  std::vector<HeapEntry> initial;
  initial.reserve(counts.size());
  for (const auto& [p, c] : counts) initial.push_back({c, p});
  std::priority_queue<HeapEntry> heap(std::less<HeapEntry>{}, std::move(initial));

  std::vector<BpeMerge> merges;
  merges.reserve(static_cast<size_t>(want_merges));
  std::vector<int32_t> stamp(words.size(), -1);  // last merge id that visited the word
  std::vector<int32_t> merged;
  std::vector<uint64_t> touched;
  while (static_cast<int64_t>(merges.size()) < want_merges && !heap.empty()) {
    const HeapEntry top = heap.top();
    heap.pop();
    auto cit = counts.find(top.pair);
    if (cit == counts.end()) continue;            // gone entirely
    if (cit->second != top.count) {               // stale: requeue at its current count
      if (cit->second < top.count) heap.push({cit->second, top.pair});
      continue;                                   // (a higher count was pushed when it rose)
    }
    if (top.count < 2) break;  // merging a pair seen once compresses nothing
    const int32_t a = static_cast<int32_t>(top.pair >> 32);
    const int32_t b = static_cast<int32_t>(top.pair & 0xffffffffu);
    const int32_t id = kNumBytes + static_cast<int32_t>(merges.size());
    merges.emplace_back(a, b);

    std::vector<int32_t> list = std::move(where[top.pair]);
    where.erase(top.pair);
    touched.clear();
    for (int32_t w : list) {
      if (stamp[w] == id) continue;
      stamp[w] = id;
      auto& syms = words[w].syms;
      merged.clear();
      for (size_t k = 0; k < syms.size();) {
        if (k + 1 < syms.size() && syms[k] == a && syms[k + 1] == b) {
          merged.push_back(id);
          k += 2;
        } else {
          merged.push_back(syms[k++]);
        }
      }
      if (merged.size() == syms.size()) continue;  // stale entry: the pair left this word
      const int64_t c = words[w].count;
      for (size_t k = 0; k + 1 < syms.size(); ++k) {
        auto it = counts.find(pair_key(syms[k], syms[k + 1]));
        if ((it->second -= c) == 0) counts.erase(it);
      }
      for (size_t k = 0; k + 1 < merged.size(); ++k) {
        const uint64_t p = pair_key(merged[k], merged[k + 1]);
        counts[p] += c;
        if (merged[k] == id || merged[k + 1] == id) {  // only pairs with the new id can grow
          auto& plist = where[p];
          if (plist.empty() || plist.back() != w) plist.push_back(w);
          touched.push_back(p);
        }
      }
      syms.swap(merged);
    }
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t p : touched) {
      auto it = counts.find(p);
      if (it != counts.end()) heap.push({it->second, p});
    }
  }
  if (static_cast<int64_t>(merges.size()) < want_merges) {
    spdlog::warn("bpe: the training text allows only {} merges (no pair of tokens occurs twice "
                 "more); vocabulary size is {} instead of the requested {}",
                 merges.size(), kNumBytes + merges.size() + 1, vocab_size);
  }
  return make_bpe_tokenizer(std::move(merges));
}

}  // namespace

std::unique_ptr<Tokenizer> train_bpe_tokenizer(std::span<const std::string_view> documents,
                                               int64_t vocab_size) {
  BpeWordCounter counter;
  for (std::string_view doc : documents) counter.add(doc);
  return counter.train(vocab_size);
}

struct BpeWordCounter::Impl {
  std::unordered_map<std::string, int64_t, StringHash, std::equal_to<>> counts;
  std::vector<std::string_view> pieces;
};

BpeWordCounter::BpeWordCounter() : impl_(std::make_unique<Impl>()) {}
BpeWordCounter::~BpeWordCounter() = default;

void BpeWordCounter::add(std::string_view document) {
  impl_->pieces.clear();
  bpe::pretokenize(document, impl_->pieces);
  for (std::string_view p : impl_->pieces) {
    auto it = impl_->counts.find(p);
    if (it == impl_->counts.end()) it = impl_->counts.emplace(std::string(p), 0).first;
    ++it->second;
  }
}

std::unique_ptr<Tokenizer> BpeWordCounter::train(int64_t vocab_size) const {
  std::vector<std::pair<std::string_view, int64_t>> words(impl_->counts.begin(), impl_->counts.end());
  return train_from_counts(std::move(words), vocab_size);
}

}  // namespace ptrain
