// Unit tests for src/config: INI -> tr::Config, errors with exact lines,
// value syntax (sizes, addresses, URLs), bounds, and the reference table.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "config/config.hpp"

using tr::config::Error;
using tr::config::load_file;
using tr::config::load_string;
using tr::config::parse_sockaddr;

namespace {

// The example configuration from the issue, with the inline comments the
// example uses.
const char* const kExample = R"ini(; tokenrelay example configuration
[proxy]
listen = 0.0.0.0:8000        ; client-facing address
workers = auto               ; one worker per online CPU
io = auto                    ; io_uring when available, else epoll
drain_timeout_ms = 30000

[admin]
listen = 127.0.0.1:9100      ; /metrics, /status, /health

[poller]
interval_ms = 100            ; scrape each replica's /metrics every 100 ms
health_interval_ms = 1000
timeout_ms = 500

[limits]
body_bytes = 64MiB
stream_buffer_bytes = 1MiB

[timeouts]
upstream_first_byte_ms = 600000   ; long prompts can take a while to prefill

[upstream]
keepalive_per_backend = 32
max_attempts = 2

[backend gpu0]
url = http://10.0.0.5:8000
max_num_batched_tokens = 8192 ; --max-num-batched-tokens of this replica
max_num_seqs = 256

[backend gpu1]
url = http://10.0.0.6:8001/
weight = 2.5
)ini";

const char* const kOneBackend = "[backend a]\nurl = http://127.0.0.1:8001\n";

Error load_error(const std::string& text) {
  tr::Config cfg;
  Error err;
  bool ok = load_string(text, "t.ini", &cfg, &err);
  INFO("config:\n" << text);
  REQUIRE_FALSE(ok);
  CHECK(err.file == "t.ini");
  return err;
}

tr::Config load_ok(const std::string& text) {
  tr::Config cfg;
  Error err;
  bool ok = load_string(text, "t.ini", &cfg, &err);
  INFO(err.str());
  REQUIRE(ok);
  return cfg;
}

std::string ipv4_text(const tr::SockAddr& a) {
  REQUIRE(a.storage.ss_family == AF_INET);
  char buf[INET_ADDRSTRLEN];
  const auto* sin = reinterpret_cast<const sockaddr_in*>(&a.storage);
  REQUIRE(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf) != nullptr);
  return buf;
}

}  // namespace

TEST_CASE("example config parses to the expected values", "[config]") {
  tr::Config c = load_ok(kExample);
  CHECK(c.path == "t.ini");
  CHECK(c.proxy.listen.text == "0.0.0.0:8000");
  CHECK(ipv4_text(c.proxy.listen) == "0.0.0.0");
  CHECK(c.proxy.listen.port() == 8000);
  CHECK(c.proxy.listen.len == sizeof(sockaddr_in));
  CHECK(c.proxy.workers == 0);
  CHECK(c.proxy.io == tr::IoMode::automatic);
  CHECK(c.proxy.drain_timeout_ms == 30000);
  CHECK(c.admin.listen.text == "127.0.0.1:9100");
  CHECK(ipv4_text(c.admin.listen) == "127.0.0.1");
  CHECK(c.admin.listen.port() == 9100);
  CHECK(c.poller.interval_ms == 100);
  CHECK(c.poller.health_interval_ms == 1000);
  CHECK(c.poller.timeout_ms == 500);
  CHECK(c.limits.body_bytes == 64ull * 1024 * 1024);
  CHECK(c.limits.stream_buffer_bytes == 1024 * 1024);
  CHECK(c.timeouts.upstream_first_byte_ms == 600000);
  CHECK(c.upstream.keepalive_per_backend == 32);
  CHECK(c.upstream.max_attempts == 2);

  REQUIRE(c.backends.size() == 2);
  const tr::BackendConfig& b0 = c.backends[0];
  CHECK(b0.name == "gpu0");
  CHECK(b0.url == "http://10.0.0.5:8000");
  CHECK(b0.host == "10.0.0.5");
  CHECK(b0.port == 8000);
  CHECK(b0.base_path.empty());
  CHECK(b0.addr.port() == 8000);
  CHECK(ipv4_text(b0.addr) == "10.0.0.5");
  CHECK(b0.max_num_batched_tokens == 8192);
  CHECK(b0.max_num_seqs == 256);
  CHECK(b0.weight == 1.0);
  CHECK(b0.line == 27);
  const tr::BackendConfig& b1 = c.backends[1];
  CHECK(b1.name == "gpu1");
  CHECK(b1.port == 8001);
  CHECK(b1.base_path.empty());  // a lone trailing '/' is dropped
  CHECK(b1.max_num_batched_tokens == 0);
  CHECK(b1.max_num_seqs == 0);
  CHECK(b1.weight == 2.5);
  CHECK(b1.line == 32);
}

