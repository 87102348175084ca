#include "accesslog/accesslog.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>

#include "core/assert.hpp"
#include "core/clock.hpp"
#include "core/json.hpp"
#include "core/log.hpp"

namespace tr::accesslog {

namespace {

constexpr int kOpenFlags = O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
constexpr mode_t kOpenMode = 0640;
// 9999-12-31T23:59:59.999Z: later (or negative) times are clamped to the range.
constexpr int64_t kTimeMsMax = 253402300799999;
// Durations are clamped so a fixed-point number stays short (~31 years in ms).
constexpr double kMsMax = 1e12;

// Length of the well-formed UTF-8 sequence (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF) at the start of <s>, whose first byte is
// >= 0x80; 0 when there is none.
size_t utf8_sequence_bytes(std::string_view s) {
  unsigned char c = static_cast<unsigned char>(s[0]);
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0) lo = 0xa0;  // overlong
    if (c == 0xed) hi = 0x9f;  // surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0) lo = 0x90;  // overlong
    if (c == 0xf4) hi = 0x8f;  // above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() < len) return 0;
  unsigned char c1 = static_cast<unsigned char>(s[1]);
  if (c1 < lo || c1 > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    unsigned char ck = static_cast<unsigned char>(s[k]);
    if (ck < 0x80 || ck > 0xbf) return 0;
  }
  return len;
}

// Bytes copied to a JSON string as they are: printable ASCII but '"' and '\\'.
constexpr std::array<bool, 256> kPlainByte = [] {
  std::array<bool, 256> t{};
  for (int c = 0x20; c < 0x80; ++c)
    t[static_cast<size_t>(c)] = c != '"' && c != '\\';
  return t;
}();

// Appends <s> as a JSON string (with quotes): cut to kFieldBytesMax at a
// character boundary; runs of plain ASCII copied in bulk; quotes, backslashes
// and control bytes escaped by json_escape_append(); well-formed UTF-8 copied
// as is; each byte that does not start a well-formed sequence becomes \ufffd.
void append_string(std::string* out, std::string_view s) {
  if (s.size() > kFieldBytesMax) {
    size_t cut = kFieldBytesMax;
    for (int k = 0; k < 3 && cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80; ++k) {
      --cut;
    }
    s = s.substr(0, cut);
  }
  out->push_back('"');
  size_t run = 0;  // first plain byte not appended yet
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (kPlainByte[c]) {
      ++i;
      continue;
    }
    out->append(s.data() + run, i - run);
    if (c < 0x80) {
      json_escape_append(*out, s.substr(i, 1));
      ++i;
    } else if (size_t len = utf8_sequence_bytes(s.substr(i)); len > 0) {
      out->append(s.data() + i, len);
      i += len;
    } else {
      out->append("\\ufffd");
      ++i;
    }
    run = i;
  }
  out->append(s.data() + run, i - run);
  out->push_back('"');
}

void append_string_or_null(std::string* out, std::string_view s) {
  if (s.empty()) {
    out->append("null");
  } else {
    append_string(out, s);
  }
}

template <typename T>
void append_int(std::string* out, T v) {
  char buf[24];
  std::to_chars_result r = std::to_chars(buf, buf + sizeof buf, v);
  TR_DASSERT(r.ec == std::errc());
  out->append(buf, static_cast<size_t>(r.ptr - buf));
}

void put_digits(char* p, int64_t v, int width) {
  for (int i = width - 1; i >= 0; --i) {
    p[i] = static_cast<char>('0' + v % 10);
    v /= 10;
  }
}

// Milliseconds with 3 decimals (rounded to the microsecond); null when
// negative or not finite.
void append_ms(std::string* out, double v) {
  if (!std::isfinite(v) || v < 0) {
    out->append("null");
    return;
  }
  if (v > kMsMax) v = kMsMax;
  int64_t us = std::llround(v * 1000.0);
  append_int(out, us / 1000);
  char frac[4] = {'.', '0', '0', '0'};
  put_digits(frac + 1, us % 1000, 3);
  out->append(frac, sizeof frac);
}

// "YYYY-MM-DDTHH:MM:SS.mmmZ" (with quotes). Days to civil date: H. Hinnant's
// days_from_civil inverse (proleptic Gregorian; exact, no tables, no locks,
// unlike gmtime_r which takes glibc's time zone lock).
void append_time(std::string* out, int64_t ms) {
  if (ms < 0) ms = 0;
  if (ms > kTimeMsMax) ms = kTimeMsMax;
  int64_t days = ms / 86'400'000;
  int64_t in_day = ms % 86'400'000;
  int64_t z = days + 719468;
  int64_t era = z / 146097;
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  int64_t day = doy - (153 * mp + 2) / 5 + 1;
  int64_t month = mp < 10 ? mp + 3 : mp - 9;
  int64_t year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  char b[] = "\"0000-00-00T00:00:00.000Z\"";
  put_digits(b + 1, year, 4);
  put_digits(b + 6, month, 2);
  put_digits(b + 9, day, 2);
  put_digits(b + 12, in_day / 3'600'000, 2);
  put_digits(b + 15, in_day / 60'000 % 60, 2);
  put_digits(b + 18, in_day / 1000 % 60, 2);
  put_digits(b + 21, in_day % 1000, 3);
  out->append(b, sizeof b - 1);
}

}  // namespace

