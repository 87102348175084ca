// libFuzzer target: the replica side of a connection. The input is the raw
// bytes a replica sends back (a response, or several on a reused keep-alive
// connection), parsed by tr::http::MessageParser (Kind::response) with
// stop_at_chunks(true) and the feed loop of ClientConn::upstream_data
// (src/proxy/session.cpp): kHead (then feed again even with no bytes left),
// kChunk after each complete chunk, kDone, and a HEAD answer that comes back
// as kDone without kHead. Some responses are parsed as answers to HEAD
// (expect_no_body). Bodies of text/event-stream responses go through the
// SseScanner as the proxy's do. finish() runs when the bytes end (the replica
// closed). Each head is rebuilt for the client with build_client_response.
//
// Checks, beyond the sanitizers:
//  - split independence: the trace (heads, chunk stops, bodies, SSE totals,
//    finish) is the same whatever the reads;
//  - framing: Content-Length and chunked never together; a body matches its
//    Content-Length; 204, 304 and answers to HEAD have no body whatever their
//    headers say; kChunk only for chunked bodies; finish() ends cleanly only
//    a close-delimited body; trailer fields do not change what the head said
//    about framing and keep-alive;
//  - relay: what the client gets (rebuilt head + the body bytes relayed as
//    they came, or de-chunked for an HTTP/1.0 client) parses back to the same
//    status and body and ends exactly where the replica's message ended.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "../common.hpp"
#include "http/message.hpp"
#include "http/rewrite.hpp"
#include "sse/sse.hpp"

namespace {

using tr::http::MessageParser;
using Status = MessageParser::Status;

// What the proxy's client side asked, per response (drawn from the input's hash).
struct Exchange {
  bool head_request = false;  // the client sent HEAD: expect_no_body
  bool client_http10 = false;
  bool client_keep_alive = true;
};

// One response as relayed: where its message starts and ends in the input.
struct Relay {
  size_t head_end = 0;  // input offset of the first body byte
  // The framing as the head said (the proxy decides with these at kHead).
  bool chunked = false;
  bool has_content_length = false;
  bool close_delimited = false;
  bool upstream_keep_alive = false;
  bool dechunk = false;
  bool keep_alive = true;
  std::string client_head;  // from build_client_response
  std::string body;         // de-chunked
  int status = 0;
  bool head_request = false;
  bool client_http10 = false;
};

// The client's view: the rebuilt head followed by the relayed body bytes
// parses back to the same response, ending exactly at the end (or, for a
// close-delimited one, at the close).
void check_client_view(const Relay& r, std::string_view raw_body, bool close_delimited) {
  MessageParser back(MessageParser::Kind::response, tr::http::ParseLimits{});
  back.expect_no_body(r.head_request);
  std::string got;
  back.set_body_sink(
      [](void* u, const char* p, size_t n) { static_cast<std::string*>(u)->append(p, n); }, &got);
  std::string wire = r.client_head;
  wire.append(r.dechunk ? std::string_view(r.body) : raw_body);
  size_t off = 0;
  size_t used = 0;
  Status st = back.feed(wire.data(), wire.size(), &used);
  off += used;
  if (st == Status::kHead) {
    FUZZ_CHECK(off == r.client_head.size());
    FUZZ_CHECK(back.status_code() == r.status);
    FUZZ_CHECK(back.http_minor() == (r.client_http10 ? 0 : 1));
    if (!r.keep_alive) FUZZ_CHECK(!back.keep_alive());
    st = back.feed(wire.data() + off, wire.size() - off, &used);
    off += used;
  } else {
    FUZZ_CHECK(r.head_request || r.status == 204 || r.status == 304);  // bodyless
  }
  if (st == Status::kNeedMore) {
    FUZZ_CHECK(close_delimited || r.dechunk);
    st = back.finish();
  }
  FUZZ_CHECK(st == Status::kDone);
  FUZZ_CHECK(off == wire.size());
  FUZZ_CHECK(got == r.body);
}

class Upstream {
 public:
  Upstream(const uint8_t* input, uint64_t seed)
      : input_(reinterpret_cast<const char*>(input)),
        resp_(MessageParser::Kind::response, tr::http::ParseLimits{}),
        rng_(seed) {
    resp_.set_body_sink(&Upstream::body_thunk, this);
    resp_.stop_at_chunks(true);
    next_exchange();
  }

