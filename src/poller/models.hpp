// OpenAI /v1/models lists: parse one replica's answer, merge several into the
// list the proxy serves. Pure code (simdjson, no I/O), tested without sockets.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace tr::poller {

inline constexpr size_t kModelsPerReplicaMax = 1024;  // entries beyond are dropped
inline constexpr size_t kModelIdBytesMax = 1024;      // longer ids: entry dropped

struct ModelEntry {
  std::string id;      // "id" of the entry
  std::string json;    // the entry's object exactly as the replica wrote it
  std::string parent;  // "parent" (vLLM: a LoRA adapter's base model); "" when null or absent

  bool operator==(const ModelEntry&) const = default;
};

struct ModelsParseResult {
  size_t skipped = 0;  // entries without a usable string "id", repeats, or over the bound
};

// Parses a /v1/models body ({"object":"list","data":[{...,"id":"m",...},...]}).
// On success returns true and replaces *out with the entries of "data" in body
// order, keeping the first of repeated ids; entries that are not objects with a
// string "id" are skipped and counted in *res. Returns false, leaving *out
// untouched, with a short reason in *why when the body is not such a JSON
// document. Never throws on bad input.
bool parse_models(std::string_view body, std::vector<ModelEntry>* out, ModelsParseResult* res,
                  std::string* why);

// The same models, ignoring the JSON text: vLLM stamps a new "created" on
// every answer, which is not a change.
bool same_models(const std::vector<ModelEntry>& a, const std::vector<ModelEntry>& b);

// Writes {"object":"list","data":[...]} to *out: the union of <lists> in order,
// deduplicated by id (first list wins), each entry re-emitted as its original
// text, then the <extra> entries (JSON objects) whose id is not listed yet.
// Null lists (replicas that are down) are skipped.
void merge_models(const std::vector<const std::vector<ModelEntry>*>& lists, std::string* out,
                  const std::vector<ModelEntry>& extra = {});

}  // namespace tr::poller
