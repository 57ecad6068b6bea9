// Tokenizers: byte and BPE round trips on arbitrary bytes, the pre-tokenizer, BPE training
// (known merges, tie-breaking, determinism, equality with a naive trainer) and tokenizer.json.
#include "common/data/bpe.hpp"
#include "common/data/tokenizer.hpp"
#include "common/error.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

using namespace ptrain;

namespace {

std::string random_bytes(std::mt19937_64& rng, size_t max_len) {
  std::uniform_int_distribution<size_t> len(0, max_len);
  std::uniform_int_distribution<int> byte(0, 255);
  std::string s(len(rng), '\0');
  for (char& c : s) c = static_cast<char>(byte(rng));
  return s;
}

// English-ish text with repeats, so that BPE learns many merges.
std::vector<std::string> sample_corpus() {
  const char* lines[] = {
      "The quick brown fox jumps over the lazy dog.\n",
      "It's a truth universally acknowledged, that a single man in possession of a good fortune...\n",
      "    indented   code();  // with  runs   of spaces\n",
      "Numbers: 3.14159, 2718, 1e-10 and 42!\n",
      "Caf\xc3\xa9 na\xc3\xafve \xe2\x80\x9cquoted\xe2\x80\x9d \xf0\x9f\x98\x80 emoji\n",
      "they're we've I'll you'd she'd THEY'RE don't\n",
  };
  std::vector<std::string> docs;
  for (int rep = 0; rep < 20; ++rep) {
    std::string d;
    for (int k = 0; k < 6; ++k) d += lines[(rep + k) % 6];
    docs.push_back(d);
  }
  return docs;
}

std::vector<std::string_view> views(const std::vector<std::string>& v) {
  return {v.begin(), v.end()};
}

// The textbook trainer, recounting every pair before each merge: the oracle for the incremental one.
std::vector<BpeMerge> naive_train(const std::vector<std::string>& docs, int64_t vocab_size) {
  std::map<std::string, int64_t> counts;
  for (const auto& d : docs) {
    std::vector<std::string_view> pieces;
    bpe::pretokenize(d, pieces);
    for (auto p : pieces) ++counts[std::string(p)];
  }
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [w, c] : counts) {
    std::vector<int32_t> ids;
    for (unsigned char ch : w) ids.push_back(ch);
    words.emplace_back(ids, c);
  }
  std::vector<BpeMerge> merges;
  while (256 + static_cast<int64_t>(merges.size()) + 1 < vocab_size) {
    std::map<BpeMerge, int64_t> pc;
    for (const auto& [ids, c] : words) {
      for (size_t k = 0; k + 1 < ids.size(); ++k) pc[{ids[k], ids[k + 1]}] += c;
    }
    BpeMerge best{};
    int64_t best_count = 0;
    for (const auto& [p, c] : pc) {
      if (c > best_count) best = p, best_count = c;  // map order: the smallest pair wins a tie
    }
    if (best_count < 2) break;
    const int32_t id = 256 + static_cast<int32_t>(merges.size());
    merges.push_back(best);
    for (auto& [ids, c] : words) {
      std::vector<int32_t> out;
      for (size_t k = 0; k < ids.size();) {
        if (k + 1 < ids.size() && ids[k] == best.first && ids[k + 1] == best.second) {
          out.push_back(id);
          k += 2;
        } else {
          out.push_back(ids[k++]);
        }
      }
      ids = out;
    }
  }
  return merges;
}

// The merge list, read back from tokenizer.json's "[a, b]" lines.
std::vector<BpeMerge> merges_of(const Tokenizer& t) {
  const std::string j = t.to_json();
  std::vector<BpeMerge> out;
  size_t pos = j.find("\"merges\"");
  while ((pos = j.find('[', pos + 1)) != std::string::npos) {
    int a = 0, b = 0;
    if (std::sscanf(j.c_str() + pos, "[%d, %d]", &a, &b) == 2) out.emplace_back(a, b);
  }
  return out;
}

}  // namespace

