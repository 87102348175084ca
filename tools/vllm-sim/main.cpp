// vllm-sim: a vLLM-compatible simulator for tokenrelay's tests, demo and
// benchmarks. Thin entry point: flags, signals, file limit, then the loop.
#include <signal.h>
#include <sys/resource.h>

#include <cstdio>

#include "core/log.hpp"
#include "options.hpp"
#include "server.hpp"

int main(int argc, char** argv) {
  tr::sim::Options opts;
  if (int rc = tr::sim::parse_options(argc, argv, &opts); rc != 0) return rc == 1 ? 0 : rc;

  // SIGTERM/SIGINT arrive through the server's signalfd; a dead client must
  // not kill us with SIGPIPE.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Thousands of concurrent streams need thousands of descriptors.
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  tr::sim::Server server(opts);
  if (!server.listen()) return 1;
  std::printf("vllm-sim listening on %s:%u\n", opts.host.c_str(), server.bound_port());
  std::fflush(stdout);
  return server.run();
}
