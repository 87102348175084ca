#include "api.hpp"

#include <cinttypes>
#include <cstdio>

#include "core/assert.hpp"
#include "vocab.hpp"

namespace tr::sim {

namespace od = simdjson::ondemand;

namespace {

uint64_t utf8_chars(std::string_view s) {
  uint64_t n = 0;
  for (char c : s)
    n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// Counts one piece of prompt text into <req> (code points, and mixed tokens
// when that tokenizer is on).
void add_text(InferenceRequest* req, std::string_view s) {
  req->prompt_chars += utf8_chars(s);
  if (req->tokenizer_mixed) req->prompt_mixed_tokens += mixed_tokens(s);
}

bool bad(ApiError* err, std::string msg) {
  err->status = 400;
  err->type = "BadRequestError";
  err->message = std::move(msg);
  return false;
}

// Reads an optional integer that may be null (null leaves <present> false).
// Returns false on a wrong type.
bool read_opt_int(od::value v, int64_t* out, bool* present) {
  od::json_type t;
  if (v.type().get(t) != simdjson::SUCCESS) return false;
  if (t == od::json_type::null) return true;
  int64_t i = 0;
  if (v.get_int64().get(i) != simdjson::SUCCESS) return false;
  *out = i;
  *present = true;
  return true;
}

bool read_opt_bool(od::value v, bool* out) {
  od::json_type t;
  if (v.type().get(t) != simdjson::SUCCESS) return false;
  if (t == od::json_type::null) return true;
  return v.get_bool().get(*out) == simdjson::SUCCESS;
}

// Adds a message's content (string, array of parts, or null) to <req>.
bool read_content(od::value v, InferenceRequest* req) {
  od::json_type t;
  if (v.type().get(t) != simdjson::SUCCESS) return false;
  if (t == od::json_type::null) return true;
  if (t == od::json_type::string) {
    std::string_view s;
    if (v.get_string().get(s) != simdjson::SUCCESS) return false;
    add_text(req, s);
    req->prefix_bytes.append(s);
    return true;
  }
  if (t != od::json_type::array) return false;
  od::array parts;
  if (v.get_array().get(parts) != simdjson::SUCCESS) return false;
  for (auto part_r : parts) {
    od::object part;
    if (part_r.get_object().get(part) != simdjson::SUCCESS) return false;
    for (auto field : part) {
      std::string_view key;
      if (field.unescaped_key().get(key) != simdjson::SUCCESS) return false;
      if (key != "text") continue;
      std::string_view s;
      if (field.value().get_string().get(s) != simdjson::SUCCESS) return false;
      add_text(req, s);
      req->prefix_bytes.append(s);
    }
  }
  return true;
}

bool read_messages(od::value v, InferenceRequest* req, ApiError* err) {
  od::array arr;
  if (v.get_array().get(arr) != simdjson::SUCCESS) return bad(err, "'messages' must be a list");
  for (auto msg_r : arr) {
    od::object msg;
    if (msg_r.get_object().get(msg) != simdjson::SUCCESS) {
      return bad(err, "each message must be an object");
    }
    req->messages += 1;
    for (auto field : msg) {
      std::string_view key;
      if (field.unescaped_key().get(key) != simdjson::SUCCESS) return bad(err, "invalid JSON");
      if (key == "role") {
        std::string_view role;
        if (field.value().get_string().get(role) != simdjson::SUCCESS) {
          return bad(err, "message 'role' must be a string");
        }
        req->prefix_bytes.append(role);
        req->prefix_bytes.push_back('\x1f');
      } else if (key == "content") {
        if (!read_content(field.value(), req)) {
          return bad(err, "message 'content' must be a string, a list of parts or null");
        }
      }
    }
    req->prefix_bytes.push_back('\x1e');
  }
  if (req->messages == 0) return bad(err, "'messages' must not be empty");
  return true;
}

void append_id(std::string* out, uint64_t id) {
  const unsigned char b[4] = {static_cast<unsigned char>(id), static_cast<unsigned char>(id >> 8),
                              static_cast<unsigned char>(id >> 16),
                              static_cast<unsigned char>(id >> 24)};
  out->append(reinterpret_cast<const char*>(b), 4);
}

// prompt: a string, a list of token ids, or a list holding one of those.
bool read_prompt(od::value v, InferenceRequest* req, ApiError* err, bool nested) {
  od::json_type t;
  if (v.type().get(t) != simdjson::SUCCESS) return bad(err, "invalid JSON");
  if (t == od::json_type::string) {
    std::string_view s;
    if (v.get_string().get(s) != simdjson::SUCCESS) return bad(err, "invalid JSON");
    add_text(req, s);
    req->prefix_bytes.append(s);
    return true;
  }
  if (t != od::json_type::array) return bad(err, "'prompt' must be a string or a list");
  od::array arr;
  if (v.get_array().get(arr) != simdjson::SUCCESS) return bad(err, "invalid JSON");
  size_t items = 0;
  for (auto item_r : arr) {
    od::value item;
    if (item_r.get(item) != simdjson::SUCCESS) return bad(err, "invalid JSON");
    od::json_type it;
    if (item.type().get(it) != simdjson::SUCCESS) return bad(err, "invalid JSON");
    if (it == od::json_type::number) {
      uint64_t id = 0;
      if (item.get_uint64().get(id) != simdjson::SUCCESS) {
        return bad(err, "token ids must be non-negative integers");
      }
      req->prompt_ids += 1;
      append_id(&req->prefix_bytes, id);
      continue;
    }
    if (nested || ++items > 1) {
      return bad(err, "vllm-sim serves one prompt per request (batched prompts unsupported)");
    }
    if (!read_prompt(item, req, err, true)) return false;
  }
  return true;
}

constexpr std::string_view kChatRole =
    R"({"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]})"
    "\n\n";