TEST_CASE("inline comments are stripped from values", "[config]") {
  tr::Config c = load_ok(
      std::string("[proxy]\nlisten = 0.0.0.0:8000        ; client-facing address\n") + kOneBackend);
  CHECK(c.proxy.listen.text == "0.0.0.0:8000");
  CHECK(c.proxy.listen.port() == 8000);
  // ';' not preceded by whitespace is part of the value (and so is invalid here).
  Error e = load_error(std::string("[proxy]\nworkers = 4;comment\n") + kOneBackend);
  CHECK(e.line == 2);
  // '#' only starts a comment at the beginning of a line; say so in the message.
  e = load_error(std::string("# comment\n[proxy]\nworkers = 4 # comment\n") + kOneBackend);
  CHECK(e.line == 3);
  CHECK(e.message.find("inline comments start with ';'") != std::string::npos);
}

TEST_CASE("defaults match include/tokenrelay/config.hpp", "[config]") {
  tr::Config c = load_ok(kOneBackend);
  const tr::Config d;  // the struct's own initializers
  CHECK(c.proxy.listen.text == "0.0.0.0:8000");
  CHECK(c.proxy.listen.port() == 8000);
  CHECK(c.admin.listen.text == "127.0.0.1:9100");
  CHECK(c.admin.listen.port() == 9100);
  CHECK(c.proxy.workers == d.proxy.workers);
  CHECK(c.proxy.io == d.proxy.io);
  CHECK(c.proxy.drain_timeout_ms == d.proxy.drain_timeout_ms);
  CHECK(c.proxy.reload_drain_timeout_ms == 600000);
  CHECK(c.proxy.recv_buffer_bytes == d.proxy.recv_buffer_bytes);
  CHECK(c.proxy.recv_buffers == d.proxy.recv_buffers);
  CHECK(c.poller.interval_ms == d.poller.interval_ms);
  CHECK(c.poller.health_interval_ms == d.poller.health_interval_ms);
  CHECK(c.poller.timeout_ms == d.poller.timeout_ms);
  CHECK(c.limits.request_line_bytes == d.limits.request_line_bytes);
  CHECK(c.limits.header_bytes == d.limits.header_bytes);
  CHECK(c.limits.header_count == d.limits.header_count);
  CHECK(c.limits.body_bytes == d.limits.body_bytes);
  CHECK(c.limits.connections_per_worker == d.limits.connections_per_worker);
  CHECK(c.limits.stream_buffer_bytes == d.limits.stream_buffer_bytes);
  CHECK(c.timeouts.client_header_ms == d.timeouts.client_header_ms);
  CHECK(c.timeouts.client_body_idle_ms == d.timeouts.client_body_idle_ms);
  CHECK(c.timeouts.keepalive_idle_ms == d.timeouts.keepalive_idle_ms);
  CHECK(c.timeouts.client_write_ms == d.timeouts.client_write_ms);
  CHECK(c.timeouts.upstream_connect_ms == d.timeouts.upstream_connect_ms);
  CHECK(c.timeouts.upstream_first_byte_ms == d.timeouts.upstream_first_byte_ms);
  CHECK(c.timeouts.upstream_idle_ms == d.timeouts.upstream_idle_ms);
  CHECK(c.upstream.keepalive_per_backend == d.upstream.keepalive_per_backend);
  CHECK(c.upstream.keepalive_idle_ms == d.upstream.keepalive_idle_ms);
  CHECK(c.upstream.max_attempts == d.upstream.max_attempts);
  REQUIRE(c.backends.size() == 1);
  const tr::BackendConfig bd;
  CHECK(c.backends[0].max_num_batched_tokens == bd.max_num_batched_tokens);
  CHECK(c.backends[0].max_num_seqs == bd.max_num_seqs);
  CHECK(c.backends[0].weight == bd.weight);
  CHECK(c.backends[0].line == 1);
}

