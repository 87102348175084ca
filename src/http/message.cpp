#include "http/message.hpp"

#include <cstring>

#include "core/assert.hpp"

namespace tr::http {

namespace {

MessageParser* self(llhttp_t* p) {
  return static_cast<MessageParser*>(p->data);
}

llhttp_settings_t make_settings() {
  llhttp_settings_t s;
  llhttp_settings_init(&s);
  return s;
}

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

bool is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}

// RFC 9110 5.6.2 tchar: what a header name or a transfer-coding name is made of.
bool is_tchar(unsigned char c) {
  if (is_digit(c)) return true;
  unsigned char folded = c | 0x20;
  if (folded >= 'a' && folded <= 'z') return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

std::string_view trim_ows(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t'))
    v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t'))
    v.remove_suffix(1);
  return v;
}

// 1*DIGIT that fits in 64 bits: no sign, no hex, no list, no inner space.
bool valid_content_length(std::string_view v) {
  if (v.empty()) return false;
  uint64_t x = 0;
  for (char ch : v) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (!is_digit(c)) return false;
    uint64_t d = c - '0';
    if (x > (UINT64_MAX - d) / 10) return false;
    x = x * 10 + d;
  }
  return true;
}

// Transfer-Encoding accepted only as the single coding "chunked" (any case).
// Returns 0, or the request status with *reason: 400 when the body length
// cannot be determined (chunked absent, not final, repeated, malformed list;
// RFC 9112 6.3 says 400), 501 when chunked is final but another coding is
// applied before it (RFC 9112 6.1: a coding the server does not understand).
int check_transfer_encoding(std::string_view v, const char** reason) {
  size_t codings = 0;
  size_t chunked = 0;
  bool last_chunked = false;
  size_t i = 0;
  while (i <= v.size()) {
    size_t comma = v.find(',', i);
    if (comma == std::string_view::npos) comma = v.size();
    std::string_view el = trim_ows(v.substr(i, comma - i));
    i = comma + 1;
    if (el.empty()) {
      *reason = "empty element in Transfer-Encoding";
      return 400;
    }
    size_t name_len = 0;
    while (name_len < el.size() && is_tchar(static_cast<unsigned char>(el[name_len])))
      ++name_len;
    std::string_view name = el.substr(0, name_len);
    std::string_view params = trim_ows(el.substr(name_len));
    if (name.empty() || (!params.empty() && params.front() != ';')) {
      *reason = "malformed Transfer-Encoding";
      return 400;
    }
    bool is_chunked = ieq(name, "chunked");
    if (is_chunked && !params.empty()) {
      *reason = "parameters on the chunked transfer coding";
      return 400;
    }
    ++codings;
    chunked += is_chunked ? 1 : 0;
    last_chunked = is_chunked;
  }
  if (!last_chunked) {
    *reason = "Transfer-Encoding does not end in chunked";
    return 400;
  }
  if (chunked > 1) {
    *reason = "chunked transfer coding applied more than once";
    return 400;
  }
  if (codings > 1) {
    *reason = "unsupported transfer coding (only chunked is accepted)";
    return 501;
  }
  return 0;
}

// RFC 3986 uri-host [ ":" port ] characters (reg-name, IP literal, IPv4).
bool valid_host(std::string_view v) {
  for (char ch : v) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')) continue;
    switch (c) {
      case '-':
      case '.':
      case '_':
      case '~':
      case '!':
      case '$':
      case '&':
      case '\'':
      case '(':
      case ')':
      case '*':
      case '+':
      case ',':
      case ';':
      case '=':
      case '%':
      case ':':
      case '[':
      case ']':
        continue;
      default:
        return false;
    }
  }
  return true;
}

}  // namespace

bool ieq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

bool token_list_has(std::string_view list, std::string_view token) {
  size_t i = 0;
  while (i < list.size()) {
    size_t comma = list.find(',', i);
    if (comma == std::string_view::npos) comma = list.size();
    std::string_view t = list.substr(i, comma - i);
    while (!t.empty() && (t.front() == ' ' || t.front() == '\t'))
      t.remove_prefix(1);
    while (!t.empty() && (t.back() == ' ' || t.back() == '\t'))
      t.remove_suffix(1);
    if (ieq(t, token)) return true;
    i = comma + 1;
  }
  return false;
}

