// The admin endpoint: GET /health and GET /metrics (Prometheus text format,
// version 0.0.4) on its own listener, served by one small thread. It only reads
// what workers and the poller publish (atomics); it never touches a connection.
#pragma once

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "proxy/stats.hpp"
#include "scores/table.hpp"
#include "tokenrelay/config.hpp"

namespace tr::admin {

struct Sources {
  const Config* cfg = nullptr;
  const scores::Table* table = nullptr;
  std::vector<const proxy::WorkerStats*> workers;
  std::string io_backend;  // "io_uring" or "epoll", for tokenrelay_build_info
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

  // Binds <addr> and starts the thread. <src> must outlive the server.
  bool start(const SockAddr& addr, const Sources* src, std::string* err);
  // The port actually bound (useful with port 0).
  uint16_t port() const { return port_; }
  void stop();

 private:
  void run();
  void serve_one(int fd);

  const Sources* src_ = nullptr;
  int listen_fd_ = -1;
  int stop_fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

}  // namespace tr::admin
