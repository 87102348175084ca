// The access log: line format, escaping, rotation, concurrent writers,
// failures, and no allocation per line.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch.hpp>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "accesslog/accesslog.hpp"

#include "alloc_counter.hpp"

using tr::accesslog::AccessLog;
using tr::accesslog::AccessLogWriter;
using tr::accesslog::Record;

namespace {

// ---- a tiny strict JSON reader for one flat object per line ------------------

struct Value {
  enum Kind { kString, kNumber, kTrue, kFalse, kNull, kAbsent } kind = kNull;
  std::string text;  // decoded string, or the number as written
};
// Fields in order of appearance (small: a linear search is enough).
struct Object {
  std::vector<std::pair<std::string, Value>> fields;
  const Value* find(std::string_view key) const {
    for (const auto& f : fields) {
      if (f.first == key) return &f.second;
    }
    return nullptr;
  }
  const Value& operator[](std::string_view key) const {
    static const Value kMissing{Value::kAbsent, "<absent>"};
    const Value* v = find(key);
    return v ? *v : kMissing;
  }
  size_t size() const { return fields.size(); }
};

struct Reader {
  std::string_view s;
  size_t i = 0;
  bool ok = true;

  bool fail() { return ok = false; }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
      ++i;
  }
  bool eat(char c) {
    ws();
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  static void put_utf8(std::string* out, uint32_t cp) {
    if (cp < 0x80) {
      *out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      *out += static_cast<char>(0xc0 | cp >> 6);
      *out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      *out += static_cast<char>(0xe0 | cp >> 12);
      *out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
      *out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      *out += static_cast<char>(0xf0 | cp >> 18);
      *out += static_cast<char>(0x80 | (cp >> 12 & 0x3f));
      *out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
      *out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }
  bool hex4(uint32_t* v) {
    if (s.size() - i < 4) return false;
    *v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s[i++];
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) return false;
      *v = *v << 4 | static_cast<uint32_t>(d);
    }
    return true;
  }
  bool string(std::string* out) {
    if (!eat('"')) return fail();
    while (i < s.size()) {
      unsigned char c = static_cast<unsigned char>(s[i++]);
      if (c == '"') return true;
      if (c < 0x20) return fail();  // raw control bytes are not allowed
      if (c != '\\') {
        *out += static_cast<char>(c);
        continue;
      }
      if (i >= s.size()) return fail();
      char e = s[i++];
      switch (e) {
        case '"':
          *out += '"';
          break;
        case '\\':
          *out += '\\';
          break;
        case '/':
          *out += '/';
          break;
        case 'b':
          *out += '\b';
          break;
        case 'f':
          *out += '\f';
          break;
        case 'n':
          *out += '\n';
          break;
        case 'r':
          *out += '\r';
          break;
        case 't':
          *out += '\t';
          break;
        case 'u': {
          uint32_t cp;
          if (!hex4(&cp)) return fail();
          if (cp >= 0xd800 && cp < 0xdc00) {
            uint32_t lo;
            if (s.substr(i, 2) != "\\u") return fail();
            i += 2;
            if (!hex4(&lo) || lo < 0xdc00 || lo > 0xdfff) return fail();
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          } else if (cp >= 0xdc00 && cp < 0xe000) {
            return fail();
          }
          put_utf8(out, cp);
          break;
        }
        default:
          return fail();
      }
    }
    return fail();
  }
  bool number(std::string* out) {
    size_t b = i;
    if (i < s.size() && s[i] == '-') ++i;
    if (i >= s.size()) return fail();
    if (s[i] == '0') {
      ++i;
    } else if (s[i] >= '1' && s[i] <= '9') {
      while (i < s.size() && s[i] >= '0' && s[i] <= '9')
        ++i;
    } else {
      return fail();
    }
    if (i < s.size() && s[i] == '.') {
      ++i;
      size_t d = i;
      while (i < s.size() && s[i] >= '0' && s[i] <= '9')
        ++i;
      if (i == d) return fail();
    }
    *out = std::string(s.substr(b, i - b));
    return true;
  }
  bool object(Object* obj) {
    if (!eat('{')) return fail();
    if (eat('}')) return true;
    do {
      std::string key;
      if (!string(&key) || !eat(':')) return fail();
      if (obj->find(key)) return fail();  // duplicate
      Value v;
      ws();
      if (i >= s.size()) return fail();
      if (s[i] == '"') {
        v.kind = Value::kString;
        if (!string(&v.text)) return fail();
      } else if (s.substr(i, 4) == "true") {
        v.kind = Value::kTrue, i += 4;
      } else if (s.substr(i, 5) == "false") {
        v.kind = Value::kFalse, i += 5;
      } else if (s.substr(i, 4) == "null") {
        v.kind = Value::kNull, i += 4;
      } else {
        v.kind = Value::kNumber;
        if (!number(&v.text)) return fail();
      }
      obj->fields.emplace_back(std::move(key), std::move(v));
    } while (eat(','));
    return eat('}') || fail();
  }
};