MessageParser::MessageParser(Kind kind, const ParseLimits& limits) : kind_(kind), limits_(limits) {
  static const llhttp_settings_t settings = [] {
    llhttp_settings_t s = make_settings();
    s.on_message_begin = &MessageParser::cb_message_begin;
    s.on_url = &MessageParser::cb_url;
    s.on_url_complete = &MessageParser::cb_url_complete;
    s.on_status = &MessageParser::cb_status;
    s.on_status_complete = &MessageParser::cb_status_complete;
    s.on_header_field = &MessageParser::cb_header_field;
    s.on_header_value = &MessageParser::cb_header_value;
    s.on_header_field_complete = &MessageParser::cb_header_field_complete;
    s.on_headers_complete = &MessageParser::cb_headers_complete;
    s.on_body = &MessageParser::cb_body;
    s.on_message_complete = &MessageParser::cb_message_complete;
    s.on_chunk_complete = &MessageParser::cb_chunk_complete;
    s.on_chunk_header = &MessageParser::cb_chunk_header;
    return s;
  }();
  llhttp_init(&parser_, kind == Kind::request ? HTTP_REQUEST : HTTP_RESPONSE, &settings);
  parser_.data = this;
  store_.reserve(1024);
  headers_.reserve(32);
}

int MessageParser::fail(int status, const char* reason) {
  if (error_status_ == 0) {  // the first error found is the one reported
    error_status_ = kind_ == Kind::response ? 502 : status;
    error_reason_ = reason;
  }
  return -1;
}

// What llhttp 8.1 accepts (built without LLHTTP_STRICT_MODE, verified by the
// "strict" cases of tests/unit/test_http.cpp) and this scanner rejects: two
// bytes after chunk data taken as CRLF unchecked ("5\r\nhelloXX0\r\n..."); the
// byte after a CR at the end of the head or of a chunk-size line taken as LF;
// bare LF line ends; obs-fold (the continuation is handed over as more value);
// a request line with extra SP, or none before a version ("GET /\r\n" is read
// as HTTP/0.9); a status line "HTTP/1.1  200".
// It sees every byte of the current buffer outside body data, in order, once.
bool MessageParser::scan_to(const char* to) {
  for (; scan_pos_ < to; ++scan_pos_) {
    unsigned char c = static_cast<unsigned char>(*scan_pos_);
    if (crlf_due_ > 0) {  // the CRLF that must follow each chunk's data
      const unsigned char want = crlf_due_ == 2 ? '\r' : '\n';
      if (c != want) {
        fail(400, "chunk data longer than its chunk size (no CRLF after it)");
        return false;
      }
      --crlf_due_;
      prev_ = c == '\r' ? Prev::kCr : Prev::kLf;
      continue;
    }
    if (c == '\0') {
      fail(400, "NUL byte in the message head or chunk framing");
      return false;
    }
    if (prev_ == Prev::kCr && c != '\n') {
      fail(400, "bare CR (not followed by LF)");
      return false;
    }
    if (c == '\n' && prev_ != Prev::kCr) {
      fail(400, "bare LF (line not ended by CRLF)");
      return false;
    }
    if (c == ' ' || c == '\t') {
      if (prev_ == Prev::kStartLf) {
        fail(400, "whitespace before the first header line");
        return false;
      }
      if (prev_ == Prev::kLf) {
        fail(400, "obs-fold (header line starting with whitespace)");
        return false;
      }
    }
    if (start_line_ && c != '\r' && c != '\n') {
      if (c == ' ') ++start_line_spaces_;
      // "HTTP/1.1 200": one SP, then the status code.
      if (kind_ == Kind::response && start_line_bytes_ == 9 && !is_digit(c)) {
        fail(502, "malformed status line");
        return false;
      }
      ++start_line_bytes_;
    } else if (start_line_ && c == '\n' && start_line_bytes_ > 0) {
      start_line_ = false;
      if (kind_ == Kind::request && start_line_spaces_ != 2) {
        fail(400, "malformed request line (not method SP target SP version)");
        return false;
      }
      prev_ = Prev::kStartLf;
      continue;
    }
    prev_ = c == '\r' ? Prev::kCr : c == '\n' ? Prev::kLf : Prev::kOther;
  }
  return true;
}

bool MessageParser::append(Span* s, const char* at, size_t n) {
  if (s->len == 0) s->off = static_cast<uint32_t>(store_.size());
  // Pieces of one span always arrive back to back (nothing else is stored between).
  TR_DASSERT(s->off + s->len == store_.size());
  store_.append(at, n);
  s->len += static_cast<uint32_t>(n);
  return true;
}

