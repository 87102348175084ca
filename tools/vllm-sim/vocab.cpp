#include "vocab.hpp"

#include <array>
#include <cmath>
#include <numbers>

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

uint32_t stop_point(uint64_t seed, uint64_t key, uint32_t max_tokens) {
  const uint32_t lo = (max_tokens + 1) / 2;
  const uint64_t span = static_cast<uint64_t>(max_tokens - lo) + 1;
  const uint32_t t = lo + static_cast<uint32_t>(mix64(seed ^ mix64(key ^ 0x5704)) % span);
  return t == 0 ? 1 : t;
}

uint32_t natural_output_len(uint64_t seed, uint64_t prompt_key, double mean_tokens, double sigma) {
  TR_ASSERT(mean_tokens > 0);
  TR_ASSERT(sigma >= 0);
  // Two uniforms in (0, 1] from the key, then Box-Muller for one normal draw.
  const uint64_t h1 = mix64(seed ^ mix64(prompt_key ^ 0x0e7c));
  const uint64_t h2 = mix64(h1 ^ 0x51e9);
  const double u1 = static_cast<double>((h1 >> 11) + 1) * 0x1p-53;
  const double u2 = static_cast<double>((h2 >> 11) + 1) * 0x1p-53;
  const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  // E[exp(mu + sigma z)] = exp(mu + sigma^2 / 2): pick mu so the mean is the asked one.
  const double mu = std::log(mean_tokens) - sigma * sigma / 2.0;
  const double len = std::round(std::exp(mu + sigma * z));
  if (len < 1.0) return 1;
  return len >= 4294967295.0 ? UINT32_MAX : static_cast<uint32_t>(len);
}

namespace {

enum class CharClass : uint8_t { word, cjk, symbol };

// Decodes the code point at <s>[<i>] and advances <i> past it; a malformed or
// truncated sequence yields 0xFFFD and consumes one byte.
uint32_t next_code_point(std::string_view s, size_t* i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(*i);
  size_t len = 1;
  uint32_t cp = c;
  if (c >= 0xF0 && c < 0xF8) {
    len = 4;
    cp = c & 0x07;
  } else if (c >= 0xE0) {
    len = c < 0xF0 ? 3 : 1;
    cp = c & 0x0F;
  } else if (c >= 0xC0) {
    len = 2;
    cp = c & 0x1F;
  } else if (c >= 0x80) {
    *i += 1;
    return 0xFFFD;
  }
  if (len == 1 || *i + len > s.size()) {
    *i += 1;
    return c < 0x80 ? c : 0xFFFD;
  }
  for (size_t k = 1; k < len; ++k) {
    if ((b(*i + k) & 0xC0) != 0x80) {
      *i += 1;
      return 0xFFFD;
    }
    cp = (cp << 6) | (b(*i + k) & 0x3F);
  }
  *i += len;
  return cp;
}

CharClass classify(uint32_t cp) {
  if (cp < 0x80) {
    const bool alnum = (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') ||
                       (cp >= 'A' && cp <= 'Z') || cp == '_';
    return alnum ? CharClass::word : CharClass::symbol;
  }
  if ((cp >= 0x1100 && cp <= 0x11FF) ||    // Hangul Jamo
      (cp >= 0x2E80 && cp <= 0x9FFF) ||    // CJK radicals, punctuation, kana, Han
      (cp >= 0xA960 && cp <= 0xA97F) ||    // Hangul Jamo extended-A
      (cp >= 0xAC00 && cp <= 0xD7FF) ||    // Hangul syllables, Jamo extended-B
      (cp >= 0xF900 && cp <= 0xFAFF) ||    // CJK compatibility ideographs
      (cp >= 0xFF00 && cp <= 0xFFEF) ||    // half- and full-width forms
      (cp >= 0x20000 && cp <= 0x3FFFF)) {  // Han extensions B..
    return CharClass::cjk;
  }
  // Latin-1 and general punctuation, symbols, arrows, box drawing, the
  // replacement character: symbols. Other non-ASCII letters: words.
  if (cp <= 0xBF || cp == 0xD7 || cp == 0xF7 || (cp >= 0x2000 && cp <= 0x2BFF) || cp == 0xFFFD) {
    return CharClass::symbol;
  }
  return CharClass::word;
}

uint64_t run_tokens(CharClass cls, uint64_t n) {
  switch (cls) {
    case CharClass::word:
      return (n + 4) / 5;
    case CharClass::cjk:
      return (2 * n + 2) / 3;
    case CharClass::symbol:
      return (2 * n + 4) / 5;
  }
  return n;
}

}  // namespace

uint64_t mixed_tokens(std::string_view text) {
  uint64_t tokens = 0;
  uint64_t run = 0;  // code points in the current run
  CharClass cls = CharClass::symbol;
  size_t i = 0;
  while (i < text.size()) {
    const uint32_t cp = next_code_point(text, &i);
    CharClass c = classify(cp);
    if (cp == ' ' && i < text.size()) {
      size_t j = i;
      if (classify(next_code_point(text, &j)) != CharClass::symbol) {
        // The space opens the next word or CJK run: close the current run
        // and let the next code point start the new one.
        tokens += run_tokens(cls, run);
        run = 0;
        continue;
      }
    }
    if (run > 0 && c != cls) {
      tokens += run_tokens(cls, run);
      run = 0;
    }
    cls = c;
    run += 1;
  }
  return tokens + run_tokens(cls, run);
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
