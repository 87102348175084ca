#include "poller/prom.hpp"

#include <array>
#include <charconv>
#include <system_error>

#include "core/assert.hpp"

namespace tr::poller {

namespace {

// Character classes of the text format, one table lookup per byte.
enum : uint8_t {
  kNameStart = 1 << 0,   // [a-zA-Z_:]
  kNameChar = 1 << 1,    // [a-zA-Z0-9_:]
  kLabelStart = 1 << 2,  // [a-zA-Z_]
  kLabelChar = 1 << 3,   // [a-zA-Z0-9_]
  kBlank = 1 << 4,       // ' ' '\t': separates tokens
  kSpace = 1 << 5,       // ' ' '\t' '\r': trimmed at both ends of a line
};

constexpr std::array<uint8_t, 256> make_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    uint8_t m = 0;
    if (alpha || c == ':') m |= kNameStart | kNameChar;
    if (digit) m |= kNameChar | kLabelChar;
    if (alpha) m |= kLabelStart | kLabelChar;
    if (c == ' ' || c == '\t') m |= kBlank | kSpace;
    if (c == '\r') m |= kSpace;
    t[static_cast<size_t>(c)] = m;
  }
  return t;
}

constexpr std::array<uint8_t, 256> kClasses = make_classes();

inline bool is(char c, uint8_t cls) {
  return (kClasses[static_cast<uint8_t>(c)] & cls) != 0;
}

inline const char* skip_blanks(const char* p, const char* end) {
  while (p < end && is(*p, kBlank))
    ++p;
  return p;
}

// <p> is just past an opening '"'. Returns the closing '"', or nullptr if the
// value runs to <end>. Any escaped byte is accepted here; prom_unescape
// decides what it means.
const char* scan_quoted(const char* p, const char* end) {
  while (p < end) {
    const char c = *p;
    if (c == '"') return p;
    if (c == '\\' && ++p == end) return nullptr;
    ++p;
  }
  return nullptr;
}

// Reads one `name="value"` at <p> (blanks allowed around '='). Returns the
// byte after the closing quote, or nullptr if the text is not such a pair.
const char* scan_label(const char* p, const char* end, PromLabel* out) {
  if (p == end || !is(*p, kLabelStart)) return nullptr;
  const char* name = p++;
  while (p < end && is(*p, kLabelChar))
    ++p;
  out->name = std::string_view(name, static_cast<size_t>(p - name));
  p = skip_blanks(p, end);
  if (p == end || *p != '=') return nullptr;
  p = skip_blanks(p + 1, end);
  if (p == end || *p != '"') return nullptr;
  const char* value = ++p;
  p = scan_quoted(p, end);
  if (p == nullptr) return nullptr;
  out->value = std::string_view(value, static_cast<size_t>(p - value));
  return p + 1;
}

// <p> is just past '{'. Checks the whole label set and returns its closing
// '}', or nullptr if the set is malformed or unterminated. A trailing comma
// before '}' is accepted, as the Prometheus server accepts it.
const char* scan_label_set(const char* p, const char* end) {
  PromLabel label;
  for (;;) {
    p = skip_blanks(p, end);
    if (p == end) return nullptr;
    if (*p == '}') return p;
    p = scan_label(p, end, &label);
    if (p == nullptr) return nullptr;
    p = skip_blanks(p, end);
    if (p == end) return nullptr;
    if (*p == '}') return p;
    if (*p != ',') return nullptr;
    ++p;
  }
}

// A sample value: what Go's strconv.ParseFloat reads in decimal (the
// Prometheus server's own rule), so also "+Inf", "-Inf", "NaN", "1e+06".
bool parse_value(const char* b, const char* e, double* out) {
  if (b < e && *b == '+') {
    ++b;  // from_chars takes no '+'; and "+-1" must stay an error
    if (b == e || *b == '-' || *b == '+') return false;
  }
  const std::from_chars_result r = std::from_chars(b, e, *out, std::chars_format::general);
  return r.ec == std::errc() && r.ptr == e;
}

}  // namespace

bool PromSample::next_label(size_t* pos, PromLabel* out) const {
  if (*pos >= labels_raw.size()) return false;
  const char* const begin = labels_raw.data();
  const char* const end = begin + labels_raw.size();
  const char* p = skip_blanks(begin + *pos, end);
  if (p == end) {
    *pos = labels_raw.size();
    return false;
  }
  p = scan_label(p, end, out);
  if (p == nullptr) {
    *pos = labels_raw.size();  // a malformed set ends the walk
    return false;
  }
  p = skip_blanks(p, end);
  if (p < end && *p == ',') ++p;
  *pos = static_cast<size_t>(p - begin);
  return true;
}

