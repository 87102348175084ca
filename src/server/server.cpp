#include "server/server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <iterator>
#include <unordered_map>
#include <utility>

#include "accesslog/accesslog.hpp"
#include "config/config.hpp"
#include "core/log.hpp"
#include "poller/poller.hpp"
#include "proxy/worker.hpp"
#include "scores/table.hpp"

namespace tr::server {

// Member order is destruction order reversed: the workers go first (they
// read everything else), then the poller, the table, the config.
struct Generation {
  uint64_t id = 0;
  Config cfg;
  std::unique_ptr<auth::KeySet> keys;
  std::shared_ptr<accesslog::AccessLog> access_log;  // shared with the next generation if unchanged
  std::unique_ptr<models::CatalogCell> catalog;      // model pools, published by the poller
  std::unique_ptr<scores::Table> table;
  std::unique_ptr<poller::Poller> poller;
  proxy::Shared shared;
  std::vector<std::unique_ptr<proxy::Worker>> workers;

  ~Generation() {
    for (auto& w : workers)
      w->request_drain(proxy::DrainMode::shutdown, 0);
    workers.clear();  // joins
  }
  bool finished() const {
    for (const auto& w : workers) {
      if (!w->finished()) return false;
    }
    return true;
  }
  size_t connections() const {
    int64_t n = 0;
    for (const auto& w : workers)
      n += w->stats().connections_open.load(std::memory_order_relaxed);
    return static_cast<size_t>(n);
  }
};

namespace {

// CPUs this process may run on, in order (workers are pinned one per CPU).
std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int i = 0; i < CPU_SETSIZE; ++i) {
      if (CPU_ISSET(i, &set)) cpus.push_back(i);
    }
  }
  if (cpus.empty()) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 0; i < (n > 0 ? n : 1); ++i)
      cpus.push_back(i);
  }
  return cpus;
}

// Binds one listener with SO_REUSEPORT. With port 0, the first bind picks the
// port and the others reuse it (<addr> is updated).
int bind_listener(SockAddr* addr, std::string* err) {
  int fd = ::socket(addr->storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (::bind(fd, addr->sa(), addr->len) != 0) {
    *err = "bind " + addr->text + ": " + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  if (::listen(fd, 4096) != 0) {
    *err = "listen " + addr->text + ": " + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl);
  std::memcpy(&addr->storage, &ss, sl);
  addr->len = sl;
  return fd;
}

// One replica across configurations: same name and same URL.
std::string replica_key(const BackendConfig& b) {
  return b.name + '\n' + b.url;
}

std::string addr_text(const SockAddr& a) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (a.storage.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_addr, host,
              sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(a.port());
  }
  inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_addr, host,
            sizeof host);
  return std::string(host) + ":" + std::to_string(a.port());
}

// Restart-only keys: a reload keeps the running values (and says so).
void keep_restart_only(const Config& running, Config* next) {
  auto keep = [](const char* key, bool changed, auto* field, const auto& value) {
    if (!changed) return;
    TR_LOG_WARN("reload: %s changed; it needs a restart: keeping the running value", key);
    *field = value;
  };
  keep("[proxy] listen", running.proxy.listen.text != next->proxy.listen.text, &next->proxy.listen,
       running.proxy.listen);
  keep("[proxy] workers", running.proxy.workers != next->proxy.workers, &next->proxy.workers,
       running.proxy.workers);
  keep("[proxy] io", running.proxy.io != next->proxy.io, &next->proxy.io, running.proxy.io);
  keep("[proxy] recv_buffer_bytes",
       running.proxy.recv_buffer_bytes != next->proxy.recv_buffer_bytes,
       &next->proxy.recv_buffer_bytes, running.proxy.recv_buffer_bytes);
  keep("[proxy] recv_buffers", running.proxy.recv_buffers != next->proxy.recv_buffers,
       &next->proxy.recv_buffers, running.proxy.recv_buffers);
  keep("[admin] listen", running.admin.listen.text != next->admin.listen.text, &next->admin.listen,
       running.admin.listen);
}

}  // namespace

