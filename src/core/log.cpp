#include "core/log.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>

namespace tr {

namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::info)};
// systemd/journald priority prefixes (sd-daemon(3)); harmless on a terminal.
const char* const kPrefix[] = {"<7>", "<6>", "<4>", "<3>"};
const char* const kName[] = {"debug", "info", "warn", "error"};
}  // namespace

void log_set_level(LogLevel level) {
  g_level.store(static_cast<int>(level));
}
LogLevel log_level() {
  return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed));
}

void logf(LogLevel level, const char* fmt, ...) {
  if (static_cast<int>(level) < g_level.load(std::memory_order_relaxed)) return;
  static const bool journal = getenv("JOURNAL_STREAM") != nullptr;
  char line[1024];
  int idx = static_cast<int>(level);
  int n = journal ? std::snprintf(line, sizeof line, "%s", kPrefix[idx])
                  : std::snprintf(line, sizeof line, "tokenrelay[%s]: ", kName[idx]);
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  if (m < 0) return;
  n += m;
  if (n > static_cast<int>(sizeof line) - 2) n = sizeof line - 2;
  line[n++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, line, n);
  (void)ignored;
}

}  // namespace tr
