// libFuzzer target: tr::SseScanner (src/sse/sse.hpp) on a relayed token
// stream. The input is the de-chunked body of a text/event-stream response.
//
// Checks, beyond the sanitizers:
//  - split independence, which sse.hpp promises ("results never depend on how
//    the stream was split"): the events reported (data lines, done, error,
//    usage and its token counts, inspected) and the totals are the same when
//    the stream is fed whole, split at a data-derived point, in random pieces
//    or a byte at a time; also after reset() on a scanner that saw another
//    stream first (reuse on a keep-alive connection);
//  - totals agree with the events: data_events counts data events that are
//    not [DONE], error_events those flagged error, bytes() the bytes fed;
//  - the proxy's own error event, http::build_error_event() with the input as
//    the message, is valid UTF-8 without raw control bytes inside the JSON, and
//    the scanner reads it back as exactly one inspected error event.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "../common.hpp"
#include "http/rewrite.hpp"
#include "sse/sse.hpp"

namespace {

using tr::SseScanner;

std::string describe(const SseScanner::Event& e) {
  std::string s = "event";
  s += " lines=" + std::to_string(e.data_lines);
  if (e.done) s += " done";
  if (e.error) s += " error";
  if (e.usage) {
    s += " usage=" + std::to_string(e.prompt_tokens) + "/" + std::to_string(e.completion_tokens);
  }
  if (!e.inspected) s += " uninspected";
  s += '\n';
  return s;
}

struct Result {
  std::string events;  // describe() of each event, in order
  uint64_t data_events_counted = 0;
  uint64_t error_events_counted = 0;
  uint64_t uninspected_counted = 0;
  bool done_seen = false;
};

std::string totals(const SseScanner& s) {
  return "totals data=" + std::to_string(s.data_events()) +
         " error=" + std::to_string(s.error_events()) +
         " uninspected=" + std::to_string(s.uninspected_events()) +
         " done=" + std::to_string(s.done()) + " usage=" + std::to_string(s.has_usage()) + ":" +
         std::to_string(s.prompt_tokens()) + "/" + std::to_string(s.completion_tokens()) +
         " bytes=" + std::to_string(s.bytes()) + " mid=" + std::to_string(s.mid_event()) + "\n";
}

// Feeds <text> to <s> in the reads <cuts>; returns the events and totals.
std::string scan(SseScanner* s, std::string_view text, const trfuzz::Cuts& cuts) {
  Result r;
  size_t at = 0;
  for (size_t end : cuts) {
    s->feed(text.substr(at, end - at), [&r](const SseScanner::Event& e) {
      r.events += describe(e);
      FUZZ_CHECK(!(e.done && e.error));
      FUZZ_CHECK(!(e.done && e.usage));
      if (!e.inspected) FUZZ_CHECK(!e.done && !e.error && !e.usage);
      if (!e.is_data()) FUZZ_CHECK(!e.done && !e.error && !e.usage && e.inspected);
      if (e.is_data() && !e.done) ++r.data_events_counted;
      if (e.is_data() && e.error) ++r.error_events_counted;
      if (e.is_data() && !e.inspected) ++r.uninspected_counted;
      r.done_seen = r.done_seen || e.done;
    });
    at = end;
  }
  FUZZ_CHECK(s->data_events() == r.data_events_counted);
  FUZZ_CHECK(s->error_events() == r.error_events_counted);
  FUZZ_CHECK(s->uninspected_events() == r.uninspected_counted);
  FUZZ_CHECK(s->done() == r.done_seen);
  FUZZ_CHECK(s->bytes() == text.size());
  return r.events + totals(*s);
}

// Valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n;
  }
  return true;
}

void check_error_event(std::string_view message) {
  std::string ev;
  tr::http::build_error_event({502, message, "server_error", "upstream_reset"}, &ev);
  static constexpr std::string_view kStart = "data: {\"error\":{\"message\":\"";
  FUZZ_CHECK(ev.size() >= kStart.size() + 3);
  FUZZ_CHECK(std::string_view(ev).substr(0, kStart.size()) == kStart);
  FUZZ_CHECK(std::string_view(ev).substr(ev.size() - 3) == "}\n\n");
  std::string_view json = std::string_view(ev).substr(6, ev.size() - 8);
  for (char c : json)
    FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20);  // escaped, so one line
  FUZZ_CHECK(valid_utf8(ev));
  SseScanner s;
  int events = 0;
  s.feed(ev, [&events](const SseScanner::Event& e) {
    ++events;
    FUZZ_CHECK(e.data_lines == 1);
    FUZZ_CHECK(e.inspected);
    FUZZ_CHECK(e.error);
    FUZZ_CHECK(!e.done);
  });
  FUZZ_CHECK(events == 1);
  FUZZ_CHECK(!s.mid_event());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  uint64_t seed = trfuzz::hash_bytes(data, size);
  std::string first;
  bool have_first = false;
  for (const trfuzz::Cuts& cuts : trfuzz::split_plans(size, seed, 4096)) {
    SseScanner s;
    std::string t = scan(&s, text, cuts);
    if (have_first) {
      if (t != first) {
        std::fprintf(stderr, "whole input:\n%s--- %zu reads:\n%s", first.c_str(), cuts.size(),
                     t.c_str());
      }
      FUZZ_CHECK(t == first);
    } else {
      first = std::move(t);
      have_first = true;
    }
  }
  // Reuse: a scanner left mid-stream by another response, then reset().
  {
    SseScanner s;
    trfuzz::Rng rng(seed);
    size_t cut = rng.upto(size);
    s.feed(text.substr(cut));  // arbitrary state, maybe mid-line or mid-event
    s.reset();
    std::string t = scan(&s, text, trfuzz::cuts_random(size, &rng, 16));
    if (t != first)
      std::fprintf(stderr, "whole input:\n%s--- after reset:\n%s", first.c_str(), t.c_str());
    FUZZ_CHECK(t == first);
  }
  check_error_event(text.substr(0, 4096));
  return 0;
}
