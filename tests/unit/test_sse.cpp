// Unit tests for src/sse: event splitting on every line-end form and split
// point, [DONE], usage and error detection, oversize events, and the SSE error
// event the proxy writes.
#include <catch.hpp>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "sse/sse.hpp"

#include "alloc_counter.hpp"

namespace {

using tr::SseScanner;
using Event = tr::SseScanner::Event;

// A /v1/chat/completions stream as vLLM sends it with
// "stream_options": {"include_usage": true}: a role chunk, content chunks,
// a finish chunk, the usage chunk (choices empty), then [DONE]. Two content
// chunks contain the words usage and error inside strings (escaped).
const char* const kChatStream =
    R"sse(data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"content":"The"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"content":" capital"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"content":" of"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"content":" France"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"content":" is"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"content":" Paris"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"content":".\n\n"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"content":"(\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2})"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"content":"error"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":null}

data: {"id":"chatcmpl-5f0c2e6a7d4c41f8","object":"chat.completion.chunk","created":1718035200,"model":"meta-llama/Meta-Llama-3-8B-Instruct","choices":[],"usage":{"prompt_tokens":17,"total_tokens":27,"completion_tokens":10}}

data: [DONE]

)sse";
constexpr uint64_t kChatDataEvents = 12;  // all but [DONE]

bool same(const Event& a, const Event& b) {
  return a.data_lines == b.data_lines && a.done == b.done && a.error == b.error &&
         a.usage == b.usage && a.inspected == b.inspected && a.prompt_tokens == b.prompt_tokens &&
         a.completion_tokens == b.completion_tokens;
}

struct Result {
  std::vector<Event> events;
  uint64_t data_events = 0;
  uint64_t error_events = 0;
  uint64_t uninspected_events = 0;
  bool done = false;
  bool has_usage = false;
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  uint64_t bytes = 0;
  bool mid_event = false;
};

Result finish(const SseScanner& s, std::vector<Event> events) {
  Result r;
  r.events = std::move(events);
  r.data_events = s.data_events();
  r.error_events = s.error_events();
  r.uninspected_events = s.uninspected_events();
  r.done = s.done();
  r.has_usage = s.has_usage();
  r.prompt_tokens = s.prompt_tokens();
  r.completion_tokens = s.completion_tokens();
  r.bytes = s.bytes();
  r.mid_event = s.mid_event();
  return r;
}

// Feeds <stream> cut at the given offsets (ascending).
Result run_split(std::string_view stream, const std::vector<size_t>& cuts) {
  SseScanner s;
  std::vector<Event> events;
  auto on_event = [&](const Event& e) { events.push_back(e); };
  size_t prev = 0;
  for (size_t cut : cuts) {
    s.feed(stream.substr(prev, cut - prev), on_event);
    prev = cut;
  }
  s.feed(stream.substr(prev), on_event);
  return finish(s, std::move(events));
}

Result run_whole(std::string_view stream) {
  return run_split(stream, {});
}

Result run_bytewise(std::string_view stream) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < stream.size(); ++i)
    cuts.push_back(i);
  return run_split(stream, cuts);
}

void require_same(const Result& a, const Result& b) {
  REQUIRE(a.events.size() == b.events.size());
  for (size_t i = 0; i < a.events.size(); ++i) {
    INFO("event " << i);
    REQUIRE(same(a.events[i], b.events[i]));
  }
  REQUIRE(a.data_events == b.data_events);
  REQUIRE(a.error_events == b.error_events);
  REQUIRE(a.uninspected_events == b.uninspected_events);
  REQUIRE(a.done == b.done);
  REQUIRE(a.has_usage == b.has_usage);
  REQUIRE(a.prompt_tokens == b.prompt_tokens);
  REQUIRE(a.completion_tokens == b.completion_tokens);
  REQUIRE(a.bytes == b.bytes);
  REQUIRE(a.mid_event == b.mid_event);
}

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  out.append(s, pos);
  return out;
}

void check_chat_result(const Result& r, size_t stream_bytes) {
  CHECK(r.events.size() == kChatDataEvents + 1);
  CHECK(r.data_events == kChatDataEvents);
  CHECK(r.error_events == 0);
  CHECK(r.uninspected_events == 0);
  CHECK(r.done);
  CHECK(r.has_usage);
  CHECK(r.prompt_tokens == 17);
  CHECK(r.completion_tokens == 10);
  CHECK(r.bytes == stream_bytes);
  CHECK_FALSE(r.mid_event);
  for (size_t i = 0; i < r.events.size(); ++i) {
    INFO("event " << i);
    const Event& e = r.events[i];
    CHECK(e.data_lines == 1);
    CHECK(e.inspected);
    CHECK_FALSE(e.error);
    CHECK(e.usage == (i == kChatDataEvents - 1));
    CHECK(e.done == (i == kChatDataEvents));
  }
}

}  // namespace

