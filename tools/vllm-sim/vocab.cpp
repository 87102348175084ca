#include "vocab.hpp"

#include <array>

#include "core/assert.hpp"

namespace tr::sim {

namespace {

// Raw words (leading space like a BPE vocabulary). A few need JSON escaping
// or are multi-byte UTF-8 so relays are tested on real bytes.
constexpr const char* kWords[] = {
    " the",    " model",      " token",       " of",      " and",     " a",      " to",
    " in",     " is",         " that",        " for",     " it",      " with",   " as",
    " was",    " on",         " cache",       " batch",   " prefill", " decode", " request",
    " stream", " proxy",      " replica",     " latency", " queue",   " block",  " prompt",
    " engine", " step",       " fast",        " slow",    " data",    " we",     " you",
    " they",   " this",       " from",        " by",      " at",      " be",     " or",
    " not",    " are",        " can",         " will",    " one",     " two",    ".",
    ",",       " \"quoted\"", " back\\slash", "\n",       "\n\n",     "\t",      " café",
    " naïve",  " 東京",       " über",        " —",       " {json}",  " </s>",   " 42",
    " ok",
};
static_assert(sizeof(kWords) / sizeof(kWords[0]) == kVocabSize);

struct Table {
  std::array<std::string, kVocabSize> escaped;
  std::array<Word, kVocabSize> words;

  Table() {
    for (size_t i = 0; i < kVocabSize; ++i) {
      json_escape_append(&escaped[i], kWords[i]);
      TR_ASSERT(escaped[i].size() <= kWordEscapedBytesMax);
      words[i] = Word{kWords[i], escaped[i]};
    }
  }
};

const Table& table() {
  static const Table t;
  return t;
}

}  // namespace

uint64_t hash_bytes(const void* data, size_t len, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0xcbf29ce484222325ull ^ mix64(seed);
  for (size_t i = 0; i < len; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return mix64(h ^ len);
}

const Word& token_word(uint64_t seed, uint64_t key, uint32_t index) {
  uint64_t h = mix64(seed ^ mix64(key ^ (static_cast<uint64_t>(index) << 1 | 1)));
  return table().words[h % kVocabSize];
}

void json_escape_append(std::string* out, std::string_view text) {
  static const char kHex[] = "0123456789abcdef";
  size_t run = 0;  // start of the pending run of bytes that need no escaping
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out->append(text.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      default: {
        const char u[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
        out->append(u, 6);
      }
    }
  }
  out->append(text.data() + run, text.size() - run);
}

}  // namespace tr::sim