void format_record(const Record& r, std::string* out) {
  [[maybe_unused]] size_t before = out->size();
  out->append("{\"time\":");
  append_time(out, r.time_ms);
  out->append(",\"request_id\":");
  append_string(out, r.request_id);
  out->append(",\"client\":");
  append_string(out, r.client);
  out->append(",\"method\":");
  append_string(out, r.method);
  out->append(",\"path\":");
  append_string(out, r.path);
  out->append(",\"model\":");
  append_string_or_null(out, r.model);
  out->append(",\"backend\":");
  append_string_or_null(out, r.backend);
  out->append(",\"status\":");
  append_int(out, r.status);
  out->append(r.stream ? ",\"stream\":true" : ",\"stream\":false");
  out->append(",\"ttft_ms\":");
  append_ms(out, r.ttft_ms);
  out->append(",\"duration_ms\":");
  append_ms(out, r.duration_ms);
  out->append(",\"prompt_tokens_est\":");
  append_int(out, r.prompt_tokens_est);
  out->append(",\"completion_tokens\":");
  append_int(out, r.completion_tokens);
  out->append(",\"bytes_out\":");
  append_int(out, r.bytes_out);
  out->append(",\"termination\":");
  append_string(out, r.termination);
  out->append("}\n");
  TR_DASSERT(out->size() - before <= kLineBytesMax);
}

// ---- AccessLog ---------------------------------------------------------------

bool AccessLog::open(const std::string& path, std::string* error) {
  TR_ASSERT(path_.empty());  // once
  if (path.empty()) {
    *error = "access log: empty path";
    return false;
  }
  int fd = ::open(path.c_str(), kOpenFlags, kOpenMode);
  if (fd < 0) {
    *error = path + ": cannot open: " + std::strerror(errno);
    return false;
  }
  ::close(fd);
  path_ = path;
  return true;
}

// ---- AccessLogWriter ---------------------------------------------------------

AccessLogWriter::AccessLogWriter(AccessLog* log, size_t flush_bytes)
    : log_(log), flush_bytes_(flush_bytes) {
  TR_ASSERT(log_ != nullptr);
  TR_ASSERT(log_->is_open());
  buf_.reserve(flush_bytes_ + kLineBytesMax);
}

AccessLogWriter::~AccessLogWriter() {
  write_buffer();
  if (fd_ >= 0) ::close(fd_);
}

void AccessLogWriter::maybe_reopen() {
  uint64_t g = log_->generation();
  if (g == generation_) {
    if (!retry_pending_) return;
    if (mono_ms() < retry_at_ms_) return;
  }
  int fd = ::open(log_->path().c_str(), kOpenFlags, kOpenMode);
  if (fd < 0) {
    int err = errno;
    bump(open_errors_);
    if (g != generation_) {  // once per reopen request, not once per retry
      TR_LOG_WARN("access log %s: cannot open: %s (%s)", log_->path().c_str(), std::strerror(err),
                  fd_ >= 0 ? "still writing to the previous file" : "lines are dropped");
    }
    generation_ = g;
    retry_pending_ = true;
    retry_at_ms_ = mono_ms() + kReopenRetryMs;
    return;
  }
  if (fd_ >= 0) {
    write_buffer();  // lines formatted before the reopen belong to the old file
    ::close(fd_);
  }
  fd_ = fd;
  generation_ = g;
  retry_pending_ = false;
}

void AccessLogWriter::write(const Record& r) {
  maybe_reopen();
  if (buf_.size() + kLineBytesMax > buf_.capacity()) write_buffer();  // never in practice
  format_record(r, &buf_);
  ++buf_lines_;
  bump(lines_);
  if (buf_.size() > flush_bytes_) write_buffer();
}

void AccessLogWriter::flush() {
  maybe_reopen();
  write_buffer();
}

void AccessLogWriter::write_buffer() {
  if (buf_.empty()) return;
  uint64_t lost = 0;
  int err = 0;
  if (fd_ < 0) {
    lost = buf_lines_;
    err = EBADF;
  } else {
    ssize_t n;
    do {
      n = ::write(fd_, buf_.data(), buf_.size());
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      err = errno;
      lost = buf_lines_;
    } else if (static_cast<size_t>(n) < buf_.size()) {
      // Short write (disk full mid-line): the whole lines written are kept;
      // a cut line is terminated so that it alone is damaged. The rest is
      // dropped rather than written later, where it could land after another
      // worker's line.
      err = ENOSPC;
      std::string_view written(buf_.data(), static_cast<size_t>(n));
      uint64_t whole = 0;
      for (char c : written)
        whole += c == '\n' ? 1 : 0;
      lost = buf_lines_ - whole;
      if (n > 0 && written.back() != '\n') {
        [[maybe_unused]] ssize_t m = ::write(fd_, "\n", 1);
      }
    }
  }
  if (lost > 0) {
    bump(errors_, lost);
    if (!failing_) {
      failing_ = true;
      TR_LOG_WARN("access log %s: write failed: %s (lines are dropped and counted)",
                  log_->path().c_str(), std::strerror(err));
    }
  } else if (failing_) {
    failing_ = false;
    TR_LOG_INFO("access log %s: writing again", log_->path().c_str());
  }
  buf_.clear();
  buf_lines_ = 0;
}

}  // namespace tr::accesslog
