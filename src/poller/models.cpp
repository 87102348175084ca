#include "poller/models.hpp"

#include <simdjson.h>

#include <string_view>
#include <unordered_set>

namespace tr::poller {

namespace {

std::string_view trim_right(std::string_view s) {
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

}  // namespace

bool parse_models(std::string_view body, std::vector<ModelEntry>* out, ModelsParseResult* res,
                  std::string* why) {
  namespace od = simdjson::ondemand;
  *res = ModelsParseResult{};
  simdjson::padded_string json(body);
  od::parser parser;
  od::document doc;
  if (auto e = parser.iterate(json).get(doc)) {
    *why = simdjson::error_message(e);
    return false;
  }
  od::object root;
  if (doc.get_object().get(root)) {
    *why = "body is not a JSON object";
    return false;
  }
  od::array data;
  if (root.find_field_unordered("data").get_array().get(data)) {
    *why = "no \"data\" array";
    return false;
  }
  std::vector<ModelEntry> entries;
  std::unordered_set<std::string> seen;
  for (auto item : data) {
    od::value v;
    if (auto e = item.get(v)) {
      *why = simdjson::error_message(e);
      return false;
    }
    od::json_type type;
    if (auto e = v.type().get(type)) {
      *why = simdjson::error_message(e);
      return false;
    }
    if (type != od::json_type::object) {
      ++res->skipped;  // on demand skips the unread value when the loop moves on
      continue;
    }
    od::object obj;
    if (auto e = v.get_object().get(obj)) {
      *why = simdjson::error_message(e);
      return false;
    }
    std::string_view id;
    auto id_error = obj.find_field_unordered("id").get_string().get(id);
    std::string id_copy;
    if (!id_error) id_copy.assign(id);  // id lives in the parser's buffer: copy now
    if (auto e = obj.reset().error()) {
      *why = simdjson::error_message(e);
      return false;
    }
    std::string_view parent;
    std::string parent_copy;
    if (!obj.find_field_unordered("parent").get_string().get(parent) &&
        parent.size() <= kModelIdBytesMax) {
      parent_copy.assign(parent);
    }
    if (auto e = obj.reset().error()) {
      *why = simdjson::error_message(e);
      return false;
    }
    std::string_view raw;
    if (auto e = obj.raw_json().get(raw)) {
      *why = simdjson::error_message(e);
      return false;
    }
    if (id_error || id_copy.empty() || id_copy.size() > kModelIdBytesMax ||
        entries.size() >= kModelsPerReplicaMax || seen.count(id_copy) != 0) {
      ++res->skipped;
      continue;
    }
    seen.insert(id_copy);
    entries.push_back(
        ModelEntry{std::move(id_copy), std::string(trim_right(raw)), std::move(parent_copy)});
  }
  out->swap(entries);
  return true;
}

bool same_models(const std::vector<ModelEntry>& a, const std::vector<ModelEntry>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].id != b[i].id || a[i].parent != b[i].parent) return false;
  }
  return true;
}

void merge_models(const std::vector<const std::vector<ModelEntry>*>& lists, std::string* out,
                  const std::vector<ModelEntry>& extra) {
  out->assign("{\"object\":\"list\",\"data\":[");
  std::unordered_set<std::string_view> seen;
  bool first = true;
  for (const std::vector<ModelEntry>* list : lists) {
    if (list == nullptr) continue;
    for (const ModelEntry& m : *list) {
      if (!seen.insert(m.id).second) continue;
      if (!first) out->push_back(',');
      out->append(m.json);
      first = false;
    }
  }
  for (const ModelEntry& m : extra) {
    if (!seen.insert(m.id).second) continue;
    if (!first) out->push_back(',');
    out->append(m.json);
    first = false;
  }
  out->append("]}");
}

}  // namespace tr::poller