const EventPieces kChatPieces{
    R"({"index":0,"delta":{"content":")",
    "\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "\"},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null}]}\n\n",
    "\"},\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null}]}\n\n",
    kChatRole,
};

const EventPieces kCompletionPieces{
    R"({"index":0,"text":")",
    "\",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}],\"usage\":null}\n\n",
    "\",\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null}],\"usage\":null}\n\n",
    "\",\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null}],\"usage\":null}\n\n",
    "",
};

const char* reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::stop:
      return "stop";
    case FinishReason::length:
      return "length";
    case FinishReason::abort:
      return "abort";
    case FinishReason::none:
      break;
  }
  return "stop";
}

void append_usage(std::string* out, uint32_t prompt, uint32_t completion, bool details_null) {
  char buf[160];
  int n = std::snprintf(buf, sizeof buf,
                        "\"usage\":{\"prompt_tokens\":%u,\"total_tokens\":%u,"
                        "\"completion_tokens\":%u%s}",
                        prompt, prompt + completion, completion,
                        details_null ? ",\"prompt_tokens_details\":null" : "");
  TR_ASSERT(n > 0 && static_cast<size_t>(n) < sizeof buf);
  out->append(buf, n);
}

}  // namespace

uint32_t InferenceRequest::prompt_tokens() const {
  const uint64_t text = tokenizer_mixed ? prompt_mixed_tokens : (prompt_chars + 3) / 4;
  uint64_t t = prompt_ids + text + 4ull * messages;
  if (t == 0) t = 1;  // an empty prompt still costs one token (BOS)
  return t > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(t);
}

