// Unit tests for src/openai: request facts from chat and completion bodies,
// in any field order, with unicode, content parts, token ids, malformed input,
// padded and unpadded buffers, and a 1 MB prompt.
#include <algorithm>
#include <catch.hpp>
#include <cstdlib>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "openai/body.hpp"

#include "alloc_counter.hpp"

namespace {

using tr::BodyInspector;
using tr::RequestFacts;

// Parses <body> from a buffer with kPadding spare bytes (the in-place path).
bool inspect_padded(BodyInspector& in, std::string_view body, RequestFacts* f) {
  std::string buf(body);
  buf.resize(body.size() + BodyInspector::kPadding, '\0');
  return in.inspect(buf.data(), body.size(), buf.size(), f);
}

RequestFacts facts_of(std::string_view body) {
  BodyInspector in;
  RequestFacts f;
  bool ok = inspect_padded(in, body, &f);
  CHECK(ok == f.json_ok);
  return f;
}

bool same(const RequestFacts& a, const RequestFacts& b) {
  return a.json_ok == b.json_ok && a.stream == b.stream && a.include_usage == b.include_usage &&
         a.model == b.model && a.max_tokens == b.max_tokens && a.prompt_chars == b.prompt_chars &&
         a.prompt_token_ids == b.prompt_token_ids && a.messages == b.messages;
}

void check_defaults(const RequestFacts& f) {
  CHECK_FALSE(f.json_ok);
  CHECK_FALSE(f.stream);
  CHECK_FALSE(f.include_usage);
  CHECK(f.model.empty());
  CHECK(f.max_tokens == -1);
  CHECK(f.prompt_chars == 0);
  CHECK(f.prompt_token_ids == 0);
  CHECK(f.messages == 0);
}

}  // namespace

