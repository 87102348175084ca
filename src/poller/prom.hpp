// Prometheus text exposition (format 0.0.4) parser: returns views into the
// caller's text and never allocates. Pure code (no I/O), tested without sockets.
//
// Tolerates what real exporters send: # HELP / # TYPE / other comments, blank
// lines, \r\n line ends, blanks around tokens, any label order, a trailing
// comma in the label set, escaped label values, +Inf/-Inf/NaN and exponent
// values, and an optional integer timestamp. A line it cannot read is skipped
// and counted; the rest of the text still parses (degrade, don't fail).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace tr::poller {

struct PromLabel {
  std::string_view name;
  std::string_view value;  // still escaped (\\, \", \n); see prom_unescape
};

struct PromSample {
  std::string_view name;        // full sample name: "vllm:x_total", "vllm:y_bucket", ...
  std::string_view labels_raw;  // text between '{' and '}', empty if none
  double value = 0;             // decimal, exponent, +Inf, -Inf or NaN
  int64_t timestamp_ms = 0;     // valid if has_timestamp
  bool has_timestamp = false;

  // Reads the label that starts at *pos in labels_raw (start with *pos = 0)
  // into *out and moves *pos past it. Returns false at the end of the set, or
  // if the text at *pos is not a label (never the case for a sample produced
  // by parse_prom_line, which validated the set).
  bool next_label(size_t* pos, PromLabel* out) const;

  // The escaped value of the label <label_name>, or an empty view if the label
  // is absent. (Prometheus treats an empty value as an absent label too.)
  std::string_view label(std::string_view label_name) const;
};

// Writes the unescaped form of <escaped> (a label value as found in the text)
// to *out. Without escapes *out is <escaped> itself and <buf> is untouched;
// otherwise the bytes go to <buf> and *out views them. Returns false, leaving
// *out empty, if the result needs more than <buf_bytes> bytes.
bool prom_unescape(std::string_view escaped, char* buf, size_t buf_bytes, std::string_view* out);

// Reads <text>, a whole sample value (or a label value such as le="0.5"), the
// way Go's strconv.ParseFloat reads decimal text (the Prometheus server's own
// rule): decimal, exponent, "+Inf", "-Inf", "Inf", "NaN". Returns false, with
// *out unspecified, if <text> is empty or anything but one such number.
bool prom_parse_value(std::string_view text, double* out);

enum class PromLine : uint8_t { sample, skip, malformed };

// First half of a line's parse: classifies <line> (no '\n'; a trailing '\r'
// is fine). Returns skip for blank and comment lines, malformed if the line
// does not start with a metric name, and sample with *name set otherwise.
PromLine prom_line_name(std::string_view line, std::string_view* name);

// Second half: parses the labels, value and timestamp that follow <name>
// (which prom_line_name found in this same <line>) into *out. Returns false if
// the rest of the line is malformed; *out is then unspecified.
bool prom_line_rest(std::string_view line, std::string_view name, PromSample* out);

// Both halves: sample (with *out filled), skip or malformed.
PromLine parse_prom_line(std::string_view line, PromSample* out);

// Calls on_sample(const PromSample&) for every sample line of <text> whose
// metric name want(std::string_view) accepts. want sees the name before the
// rest of the line is parsed, so rejected lines cost a name scan and nothing
// more (and are not checked further). Returns the number of lines skipped as
// malformed: lines without a valid name, wanted lines whose labels, value or
// timestamp do not parse, and a final sample line without its '\n' (the
// format requires one; a body cut short mid-line must not yield a cut value).
template <class Want, class F>
size_t parse_prometheus_if(std::string_view text, Want&& want, F&& on_sample) {
  size_t malformed = 0;
  PromSample sample;
  const char* p = text.data();
  const char* const end = p + text.size();
  while (p < end) {
    const void* nl = std::memchr(p, '\n', static_cast<size_t>(end - p));
    const char* line_end = nl != nullptr ? static_cast<const char*>(nl) : end;
    const std::string_view line(p, static_cast<size_t>(line_end - p));
    p = nl != nullptr ? line_end + 1 : end;
    std::string_view name;
    const PromLine kind = prom_line_name(line, &name);
    if (kind == PromLine::skip) continue;
    if (kind == PromLine::malformed || nl == nullptr) {
      ++malformed;
      continue;
    }
    if (!want(name)) continue;
    if (!prom_line_rest(line, name, &sample)) {
      ++malformed;
      continue;
    }
    on_sample(static_cast<const PromSample&>(sample));
  }
  return malformed;
}

// parse_prometheus_if wanting every sample: each line is fully checked.
template <class F>
size_t parse_prometheus(std::string_view text, F&& on_sample) {
  return parse_prometheus_if(
      text, [](std::string_view) { return true; }, on_sample);
}

}  // namespace tr::poller