TEST_CASE("tokenizer: byte ids - eot and round trip of any bytes") {
  auto t = make_byte_tokenizer();
  CHECK(t->kind() == "byte");
  CHECK(t->vocab_size() == 257);
  CHECK(t->eot() == 256);
  const std::string s("A\0\xff\x80z", 5);
  const auto ids = t->encode(s);
  CHECK(ids == std::vector<int32_t>{65, 0, 255, 128, 122});
  std::vector<int32_t> with_eot = ids;
  with_eot.push_back(256);
  CHECK(t->decode(with_eot) == s);  // eot decodes to nothing
  std::mt19937_64 rng(1);
  for (int k = 0; k < 50; ++k) {
    const std::string r = random_bytes(rng, 300);
    CHECK(t->decode(t->encode(r)) == r);
  }
  const std::vector<int32_t> bad{257};
  CHECK_THROWS_AS(t->decode(bad), DataError);
  auto back = tokenizer_from_json(t->to_json(), "byte.json");
  CHECK(back->kind() == "byte");
  CHECK(load_tokenizer("byte")->vocab_size() == 257);
}

TEST_CASE("tokenizer: pre-tokenizer splits GPT-2 style and loses nothing") {
  std::vector<std::string_view> p;
  bpe::pretokenize("Hello world, it's  3.14\n\nok  x", p);
  // As GPT-2's regex: a whitespace run gives up its last character to the word after it, and a
  // lone "\n" before a word stands alone.
  const std::vector<std::string_view> want{"Hello", " world", ",", " it", "'s", " ", " 3", ".", "14", "\n", "\n",
                                           "ok", " ", " x"};
  CHECK(p == want);

  p.clear();
  bpe::pretokenize("a   \n", p);  // trailing whitespace stays one piece
  CHECK(p == std::vector<std::string_view>{"a", "   \n"});

  p.clear();
  const std::string long_run(300, '=');
  bpe::pretokenize(long_run, p);
  CHECK(p.size() == 3);  // cut into kMaxPieceBytes pieces
  CHECK(p[0].size() == bpe::kMaxPieceBytes);

  std::mt19937_64 rng(2);
  for (int k = 0; k < 200; ++k) {
    const std::string r = random_bytes(rng, 500);
    p.clear();
    bpe::pretokenize(r, p);
    std::string joined;
    for (auto piece : p) {
      CHECK(!piece.empty());
      CHECK(piece.size() <= bpe::kMaxPieceBytes);
      joined += piece;
    }
    CHECK(joined == r);
  }
}

TEST_CASE("tokenizer: bpe learns the expected merges on a known small corpus") {
  // "ab ab ab": words "ab" x1, " ab" x2. (a,b) x3 merges first, then (' ', ab) x2, then nothing
  // occurs twice: V = 256 + 2 + 1 even though 300 was asked for.
  const std::vector<std::string> docs{"ab ab ab"};
  auto t = train_bpe_tokenizer(views(docs), 300);
  CHECK(t->kind() == "bpe");
  CHECK(t->vocab_size() == 259);
  CHECK(t->eot() == 258);
  CHECK(merges_of(*t) == std::vector<BpeMerge>{{'a', 'b'}, {' ', 256}});
  CHECK(t->encode("ab ab") == std::vector<int32_t>{256, 257});
  CHECK(t->encode("abab") == std::vector<int32_t>{256, 256});
  CHECK(t->encode("ba") == std::vector<int32_t>{'b', 'a'});
  CHECK(t->decode(std::vector<int32_t>{256, 257, 258, 'x'}) == "ab abx");

  // Ties go to the smaller pair: (' ', c) < (a, b) < (c, d) all occur twice.
  const std::vector<std::string> tie{"ab cd", "ab cd"};
  auto t2 = train_bpe_tokenizer(views(tie), 1000);
  CHECK(merges_of(*t2) == std::vector<BpeMerge>{{' ', 'c'}, {'a', 'b'}, {256, 'd'}});
  CHECK(t2->encode("ab cd ab") == std::vector<int32_t>{257, 258, ' ', 257});

  // Overlapping runs: "aaaa" merges (a,a) twice, not three times.
  const std::vector<std::string> run{"aaaa", "aaaa"};
  auto t3 = train_bpe_tokenizer(views(run), 1000);
  CHECK(merges_of(*t3) == std::vector<BpeMerge>{{'a', 'a'}, {256, 256}});
  CHECK(t3->encode("aaaaa") == std::vector<int32_t>{257, 'a'});
}

TEST_CASE("tokenizer: bpe incremental training equals a naive recount-everything trainer") {
  const auto docs = sample_corpus();
  for (int64_t v : {257, 260, 300, 400, 2000}) {
    CAPTURE(v);
    auto t = train_bpe_tokenizer(views(docs), v);
    CHECK(merges_of(*t) == naive_train(docs, v));
  }
}

