// Incremental Server-Sent-Events scanner for a relayed vLLM token stream, and
// the SSE error event the proxy sends when a replica fails mid-stream.
//
// The proxy forwards the response bytes unchanged; the scanner only watches
// them. It is fed the de-chunked body in pieces of any size (a piece may end
// anywhere, even inside "\r\n"), and reports each event when its terminating
// blank line arrives. Lines end with "\n", "\r\n" or "\r" (WHATWG SSE), so an
// event ends with "\n\n", "\r\n\r\n", "\r\r" or any mix.
//
// Cost per event: memchr() for the line ends, plus one 16-bytes-per-step pass
// over the first data line looking for where an "error" key or a "usage":{
// could start (vLLM's per-chunk "usage":null does not qualify). Only events
// that pass that gate get a (still linear, allocation-free) walk of their
// top-level JSON keys. Nothing is copied except the part of a line that is
// split across two pieces, and at most kSseEventInspectMax bytes of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tr {

// Longest data line the scanner inspects (for [DONE], "error" and "usage").
// A longer line is still counted as an event, but reported with
// inspected == false and no flags; this holds whether or not the line arrived
// in one piece, so results never depend on how the stream was split.
inline constexpr size_t kSseEventInspectMax = 64 * 1024;
static_assert(kSseEventInspectMax >= 4096, "a vLLM usage chunk must fit");

class SseScanner {
 public:
  // One dispatched event: the lines up to a blank line. Events made only of
  // comments (": ping") or of non-data fields (event:, id:, retry:) are
  // reported with data_lines == 0 and are not data events.
  struct Event {
    uint32_t data_lines = 0;  // "data" fields in the event
    bool done = false;        // the data is exactly "[DONE]"
    bool error = false;       // the data is a JSON object with a top-level "error" key (not null)
    bool usage = false;       // the data has a top-level "usage" object with integer
                              // prompt_tokens and completion_tokens (below)
    bool inspected = true;    // false: first data line longer than kSseEventInspectMax
    uint64_t prompt_tokens = 0;
    uint64_t completion_tokens = 0;

    bool is_data() const { return data_lines > 0; }
  };

  SseScanner() = default;

  // Scans <bytes>, the next piece of the stream, calling on_event(const Event&)
  // for every event that ends inside it. The event is only valid during the
  // call. Only data events that were inspected carry flags; [DONE], error and
  // usage are judged on the first data line of an event (vLLM sends one).
  template <class F>
  void feed(std::string_view bytes, F&& on_event) {
    lf_hint_ = nullptr;  // the hint points into the previous piece
    while (!bytes.empty()) {
      bytes.remove_prefix(scan(bytes));
      if (event_ready_) {
        event_ready_ = false;
        on_event(static_cast<const Event&>(event_));
      }
    }
  }
  // Same, when only the totals below matter.
  void feed(std::string_view bytes) {
    feed(bytes, [](const Event&) {});
  }

  // Forgets the stream, for reuse on the next response. Keeps the tail
  // buffer unless a long line grew it past its first size.
  void reset();

  // Totals since construction or reset(). Error events are data events too.
  uint64_t data_events() const { return data_events_; }  // excludes [DONE]
  uint64_t error_events() const { return error_events_; }
  uint64_t uninspected_events() const { return uninspected_events_; }
  bool done() const { return done_; }  // a [DONE] event was seen
  // The last usage reported (vLLM sends it once, in the last chunk before
  // [DONE]; with continuous_usage_stats every chunk carries running totals).
  bool has_usage() const { return has_usage_; }
  uint64_t prompt_tokens() const { return prompt_tokens_; }
  uint64_t completion_tokens() const { return completion_tokens_; }
  uint64_t bytes() const { return bytes_; }  // total bytes fed
  // True when bytes of an unfinished event are pending: a stream that ends
  // here was cut in the middle of an event.
  bool mid_event() const { return line_bytes_ != 0 || event_has_lines_; }

 private:
  // Consumes <bytes> up to and including the end of the next event (then
  // event_ready_ is set), or all of them. Returns the bytes consumed (> 0).
  size_t scan(std::string_view bytes);
  // Handles one complete line (without terminator). <line> holds its first
  // min(line_bytes, kSseEventInspectMax) bytes; line_bytes is its full length.
  void on_line(std::string_view line, size_t line_bytes);
  // First '\n' or '\r' in [p, end) of the current piece, or end.
  const char* next_eol(const char* p, const char* end);
  void inspect_data(std::string_view value);
  void dispatch();

  // The line split across pieces: its first bytes (at most
  // kSseEventInspectMax) and its full length so far.
  std::string tail_;
  size_t line_bytes_ = 0;
  const char* lf_hint_ = nullptr;  // next '\n' in the current piece, or its end
  bool skip_lf_ = false;           // the last piece ended with the "\r" of a line end
  bool stream_start_ = true;       // before the first line: a UTF-8 BOM is skipped

  Event pending_;  // the event being read
  bool event_has_lines_ = false;
  Event event_;  // the event being reported
  bool event_ready_ = false;

  uint64_t data_events_ = 0;
  uint64_t error_events_ = 0;
  uint64_t uninspected_events_ = 0;
  bool done_ = false;
  bool has_usage_ = false;
  uint64_t prompt_tokens_ = 0;
  uint64_t completion_tokens_ = 0;
  uint64_t bytes_ = 0;
};

// Appends <text> to *out as a quoted JSON string (escapes '"', '\\' and
// control characters; replaces invalid UTF-8 with U+FFFD).
void append_json_string(std::string* out, std::string_view text);

}  // namespace tr