TEST_CASE("every key can be set", "[config]") {
  tr::Config c = load_ok(R"ini([proxy]
listen = 127.0.0.1:0
workers = 8
io = epoll
drain_timeout_ms = 0
recv_buffer_bytes = 64k
recv_buffers = 1024
[admin]
listen = *:9200
[poller]
interval_ms = 250
health_interval_ms = 5000
timeout_ms = 2000
[limits]
request_line_bytes = 4096
header_bytes = 32K
header_count = 200
body_bytes = 1g
connections_per_worker = 1000
stream_buffer_bytes = 2m
[timeouts]
client_header_ms = 1
client_body_idle_ms = 2
keepalive_idle_ms = 3
client_write_ms = 4
upstream_connect_ms = 5
upstream_first_byte_ms = 6
upstream_idle_ms = 7
[upstream]
keepalive_per_backend = 0
keepalive_idle_ms = 3000
max_attempts = 16
[backend x]
url = http://127.0.0.1:9000/prefix/v1/
max_num_batched_tokens = 2048
max_num_seqs = 128
weight = 1000
)ini");
  CHECK(c.proxy.listen.port() == 0);
  CHECK(c.proxy.workers == 8);
  CHECK(c.proxy.io == tr::IoMode::epoll);
  CHECK(c.proxy.drain_timeout_ms == 0);
  CHECK(c.proxy.recv_buffer_bytes == 65536);
  CHECK(c.proxy.recv_buffers == 1024);
  CHECK(ipv4_text(c.admin.listen) == "0.0.0.0");
  CHECK(c.admin.listen.port() == 9200);
  CHECK(c.poller.interval_ms == 250);
  CHECK(c.poller.health_interval_ms == 5000);
  CHECK(c.poller.timeout_ms == 2000);
  CHECK(c.limits.request_line_bytes == 4096);
  CHECK(c.limits.header_bytes == 32768);
  CHECK(c.limits.header_count == 200);
  CHECK(c.limits.body_bytes == 1024ull * 1024 * 1024);
  CHECK(c.limits.connections_per_worker == 1000);
  CHECK(c.limits.stream_buffer_bytes == 2 * 1024 * 1024);
  CHECK(c.timeouts.client_header_ms == 1);
  CHECK(c.timeouts.client_body_idle_ms == 2);
  CHECK(c.timeouts.keepalive_idle_ms == 3);
  CHECK(c.timeouts.client_write_ms == 4);
  CHECK(c.timeouts.upstream_connect_ms == 5);
  CHECK(c.timeouts.upstream_first_byte_ms == 6);
  CHECK(c.timeouts.upstream_idle_ms == 7);
  CHECK(c.upstream.keepalive_per_backend == 0);
  CHECK(c.upstream.keepalive_idle_ms == 3000);
  CHECK(c.upstream.max_attempts == 16);
  REQUIRE(c.backends.size() == 1);
  CHECK(c.backends[0].base_path == "/prefix/v1");
  CHECK(c.backends[0].max_num_batched_tokens == 2048);
  CHECK(c.backends[0].max_num_seqs == 128);
  CHECK(c.backends[0].weight == 1000.0);

  // io = io_uring, and "key: value" (inih's configparser form).
  tr::Config c2 = load_ok(std::string("[proxy]\nio: io_uring\n") + kOneBackend);
  CHECK(c2.proxy.io == tr::IoMode::io_uring);
}