bool parse_inference_request(od::parser* parser, Endpoint ep, std::string* body,
                             InferenceRequest* req, ApiError* err) {
  TR_ASSERT(body->capacity() >= body->size() + simdjson::SIMDJSON_PADDING);
  od::document doc;
  if (parser->iterate(body->data(), body->size(), body->capacity()).get(doc) != simdjson::SUCCESS) {
    return bad(err, "Invalid JSON body");
  }
  od::object obj;
  if (doc.get_object().get(obj) != simdjson::SUCCESS) {
    return bad(err, "The request body must be a JSON object");
  }
  bool have_input = false;
  int64_t max_tokens = 0;
  int64_t max_completion_tokens = 0;
  bool have_max_tokens = false;
  bool have_max_completion_tokens = false;
  for (auto field : obj) {
    std::string_view key;
    if (field.unescaped_key().get(key) != simdjson::SUCCESS) return bad(err, "Invalid JSON body");
    od::value v;
    if (field.value().get(v) != simdjson::SUCCESS) return bad(err, "Invalid JSON body");
    if (key == "model") {
      std::string_view m;
      if (v.get_string().get(m) != simdjson::SUCCESS) return bad(err, "'model' must be a string");
      req->model.assign(m);
    } else if (key == "stream") {
      if (!read_opt_bool(v, &req->stream)) return bad(err, "'stream' must be a boolean");
    } else if (key == "priority") {
      bool have_priority = false;
      if (!read_opt_int(v, &req->priority, &have_priority)) {
        return bad(err, "'priority' must be an integer");
      }
    } else if (key == "ignore_eos") {
      if (!read_opt_bool(v, &req->ignore_eos)) return bad(err, "'ignore_eos' must be a boolean");
    } else if (key == "max_tokens") {
      if (!read_opt_int(v, &max_tokens, &have_max_tokens)) {
        return bad(err, "'max_tokens' must be an integer");
      }
    } else if (key == "max_completion_tokens") {
      if (!read_opt_int(v, &max_completion_tokens, &have_max_completion_tokens)) {
        return bad(err, "'max_completion_tokens' must be an integer");
      }
    } else if (key == "stream_options") {
      od::json_type t;
      if (v.type().get(t) != simdjson::SUCCESS) return bad(err, "Invalid JSON body");
      if (t == od::json_type::null) continue;
      od::object so;
      if (v.get_object().get(so) != simdjson::SUCCESS) {
        return bad(err, "'stream_options' must be an object");
      }
      for (auto f : so) {
        std::string_view k;
        if (f.unescaped_key().get(k) != simdjson::SUCCESS) return bad(err, "Invalid JSON body");
        if (k != "include_usage") continue;
        if (!read_opt_bool(f.value(), &req->include_usage)) {
          return bad(err, "'include_usage' must be a boolean");
        }
      }
    } else if (ep == Endpoint::chat && key == "messages") {
      if (!read_messages(v, req, err)) return false;
      have_input = true;
    } else if (ep == Endpoint::completion && key == "prompt") {
      if (!read_prompt(v, req, err, false)) return false;
      have_input = true;
    }
  }
  if (!have_input) {
    return bad(err,
               ep == Endpoint::chat ? "Field required: 'messages'" : "Field required: 'prompt'");
  }
  // max_completion_tokens wins over the legacy max_tokens, as in vLLM.
  const int64_t chosen = have_max_completion_tokens ? max_completion_tokens : max_tokens;
  if (have_max_completion_tokens || have_max_tokens) {
    if (chosen < 1) {
      return bad(err, "max_tokens must be at least 1, got " + std::to_string(chosen) + ".");
    }
    req->max_tokens = chosen;
  }
  return true;
}

void append_error_body(std::string* out, const ApiError& err) {
  out->append("{\"error\":{\"message\":\"");
  json_escape_append(out, err.message);
  out->append("\",\"type\":\"");
  out->append(err.type);
  char buf[48];
  int n = std::snprintf(buf, sizeof buf, "\",\"param\":null,\"code\":%d}}", err.status);
  out->append(buf, n);
}

void build_head(std::string* head, Endpoint ep, bool stream, std::string_view id, int64_t created,
                std::string_view model) {
  head->clear();
  if (stream) head->append("data: ");
  head->append("{\"id\":\"");
  json_escape_append(head, id);
  head->append("\",\"object\":\"");
  if (ep == Endpoint::chat) {
    head->append(stream ? "chat.completion.chunk" : "chat.completion");
  } else {
    head->append("text_completion");
  }
  char buf[32];
  int n = std::snprintf(buf, sizeof buf, "\",\"created\":%" PRId64, created);
  head->append(buf, n);
  head->append(",\"model\":\"");
  json_escape_append(head, model);
  head->append("\",\"choices\":[");
}

const EventPieces& event_pieces(Endpoint ep) {
  return ep == Endpoint::chat ? kChatPieces : kCompletionPieces;
}

