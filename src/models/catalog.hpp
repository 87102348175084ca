// Model pools: which replicas serve which model, and the [model NAME] aliases
// that split traffic between served models. Pure code (no I/O, no clocks).
//
// The poller builds a Catalog from what each replica's /v1/models lists (or
// what its `models =` key says) whenever that changes, and publishes it in a
// CatalogCell. Workers keep the Catalog they last took and look at the cell's
// version once per request: one acquire load, no lock, unless it changed.
//
// A request is routed only among the replicas of its model's pool:
//  - "model" names a served model (base model or LoRA adapter): its replicas;
//  - "model" names a [model NAME] alias: one of its targets, weighted random,
//    and the body's "model" is rewritten to that target;
//  - "model" is absent (JSON body without it): the only base model's pool
//    when exactly one base model is served, else the request is refused (400);
//  - "model" is not served anywhere: 404 naming the models that are, unless a
//    replica's list is not known yet (then those replicas may serve it).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenrelay/config.hpp"

namespace tr::models {

// Models with a metrics series of their own, for the life of the process
// (configured names first, then discovered ones as they appear); the rest
// share the series model="other". Bounds the label values.
inline constexpr size_t kStatsSlots = 64;
inline constexpr uint32_t kOtherSlot = kStatsSlots;  // index of the shared series
inline constexpr uint32_t kNone = UINT32_MAX;
// Names in the "available models" part of a 404 message.
inline constexpr size_t kAvailableShownMax = 32;

// Names of the per-model metrics slots, for the life of the process (shared
// by the pollers of successive configurations). Writers (catalog builds:
// rare) take a mutex; readers (the admin thread) take none: a name, once
// published, never changes, and <size> is released after it is written.
class SlotNames {
 public:
  // The slot of <name>, added when there is room; kOtherSlot when full.
  uint32_t slot(std::string_view name);
  // Any thread.
  size_t size() const { return size_.load(std::memory_order_acquire); }
  const std::string& name(size_t i) const { return names_[i]; }

 private:
  std::mutex write_mu_;
  std::array<std::string, kStatsSlots> names_;
  std::atomic<size_t> size_{0};
};

// What one replica serves, as last learned.
struct ReplicaModels {
  bool known = false;  // configured, or a good /v1/models answer was seen
  struct Entry {
    std::string id;
    std::string parent;  // LoRA adapter: its base model; "" = a base model
  };
  std::vector<Entry> entries;
};

struct Model {
  std::string id;
  std::string parent;              // "" = base model; else this is an adapter of <parent>
  std::vector<uint32_t> replicas;  // replicas serving it, ascending
  uint32_t slot = kOtherSlot;      // metrics slot
};

struct Alias {
  std::string name;
  struct Target {
    std::string name;
    uint32_t model = kNone;  // index into Catalog::models(); kNone = not served now
    uint32_t weight = 1;
  };
  std::vector<Target> targets;
  uint32_t slot = kOtherSlot;
};

// Where a request goes, decided from its "model".
struct Resolution {
  enum class Kind : uint8_t {
    pool,            // route among <pool>
    unknown_model,   // 404
    model_required,  // 400: no "model" and several base models
  };
  Kind kind = Kind::pool;
  std::span<const uint32_t> pool;  // replicas to rank (valid while the Catalog lives)
  const Model* model = nullptr;    // the served model chosen (nullptr: unknown)
  std::string_view rewrite;        // alias: the target to write into the body ("" = none)
  uint32_t slot = kNone;           // metrics slot of the name the client used; kNone = no model
};

class Catalog {
 public:
  Catalog() = default;
  // <replicas> in config order. Aliases come from the configuration.
  // <slots> gives metrics slots (new names are added to it).
  static std::shared_ptr<const Catalog> build(const std::vector<ReplicaModels>& replicas,
                                              const std::vector<ModelConfig>& aliases,
                                              SlotNames* slots);

  const std::vector<Model>& models() const { return models_; }
  const std::vector<Alias>& aliases() const { return aliases_; }
  const Model* find(std::string_view id) const;
  const Alias* find_alias(std::string_view name) const;
  // Replicas whose model list is not known (no answer yet, not configured).
  std::span<const uint32_t> unknown_replicas() const { return unknown_; }
  std::span<const uint32_t> all_replicas() const { return all_; }
  // "a, b, c": the served models and aliases, for error messages (bounded).
  const std::string& available() const { return available_; }
  size_t base_models() const { return base_models_; }