TEST_CASE("errors carry the exact line", "[config]") {
  SECTION("unknown section") {
    Error e = load_error("[proxy]\nworkers = 2\n\n[proxies]\nlisten = 0.0.0.0:1\n");
    CHECK(e.line == 4);
    CHECK(e.message.find("unknown section [proxies]") != std::string::npos);
    CHECK(e.str().rfind("t.ini:4: unknown section [proxies]", 0) == 0);
  }
  SECTION("section names are exact") {
    CHECK(load_error("[Proxy]\n").line == 1);
    CHECK(load_error(std::string(kOneBackend) + "[backends x]\n").line == 3);
  }
  SECTION("unknown key names the key and the section") {
    Error e = load_error("; comment\n[proxy]\nlisen = 0.0.0.0:8000\n");
    CHECK(e.line == 3);
    CHECK(e.message.rfind("unknown key \"lisen\" in [proxy]", 0) == 0);
    CHECK(e.message.find("did you mean \"listen\"") != std::string::npos);
    e = load_error("[backend gpu0]\nurl = http://127.0.0.1:1\nmax_seqs = 4\n");
    CHECK(e.line == 3);
    CHECK(e.message.rfind("unknown key \"max_seqs\" in [backend gpu0]", 0) == 0);
  }
  SECTION("key valid elsewhere is unknown in the wrong section") {
    Error e = load_error("[admin]\nworkers = 4\n");
    CHECK(e.line == 2);
    CHECK(e.message.rfind("unknown key \"workers\" in [admin]", 0) == 0);
  }
  SECTION("malformed value names key, value and what is expected") {
    Error e = load_error(std::string(kOneBackend) + "[proxy]\n\nworkers = many\n");
    CHECK(e.line == 5);
    CHECK(e.message ==
          "invalid value \"many\" for key \"workers\" in [proxy]: expected \"auto\" or an "
          "integer in 1..1024");
    e = load_error("[timeouts]\nclient_header_ms = 10s\n");
    CHECK(e.line == 2);
    CHECK(e.message.find("\"10s\"") != std::string::npos);
    CHECK(e.message.find("client_header_ms") != std::string::npos);
    CHECK(e.message.find("expected an integer in 1..86400000") != std::string::npos);
    e = load_error("[proxy]\nio = kqueue\n");
    CHECK(e.message.find("expected auto, io_uring or epoll") != std::string::npos);
    e = load_error("[limits]\nbody_bytes =\n");
    CHECK(e.line == 2);
    CHECK(e.message.find("invalid value \"\" for key \"body_bytes\"") != std::string::npos);
  }
  SECTION("duplicate key in a section") {
    Error e = load_error("[proxy]\nworkers = 2\nio = epoll\nworkers = 3\n");
    CHECK(e.line == 4);
    CHECK(e.message == "duplicate key \"workers\" in [proxy] (first at line 2)");
    e = load_error("[backend a]\nurl = http://127.0.0.1:1\nurl = http://127.0.0.1:2\n");
    CHECK(e.line == 3);
    CHECK(e.message.find("duplicate key \"url\" in [backend a]") == 0);
  }
  SECTION("duplicate section") {
    Error e = load_error("[proxy]\nworkers = 2\n[admin]\n[proxy]\nio = epoll\n");
    CHECK(e.line == 4);
    CHECK(e.message == "duplicate section [proxy] (first at line 1)");
  }
  SECTION("duplicate backend name") {
    Error e = load_error(
        "[backend a]\nurl = http://127.0.0.1:1\n[backend b]\nurl = http://127.0.0.1:2\n"
        "[backend a]\nurl = http://127.0.0.1:3\n");
    CHECK(e.line == 5);
    CHECK(e.message == "duplicate backend name \"a\" (first at line 1)");
  }
  SECTION("invalid backend names") {
    CHECK(load_error("[proxy]\n[backend]\n").line == 2);
    Error e = load_error("[backend a/b]\nurl = http://127.0.0.1:1\n");
    CHECK(e.line == 1);
    CHECK(e.message.find("invalid backend name \"a/b\"") == 0);
    CHECK(load_error("[backend a b]\n").line == 1);
    CHECK(load_error("[backend " + std::string(65, 'x') + "]\n").line == 1);
    tr::Config c = load_ok("[backend " + std::string(64, 'x') + "]\nurl = http://127.0.0.1:1\n");
    CHECK(c.backends[0].name.size() == 64);
    c = load_ok("[backend gpu-0.a_B]\nurl = http://127.0.0.1:1\n");
    CHECK(c.backends[0].name == "gpu-0.a_B");
  }
  SECTION("missing url reports the section header line") {
    Error e = load_error(
        "[backend a]\nurl = http://127.0.0.1:1\n\n[backend b]\nweight = 2\n"
        "\n[proxy]\nworkers = 2\n");
    CHECK(e.line == 4);
    CHECK(e.message == "[backend b] has no url (required)");
    // A backend with no keys at all, and the last section of the file.
    e = load_error("[backend a]\nurl = http://127.0.0.1:1\n[backend empty]\n");
    CHECK(e.line == 3);
    CHECK(e.message == "[backend empty] has no url (required)");
    e = load_error("[proxy]\n[backend only]\n; nothing here\n");
    CHECK(e.line == 2);
  }
  SECTION("no backend at all") {
    Error e = load_error("[proxy]\nworkers = 2\n");
    CHECK(e.line == 0);
    CHECK(e.message == "no [backend NAME] section: at least one replica is required");
    CHECK(e.str() == "t.ini: no [backend NAME] section: at least one replica is required");
    CHECK(load_error("").line == 0);
  }
  SECTION("inih syntax errors") {
    Error e = load_error("[proxy]\nworkers = 2\njust some words\n[admin]\n");
    CHECK(e.line == 3);
    CHECK(e.message.find("expected \"key = value\"") != std::string::npos);
    e = load_error("[proxy]\nworkers = 2\n[admin\nlisten = 127.0.0.1:1\n");
    CHECK(e.line == 3);
    CHECK(e.message.find("malformed section header") != std::string::npos);
    // The first error in file order wins over a later semantic error.
    e = load_error("[proxy]\nbogus line\nunknown_key = 1\n");
    CHECK(e.line == 2);
    // ... and a semantic error before a syntax error wins too.
    e = load_error("[proxy]\nunknown_key = 1\nbogus line\n");
    CHECK(e.line == 2);
    CHECK(e.message.find("unknown key") == 0);
  }
  SECTION("key outside any section") {
    Error e = load_error("\nworkers = 2\n[proxy]\n");
    CHECK(e.line == 2);
    CHECK(e.message.find("outside any section") != std::string::npos);
  }
  SECTION("indented continuation lines are rejected, not glued") {
    Error e = load_error("[proxy]\nworkers = 2\n  io = epoll\n");
    CHECK(e.line == 3);
    CHECK(e.message.find("multi-line values are not supported") != std::string::npos);
    // Indentation is fine when no key precedes it in the section.
    tr::Config c = load_ok(std::string("[proxy]\n  workers = 2\n") + kOneBackend);
    CHECK(c.proxy.workers == 2);
  }
  SECTION("overlong lines are rejected, not split") {
    std::string long_value(300, '1');
    Error e = load_error("[proxy]\nworkers = " + long_value + "\n");
    CHECK(e.line == 2);
    CHECK(e.message.find("line is too long") == 0);
    // An overlong comment, or an overlong inline comment, is fine.
    std::string text = "; " + std::string(400, 'c') + "\n[proxy]\nworkers = 2   ; " +
                       std::string(400, 'c') + "\n" + kOneBackend;
    tr::Config c = load_ok(text);
    CHECK(c.proxy.workers == 2);
  }
  SECTION("CRLF line endings and a UTF-8 BOM") {
    tr::Config c = load_ok(
        "\xEF\xBB\xBF[proxy]\r\nworkers = 3\r\n[backend a]\r\nurl = http://127.0.0.1:5\r\n");
    CHECK(c.proxy.workers == 3);
    CHECK(c.backends[0].port == 5);
    Error e = load_error("\xEF\xBB\xBF[proxy]\r\nworkers = x\r\n");
    CHECK(e.line == 2);
  }
  SECTION("NUL byte") {
    std::string text = "[proxy]\nworkers = 2";
    text += '\0';
    text += "\n";
    CHECK(load_error(text).line == 2);
  }
}

