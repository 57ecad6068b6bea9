// Internals of the byte-level BPE shared by bpe.cpp, tokenizer.cpp and the tests: the pre-tokenizer
// and the name of its rules in tokenizer.json. Not a public interface; use tokenizer.hpp.
#pragma once

#include <cstddef>
#include <string_view>
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

}  // namespace ptrain::bpe
