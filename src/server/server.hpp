// The running process: listeners, the admin endpoint and one or more
// configuration generations. A generation is everything one configuration
// brings up: the config, API keys, access log, replica table, poller and one
// worker per CPU. It never changes once started.
//
// Reload (SIGHUP) is in-process and works like nginx's: load and validate the
// file; on any error keep serving with the current generation and log the
// file:line. Else start a new generation whose workers accept on their own
// dup() of the same SO_REUSEPORT listening sockets, then ask the old workers
// to drain: they stop accepting (the sockets stay open, so no queued
// connection is reset), finish every exchange in flight with the old
// configuration (a stream keeps the replica, pool and limits it started with),
// answer the next request of each idle keep-alive client with Connection:
// close, and exit. Old generations are destroyed on the main thread once
// their workers have exited and the admin endpoint no longer reads them; their
// counters are folded into running totals so Prometheus counters never go back.
//
// Keys that shape the sockets and threads ([proxy] listen, workers, io,
// recv_buffer_bytes, recv_buffers; [admin] listen) need a restart: a reload
// that changes them logs a warning and keeps their running values.
//
// Threads: every method runs on the main thread (the one taking signals).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "admin/admin.hpp"
#include "auth/auth.hpp"
#include "io/loop.hpp"
#include "models/catalog.hpp"
#include "proxy/stats.hpp"
#include "scores/table.hpp"
#include "tokenrelay/config.hpp"

namespace tr::server {

// A configuration file and the files it names, loaded and validated.
struct Loaded {
  Config cfg;
  std::unique_ptr<auth::KeySet> keys;  // nullptr: no [auth] api_keys_file
};

// Loads <path> (the INI, then the API key file it names). On failure <err>
// says what and where (file:line for the INI).
bool load(const std::string& path, Loaded* out, std::string* err);

// Older generations allowed to drain at once; a reload beyond it is refused.
inline constexpr size_t kMaxDraining = 4;

struct Generation;

class Server {
 public:
  explicit Server(std::string config_path);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listeners and the admin endpoint and starts the first generation.
  bool start(Loaded first, std::string* err);
  // SIGHUP. Returns false (nothing changed, <err> says why) when the file does
  // not load or the new generation cannot start.
  bool reload(std::string* err);
  // SIGUSR1: every live generation's access log reopens its file.
  void reopen_access_logs();
  // Destroys generations whose workers have all exited. Call periodically.
  void reap();
  // SIGTERM: every generation drains ([proxy] drain_timeout_ms of the current
  // configuration), then the admin endpoint stops.
  void shutdown();

  const Config& config() const;
  std::string listen_text() const;
  uint16_t admin_port() const { return admin_.port(); }
  const char* io_description() const { return io_desc_.c_str(); }
  size_t draining() const { return old_.size(); }
  size_t workers() const { return listen_fds_.size(); }
  bool pinned() const { return pin_; }

 private:
  bool try_reload(std::string* err);
  bool start_generation(Loaded loaded, std::shared_ptr<Generation>* out, std::string* err);
  void publish();

  std::string path_;
  std::vector<int> listen_fds_;  // one per worker; each generation's workers dup() them
  SockAddr listen_addr_;         // with the bound port
  std::vector<int> cpus_;
  bool pin_ = false;
  io::LoopOptions loop_opt_;
  std::string io_desc_;
  uint64_t next_id_ = 1;
  std::shared_ptr<Generation> cur_;
  std::vector<std::shared_ptr<Generation>> old_;        // draining
  std::vector<std::shared_ptr<Generation>> graveyard_;  // exited, maybe still read by admin
  std::shared_ptr<proxy::WorkerStats> retired_;         // totals of exited workers
  // Per replica ("name\nurl"), shared by the tables of every live generation.
  std::map<std::string, std::shared_ptr<scores::Dispatch>> dispatch_;
  models::SlotNames model_slots_;  // per-model metrics series, for the life of the process
  uint64_t reloads_ok_ = 0;
  uint64_t reloads_failed_ = 0;
  double last_reload_ok_unix_ = 0;
  admin::AdminServer admin_;
};

}  // namespace tr::server
