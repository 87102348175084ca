// HTTP/1.1 framing and head rewriting (src/http): no sockets.
#include <catch.hpp>
#include <string>
#include <vector>

#include "http/message.hpp"
#include "http/rewrite.hpp"

using tr::http::MessageParser;
using Status = MessageParser::Status;

namespace {

struct Collected {
  std::string body;
};

void collect(void* user, const char* p, size_t n) {
  static_cast<Collected*>(user)->body.append(p, n);
}

// Feeds <bytes> in pieces of <piece> bytes; returns the statuses seen (kNeedMore omitted).
std::vector<Status> feed_all(MessageParser& m, const std::string& bytes, size_t piece,
                             size_t* consumed_total = nullptr) {
  std::vector<Status> seen;
  size_t off = 0;
  while (off < bytes.size()) {
    size_t n = std::min(piece, bytes.size() - off);
    size_t done = 0;
    while (done < n) {
      size_t used = 0;
      Status st = m.feed(bytes.data() + off + done, n - done, &used);
      done += used;
      if (st != Status::kNeedMore) seen.push_back(st);
      if (st == Status::kError) {
        if (consumed_total) *consumed_total = off + done;
        return seen;
      }
    }
    off += n;
  }
  if (consumed_total) *consumed_total = off;
  return seen;
}

}  // namespace

TEST_CASE("request head, content-length body, stop points", "[http]") {
  MessageParser m(MessageParser::Kind::request, {});
  Collected c;
  m.set_body_sink(collect, &c);
  std::string req =
      "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
      "X-Thing:  spaced  \r\n\r\nhello";
  for (size_t piece : {size_t{1}, size_t{3}, size_t{7}, req.size()}) {
    c.body.clear();
    auto seen = feed_all(m, req, piece);
    REQUIRE(seen == std::vector<Status>{Status::kHead, Status::kDone});
    CHECK(m.method() == "POST");
    CHECK(m.target() == "/v1/chat/completions?x=1");
    CHECK(m.find("x-thing") == "spaced");
    CHECK(m.find("HOST") == "a");
    CHECK(m.content_length() == 5);
    CHECK(c.body == "hello");
    CHECK(m.keep_alive());
  }
}

TEST_CASE("pipelined requests stop after each message", "[http]") {
  MessageParser m(MessageParser::Kind::request, {});
  std::string two = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
  size_t used = 0;
  REQUIRE(m.feed(two.data(), two.size(), &used) == Status::kHead);
  size_t off = used;
  REQUIRE(m.feed(two.data() + off, two.size() - off, &used) == Status::kDone);
  off += used;
  CHECK(off == two.size() / 2);
  REQUIRE(m.feed(two.data() + off, two.size() - off, &used) == Status::kHead);
  CHECK(m.target() == "/b");
}

TEST_CASE("chunked request body is de-chunked; trailers dropped", "[http]") {
  MessageParser m(MessageParser::Kind::request, {});
  Collected c;
  m.set_body_sink(collect, &c);
  std::string req =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n";
  auto seen = feed_all(m, req, 2);
  REQUIRE(seen.back() == Status::kDone);
  CHECK(c.body == "abcde");
  CHECK(m.chunked());
  bool found = true;
  m.find("x-trailer", &found);
  CHECK_FALSE(found);
}

