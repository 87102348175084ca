// libFuzzer target: the client side of a connection. The input is the raw
// bytes a client sends (one request, or several pipelined), parsed by
// tr::http::MessageParser (Kind::request) with the same feed loop as
// ClientConn::feed_request_bytes (src/proxy/session.cpp): stop after the head
// (kHead, then feed again even with no bytes left), after chunks (kChunk),
// after the message (kDone; the rest waits in a pending buffer and is fed
// later from there, as pipelined bytes are), 413 on a body over the limit.
// Every complete request is rebuilt with build_upstream_request.
//
// Checks, beyond the sanitizers:
//  - split independence: the trace (heads, bodies, rebuilt heads, stops,
//    errors) is the same whether the bytes arrive whole, split at a
//    data-derived point, in random pieces or a byte at a time;
//  - framing: a head that parsed never has both Content-Length and chunked;
//    trailer fields do not change what the head said about framing and
//    keep-alive; a body matches its Content-Length; errors carry a status
//    the proxy maps;
//  - no smuggling through the proxy: the request sent upstream (rebuilt head
//    + de-chunked body) parses back, alone, to one complete request with the
//    same method, target and body, consuming exactly its bytes.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "../common.hpp"
#include "http/message.hpp"
#include "http/rewrite.hpp"

namespace {

using tr::http::MessageParser;
using Status = MessageParser::Status;

struct Options {
  tr::http::ParseLimits limits;
  uint64_t body_bytes_max = 32ull * 1024 * 1024;  // [limits] body_bytes
  bool stop_at_chunks = false;                    // the proxy does not, but the parser must cope
  std::string_view base_path;                     // backend url path prefix
  uint64_t exchange_delay_seed = 0;
};

Options options_from(uint64_t seed) {
  trfuzz::Rng rng(seed ^ 0x5eed);
  Options o;
  if (rng.bit()) {  // tight limits, so 413/414/431 paths run on short inputs
    o.limits.request_line_bytes = 16 + static_cast<uint32_t>(rng.upto(48));
    o.limits.header_bytes = 32 + static_cast<uint32_t>(rng.upto(224));
    o.limits.header_count = 1 + static_cast<uint32_t>(rng.upto(7));
    o.body_bytes_max = rng.upto(64);
  }
  o.stop_at_chunks = rng.bit();
  o.base_path = rng.bit() ? std::string_view() : std::string_view("/base");
  o.exchange_delay_seed = rng.next();
  return o;
}

// The upstream request parses back to exactly the request we meant to send.
void check_upstream_request(const MessageParser& req, std::string_view base_path,
                            const std::string& head, const std::string& body) {
  MessageParser back(MessageParser::Kind::request,
                     tr::http::ParseLimits{1u << 20, 1u << 20, 1u << 16});
  std::string got_body;
  back.set_body_sink(
      [](void* u, const char* p, size_t n) { static_cast<std::string*>(u)->append(p, n); },
      &got_body);
  std::string wire = head + body;
  size_t off = 0;
  size_t used = 0;
  Status st = back.feed(wire.data(), wire.size(), &used);
  FUZZ_CHECK(st == Status::kHead);
  off += used;
  FUZZ_CHECK(back.method() == req.method());
  FUZZ_CHECK(back.target().size() == base_path.size() + req.target().size());
  FUZZ_CHECK(back.target().substr(0, base_path.size()) == base_path);
  FUZZ_CHECK(back.target().substr(base_path.size()) == req.target());
  FUZZ_CHECK(!back.chunked());
  bool te = false;
  back.find("transfer-encoding", &te);
  FUZZ_CHECK(!te);
  if (!body.empty()) {
    FUZZ_CHECK(back.has_content_length());
    FUZZ_CHECK(back.content_length() == body.size());
  }
  size_t hosts = 0;
  size_t lengths = 0;
  for (size_t i = 0; i < back.header_count(); ++i) {
    hosts += tr::http::ieq(back.header(i).name, "host") ? 1 : 0;
    lengths += tr::http::ieq(back.header(i).name, "content-length") ? 1 : 0;
  }
  FUZZ_CHECK(hosts >= 1);
  FUZZ_CHECK(lengths <= 1);
  st = back.feed(wire.data() + off, wire.size() - off, &used);
  off += used;
  FUZZ_CHECK(st == Status::kDone);
  FUZZ_CHECK(off == wire.size());  // nothing left over: no second request hides in it
  FUZZ_CHECK(got_body == body);
}

// One client connection, fed read by read.
class Connection {
 public:
  explicit Connection(const Options& o)
      : opt_(o), req_(MessageParser::Kind::request, o.limits), delay_rng_(o.exchange_delay_seed) {
    req_.set_body_sink(&Connection::body_thunk, this);
    req_.stop_at_chunks(o.stop_at_chunks);
  }

