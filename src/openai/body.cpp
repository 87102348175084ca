// BodyInspector: one forward pass over an OpenAI request body with simdjson's
// on-demand API. Every read goes through error codes; a type mismatch on a
// field we look at is "absent" (the replica will reject the request itself),
// while a syntax error anywhere we read makes the whole body "not JSON".
#include "openai/body.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>

#include "core/assert.hpp"

namespace tr {

namespace {

namespace od = simdjson::ondemand;
using simdjson::error_code;
using simdjson::SUCCESS;

#define TR_JSON_TRY(expr)                             \
  do {                                                \
    error_code tr_json_err_ = (expr);                 \
    if (tr_json_err_ != SUCCESS) return tr_json_err_; \
  } while (0)

// Characters of prompt text, by the classes tokenizers treat differently.
struct TextCounts {
  uint64_t chars = 0;    // code points
  uint64_t wide = 0;     // of them: 3- and 4-byte UTF-8 sequences
  uint64_t symbols = 0;  // of them: ASCII punctuation, tab, newline
};

// What one pass collects before it is copied into RequestFacts.
struct Acc {
  bool stream = false;
  bool include_usage = false;
  int64_t max_completion_tokens = -1;
  int64_t max_tokens = -1;
  TextCounts prompt_text;         // from "prompt"
  uint64_t prompt_token_ids = 0;  // from "prompt"
  TextCounts message_text;        // from "messages"
  uint32_t messages = 0;
  bool has_priority = false;
  int64_t priority = 0;
  std::string_view model_token;     // the raw "model" string token, in the parsed buffer
  std::string_view priority_value;  // the raw "priority" value token
};

// Counts a valid UTF-8 string (simdjson validated the whole body): code
// points are the bytes that are not continuation bytes (10xxxxxx); wide ones
// are those of three or four bytes (lead byte >= 0xE0: CJK, kana, Hangul,
// emoji, most symbols), which BPE tokenizers cut ~1 per token or finer;
// symbols are ASCII punctuation, tabs and newlines (code, markup), cut finer
// than words. Branch-free sums the compiler vectorizes.
void count_text(std::string_view s, TextCounts* out) {
  uint64_t chars = 0;
  uint64_t wide = 0;
  uint64_t symbols = 0;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    chars += (c & 0xC0) != 0x80;
    wide += c >= 0xE0;
    symbols += (c >= 0x21 && c <= 0x2F) | (c >= 0x3A && c <= 0x40) | (c >= 0x5B && c <= 0x60) |
               (c >= 0x7B && c <= 0x7E) | (c == '\n') | (c == '\t');
  }
  out->chars += chars;
  out->wide += wide;
  out->symbols += symbols;
}

// An array element as a value, without exceptions.
error_code unwrap(const simdjson::simdjson_result<od::value>& element, od::value* out) {
  TR_JSON_TRY(element.error());
  *out = element.value_unsafe();
  return SUCCESS;
}

error_code type_of(od::value& v, od::json_type* t) {
  return v.type().get(*t);
}

// Adds the characters of a string value to *chars; other types add nothing.
error_code add_string_chars(od::value& v, TextCounts* chars) {
  od::json_type t;
  TR_JSON_TRY(type_of(v, &t));
  if (t != od::json_type::string) return SUCCESS;
  std::string_view s;
  TR_JSON_TRY(v.get_string().get(s));
  count_text(s, chars);
  return SUCCESS;
}

// true only for JSON true.
error_code read_bool(od::value& v, bool* out) {
  od::json_type t;
  TR_JSON_TRY(type_of(v, &t));
  *out = false;
  if (t != od::json_type::boolean) return SUCCESS;
  return v.get_bool().get(*out);
}

// An integral JSON number: integers, and floats with an exact integral value
// (pydantic accepts 100.0 for an int); above INT64_MAX clamps. *ok = false for
// anything else (other types, fractions, out of range).
error_code read_integer(od::value& v, int64_t* out, bool* ok) {
  *ok = false;
  od::json_type t;
  TR_JSON_TRY(type_of(v, &t));
  if (t != od::json_type::number) return SUCCESS;
  od::number n;
  TR_JSON_TRY(v.get_number().get(n));
  constexpr double kExactMax = 9007199254740992.0;  // 2^53
  switch (n.get_number_type()) {
    case od::number_type::signed_integer:
      *out = n.get_int64();
      *ok = true;
      break;
    case od::number_type::unsigned_integer:
      *out = std::numeric_limits<int64_t>::max();
      *ok = true;
      break;
    case od::number_type::floating_point_number: {
      double d = n.get_double();
      if (std::fabs(d) <= kExactMax && d == std::floor(d)) {
        *out = static_cast<int64_t>(d);
        *ok = true;
      }
      break;
    }
  }
  return SUCCESS;
}

// A token count: a non-negative integer; anything else is -1.
error_code read_count(od::value& v, int64_t* out) {
  bool ok = false;
  TR_JSON_TRY(read_integer(v, out, &ok));
  if (!ok || *out < 0) *out = -1;
  return SUCCESS;
}

// "priority": an integer, as vLLM takes it; anything else is absent.
error_code read_priority(od::value& v, Acc* acc) {
  acc->priority = 0;
  TR_JSON_TRY(read_integer(v, &acc->priority, &acc->has_priority));
  if (!acc->has_priority) acc->priority = 0;
  return SUCCESS;
}

error_code read_stream_options(od::value& v, Acc* acc) {
  od::json_type t;
  TR_JSON_TRY(type_of(v, &t));
  if (t != od::json_type::object) return SUCCESS;
  od::object obj;
  TR_JSON_TRY(v.get_object().get(obj));
  for (auto field : obj) {
    std::string_view key;
    TR_JSON_TRY(field.unescaped_key().get(key));
    if (key != "include_usage") continue;  // the value is skipped by the next step
    od::value fv;
    TR_JSON_TRY(field.value().get(fv));
    TR_JSON_TRY(read_bool(fv, &acc->include_usage));
  }
  return SUCCESS;
}

// Numbers in an array (token ids); other elements are skipped.
error_code count_numbers(od::value& v, uint64_t* count) {
  od::array arr;
  TR_JSON_TRY(v.get_array().get(arr));
  for (auto element : arr) {
    od::value item;
    TR_JSON_TRY(unwrap(element, &item));
    od::json_type t;
    TR_JSON_TRY(type_of(item, &t));
    if (t == od::json_type::number) ++*count;
  }
  return SUCCESS;
}

// "prompt": a string, an array of strings, an array of token ids, or an array
// of arrays of token ids (each element is judged on its own).
error_code read_prompt(od::value& v, Acc* acc) {
  acc->prompt_text = TextCounts{};
  acc->prompt_token_ids = 0;
  od::json_type t;
  TR_JSON_TRY(type_of(v, &t));
  if (t == od::json_type::string) return add_string_chars(v, &acc->prompt_text);
  if (t != od::json_type::array) return SUCCESS;
  od::array arr;
  TR_JSON_TRY(v.get_array().get(arr));
  for (auto element : arr) {
    od::value item;
    TR_JSON_TRY(unwrap(element, &item));
    od::json_type it;
    TR_JSON_TRY(type_of(item, &it));
    switch (it) {
      case od::json_type::string:
        TR_JSON_TRY(add_string_chars(item, &acc->prompt_text));
        break;
      case od::json_type::number:
        ++acc->prompt_token_ids;
        break;
      case od::json_type::array:
        TR_JSON_TRY(count_numbers(item, &acc->prompt_token_ids));
        break;
      default:
        break;
    }
  }
  return SUCCESS;
}

// One content part: counts "text" when "type" is "text", in either order.
error_code read_part(od::value& v, TextCounts* chars) {
  od::json_type t;
  TR_JSON_TRY(type_of(v, &t));
  if (t != od::json_type::object) return SUCCESS;
  od::object obj;
  TR_JSON_TRY(v.get_object().get(obj));
  bool is_text = false;
  TextCounts text_chars;
  for (auto field : obj) {
    std::string_view key;
    TR_JSON_TRY(field.unescaped_key().get(key));
    if (key == "type") {
      od::value fv;
      TR_JSON_TRY(field.value().get(fv));
      od::json_type ft;
      TR_JSON_TRY(type_of(fv, &ft));
      if (ft != od::json_type::string) continue;
      std::string_view type;
      TR_JSON_TRY(fv.get_string().get(type));
      is_text = type == "text";
    } else if (key == "text") {
      od::value fv;
      TR_JSON_TRY(field.value().get(fv));
      text_chars = TextCounts{};
      TR_JSON_TRY(add_string_chars(fv, &text_chars));
    }
  }
  if (is_text) {
    chars->chars += text_chars.chars;
    chars->wide += text_chars.wide;
    chars->symbols += text_chars.symbols;
  }
  return SUCCESS;
}

// messages[].content: a string or an array of parts.
error_code read_content(od::value& v, TextCounts* chars) {
  od::json_type t;
  TR_JSON_TRY(type_of(v, &t));
  if (t == od::json_type::string) return add_string_chars(v, chars);
  if (t != od::json_type::array) return SUCCESS;
  od::array arr;
  TR_JSON_TRY(v.get_array().get(arr));
  for (auto element : arr) {
    od::value part;
    TR_JSON_TRY(unwrap(element, &part));
    TR_JSON_TRY(read_part(part, chars));
  }
  return SUCCESS;
}

error_code read_messages(od::value& v, Acc* acc) {
  acc->messages = 0;
  acc->message_text = TextCounts{};
  od::json_type t;
  TR_JSON_TRY(type_of(v, &t));
  if (t != od::json_type::array) return SUCCESS;
  od::array arr;
  TR_JSON_TRY(v.get_array().get(arr));
  for (auto element : arr) {
    od::value message;
    TR_JSON_TRY(unwrap(element, &message));
    od::json_type mt;
    TR_JSON_TRY(type_of(message, &mt));
    if (mt != od::json_type::object) continue;
    if (acc->messages < std::numeric_limits<uint32_t>::max()) ++acc->messages;
    od::object obj;
    TR_JSON_TRY(message.get_object().get(obj));
    for (auto field : obj) {
      std::string_view key;
      TR_JSON_TRY(field.unescaped_key().get(key));
      if (key != "content") continue;
      od::value content;
      TR_JSON_TRY(field.value().get(content));
      TR_JSON_TRY(read_content(content, &acc->message_text));
    }
  }
  return SUCCESS;
}

// "model": a string, truncated to kModelBytesMax; anything else is "".
error_code read_model(od::value& v, std::string* model, std::string_view* token) {
  model->clear();
  *token = {};
  od::json_type t;
  TR_JSON_TRY(type_of(v, &t));
  if (t != od::json_type::string) return SUCCESS;
  std::string_view raw = v.raw_json_token();  // "..." plus the whitespace after it
  while (!raw.empty() && raw.back() != '"')
    raw.remove_suffix(1);
  *token = raw;
  std::string_view s;
  TR_JSON_TRY(v.get_string().get(s));
  model->assign(s.substr(0, BodyInspector::kModelBytesMax));
  return SUCCESS;
}

bool json_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// The member whose raw value token is <value> and whose key is written
// exactly <key> (quotes included): found by walking back over ':' and
// whitespace from the value. A key written with escapes is not located (the
// member is then left alone).
void locate_member(const char* buf, size_t len, std::string_view value, std::string_view key,
                   RequestFacts* out) {
  if (value.data() < buf || value.data() + value.size() > buf + len) return;
  while (!value.empty() && json_space(value.back()))
    value.remove_suffix(1);
  const char* p = value.data();
  while (p > buf && json_space(p[-1]))
    --p;
  if (p == buf || p[-1] != ':') return;
  --p;
  while (p > buf && json_space(p[-1]))
    --p;
  if (static_cast<size_t>(p - buf) < key.size() ||
      std::string_view(p - key.size(), key.size()) != key)
    return;
  const char* start = p - key.size();
  out->priority_member_offset = static_cast<uint32_t>(start - buf);
  out->priority_member_bytes = static_cast<uint32_t>(value.data() + value.size() - start);
}

void reset_facts(RequestFacts* out) {
  out->json_ok = false;
  out->stream = false;
  out->include_usage = false;
  out->model.clear();  // keeps capacity
  out->max_tokens = -1;
  out->prompt_chars = 0;
  out->prompt_wide_chars = 0;
  out->prompt_symbol_chars = 0;
  out->prompt_token_ids = 0;
  out->messages = 0;
  out->model_token_offset = 0;
  out->model_token_bytes = 0;
  out->has_priority = false;
  out->priority = 0;
  out->priority_member_offset = 0;
  out->priority_member_bytes = 0;
}

// The single pass over the top-level object. Keys are matched by length
// first; the value of any other key is skipped by the next iteration step.
error_code read_body(od::parser& parser, simdjson::padded_string_view json, Acc* acc,
                     std::string* model) {
  od::document doc;
  TR_JSON_TRY(parser.iterate(json).get(doc));
  od::object obj;
  TR_JSON_TRY(doc.get_object().get(obj));
  for (auto field : obj) {
    std::string_view key;
    TR_JSON_TRY(field.unescaped_key().get(key));
    od::value v;
    switch (key.size()) {
      case 5:  // model
        if (key != "model") break;
        TR_JSON_TRY(field.value().get(v));
        TR_JSON_TRY(read_model(v, model, &acc->model_token));
        break;
      case 6:  // stream, prompt
        if (key == "stream") {
          TR_JSON_TRY(field.value().get(v));
          TR_JSON_TRY(read_bool(v, &acc->stream));
        } else if (key == "prompt") {
          TR_JSON_TRY(field.value().get(v));
          TR_JSON_TRY(read_prompt(v, acc));
        }
        break;
      case 8:  // messages, priority
        if (key == "messages") {
          TR_JSON_TRY(field.value().get(v));
          TR_JSON_TRY(read_messages(v, acc));
        } else if (key == "priority") {
          TR_JSON_TRY(field.value().get(v));
          acc->priority_value = v.raw_json_token();
          TR_JSON_TRY(read_priority(v, acc));
        }
        break;
      case 10:  // max_tokens
        if (key != "max_tokens") break;
        TR_JSON_TRY(field.value().get(v));
        TR_JSON_TRY(read_count(v, &acc->max_tokens));
        break;
      case 14:  // stream_options
        if (key != "stream_options") break;
        TR_JSON_TRY(field.value().get(v));
        acc->include_usage = false;
        TR_JSON_TRY(read_stream_options(v, acc));
        break;
      case 21:  // max_completion_tokens
        if (key != "max_completion_tokens") break;
        TR_JSON_TRY(field.value().get(v));
        TR_JSON_TRY(read_count(v, &acc->max_completion_tokens));
        break;
      default:
        break;
    }
  }
  // Anything but whitespace after the object (a second value, a stray '}').
  const char* trailing = nullptr;
  if (doc.current_location().get(trailing) == SUCCESS) return simdjson::TRAILING_CONTENT;
  return SUCCESS;
}

}  // namespace