TEST_CASE("malformed and over-limit requests are errors with the right status", "[http]") {
  tr::http::ParseLimits lim;
  lim.request_line_bytes = 64;
  lim.header_bytes = 256;
  lim.header_count = 4;
  struct Case {
    std::string bytes;
    int status;
  };
  std::vector<Case> cases = {
      {"GET /" + std::string(100, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n", 414},
      {"GET / HTTP/1.1\r\nHost: x\r\nA: " + std::string(300, 'v') + "\r\n\r\n", 431},
      {"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n", 431},
      {"GET / HTTP/1.1\r\n\r\n", 400},  // no Host
      {"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400},
      {"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405},
      {"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
  };
  for (const Case& k : cases) {
    MessageParser m(MessageParser::Kind::request, lim);
    auto seen = feed_all(m, k.bytes, 5);
    INFO(k.bytes);
    REQUIRE(!seen.empty());
    CHECK(seen.back() == Status::kError);
    CHECK(m.error_status() == k.status);
  }
}

TEST_CASE("chunked response stops after each chunk; close-delimited needs finish", "[http]") {
  MessageParser m(MessageParser::Kind::response, {});
  m.stop_at_chunks(true);
  Collected c;
  m.set_body_sink(collect, &c);
  std::string resp =
      "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
      "6\r\ndata: \r\n3\r\n1\n\n\r\n0\r\n\r\n";
  auto seen = feed_all(m, resp, resp.size());
  REQUIRE(seen ==
          std::vector<Status>{Status::kHead, Status::kChunk, Status::kChunk, Status::kDone});
  CHECK(c.body == "data: 1\n\n");

  MessageParser e(MessageParser::Kind::response, {});
  std::string eof_resp = "HTTP/1.0 200 OK\r\n\r\nsome bytes";
  seen = feed_all(e, eof_resp, 4);
  CHECK(seen == std::vector<Status>{Status::kHead});
  CHECK(e.close_delimited());
  CHECK(e.finish() == Status::kDone);

  MessageParser cut(MessageParser::Kind::response, {});
  std::string short_resp = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
  feed_all(cut, short_resp, 100);
  CHECK(cut.finish() == Status::kError);
}

TEST_CASE("response to HEAD has no body", "[http]") {
  MessageParser m(MessageParser::Kind::response, {});
  m.expect_no_body(true);
  std::string resp = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
  auto seen = feed_all(m, resp, resp.size());
  CHECK(seen == std::vector<Status>{Status::kDone});
  CHECK(m.status_code() == 200);
}

TEST_CASE("upstream request head: hop-by-hop removed, XFF appended, id set", "[http]") {
  MessageParser m(MessageParser::Kind::request, {});
  std::string req =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nConnection: keep-alive, X-Hop\r\n"
      "X-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\n"
      "Transfer-Encoding: chunked\r\nX-Forwarded-For: 1.2.3.4\r\nExpect: 100-continue\r\n"
      "Authorization: Bearer k\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
  auto seen = feed_all(m, req, req.size());
  REQUIRE(seen.back() == Status::kDone);
  std::string out;
  tr::http::UpstreamRequestParams p;
  p.client_ip = "10.0.0.9";
  p.request_id = "abc";
  p.host = "replica";
  p.body_bytes = 5;
  p.has_body = true;
  tr::http::build_upstream_request(m, p, &out);
  CHECK(out.rfind("POST /v1/chat/completions HTTP/1.1\r\n", 0) == 0);
  CHECK(out.find("Host: proxy\r\n") != std::string::npos);
  CHECK(out.find("X-Forwarded-For: 1.2.3.4, 10.0.0.9\r\n") != std::string::npos);
  CHECK(out.find("X-Request-Id: abc\r\n") != std::string::npos);
  CHECK(out.find("Content-Length: 5\r\n") != std::string::npos);
  CHECK(out.find("Authorization: Bearer k\r\n") != std::string::npos);
  for (const char* gone :
       {"Connection", "X-Hop", "Keep-Alive", "TE:", "Upgrade", "Transfer-Encoding", "Expect"}) {
    INFO(gone);
    CHECK(out.find(gone) == std::string::npos);
  }
  CHECK(out.size() >= 4);
  CHECK(out.substr(out.size() - 4) == "\r\n\r\n");
}

TEST_CASE("client response head keeps chunked framing, adds request id and close", "[http]") {
  MessageParser m(MessageParser::Kind::response, {});
  std::string resp =
      "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
      "transfer-encoding: chunked\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\r\n";
  size_t used = 0;
  REQUIRE(m.feed(resp.data(), resp.size(), &used) == Status::kHead);
  std::string out;
  tr::http::ClientResponseParams p;
  p.request_id = "rid";
  p.keep_alive = false;
  tr::http::build_client_response(m, p, &out);
  CHECK(out.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(out.find("transfer-encoding: chunked\r\n") != std::string::npos);
  CHECK(out.find("x-request-id: rid\r\n") != std::string::npos);
  CHECK(out.find("Connection: close\r\n") != std::string::npos);
  CHECK(out.find("keep-alive: timeout") == std::string::npos);
}

TEST_CASE("error response has the OpenAI shape and escapes", "[http]") {
  std::string out;
  tr::http::build_error_response({502, "bad \"x\"\n", "server_error", "upstream_reset"}, "id1",
                                 true, &out);
  CHECK(out.rfind("HTTP/1.1 502 Bad Gateway\r\n", 0) == 0);
  CHECK(out.find("{\"error\":{\"message\":\"bad \\\"x\\\"\\n\",\"type\":\"server_error\","
                 "\"param\":null,\"code\":\"upstream_reset\"}}") != std::string::npos);
  std::string ev;
  tr::http::build_error_event({502, "m", "server_error", "c"}, &ev);
  CHECK(ev.rfind("data: {\"error\":", 0) == 0);
  CHECK(ev.substr(ev.size() - 2) == "\n\n");
  CHECK(tr::http::token_list_has("keep-alive, Upgrade", "upgrade"));
  CHECK_FALSE(tr::http::token_list_has("keep-alive", "alive"));
}
