// Deterministic token text, output lengths and the hashing they rest on.
// Pure: no I/O, no clock. A token is one word of a fixed vocabulary, picked
// by hashing (seed, request key, token index); every word is stored both raw
// and JSON-escaped so the hot path only copies bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tr::sim {

// splitmix64 finalizer: a cheap, well-mixed 64-bit permutation.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// 64-bit FNV-1a over <data>, started from <seed>, then mixed.
uint64_t hash_bytes(const void* data, size_t len, uint64_t seed);

struct Word {
  std::string_view raw;      // UTF-8 text as the client sees it after JSON decoding
  std::string_view escaped;  // the same text JSON-escaped (as pydantic writes it)
};

constexpr size_t kVocabSize = 64;
constexpr size_t kWordEscapedBytesMax = 24;

// The word for token <index> of the request whose key is <key>.
const Word& token_word(uint64_t seed, uint64_t key, uint32_t index);

// Token at which a request without a natural length "emits EOS": uniform in
// [ceil(max/2), max], picked by (seed, request key).
uint32_t stop_point(uint64_t seed, uint64_t key, uint32_t max_tokens);

// The natural output length of a prompt: log-normal with mean <mean_tokens>
// and <sigma> (of the underlying normal), rounded, at least 1. <prompt_key>
// must depend on the prompt only, so every front end sees the same length.
uint32_t natural_output_len(uint64_t seed, uint64_t prompt_key, double mean_tokens, double sigma);

// Prompt tokens of <text> under `--tokenizer mixed`, a deterministic stand-in
// for a BPE tokenizer whose ratio of characters to tokens depends on the text
// (README.md, Tokens). One pass over the bytes, no allocation. The text splits
// into maximal runs of one class of code point:
//   word   ASCII letters, digits and '_', and non-ASCII letters outside CJK:
//          ceil(n / 5) tokens per run, so English prose, spaces included,
//          comes to about 4 code points per token;
//   cjk    Han, Hiragana, Katakana, Hangul, CJK punctuation and full-width
//          forms: ceil(2n / 3) tokens per run (1.5 code points per token);
//   symbol every other code point (punctuation, operators, brackets, newlines,
//          tabs, spaces not joined to a word) and malformed bytes:
//          ceil(2n / 5) tokens per run (2.5 per token, as in source code).
// One space right before a word or CJK run is part of that run (BPE's
// " word" tokens), so it costs nothing.
// Returns 0 for an empty text.
uint64_t mixed_tokens(std::string_view text);

// Appends <text> JSON-escaped the way pydantic v2 does: '"', '\\' and
// control characters escaped, everything else (including non-ASCII UTF-8)
// copied as is.
void json_escape_append(std::string* out, std::string_view text);

}  // namespace tr::sim
