// ptrain tokenizers to and from Hugging Face tokenizer files (hf_tokenizer.hpp).
#include "tools/hf/hf_tokenizer.hpp"

#include "common/error.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <array>
#include <unordered_map>

namespace ptrain::tools::hf {

const char* const kPiecePattern =
    R"('(?:[stmd]|re|ve|ll)| ?[A-Za-z\x{80}-\x{10FFFF}]+| ?[0-9]+)"
    R"(| ?[^ \t\n\x{0B}\x{0C}\r0-9A-Za-z\x{80}-\x{10FFFF}]+)"
    R"(|[ \t\n\x{0B}\x{0C}\r]+(?![^ \t\n\x{0B}\x{0C}\r])|[ \t\n\x{0B}\x{0C}\r]+)";

namespace {

constexpr const char* kEot = "<|endoftext|>";

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes map
// to U+0100.. in byte order.
const std::array<std::string, 256>& byte_chars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const uint32_t cp = printable(b) ? static_cast<uint32_t>(b) : 256u + static_cast<uint32_t>(n++);
      std::string s;
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      t[b] = s;
    }
    return t;
  }();
  return table;
}

std::string byte_level(std::string_view bytes) {
  std::string s;
  for (unsigned char b : bytes) s += byte_chars()[b];
  return s;
}

nlohmann::ordered_json pre_tokenizer_json() {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", kPiecePattern}}}, {"behavior", "Isolated"}, {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
}

// ptrain's merge list (pairs of ids) from the tokenizer's own JSON.
std::vector<BpeMerge> merges_of(const Tokenizer& tok) {
  std::vector<BpeMerge> merges;
  if (tok.kind() != "bpe") return merges;
  const auto j = nlohmann::json::parse(tok.to_json());
  for (const auto& m : j.at("merges")) merges.emplace_back(m[0].get<int32_t>(), m[1].get<int32_t>());
  return merges;
}

}  // namespace

std::string byte_level_char(unsigned char b) { return byte_chars()[b]; }

HfTokenizerFiles to_hf_tokenizer(const Tokenizer& tok, int64_t model_max_length) {
  const int32_t eot = tok.eot();
  const std::vector<BpeMerge> merges = merges_of(tok);
  std::vector<std::string> token(static_cast<size_t>(eot));
  std::unordered_map<std::string, int32_t> seen;
  for (int32_t id = 0; id < eot; ++id) {
    const int32_t one[1] = {id};
    const std::string bytes = tok.decode(one);
    token[id] = byte_level(bytes);
    if (auto [it, fresh] = seen.emplace(token[id], id); !fresh) {
      throw DataError(fmt::format("tokenizer: ids {} and {} are both the bytes {}; a Hugging Face "
                                  "vocabulary cannot tell them apart, so this tokenizer cannot be exported",
                                  it->second, id, nlohmann::json(token[id]).dump()));
    }
    if (token[id] == kEot) {
      throw DataError(fmt::format("tokenizer: id {} is the bytes \"{}\", which Hugging Face would read as the "
                                  "special token; this tokenizer cannot be exported", id, kEot));
    }
  }
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (int32_t id = 0; id < eot; ++id) vocab[token[id]] = id;
  vocab[kEot] = eot;
  nlohmann::ordered_json merge_list = nlohmann::ordered_json::array();
  std::string merges_txt = "#version: 0.2\n";
  for (const auto& [a, b] : merges) {
    merge_list.push_back(token[a] + " " + token[b]);
    merges_txt += token[a] + " " + token[b] + "\n";
  }
  nlohmann::ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = {{{"id", eot}, {"content", kEot}, {"single_word", false}, {"lstrip", false},
                        {"rstrip", false}, {"normalized", true}, {"special", true}}};
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = pre_tokenizer_json();
  j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  j["model"] = {{"type", "BPE"},        {"dropout", nullptr},    {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},    {"byte_fallback", false}, {"ignore_merges", false},
                {"vocab", vocab},       {"merges", merge_list}};

  HfTokenizerFiles f;
  f.tokenizer_json = j.dump(2) + "\n";
  f.vocab_json = vocab.dump() + "\n";
  f.merges_txt = merges_txt;
  nlohmann::ordered_json config = {
      {"tokenizer_class", "GPT2Tokenizer"}, {"add_prefix_space", false}, {"add_bos_token", false},
      {"bos_token", kEot}, {"eos_token", kEot}, {"unk_token", kEot},
      {"model_max_length", model_max_length}, {"clean_up_tokenization_spaces", false},
      // ptrain reads "<|endoftext|>" in text as its 13 bytes, not as the special token.
      {"split_special_tokens", true}};
  f.tokenizer_config_json = config.dump(2) + "\n";
  f.special_tokens_map_json =
      nlohmann::ordered_json({{"bos_token", kEot}, {"eos_token", kEot}, {"unk_token", kEot}}).dump(2) + "\n";
  if (!merges.empty()) {
    f.warnings.push_back(
        "ptrain cuts a pre-token longer than 128 bytes (a run of letters, digits, punctuation or "
        "whitespace) into 128-byte pieces; Hugging Face's tokenizer does not, so such text can "
        "tokenize differently");
  }
  f.warnings.push_back(
      "text that contains \"<|endoftext|>\" is 13 bytes to ptrain; tokenizer_config.json sets "
      "split_special_tokens so transformers agrees, but a client that ignores it (tokenizers "
      "without transformers) reads it as the special token");
  f.warnings.push_back(
      "the slow GPT2Tokenizer (vocab.json + merges.txt) splits text with GPT-2's own regex; only the "
      "fast tokenizer (tokenizer.json) tokenizes as ptrain does");
  return f;
}