  // ClientConn::on_recv: parse at once when idle, else queue behind the exchange.
  void on_recv(const char* p, size_t n) {
    if (closed_) return;
    if (!busy_ && pending_.empty()) {
      feed_bytes(p, n);
    } else {
      pending_.append(p, n);
    }
    // An exchange ends after a data-derived number of further reads; the
    // pipelined bytes queued meanwhile are then parsed from pending_.
    if (busy_ && reads_until_done_-- == 0) end_exchange();
  }

  // The client stops sending: every exchange in flight finishes.
  void on_end() {
    while (busy_ && !closed_)
      end_exchange();
    trace_ += closed_ ? "closed\n" : req_.in_message() ? "cut\n" : "idle\n";
  }

  const std::string& trace() const { return trace_; }

 private:
  static void body_thunk(void* self, const char* p, size_t n) {
    static_cast<Connection*>(self)->body_.append(p, n);
  }

  void end_exchange() {
    busy_ = false;
    trace_ += "end\n";
    if (pending_.empty()) return;
    std::string bytes;
    bytes.swap(pending_);  // as ClientConn::process_pending
    feed_bytes(bytes.data(), bytes.size());
    if (busy_) reads_until_done_ = delay_rng_.upto(3);
  }

  void reply_error(int status) {
    trace_ += "error " + std::to_string(status) + "\n";
    closed_ = true;
    pending_.clear();
  }

  // ClientConn::feed_request_bytes.
  void feed_bytes(const char* data, size_t len) {
    size_t off = 0;
    bool after_head = false;
    while ((off < len || after_head) && !busy_ && !closed_) {
      after_head = false;
      size_t used = 0;
      Status st = req_.feed(data + off, len - off, &used);
      FUZZ_CHECK(used <= len - off);
      off += used;
      switch (st) {
        case Status::kNeedMore:
          FUZZ_CHECK(off == len);
          [[fallthrough]];
        case Status::kChunk:
          if (st == Status::kChunk) {
            FUZZ_CHECK(opt_.stop_at_chunks);
            FUZZ_CHECK(req_.chunked());
            trace_ += "chunk\n";
          }
          if (req_.head_done() && body_.size() > opt_.body_bytes_max) {
            // How much body has arrived when this check runs depends on the
            // reads, so the message may still fail to parse later (400) in
            // another plan: marked, and compared leniently (equivalent()).
            trace_ += "early ";
            return reply_error(413);
          }
          break;
        case Status::kHead:
          on_head();
          after_head = true;
          break;
        case Status::kDone:
          FUZZ_CHECK(!req_.in_message());
          if (body_.size() > opt_.body_bytes_max) return reply_error(413);
          on_complete();
          break;
        case Status::kError:
          on_parse_error();
          return;
      }
    }
    if (off < len && !closed_) pending_.append(data + off, len - off);
  }