size_t format_usage_tail(char* buf, size_t cap, uint32_t prompt, uint32_t completion) {
  int n = std::snprintf(buf, cap,
                        "],\"usage\":{\"prompt_tokens\":%u,\"total_tokens\":%u,"
                        "\"completion_tokens\":%u}}\n\n",
                        prompt, prompt + completion, completion);
  TR_ASSERT(n > 0 && static_cast<size_t>(n) < cap);
  return static_cast<size_t>(n);
}

void append_full_body(std::string* out, Endpoint ep, std::string_view head,
                      std::string_view escaped_text, FinishReason reason, uint32_t prompt,
                      uint32_t completion) {
  out->append(head);
  if (ep == Endpoint::chat) {
    out->append(
        "{\"index\":0,\"message\":{\"role\":\"assistant\",\"reasoning_content\":null,"
        "\"content\":\"");
    out->append(escaped_text);
    out->append("\",\"tool_calls\":[]},\"logprobs\":null,\"finish_reason\":\"");
    out->append(reason_name(reason));
    out->append("\",\"stop_reason\":null}],");
    append_usage(out, prompt, completion, true);
    out->append(",\"prompt_logprobs\":null,\"kv_transfer_params\":null}");
  } else {
    out->append("{\"index\":0,\"text\":\"");
    out->append(escaped_text);
    out->append("\",\"logprobs\":null,\"finish_reason\":\"");
    out->append(reason_name(reason));
    out->append("\",\"stop_reason\":null,\"prompt_logprobs\":null}],");
    append_usage(out, prompt, completion, true);
    out->append(",\"kv_transfer_params\":null}");
  }
}

namespace {

// One ModelCard. A base model card has max_model_len and no parent; an
// adapter card has a parent and max_model_len null, as vLLM's
// show_available_models() builds them.
void append_model_card(std::string* out, std::string_view id, std::string_view root,
                       std::string_view parent, uint32_t max_model_len, int64_t created,
                       uint64_t seed) {
  char buf[96];
  out->append("{\"id\":\"");
  json_escape_append(out, id);
  int n = std::snprintf(buf, sizeof buf, "\",\"object\":\"model\",\"created\":%" PRId64, created);
  out->append(buf, n);
  out->append(",\"owned_by\":\"vllm\",\"root\":\"");
  json_escape_append(out, root);
  if (parent.empty()) {
    out->append("\",\"parent\":null");
  } else {
    out->append("\",\"parent\":\"");
    json_escape_append(out, parent);
    out->push_back('"');
  }
  if (max_model_len > 0) {
    n = std::snprintf(buf, sizeof buf, ",\"max_model_len\":%u", max_model_len);
    out->append(buf, n);
  } else {
    out->append(",\"max_model_len\":null");
  }
  const uint64_t h1 = hash_bytes(id.data(), id.size(), seed);
  const uint64_t h2 = mix64(h1);
  n = std::snprintf(buf, sizeof buf,
                    ",\"permission\":[{\"id\":\"modelperm-%016" PRIx64 "%016" PRIx64 "\"", h1, h2);
  out->append(buf, n);
  n = std::snprintf(buf, sizeof buf, ",\"object\":\"model_permission\",\"created\":%" PRId64,
                    created);
  out->append(buf, n);
  out->append(
      ",\"allow_create_engine\":false,\"allow_sampling\":true,\"allow_logprobs\":true,"
      "\"allow_search_indices\":false,\"allow_view\":true,\"allow_fine_tuning\":false,"
      "\"organization\":\"*\",\"group\":null,\"is_blocking\":false}]}");
}

}  // namespace

void append_models_body(std::string* out, const std::vector<std::string>& models,
                        const std::vector<LoraModule>& adapters, int64_t created,
                        uint32_t max_model_len, uint64_t seed) {
  TR_ASSERT(!models.empty());
  out->append("{\"object\":\"list\",\"data\":[");
  for (size_t i = 0; i < models.size(); ++i) {
    if (i > 0) out->push_back(',');
    append_model_card(out, models[i], models[i], "", max_model_len, created, seed);
  }
  for (const LoraModule& a : adapters) {
    out->push_back(',');
    append_model_card(out, a.name, a.path, models.front(), 0, created, seed);
  }
  out->append("]}");
}

}  // namespace tr::sim