int MessageParser::cb_message_begin(llhttp_t* p) {
  MessageParser* m = self(p);
  m->store_.clear();
  m->headers_.clear();
  m->target_ = Span{};
  m->reason_ = Span{};
  m->field_open_ = false;
  m->field_bytes_ = 0;
  m->field_space_ = false;
  m->bad_byte_ = false;
  m->start_line_ = true;
  m->start_line_bytes_ = 0;
  m->start_line_spaces_ = 0;
  m->in_message_ = true;
  m->head_done_ = false;
  m->head_bytes_ = 0;
  m->content_length_ = 0;
  m->head_flags_ = 0;
  m->keep_alive_ = false;
  m->close_delimited_ = false;
  return 0;
}

// Span callbacks (url, status, header name, header value) first check the
// framing bytes up to the end of their piece, so errors surface in byte order.
int MessageParser::cb_url(llhttp_t* p, const char* at, size_t n) {
  MessageParser* m = self(p);
  if (!m->scan_to(at + n)) return -1;
  if (m->target_.len + n > m->limits_.request_line_bytes) {
    return m->fail(414, "request line too long");
  }
  // llhttp lets HTAB, FF and bytes >= 0x80 through. Judged when the target
  // ends: if llhttp rejects a later byte, its verdict stands whatever the split.
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(at[i]);
    if (c < 0x21 || c > 0x7e) m->bad_byte_ = true;
  }
  m->append(&m->target_, at, n);
  return 0;
}

int MessageParser::cb_url_complete(llhttp_t* p) {
  MessageParser* m = self(p);
  if (m->bad_byte_) return m->fail(400, "invalid byte in the request target");
  return 0;
}

int MessageParser::cb_status(llhttp_t* p, const char* at, size_t n) {
  MessageParser* m = self(p);
  if (!m->scan_to(at + n)) return -1;
  if (m->reason_.len + n > 1024) return m->fail(502, "status line too long");
  for (size_t i = 0; i < n; ++i) {  // the reason is relayed to the client
    unsigned char c = static_cast<unsigned char>(at[i]);
    if ((c < 0x20 && c != '\t') || c == 0x7f) m->bad_byte_ = true;
  }
  m->append(&m->reason_, at, n);
  return 0;
}

int MessageParser::cb_status_complete(llhttp_t* p) {
  MessageParser* m = self(p);
  if (m->bad_byte_) return m->fail(502, "control byte in the status line");
  return 0;
}

int MessageParser::cb_header_field(llhttp_t* p, const char* at, size_t n) {
  MessageParser* m = self(p);
  if (!m->scan_to(at + n)) return -1;
  m->head_bytes_ += static_cast<uint32_t>(n);
  if (m->head_bytes_ > m->limits_.header_bytes) return m->fail(431, "header section too large");
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(at[i]);
    // llhttp lets SP through ("Host : x" arrives as "Host "). It is judged at the
    // colon: in "X-A a" llhttp rejects the 'a' first, whatever the split.
    if (c == ' ' || c == '\t') {
      m->field_space_ = true;
    } else if (!is_tchar(c)) {
      return m->fail(400, "invalid byte in a header name");
    }
  }
  if (m->head_done_) {  // trailer: parsed and dropped; its name is kept to judge it
    for (size_t i = 0; i < n && m->field_bytes_ + i < sizeof m->trailer_name_; ++i) {
      m->trailer_name_[m->field_bytes_ + i] = at[i];
    }
    m->field_bytes_ += static_cast<uint32_t>(n);
    return 0;
  }
  m->field_bytes_ += static_cast<uint32_t>(n);
  if (!m->field_open_) {
    if (m->headers_.size() >= m->limits_.header_count) return m->fail(431, "too many headers");
    m->headers_.push_back(HeaderSpan{});
    m->field_open_ = true;
    m->head_bytes_ += 4;  // ": " and CRLF
  }
  m->append(&m->headers_.back().name, at, n);
  return 0;
}

int MessageParser::cb_header_field_complete(llhttp_t* p) {
  MessageParser* m = self(p);
  // llhttp accepts ": value" (an empty name) and reports an empty field.
  if (m->field_bytes_ == 0) return m->fail(400, "header line without a name");
  if (m->field_space_) return m->fail(400, "whitespace in a header name or before its colon");
  if (m->head_done_ && m->field_bytes_ <= sizeof m->trailer_name_) {
    // llhttp re-reads framing from trailer fields (a trailing Transfer-Encoding
    // turns the ended message close-delimited); they are never legitimate there.
    std::string_view name(m->trailer_name_, m->field_bytes_);
    if (ieq(name, "content-length") || ieq(name, "transfer-encoding")) {
      return m->fail(400, "Content-Length or Transfer-Encoding in the trailer section");
    }
  }
  m->field_bytes_ = 0;
  m->field_open_ = false;
  return 0;
}

