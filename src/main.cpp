// tokenrelay: process bootstrap. Parses the command line, loads the config,
// starts the server (src/server: listeners, admin endpoint, the first
// configuration's poller and workers), tells systemd it is ready, and turns
// signals into actions: SIGHUP reloads, SIGUSR1 reopens the access log,
// SIGTERM/SIGINT drain and exit 0.
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

#include "config/config.hpp"
#include "core/log.hpp"
#include "io/loop.hpp"
#include "server/server.hpp"

namespace {

constexpr const char* kDefaultConfig = "/etc/tokenrelay/tokenrelay.ini";
// How often the main thread looks for drained configurations to free.
constexpr long kReapIntervalMs = 500;

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
               "Signals: SIGHUP reloads the configuration (a bad one is logged and the\n"
               "running one kept); SIGUSR1 reopens the access log; SIGTERM/SIGINT drain\n"
               "in-flight streams and exit 0.\n"
               "Docs: docs/CONFIG.md (every key), docs/ARCHITECTURE.md.\n",
               kDefaultConfig);
}

// sd_notify's RELOADING=1 wants the monotonic time in microseconds.
void notify_reloading() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
             static_cast<unsigned long long>(ts.tv_sec) * 1000000ull +
                 static_cast<unsigned long long>(ts.tv_nsec / 1000));
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

  tr::server::Loaded loaded;
  std::string err;
  if (!tr::server::load(config_path, &loaded, &err)) {
    std::fprintf(stderr, "%s\n", err.c_str());
    return 1;
  }
  if (check_only) {
    std::printf("%s: ok (%zu replicas%s)\n", config_path.c_str(), loaded.cfg.backends.size(),
                loaded.keys ? ", API keys required" : "");
    return 0;
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

  tr::server::Server server(config_path);
  if (!server.start(std::move(loaded), &err)) {
    TR_LOG_ERROR("%s", err.c_str());
    return 1;
  }
  const tr::Config& cfg = server.config();
  TR_LOG_INFO("I/O backend: %s", server.io_description());
  tr::SockAddr admin_addr = cfg.admin.listen;
  TR_LOG_INFO("tokenrelay %s listening on %s (%zu workers%s), admin on %s:%u, %zu replicas",
              TOKENRELAY_VERSION, server.listen_text().c_str(), server.workers(),
              server.pinned() ? ", pinned" : "",
              admin_addr.text.substr(0, admin_addr.text.rfind(':')).c_str(), server.admin_port(),
              cfg.backends.size());
  sd_notifyf(0, "READY=1\nSTATUS=serving on %s, %zu replicas", server.listen_text().c_str(),
             cfg.backends.size());

  const timespec reap_every{0, kReapIntervalMs * 1000000L};
  for (;;) {
    int sig = sigtimedwait(&sigs, nullptr, &reap_every);
    server.reap();
    if (sig < 0) continue;  // timeout (EAGAIN) or EINTR
    if (sig == SIGTERM || sig == SIGINT) {
      TR_LOG_INFO("%s: draining (up to %u ms), then exiting", strsignal(sig),
                  server.config().proxy.drain_timeout_ms);
      sd_notify(0, "STOPPING=1\nSTATUS=draining");
      break;
    }
    if (sig == SIGHUP) {
      notify_reloading();
      if (server.reload(&err)) {
        sd_notifyf(0, "READY=1\nSTATUS=serving on %s, %zu replicas (reloaded)",
                   server.listen_text().c_str(), server.config().backends.size());
      } else {
        TR_LOG_ERROR("SIGHUP: keeping the running configuration: %s", err.c_str());
        sd_notify(0, "READY=1\nSTATUS=reload failed; serving the previous configuration");
      }
    }
    if (sig == SIGUSR1) server.reopen_access_logs();
  }
  server.shutdown();
  TR_LOG_INFO("drained; exiting");
  return 0;
}
