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
    s.on_status = &MessageParser::cb_status;
    s.on_header_field = &MessageParser::cb_header_field;
    s.on_header_value = &MessageParser::cb_header_value;
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
  error_status_ = status;
  error_reason_ = reason;
  return -1;
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
  m->in_value_ = false;
  m->in_message_ = true;
  m->head_done_ = false;
  m->head_bytes_ = 0;
  m->content_length_ = 0;
  return 0;
}

int MessageParser::cb_url(llhttp_t* p, const char* at, size_t n) {
  MessageParser* m = self(p);
  if (m->target_.len + n > m->limits_.request_line_bytes) {
    return m->fail(414, "request line too long");
  }
  m->append(&m->target_, at, n);
  return 0;
}

int MessageParser::cb_status(llhttp_t* p, const char* at, size_t n) {
  MessageParser* m = self(p);
  if (m->reason_.len + n > 1024) return m->fail(502, "status line too long");
  m->append(&m->reason_, at, n);
  return 0;
}

int MessageParser::cb_header_field(llhttp_t* p, const char* at, size_t n) {
  MessageParser* m = self(p);
  m->head_bytes_ += static_cast<uint32_t>(n);
  if (m->head_bytes_ > m->limits_.header_bytes) return m->fail(431, "header section too large");
  if (m->head_done_) return 0;  // trailer: parsed and dropped
  if (m->in_value_ || m->headers_.empty()) {
    if (m->headers_.size() >= m->limits_.header_count) return m->fail(431, "too many headers");
    m->headers_.push_back(HeaderSpan{});
    m->in_value_ = false;
    m->head_bytes_ += 4;  // ": " and CRLF
  }
  m->append(&m->headers_.back().name, at, n);
  return 0;
}

int MessageParser::cb_header_value(llhttp_t* p, const char* at, size_t n) {
  MessageParser* m = self(p);
  m->head_bytes_ += static_cast<uint32_t>(n);
  if (m->head_bytes_ > m->limits_.header_bytes) return m->fail(431, "header section too large");
  if (m->head_done_) return 0;
  m->in_value_ = true;
  m->append(&m->headers_.back().value, at, n);
  return 0;
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
  if (p->http_major != 1 || p->http_minor > 1) return m->fail(400, "unsupported HTTP version");
  if (m->kind_ == Kind::request) {
    if (p->method == HTTP_CONNECT) return m->fail(405, "CONNECT is not supported");
    p->upgrade = 0;  // no protocol switch through this proxy: Upgrade is hop-by-hop
    if (p->http_minor == 1) {
      bool found = false;
      m->find("host", &found);
      if (!found) return m->fail(400, "HTTP/1.1 request without Host");
    }
  } else {
    if (p->status_code < 200 || p->status_code == 101) {
      return m->fail(502, "informational or upgrade response from upstream");
    }
    p->upgrade = 0;
    if (m->no_body_) {
      m->paused_at_head_ = true;
      return 1;  // HEAD: no body follows, message completes next
    }
  }
  m->paused_at_head_ = true;
  return HPE_PAUSED;
}

int MessageParser::cb_body(llhttp_t* p, const char* at, size_t n) {
  MessageParser* m = self(p);
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
  // n == 0 still runs the parser: after a pause at the head of a message with
  // no body, completing the message needs no further input.
  paused_at_head_ = false;
  paused_at_chunk_ = false;
  llhttp_errno_t e = llhttp_execute(&parser_, p, n);
  if (e == HPE_OK) {
    *consumed = n;
    return Status::kNeedMore;
  }
  if (e == HPE_PAUSED) {
    *consumed = static_cast<size_t>(llhttp_get_error_pos(&parser_) - p);
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