int MessageParser::cb_header_value(llhttp_t* p, const char* at, size_t n) {
  MessageParser* m = self(p);
  if (!m->scan_to(at + n)) return -1;
  m->head_bytes_ += static_cast<uint32_t>(n);
  if (m->head_bytes_ > m->limits_.header_bytes) return m->fail(431, "header section too large");
  if (m->head_done_) return 0;
  // A value always follows a complete, non-empty name (cb_header_field_complete).
  TR_ASSERT(!m->headers_.empty());
  TR_ASSERT(!m->field_open_);
  m->append(&m->headers_.back().value, at, n);
  return 0;
}

int MessageParser::check_head(const char** reason) const {
  if (parser_.http_major != 1 || parser_.http_minor > 1) {
    *reason = "unsupported HTTP version";
    return 400;
  }
  if (kind_ == Kind::request && parser_.method == HTTP_CONNECT) {
    *reason = "CONNECT is not supported";
    return 405;
  }
  if (kind_ == Kind::response && (parser_.status_code < 200 || parser_.status_code == 101)) {
    *reason = "informational or upgrade response from upstream";
    return 502;
  }
  uint32_t cl_count = 0;
  uint32_t te_count = 0;
  uint32_t host_count = 0;
  std::string_view cl;
  std::string_view te;
  std::string_view host;
  for (const HeaderSpan& h : headers_) {
    std::string_view name = store_view(h.name);
    if (ieq(name, "content-length")) {
      ++cl_count;
      cl = store_view(h.value);
    } else if (ieq(name, "transfer-encoding")) {
      ++te_count;
      te = store_view(h.value);
    } else if (ieq(name, "host")) {
      ++host_count;
      host = store_view(h.value);
    }
  }
  // llhttp rejects several of these itself; judging the whole head again here
  // keeps the verdict independent of its version and lenience flags.
  *reason = nullptr;
  if (te_count > 1) {
    *reason = "repeated Transfer-Encoding header";
  } else if (te_count == 1 && parser_.http_minor == 0) {
    *reason = "Transfer-Encoding in an HTTP/1.0 message";
  } else if (te_count == 1 && cl_count > 0) {
    *reason = "Content-Length together with Transfer-Encoding";
  } else if (cl_count > 1) {
    *reason = "repeated Content-Length header";
  } else if (cl_count == 1 && !valid_content_length(cl)) {
    *reason = "invalid Content-Length";
  }
  if (*reason != nullptr) return 400;
  if (te_count == 1) {
    int status = check_transfer_encoding(te, reason);
    if (status != 0) return status;
  }
  if (kind_ == Kind::request) {
    if (host_count > 1) {
      *reason = "more than one Host header";
    } else if (host_count == 0 && parser_.http_minor == 1) {
      *reason = "HTTP/1.1 request without Host";
    } else if (host_count == 1 && !valid_host(host)) {
      *reason = "invalid Host header";
    }
  }
  return *reason == nullptr ? 0 : 400;
}

int MessageParser::cb_headers_complete(llhttp_t* p) {
  MessageParser* m = self(p);
  m->head_done_ = true;
  m->content_length_ = p->content_length;
  for (HeaderSpan& h : m->headers_) {  // drop trailing OWS
    while (h.value.len > 0) {
      char c = m->store_[h.value.off + h.value.len - 1];
      if (c != ' ' && c != '\t') break;
      --h.value.len;
    }
  }
  p->upgrade = 0;  // no protocol switch through this proxy: Upgrade is hop-by-hop
  m->paused_at_head_ = true;
  // A rejected head is reported by feed() once the bytes that end it have been
  // scanned, so a framing error earlier in the head wins however it was split.
  const char* reason = nullptr;
  int status = m->check_head(&reason);
  if (status != 0) {
    m->head_error_status_ = status;
    m->head_error_reason_ = reason;
    return HPE_PAUSED;
  }
  // The answer to HEAD, a 204 and a 304 end with their head whatever
  // Content-Length or Transfer-Encoding say (RFC 9112 6.3); llhttp would read
  // a body for 204/304. The message completes next, without a stop at the head.
  bool no_body =
      m->kind_ == Kind::response && (m->no_body_ || p->status_code == 204 || p->status_code == 304);
  if (no_body) p->flags |= F_SKIPBODY;  // what returning 1 does, seen by the snapshot
  m->head_flags_ = p->flags;
  m->keep_alive_ = llhttp_should_keep_alive(p) != 0;
  m->close_delimited_ = llhttp_message_needs_eof(p) != 0;
  return no_body ? 1 : HPE_PAUSED;
}

