// HTTP/1.1 framing and head rewriting (src/http): no sockets.
#include <catch.hpp>
#include <cstdio>
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

void collect_into(void* user, const char* p, size_t n) {
  static_cast<std::string*>(user)->append(p, n);
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

// ---- strict parsing: reject, never repair ----------------------------------
//
// Every case is fed whole, byte by byte, and cut in two at every position; the
// verdict (the stops seen, the error status and reason, the body handed out)
// must be the same for all of them, because a client or replica chooses how its bytes are
// split into reads.

namespace {

using Kind = MessageParser::Kind;

struct Outcome {
  std::vector<Status> seen;  // stops, kNeedMore omitted; ends at the first kError
  int error_status = 0;
  std::string reason;
  std::string body;
  bool keep_alive = false;  // at the last kHead
  std::string target;       // at the last kHead
  size_t consumed = 0;      // bytes used before the end or the error
};

// Feeds <bytes> in pieces ending at <cuts> (increasing, inside the message) the
// way the proxy does: after a stop the rest of the piece is fed again, and after
// kHead once more even when nothing is left, so a bodyless message completes.
Outcome feed_cut(Kind kind, const tr::http::ParseLimits& lim, const std::string& bytes,
                 const std::vector<size_t>& cuts) {
  MessageParser m(kind, lim);
  Outcome out;
  m.set_body_sink(collect_into, &out.body);
  size_t start = 0;
  for (size_t i = 0; i <= cuts.size(); ++i) {
    size_t end = i < cuts.size() ? cuts[i] : bytes.size();
    size_t off = start;
    bool after_head = false;
    while (off < end || after_head) {
      after_head = false;
      size_t used = 0;
      Status st = m.feed(bytes.data() + off, end - off, &used);
      off += used;
      if (st == Status::kNeedMore) continue;
      out.seen.push_back(st);
      if (st == Status::kHead) {
        after_head = true;
        out.keep_alive = m.keep_alive();
        out.target = std::string(m.target());
      }
      if (st == Status::kError) {
        out.error_status = m.error_status();
        out.reason = m.error_reason();
        out.consumed = off;
        return out;
      }
    }
    start = end;
  }
  out.consumed = bytes.size();
  return out;
}

// Runs <check> on the outcome of every way of splitting <bytes> and requires all
// of them to agree with feeding it whole.
template <typename Check>
void for_every_split(Kind kind, const tr::http::ParseLimits& lim, const std::string& bytes,
                     Check check) {
  Outcome whole = feed_cut(kind, lim, bytes, {});
  check(whole);
  std::vector<std::vector<size_t>> splits;
  std::vector<size_t> bytewise;
  for (size_t k = 1; k < bytes.size(); ++k) {
    bytewise.push_back(k);
    splits.push_back({k});
  }
  splits.push_back(bytewise);
  for (const std::vector<size_t>& cuts : splits) {
    Outcome o = feed_cut(kind, lim, bytes, cuts);
    INFO("cuts: " << cuts.size() << (cuts.size() == 1 ? " at " : " (byte by byte) ")
                  << (cuts.empty() ? 0 : cuts[0]));
    REQUIRE(o.seen == whole.seen);
    REQUIRE(o.error_status == whole.error_status);
    REQUIRE(o.reason == whole.reason);
    REQUIRE(o.body == whole.body);
    check(o);
  }
}

struct Bad {
  const char* what;
  std::string bytes;
  int status;
};

std::string printable(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    if (c == '\r') {
      o += "\\r";
    } else if (c == '\n') {
      o += "\\n";
    } else if (c < 0x20 || c >= 0x7f) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      o += b;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o;
}

void expect_rejected(Kind kind, const tr::http::ParseLimits& lim, const std::vector<Bad>& cases) {
  for (const Bad& k : cases) {
    INFO(k.what << ": " << printable(k.bytes));
    for_every_split(kind, lim, k.bytes, [&](const Outcome& o) {
      REQUIRE(!o.seen.empty());
      REQUIRE(o.seen.back() == Status::kError);
      REQUIRE(o.error_status == k.status);
      REQUIRE(o.reason[0] != '\0');
      // Nothing after a malformed head reaches the body sink: an error in the
      // head comes before kHead.
      if (o.seen.size() == 1) REQUIRE(o.body.empty());
    });
  }
}

const std::string kHost = "Host: x\r\n";
const std::string kPost = "POST /v1/completions HTTP/1.1\r\nHost: x\r\n";
const std::string kChunkedPost = kPost + "Transfer-Encoding: chunked\r\n\r\n";

std::string nul(const std::string& before, const std::string& after) {
  return before + std::string(1, '\0') + after;
}

}  // namespace

TEST_CASE("strict: ambiguous Content-Length / Transfer-Encoding framing is rejected", "[http]") {
  expect_rejected(
      Kind::request, {},
      {
          {"CL then TE", kPost + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
           400},
          {"TE then CL", kPost + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
           400},
          {"CL twice, same value", kPost + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
           400},
          {"CL twice, different", kPost + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
           400},
          {"CL list", kPost + "Content-Length: 5, 5\r\n\r\nhello", 400},
          {"CL list no space", kPost + "Content-Length: 5,5\r\n\r\nhello", 400},
          {"CL signed +", kPost + "Content-Length: +5\r\n\r\nhello", 400},
          {"CL signed -", kPost + "Content-Length: -5\r\n\r\nhello", 400},
          {"CL hex", kPost + "Content-Length: 0x5\r\n\r\nhello", 400},
          {"CL spaced", kPost + "Content-Length: 1 2\r\n\r\nhello", 400},
          {"CL empty", kPost + "Content-Length: \r\n\r\n", 400},
          {"CL overflow 2^64", kPost + "Content-Length: 18446744073709551616\r\n\r\n", 400},
          {"CL overflow long", kPost + "Content-Length: 99999999999999999999999\r\n\r\n", 400},
          {"TE gzip", kPost + "Transfer-Encoding: gzip\r\n\r\nabc", 400},
          {"TE identity", kPost + "Transfer-Encoding: identity\r\n\r\nabc", 400},
          {"TE chunked, chunked", kPost + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
           400},
          {"TE chunked, gzip", kPost + "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400},
          {"TE xchunked", kPost + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400},
          {"TE chunkedx", kPost + "Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n", 400},
          {"TE trailing VT", kPost + "Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n", 400},
          {"TE trailing SOH", kPost + "Transfer-Encoding: chunked\x01\r\n\r\n0\r\n\r\n", 400},
          {"TE trailing DEL", kPost + "Transfer-Encoding: chunked\x7f\r\n\r\n0\r\n\r\n", 400},
          {"TE trailing FF", kPost + "Transfer-Encoding: chunked\x0c\r\n\r\n0\r\n\r\n", 400},
          {"TE repeated header",
           kPost + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
           400},
          {"TE empty list element", kPost + "Transfer-Encoding: , chunked\r\n\r\n0\r\n\r\n", 400},
          {"TE empty", kPost + "Transfer-Encoding: \r\n\r\n0\r\n\r\n", 400},
          {"TE chunked with parameter", kPost + "Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n",
           400},
          {"TE two words", kPost + "Transfer-Encoding: gzip chunked\r\n\r\n0\r\n\r\n", 400},
          {"TE in HTTP/1.0",
           "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400},
          {"TE in HTTP/1.0 with CL",
           "POST / HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello", 400},
          // Well-formed, but a coding this proxy does not implement: 501 (RFC 9112 6.1).
          {"TE gzip, chunked", kPost + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
          {"TE deflate;x=1, chunked",
           kPost + "Transfer-Encoding: deflate;x=1, chunked\r\n\r\n0\r\n\r\n", 501},
      });
}

TEST_CASE("strict: malformed header lines are rejected", "[http]") {
  expect_rejected(
      Kind::request, {},
      {
          {"SP before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},
          {"SP before colon, CL", kPost + "Content-Length : 5\r\n\r\nhello", 400},
          {"SP before colon, TE", kPost + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400},
          {"HTAB before colon", "GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", 400},
          {"SP inside name", "GET / HTTP/1.1\r\nHo st: x\r\n\r\n", 400},
          {"obs-fold SP", "GET / HTTP/1.1\r\n" + kHost + "X-A: a\r\n b\r\n\r\n", 400},
          {"obs-fold HTAB", "GET / HTTP/1.1\r\n" + kHost + "X-A: a\r\n\tb\r\n\r\n", 400},
          {"obs-fold of TE", kPost + "Transfer-Encoding: gzip,\r\n chunked\r\n\r\n0\r\n\r\n", 400},
          {"bare CR in value", "GET / HTTP/1.1\r\n" + kHost + "X-A: a\rb\r\n\r\n", 400},
          {"bare CR ends a header", "GET / HTTP/1.1\r\n" + kHost + "X-A: a\r\r\n\r\n", 400},
          {"bare CR ends the head", "GET / HTTP/1.1\r\n" + kHost + "\rX", 400},
          {"bare CR ends the head, then a request",
           "GET / HTTP/1.1\r\n" + kHost + "\rXGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400},
          {"bare CR in request line", "GET / HTTP/1.1\r" + kHost + "\r\n", 400},
          {"bare CR in target", "GET /a\rb HTTP/1.1\r\n" + kHost + "\r\n", 400},
          {"bare CR in name", "GET / HTTP/1.1\r\n" + kHost + "X\rA: a\r\n\r\n", 400},
          {"bare LF ends request line", "GET / HTTP/1.1\n" + kHost + "\r\n", 400},
          {"bare LF ends a header", "GET / HTTP/1.1\r\n" + kHost + "X-A: a\n\r\n", 400},
          {"bare LF ends the head", "GET / HTTP/1.1\r\n" + kHost + "\n", 400},
          {"NUL in method", nul("G", "ET / HTTP/1.1\r\n" + kHost + "\r\n"), 400},
          {"NUL before method", nul("", "GET / HTTP/1.1\r\n" + kHost + "\r\n"), 400},
          {"NUL in target", nul("GET /a", "b HTTP/1.1\r\n" + kHost + "\r\n"), 400},
          {"NUL in version", nul("GET / HTTP/1.1", "\r\n" + kHost + "\r\n"), 400},
          {"NUL in name", nul("GET / HTTP/1.1\r\n" + kHost + "X", "A: b\r\n\r\n"), 400},
          {"NUL in value", nul("GET / HTTP/1.1\r\n" + kHost + "X-A: a", "b\r\n\r\n"), 400},
          {"NUL after the head", nul("GET / HTTP/1.1\r\n" + kHost + "\r", "\n"), 400},
          {"NUL in chunk size", nul(kChunkedPost + "5", "\r\nhello\r\n0\r\n\r\n"), 400},
          {"NUL in chunk extension", nul(kChunkedPost + "5;a", "=b\r\nhello\r\n0\r\n\r\n"), 400},
          {"NUL in trailer", nul(kChunkedPost + "0\r\nT: a", "\r\n\r\n"), 400},
          {"name with quote", "GET / HTTP/1.1\r\n" + kHost + "X\"A: a\r\n\r\n", 400},
          {"name with paren", "GET / HTTP/1.1\r\n" + kHost + "X(A: a\r\n\r\n", 400},
          {"name with slash", "GET / HTTP/1.1\r\n" + kHost + "X/A: a\r\n\r\n", 400},
          {"name with @", "GET / HTTP/1.1\r\n" + kHost + "X@A: a\r\n\r\n", 400},
          {"name with 0x80",
           "GET / HTTP/1.1\r\n" + kHost +
               "X\x80"
               "A: a\r\n\r\n",
           400},
          {"name with 0x01",
           "GET / HTTP/1.1\r\n" + kHost +
               "X\x01"
               "A: a\r\n\r\n",
           400},
          {"name with DEL",
           "GET / HTTP/1.1\r\n" + kHost +
               "X\x7f"
               "A: a\r\n\r\n",
           400},
          {"empty name", "GET / HTTP/1.1\r\n" + kHost + ": a\r\n\r\n", 400},
          {"empty name first", "GET / HTTP/1.1\r\n: a\r\n" + kHost + "\r\n", 400},
          {"value with 0x01", "GET / HTTP/1.1\r\n" + kHost + "X-A: a\x01\r\n\r\n", 400},
          {"value with DEL", "GET / HTTP/1.1\r\n" + kHost + "X-A: a\x7f\r\n\r\n", 400},
          {"line without colon", "GET / HTTP/1.1\r\n" + kHost + "X-A a\r\n\r\n", 400},
          {"line without colon or space", "GET / HTTP/1.1\r\n" + kHost + "X-A\r\n\r\n", 400},
          {"SP before first header", "GET / HTTP/1.1\r\n " + kHost + "\r\n", 400},
          {"HTAB before first header", "GET / HTTP/1.1\r\n\t" + kHost + "\r\n", 400},
          {"SP before first header, CL",
           "POST / HTTP/1.1\r\n Content-Length: 5\r\n" + kHost + "\r\nhello", 400},
      });
}

TEST_CASE("strict: malformed chunked bodies are rejected", "[http]") {
  expect_rejected(
      Kind::request, {},
      {
          {"chunk size 0x5", kChunkedPost + "0x5\r\nhello\r\n0\r\n\r\n", 400},
          {"chunk size +5", kChunkedPost + "+5\r\nhello\r\n0\r\n\r\n", 400},
          {"chunk size -0", kChunkedPost + "-0\r\n\r\n", 400},
          {"chunk size leading SP", kChunkedPost + " 5\r\nhello\r\n0\r\n\r\n", 400},
          {"chunk size leading HTAB", kChunkedPost + "\t5\r\nhello\r\n0\r\n\r\n", 400},
          {"chunk size trailing SP", kChunkedPost + "5 \r\nhello\r\n0\r\n\r\n", 400},
          {"chunk size overflow", kChunkedPost + "10000000000000000\r\nhello\r\n0\r\n\r\n", 400},
          {"chunk size empty", kChunkedPost + "\r\nhello\r\n0\r\n\r\n", 400},
          {"chunk size g", kChunkedPost + "g\r\n", 400},
          {"chunk size bare LF", kChunkedPost + "5\nhello\r\n0\r\n\r\n", 400},
          {"chunk size bare CR", kChunkedPost + "5\rXhello\r\n0\r\n\r\n", 400},
          {"chunk data too long", kChunkedPost + "3\r\nhello\r\n0\r\n\r\n", 400},
          // llhttp 8.1 skips the two bytes after chunk data unchecked: "XX" would be
          // taken as CRLF and the hidden last chunk would end the body early.
          {"chunk data too long by 2", kChunkedPost + "3\r\nhelXX0\r\n\r\n", 400},
          {"chunk data then LF only", kChunkedPost + "3\r\nhel\n0\r\n\r\n", 400},
          {"chunk data then CR only", kChunkedPost + "3\r\nhel\rX0\r\n\r\n", 400},
          {"last chunk then bare CR", kChunkedPost + "0\r\n\rX", 400},
          {"last chunk then bare LF", kChunkedPost + "0\r\n\n", 400},
          // A request hidden in the trailer section is a malformed trailer line.
          {"request in trailers", kChunkedPost + "0\r\nGET /x HTTP/1.1\r\nHost: y\r\n\r\n", 400},
          {"obs-fold in trailers", kChunkedPost + "0\r\nT: a\r\n b\r\n\r\n", 400},
          {"TE in trailers", kChunkedPost + "0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
          {"TE gzip in trailers", kChunkedPost + "0\r\ntransfer-encoding: gzip\r\n\r\n", 400},
          {"CL in trailers", kChunkedPost + "0\r\nContent-Length: 5\r\n\r\n", 400},
          {"CL+TE smuggling",
           kPost + "Content-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                   "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
           400},
      });
}

TEST_CASE("strict: request line, version, Host and method", "[http]") {
  expect_rejected(
      Kind::request, {},
      {
          {"HTTP/1.32", "GET / HTTP/1.32\r\n" + kHost + "\r\n", 400},
          {"HTTP/1.2", "GET / HTTP/1.2\r\n" + kHost + "\r\n", 400},
          {"HTTP/2.0", "GET / HTTP/2.0\r\n" + kHost + "\r\n", 400},
          {"HTTP/0.9", "GET / HTTP/0.9\r\n" + kHost + "\r\n", 400},
          {"HTTP/11.1", "GET / HTTP/11.1\r\n" + kHost + "\r\n", 400},
          {"lowercase http", "GET / http/1.1\r\n" + kHost + "\r\n", 400},
          {"HTTP/1.1 then SP", "GET / HTTP/1.1 \r\n" + kHost + "\r\n", 400},
          {"no version", "GET /\r\n" + kHost + "\r\n", 400},
          {"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400},
          {"two SP after method", "GET  / HTTP/1.1\r\n" + kHost + "\r\n", 400},
          {"two SP after target", "GET /  HTTP/1.1\r\n" + kHost + "\r\n", 400},
          {"HTAB after method", "GET\t/ HTTP/1.1\r\n" + kHost + "\r\n", 400},
          {"HTAB in target", "GET /a\tb HTTP/1.1\r\n" + kHost + "\r\n", 400},
          {"FF in target", "GET /a\x0c HTTP/1.1\r\n" + kHost + "\r\n", 400},
          {"0x80 in target", "GET /a\x80 HTTP/1.1\r\n" + kHost + "\r\n", 400},
          {"lowercase method", "get / HTTP/1.1\r\n" + kHost + "\r\n", 400},
          {"HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n", 400},
          {"two Host headers", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
          {"two equal Host headers", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400},
          {"two Host headers in HTTP/1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400},
          {"Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
          {"Host with a slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400},
          {"CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405},
      });
}

TEST_CASE("strict: limits hold however the head is split", "[http]") {
  tr::http::ParseLimits lim;
  lim.request_line_bytes = 64;
  lim.header_bytes = 256;
  lim.header_count = 4;
  expect_rejected(
      Kind::request, lim,
      {
          {"long target", "GET /" + std::string(100, 'a') + " HTTP/1.1\r\n" + kHost + "\r\n", 414},
          {"long value", "GET / HTTP/1.1\r\n" + kHost + "A: " + std::string(300, 'v') + "\r\n\r\n",
           431},
          {"many small headers",
           "GET / HTTP/1.1\r\n" + kHost + "A: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n", 431},
          {"header bytes from many lines",
           "GET / HTTP/1.1\r\n" + kHost + "A: " + std::string(100, 'v') +
               "\r\nB: " + std::string(100, 'v') + "\r\nC: " + std::string(100, 'v') + "\r\n\r\n",
           431},
          {"long name", "GET / HTTP/1.1\r\n" + kHost + std::string(300, 'n') + ": 1\r\n\r\n", 431},
          {"long trailer", kChunkedPost + "0\r\nT: " + std::string(300, 'v') + "\r\n\r\n", 431},
      });
}

TEST_CASE("strict: replica responses are held to the same framing rules", "[http]") {
  const std::string ok = "HTTP/1.1 200 OK\r\n";
  const std::string te = ok + "Transfer-Encoding: chunked\r\n\r\n";
  expect_rejected(
      Kind::response, {},
      {
          {"CL then TE", ok + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
           502},
          {"TE then CL", ok + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
           502},
          {"CL twice, same value", ok + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 502},
          {"CL twice, different", ok + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 502},
          {"CL list", ok + "Content-Length: 5, 5\r\n\r\nhello", 502},
          {"CL signed", ok + "Content-Length: +5\r\n\r\nhello", 502},
          {"CL hex", ok + "Content-Length: 0x5\r\n\r\nhello", 502},
          {"CL overflow", ok + "Content-Length: 18446744073709551616\r\n\r\n", 502},
          {"TE gzip (would be read to close)", ok + "Transfer-Encoding: gzip\r\n\r\nabc", 502},
          {"TE identity", ok + "Transfer-Encoding: identity\r\n\r\nabc", 502},
          {"TE chunked, chunked", ok + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 502},
          {"TE gzip, chunked", ok + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 502},
          {"TE xchunked", ok + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 502},
          {"TE repeated",
           ok + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 502},
          {"TE in HTTP/1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 502},
          {"chunk size 0x5", te + "0x5\r\nhello\r\n0\r\n\r\n", 502},
          {"chunk size -0", te + "-0\r\n\r\n", 502},
          {"chunk size leading SP", te + " 5\r\nhello\r\n0\r\n\r\n", 502},
          {"chunk size overflow", te + "10000000000000000\r\nhello\r\n0\r\n\r\n", 502},
          {"chunk data too long", te + "3\r\nhello\r\n0\r\n\r\n", 502},
          {"chunk data too long by 2", te + "3\r\nhelXX0\r\n\r\n", 502},
          // llhttp would turn the ended message close-delimited.
          {"TE in trailers", te + "1\r\na\r\n0\r\nTransfer-Encoding: H\r\n\r\n", 502},
          {"CL in trailers", te + "1\r\na\r\n0\r\nContent-Length: 0\r\n\r\n", 502},
          {"SP before colon", ok + "Content-Length : 0\r\n\r\n", 502},
          {"obs-fold", ok + "X: a\r\n b\r\nContent-Length: 0\r\n\r\n", 502},
          {"bare CR", ok + "X: a\rb\r\nContent-Length: 0\r\n\r\n", 502},
          {"bare CR ends the head", ok + "Content-Length: 0\r\n\rX", 502},
          {"bare LF", ok + "X: a\nContent-Length: 0\r\n\r\n", 502},
          {"NUL in a value", nul(ok + "X: a", "b\r\nContent-Length: 0\r\n\r\n"), 502},
          {"HTTP/1.32", "HTTP/1.32 200 OK\r\nContent-Length: 0\r\n\r\n", 502},
          {"two SP in status line", "HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", 502},
          {"control byte in reason", "HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n", 502},
          {"upgrade", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", 502},
      });
}

TEST_CASE("strict: well-formed messages still pass, whatever the split", "[http]") {
  struct Good {
    const char* what;
    std::string bytes;
    std::string body;
    bool keep_alive;
  };
  std::vector<Good> requests = {
      {"chunk extensions",
       kChunkedPost + "3;a=b\r\nabc\r\n2;name\r\nde\r\n1;q=\"x y\";z\r\nf\r\n0;last\r\n\r\n",
       "abcdef", true},
      {"trailers dropped", kChunkedPost + "2\r\nab\r\n0\r\nX-T: 1\r\nY-T: two words\r\n\r\n", "ab",
       true},
      {"TE CHUNKED", kPost + "Transfer-Encoding: CHUNKED\r\n\r\n2\r\nab\r\n0\r\n\r\n", "ab", true},
      {"TE Chunked with OWS", kPost + "Transfer-Encoding:\t Chunked \r\n\r\n2\r\nab\r\n0\r\n\r\n",
       "ab", true},
      {"upper-case chunk size", kChunkedPost + "A\r\n0123456789\r\n0\r\n\r\n", "0123456789", true},
      {"HTTP/1.0 keep-alive", "GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "", true},
      {"HTTP/1.0 without Host", "POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nab", "ab", false},
      {"absolute-form target",
       "POST http://replica:8000/v1/completions HTTP/1.1\r\nHost: replica:8000\r\n"
       "Content-Length: 2\r\n\r\nab",
       "ab", true},
      {"asterisk-form", "OPTIONS * HTTP/1.1\r\n" + kHost + "\r\n", "", true},
      {"empty line before the request", "\r\nGET / HTTP/1.1\r\n" + kHost + "\r\n", "", true},
      {"CL with OWS", kPost + "Content-Length:   2  \r\n\r\nab", "ab", true},
      {"obs-text in a value", "GET / HTTP/1.1\r\n" + kHost + "X-A: caf\xc3\xa9\r\n\r\n", "", true},
      {"empty value", "GET / HTTP/1.1\r\n" + kHost + "X-A:\r\nX-B: \r\n\r\n", "", true},
      {"IPv6 Host", "GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n", "", true},
      {"empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", "", true},
      {"body with CR, LF and NUL",
       kPost + "Content-Length: 5\r\n\r\n" + std::string("\r\n\0 \n", 5),
       std::string("\r\n\0 \n", 5), true},
      {"chunk data with CRLF inside", kChunkedPost + "4\r\n\r\n\r\n\r\n0\r\n\r\n", "\r\n\r\n",
       true},
  };
  for (const Good& g : requests) {
    INFO(g.what << ": " << printable(g.bytes));
    for_every_split(Kind::request, {}, g.bytes, [&](const Outcome& o) {
      REQUIRE(o.seen == std::vector<Status>{Status::kHead, Status::kDone});
      REQUIRE(o.body == g.body);
      REQUIRE(o.keep_alive == g.keep_alive);
    });
  }
  std::vector<Good> responses = {
      {"chunked",
       "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\n\r\n", "hello",
       true},
      {"chunked with trailers",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
       "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
       "hello", true},
      {"no reason phrase", "HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok", "ok", true},
      {"no reason, no SP", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "", true},
      {"obs-text reason", "HTTP/1.1 200 \xc3\xa9\r\nContent-Length: 2\r\n\r\nok", "ok", true},
  };
  for (const Good& g : responses) {
    INFO(g.what << ": " << printable(g.bytes));
    for_every_split(Kind::response, {}, g.bytes, [&](const Outcome& o) {
      REQUIRE(o.seen == std::vector<Status>{Status::kHead, Status::kDone});
      REQUIRE(o.body == g.body);
      REQUIRE(o.keep_alive == g.keep_alive);
    });
  }
}

TEST_CASE("strict: 204 and 304 responses end with their head", "[http]") {
  // Whatever Content-Length or Transfer-Encoding say (RFC 9112 6.3): the bytes
  // after the head are not this response's body.
  for (const std::string& head :
       {std::string("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        std::string("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        std::string("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
        std::string("HTTP/1.1 204 No Content\r\n\r\n")}) {
    INFO(printable(head));
    std::string bytes = head + "5\r\nhello\r\n0\r\n\r\n";
    MessageParser m(Kind::response, {});
    std::string body;
    m.set_body_sink(collect_into, &body);
    size_t used = 0;
    REQUIRE(m.feed(bytes.data(), bytes.size(), &used) == Status::kDone);
    CHECK(used == head.size());
    CHECK(body.empty());
    CHECK_FALSE(m.close_delimited());
  }
}

TEST_CASE("strict: trailer fields do not change what the head said", "[http]") {
  std::string req = kChunkedPost + "1\r\na\r\n0\r\nConnection: close\r\nUpgrade: x\r\n\r\n";
  MessageParser m(Kind::request, {});
  size_t used = 0;
  REQUIRE(m.feed(req.data(), req.size(), &used) == Status::kHead);
  size_t off = used;
  CHECK(m.keep_alive());
  REQUIRE(m.feed(req.data() + off, req.size() - off, &used) == Status::kDone);
  CHECK(m.keep_alive());
  CHECK(m.chunked());
  CHECK_FALSE(m.has_content_length());

  std::string resp =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "1\r\na\r\n0\r\nConnection: close\r\n\r\n";
  MessageParser r(Kind::response, {});
  REQUIRE(r.feed(resp.data(), resp.size(), &used) == Status::kHead);
  off = used;
  REQUIRE(r.feed(resp.data() + off, resp.size() - off, &used) == Status::kDone);
  CHECK(r.keep_alive());
  CHECK_FALSE(r.close_delimited());
}

TEST_CASE("strict: trailers are never read as the next request", "[http]") {
  // The trailer section ends the message; only then does the next request begin.
  std::string two = kChunkedPost + "1\r\na\r\n0\r\nX-T: GET /hidden HTTP/1.1\r\n\r\n" +
                    "GET /next HTTP/1.1\r\n" + kHost + "\r\n";
  MessageParser m(Kind::request, {});
  size_t used = 0;
  size_t off = 0;
  REQUIRE(m.feed(two.data(), two.size(), &used) == Status::kHead);
  off += used;
  REQUIRE(m.feed(two.data() + off, two.size() - off, &used) == Status::kDone);
  off += used;
  REQUIRE(m.feed(two.data() + off, two.size() - off, &used) == Status::kHead);
  CHECK(m.target() == "/next");
  CHECK(m.header_count() == 1);
}

TEST_CASE("strict: an error is final", "[http]") {
  MessageParser m(Kind::request, {});
  std::string bad = "GET / HTTP/1.1\r\n" + kHost + "\rX";
  std::string good = "GET / HTTP/1.1\r\n" + kHost + "\r\n";
  size_t used = 0;
  REQUIRE(m.feed(bad.data(), bad.size(), &used) == Status::kError);
  CHECK(m.error_status() == 400);
  CHECK(std::string(m.error_reason()) == "bare CR (not followed by LF)");
  CHECK(m.feed(good.data(), good.size(), &used) == Status::kError);
  CHECK(m.finish() == Status::kError);
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
  // One data line and a blank line, whatever the message holds.
  ev.clear();
  tr::http::build_error_event({500, "line1\n\nline2\r\r", "x", "c"}, &ev);
  CHECK(ev.find('\n') == ev.size() - 2);
  CHECK(ev.find('\r') == std::string::npos);
  CHECK(tr::http::token_list_has("keep-alive, Upgrade", "upgrade"));
  CHECK_FALSE(tr::http::token_list_has("keep-alive", "alive"));
}
