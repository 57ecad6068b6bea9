// `ptrain tokenize`'s work: how a tokenizer cuts text. The tokenizer is named the way users hold
// one: `byte`, a tokenizer.json (ptrain's, or a Hugging Face one that export-hf wrote), a prepared
// data folder (its tokenizer.json) or a checkpoint (.h5 or its folder: the stored tokenizer).
#pragma once

#include "common/data/tokenizer.hpp"

#include <memory>
#include <string>
#include <string_view>

namespace ptrain::tools {

// IoError / DataError / CheckpointError naming `spec` when it is none of the above.
std::unique_ptr<Tokenizer> resolve_tokenizer(const std::string& spec);

// The ids of `text` (no <|endoftext|> appended): one line, space-separated, ending in "\n"; with
// `json`, one object {"ids": [...], "tokens": [...]} where tokens[i] is id i's text (bytes that are
// not valid UTF-8 on their own, such as part of a character, show as U+FFFD).
std::string tokenize_text(const Tokenizer& tok, std::string_view text, bool json);

}  // namespace ptrain::tools