std::unique_ptr<Tokenizer> from_hf_tokenizer(const std::string& text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("{}: not valid JSON: {}", origin, e.what()));
  }
  auto fail = [&](const std::string& what) { return DataError(fmt::format("{}: {}", origin, what)); };
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) throw fail("no \"model\" object");
  const auto& model = j["model"];
  if (model.value("type", std::string()) != "BPE") {
    throw NotImplementedError(fmt::format("{}: model type {} is not implemented yet (a byte-level BPE is)",
                                          origin, model.contains("type") ? model["type"].dump() : "(missing)"));
  }
  if (j.value("pre_tokenizer", nlohmann::json()) != nlohmann::json(pre_tokenizer_json())) {
    throw NotImplementedError(fmt::format(
        "{}: its pre_tokenizer is not ptrain's (a Split with ptrain's piece pattern, then ByteLevel); "
        "importing another tokenizer, GPT-2's own included, is not implemented yet: ptrain would cut "
        "its text differently", origin));
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) throw fail("model.vocab is not an object");
  if (!model.contains("merges") || !model["merges"].is_array()) throw fail("model.merges is not an array");
  const auto& vocab = model["vocab"];
  auto id_of = [&](const std::string& tok, const std::string& what) -> int32_t {
    auto it = vocab.find(tok);
    if (it == vocab.end() || !it->is_number_integer()) {
      throw fail(fmt::format("model.vocab has no id for {} {}", what, nlohmann::json(tok).dump()));
    }
    return it->get<int32_t>();
  };
  for (int b = 0; b < 256; ++b) {
    if (const int32_t id = id_of(byte_chars()[b], fmt::format("byte {}", b)); id != b) {
      throw fail(fmt::format("byte {} has id {}; ptrain's byte ids are the bytes themselves", b, id));
    }
  }
  std::vector<BpeMerge> merges;
  std::vector<std::string> token;
  token.reserve(256 + model["merges"].size());
  for (int b = 0; b < 256; ++b) token.push_back(byte_chars()[b]);
  for (const auto& m : model["merges"]) {
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const auto sp = s.find(' ');
      if (sp == std::string::npos) throw fail(fmt::format("merge {} {} is not two tokens", merges.size(), m.dump()));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      throw fail(fmt::format("merge {} {} is not two tokens", merges.size(), m.dump()));
    }
    const int32_t ia = id_of(a, "merge part"), ib = id_of(b, "merge part");
    const int32_t want = 256 + static_cast<int32_t>(merges.size());
    if (const int32_t id = id_of(a + b, "merge result"); id != want) {
      throw fail(fmt::format("merge {} ({} {}) makes id {}; ptrain's merge k makes id 256 + k = {}", merges.size(),
                             nlohmann::json(a).dump(), nlohmann::json(b).dump(), id, want));
    }
    merges.emplace_back(ia, ib);
  }
  const int32_t eot = 256 + static_cast<int32_t>(merges.size());
  if (id_of(kEot, "the special token") != eot || static_cast<int64_t>(vocab.size()) != eot + 1) {
    throw fail(fmt::format("expected {} tokens with <|endoftext|> last (id {}); the vocabulary has {}", eot + 1,
                           eot, vocab.size()));
  }
  if (merges.empty()) return make_byte_tokenizer();
  return make_bpe_tokenizer(std::move(merges));
}

}  // namespace ptrain::tools::hf