TEST_CASE("a vLLM chat stream: events, usage, [DONE]", "[sse]") {
  std::string stream = kChatStream;
  Result whole = run_whole(stream);
  check_chat_result(whole, stream.size());
  CHECK(whole.events[kChatDataEvents - 1].prompt_tokens == 17);
  CHECK(whole.events[kChatDataEvents - 1].completion_tokens == 10);
}

TEST_CASE("byte-at-a-time feeding equals whole feeding", "[sse]") {
  std::string stream = kChatStream;
  require_same(run_whole(stream), run_bytewise(stream));
}

TEST_CASE("every split point of a real stream gives the same events", "[sse]") {
  for (const char* eol : {"\n", "\r\n", "\r"}) {
    std::string stream = replace_all(kChatStream, "\n", eol);
    INFO("line end: " << (eol[0] == '\n' ? "LF" : eol[1] ? "CRLF" : "CR"));
    Result whole = run_whole(stream);
    check_chat_result(whole, stream.size());
    for (size_t cut = 1; cut < stream.size(); ++cut) {
      INFO("cut at " << cut);
      require_same(whole, run_split(stream, {cut}));
    }
    require_same(whole, run_bytewise(stream));
  }
}

TEST_CASE("random multi-piece splits give the same events", "[sse]") {
  std::mt19937 rng(12345);
  std::string stream = replace_all(kChatStream, "\n", "\r\n");
  Result whole = run_whole(stream);
  for (int round = 0; round < 300; ++round) {
    std::vector<size_t> cuts;
    size_t pos = 0;
    while (true) {
      pos += 1 + rng() % 97;
      if (pos >= stream.size()) break;
      cuts.push_back(pos);
    }
    require_same(whole, run_split(stream, cuts));
  }
}

TEST_CASE("line ends: CRLF, CR, and mixes end events", "[sse]") {
  std::string stream =
      "data: {\"a\":1}\r\n\n"    // CRLF then LF
      "data: {\"a\":2}\n\r\n"    // LF then CRLF
      "data: {\"a\":3}\r\r"      // CR CR
      "data: {\"a\":4}\r\n\r\n"  // CRLF CRLF
      "\n\r\n"                   // blank lines with nothing pending: no event
      "data: [DONE]\r\r\n";      // the final LF is a blank line with nothing pending
  Result r = run_whole(stream);
  CHECK(r.events.size() == 5);
  CHECK(r.data_events == 4);
  CHECK(r.done);
  CHECK_FALSE(r.mid_event);
  require_same(r, run_bytewise(stream));
  for (size_t cut = 1; cut < stream.size(); ++cut)
    require_same(r, run_split(stream, {cut}));
}

TEST_CASE("comments and non-data fields are not data events", "[sse]") {
  std::string stream =
      ": ping\n\n"
      "event: message\nid: 7\nretry: 1000\n\n"
      ":\n\n"
      "database: x\n\n"
      "event: data\ndata: {\"x\":1}\n: trailing comment\n\n"
      "data\n\n";  // a "data" field with an empty value is data
  Result r = run_whole(stream);
  REQUIRE(r.events.size() == 6);
  CHECK_FALSE(r.events[0].is_data());
  CHECK_FALSE(r.events[1].is_data());
  CHECK_FALSE(r.events[2].is_data());
  CHECK_FALSE(r.events[3].is_data());
  CHECK(r.events[4].is_data());
  CHECK(r.events[5].is_data());
  CHECK(r.data_events == 2);
  CHECK_FALSE(r.done);
  require_same(r, run_bytewise(stream));
}

TEST_CASE("[DONE] forms", "[sse]") {
  CHECK(run_whole("data:[DONE]\n\n").done);
  CHECK(run_whole("data: [DONE]\n\n").done);
  CHECK_FALSE(run_whole("data:  [DONE]\n\n").done);  // the value is " [DONE]"
  CHECK_FALSE(run_whole("data: [DONE] \n\n").done);
  CHECK_FALSE(run_whole("data: [DONE]\ndata: x\n\n").done);  // value "[DONE]\nx"
  CHECK_FALSE(run_whole("data: [DONE]\n").done);             // not dispatched yet
  Result r = run_whole("data: [DONE]\n");
  CHECK(r.mid_event);
  // A UTF-8 BOM at the start of the stream is ignored, even when split.
  std::string bom =
      "\xEF\xBB\xBF"
      "data: [DONE]\n\n";
  CHECK(run_whole(bom).done);
  CHECK(run_bytewise(bom).done);
}

