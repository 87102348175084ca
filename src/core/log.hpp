// Process log: one line per event on stderr (journald adds the timestamp when
// run under systemd). Thread-safe: each line is built in a local buffer and
// written with a single write(2).
#pragma once

#include <cstdarg>

namespace tr {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3 };

void log_set_level(LogLevel level);
LogLevel log_level();
void logf(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace tr

#define TR_LOG_DEBUG(...)                                                                      \
  (::tr::log_level() <= ::tr::LogLevel::debug ? ::tr::logf(::tr::LogLevel::debug, __VA_ARGS__) \
                                              : void())
#define TR_LOG_INFO(...) ::tr::logf(::tr::LogLevel::info, __VA_ARGS__)
#define TR_LOG_WARN(...) ::tr::logf(::tr::LogLevel::warn, __VA_ARGS__)
#define TR_LOG_ERROR(...) ::tr::logf(::tr::LogLevel::error, __VA_ARGS__)