TEST_CASE("load_file", "[config]") {
  SECTION("file not found") {
    tr::Config c;
    Error e;
    REQUIRE_FALSE(load_file("/nonexistent/dir/tokenrelay.ini", &c, &e));
    CHECK(e.line == 0);
    CHECK(e.str() == "/nonexistent/dir/tokenrelay.ini: cannot open: No such file or directory");
  }
  SECTION("reads a real file and names it in errors") {
    char path[] = "/tmp/tr_test_config_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    std::string text = std::string(kExample) + "[poller]\n";  // duplicate section on line 35
    REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
    close(fd);
    tr::Config c;
    Error e;
    REQUIRE_FALSE(load_file(path, &c, &e));
    CHECK(e.file == path);
    CHECK(e.line == 35);
    CHECK(e.str() == std::string(path) + ":35: duplicate section [poller] (first at line 11)");

    std::ofstream(path, std::ios::trunc) << kExample;
    REQUIRE(load_file(path, &c, &e));
    CHECK(c.path == path);
    CHECK(c.backends.size() == 2);
    unlink(path);
  }
  SECTION("a directory is not a config file") {
    tr::Config c;
    Error e;
    REQUIRE_FALSE(load_file("/tmp", &c, &e));
    CHECK(e.line == 0);
    CHECK_FALSE(e.message.empty());
  }
  SECTION("output untouched on failure") {
    tr::Config c;
    c.proxy.workers = 77;
    Error e;
    REQUIRE_FALSE(load_string("[proxy]\nworkers = 2\nbad = 1\n", "x", &c, &e));
    CHECK(c.proxy.workers == 77);
    CHECK(c.backends.empty());
  }
}

TEST_CASE("size values", "[config]") {
  auto body = [](const std::string& v) {
    return load_ok("[limits]\nbody_bytes = " + v + "\n" + kOneBackend).limits.body_bytes;
  };
  CHECK(body("1024") == 1024);
  CHECK(body("16k") == 16 * 1024);
  CHECK(body("16K") == 16 * 1024);
  CHECK(body("16KiB") == 16 * 1024);
  CHECK(body("16 KiB") == 16 * 1024);
  CHECK(body("3m") == 3 * 1024 * 1024);
  CHECK(body("3M") == 3 * 1024 * 1024);
  CHECK(body("3MiB") == 3 * 1024 * 1024);
  CHECK(body("2g") == 2ull * 1024 * 1024 * 1024);
  CHECK(body("2G") == 2ull * 1024 * 1024 * 1024);
  CHECK(body("4GiB") == 4ull * 1024 * 1024 * 1024);
  for (const char* bad : {"", "k", "-1", "+5", "0x400", "1.5M", "16kb", "16KB", "16 k b", "5T",
                          "99999999999999999999", "18014398509481984G", "5GiB", "1023", " 1024x"}) {
    INFO("value: " << bad);
    Error e = load_error(std::string("[limits]\nbody_bytes = ") + bad + "\n" + kOneBackend);
    CHECK(e.line == 2);
    CHECK(e.message.find("expected a size in 1KiB..4GiB") != std::string::npos);
  }
  // A size stored in a 32-bit field cannot exceed its bound.
  CHECK(load_error("[limits]\nstream_buffer_bytes = 4g\n").line == 2);
}

