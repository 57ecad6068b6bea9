// Resolving a tokenizer by the name users hold and printing ids (tokenize.hpp).
#include "tools/tokenize.hpp"

#include "common/error.hpp"
#include "common/util/fs.hpp"
#include "tools/checkpoint_model.hpp"
#include "tools/hf/hf_tokenizer.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>

namespace ptrain::tools {

std::unique_ptr<Tokenizer> resolve_tokenizer(const std::string& spec) {
  namespace fs = std::filesystem;
  if (spec == "byte") return make_byte_tokenizer();
  std::error_code ec;
  if (fs::is_directory(spec, ec)) {
    if (fs::exists(fs::path(spec) / "checkpoint.h5")) return open_checkpoint_header(spec).tokenizer;
    const fs::path tj = fs::path(spec) / "tokenizer.json";
    if (!fs::exists(tj)) {
      throw IoError(fmt::format("{}: a folder without tokenizer.json or checkpoint.h5 names no tokenizer", spec));
    }
    return resolve_tokenizer(tj.string());
  }
  const std::string text = read_file(spec);
  if (text.rfind("\x89HDF", 0) == 0) return open_checkpoint_header(spec).tokenizer;
  // A Hugging Face tokenizer.json has a "model"; ptrain's has a "format".
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_object() && j.contains("model") && !j.contains("format")) return hf::from_hf_tokenizer(text, spec);
  return tokenizer_from_json(text, spec);
}

std::string tokenize_text(const Tokenizer& tok, std::string_view text, bool json) {
  const std::vector<int32_t> ids = tok.encode(text);
  if (!json) {
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += fmt::format("{}{}", i ? " " : "", ids[i]);
    return line + "\n";
  }
  nlohmann::json tokens = nlohmann::json::array();
  for (int32_t id : ids) tokens.push_back(tok.decode(std::span<const int32_t>(&id, 1)));
  const nlohmann::json j = {{"ids", ids}, {"tokens", tokens}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace ptrain::tools
