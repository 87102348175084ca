// The access log: one JSON object per line, one line per request.
//
// Thread-per-core: each worker owns an AccessLogWriter, which formats a line
// into its own buffer (reserved up front: no allocation per line) and appends
// it with ONE write(2) to its own fd on the log file, opened
// O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC|O_NONBLOCK with mode 0640. O_APPEND makes
// each write an atomic "seek to end + write" (Linux holds the inode lock for
// the whole write to a regular file), so lines from different workers never
// interleave and no lock is shared between workers.
//
// Rotation (SIGUSR1): the process-wide AccessLog holds the path and a
// generation counter; request_reopen() (any thread, async-signal-safe) bumps
// it; each writer sees the new generation before its next line, opens the
// path again and only then closes its old fd. No fd is ever closed under
// another thread, and a line is never lost to rotation: it goes to the old
// file or to the new one.
//
// Failures (disk full, directory removed) are counted, never block on purpose
// and never abort. What write(2) to a regular file can still do is wait for
// the kernel's dirty-page throttling; on a pipe or FIFO O_NONBLOCK turns a full
// pipe into a counted, dropped line instead.
//
// Never logged, by construction: the Authorization header and the body
// (Record has no field for either).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tr::accesslog {

// Longest string field written (bytes of input; longer values are cut at a
// UTF-8 character boundary). The request id is at most 200 bytes and the
// model at most 1024 (BodyInspector::kModelBytesMax); paths can be longer.
inline constexpr size_t kFieldBytesMax = 1024;
inline constexpr size_t kStringFields = 7;  // request_id, client, method, path, model,
                                            // backend, termination
// Bytes of everything in a line but the string contents: names, numbers, time.
inline constexpr size_t kLineFixedBytesMax = 512;
// Worst case escaping is 6 output bytes per input byte ("\u00XX", "\ufffd").
inline constexpr size_t kLineBytesMax = kStringFields * kFieldBytesMax * 6 + kLineFixedBytesMax;
static_assert(kLineBytesMax < 64 * 1024);
// A failed open is retried (before a line) at most this often; the writer
// keeps its previous fd meanwhile, if it has one.
inline constexpr int64_t kReopenRetryMs = 1000;

struct Record {         // all views valid only during the call
  int64_t time_ms = 0;  // wall clock (Unix ms), written as ISO-8601 UTC with milliseconds
  std::string_view request_id, client, method, path, model, backend;
  std::string_view termination;  // "ok", "client_abort", "upstream_reset", ...
  int status = 0;
  double ttft_ms = -1;  // < 0 (or not finite) = no first token: written as null
  double duration_ms = 0;
  uint64_t prompt_tokens_est = 0;  // the estimator's prompt tokens for the request
  uint64_t completion_tokens = 0;  // relayed (usage, or counted SSE events)
  uint64_t bytes_out = 0;          // bytes sent to the client, head included
  bool stream = false;
};

// Formats <r> as one JSON object followed by '\n', appended to *out. Every
// string is JSON-escaped (core/json.hpp); invalid UTF-8 bytes become \ufffd
// so the line is always valid JSON; an empty model or backend is null.
// Appends at most kLineBytesMax bytes; does not allocate when *out has that
// much spare capacity. Key order is fixed:
//   time, request_id, client, method, path, model, backend, status, stream,
//   ttft_ms, duration_ms, prompt_tokens_est, completion_tokens, bytes_out,
//   termination
void format_record(const Record& r, std::string* out);

// Process-wide: the path and the reopen generation. Created and open()ed by
// main before any writer is used; outlives every writer.
class AccessLog {
 public:
  AccessLog() = default;
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  // Checks that <path> can be opened for appending (creating it with mode 0640
  // if needed) and remembers it. Call once, before any writer writes. Returns
  // false with *error = "PATH: cannot open: REASON" otherwise.
  bool open(const std::string& path, std::string* error);
  bool is_open() const { return !path_.empty(); }
  const std::string& path() const { return path_; }

  // Asks every writer to reopen the path before its next line. Any thread;
  // lock-free and async-signal-safe (one atomic add).
  void request_reopen() { generation_.fetch_add(1, std::memory_order_release); }
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

 private:
  std::string path_;  // immutable once open() returned
  std::atomic<uint64_t> generation_{1};
};

// Owned and used by one thread (a worker); only the counters may be read from
// another thread (relaxed loads, e.g. by the admin thread for /metrics).
class AccessLogWriter {
 public:
  // <flush_bytes> = 0 (default): each line is written at once with one
  // write(2): simplest, nothing is lost on a crash, ~1-2 us per request.
  // > 0: lines accumulate and are written together (still one write(2), whole
  // lines only) once more than <flush_bytes> are waiting, or when flush() is
  // called; the owner must then call flush() from a timer (~100 ms) so quiet
  // periods still reach the file. <log> must outlive the writer.
  explicit AccessLogWriter(AccessLog* log, size_t flush_bytes = 0);
  ~AccessLogWriter();  // flushes, closes its fd
  AccessLogWriter(const AccessLogWriter&) = delete;
  AccessLogWriter& operator=(const AccessLogWriter&) = delete;

  // Formats and appends (or buffers) one line. Never blocks on purpose, never
  // throws, never allocates. Reopens first if request_reopen() was called.
  void write(const Record& r);
  // Writes whatever is buffered (nothing to do in write-through mode, except
  // picking up a pending reopen so a rotated file is released even when idle).
  void flush();

  uint64_t lines() const { return lines_.load(std::memory_order_relaxed); }
  // Lines lost or damaged: failed or short writes (disk full, ...), lines
  // dropped because no fd could be opened.
  uint64_t errors() const { return errors_.load(std::memory_order_relaxed); }
  // Failed opens of the path (the writer keeps its old fd if it has one).
  uint64_t open_errors() const { return open_errors_.load(std::memory_order_relaxed); }

 private:
  void maybe_reopen();
  void write_buffer();
  static void bump(std::atomic<uint64_t>& c, uint64_t n = 1) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }

  AccessLog* log_;
  size_t flush_bytes_;
  std::string buf_;         // formatted lines not yet written; capacity reserved once
  uint32_t buf_lines_ = 0;  // lines in buf_
  int fd_ = -1;
  uint64_t generation_ = 0;     // of the fd we hold; 0 = never opened
  bool retry_pending_ = false;  // the last open failed: try again at retry_at_ms_
  int64_t retry_at_ms_ = 0;     // monotonic
  bool failing_ = false;        // the last write failed (logged once per episode)
  std::atomic<uint64_t> lines_{0};
  std::atomic<uint64_t> errors_{0};
  std::atomic<uint64_t> open_errors_{0};
};

}  // namespace tr::accesslog