TEST_CASE("integer values: decimal only, in bounds", "[config]") {
  auto workers = [](const std::string& v) {
    return load_ok("[proxy]\nworkers = " + v + "\n" + kOneBackend).proxy.workers;
  };
  CHECK(workers("1") == 1);
  CHECK(workers("1024") == 1024);
  CHECK(workers("auto") == 0);
  CHECK(workers("007") == 7);
  for (const char* bad :
       {"0", "1025", "-1", "+1", "1e3", "0x10", "AUTO", "4.0", "4 4", "18446744073709551616"}) {
    INFO("value: " << bad);
    CHECK(load_error(std::string("[proxy]\nworkers = ") + bad + "\n").line == 2);
  }
  // Powers of two.
  CHECK(load_ok("[proxy]\nrecv_buffers = 64\n" + std::string(kOneBackend)).proxy.recv_buffers ==
        64);
  CHECK(load_ok("[proxy]\nrecv_buffers = 32768\n" + std::string(kOneBackend)).proxy.recv_buffers ==
        32768);
  Error e = load_error("[proxy]\nrecv_buffers = 1000\n");
  CHECK(e.message.find("power of two") != std::string::npos);
  CHECK(load_error("[proxy]\nrecv_buffers = 32\n").line == 2);
  CHECK(load_error("[proxy]\nrecv_buffers = 65536\n").line == 2);
  CHECK(load_error("[proxy]\nrecv_buffer_bytes = 3000\n").line == 2);
  CHECK(load_error("[proxy]\nrecv_buffer_bytes = 2k\n").line == 2);
  CHECK(load_error("[proxy]\nrecv_buffer_bytes = 2m\n").line == 2);
  CHECK(load_ok("[proxy]\nrecv_buffer_bytes = 1m\n" + std::string(kOneBackend))
            .proxy.recv_buffer_bytes == 1024 * 1024);
  // Timeouts.
  CHECK(load_error("[timeouts]\nclient_write_ms = 0\n").line == 2);
  CHECK(load_error("[timeouts]\nclient_write_ms = 86400001\n").line == 2);
  CHECK(load_ok("[timeouts]\nclient_write_ms = 86400000\n" + std::string(kOneBackend))
            .timeouts.client_write_ms == 86400000);
  CHECK(load_error("[poller]\ninterval_ms = 9\n").line == 2);
  CHECK(load_error("[upstream]\nmax_attempts = 0\n").line == 2);
}

TEST_CASE("weight bounds", "[config]") {
  auto weight = [](const std::string& v) {
    return load_ok("[backend a]\nurl = http://127.0.0.1:1\nweight = " + v + "\n")
        .backends[0]
        .weight;
  };
  CHECK(weight("0.001") == 0.001);
  CHECK(weight("1000") == 1000.0);
  CHECK(weight("3") == 3.0);
  for (const char* bad : {"0", "-1", "1000.5", "nan", "inf", "1,5", "", "heavy", "0x10"}) {
    INFO("value: " << bad);
    Error e =
        load_error(std::string("[backend a]\nurl = http://127.0.0.1:1\nweight = ") + bad + "\n");
    CHECK(e.line == 3);
    CHECK(e.message.find("expected a number > 0 and <= 1000") != std::string::npos);
  }
  // A real that may also be 0 (off).
  auto imposed = [](const std::string& v) {
    return load_ok("[routing]\nimposed_weight = " + v + "\n[backend a]\nurl = http://127.0.0.1:1\n")
        .routing.imposed_weight;
  };
  CHECK(imposed("0") == 0.0);
  CHECK(imposed("1") == 1.0);
  for (const char* bad : {"-1", "-0.5", "1001", "nan"}) {
    INFO("value: " << bad);
    Error e = load_error(std::string("[routing]\nimposed_weight = ") + bad +
                         "\n[backend a]\nurl = http://127.0.0.1:1\n");
    CHECK(e.line == 2);
    CHECK(e.message.find("expected a number 0, or > 0 and <= 1000") != std::string::npos);
  }
}

TEST_CASE("backend url", "[config]") {
  auto backend = [](const std::string& url) {
    return load_ok("[backend a]\nurl = " + url + "\n").backends[0];
  };
  tr::BackendConfig b = backend("http://127.0.0.1");
  CHECK(b.port == 80);
  CHECK(b.addr.port() == 80);
  CHECK(b.host == "127.0.0.1");
  b = backend("HTTP://127.0.0.1:8000/v1//");
  CHECK(b.port == 8000);
  CHECK(b.base_path == "/v1");
  CHECK(b.url == "HTTP://127.0.0.1:8000/v1//");
  b = backend("http://[::1]:8001/base");
  CHECK(b.host == "[::1]");
  CHECK(b.port == 8001);
  CHECK(b.addr.storage.ss_family == AF_INET6);
  CHECK(b.addr.port() == 8001);
  CHECK(b.base_path == "/base");
  b = backend("http://localhost:9000");
  CHECK(b.host == "localhost");
  CHECK(b.addr.port() == 9000);

  Error e = load_error("[backend a]\nurl = https://10.0.0.1:8000\n");
  CHECK(e.line == 2);
  CHECK(e.message.find("https upstreams are not supported") != std::string::npos);
  for (const char* bad :
       {"10.0.0.1:8000", "ftp://10.0.0.1", "http://", "http://:80", "http://10.0.0.1:0",
        "http://10.0.0.1:65536", "http://10.0.0.1:", "http://10.0.0.1:x", "http://u@10.0.0.1",
        "http://10.0.0.1/v1?x=1", "http://::1:80", "http://[::1", "http://[::1]x",
        "http://10.0.0.1/a b", "http://no-such-host.invalid"}) {
    INFO("url: " << bad);
    Error be = load_error(std::string("[backend a]\nurl = ") + bad + "\n");
    CHECK(be.line == 2);
    CHECK(be.message.find("invalid value") == 0);
  }
}