bool load(const std::string& path, Loaded* out, std::string* err) {
  config::Error cerr;
  if (!config::load_file(path, &out->cfg, &cerr)) {
    *err = cerr.str();
    return false;
  }
  // Files the config points at are part of it: a bad key file fails --check too.
  out->keys.reset();
  if (!out->cfg.auth.api_keys_file.empty()) {
    auto keys = std::make_unique<auth::KeySet>();
    std::string warning;
    if (!auth::KeySet::load(out->cfg.auth.api_keys_file, keys.get(), err, &warning)) return false;
    if (!warning.empty()) TR_LOG_WARN("%s", warning.c_str());
    out->keys = std::move(keys);
  }
  return true;
}

Server::Server(std::string config_path) : path_(std::move(config_path)) {}

Server::~Server() {
  shutdown();
  for (int fd : listen_fds_)
    ::close(fd);
}

const Config& Server::config() const {
  return cur_->cfg;
}

std::string Server::listen_text() const {
  return addr_text(listen_addr_);
}

bool Server::start(Loaded first, std::string* err) {
  const Config& cfg = first.cfg;
  cpus_ = allowed_cpus();
  size_t nworkers = cfg.proxy.workers ? cfg.proxy.workers : cpus_.size();
  pin_ = cfg.proxy.workers == 0 || cfg.proxy.workers <= cpus_.size();
  listen_addr_ = cfg.proxy.listen;
  for (size_t i = 0; i < nworkers; ++i) {
    int fd = bind_listener(&listen_addr_, err);
    if (fd < 0) return false;
    listen_fds_.push_back(fd);
  }
  loop_opt_.want = cfg.proxy.io == IoMode::epoll      ? io::LoopOptions::Want::epoll
                   : cfg.proxy.io == IoMode::io_uring ? io::LoopOptions::Want::io_uring
                                                      : io::LoopOptions::Want::automatic;
  loop_opt_.buf_bytes = cfg.proxy.recv_buffer_bytes;
  loop_opt_.buf_count = cfg.proxy.recv_buffers;
  SockAddr admin_addr = cfg.admin.listen;

  std::shared_ptr<Generation> g;
  if (!start_generation(std::move(first), &g, err)) return false;
  cur_ = std::move(g);
  io_desc_ = cur_->workers[0]->backend_description();
  // Later generations use the backend this one got (io = auto could otherwise
  // differ, and the listening sockets' O_NONBLOCK flag is shared by all).
  loop_opt_.want = io_desc_.rfind("io_uring", 0) == 0 ? io::LoopOptions::Want::io_uring
                                                      : io::LoopOptions::Want::epoll;
  retired_ = std::make_shared<proxy::WorkerStats>(std::vector<std::string>{});
  publish();  // before the admin thread can answer anything
  if (!admin_.start(admin_addr, err)) {
    cur_.reset();
    return false;
  }
  return true;
}

