#include "models/catalog.hpp"

#include <algorithm>
#include <iterator>

namespace tr::models {

uint32_t SlotNames::slot(std::string_view name) {
  std::lock_guard<std::mutex> lock(write_mu_);
  size_t n = size_.load(std::memory_order_relaxed);
  for (size_t i = 0; i < n; ++i) {
    if (names_[i] == name) return static_cast<uint32_t>(i);
  }
  if (n >= kStatsSlots) return kOtherSlot;
  names_[n].assign(name);
  size_.store(n + 1, std::memory_order_release);
  return static_cast<uint32_t>(n);
}

std::shared_ptr<const Catalog> Catalog::build(const std::vector<ReplicaModels>& replicas,
                                              const std::vector<ModelConfig>& aliases,
                                              SlotNames* slots) {
  auto c = std::make_shared<Catalog>();
  // Configured names take the first metrics slots, in file order.
  for (const ModelConfig& a : aliases) {
    slots->slot(a.name);
    for (const ModelTarget& t : a.targets)
      slots->slot(t.model);
  }
  for (uint32_t r = 0; r < replicas.size(); ++r) {
    c->all_.push_back(r);
    if (!replicas[r].known) {
      c->unknown_.push_back(r);
      continue;
    }
    for (const ReplicaModels::Entry& e : replicas[r].entries) {
      auto it = std::lower_bound(c->models_.begin(), c->models_.end(), e.id,
                                 [](const Model& m, const std::string& id) { return m.id < id; });
      if (it == c->models_.end() || it->id != e.id) {
        it = c->models_.insert(it, Model{.id = e.id, .parent = e.parent});
      }
      if (it->replicas.empty() || it->replicas.back() != r) it->replicas.push_back(r);
    }
  }
  for (uint32_t i = 0; i < c->models_.size(); ++i) {
    Model& m = c->models_[i];
    m.slot = slots->slot(m.id);
    if (m.parent.empty()) {
      ++c->base_models_;
      c->sole_base_ = c->base_models_ == 1 ? i : kNone;
    }
  }
  // With one base model served, a replica whose list is not known most likely
  // serves it too (it just came up, or its /v1/models fails): it stays in
  // every pool. With several, it could be any of them: only unknown names go there.
  if (c->base_models_ == 1 && !c->unknown_.empty()) {
    for (Model& m : c->models_) {
      std::vector<uint32_t> merged;
      std::merge(m.replicas.begin(), m.replicas.end(), c->unknown_.begin(), c->unknown_.end(),
                 std::back_inserter(merged));
      m.replicas = std::move(merged);
    }
  }
  for (const ModelConfig& mc : aliases) {
    Alias a;
    a.name = mc.name;
    a.slot = slots->slot(mc.name);
    for (const ModelTarget& t : mc.targets) {
      const Model* m = c->find(t.model);
      a.targets.push_back(
          Alias::Target{.name = t.model,
                        .model = m ? static_cast<uint32_t>(m - c->models_.data()) : kNone,
                        .weight = t.weight});
    }
    c->aliases_.push_back(std::move(a));
  }
  std::sort(c->aliases_.begin(), c->aliases_.end(),
            [](const Alias& x, const Alias& y) { return x.name < y.name; });
  // The names a client may use, for messages.
  size_t shown = 0;
  auto add = [&](const std::string& name) {
    if (shown == kAvailableShownMax) {
      c->available_ += ", ...";
      ++shown;
    }
    if (shown > kAvailableShownMax) return;
    if (shown) c->available_ += ", ";
    c->available_ += name;
    ++shown;
  };
  for (const Model& m : c->models_)
    add(m.id);
  for (const Alias& a : c->aliases_)
    add(a.name);
  return c;
}

const Model* Catalog::find(std::string_view id) const {
  auto it = std::lower_bound(models_.begin(), models_.end(), id,
                             [](const Model& m, std::string_view key) { return m.id < key; });
  return it != models_.end() && it->id == id ? &*it : nullptr;
}

const Alias* Catalog::find_alias(std::string_view name) const {
  auto it = std::lower_bound(aliases_.begin(), aliases_.end(), name,
                             [](const Alias& a, std::string_view key) { return a.name < key; });
  return it != aliases_.end() && it->name == name ? &*it : nullptr;
}

Resolution Catalog::resolve_model(std::string_view model) const {
  if (const Model* m = find(model))
    return Resolution{.pool = m->replicas, .model = m, .slot = m->slot};
  // Not served by any replica we know of: those we know nothing about may.
  if (!unknown_.empty()) return Resolution{.pool = unknown_, .slot = kOtherSlot};
  return Resolution{.kind = Resolution::Kind::unknown_model, .slot = kOtherSlot};
}

}  // namespace tr::models