// Parses one line (without its '\n'); false unless it is exactly one object.
bool parse_line(std::string_view line, Object* obj) {
  Reader r{line};
  if (!r.object(obj)) return false;
  r.ws();
  return r.ok && r.i == line.size();
}

// Well-formed UTF-8 (the lines must be valid JSON text, RFC 8259 section 8.1).
bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80                 ? 1
                 : c >= 0xc2 && c <= 0xdf ? 2
                 : c >= 0xe0 && c <= 0xef ? 3
                 : c >= 0xf0 && c <= 0xf4 ? 4
                                          : 0;
    if (len == 0 || s.size() - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    if (len == 3) {
      unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
      if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 > 0x9f)) return false;
    }
    if (len == 4) {
      unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
      if ((c == 0xf0 && c1 < 0x90) || (c == 0xf4 && c1 > 0x8f)) return false;
    }
    i += len;
  }
  return true;
}

std::string format(const Record& r) {
  std::string s;
  tr::accesslog::format_record(r, &s);
  return s;
}

Object parsed(const Record& r) {
  std::string line = format(r);
  REQUIRE(!line.empty());
  REQUIRE(line.back() == '\n');
  line.pop_back();
  REQUIRE(line.find('\n') == std::string::npos);
  REQUIRE(valid_utf8(line));
  Object o;
  REQUIRE(parse_line(line, &o));
  return o;
}

Record sample() {
  Record r;
  r.time_ms = 1714566896789;  // 2024-05-01T12:34:56.789Z
  r.request_id = "req-1";
  r.client = "10.0.0.7";
  r.method = "POST";
  r.path = "/v1/chat/completions";
  r.model = "meta-llama/Llama-3.1-8B-Instruct";
  r.backend = "gpu0";
  r.termination = "ok";
  r.status = 200;
  r.ttft_ms = 123.4567;
  r.duration_ms = 2500.25;
  r.prompt_tokens_est = 812;
  r.completion_tokens = 256;
  r.bytes_out = 40960;
  r.stream = true;
  return r;
}

std::string read_file(const std::string& path) {
  std::string s;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return s;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    s.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return s;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> v;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {
      v.push_back(text.substr(pos) + "<no newline>");
      break;
    }
    v.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return v;
}

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/tr_accesslog_XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::string cmd = "rm -rf '" + path + "'";
    [[maybe_unused]] int rc = std::system(cmd.c_str());
  }
};

}  // namespace

// ---- the line ------------------------------------------------------------------

TEST_CASE("a record is one JSON line with fixed keys", "[accesslog]") {
  CHECK(format(sample()) ==
        "{\"time\":\"2024-05-01T12:34:56.789Z\",\"request_id\":\"req-1\","
        "\"client\":\"10.0.0.7\",\"method\":\"POST\",\"path\":\"/v1/chat/completions\","
        "\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"backend\":\"gpu0\",\"status\":200,"
        "\"stream\":true,\"ttft_ms\":123.457,\"duration_ms\":2500.250,"
        "\"prompt_tokens_est\":812,\"completion_tokens\":256,\"bytes_out\":40960,"
        "\"termination\":\"ok\"}\n");

  Object o = parsed(sample());
  CHECK(o.size() == 15);
  CHECK(o["time"].text == "2024-05-01T12:34:56.789Z");
  CHECK(o["status"].text == "200");
  CHECK(o["stream"].kind == Value::kTrue);
  CHECK(o["bytes_out"].text == "40960");
}