bool Server::start_generation(Loaded loaded, std::shared_ptr<Generation>* out, std::string* err) {
  auto g = std::make_shared<Generation>();
  g->id = next_id_;
  g->cfg = std::move(loaded.cfg);
  g->keys = std::move(loaded.keys);
  const Config& cfg = g->cfg;
  if (!cfg.log.access_log.empty()) {
    if (cur_ && cur_->access_log && cur_->access_log->path() == cfg.log.access_log) {
      g->access_log = cur_->access_log;  // same file: same rotation state
    } else {
      g->access_log = std::make_shared<accesslog::AccessLog>();
      if (!g->access_log->open(cfg.log.access_log, err)) return false;
    }
  }
  // Replicas this process already routes to (same name and URL) keep their
  // dispatch accounting and passive-health state across the reload.
  std::vector<std::shared_ptr<scores::Dispatch>> dispatch;
  for (const BackendConfig& b : cfg.backends) {
    std::shared_ptr<scores::Dispatch>& d = dispatch_[replica_key(b)];
    if (!d) d = std::make_shared<scores::Dispatch>();
    dispatch.push_back(d);
  }
  g->table = std::make_unique<scores::Table>(cfg.backends.size(), std::move(dispatch));
  g->poller = std::make_unique<poller::Poller>(cfg, g->table.get());
  if (cur_) {
    // Replicas the running configuration already checks keep their state:
    // one slow probe during a reload under load does not take one out.
    std::unordered_map<std::string, size_t> running;
    for (size_t j = 0; j < cur_->cfg.backends.size(); ++j)
      running.emplace(replica_key(cur_->cfg.backends[j]), j);
    for (size_t i = 0; i < cfg.backends.size(); ++i) {
      auto it = running.find(replica_key(cfg.backends[i]));
      if (it == running.end()) continue;
      g->poller->seed_health(static_cast<uint32_t>(i),
                             cur_->table->at(it->second).up.load(std::memory_order_relaxed));
    }
  }
  g->catalog = std::make_unique<models::CatalogCell>();
  g->poller->set_catalog(g->catalog.get(), &model_slots_);
  g->poller->poll_once();  // first requests already know which replicas are up

  g->shared.cfg = &g->cfg;
  g->shared.keys = g->keys.get();
  g->shared.access_log = g->access_log.get();
  g->shared.workers = static_cast<uint32_t>(listen_fds_.size());
  g->shared.table = g->table.get();
  Generation* raw = g.get();
  g->shared.models_json = [raw] { return raw->poller->models_json(); };
  g->shared.catalog = g->catalog.get();

  for (size_t i = 0; i < listen_fds_.size(); ++i) {
    proxy::WorkerOptions wo;
    wo.index = static_cast<uint32_t>(i);
    wo.cpu = pin_ ? cpus_[i % cpus_.size()] : -1;
    // Each worker closes its own descriptor when it stops accepting; the
    // socket lives on in listen_fds_ for the next generation.
    wo.listen_fd = ::fcntl(listen_fds_[i], F_DUPFD_CLOEXEC, 0);
    if (wo.listen_fd < 0) {
      *err = std::string("dup listener: ") + std::strerror(errno);
      return false;  // ~Generation stops the workers already started
    }
    wo.loop = loop_opt_;
    wo.accept_at_start = false;  // below, once every worker has started
    auto w = std::make_unique<proxy::Worker>(&g->shared, wo);
    std::string werr;
    if (!w->start(&werr)) {
      ::close(wo.listen_fd);
      *err = "worker " + std::to_string(i) + ": cannot start its event loop: " + werr;
      return false;
    }
    g->workers.push_back(std::move(w));
  }
  for (auto& w : g->workers)
    w->start_accepting();
  g->poller->start();
  ++next_id_;
  *out = std::move(g);
  return true;
}

void Server::publish() {
  auto src = std::make_shared<admin::Sources>();
  src->cfg = &cur_->cfg;
  src->table = cur_->table.get();
  src->worker_threads = cur_->workers.size();
  src->generation = cur_->id;
  src->reloads_ok = reloads_ok_;
  src->reloads_failed = reloads_failed_;
  src->last_reload_ok_unix = last_reload_ok_unix_;
  src->io_backend = io_desc_.rfind("io_uring", 0) == 0 ? "io_uring" : "epoll";
  src->catalog = cur_->catalog.get();
  src->model_slots = &model_slots_;
  auto add = [&src](const std::shared_ptr<Generation>& g) {
    for (const auto& w : g->workers)
      src->workers.push_back(&w->stats());
    src->owners.push_back(g);
  };
  add(cur_);
  for (const auto& g : old_)
    add(g);
  src->workers.push_back(retired_.get());
  src->owners.push_back(retired_);
  admin_.publish(std::move(src));
}

bool Server::reload(std::string* err) {
  bool ok = try_reload(err);
  if (ok) {
    ++reloads_ok_;
    last_reload_ok_unix_ = static_cast<double>(time(nullptr));
  } else {
    ++reloads_failed_;
  }
  publish();
  return ok;
}

