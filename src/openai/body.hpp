// Request facts from an OpenAI request body (/v1/chat/completions,
// /v1/completions): model, stream, include_usage, max_tokens, prompt size.
// The body is forwarded unchanged whatever this finds; the facts feed routing,
// logs and metrics (include/tokenrelay/request_facts.hpp).
//
// Uses simdjson's on-demand API in one forward pass over the top-level object,
// with error codes only (never exceptions). Unknown fields are skipped without
// being validated in depth: json_ok means "a JSON object whose fields we read
// are well formed, with nothing after it", not full RFC 8259 validation.
// Duplicate keys: the last one wins.
#pragma once

#include <simdjson.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "tokenrelay/request_facts.hpp"

namespace tr {

class BodyInspector {
 public:
  // Bytes a caller must allocate past the end of a body for inspect() to parse
  // it in place (simdjson reads, but never writes, up to that far).
  static constexpr size_t kPadding = simdjson::SIMDJSON_PADDING;
  // "model" values longer than this are truncated (no real model name is).
  static constexpr size_t kModelBytesMax = 1024;
  // After a body larger than this, the parser and copy buffers shrink back to
  // it, so one huge request does not pin ~6x its size per worker forever.
  // Bodies up to this size are inspected without allocating, once warm.
  static constexpr size_t kRetainBytes = 1024 * 1024;

  BodyInspector() = default;
  BodyInspector(const BodyInspector&) = delete;
  BodyInspector& operator=(const BodyInspector&) = delete;

  // Inspects the <len> bytes at <data> and fills *out (every field is reset
  // first; out->model keeps its capacity, so reusing one RequestFacts does not
  // allocate for short model names). <capacity> is how many bytes at <data>
  // are readable: when capacity >= len + kPadding the body is parsed in place,
  // otherwise it is first copied into an internal padded buffer.
  // Returns true with out->json_ok = true when the body is a JSON object and
  // the fields read are well formed. Returns false with out->json_ok = false
  // (and the other fields at their defaults) for malformed JSON, a top level
  // that is not an object, trailing bytes, or invalid UTF-8. Never throws.
  //
  // Facts: model (string); stream (true only for JSON true);
  // include_usage (stream_options.include_usage, JSON true);
  // max_tokens from max_completion_tokens when it is a non-negative integer,
  // else from max_tokens, else -1 (null, absent, negative, fractional, not a
  // number); 100.0 counts as 100 (pydantic accepts it), above INT64_MAX clamps;
  // prompt_chars = UTF-8 code points of "prompt" (a string or an array of
  // strings) plus those of messages[].content (a string, or an array of parts
  // where parts with "type": "text" have "text"; other parts are ignored);
  // prompt_token_ids = numbers in "prompt" given as an array of token ids or an
  // array of such arrays (counted, not range-checked); messages = objects in
  // "messages".
  bool inspect(const char* data, size_t len, size_t capacity, tr::RequestFacts* out);

  // Bytes of the internal copy buffer (0 until a non-padded body arrives).
  size_t copy_capacity() const { return copy_capacity_; }

 private:
  simdjson::ondemand::parser parser_;
  std::unique_ptr<char[]> copy_;
  size_t copy_capacity_ = 0;
};

}  // namespace tr
