// SSE scanner: line splitting (CR, LF, CRLF), field classification, and a
// minimal allocation-free walk of an event's top-level JSON keys.
#include "sse/sse.hpp"

#include "core/json.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/assert.hpp"

namespace tr {

namespace {

// First capacity of the tail buffer: a typical vLLM chunk line (300-500 bytes)
// fits, so a stream usually allocates it once; it grows geometrically up to
// kSseEventInspectMax for longer lines and keeps its capacity across events.
constexpr size_t kTailInitialBytes = 1024;
static_assert(kTailInitialBytes <= kSseEventInspectMax);

// First '\n' or '\r' in [p, end), or end: the obvious loop, used to check
// the fast path in debug builds.
[[maybe_unused]] const char* find_eol_slow(const char* p, const char* end) {
  while (p < end && *p != '\n' && *p != '\r')
    ++p;
  return p;
}

// Calls fn(i) for every i where s[i] == '"' and s[i + 1] is 'u' or 'e': the
// only places a "usage" or "error" key can start. Sixteen positions per step
// with SSE2 (always there on x86-64); a plain loop elsewhere.
template <class Fn>
void for_each_quote_u_or_e(std::string_view s, Fn&& fn) {
  const char* d = s.data();
  size_t n = s.size();
  size_t i = 0;
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"');
  const __m128i u = _mm_set1_epi8('u');
  const __m128i e = _mm_set1_epi8('e');
  for (; i + 17 <= n; i += 16) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(d + i));
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(d + i + 1));
    __m128i hit = _mm_and_si128(_mm_cmpeq_epi8(a, quote),
                                _mm_or_si128(_mm_cmpeq_epi8(b, u), _mm_cmpeq_epi8(b, e)));
    for (auto bits = static_cast<unsigned>(_mm_movemask_epi8(hit)); bits != 0; bits &= bits - 1) {
      fn(i + static_cast<size_t>(std::countr_zero(bits)));
    }
  }
#endif
  for (; i + 1 < n; ++i) {
    if (d[i] == '"' && (d[i + 1] == 'u' || d[i + 1] == 'e')) fn(i);
  }
}

// --- A tiny JSON walker, just enough to find top-level keys. It never
// allocates or recurses; on anything malformed it gives up (npos).
constexpr size_t kNpos = std::string_view::npos;

size_t skip_ws(std::string_view s, size_t i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
    ++i;
  return i;
}

// s[i] == '"'. Returns the index after the closing quote.
size_t skip_string(std::string_view s, size_t i) {
  for (++i; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '"') {
      return i + 1;
    }
  }
  return kNpos;
}

// Returns the index after the value starting at s[i].
size_t skip_value(std::string_view s, size_t i) {
  if (i >= s.size()) return kNpos;
  char c = s[i];
  if (c == '"') return skip_string(s, i);
  if (c == '{' || c == '[') {
    size_t depth = 0;
    while (i < s.size()) {
      c = s[i];
      if (c == '"') {
        i = skip_string(s, i);
        if (i == kNpos) return kNpos;
        continue;
      }
      if (c == '{' || c == '[') {
        ++depth;
      } else if (c == '}' || c == ']') {
        if (--depth == 0) return i + 1;
      }
      ++i;
    }
    return kNpos;
  }
  size_t start = i;
  while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' &&
         s[i] != '\n' && s[i] != '\r') {
    ++i;
  }
  return i == start ? kNpos : i;
}

// Calls fn(key, value) for each member of the object <s> (leading whitespace
// allowed), keys as written (escapes are not decoded: none of the keys we look
// for has any). Stops at the first malformed byte.
template <class Fn>
void for_each_member(std::string_view s, Fn&& fn) {
  size_t i = skip_ws(s, 0);
  if (i >= s.size() || s[i] != '{') return;
  i = skip_ws(s, i + 1);
  if (i < s.size() && s[i] == '}') return;
  while (i < s.size() && s[i] == '"') {
    size_t key_end = skip_string(s, i);
    if (key_end == kNpos) return;
    std::string_view key = s.substr(i + 1, key_end - i - 2);
    i = skip_ws(s, key_end);
    if (i >= s.size() || s[i] != ':') return;
    i = skip_ws(s, i + 1);
    size_t value_end = skip_value(s, i);
    if (value_end == kNpos) return;
    fn(key, s.substr(i, value_end - i));
    i = skip_ws(s, value_end);
    if (i >= s.size() || s[i] != ',') return;
    i = skip_ws(s, i + 1);
  }
}

bool parse_u64(std::string_view s, uint64_t* out) {
  if (s.empty() || s.front() < '0' || s.front() > '9') return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

}  // namespace

void SseScanner::reset() {
  // The scanner lives as long as its connection: do not let one long line
  // pin up to kSseEventInspectMax per idle connection.
  if (tail_.capacity() > kTailInitialBytes) {
    std::string().swap(tail_);
  } else {
    tail_.clear();
  }
  line_bytes_ = 0;
  lf_hint_ = nullptr;
  skip_lf_ = false;
  stream_start_ = true;
  pending_ = Event{};
  event_has_lines_ = false;
  event_ = Event{};
  event_ready_ = false;
  data_events_ = 0;
  error_events_ = 0;
  uninspected_events_ = 0;
  done_ = false;
  has_usage_ = false;
  prompt_tokens_ = 0;
  completion_tokens_ = 0;
  bytes_ = 0;
}

