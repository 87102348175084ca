// The admin endpoint: GET /health and GET /metrics (Prometheus text format,
// version 0.0.4) on its own listener, served by one small thread. It only reads
// what workers and the poller publish (atomics); it never touches a connection.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "models/catalog.hpp"
#include "proxy/stats.hpp"
#include "scores/table.hpp"
#include "tokenrelay/config.hpp"

namespace tr::admin {

// What the admin endpoint reads. A reload publishes a new Sources; the one a
// request started with stays valid until it is done (<owners> keeps alive what
// the pointers point to).
struct Sources {
  const Config* cfg = nullptr;           // the current configuration
  const scores::Table* table = nullptr;  // ... and its replica table
  // Every worker's counters: the current configuration's workers, those of
  // older configurations still draining after a reload, and the totals of
  // workers that have exited. Per-backend counters are added up by replica
  // name (WorkerStats::find), for the replicas of the current configuration.
  std::vector<const proxy::WorkerStats*> workers;
  size_t worker_threads = 0;  // the current configuration's workers
  uint64_t generation = 1;    // 1 at start, +1 per successful reload
  uint64_t reloads_ok = 0;
  uint64_t reloads_failed = 0;                   // refused files and generations that did not start
  double last_reload_ok_unix = 0;                // 0 = never reloaded
  std::string io_backend;                        // "io_uring" or "epoll", for tokenrelay_build_info
  const models::CatalogCell* catalog = nullptr;  // the current configuration's model pools
  const models::SlotNames* model_slots = nullptr;  // names of the per-model series
  std::vector<std::shared_ptr<const void>> owners;
};

// Renders every tokenrelay_* family. Pure: reads counters, writes text.
std::string render_metrics(const Sources& src);
// GET /status: the replica-score table as JSON: per replica the scraped values,
// scrape age, calibration, dispatch accounting, up/down and the predicted TTFT
// and completion for a reference request.
std::string render_status(const Sources& src);

class AdminServer {
 public:
  AdminServer() = default;
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds <addr> and starts the thread. publish() first: requests read what
  // was published last.
  bool start(const SockAddr& addr, std::string* err);
  // Any thread: requests from now on read <src>. A request in progress keeps
  // its Sources (and so its owners) until it is answered.
  void publish(std::shared_ptr<const Sources> src);
  // The port actually bound (useful with port 0).
  uint16_t port() const { return port_; }
  void stop();

 private:
  void run();
  void serve_one(int fd);

  std::shared_ptr<const Sources> current() const;

  mutable std::mutex mu_;
  std::shared_ptr<const Sources> src_;  // guarded by mu_
  int listen_fd_ = -1;
  int stop_fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

}  // namespace tr::admin