TEST_CASE("absent values are null; numbers stay numbers", "[accesslog]") {
  Record r = sample();
  r.model = "";
  r.backend = "";
  r.ttft_ms = -1;
  r.stream = false;
  r.status = 401;
  r.termination = "auth_failed";
  r.prompt_tokens_est = UINT64_MAX;
  Object o = parsed(r);
  CHECK(o["model"].kind == Value::kNull);
  CHECK(o["backend"].kind == Value::kNull);
  CHECK(o["ttft_ms"].kind == Value::kNull);
  CHECK(o["stream"].kind == Value::kFalse);
  CHECK(o["status"].text == "401");
  CHECK(o["prompt_tokens_est"].text == "18446744073709551615");

  r.ttft_ms = NAN;
  r.duration_ms = INFINITY;
  o = parsed(r);
  CHECK(o["ttft_ms"].kind == Value::kNull);
  CHECK(o["duration_ms"].kind == Value::kNull);
  r.ttft_ms = 0;
  r.duration_ms = 1e300;  // clamped, still a short number
  o = parsed(r);
  CHECK(o["ttft_ms"].text == "0.000");
  CHECK(o["duration_ms"].text == "1000000000000.000");
}

TEST_CASE("time is ISO-8601 UTC with milliseconds", "[accesslog]") {
  auto time_of = [](int64_t ms) {
    Record r = sample();
    r.time_ms = ms;
    return parsed(r)["time"].text;
  };
  CHECK(time_of(0) == "1970-01-01T00:00:00.000Z");
  CHECK(time_of(951782400000 + 1) == "2000-02-29T00:00:00.001Z");
  CHECK(time_of(1709164800000 - 1) == "2024-02-28T23:59:59.999Z");
  CHECK(time_of(-5) == "1970-01-01T00:00:00.000Z");  // clamped
  CHECK(time_of(INT64_MAX) == "9999-12-31T23:59:59.999Z");

  // Agrees with gmtime_r over a spread of instants 1970..2200.
  uint64_t x = 88172645463325252ull;
  for (int k = 0; k < 20000; ++k) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    int64_t ms = static_cast<int64_t>(x % 7258118400000ull);
    time_t secs = static_cast<time_t>(ms / 1000);
    struct tm tm;
    REQUIRE(gmtime_r(&secs, &tm) != nullptr);
    char want[80];
    std::snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(ms % 1000));
    Record r = sample();
    r.time_ms = ms;
    std::string line = format(r);
    REQUIRE(line.substr(9, 24) == want);
  }
}