  // The pool for a request whose body names <model> (<has_model> false: the
  // body is JSON without "model"; <json> false: not a JSON body at all).
  // <pick> in [0, 1) chooses an alias target by weight; <usable>(replica)
  // says whether a replica can take a request now, so an alias falls back to
  // its other targets when the chosen one has no usable replica.
  template <class Usable>
  Resolution resolve(bool json, bool has_model, std::string_view model, double pick,
                     Usable usable) const;

 private:
  Resolution resolve_model(std::string_view model) const;

  std::vector<Model> models_;   // sorted by id
  std::vector<Alias> aliases_;  // sorted by name
  std::vector<uint32_t> unknown_;
  std::vector<uint32_t> all_;
  std::string available_;
  size_t base_models_ = 0;
  uint32_t sole_base_ = kNone;  // index of the only base model, when exactly one
};

// The latest Catalog, published by one thread, read by many.
class CatalogCell {
 public:
  CatalogCell() : current_(std::make_shared<const Catalog>()) {}
  void publish(std::shared_ptr<const Catalog> c) {
    std::lock_guard<std::mutex> lock(mu_);
    current_ = std::move(c);
    version_.fetch_add(1, std::memory_order_release);
  }
  uint64_t version() const { return version_.load(std::memory_order_acquire); }
  // The latest catalog (takes the lock: for readers off the request path).
  std::shared_ptr<const Catalog> current() const {
    std::lock_guard<std::mutex> lock(mu_);
    return current_;
  }
  // Refreshes *cached when the cell changed since *seen. The lock is taken
  // only then (a few times a minute at most).
  void refresh(std::shared_ptr<const Catalog>* cached, uint64_t* seen) const {
    uint64_t v = version();
    if (v == *seen && *cached) return;
    std::lock_guard<std::mutex> lock(mu_);
    *cached = current_;
    *seen = version_.load(std::memory_order_relaxed);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const Catalog> current_;
  std::atomic<uint64_t> version_{1};
};

template <class Usable>
Resolution Catalog::resolve(bool json, bool has_model, std::string_view model, double pick,
                            Usable usable) const {
  if (!json) return Resolution{.pool = all_};
  if (!has_model) {
    if (sole_base_ != kNone) {
      const Model& m = models_[sole_base_];
      return Resolution{.pool = m.replicas, .model = &m, .slot = m.slot};
    }
    if (base_models_ == 0) return Resolution{.pool = all_};  // nothing known yet
    return Resolution{.kind = Resolution::Kind::model_required};
  }
  const Alias* a = find_alias(model);
  if (a == nullptr) return resolve_model(model);
  // Weighted choice among the targets that are served; if the chosen one has
  // no usable replica, the next served target (in order) that has one.
  uint64_t total = 0;
  for (const Alias::Target& t : a->targets)
    total += t.model != kNone ? t.weight : 0;
  if (total == 0) return Resolution{.kind = Resolution::Kind::unknown_model, .slot = a->slot};
  double x = pick * static_cast<double>(total);
  size_t chosen = 0;
  for (size_t i = 0; i < a->targets.size(); ++i) {
    const Alias::Target& t = a->targets[i];
    if (t.model == kNone) continue;
    chosen = i;
    if (x < t.weight) break;
    x -= t.weight;
  }
  for (size_t k = 0; k < a->targets.size(); ++k) {
    const Alias::Target& t = a->targets[(chosen + k) % a->targets.size()];
    if (t.model == kNone) continue;
    const Model& m = models_[t.model];
    bool any = false;
    for (uint32_t r : m.replicas) {
      if (usable(r)) {
        any = true;
        break;
      }
    }
    if (any || k + 1 == a->targets.size()) {
      return Resolution{.pool = m.replicas, .model = &m, .rewrite = t.name, .slot = a->slot};
    }
  }
  const Model& m = models_[a->targets[chosen].model];  // none usable: let routing say 503
  return Resolution{
      .pool = m.replicas, .model = &m, .rewrite = a->targets[chosen].name, .slot = a->slot};
}

}  // namespace tr::models