TEST_CASE("usage extraction", "[sse]") {
  SECTION("vLLM final chunk") {
    Result r = run_whole(
        "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"total_tokens\":12,"
        "\"completion_tokens\":7}}\n\n");
    REQUIRE(r.events.size() == 1);
    CHECK(r.events[0].usage);
    CHECK(r.has_usage);
    CHECK(r.prompt_tokens == 5);
    CHECK(r.completion_tokens == 7);
  }
  SECTION("whitespace, key order, nested objects") {
    Result r = run_whole(
        "data: { \"usage\" : { \"completion_tokens\" : 3 , \"prompt_tokens_details\": "
        "{\"cached_tokens\": 2}, \"prompt_tokens\":4 } , \"choices\": [ ] }\n\n");
    CHECK(r.has_usage);
    CHECK(r.prompt_tokens == 4);
    CHECK(r.completion_tokens == 3);
  }
  SECTION("usage:null is not usage") {
    Result r =
        run_whole("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n");
    CHECK_FALSE(r.has_usage);
    CHECK_FALSE(r.events[0].usage);
    CHECK(r.data_events == 1);
  }
  SECTION("only a top-level usage object with integer counts counts") {
    CHECK_FALSE(run_whole("data: {\"choices\":[{\"usage\":{\"prompt_tokens\":1,"
                          "\"completion_tokens\":2}}]}\n\n")
                    .has_usage);
    CHECK_FALSE(run_whole("data: {\"usage\":{\"prompt_tokens\":1.5,\"completion_tokens\":2}}\n\n")
                    .has_usage);
    CHECK_FALSE(run_whole("data: {\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":2}}\n\n")
                    .has_usage);
    CHECK_FALSE(run_whole("data: {\"usage\":{\"prompt_tokens\":1}}\n\n").has_usage);
    CHECK_FALSE(run_whole("data: {\"usage\":\"{\\\"prompt_tokens\\\":1,"
                          "\\\"completion_tokens\\\":2}\"}\n\n")
                    .has_usage);
    CHECK_FALSE(run_whole("data: [{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}]\n\n")
                    .has_usage);
    // Lenient on truncated JSON: members complete before the cut still count.
    CHECK(
        run_whole("data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}\n\n").has_usage);
  }
  SECTION("continuous usage stats: the last one wins") {
    Result r = run_whole(
        "data: {\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}\n\n"
        "data: {\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n"
        "data: {\"usage\":null}\n\n"
        "data: [DONE]\n\n");
    CHECK(r.has_usage);
    CHECK(r.prompt_tokens == 9);
    CHECK(r.completion_tokens == 2);
    CHECK(r.data_events == 3);
  }
}

TEST_CASE("keys are found at every offset of the vectorized gate", "[sse]") {
  // The gate looks 16 bytes at a time; slide the keys across block edges.
  for (size_t pad = 0; pad < 48; ++pad) {
    INFO("pad " << pad);
    std::string p(pad, 'x');
    Result u = run_whole("data: {\"p\":\"" + p +
                         "\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n");
    CHECK(u.has_usage);
    CHECK(u.completion_tokens == 4);
    Result e = run_whole("data: {\"p\":\"" + p + "\",\"error\":{\"message\":\"m\"}}\n\n");
    CHECK(e.error_events == 1);
    Result n = run_whole("data: {\"p\":\"" + p + "\",\"usage\":null,\"x\":\"e\"}\n\n");
    CHECK_FALSE(n.has_usage);
    CHECK(n.error_events == 0);
    // At the very end of the line, where only the scalar tail loop looks.
    Result tail = run_whole("data: " + p +
                            "{\"usage\" :\t{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n");
    CHECK(tail.has_usage == (pad == 0));  // with a prefix it is not a JSON object
  }
}

TEST_CASE("error events", "[sse]") {
  std::string vllm_error =
      "data: {\"error\": {\"object\": \"error\", \"message\": \"The model ran out of KV cache\", "
      "\"type\": \"InternalServerError\", \"param\": null, \"code\": 500}}\n\n";
  Result r = run_whole(vllm_error);
  REQUIRE(r.events.size() == 1);
  CHECK(r.events[0].error);
  CHECK(r.error_events == 1);
  CHECK(r.data_events == 1);
  CHECK_FALSE(r.done);

  // "error" not at the top level, as a value, or null: not an error event.
  CHECK(run_whole("data: {\"choices\":[{\"delta\":{\"error\":\"x\"}}]}\n\n").error_events == 0);
  CHECK(run_whole("data: {\"finish_reason\":\"error\"}\n\n").error_events == 0);
  CHECK(run_whole("data: {\"error\":null,\"choices\":[]}\n\n").error_events == 0);
  CHECK(run_whole("data: \"error\"\n\n").error_events == 0);
  // Error key after other members, with a string value.
  CHECK(run_whole("data: {\"id\":\"a\",\"error\":\"boom\"}\n\n").error_events == 1);
  // Our own error event (http::build_error_event's shape) is detected by our own scanner.
  Result own = run_whole(
      "data: {\"error\":{\"message\":\"upstream closed\",\"type\":\"server_error\","
      "\"param\":null,\"code\":\"upstream_reset\"}}\n\n");
  CHECK(own.error_events == 1);
  CHECK(own.events[0].error);
}