  void on_head() {
    FUZZ_CHECK(req_.in_message());
    FUZZ_CHECK(req_.head_done());
    FUZZ_CHECK(req_.http_major() == 1);
    FUZZ_CHECK(req_.http_minor() <= 1);
    FUZZ_CHECK(!req_.method().empty());
    FUZZ_CHECK(req_.method() != "CONNECT");
    FUZZ_CHECK(req_.target().size() <= opt_.limits.request_line_bytes);
    FUZZ_CHECK(req_.header_count() <= opt_.limits.header_count);
    // One framing only: a request with both is how smuggling starts.
    FUZZ_CHECK(!(req_.chunked() && req_.has_content_length()));
    if (req_.http_minor() == 1) {
      bool host = false;
      req_.find("host", &host);
      FUZZ_CHECK(host);
    }
    trace_ += "head ";
    trace_ += req_.method();
    trace_ += ' ';
    trace_ += req_.target();
    trace_ += req_.http_minor() == 0 ? " 1.0" : " 1.1";
    trace_ += req_.keep_alive() ? " ka" : " close";
    trace_ += req_.chunked() ? " chunked" : "";
    if (req_.has_content_length()) trace_ += " cl=" + std::to_string(req_.content_length());
    trace_ += '\n';
    for (size_t i = 0; i < req_.header_count(); ++i) {
      tr::http::Header h = req_.header(i);
      trace_ += "  ";
      trace_ += h.name;
      trace_ += ": ";
      trace_ += h.value;
      trace_ += '\n';
    }
    head_chunked_ = req_.chunked();
    head_has_content_length_ = req_.has_content_length();
    head_keep_alive_ = req_.keep_alive();
    if (req_.has_content_length() && req_.content_length() > opt_.body_bytes_max) {
      return reply_error(413);
    }
    body_.clear();
  }

  // What the head said about framing still holds at the end of the message:
  // trailer fields must not change it (the upstream request is built from it).
  void check_framing_stable() {
    FUZZ_CHECK(req_.chunked() == head_chunked_);
    FUZZ_CHECK(req_.has_content_length() == head_has_content_length_);
    FUZZ_CHECK(req_.keep_alive() == head_keep_alive_);
  }

  void on_complete() {
    FUZZ_CHECK(req_.head_done());
    check_framing_stable();
    if (req_.has_content_length() && !req_.chunked()) {
      FUZZ_CHECK(body_.size() == req_.content_length());
    }
    if (!req_.has_content_length() && !req_.chunked()) FUZZ_CHECK(body_.empty());
    tr::http::UpstreamRequestParams p;
    p.client_ip = "192.0.2.7";
    p.request_id = "fuzz-0001";
    p.host = "10.0.0.5:8000";
    p.base_path = opt_.base_path;
    p.body_bytes = body_.size();
    p.has_body = req_.has_content_length() || req_.chunked();
    std::string head;
    tr::http::build_upstream_request(req_, p, &head);
    check_upstream_request(req_, opt_.base_path, head, body_);
    trace_ += "body " + std::to_string(body_.size()) + "\n";
    trace_ += body_;
    trace_ += "\nupstream\n";
    trace_ += head;
    busy_ = true;
    reads_until_done_ = delay_rng_.upto(3);
  }

  void on_parse_error() {
    int s = req_.error_status();
    // The statuses ClientConn maps to a reply (uri_too_long, headers_too_large,
    // method_not_allowed, malformed_request).
    FUZZ_CHECK(s == 400 || s == 405 || s == 414 || s == 431 || s == 501 || s == 505);
    FUZZ_CHECK(req_.error_reason() != nullptr);
    reply_error(s);
  }