TEST_CASE("chat completion body", "[openai]") {
  RequestFacts f = facts_of(R"({
    "model": "meta-llama/Meta-Llama-3-8B-Instruct",
    "messages": [
      {"role": "system", "content": "You are terse."},
      {"role": "user", "content": "Capital of France?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
        "function": {"name": "lookup", "arguments": "{\"q\": \"France\"}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "Paris"}
    ],
    "temperature": 0.2,
    "stream": true,
    "stream_options": {"include_usage": true},
    "max_completion_tokens": 64,
    "max_tokens": 999,
    "logit_bias": {"50256": -100},
    "stop": ["\n\n", "END"]
  })");
  CHECK(f.json_ok);
  CHECK(f.model == "meta-llama/Meta-Llama-3-8B-Instruct");
  CHECK(f.stream);
  CHECK(f.include_usage);
  CHECK(f.max_tokens == 64);  // max_completion_tokens wins over max_tokens
  CHECK(f.messages == 4);
  CHECK(f.prompt_chars == 14 + 18 + 5);
  CHECK(f.prompt_token_ids == 0);
}

TEST_CASE("completion body", "[openai]") {
  RequestFacts f = facts_of(
      R"({"model":"gpt2","prompt":"Once upon a time","max_tokens":16,"stream":false,"n":1})");
  CHECK(f.json_ok);
  CHECK(f.model == "gpt2");
  CHECK_FALSE(f.stream);
  CHECK_FALSE(f.include_usage);
  CHECK(f.max_tokens == 16);
  CHECK(f.prompt_chars == 16);
  CHECK(f.messages == 0);

  f = facts_of(R"({"prompt":["ab","cde",""],"model":"m"})");
  CHECK(f.prompt_chars == 5);
  CHECK(f.max_tokens == -1);

  RequestFacts empty = facts_of("{}");
  CHECK(empty.json_ok);
  CHECK(empty.model.empty());
  CHECK(empty.max_tokens == -1);
}

TEST_CASE("field order does not matter", "[openai]") {
  std::vector<std::string> fields = {
      R"("messages":[{"role":"user","content":"hello"},{"role":"user","content":[{"type":"text","text":"abc"}]}])",
      R"("model":"m1")",
      R"("stream":true)",
      R"("stream_options":{"continuous_usage_stats":false,"include_usage":true})",
      R"("max_tokens":7)",
      R"("extra":{"nested":[1,{"model":"not-this-one","stream":false}]})",
  };
  std::vector<size_t> order(fields.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  BodyInspector in;
  RequestFacts first;
  bool have_first = false;
  size_t permutations = 0;
  do {
    std::string body = "{";
    for (size_t i = 0; i < order.size(); ++i)
      body += (i ? "," : "") + fields[order[i]];
    body += "}";
    RequestFacts f;
    INFO(body);
    REQUIRE(inspect_padded(in, body, &f));
    CHECK(f.model == "m1");
    CHECK(f.stream);
    CHECK(f.include_usage);
    CHECK(f.max_tokens == 7);
    CHECK(f.messages == 2);
    CHECK(f.prompt_chars == 8);
    if (!have_first) {
      first = f;
      have_first = true;
    }
    CHECK(same(first, f));
    ++permutations;
  } while (std::next_permutation(order.begin(), order.end()));
  CHECK(permutations == 720);
}

TEST_CASE("unicode prompts count code points, not bytes", "[openai]") {
  // é (2 bytes), 你好 (3 bytes each), 😀 (4 bytes).
  RequestFacts f =
      facts_of("{\"prompt\":\"h\xC3\xA9llo \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80\"}");
  CHECK(f.prompt_chars == 10);
  // JSON escapes: \u00e9 is one character, a surrogate pair is one character,
  // \n and \" are one each.
  f = facts_of(R"({"prompt":"caf\u00e9 \ud83d\ude00\n\"q\""})");
  CHECK(f.prompt_chars == 10);
  f = facts_of(R"({"messages":[{"role":"user","content":"\u4f60\u597d"}]})");
  CHECK(f.prompt_chars == 2);
  // Invalid UTF-8 is not JSON.
  BodyInspector in;
  RequestFacts bad;
  CHECK_FALSE(inspect_padded(in, "{\"prompt\":\"\xFF\"}", &bad));
}

TEST_CASE("content parts", "[openai]") {
  RequestFacts f = facts_of(R"({"model":"llava","messages":[
    {"role":"user","content":[
      {"type":"text","text":"What is in"},
      {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
      {"text":" this image?","type":"text"},
      {"type":"image_url","text":"not counted","image_url":{"url":"http://x/y.png"}},
      {"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}},
      "not a part",
      {"type":"text","text":null}
    ]},
    {"role":"assistant","content":"A cat."},
    {"role":"user"},
    "not a message",
    {"role":"user","content":[]}
  ]})");
  CHECK(f.json_ok);
  CHECK(f.messages == 4);
  CHECK(f.prompt_chars == 10 + 12 + 6);
}

TEST_CASE("token id prompts", "[openai]") {
  RequestFacts f = facts_of(R"({"model":"m","prompt":[1,2,3,50256]})");
  CHECK(f.prompt_token_ids == 4);
  CHECK(f.prompt_chars == 0);
  f = facts_of(R"({"prompt":[[1,2],[3,4,5],[]]})");
  CHECK(f.prompt_token_ids == 5);
  CHECK(f.prompt_chars == 0);
  f = facts_of(R"({"prompt":[]})");
  CHECK(f.json_ok);
  CHECK(f.prompt_token_ids == 0);
}

TEST_CASE("stream and stream_options", "[openai]") {
  CHECK(facts_of(R"({"stream":true,"stream_options":{"include_usage":true}})").include_usage);
  CHECK_FALSE(
      facts_of(R"({"stream":true,"stream_options":{"include_usage":false}})").include_usage);
  CHECK_FALSE(facts_of(R"({"stream":true,"stream_options":null})").include_usage);
  CHECK_FALSE(facts_of(R"({"stream_options":{"include_usage":"true"}})").include_usage);
  CHECK_FALSE(facts_of(R"({"stream_options":{"nested":{"include_usage":true}}})").include_usage);
  CHECK(facts_of(R"({"stream_options":{"continuous_usage_stats":{"a":[1]},"include_usage":true}})")
            .include_usage);
  CHECK_FALSE(facts_of(R"({"stream":"true"})").stream);
  CHECK_FALSE(facts_of(R"({"stream":null})").stream);
  CHECK_FALSE(facts_of(R"({"stream":1})").stream);
  // Last duplicate wins.
  CHECK_FALSE(facts_of(R"({"stream":true,"stream":false})").stream);
  RequestFacts dup = facts_of(R"({"model":"a","prompt":"xx","model":"b","prompt":"y"})");
  CHECK(dup.model == "b");
  CHECK(dup.prompt_chars == 1);
}

TEST_CASE("max_tokens", "[openai]") {
  CHECK(facts_of(R"({"max_tokens":null})").max_tokens == -1);
  CHECK(facts_of(R"({"max_tokens":0})").max_tokens == 0);
  CHECK(facts_of(R"({"max_tokens":128})").max_tokens == 128);
  CHECK(facts_of(R"({"max_completion_tokens":null,"max_tokens":50})").max_tokens == 50);
  CHECK(facts_of(R"({"max_tokens":50,"max_completion_tokens":20})").max_tokens == 20);
  CHECK(facts_of(R"({"max_completion_tokens":20,"max_tokens":null})").max_tokens == 20);
  CHECK(facts_of(R"({"max_tokens":-5})").max_tokens == -1);
  CHECK(facts_of(R"({"max_tokens":1.5})").max_tokens == -1);
  CHECK(facts_of(R"({"max_tokens":100.0})").max_tokens == 100);
  CHECK(facts_of(R"({"max_tokens":"100"})").max_tokens == -1);
  CHECK(facts_of(R"({"max_tokens":[1]})").max_tokens == -1);
  CHECK(facts_of(R"({"max_tokens":18446744073709551615})").max_tokens ==
        std::numeric_limits<int64_t>::max());
  CHECK(facts_of(R"({"max_tokens":1e300})").max_tokens == -1);
  RequestFacts f = facts_of(R"({"max_tokens":12,"model":"m"})");
  CHECK(f.json_ok);
  CHECK(f.model == "m");
}

TEST_CASE("malformed JSON returns false and never throws", "[openai]") {
  const char* const bad[] = {
      "",
      "   ",
      "[1,2,3]",
      "\"just a string\"",
      "42",
      "null",
      "{\"model\":\"m\"",                     // truncated
      "{\"model\":\"m",                       // truncated in a string
      "{\"messages\":[{\"content\":\"hi\"}",  // truncated in an array
      "{\"model\":\"m\"} trailing",
      "{\"model\":\"m\"}}",
      "{\"model\":\"m\"} {}",
      "{\"model\" \"m\"}",
      "{\"model\":\"m\",}",
      "{model:\"m\"}",
      "{\"max_tokens\":12x}",
      "{\"stream\":tru}",
      "{\"messages\":[{\"content\":\"x\"},]}",
      "{\"prompt\":[1,2,,3]}",
      "{\"prompt\":\"bad escape \\x\"}",
  };
  BodyInspector in;
  for (const char* body : bad) {
    INFO("body: " << body);
    RequestFacts f;
    f.model = "left over";
    f.max_tokens = 5;
    CHECK_FALSE(inspect_padded(in, body, &f));
    check_defaults(f);
  }
  // The inspector still works afterwards.
  RequestFacts ok;
  CHECK(inspect_padded(in, R"({"model":"m","max_tokens":3})", &ok));
  CHECK(ok.model == "m");
  CHECK(ok.max_tokens == 3);
  // Documented leniency: the value of a field we do not read is skipped, not
  // validated in depth (the replica sees the same bytes and rejects them).
  RequestFacts skipped;
  CHECK(inspect_padded(in, R"({"logit_bias":[1,,2],"model":"m"})", &skipped));
  CHECK(skipped.model == "m");
  // Trailing whitespace is fine.
  CHECK(facts_of("{\"model\":\"m\"}  \r\n\t").json_ok);
}

TEST_CASE("unpadded input is copied, padded input is parsed in place", "[openai]") {
  const std::string body =
      R"({"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":9})";
  BodyInspector in;
  RequestFacts padded;
  REQUIRE(inspect_padded(in, body, &padded));
  CHECK(in.copy_capacity() == 0);

  // Exactly sized heap buffer: reading past it would be caught by ASan.
  std::unique_ptr<char[]> exact(new char[body.size()]);
  std::copy(body.begin(), body.end(), exact.get());
  RequestFacts copied;
  REQUIRE(in.inspect(exact.get(), body.size(), body.size(), &copied));
  CHECK(in.copy_capacity() >= body.size() + BodyInspector::kPadding);
  CHECK(same(padded, copied));
  CHECK(copied.prompt_chars == 11);

  // One byte short of the padding also takes the copy path.
  std::string almost = body;
  almost.resize(body.size() + BodyInspector::kPadding - 1, ' ');
  RequestFacts f;
  REQUIRE(in.inspect(almost.data(), body.size(), almost.size(), &f));
  CHECK(same(padded, f));
  // Empty input.
  CHECK_FALSE(in.inspect(nullptr, 0, 0, &f));
}

TEST_CASE("a 1 MB prompt", "[openai]") {
  // 1 MiB of text: ASCII, 2-, 3- and 4-byte characters, and escapes.
  std::string text;
  uint64_t chars = 0;
  while (text.size() < 1024 * 1024) {
    text += "The quick brown fox \xC3\xA9\xE4\xBD\xA0\xF0\x9F\x98\x80 \\n\\\"\\u00e9 ";
    chars += 20 + 3 + 1 + 3 + 1;
  }
  std::string chat = R"({"model":"big","messages":[{"role":"user","content":")" + text +
                     R"("}],"stream":true,"max_tokens":1})";
  RequestFacts f = facts_of(chat);
  CHECK(f.json_ok);
  CHECK(f.prompt_chars == chars);
  CHECK(f.model == "big");
  CHECK(f.stream);
  CHECK(f.max_tokens == 1);

  std::string completion = R"({"prompt":")" + text + R"(","model":"big"})";
  BodyInspector in;
  std::unique_ptr<char[]> exact(new char[completion.size()]);
  std::copy(completion.begin(), completion.end(), exact.get());
  RequestFacts g;
  REQUIRE(in.inspect(exact.get(), completion.size(), completion.size(), &g));
  CHECK(g.prompt_chars == chars);
  // After an outsized body the buffers shrink back, and small bodies still work.
  CHECK(in.copy_capacity() == 0);
  RequestFacts small;
  REQUIRE(inspect_padded(in, R"({"prompt":"abc"})", &small));
  CHECK(small.prompt_chars == 3);

  // A 1M-token-id prompt.
  std::string ids = "{\"prompt\":[";
  for (int i = 0; i < 1000000; ++i)
    ids += (i ? ",1" : "1");
  ids += "]}";
  RequestFacts h = facts_of(ids);
  CHECK(h.json_ok);
  CHECK(h.prompt_token_ids == 1000000);
}

