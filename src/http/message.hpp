// HTTP/1.1 message parser on llhttp, one per connection leg (client requests,
// upstream responses). It copies only the head (method, target, reason, header
// names and values) into a per-parser store that keeps its capacity between
// messages; body bytes are handed to a callback as views into the caller's buffer.
//
// feed() stops at two points so the caller can act with exact byte positions:
// right after the head (kHead) and right after the message (kDone). Bytes after
// a message (pipelined requests) are left unconsumed for the caller to feed later.
//
// Strict: an ambiguous or malformed message is rejected, never repaired, and the
// verdict does not depend on how the bytes were split across feed() calls.
// llhttp (built without LLHTTP_STRICT_MODE) enforces most of HTTP/1.1 framing;
// this class adds what it lets through (see message.cpp, "What llhttp 8.1
// accepts"): every byte outside body data is checked for NUL, bare CR, bare LF,
// obs-fold and the CRLF after each chunk's data; header names must be tokens,
// request targets visible ASCII; Content-Length, Transfer-Encoding and Host are
// validated as a whole once the head is complete; trailers are parsed and
// dropped, never carry framing, and never change what the head said. A request
// error carries the status to answer with (error_status()); a response error is
// always 502 and the upstream connection must not be reused.
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
  // kDone, call again with the remaining bytes. An error is final: after kError
  // every call returns kError again.
  Status feed(const char* p, size_t n, size_t* consumed);
  // The peer closed: completes a close-delimited response. Returns kDone if the
  // message ended cleanly, kError if it was cut short, kNeedMore if no message began.
  Status finish();

  // The next response has no body whatever its headers say (answer to HEAD;
  // 204 and 304 never have one). Such a response stops once, at kDone.
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
  // Framing as the head said it: taken when the head completes, so trailer
  // fields (which llhttp also reads into its flags) cannot change it.
  bool keep_alive() const { return keep_alive_; }
  bool chunked() const { return (head_flags_ & F_CHUNKED) != 0; }
  bool has_content_length() const { return (head_flags_ & F_CONTENT_LENGTH) != 0; }
  uint64_t content_length() const { return content_length_; }
  // Response framed by the connection closing (no length, not chunked).
  bool close_delimited() const { return close_delimited_; }
  size_t header_count() const { return headers_.size(); }
  Header header(size_t i) const;
  // First header named <name> (case-insensitive), or empty with *found=false.
  std::string_view find(std::string_view name, bool* found = nullptr) const;
  bool in_message() const { return in_message_; }
  bool head_done() const { return head_done_; }

  // Why the message was rejected, after kError. Requests: 400 malformed or
  // ambiguous; 405 CONNECT; 414 request target over request_line_bytes; 431 header
  // section over header_bytes or header_count (trailers included); 501 a
  // Transfer-Encoding that ends in chunked but applies another coding before it.
  // Responses: always 502. The reason is a short, static, human-readable phrase.
  int error_status() const { return error_status_; }
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
  static int cb_url_complete(llhttp_t* p);
  static int cb_status(llhttp_t* p, const char* at, size_t n);
  static int cb_status_complete(llhttp_t* p);
  static int cb_header_field(llhttp_t* p, const char* at, size_t n);
  static int cb_header_value(llhttp_t* p, const char* at, size_t n);
  static int cb_header_field_complete(llhttp_t* p);
  static int cb_headers_complete(llhttp_t* p);
  static int cb_body(llhttp_t* p, const char* at, size_t n);
  static int cb_message_complete(llhttp_t* p);
  static int cb_chunk_complete(llhttp_t* p);
  static int cb_chunk_header(llhttp_t* p);

  std::string_view store_view(Span s) const { return {store_.data() + s.off, s.len}; }
  bool append(Span* s, const char* at, size_t n);
  // Records the first error (a response's is always 502); returns -1 for llhttp.
  int fail(int status, const char* reason);
  // Checks the framing bytes [scan_pos_, to) of the current feed() buffer (every
  // byte that is not body data) and advances scan_pos_. False after fail().
  bool scan_to(const char* to);
  // Judges a complete head: version, method, status code, and the framing
  // headers as a whole (Content-Length, Transfer-Encoding, Host). Returns 0, or
  // the status to fail with and its *reason.
  int check_head(const char** reason) const;

  // Where the framing scanner is; see scan_to().
  enum class Prev : uint8_t { kOther, kCr, kLf, kStartLf };

  llhttp_t parser_;
  Kind kind_;
  ParseLimits limits_;
  std::string store_;  // head bytes of the current message
  std::vector<HeaderSpan> headers_;
  Span target_;
  Span reason_;
  bool field_open_ = false;     // a header name is being received
  uint32_t field_bytes_ = 0;    // bytes of that name so far (trailers too)
  bool field_space_ = false;    // that name holds SP or HTAB (rejected at its colon)
  bool bad_byte_ = false;       // target or reason holds a byte rejected at its end
  char trailer_name_[17] = {};  // first bytes of a trailer field name ("transfer-encoding")
  bool in_message_ = false;
  bool head_done_ = false;
  bool no_body_ = false;
  bool paused_at_head_ = false;
  bool paused_at_chunk_ = false;
  bool stop_at_chunks_ = false;
  bool last_chunk_ = false;
  uint64_t content_length_ = 0;
  uint16_t head_flags_ = 0;  // llhttp flags when the head completed
  bool keep_alive_ = false;
  bool close_delimited_ = false;
  uint32_t head_bytes_ = 0;
  int error_status_ = 0;
  const char* error_reason_ = "";
  int head_error_status_ = 0;  // check_head()'s verdict, reported by feed()
  const char* head_error_reason_ = "";
  // Framing scanner state; it survives across feed() calls.
  const char* scan_pos_ = nullptr;  // next unchecked byte of the current buffer
  Prev prev_ = Prev::kOther;        // class of the last framing byte checked
  uint8_t crlf_due_ = 0;            // bytes of the CRLF still owed after chunk data
  bool start_line_ = false;         // scanning the request or status line
  uint32_t start_line_bytes_ = 0;   // its bytes so far, CR and LF excluded
  uint32_t start_line_spaces_ = 0;
  BodyFn body_fn_ = nullptr;
  void* body_user_ = nullptr;
};

// ASCII case-insensitive equality (header names, tokens).
bool ieq(std::string_view a, std::string_view b);
// True if the comma-separated token list <list> contains <token> (case-insensitive).
bool token_list_has(std::string_view list, std::string_view token);

}  // namespace tr::http
