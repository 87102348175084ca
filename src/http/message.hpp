// HTTP/1.1 message parser on llhttp, one per connection leg (client requests,
// upstream responses). It copies only the head (method, target, reason, header
// names and values) into a per-parser store that keeps its capacity between
// messages; body bytes are handed to a callback as views into the caller's buffer.
//
// feed() stops at two points so the caller can act with exact byte positions:
// right after the head (kHead) and right after the message (kDone). Bytes after
// a message (pipelined requests) are left unconsumed for the caller to feed later.
#pragma once

#include <llhttp.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tr::http {

struct Header {
  std::string_view name;
  std::string_view value;
};

struct ParseLimits {
  uint32_t request_line_bytes = 8 * 1024;  // -> 414
  uint32_t header_bytes = 16 * 1024;       // -> 431 (names + values + line overhead)
  uint32_t header_count = 100;             // -> 431
};

class MessageParser {
 public:
  enum class Kind { request, response };
  enum class Status {
    kNeedMore,  // all bytes consumed; the message is not complete
    kHead,      // stopped right after the head; head accessors are valid
    kDone,      // stopped right after the end of the message
    kChunk,     // stopped right after a complete chunk (only with stop_at_chunks)
    kError,     // malformed; error_status() / error_reason() say why
  };

  MessageParser(Kind kind, const ParseLimits& limits);
  MessageParser(const MessageParser&) = delete;
  MessageParser& operator=(const MessageParser&) = delete;

  // Called with each piece of the (de-chunked) body.
  using BodyFn = void (*)(void* user, const char* p, size_t n);
  void set_body_sink(BodyFn fn, void* user) { body_fn_ = fn, body_user_ = user; }

  // Parses up to <n> bytes; *consumed says how many were used. After kHead or
  // kDone, call again with the remaining bytes.
  Status feed(const char* p, size_t n, size_t* consumed);
  // The peer closed: completes a close-delimited response. Returns kDone if the
  // message ended cleanly, kError if it was cut short, kNeedMore if no message began.
  Status finish();

  // The next response has no body whatever its headers say (answer to HEAD).
  void expect_no_body(bool v) { no_body_ = v; }
  // Also stop (kChunk) after every complete chunk of a chunked body, so a relay
  // can forward whole chunks only and end a broken stream on a chunk boundary.
  void stop_at_chunks(bool v) { stop_at_chunks_ = v; }

  // ---- head accessors: valid from kHead until the next message begins ----
  std::string_view method() const;  // request
  std::string_view target() const { return store_view(target_); }
  std::string_view reason() const { return store_view(reason_); }  // response
  int status_code() const { return parser_.status_code; }
  int http_major() const { return parser_.http_major; }
  int http_minor() const { return parser_.http_minor; }
  bool is_head_method() const { return parser_.method == HTTP_HEAD; }
  bool keep_alive() const { return llhttp_should_keep_alive(&parser_) != 0; }
  bool chunked() const { return (parser_.flags & F_CHUNKED) != 0; }
  bool has_content_length() const { return (parser_.flags & F_CONTENT_LENGTH) != 0; }
  uint64_t content_length() const { return content_length_; }
  // Response framed by the connection closing (no length, not chunked).
  bool close_delimited() const { return llhttp_message_needs_eof(&parser_) != 0; }
  size_t header_count() const { return headers_.size(); }
  Header header(size_t i) const;
  // First header named <name> (case-insensitive), or empty with *found=false.
  std::string_view find(std::string_view name, bool* found = nullptr) const;
  bool in_message() const { return in_message_; }
  bool head_done() const { return head_done_; }

  int error_status() const { return error_status_; }  // 400, 414, 431, 501, 505
  const char* error_reason() const { return error_reason_; }

 private:
  struct Span {
    uint32_t off = 0;
    uint32_t len = 0;
  };
  struct HeaderSpan {
    Span name;
    Span value;
  };

  static int cb_message_begin(llhttp_t* p);
  static int cb_url(llhttp_t* p, const char* at, size_t n);
  static int cb_status(llhttp_t* p, const char* at, size_t n);
  static int cb_header_field(llhttp_t* p, const char* at, size_t n);
  static int cb_header_value(llhttp_t* p, const char* at, size_t n);
  static int cb_headers_complete(llhttp_t* p);
  static int cb_body(llhttp_t* p, const char* at, size_t n);
  static int cb_message_complete(llhttp_t* p);
  static int cb_chunk_complete(llhttp_t* p);
  static int cb_chunk_header(llhttp_t* p);

  std::string_view store_view(Span s) const { return {store_.data() + s.off, s.len}; }
  bool append(Span* s, const char* at, size_t n);
  int fail(int status, const char* reason);

  llhttp_t parser_;
  Kind kind_;
  ParseLimits limits_;
  std::string store_;  // head bytes of the current message
  std::vector<HeaderSpan> headers_;
  Span target_;
  Span reason_;
  bool in_value_ = false;
  bool in_message_ = false;
  bool head_done_ = false;
  bool no_body_ = false;
  bool paused_at_head_ = false;
  bool paused_at_chunk_ = false;
  bool stop_at_chunks_ = false;
  bool last_chunk_ = false;
  uint64_t content_length_ = 0;
  uint32_t head_bytes_ = 0;
  int error_status_ = 0;
  const char* error_reason_ = "";
  BodyFn body_fn_ = nullptr;
  void* body_user_ = nullptr;
};

// ASCII case-insensitive equality (header names, tokens).
bool ieq(std::string_view a, std::string_view b);
// True if the comma-separated token list <list> contains <token> (case-insensitive).
bool token_list_has(std::string_view list, std::string_view token);

}  // namespace tr::http