TEST_CASE("oversize events are counted but not inspected", "[sse]") {
  // The line "data: " + json is exactly `line_bytes` long.
  auto usage_line = [](size_t line_bytes) {
    std::string head = "data: {\"pad\":\"";
    std::string tail = "\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}";
    REQUIRE(line_bytes > head.size() + tail.size());
    return head + std::string(line_bytes - head.size() - tail.size(), 'x') + tail;
  };
  SECTION("the bound is exact") {
    Result at = run_whole(usage_line(tr::kSseEventInspectMax) + "\n\n");
    CHECK(at.events[0].inspected);
    CHECK(at.has_usage);
    Result over = run_whole(usage_line(tr::kSseEventInspectMax + 1) + "\n\n");
    CHECK_FALSE(over.events[0].inspected);
    CHECK_FALSE(over.has_usage);
    CHECK(over.data_events == 1);
    CHECK(over.uninspected_events == 1);
  }
  SECTION("split or whole, same result, and the next event is fine") {
    std::string stream = "data: {\"a\":1}\n\n" + usage_line(200 * 1024) + "\r\n\r\n" +
                         "data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n" +
                         "data: [DONE]\n\n";
    Result whole = run_whole(stream);
    REQUIRE(whole.events.size() == 4);
    CHECK_FALSE(whole.events[1].inspected);
    CHECK(whole.data_events == 3);
    CHECK(whole.uninspected_events == 1);
    CHECK(whole.has_usage);
    CHECK(whole.prompt_tokens == 3);
    CHECK(whole.completion_tokens == 4);
    CHECK(whole.done);
    std::vector<size_t> cuts;
    for (size_t c = 7; c < stream.size(); c += 1499)
      cuts.push_back(c);
    require_same(whole, run_split(stream, cuts));
    std::vector<size_t> fine;
    for (size_t c = 1; c < stream.size(); c += 3)
      fine.push_back(c);
    require_same(whole, run_split(stream, fine));
  }
}

TEST_CASE("steady state allocates nothing", "[sse]") {
  std::string stream = kChatStream;
  SseScanner s;
  uint64_t events = 0;
  auto feed_round = [&] {
    for (size_t pos = 0; pos < stream.size(); pos += 700) {
      s.feed(std::string_view(stream).substr(pos, 700), [&](const Event&) { ++events; });
    }
  };
  // The first split line allocates the tail buffer (once per scanner).
  size_t before = g_allocations;
  feed_round();
  CHECK(g_allocations - before <= 1);
  before = g_allocations;
  for (int round = 1; round < 100; ++round)
    feed_round();
  CHECK(g_allocations == before);
  CHECK(events == 100 * (kChatDataEvents + 1));
  CHECK(s.data_events() == 100 * kChatDataEvents);
  // Whole-stream feeding never copies, so never allocates.
  SseScanner fresh;
  before = g_allocations;
  fresh.feed(stream);
  CHECK(g_allocations == before);
}

TEST_CASE("mid_event and reset", "[sse]") {
  SseScanner s;
  s.feed("data: {\"a\":1}\n");
  CHECK(s.mid_event());
  CHECK(s.data_events() == 0);
  s.feed("\n");
  CHECK_FALSE(s.mid_event());
  CHECK(s.data_events() == 1);
  s.feed("data: par");
  CHECK(s.mid_event());
  s.reset();
  CHECK_FALSE(s.mid_event());
  CHECK(s.bytes() == 0);
  s.feed("tial\n\n");  // a fresh stream: "tial" is an unknown field
  CHECK(s.data_events() == 0);
  s.feed("data: [DONE]\r");
  CHECK(s.mid_event());
  s.feed("\n\r\n");
  CHECK(s.done());
  CHECK_FALSE(s.mid_event());
}

TEST_CASE("append_json_string keeps valid UTF-8 and replaces invalid bytes", "[sse]") {
  // Valid UTF-8 passes through; invalid bytes become U+FFFD.
  std::string out;
  tr::append_json_string(&out, "caf\xC3\xA9 \xF0\x9F\x98\x80 \xE2\x82\xAC");
  CHECK(out == "\"caf\xC3\xA9 \xF0\x9F\x98\x80 \xE2\x82\xAC\"");
  out.clear();
  tr::append_json_string(&out, "\xFF|\xC0\xAF|\xED\xA0\x80|\xF4\x90\x80\x80|\xC3|\xE2\x82");
  const std::string r = "\xEF\xBF\xBD";
  CHECK(out == "\"" + r + "|" + r + r + "|" + r + r + r + "|" + r + r + r + r + "|" + r + "|" + r +
                   r + "\"");
}
