// The poller: one background thread per process that watches every replica.
//
// Today it checks health (GET {base_path}/health) and fetches the model list
// (GET {base_path}/v1/models); the next issue adds /metrics scraping on the same
// thread and the same HttpClient (one more channel, one more schedule). Health
// goes into the shared replica table (scores::Table); model lists are published
// as immutable snapshots that worker threads read without locks.
//
// Threads: the constructor, poll_once(), start(), stop() and the destructor are
// called by the owner (main) thread; models_json() and models_by_replica() may
// be called from any thread at any time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tokenrelay/config.hpp"

namespace tr::scores {
class Table;
}
namespace tr::models {
class CatalogCell;
class SlotNames;
}  // namespace tr::models

namespace tr::poller {

inline constexpr int64_t kModelsIntervalMs = 5000;
// Hysteresis (a later issue makes these configurable): consecutive results
// needed to change state. With 1, a single result decides.

using ModelsByReplica = std::vector<std::vector<std::string>>;

class Poller {
 public:
  // <table> must outlive the poller and have one slot per cfg.backends entry.
  // Copies what it needs from <cfg>. Aborts if an eventfd or epoll set cannot
  // be created (start-up only).
  Poller(const tr::Config& cfg, tr::scores::Table* table);
  ~Poller();  // stops and joins
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  // One health round and one /v1/models round against every replica,
  // concurrently, on the calling thread; returns when all have answered or
  // cfg.poller.timeout_ms has passed. Must not be called while the thread runs.
  void poll_once();
  // Before poll_once()/start(): replica <i> starts up (or down) instead of
  // unknown, so rise/fall apply from the first check (a reload seeds the
  // replicas it keeps from the running configuration; otherwise the first
  // check decides). Must not be called while the thread runs.
  void seed_health(uint32_t i, bool up);
  // Before poll_once()/start(): publish the model pools (models/catalog.hpp)
  // into <cell> whenever a replica's model list changes, with metrics slots
  // from <slots> (the poller becomes their single writer). Both must outlive
  // the poller. Publishes the configured pools at once.
  void set_catalog(models::CatalogCell* cell, models::SlotNames* slots);
  // Starts the thread: health every cfg.poller.health_interval_ms, /v1/models
  // every kModelsIntervalMs from replicas that are up and at once when a
  // replica comes up. Must not be called while the thread runs.
  void start();
  // Idempotent: wakes the thread and joins it. Requests still in flight are
  // abandoned (their sockets stay with the poller until it is destroyed or
  // restarted). Not safe to call from two threads at once.
  void stop();

  // {"object":"list","data":[...]}: union of the "data" entries of replicas that
  // are up, deduplicated by "id" (first replica in config order wins), each entry
  // its original JSON text. Never null; an empty list until something is known.
  std::shared_ptr<const std::string> models_json() const;
  // Model ids per replica, in config order, from each replica's last good
  // /v1/models answer whatever its health now (empty if never fetched). Routing
  // combines it with the table's up flags. Never null.
  std::shared_ptr<const ModelsByReplica> models_by_replica() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tr::poller
