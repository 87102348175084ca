// What the proxy learns from an OpenAI request body (src/openai), used for
// routing, logs and metrics. Never needed to forward the request: the body is
// forwarded unchanged whatever this says.
#pragma once

#include <cstdint>
#include <string>

namespace tr {

struct RequestFacts {
  bool json_ok = false;              // body parsed as a JSON object
  bool stream = false;               // "stream": true
  bool include_usage = false;        // "stream_options": {"include_usage": true}
  std::string model;                 // "model" (empty when absent)
  int64_t max_tokens = -1;           // "max_completion_tokens" or "max_tokens"; -1 when absent
  uint64_t prompt_chars = 0;         // characters of prompt text (prompt / messages[].content)
  uint64_t prompt_wide_chars = 0;    // of them: 3- or 4-byte UTF-8 (CJK, kana, Hangul, emoji)
  uint64_t prompt_symbol_chars = 0;  // of them: ASCII punctuation, tab, newline (code)
  uint64_t prompt_token_ids = 0;     // token ids given directly (prompt as int array)
  uint32_t messages = 0;             // number of chat messages
  // Where the "model" string token (quotes included) lies in the body, so an
  // alias can be rewritten by splicing; model_token_bytes 0 = no string model.
  uint32_t model_token_offset = 0;
  uint32_t model_token_bytes = 0;
  bool has_priority = false;  // "priority": an integer (vLLM's priority scheduling)
  int64_t priority = 0;
  // The "priority" member ("priority": N, key to value) in the body, so it can
  // be removed for a replica that does not schedule by priority.
  uint32_t priority_member_offset = 0;
  uint32_t priority_member_bytes = 0;
};

}  // namespace tr