TEST_CASE("parse_sockaddr", "[config]") {
  tr::SockAddr a;
  std::string why;
  REQUIRE(parse_sockaddr("10.1.2.3:8080", &a, &why));
  CHECK(ipv4_text(a) == "10.1.2.3");
  CHECK(a.port() == 8080);
  CHECK(a.len == sizeof(sockaddr_in));
  CHECK(a.text == "10.1.2.3:8080");
  CHECK(a.sa()->sa_family == AF_INET);

  REQUIRE(parse_sockaddr("*:9000", &a, &why));
  CHECK(ipv4_text(a) == "0.0.0.0");
  CHECK(a.port() == 9000);

  REQUIRE(parse_sockaddr("[::1]:443", &a, &why));
  CHECK(a.storage.ss_family == AF_INET6);
  CHECK(a.len == sizeof(sockaddr_in6));
  CHECK(a.port() == 443);
  const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
  CHECK(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));

  REQUIRE(parse_sockaddr("[::]:0", &a, &why));
  CHECK(a.port() == 0);
  CHECK(a.storage.ss_family == AF_INET6);

  REQUIRE(parse_sockaddr("[2001:db8::5]:65535", &a, &why));
  CHECK(a.port() == 65535);

  REQUIRE(parse_sockaddr("localhost:80", &a, &why));
  CHECK(a.port() == 80);
  CHECK(a.storage.ss_family == AF_INET);  // IPv4 preferred when a name has both

  struct Bad {
    const char* text;
    const char* why;
  };
  for (const Bad& bad : {Bad{"", "missing :port"}, Bad{"10.0.0.1", "missing :port"},
                         Bad{"10.0.0.1:", "port must be"}, Bad{":80", "missing host"},
                         Bad{"10.0.0.1:65536", "port must be"}, Bad{"10.0.0.1:-1", "port must be"},
                         Bad{"10.0.0.1:http", "port must be"}, Bad{"::1:80", "brackets"},
                         Bad{"[::1]", "missing :port"}, Bad{"[::1:80", "missing ']'"},
                         Bad{"[10.0.0.1]:80", "invalid IPv6 address"},
                         Bad{"no-such-host.invalid:80", "cannot resolve host"}}) {
    INFO("text: " << bad.text);
    why.clear();
    CHECK_FALSE(parse_sockaddr(bad.text, &a, &why));
    CHECK(why.find(bad.why) != std::string::npos);
  }
}

TEST_CASE("Error::str", "[config]") {
  CHECK((Error{"a.ini", 12, "boom"}).str() == "a.ini:12: boom");
  CHECK((Error{"a.ini", 0, "boom"}).str() == "a.ini: boom");
}

TEST_CASE("reference_markdown mentions every key", "[config]") {
  std::string md = tr::config::reference_markdown();
  struct Row {
    const char* section;
    const char* key;
  };
  const Row rows[] = {
      {"[proxy]", "listen"},
      {"[proxy]", "workers"},
      {"[proxy]", "io"},
      {"[proxy]", "drain_timeout_ms"},
      {"[proxy]", "reload_drain_timeout_ms"},
      {"[proxy]", "recv_buffer_bytes"},
      {"[proxy]", "recv_buffers"},
      {"[admin]", "listen"},
      {"[poller]", "interval_ms"},
      {"[poller]", "health_interval_ms"},
      {"[poller]", "timeout_ms"},
      {"[poller]", "rise"},
      {"[poller]", "fall"},
      {"[limits]", "request_line_bytes"},
      {"[limits]", "header_bytes"},
      {"[limits]", "header_count"},
      {"[limits]", "body_bytes"},
      {"[limits]", "connections_per_worker"},
      {"[limits]", "stream_buffer_bytes"},
      {"[timeouts]", "client_header_ms"},
      {"[timeouts]", "client_body_idle_ms"},
      {"[timeouts]", "keepalive_idle_ms"},
      {"[timeouts]", "client_write_ms"},
      {"[timeouts]", "upstream_connect_ms"},
      {"[timeouts]", "upstream_first_byte_ms"},
      {"[timeouts]", "upstream_idle_ms"},
      {"[upstream]", "keepalive_per_backend"},
      {"[upstream]", "keepalive_idle_ms"},
      {"[upstream]", "max_attempts"},
      {"[routing]", "policy"},
      {"[routing]", "ttft_weight"},
      {"[routing]", "imposed_weight"},
      {"[routing]", "sample_above"},
      {"[routing]", "sample_size"},
      {"[eject]", "failures"},
      {"[eject]", "base_ms"},
      {"[eject]", "max_ms"},
      {"[eject]", "max_percent"},
      {"[eject]", "slow_start_ms"},
      {"[admission]", "max_inflight"},
      {"[admission]", "max_queue"},
      {"[admission]", "queue_timeout_ms"},
      {"[admission]", "retry_after_s"},
      {"[auth]", "api_keys_file"},
      {"[log]", "access_log"},
      {"[backend NAME]", "url"},
      {"[backend NAME]", "max_num_batched_tokens"},
      {"[backend NAME]", "max_num_seqs"},
      {"[backend NAME]", "weight"},
      {"[backend NAME]", "api_key"},
      {"[backend NAME]", "max_inflight"},
      {"[routing]", "imposed_cap"},
      {"[routing]", "observed_itl"},
      {"[backend NAME]", "models"},
      {"[backend NAME]", "scheduling"},
      {"[backend NAME]", "long_prefill_token_threshold"},
      {"[model NAME]", "targets"},
  };
  size_t table_rows = 0;
  for (size_t pos = 0; (pos = md.find("\n| `[", pos)) != std::string::npos; ++pos)
    ++table_rows;
  CHECK(table_rows == std::size(rows));
  for (const Row& r : rows) {
    std::string cell = std::string("| `") + r.section + "` | `" + r.key + "` |";
    INFO(cell);
    CHECK(md.find(cell) != std::string::npos);
  }
  CHECK(md.find("| `[proxy]` | `listen` | address: host:port, [v6]:port, *:port | "
                "`0.0.0.0:8000` |") != std::string::npos);
  CHECK(md.find("| `[backend NAME]` | `url` | URL: http://host[:port][/base] | required |") !=
        std::string::npos);
}