bool BodyInspector::inspect(const char* data, size_t len, size_t capacity, RequestFacts* out) {
  TR_ASSERT(out != nullptr);
  TR_ASSERT(data != nullptr || len == 0);
  TR_ASSERT(len <= std::numeric_limits<size_t>::max() - kPadding);
  reset_facts(out);

  const char* buf = data;
  size_t buf_capacity = capacity;
  if (capacity < len + kPadding) {
    size_t need = len + kPadding;
    if (copy_capacity_ < need) {
      size_t grown = (need + 4095) & ~size_t{4095};
      copy_.reset(new char[grown]);
      copy_capacity_ = grown;
    }
    if (len != 0) std::memcpy(copy_.get(), data, len);
    std::memset(copy_.get() + len, 0, kPadding);
    buf = copy_.get();
    buf_capacity = need;
  }

  Acc acc;
  error_code err =
      read_body(parser_, simdjson::padded_string_view(buf, len, buf_capacity), &acc, &out->model);

  // Give back what one outsized body made us allocate.
  if (parser_.capacity() > kRetainBytes) {
    error_code shrink = parser_.allocate(kRetainBytes);
    (void)shrink;  // on failure the next iterate() allocates what it needs
  }
  if (copy_capacity_ > kRetainBytes + kPadding) {
    copy_.reset();
    copy_capacity_ = 0;
  }

  if (err != SUCCESS) {
    reset_facts(out);
    return false;
  }
  out->json_ok = true;
  out->stream = acc.stream;
  out->include_usage = acc.include_usage;
  out->max_tokens = acc.max_completion_tokens >= 0 ? acc.max_completion_tokens : acc.max_tokens;
  out->prompt_chars = acc.prompt_text.chars + acc.message_text.chars;
  out->prompt_wide_chars = acc.prompt_text.wide + acc.message_text.wide;
  out->prompt_symbol_chars = acc.prompt_text.symbols + acc.message_text.symbols;
  out->prompt_token_ids = acc.prompt_token_ids;
  out->messages = acc.messages;
  out->has_priority = acc.has_priority;
  out->priority = acc.priority;
  if (acc.has_priority) locate_member(buf, len, acc.priority_value, "\"priority\"", out);
  if (!acc.model_token.empty() && acc.model_token.data() >= buf &&
      acc.model_token.data() + acc.model_token.size() <= buf + len) {
    out->model_token_offset = static_cast<uint32_t>(acc.model_token.data() - buf);
    out->model_token_bytes = static_cast<uint32_t>(acc.model_token.size());
  }
  return true;
}

}  // namespace tr