const char* SseScanner::next_eol(const char* p, const char* end) {
  // The next '\n' is found once and reused while it is still ahead, so a
  // stream of bare-CR lines does not rescan the piece for every line.
  if (lf_hint_ == nullptr || lf_hint_ < p) {
    const void* lf = std::memchr(p, '\n', static_cast<size_t>(end - p));
    lf_hint_ = lf != nullptr ? static_cast<const char*>(lf) : end;
  }
  const void* cr = std::memchr(p, '\r', static_cast<size_t>(lf_hint_ - p));
  const char* eol = cr != nullptr ? static_cast<const char*>(cr) : lf_hint_;
  TR_DASSERT(eol == find_eol_slow(p, end));
  return eol;
}

size_t SseScanner::scan(std::string_view bytes) {
  TR_DASSERT(!bytes.empty());
  TR_DASSERT(!event_ready_);
  const char* const begin = bytes.data();
  const char* const end = begin + bytes.size();
  const char* p = begin;
  if (skip_lf_) {  // the "\n" of a "\r\n" split across pieces
    skip_lf_ = false;
    if (*p == '\n') ++p;
  }
  while (p < end) {
    const char* eol = next_eol(p, end);
    if (eol == end) {  // the line continues in the next piece
      size_t n = static_cast<size_t>(end - p);
      if (tail_.capacity() < kTailInitialBytes) tail_.reserve(kTailInitialBytes);
      if (tail_.size() < kSseEventInspectMax) {
        tail_.append(p, std::min(n, kSseEventInspectMax - tail_.size()));
      }
      line_bytes_ += n;
      p = end;
      break;
    }
    // [p, eol) completes a line.
    size_t n = static_cast<size_t>(eol - p);
    std::string_view line(p, std::min(n, kSseEventInspectMax));
    size_t line_bytes = n;
    if (line_bytes_ != 0) {
      if (tail_.size() < kSseEventInspectMax) {
        tail_.append(p, std::min(n, kSseEventInspectMax - tail_.size()));
      }
      line = tail_;
      line_bytes += line_bytes_;
    }
    // Consume the terminator: "\n", "\r\n", or "\r" (maybe "\r" + "\n" next piece).
    p = eol + 1;
    if (*eol == '\r') {
      if (p == end) {
        skip_lf_ = true;
      } else if (*p == '\n') {
        ++p;
      }
    }
    on_line(line, line_bytes);
    tail_.clear();
    line_bytes_ = 0;
    if (event_ready_) break;
  }
  size_t used = static_cast<size_t>(p - begin);
  bytes_ += used;
  TR_DASSERT(used > 0);
  return used;
}

void SseScanner::on_line(std::string_view line, size_t line_bytes) {
  if (stream_start_) {
    stream_start_ = false;
    if (line.substr(0, 3) == "\xEF\xBB\xBF") {
      line.remove_prefix(3);
      line_bytes -= 3;
    }
  }
  if (line_bytes == 0) {
    dispatch();
    return;
  }
  event_has_lines_ = true;
  if (line.front() == ':') return;  // comment
  // "data" or "data:..." (only the first 5 bytes decide).
  if (line.size() < 4 || std::memcmp(line.data(), "data", 4) != 0) return;
  if (line.size() > 4 && line[4] != ':') return;  // another field, e.g. "database:"
  ++pending_.data_lines;
  if (pending_.data_lines > 1) {
    pending_.done = false;  // "[DONE]\n..." is not [DONE]
    return;
  }
  if (line_bytes > kSseEventInspectMax) {
    pending_.inspected = false;
    return;
  }
  std::string_view value = line.substr(line.size() > 4 ? 5 : 4);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  inspect_data(value);
}

void SseScanner::inspect_data(std::string_view value) {
  if (value == "[DONE]") {
    pending_.done = true;
    return;
  }
  // Gate: only a '"error"' or a '"usage"' followed by ':' and '{' can set a
  // flag. Ordinary token chunks (vLLM sends "usage":null in each one when
  // include_usage is on) end here after one pass over the line.
  bool candidate = false;
  for_each_quote_u_or_e(value, [&](size_t i) {
    std::string_view at = value.substr(i);
    if (at.substr(0, 7) == "\"error\"") {
      candidate = true;
    } else if (at.substr(0, 7) == "\"usage\"") {
      size_t j = skip_ws(value, i + 7);
      if (j < value.size() && value[j] == ':') {
        j = skip_ws(value, j + 1);
        if (j < value.size() && value[j] == '{') candidate = true;
      }
    }
  });
  if (!candidate) return;
  for_each_member(value, [this](std::string_view key, std::string_view v) {
    if (key == "error") {
      if (v != "null") pending_.error = true;
      return;
    }
    if (key != "usage" || v.front() != '{') return;
    bool have_prompt = false;
    bool have_completion = false;
    uint64_t prompt = 0;
    uint64_t completion = 0;
    for_each_member(v, [&](std::string_view k, std::string_view n) {
      if (k == "prompt_tokens") {
        have_prompt = parse_u64(n, &prompt);
      } else if (k == "completion_tokens") {
        have_completion = parse_u64(n, &completion);
      }
    });
    if (have_prompt && have_completion) {
      pending_.usage = true;
      pending_.prompt_tokens = prompt;
      pending_.completion_tokens = completion;
    }
  });
}

void SseScanner::dispatch() {
  if (!event_has_lines_) return;  // a blank line with nothing before it
  event_ = pending_;
  event_ready_ = true;
  pending_ = Event{};
  event_has_lines_ = false;
  if (event_.data_lines == 0) return;
  if (event_.done) {
    done_ = true;
    return;
  }
  ++data_events_;
  if (!event_.inspected) ++uninspected_events_;
  if (event_.error) ++error_events_;
  if (event_.usage) {
    has_usage_ = true;
    prompt_tokens_ = event_.prompt_tokens;
    completion_tokens_ = event_.completion_tokens;
  }
}

void append_json_string(std::string* out, std::string_view text) {
  out->push_back('"');
  json_escape_append(*out, text);
  out->push_back('"');
}

}  // namespace tr