TEST_CASE("docs/CONFIG.md embeds the current reference table", "[config]") {
  // Locate the doc from this source file; tests may run from any build dir.
  std::string here = __FILE__;
  std::string root = here.substr(0, here.rfind("tests/unit/"));
  std::ifstream doc(root + "docs/CONFIG.md");
  if (!doc) {
    WARN("docs/CONFIG.md not found from " << here << "; skipping the drift check");
    return;
  }
  std::stringstream ss;
  ss << doc.rdbuf();
  INFO("regenerate the table in docs/CONFIG.md from tr::config::reference_markdown()");
  CHECK(ss.str().find(tr::config::reference_markdown()) != std::string::npos);
}

TEST_CASE("model pools: models, scheduling and [model NAME] aliases", "[config]") {
  tr::Config c = load_ok(
      "[backend a]\nurl = http://127.0.0.1:1\nmodels = meta-llama/Llama-3.1-8B, sql:v2 ,x\n"
      "scheduling = priority\nlong_prefill_token_threshold = 512\n"
      "[backend b]\nurl = http://127.0.0.1:2\n"
      "[model chat]\ntargets = meta-llama/Llama-3.1-8B:90, rc:10\n"
      "[model sql]\ntargets = sql:v2\n");
  REQUIRE(c.backends.size() == 2);
  CHECK(c.backends[0].models == std::vector<std::string>{"meta-llama/Llama-3.1-8B", "sql:v2", "x"});
  CHECK(c.backends[0].scheduling == "priority");
  CHECK(c.backends[0].long_prefill_token_threshold == 512);
  CHECK(c.backends[1].models.empty());
  CHECK(c.backends[1].scheduling == "fcfs");
  REQUIRE(c.models.size() == 2);
  CHECK(c.models[0].name == "chat");
  CHECK(c.models[0].line == 8);
  REQUIRE(c.models[0].targets.size() == 2);
  CHECK(c.models[0].targets[0].model == "meta-llama/Llama-3.1-8B");
  CHECK(c.models[0].targets[0].weight == 90);
  CHECK(c.models[0].targets[1].model == "rc");
  CHECK(c.models[0].targets[1].weight == 10);
  // "sql:v2" has no numeric weight after its last ':': the whole is the name.
  REQUIRE(c.models[1].targets.size() == 1);
  CHECK(c.models[1].targets[0].model == "sql:v2");
  CHECK(c.models[1].targets[0].weight == 1);
}

TEST_CASE("model pool errors name the line", "[config]") {
  const std::string b = kOneBackend;  // lines 1-2
  struct Case {
    std::string text;
    int line;
    const char* says;
  };
  const Case cases[] = {
      {b + "[model x]\n", 3, "[model x] has no targets (required)"},
      {b + "[model x]\ntargets = y:0\n", 4, "outside 1..1000000"},
      {b + "[model x]\ntargets = y, y\n", 4, "listed twice"},
      {b + "[model x]\ntargets = a,,b\n", 4, "empty target"},
      {b + "[model x]\ntargets = x\n", 3, "names itself"},
      {b + "[model x]\ntargets = y\n[model y]\ntargets = z\n", 3, "is itself a [model] section"},
      {b + "[model x]\ntargets = a\n[model x]\ntargets = b\n", 5, "duplicate section [model x]"},
      {b + "[model]\n", 3, "needs a model name"},
      {b + "[model a\"b]\ntargets = c\n", 3, "invalid model name"},
      {b + "models = a b\n", 3, "invalid model name"},
      {b + "models = a, a\n", 3, "listed twice"},
      {b + "scheduling = lifo\n", 3, "expected fcfs or priority"},
      {b + "[model x]\nurl = http://127.0.0.1:1\n", 4, "unknown key \"url\" in [model x]"},
  };
  for (const Case& k : cases) {
    Error e = load_error(k.text);
    INFO(e.str());
    CHECK(e.line == k.line);
    CHECK(e.message.find(k.says) != std::string::npos);
  }
}