  const Options& opt_;
  MessageParser req_;
  trfuzz::Rng delay_rng_;
  std::string pending_;
  std::string body_;
  std::string trace_;
  bool head_chunked_ = false;  // framing as the head said
  bool head_has_content_length_ = false;
  bool head_keep_alive_ = false;
  bool busy_ = false;  // an exchange is in flight: new bytes wait in pending_
  bool closed_ = false;
  size_t reads_until_done_ = 0;
};

// Removes the lines "chunk" from <t>.
std::string without_chunks(std::string_view t) {
  std::string out;
  size_t i = 0;
  while (i < t.size()) {
    size_t nl = t.find('\n', i);
    size_t end = nl == std::string_view::npos ? t.size() : nl + 1;
    if (t.substr(i, end - i) != "chunk\n") out.append(t.substr(i, end - i));
    i = end;
  }
  return out;
}

// Replaces the statuses of "error 400", "error 414" and "error 431" with 4xx.
// A message that is both malformed and over a limit fails with either,
// depending on the reads: llhttp reports a header piece (which the limits
// count) when a read ends inside it, but not when a malformed byte follows it
// in the same read.
std::string merge_limit_errors(std::string_view t) {
  std::string out;
  size_t i = 0;
  while (i < t.size()) {
    size_t nl = t.find('\n', i);
    size_t end = nl == std::string_view::npos ? t.size() : nl + 1;
    std::string_view line = t.substr(i, end - i);
    if (line == "error 400\n" || line == "error 414\n" || line == "error 431\n") {
      out += "error 4xx\n";
    } else {
      out.append(line);
    }
    i = end;
  }
  return out;
}

// If <t> ends with "[early ]error N\nclosed\n", returns the part before it.
bool strip_error_tail(std::string_view t, std::string_view* before) {
  static constexpr std::string_view kClosed = "closed\n";
  if (t.size() < kClosed.size() || t.substr(t.size() - kClosed.size()) != kClosed) return false;
  t.remove_suffix(kClosed.size());
  if (t.empty() || t.back() != '\n') return false;
  size_t prev = t.size() >= 2 ? t.rfind('\n', t.size() - 2) : std::string_view::npos;
  size_t line = prev == std::string_view::npos ? 0 : prev + 1;
  std::string_view last = t.substr(line);
  if (last.substr(0, 6) == "early ") last.remove_prefix(6);
  if (last.substr(0, 6) != "error ") return false;
  *before = t.substr(0, line);
  return true;
}

// Traces of two read plans agree: equal, up to the error status of a message
// both malformed and over a limit (merge_limit_errors), and except where one
// rejected a message the other was still reading when the input ended ("cut")
// or went on reading ("early error 413": the in-progress body check). Limits
// are checked as pieces arrive, so how far into a message a rejection comes
// depends on the reads; that a complete message is rejected does not.
bool equivalent(const std::string& a_raw, const std::string& b_raw) {
  if (a_raw == b_raw) return true;
  std::string a = without_chunks(merge_limit_errors(a_raw));
  std::string b = without_chunks(merge_limit_errors(b_raw));
  if (a == b) return true;
  for (int pass = 0; pass < 2; ++pass) {
    std::string_view x = pass == 0 ? a : b;  // stopped early
    std::string_view y = pass == 0 ? b : a;  // went further
    std::string_view before;
    if (!strip_error_tail(x, &before)) continue;
    bool early = x.find("early error 413\n", before.size()) != std::string_view::npos;
    if (y.substr(0, before.size()) != before) continue;
    std::string_view rest = y.substr(before.size());
    std::string_view ignored;
    if (early && strip_error_tail(rest, &ignored) && ignored.empty()) return true;
    if (rest == "cut\n") return true;
  }
  return false;
}

// Parses the input as read in <cuts> (the last cut is the input's size).
std::string run(const uint8_t* data, const Options& o, const trfuzz::Cuts& cuts) {
  Connection c(o);
  const char* p = reinterpret_cast<const char*>(data);
  size_t at = 0;
  for (size_t end : cuts) {
    c.on_recv(p + at, end - at);
    at = end;
  }
  c.on_end();
  return c.trace();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint64_t seed = trfuzz::hash_bytes(data, size);
  Options o = options_from(seed);
  std::string first;
  bool have_first = false;
  for (const trfuzz::Cuts& cuts : trfuzz::split_plans(size, seed, 2048)) {
    std::string t = run(data, o, cuts);
    if (have_first) {
      if (!equivalent(first, t)) {
        std::fprintf(stderr, "trace (whole input):\n%s\n--- trace (%zu reads):\n%s\n",
                     first.c_str(), cuts.size(), t.c_str());
      }
      FUZZ_CHECK(equivalent(first, t));
    } else {
      first = std::move(t);
      have_first = true;
    }
  }
  return 0;
}
