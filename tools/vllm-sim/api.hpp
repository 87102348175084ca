// The OpenAI-compatible surface of vllm-sim: request bodies in (simdjson
// on-demand), response bytes out, shaped like vLLM's pydantic models (field
// order, compact separators, exclude_unset for chat chunks). Pure: no I/O.
#pragma once

#include <simdjson.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "metrics.hpp"
#include "options.hpp"

namespace tr::sim {

enum class Endpoint : uint8_t { chat, completion };

// An error as vLLM's ErrorResponse: {"error":{"message","type","param","code"}}.
struct ApiError {
  int status = 0;
  const char* type = "";
  std::string message;
};

struct InferenceRequest {
  std::string model;  // as the client named it ("" = absent)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;
  int64_t max_tokens = -1;    // max_completion_tokens, else max_tokens; -1 = absent
  int64_t priority = 0;       // lower is served first; nonzero needs the priority policy
  uint64_t prompt_chars = 0;  // UTF-8 code points of the prompt text
  // Set by the caller before parsing: with it, the text is also counted by
  // mixed_tokens() into <prompt_mixed_tokens>, which prompt_tokens() then uses.
  bool tokenizer_mixed = false;
  uint64_t prompt_mixed_tokens = 0;
  uint32_t prompt_ids = 0;  // token ids given directly (completions)
  uint32_t messages = 0;    // chat messages
  // Bytes the prefix cache hashes: chat = role, 0x1f, content, 0x1e per
  // message; completions = the prompt text, or 4 bytes per token id.
  std::string prefix_bytes;

  // The sim's deterministic prompt token estimate (README.md).
  uint32_t prompt_tokens() const;
};

// Parses an inference request body. <body> must have capacity >= size +
// simdjson::SIMDJSON_PADDING (the server reserves it). Returns false with
// <err> filled (400) when the body is not a valid request.
bool parse_inference_request(simdjson::ondemand::parser* parser, Endpoint ep, std::string* body,
                             InferenceRequest* req, ApiError* err);

// Appends the JSON error body.
void append_error_body(std::string* out, const ApiError& err);

// The constant parts of every event of one response. <head> starts every
// event or body: `data: {"id":...,"model":...,"choices":[` for streams,
// `{"id":...,"choices":[` otherwise.
void build_head(std::string* head, Endpoint ep, bool stream, std::string_view id, int64_t created,
                std::string_view model);

// Pieces that follow <head> in a streamed token event (chat or completion).
struct EventPieces {
  std::string_view token_open;        // before the token text
  std::string_view token_mid;         // after it, not the last token
  std::string_view token_end_stop;    // after the last token, finish_reason "stop"
  std::string_view token_end_length;  // after the last token, finish_reason "length"
  std::string_view role;              // chat only: the role event's tail ("" otherwise)
};
const EventPieces& event_pieces(Endpoint ep);

constexpr std::string_view kDoneEvent = "data: [DONE]\n\n";
constexpr size_t kUsageTailBytesMax = 128;

// Writes the usage event's tail (after <head>) into <buf>; returns its length.
size_t format_usage_tail(char* buf, size_t cap, uint32_t prompt, uint32_t completion);

// Appends a non-streaming response body: <head>, the choice with <text>
// (already JSON-escaped), usage and the trailing optional fields.
void append_full_body(std::string* out, Endpoint ep, std::string_view head,
                      std::string_view escaped_text, FinishReason reason, uint32_t prompt,
                      uint32_t completion);

// Appends the /v1/models body: a card per base model, then one per adapter
// (its parent is the first base model, as in vLLM).
void append_models_body(std::string* out, const std::vector<std::string>& models,
                        const std::vector<LoraModule>& adapters, int64_t created,
                        uint32_t max_model_len, uint64_t seed);

}  // namespace tr::sim