int MessageParser::cb_body(llhttp_t* p, const char* at, size_t n) {
  MessageParser* m = self(p);
  // Framing before the data is checked before any of the data is handed out.
  if (!m->scan_to(at)) return -1;
  m->scan_pos_ = at + n;  // body data is opaque
  m->prev_ = Prev::kOther;
  // The data of a chunk is complete: llhttp 8.1 skips the next two bytes
  // without looking at them, so the scanner insists that they are CRLF.
  if ((p->flags & F_CHUNKED) != 0 && p->content_length == 0) m->crlf_due_ = 2;
  if (m->body_fn_) m->body_fn_(m->body_user_, at, n);
  return 0;
}

int MessageParser::cb_message_complete(llhttp_t* p) {
  MessageParser* m = self(p);
  m->in_message_ = false;
  m->no_body_ = false;
  return HPE_PAUSED;
}

int MessageParser::cb_chunk_header(llhttp_t* p) {
  self(p)->last_chunk_ = p->content_length == 0;
  return 0;
}

int MessageParser::cb_chunk_complete(llhttp_t* p) {
  MessageParser* m = self(p);
  // The last chunk is followed by the end of the message, which stops anyway.
  if (!m->stop_at_chunks_ || m->last_chunk_) return 0;
  m->paused_at_chunk_ = true;
  return HPE_PAUSED;
}

MessageParser::Status MessageParser::feed(const char* p, size_t n, size_t* consumed) {
  *consumed = 0;
  if (error_status_ != 0) return Status::kError;  // an error is final
  // n == 0 still runs the parser: after a pause at the head of a message with
  // no body, completing the message needs no further input.
  paused_at_head_ = false;
  paused_at_chunk_ = false;
  scan_pos_ = p;
  llhttp_errno_t e = llhttp_execute(&parser_, p, n);
  if (error_status_ != 0) return Status::kError;  // a callback failed
  // Framing bytes not yet checked by a callback: up to where llhttp stopped.
  // On an llhttp error, a violation the scanner finds is earlier, so it wins.
  const char* stop = e == HPE_OK ? p + n : llhttp_get_error_pos(&parser_);
  if (!scan_to(stop)) return Status::kError;
  if (head_error_status_ != 0) {  // paused at a rejected head (cb_headers_complete)
    fail(head_error_status_, head_error_reason_);
    return Status::kError;
  }
  if (e == HPE_OK) {
    *consumed = n;
    return Status::kNeedMore;
  }
  if (e == HPE_PAUSED) {
    *consumed = static_cast<size_t>(stop - p);
    llhttp_resume(&parser_);
    if (paused_at_chunk_ && in_message_) return Status::kChunk;
    // A HEAD response completes without a separate pause at its head.
    return (paused_at_head_ && in_message_) ? Status::kHead : Status::kDone;
  }
  if (error_status_ == 0) {
    error_status_ = kind_ == Kind::request ? 400 : 502;
    error_reason_ = llhttp_get_error_reason(&parser_);
    if (!error_reason_) error_reason_ = llhttp_errno_name(e);
  }
  return Status::kError;
}

MessageParser::Status MessageParser::finish() {
  if (error_status_ != 0) return Status::kError;
  bool was_in = in_message_;
  llhttp_errno_t e = llhttp_finish(&parser_);
  if (e == HPE_PAUSED) {
    llhttp_resume(&parser_);
    return Status::kDone;
  }
  if (e == HPE_OK) return was_in ? Status::kError : Status::kNeedMore;
  if (error_status_ == 0) {
    error_status_ = kind_ == Kind::request ? 400 : 502;
    error_reason_ = "connection closed in the middle of a message";
  }
  return Status::kError;
}

std::string_view MessageParser::method() const {
  return llhttp_method_name(static_cast<llhttp_method_t>(parser_.method));
}

Header MessageParser::header(size_t i) const {
  return Header{store_view(headers_[i].name), store_view(headers_[i].value)};
}

std::string_view MessageParser::find(std::string_view name, bool* found) const {
  for (const HeaderSpan& h : headers_) {
    if (ieq(store_view(h.name), name)) {
      if (found) *found = true;
      return store_view(h.value);
    }
  }
  if (found) *found = false;
  return {};
}

}  // namespace tr::http