  // ClientConn::upstream_data for the read [at, at + len) of the input.
  void on_data(size_t at, size_t len) {
    if (stopped_) return;
    const char* data = input_ + at;
    size_t off = 0;
    bool after_head = false;
    while ((off < len || after_head) && !stopped_) {
      after_head = false;
      size_t used = 0;
      Status st = resp_.feed(data + off, len - off, &used);
      FUZZ_CHECK(used <= len - off);
      off += used;
      switch (st) {
        case Status::kHead:
          on_head(at + off);
          after_head = true;
          break;
        case Status::kChunk:
          FUZZ_CHECK(resp_.chunked());
          FUZZ_CHECK(resp_.in_message());
          trace_ += "chunk " + std::to_string(body_.size()) + "\n";
          break;
        case Status::kNeedMore:
          FUZZ_CHECK(off == len);
          break;
        case Status::kDone:
          if (!in_relay_) on_head(at + off);  // HEAD answer: head and end together
          on_done(at + off, false);
          break;
        case Status::kError:
          on_error();
          return;
      }
    }
  }

  // The replica closed the connection.
  void on_close() {
    if (stopped_) {
      trace_ += "stopped\n";
      return;
    }
    bool close_delimited = in_relay_ && resp_.close_delimited();
    Status st = resp_.finish();
    if (st == Status::kDone) {
      FUZZ_CHECK(in_relay_);
      FUZZ_CHECK(close_delimited);  // only a body framed by the close ends at the close
      trace_ += "finish done\n";
      on_done(input_size_, true);
    } else if (st == Status::kNeedMore) {
      FUZZ_CHECK(!in_relay_);
      trace_ += "finish idle\n";
    } else {
      FUZZ_CHECK(st == Status::kError);
      trace_ += "finish error\n";
    }
  }

  void set_input_size(size_t n) { input_size_ = n; }
  const std::string& trace() const { return trace_; }

 private:
  static void body_thunk(void* self, const char* p, size_t n) {
    auto* u = static_cast<Upstream*>(self);
    FUZZ_CHECK(u->in_relay_);
    u->body_.append(p, n);
    if (u->is_sse_) u->sse_.feed(std::string_view(p, n));
  }

  void next_exchange() {
    ex_.head_request = (rng_.next() % 4) == 0;
    ex_.client_http10 = (rng_.next() % 4) == 0;
    ex_.client_keep_alive = rng_.bit();
    resp_.expect_no_body(ex_.head_request);
  }

  // ClientConn::on_response_head; <end> is the input offset after the head.
  void on_head(size_t end) {
    FUZZ_CHECK(resp_.head_done());
    FUZZ_CHECK(resp_.http_major() == 1);
    FUZZ_CHECK(resp_.http_minor() <= 1);
    FUZZ_CHECK(resp_.status_code() >= 200 && resp_.status_code() <= 999);
    FUZZ_CHECK(!(resp_.chunked() && resp_.has_content_length()));
    in_relay_ = true;
    body_.clear();
    std::string_view ctype = resp_.find("content-type");
    is_sse_ = ctype.size() >= 17 && tr::http::ieq(ctype.substr(0, 17), "text/event-stream");
    sse_.reset();
    relay_ = Relay{};
    relay_.head_end = end;
    relay_.status = resp_.status_code();
    relay_.chunked = resp_.chunked();
    relay_.has_content_length = resp_.has_content_length();
    relay_.close_delimited = resp_.close_delimited();
    relay_.upstream_keep_alive = resp_.keep_alive();
    relay_.head_request = ex_.head_request;
    relay_.client_http10 = ex_.client_http10;
    relay_.dechunk = ex_.client_http10 && resp_.chunked();
    relay_.keep_alive = ex_.client_keep_alive && !relay_.dechunk && !resp_.close_delimited();
    tr::http::ClientResponseParams p;
    p.request_id = "fuzz-0001";
    p.client_http10 = ex_.client_http10;
    p.keep_alive = relay_.keep_alive;
    p.dechunk = relay_.dechunk;
    tr::http::build_client_response(resp_, p, &relay_.client_head);
    trace_ += "head " + std::to_string(resp_.status_code());
    trace_ += resp_.chunked() ? " chunked" : "";
    if (resp_.has_content_length()) trace_ += " cl=" + std::to_string(resp_.content_length());
    trace_ += resp_.close_delimited() ? " eof" : "";
    trace_ += resp_.keep_alive() ? " ka\n" : " close\n";
    trace_ += relay_.client_head;
  }