bool Server::try_reload(std::string* err) {
  reap();
  if (old_.size() >= kMaxDraining) {
    *err = std::to_string(old_.size()) +
           " older configurations are still draining (streams or keep-alive clients in "
           "flight); try again later";
    return false;
  }
  Loaded next;
  if (!load(path_, &next, err)) return false;
  keep_restart_only(cur_->cfg, &next.cfg);
  size_t before = cur_->cfg.backends.size();
  std::shared_ptr<Generation> g;
  if (!start_generation(std::move(next), &g, err)) return false;
  // The new workers accept on the same sockets now; the old ones stop.
  std::shared_ptr<Generation> prev = std::move(cur_);
  cur_ = std::move(g);
  for (auto& w : prev->workers)
    w->request_drain(proxy::DrainMode::reload, cur_->cfg.proxy.reload_drain_timeout_ms);
  TR_LOG_INFO(
      "reload: configuration %llu serving (%zu replicas, was %zu; policy %s); configuration %llu "
      "draining %zu connections (up to %u ms)",
      static_cast<unsigned long long>(cur_->id), cur_->cfg.backends.size(), before,
      cur_->cfg.routing.policy.c_str(), static_cast<unsigned long long>(prev->id),
      prev->connections(), cur_->cfg.proxy.reload_drain_timeout_ms);
  old_.push_back(std::move(prev));
  return true;
}

void Server::reopen_access_logs() {
  std::vector<accesslog::AccessLog*> done;
  auto reopen = [&done](const std::shared_ptr<Generation>& g) {
    accesslog::AccessLog* log = g->access_log.get();
    if (!log) return;
    for (accesslog::AccessLog* d : done) {
      if (d == log) return;
    }
    done.push_back(log);
    log->request_reopen();
    TR_LOG_INFO("SIGUSR1: reopening the access log %s", log->path().c_str());
  };
  if (cur_) reopen(cur_);
  for (const auto& g : old_)
    reopen(g);
}

void Server::reap() {
  bool changed = false;
  for (size_t i = 0; i < old_.size();) {
    if (!old_[i]->finished()) {
      ++i;
      continue;
    }
    // Its workers have exited: fold their counters into the totals (a new
    // object, since the admin thread may be reading the current one).
    auto totals = std::make_shared<proxy::WorkerStats>(
        cur_ ? std::vector<std::string>(cur_->workers[0]->stats().names())
             : std::vector<std::string>{});
    totals->absorb(*retired_);
    for (const auto& w : old_[i]->workers) {
      w->join();
      totals->absorb(w->stats());
    }
    retired_ = std::move(totals);
    TR_LOG_INFO("reload: configuration %llu drained", static_cast<unsigned long long>(old_[i]->id));
    graveyard_.push_back(std::move(old_[i]));
    old_.erase(old_.begin() + static_cast<std::ptrdiff_t>(i));
    changed = true;
  }
  if (changed && cur_) publish();
  // Dispatch blocks of replicas no live table uses any more.
  for (auto it = dispatch_.begin(); it != dispatch_.end();) {
    it = it->second.use_count() == 1 ? dispatch_.erase(it) : std::next(it);
  }
  // Destroyed here, on the main thread, once no published or in-use Sources
  // holds them (use_count 1 = only this list).
  for (size_t i = 0; i < graveyard_.size();) {
    if (graveyard_[i].use_count() == 1) {
      // Pairs with the release of the admin thread's last shared_ptr drop:
      // its reads happen before the destruction.
      std::atomic_thread_fence(std::memory_order_acquire);
      graveyard_.erase(graveyard_.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      ++i;
    }
  }
}

void Server::shutdown() {
  if (!cur_ && old_.empty()) {
    admin_.stop();
    return;
  }
  uint32_t timeout = cur_ ? cur_->cfg.proxy.drain_timeout_ms : 0;
  if (cur_) {
    for (auto& w : cur_->workers)
      w->request_drain(proxy::DrainMode::shutdown, timeout);
  }
  for (auto& g : old_) {
    for (auto& w : g->workers)
      w->request_drain(proxy::DrainMode::shutdown, timeout);
  }
  // New connections are refused from now on (the workers close their dups).
  for (int fd : listen_fds_)
    ::close(fd);
  listen_fds_.clear();
  if (cur_) {
    for (auto& w : cur_->workers)
      w->join();
  }
  for (auto& g : old_) {
    for (auto& w : g->workers)
      w->join();
  }
  admin_.stop();
  old_.clear();
  graveyard_.clear();
  cur_.reset();
}

}  // namespace tr::server