TEST_CASE("strings are escaped; UTF-8 passes through; invalid bytes become U+FFFD", "[accesslog]") {
  Record r = sample();
  std::string nasty = "a\"b\\c\nd\re\tf\x01g\x1fh\x7fi/";
  r.request_id = nasty;
  r.model = "h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x98\x80";  // héllo 世界 😀
  r.path = "/v1/x?q=\"}{";
  r.client = std::string_view("nul\0byte", 8);
  std::string line = format(r);
  CHECK(line.find("\"request_id\":\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001fh\x7fi/\"") !=
        std::string::npos);
  CHECK(line.find("\"model\":\"h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x98\x80\"") !=
        std::string::npos);  // not \u-escaped: passed through
  Object o = parsed(r);
  CHECK(o["request_id"].text == nasty);
  CHECK(o["model"].text == std::string(r.model));
  CHECK(o["path"].text == "/v1/x?q=\"}{");
  CHECK(o["client"].text == std::string("nul\0byte", 8));

  // Invalid UTF-8: a lone continuation byte, a truncated sequence, an overlong
  // '/', a surrogate, a byte that never appears. Each bad byte is one U+FFFD.
  r.request_id = "a\x80z";
  CHECK(parsed(r)["request_id"].text == "a\xef\xbf\xbdz");
  r.request_id = "a\xe4\xb8";
  CHECK(parsed(r)["request_id"].text == "a\xef\xbf\xbd\xef\xbf\xbd");
  r.request_id = "\xc0\xaf";
  CHECK(parsed(r)["request_id"].text == "\xef\xbf\xbd\xef\xbf\xbd");
  r.request_id = "\xed\xa0\x80";
  CHECK(parsed(r)["request_id"].text == "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
  r.request_id = "x\xffy\xf5";
  CHECK(parsed(r)["request_id"].text == "x\xef\xbf\xbdy\xef\xbf\xbd");
  r.request_id = "\xf4\x8f\xbf\xbf";  // U+10FFFF: valid
  CHECK(parsed(r)["request_id"].text == "\xf4\x8f\xbf\xbf");
}

TEST_CASE("long fields are cut at a character boundary", "[accesslog]") {
  Record r = sample();
  std::string path = "/";
  while (path.size() < 5000)
    path += "\xe4\xb8\x96";  // 3-byte characters
  r.path = path;
  Object o = parsed(r);
  const std::string& got = o["path"].text;
  CHECK(got.size() <= tr::accesslog::kFieldBytesMax);
  CHECK(got.size() >= tr::accesslog::kFieldBytesMax - 3);
  CHECK(path.compare(0, got.size(), got) == 0);
  CHECK(valid_utf8(got));

  // Worst case: every field at the limit and every byte escaped to 6 bytes.
  std::string ctl(10000, '\x01');
  Record w = sample();
  w.request_id = w.client = w.method = w.path = w.model = w.backend = w.termination = ctl;
  std::string line = format(w);
  CHECK(line.size() <= tr::accesslog::kLineBytesMax);
  Object ow;
  line.pop_back();
  CHECK(parse_line(line, &ow));
}

// ---- files ---------------------------------------------------------------------

TEST_CASE("open creates the file with mode 0640 and reports failures", "[accesslog]") {
  TempDir dir;
  mode_t old = umask(0);
  AccessLog log;
  std::string err;
  std::string p = dir.path + "/access.log";
  REQUIRE(log.open(p, &err));
  umask(old);
  struct stat st;
  REQUIRE(stat(p.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0640);
  CHECK(log.path() == p);

  AccessLog bad;
  REQUIRE_FALSE(bad.open(dir.path + "/no/such/dir/access.log", &err));
  CHECK(err == dir.path + "/no/such/dir/access.log: cannot open: No such file or directory");
  CHECK_FALSE(bad.is_open());
}

TEST_CASE("write-through: each line is in the file when write returns", "[accesslog]") {
  TempDir dir;
  AccessLog log;
  std::string err;
  std::string p = dir.path + "/access.log";
  REQUIRE(log.open(p, &err));
  AccessLogWriter w(&log);
  Record r = sample();
  w.write(r);
  CHECK(read_file(p) == format(r));
  r.request_id = "req-2";
  w.write(r);
  CHECK(lines_of(read_file(p)).size() == 2);
  CHECK(w.lines() == 2);
  CHECK(w.errors() == 0);
}

TEST_CASE("buffered: lines wait for the threshold or flush()", "[accesslog]") {
  TempDir dir;
  AccessLog log;
  std::string err;
  std::string p = dir.path + "/access.log";
  REQUIRE(log.open(p, &err));
  size_t one = format(sample()).size();
  {
    AccessLogWriter w(&log, 32 * 1024);
    w.write(sample());
    w.write(sample());
    CHECK(read_file(p).empty());
    w.flush();
    CHECK(read_file(p).size() == 2 * one);
    size_t n = 0;
    while (read_file(p).size() == 2 * one) {
      w.write(sample());
      ++n;
      REQUIRE(n < 1000);
    }
    CHECK(n == 32 * 1024 / one + 1);  // written once more than 32 KiB were waiting
    CHECK(read_file(p).size() == (2 + n) * one);
    w.write(sample());
  }  // the destructor flushes
  CHECK(lines_of(read_file(p)).size() == 32 * 1024 / one + 4);
}

TEST_CASE("rotation: rename, request_reopen, and the new file gets the next line", "[accesslog]") {
  TempDir dir;
  AccessLog log;
  std::string err;
  std::string p = dir.path + "/access.log";
  REQUIRE(log.open(p, &err));
  AccessLogWriter w(&log);
  AccessLogWriter idle(&log);
  Record r = sample();
  r.request_id = "before";
  w.write(r);
  idle.write(r);
  REQUIRE(rename(p.c_str(), (p + ".1").c_str()) == 0);
  r.request_id = "after-rename";
  w.write(r);  // no reopen requested yet: still the renamed file
  log.request_reopen();
  r.request_id = "after-reopen";
  w.write(r);
  idle.flush();  // an idle worker's timer lets go of the old file too

  std::vector<std::string> old_lines = lines_of(read_file(p + ".1"));
  REQUIRE(old_lines.size() == 3);
  CHECK(old_lines[2].find("\"after-rename\"") != std::string::npos);
  std::vector<std::string> new_lines = lines_of(read_file(p));
  REQUIRE(new_lines.size() == 1);
  CHECK(new_lines[0].find("\"after-reopen\"") != std::string::npos);
  idle.write(r);
  CHECK(lines_of(read_file(p)).size() == 2);
  CHECK(lines_of(read_file(p + ".1")).size() == 3);
  CHECK(w.open_errors() == 0);
}

TEST_CASE("a failed reopen keeps the old file and is retried later", "[accesslog]") {
  TempDir dir;
  AccessLog log;
  std::string err;
  std::string sub = dir.path + "/logs";
  REQUIRE(mkdir(sub.c_str(), 0700) == 0);
  std::string p = sub + "/access.log";
  REQUIRE(log.open(p, &err));
  AccessLogWriter w(&log);
  w.write(sample());
  REQUIRE(rename(p.c_str(), (dir.path + "/access.log.1").c_str()) == 0);
  REQUIRE(rmdir(sub.c_str()) == 0);  // the path cannot be opened any more
  log.request_reopen();
  w.write(sample());
  w.write(sample());
  CHECK(w.open_errors() == 1);  // one attempt, not one per line
  CHECK(w.errors() == 0);
  CHECK(lines_of(read_file(dir.path + "/access.log.1")).size() == 3);
  REQUIRE(mkdir(sub.c_str(), 0700) == 0);
  log.request_reopen();  // a new request retries at once
  w.write(sample());
  CHECK(w.open_errors() == 1);
  CHECK(lines_of(read_file(p)).size() == 1);
}

TEST_CASE("disk full: writes fail, are counted, and nothing blocks or aborts", "[accesslog]") {
  AccessLog log;
  std::string err;
  if (!log.open("/dev/full", &err)) {
    WARN("skipped: /dev/full is not available: " << err);
    return;
  }
  AccessLogWriter w(&log);
  for (int i = 0; i < 100; ++i)
    w.write(sample());
  CHECK(w.lines() == 100);
  CHECK(w.errors() == 100);

  AccessLogWriter b(&log, 4096);
  for (int i = 0; i < 100; ++i)
    b.write(sample());
  b.flush();
  CHECK(b.errors() == 100);  // lines lost, counted one by one even when batched
}

TEST_CASE("two writers on two threads: 20k whole lines, none interleaved", "[accesslog]") {
  for (size_t flush_bytes : {size_t{0}, size_t{32 * 1024}}) {
    DYNAMIC_SECTION("flush_bytes = " << flush_bytes) {
      TempDir dir;
      AccessLog log;
      std::string err;
      std::string p = dir.path + "/access.log";
      REQUIRE(log.open(p, &err));
      constexpr int kLines = 10000;
      auto run = [&](int t) {
        AccessLogWriter w(&log, flush_bytes);
        std::string id;
        std::string path(1000, 'a' + static_cast<char>(t));
        for (int i = 0; i < kLines; ++i) {
          id = "t" + std::to_string(t) + "-" + std::to_string(i);
          Record r = sample();
          r.request_id = id;
          r.path = std::string_view(path).substr(0, static_cast<size_t>(i * 7919 % 1000));
          r.bytes_out = static_cast<uint64_t>(i);
          w.write(r);
        }
      };
      std::thread a(run, 0);
      std::thread b(run, 1);
      a.join();
      b.join();
      std::vector<std::string> lines = lines_of(read_file(p));
      REQUIRE(lines.size() == 2 * kLines);
      int next[2] = {0, 0};
      size_t bad = 0;
      for (const std::string& line : lines) {
        Object o;
        if (!parse_line(line, &o)) {
          ++bad;
          continue;
        }
        const std::string& id = o["request_id"].text;
        int t = id[1] - '0';
        // Each writer's lines appear in its own order.
        if (id != "t" + std::to_string(t) + "-" + std::to_string(next[t])) ++bad;
        ++next[t];
      }
      CHECK(bad == 0);
      CHECK(next[0] == kLines);
      CHECK(next[1] == kLines);
    }
  }
}

TEST_CASE("no allocation per line in steady state", "[accesslog]") {
  TempDir dir;
  AccessLog log;
  std::string err;
  std::string p = dir.path + "/access.log";
  REQUIRE(log.open(p, &err));
  std::string long_path(3000, '/');
  for (size_t flush_bytes : {size_t{0}, size_t{32 * 1024}}) {
    AccessLogWriter w(&log, flush_bytes);
    Record r = sample();
    r.path = long_path;
    r.request_id = "\x01\"\\\xff";
    w.write(r);  // warm: opens the file
    uint64_t before = g_allocations.load();
    for (int i = 0; i < 2000; ++i) {
      r.bytes_out = static_cast<uint64_t>(i);
      w.write(r);
      if (i == 1000) log.request_reopen();  // a reopen allocates nothing either
    }
    w.flush();
    uint64_t after = g_allocations.load();
    CHECK(after - before == 0);
    CHECK(w.errors() == 0);
  }
  CHECK(lines_of(read_file(p)).size() == 2 * 2001);
}