TEST_CASE("facts are reset between calls", "[openai]") {
  BodyInspector in;
  RequestFacts f;
  REQUIRE(inspect_padded(
      in,
      R"({"model":"a","stream":true,"max_tokens":5,"prompt":[1,2],"messages":[{"content":"x"}]})",
      &f));
  CHECK(f.prompt_token_ids == 2);
  REQUIRE(inspect_padded(in, R"({"prompt":"yy"})", &f));
  CHECK(f.json_ok);
  CHECK(f.model.empty());
  CHECK_FALSE(f.stream);
  CHECK(f.max_tokens == -1);
  CHECK(f.prompt_chars == 2);
  CHECK(f.prompt_token_ids == 0);
  CHECK(f.messages == 0);
}

TEST_CASE("a warm inspector allocates nothing", "[openai]") {
  const std::string body =
      R"({"model":"meta-llama/Meta-Llama-3-8B-Instruct","messages":[)"
      R"({"role":"system","content":"You are a helpful assistant."},)"
      R"({"role":"user","content":[{"type":"text","text":"Hi \u00e9"}]}],)"
      R"("stream":true,"stream_options":{"include_usage":true},"max_tokens":256})";
  std::string padded = body;
  padded.resize(body.size() + BodyInspector::kPadding, '\0');
  BodyInspector in;
  RequestFacts f;
  REQUIRE(in.inspect(padded.data(), body.size(), padded.size(), &f));  // warm up
  REQUIRE(in.inspect(body.data(), body.size(), body.size(), &f));      // copy path
  size_t before = g_allocations;
  for (int i = 0; i < 1000; ++i) {
    bool ok = in.inspect(padded.data(), body.size(), padded.size(), &f) &&
              in.inspect(body.data(), body.size(), body.size(), &f);
    if (!ok) FAIL("inspect failed");
  }
  CHECK(g_allocations == before);
  CHECK(f.model == "meta-llama/Meta-Llama-3-8B-Instruct");
  CHECK(f.prompt_chars == 28 + 4);
  CHECK(f.messages == 2);
}

TEST_CASE("model token position and priority", "[openai]") {
  BodyInspector in;
  RequestFacts f;
  std::string body = R"({ "prompt": "x",  "model" :  "a\"b" , "priority": -3 })";
  REQUIRE(inspect_padded(in, body, &f));
  CHECK(f.model == "a\"b");
  CHECK(body.substr(f.model_token_offset, f.model_token_bytes) == R"("a\"b")");
  CHECK(f.has_priority);
  CHECK(f.priority == -3);
  // The unpadded path (a copy) reports offsets into the caller's body too.
  REQUIRE(in.inspect(body.data(), body.size(), body.size(), &f));
  CHECK(body.substr(f.model_token_offset, f.model_token_bytes) == R"("a\"b")");
  // No string model, no integer priority.
  REQUIRE(inspect_padded(in, R"({"model": 5, "priority": 1.5})", &f));
  CHECK(f.model_token_bytes == 0);
  CHECK_FALSE(f.has_priority);
  REQUIRE(inspect_padded(in, R"({"priority": 2.0, "model":"m"})", &f));
  CHECK(f.has_priority);
  CHECK(f.priority == 2);
}