std::string_view PromSample::label(std::string_view label_name) const {
  size_t pos = 0;
  PromLabel l;
  while (next_label(&pos, &l)) {
    if (l.name == label_name) return l.value;
  }
  return {};
}

bool prom_unescape(std::string_view escaped, char* buf, size_t buf_bytes, std::string_view* out) {
  *out = {};
  if (escaped.empty() || std::memchr(escaped.data(), '\\', escaped.size()) == nullptr) {
    *out = escaped;
    return true;
  }
  size_t n = 0;
  for (size_t i = 0; i < escaped.size(); ++i) {
    char c = escaped[i];
    if (c == '\\' && i + 1 < escaped.size()) {
      const char next = escaped[i + 1];
      if (next == '\\' || next == '"') {
        c = next;
        ++i;
      } else if (next == 'n') {
        c = '\n';
        ++i;
      }
      // Any other escape is kept as written, backslash included.
    }
    if (n == buf_bytes) return false;
    buf[n++] = c;
  }
  *out = std::string_view(buf, n);
  return true;
}

bool prom_parse_value(std::string_view text, double* out) {
  return !text.empty() && parse_value(text.data(), text.data() + text.size(), out);
}

PromLine prom_line_name(std::string_view line, std::string_view* name) {
  const char* p = line.data();
  const char* const end = p + line.size();
  while (p < end && is(*p, kSpace))
    ++p;
  if (p == end || *p == '#') return PromLine::skip;
  if (!is(*p, kNameStart)) return PromLine::malformed;
  const char* const b = p++;
  // Names are long ("vllm:request_inference_time_seconds_bucket") and this is
  // the one scan every line pays: test 8 bytes per branch while they last.
  while (end - p >= 8) {
    const auto* u = reinterpret_cast<const uint8_t*>(p);
    // Two independent chains, so the eight loads overlap.
    const uint8_t lo = (kClasses[u[0]] & kClasses[u[1]]) & (kClasses[u[2]] & kClasses[u[3]]);
    const uint8_t hi = (kClasses[u[4]] & kClasses[u[5]]) & (kClasses[u[6]] & kClasses[u[7]]);
    if ((lo & hi & kNameChar) == 0) break;
    p += 8;
  }
  while (p < end && is(*p, kNameChar))
    ++p;
  *name = std::string_view(b, static_cast<size_t>(p - b));
  return PromLine::sample;
}

bool prom_line_rest(std::string_view line, std::string_view name, PromSample* out) {
  TR_DASSERT(name.data() >= line.data());
  TR_DASSERT(name.data() + name.size() <= line.data() + line.size());
  const char* p = name.data() + name.size();
  const char* end = line.data() + line.size();
  while (end > p && is(end[-1], kSpace))
    --end;
  out->name = name;
  out->labels_raw = {};
  out->timestamp_ms = 0;
  out->has_timestamp = false;

  p = skip_blanks(p, end);
  if (p < end && *p == '{') {
    const char* const labels = p + 1;
    const char* const close = scan_label_set(labels, end);
    if (close == nullptr) return false;
    out->labels_raw = std::string_view(labels, static_cast<size_t>(close - labels));
    p = skip_blanks(close + 1, end);
  } else if (p == name.data() + name.size()) {
    return false;  // the name runs into a byte that is neither blank nor '{'
  }

  const char* const value = p;
  while (p < end && !is(*p, kBlank))
    ++p;
  if (p == value || !parse_value(value, p, &out->value)) return false;

  p = skip_blanks(p, end);
  if (p == end) return true;
  const char* const ts = p;
  while (p < end && !is(*p, kBlank))
    ++p;
  const std::from_chars_result r = std::from_chars(ts, p, out->timestamp_ms);
  if (r.ec != std::errc() || r.ptr != p) return false;
  out->has_timestamp = true;
  return skip_blanks(p, end) == end;
}

PromLine parse_prom_line(std::string_view line, PromSample* out) {
  std::string_view name;
  const PromLine kind = prom_line_name(line, &name);
  if (kind != PromLine::sample) return kind;
  return prom_line_rest(line, name, out) ? PromLine::sample : PromLine::malformed;
}

}  // namespace tr::poller