  // The message ended at input offset <end>; <at_close>: ended by finish().
  void on_done(size_t end, bool at_close) {
    FUZZ_CHECK(!resp_.in_message());
    FUZZ_CHECK(end >= relay_.head_end);
    check_framing_stable();
    if (relay_.has_content_length && !relay_.chunked && !ex_.head_request && relay_.status != 204 &&
        relay_.status != 304) {
      FUZZ_CHECK(body_.size() == resp_.content_length());
    }
    // RFC 9112 6.3: a 204 or 304 response (like any answer to HEAD) ends with
    // its head, whatever Content-Length or Transfer-Encoding say.
    if (relay_.status == 204 || relay_.status == 304 || ex_.head_request) {
      FUZZ_CHECK(end == relay_.head_end);
      FUZZ_CHECK(body_.empty());
    }
    relay_.body = body_;
    std::string_view raw(input_ + relay_.head_end, end - relay_.head_end);
    check_client_view(relay_, raw, at_close);
    trace_ += "done " + std::to_string(body_.size()) + "\n";
    trace_ += body_;
    if (is_sse_) {
      trace_ += "\nsse " + std::to_string(sse_.data_events()) + " " +
                std::to_string(sse_.error_events()) + " " + std::to_string(sse_.done()) + " " +
                std::to_string(sse_.has_usage()) + " " + std::to_string(sse_.prompt_tokens()) +
                " " + std::to_string(sse_.completion_tokens()) + "\n";
    }
    in_relay_ = false;
    next_exchange();
  }

  // What the head said about framing still holds at the end of the message:
  // trailer fields (after the last chunk) must not change it. The proxy reads
  // keep_alive() at kDone to decide whether the connection goes back to the pool.
  void check_framing_stable() {
    FUZZ_CHECK(resp_.chunked() == relay_.chunked);
    FUZZ_CHECK(resp_.has_content_length() == relay_.has_content_length);
    FUZZ_CHECK(resp_.keep_alive() == relay_.upstream_keep_alive);
  }

  void on_error() {
    int s = resp_.error_status();
    // The proxy answers 502 for any of them (ClientConn::upstream_data), so
    // the status itself only has to be an error.
    FUZZ_CHECK(s >= 400 && s <= 599);
    FUZZ_CHECK(resp_.error_reason() != nullptr);
    trace_ += "error\n";
    stopped_ = true;
  }

  const char* input_;
  size_t input_size_ = 0;
  MessageParser resp_;
  trfuzz::Rng rng_;
  Exchange ex_;
  Relay relay_;
  tr::SseScanner sse_;
  std::string body_;
  std::string trace_;
  bool in_relay_ = false;
  bool is_sse_ = false;
  bool stopped_ = false;
};

std::string run(const uint8_t* data, size_t size, uint64_t seed, const trfuzz::Cuts& cuts) {
  Upstream u(data, seed);
  u.set_input_size(size);
  size_t at = 0;
  for (size_t end : cuts) {
    u.on_data(at, end - at);
    at = end;
  }
  u.on_close();
  return u.trace();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint64_t seed = trfuzz::hash_bytes(data, size);
  std::string first;
  bool have_first = false;
  for (const trfuzz::Cuts& cuts : trfuzz::split_plans(size, seed, 2048)) {
    std::string t = run(data, size, seed, cuts);
    if (have_first) {
      if (t != first) {
        std::fprintf(stderr, "trace (whole input):\n%s\n--- trace (%zu reads):\n%s\n",
                     first.c_str(), cuts.size(), t.c_str());
      }
      FUZZ_CHECK(t == first);
    } else {
      first = std::move(t);
      have_first = true;
    }
  }
  return 0;
}
