// tokenrelay: process bootstrap. Loads the config, binds one SO_REUSEPORT
// listener per worker, starts the poller, the workers (one per CPU, pinned)
// and the admin endpoint, tells systemd it is ready, and turns signals into
// actions: SIGTERM/SIGINT drain and exit 0.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "accesslog/accesslog.hpp"
#include "admin/admin.hpp"
#include "auth/auth.hpp"
#include "config/config.hpp"
#include "core/log.hpp"
#include "poller/poller.hpp"
#include "proxy/worker.hpp"
#include "scores/table.hpp"

namespace {

constexpr const char* kDefaultConfig = "/etc/tokenrelay/tokenrelay.ini";

void usage(FILE* f) {
  std::fprintf(f,
               "usage: tokenrelay [--config PATH] [--check] [--version] [--help]\n"
               "\n"
               "  --config PATH  INI configuration (default %s)\n"
               "  --check        validate the configuration and exit (0 = valid)\n"
               "  --version      print the version and exit\n"
               "  --probe-io     say whether io_uring can be used here (exit 0) or not (exit 1)\n"
               "  --help         this text\n"
               "\n"
               "Signals: SIGTERM/SIGINT drain in-flight streams and exit 0.\n"
               "Docs: docs/CONFIG.md (every key), docs/ARCHITECTURE.md.\n",
               kDefaultConfig);
}

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
int bind_listener(tr::SockAddr* addr, std::string* err) {
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

std::string addr_text(const tr::SockAddr& a) {
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

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = kDefaultConfig;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" || a == "-c") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "tokenrelay: --config needs a path\n");
        usage(stderr);
        return 2;
      }
      config_path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      config_path = a.substr(9);
    } else if (a == "--check") {
      check_only = true;
    } else if (a == "--version") {
      std::printf("tokenrelay %s\n", TOKENRELAY_VERSION);
      return 0;
    } else if (a == "--config-reference") {
      std::fputs(tr::config::reference_markdown().c_str(), stdout);  // docs/CONFIG.md table
      return 0;
    } else if (a == "--probe-io") {
      char why[256];
      bool ok = tr::io::probe_io_uring(why, sizeof why);
      std::printf("io_uring: %s%s\n", ok ? "available: " : "unavailable: ", why);
      return ok ? 0 : 1;
    } else if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    } else {
      std::fprintf(stderr, "tokenrelay: unknown argument '%s'\n", a.c_str());
      usage(stderr);
      return 2;
    }
  }

  tr::Config cfg;
  tr::config::Error cerr;
  if (!tr::config::load_file(config_path, &cfg, &cerr)) {
    std::fprintf(stderr, "%s\n", cerr.str().c_str());
    return 1;
  }
  // Files the config points at are part of it: a bad key file fails --check too.
  std::unique_ptr<tr::auth::KeySet> keys;
  if (!cfg.auth.api_keys_file.empty()) {
    keys = std::make_unique<tr::auth::KeySet>();
    std::string err;
    std::string warning;
    if (!tr::auth::KeySet::load(cfg.auth.api_keys_file, keys.get(), &err, &warning)) {
      std::fprintf(stderr, "%s\n", err.c_str());
      return 1;
    }
    if (!warning.empty()) TR_LOG_WARN("%s", warning.c_str());
  }
  if (check_only) {
    std::printf("%s: ok (%zu replicas%s)\n", config_path.c_str(), cfg.backends.size(),
                keys ? ", API keys required" : "");
    return 0;
  }
  tr::accesslog::AccessLog access_log;
  if (!cfg.log.access_log.empty()) {
    std::string err;
    if (!access_log.open(cfg.log.access_log, &err)) {
      TR_LOG_ERROR("%s", err.c_str());
      return 1;
    }
  }

  // Signals are taken synchronously by this thread; workers inherit the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  sigaddset(&sigs, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::vector<int> cpus = allowed_cpus();
  size_t nworkers = cfg.proxy.workers ? cfg.proxy.workers : cpus.size();
  bool pin = cfg.proxy.workers == 0 || cfg.proxy.workers <= cpus.size();

  tr::SockAddr listen_addr = cfg.proxy.listen;
  std::vector<int> listen_fds;
  for (size_t i = 0; i < nworkers; ++i) {
    std::string err;
    int fd = bind_listener(&listen_addr, &err);
    if (fd < 0) {
      TR_LOG_ERROR("%s", err.c_str());
      return 1;
    }
    listen_fds.push_back(fd);
  }

  tr::scores::Table table(cfg.backends.size());
  tr::poller::Poller poller(cfg, &table);
  poller.poll_once();  // first requests already know which replicas are up

  tr::proxy::Shared shared;
  shared.cfg = &cfg;
  shared.keys = keys.get();
  shared.access_log = access_log.is_open() ? &access_log : nullptr;
  shared.workers = static_cast<uint32_t>(nworkers);
  shared.table = &table;
  shared.models_json = [&poller] { return poller.models_json(); };

  tr::io::LoopOptions lopt;
  lopt.want = cfg.proxy.io == tr::IoMode::epoll      ? tr::io::LoopOptions::Want::epoll
              : cfg.proxy.io == tr::IoMode::io_uring ? tr::io::LoopOptions::Want::io_uring
                                                     : tr::io::LoopOptions::Want::automatic;
  lopt.buf_bytes = cfg.proxy.recv_buffer_bytes;
  lopt.buf_count = cfg.proxy.recv_buffers;

  std::vector<std::unique_ptr<tr::proxy::Worker>> workers;
  for (size_t i = 0; i < nworkers; ++i) {
    tr::proxy::WorkerOptions wo;
    wo.index = static_cast<uint32_t>(i);
    wo.cpu = pin ? cpus[i % cpus.size()] : -1;
    wo.listen_fd = listen_fds[i];
    wo.loop = lopt;
    auto w = std::make_unique<tr::proxy::Worker>(&shared, wo);
    std::string err;
    if (!w->start(&err)) {
      TR_LOG_ERROR("worker %zu: cannot start its event loop: %s", i, err.c_str());
      for (auto& other : workers)
        other->request_drain();
      return 1;
    }
    workers.push_back(std::move(w));
  }
  std::string io_desc = workers[0]->backend_description();
  TR_LOG_INFO("I/O backend: %s", io_desc.c_str());

  tr::admin::Sources sources;
  sources.cfg = &cfg;
  sources.table = &table;
  for (auto& w : workers)
    sources.workers.push_back(&w->stats());
  sources.io_backend = io_desc.rfind("io_uring", 0) == 0 ? "io_uring" : "epoll";
  tr::admin::AdminServer admin;
  std::string aerr;
  if (!admin.start(cfg.admin.listen, &sources, &aerr)) {
    TR_LOG_ERROR("%s", aerr.c_str());
    for (auto& w : workers)
      w->request_drain();
    return 1;
  }
  poller.start();

  tr::SockAddr admin_addr = cfg.admin.listen;
  TR_LOG_INFO("tokenrelay %s listening on %s (%zu workers%s), admin on %s:%u, %zu replicas",
              TOKENRELAY_VERSION, addr_text(listen_addr).c_str(), nworkers, pin ? ", pinned" : "",
              admin_addr.text.substr(0, admin_addr.text.rfind(':')).c_str(), admin.port(),
              cfg.backends.size());
  sd_notifyf(0, "READY=1\nSTATUS=serving on %s, %zu replicas", addr_text(listen_addr).c_str(),
             cfg.backends.size());

  for (;;) {
    int sig = 0;
    if (sigwait(&sigs, &sig) != 0) continue;
    if (sig == SIGTERM || sig == SIGINT) {
      TR_LOG_INFO("%s: draining (up to %u ms), then exiting", strsignal(sig),
                  cfg.proxy.drain_timeout_ms);
      sd_notify(0, "STOPPING=1\nSTATUS=draining");
      break;
    }
    if (sig == SIGHUP) {
      TR_LOG_WARN("SIGHUP: configuration reload is not supported yet; keeping the current one");
    }
    if (sig == SIGUSR1) {
      if (access_log.is_open()) {
        access_log.request_reopen();
        TR_LOG_INFO("SIGUSR1: reopening the access log %s", cfg.log.access_log.c_str());
      }
    }
  }
  for (auto& w : workers)
    w->request_drain();
  for (auto& w : workers)
    w->join();
  poller.stop();
  admin.stop();
  TR_LOG_INFO("drained; exiting");
  return 0;
}
