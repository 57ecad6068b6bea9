// Masked-LM examples for BERT: the special tokens, the [CLS] … [SEP] sequence cut from a window
// of a token file, and the masking rule, drawn from a key derived from (run seed, step, window) so
// that a step's masks do not depend on which worker computes a window (every worker count gives
// the same masks), and a run or a resume reproduces them bitwise.
//
// Special tokens are added at model level, after the tokenizer's ids (token files, tokenizers and
// `ptrain prepare` are the same for both architectures): with V_tok the tokenizer's size,
// [PAD] = V_tok, [CLS] = V_tok+1, [SEP] = V_tok+2, [MASK] = V_tok+3, and the model has V_tok+4 ids.
//
// Sequence of window i (tokens [i·T, i·T+T+1) of the file, as for GPT): [CLS] w[0] … w[T-3] [SEP]
// — T-2 tokens of contiguous text (document ends, `<|endoftext|>`, stay as they are in the text).
// Masking (as BERT and Hugging Face's DataCollatorForLanguageModeling): each text position is
// chosen with probability 0.15 (at least one per sequence: if none was, the position named by the
// key is); a chosen position's label is its token, and its input becomes [MASK] with probability
// 0.8, a random text token (uniform over [0, V_tok)) with 0.1, or stays with 0.1. [CLS], [SEP] and
// unchosen positions have label -100 (not predicted).
// Random numbers: per position j, three draws splitmix64(key + 3j + r), r = 0, 1, 2 (choose,
// replace, random token); u = (bits >> 11 + 0.5)·2^-53. scripts/gen_fixtures.py has a Python copy
// that the tests compare bitwise.
#pragma once

#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <span>

namespace ptrain {

struct BertTokens {
  int64_t text_vocab = 0;  // V_tok: ids [0, V_tok) are the tokenizer's
  int32_t pad = 0, cls = 0, sep = 0, mask = 0;
};
// The special tokens of a BERT model (dims.V = V_tok + 4).
BertTokens bert_tokens(const ModelDims& dims);

// The step value of evaluation masks: `ptrain eval` and in-run validation use the key
// (seed 0, kEvalMaskStep, window), the same for every run, so their numbers compare.
constexpr int64_t kEvalMaskStep = -1;
uint64_t mlm_mask_key(uint64_t run_seed, int64_t step, int64_t window);

// One window (T+1 ids; the first T-2 are used) → inputs (T) and labels (T), T >= 3.
void mlm_example(std::span<const int32_t> window, int64_t T, const BertTokens& tok, uint64_t key,
                 std::span<int32_t> inputs, std::span<int32_t> labels);

// The first `len` ≤ T-2 text tokens as an unmasked sequence [CLS] text [SEP] (fill-mask,
// classification): returns the sequence length len+2.
int64_t bert_sequence(std::span<const int32_t> text, const BertTokens& tok, std::span<int32_t> out);

}  // namespace ptrain