TEST_CASE("tokenizer: bpe training is deterministic and independent of document order") {
  auto docs = sample_corpus();
  const std::string a = train_bpe_tokenizer(views(docs), 500)->to_json();
  const std::string b = train_bpe_tokenizer(views(docs), 500)->to_json();
  std::reverse(docs.begin(), docs.end());
  const std::string c = train_bpe_tokenizer(views(docs), 500)->to_json();
  CHECK(a == b);
  CHECK(a == c);
  CHECK_THROWS_AS(train_bpe_tokenizer(views(docs), 256), UsageError);
}

TEST_CASE("tokenizer: bpe round trip on random bytes - NULs and invalid UTF-8 included") {
  std::mt19937_64 rng(3);
  auto docs = sample_corpus();
  for (int k = 0; k < 30; ++k) docs.push_back(random_bytes(rng, 400));  // so merges involve odd bytes too
  auto t = train_bpe_tokenizer(views(docs), 1200);
  CHECK(t->vocab_size() > 400);
  for (const auto& d : docs) CHECK(t->decode(t->encode(d)) == d);
  for (int k = 0; k < 300; ++k) {
    const std::string r = random_bytes(rng, 1000);
    const auto ids = t->encode(r);
    for (int32_t id : ids) REQUIRE((id >= 0 && id < t->eot()));
    CHECK(t->decode(ids) == r);
  }
  const std::string nuls(50, '\0');
  CHECK(t->decode(t->encode(nuls)) == nuls);
  CHECK(t->encode("").empty());
  // Compression on the training text itself.
  size_t bytes = 0, tokens = 0;
  for (const auto& d : sample_corpus()) bytes += d.size(), tokens += t->encode(d).size();
  CHECK(tokens * 2 < bytes);
  const std::vector<int32_t> bad{static_cast<int32_t>(t->vocab_size())};
  CHECK_THROWS_AS(t->decode(bad), DataError);
}

TEST_CASE("tokenizer: tokenizer.json round trip and refusals") {
  const auto docs = sample_corpus();
  auto t = train_bpe_tokenizer(views(docs), 400);
  auto back = tokenizer_from_json(t->to_json(), "tok.json");
  CHECK(back->to_json() == t->to_json());
  CHECK(back->vocab_size() == 400);
  CHECK(back->eot() == 399);
  for (const auto& d : docs) CHECK(back->encode(d) == t->encode(d));

  auto refused = [](const std::string& json, const std::string& needle) {
    CAPTURE(json);
    try {
      tokenizer_from_json(json, "bad.json");
      FAIL("accepted");
    } catch (const DataError& e) {
      const std::string m = e.what();
      CAPTURE(m);
      CHECK(m.find("bad.json") != std::string::npos);
      CHECK(m.find(needle) != std::string::npos);
    }
  };
  const std::string head = R"({"format":"ptrain-tokenizer","version":1,"kind":"bpe",)";
  refused("{not json", "not valid JSON");
  refused(R"({"format":"other","version":1,"kind":"byte","vocab_size":257,"eot":256})", "format");
  refused(R"({"format":"ptrain-tokenizer","version":2,"kind":"byte","vocab_size":257,"eot":256})", "version 2");
  refused(R"({"format":"ptrain-tokenizer","version":1,"kind":"wordpiece","vocab_size":257,"eot":256})", "unknown tokenizer kind");
  refused(R"({"format":"ptrain-tokenizer","version":1,"kind":"byte","vocab_size":300,"eot":256})", "do not match");
  refused(head + R"("vocab_size":258,"eot":257,"merges":[[97,300]]})", "not defined before");
  refused(head + R"("vocab_size":259,"eot":258,"merges":[[97,98],[97,98]]})", "repeats merge 0");
  refused(head + R"("vocab_size":259,"eot":258,"merges":[[97,98]]})", "do not match");
  refused(head + R"("vocab_size":258,"eot":257,"merges":[[97]]})", "pair of integer ids");
  refused(head + R"("vocab_size":258,"eot":257,"pretokenizer":"v9","merges":[[97,98]]})", "pretokenizer");
  refused(R"({"format":"ptrain-tokenizer","version":1,"kind":"byte","eot":256})", "vocab_size");
  CHECK_THROWS_AS(load_tokenizer("/nonexistent/ptrain-tokenizer.json"), IoError);
}
