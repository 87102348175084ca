// libFuzzer target: the config loader, tr::config::load_string
// (src/config/config.hpp), on the input as the text of an INI file; and
// tr::config::parse_sockaddr on its first line.
//
// Host names: the loader resolves them with getaddrinfo(3). A fuzzer must not
// send DNS queries (slow, and the result would depend on the network), so
// this target replaces getaddrinfo for its process with one that only reads
// numeric addresses, plus "localhost" as 127.0.0.1; other names fail as
// unknown (EAI_NONAME), which the loader must report as an error.
//
// Checks, beyond the sanitizers:
//  - on success: at least one backend, at most kBackendsMax, names valid and
//    unique, urls split into host/port/base_path consistently, resolved
//    addresses with the configured port, values inside the bounds the key
//    table documents (docs/CONFIG.md);
//  - on failure: the error names the file, has a message, and its line is 0
//    or a line of the text;
//  - the result does not depend on a trailing comment line, and loading the
//    same text twice gives the same result.
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <string_view>

#include "../common.hpp"
#include "config/config.hpp"

extern "C" int getaddrinfo(const char* node, const char* service, const struct addrinfo* hints,
                           struct addrinfo** res) {
  using Fn = int (*)(const char*, const char*, const struct addrinfo*, struct addrinfo**);
  static Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "getaddrinfo"));
  FUZZ_CHECK(real != nullptr);
  struct addrinfo h = {};
  if (hints != nullptr) h = *hints;
  h.ai_flags |= AI_NUMERICHOST;  // never a lookup
  if (node != nullptr && std::strcmp(node, "localhost") == 0) node = "127.0.0.1";
  return real(node, service, &h, res);
}

namespace {

constexpr const char* kName = "fuzz.ini";

bool is_pow2(uint64_t v) {
  return v != 0 && (v & (v - 1)) == 0;
}

bool valid_backend_name(std::string_view n) {
  if (n.empty() || n.size() > tr::config::kBackendNameBytesMax) return false;
  for (char c : n) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

void check_addr(const tr::SockAddr& a) {
  FUZZ_CHECK(a.len > 0);
  FUZZ_CHECK(a.len <= sizeof a.storage);
  FUZZ_CHECK(a.storage.ss_family == AF_INET || a.storage.ss_family == AF_INET6);
  FUZZ_CHECK(a.len ==
             (a.storage.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6)));
}

void check_config(const tr::Config& c) {
  FUZZ_CHECK(c.path == kName);
  FUZZ_CHECK(!c.backends.empty());
  FUZZ_CHECK(c.backends.size() <= tr::config::kBackendsMax);
  check_addr(c.proxy.listen);
  check_addr(c.admin.listen);
  FUZZ_CHECK(c.proxy.workers <= 1024);
  FUZZ_CHECK(is_pow2(c.proxy.recv_buffer_bytes));
  FUZZ_CHECK(c.proxy.recv_buffer_bytes >= 4096 && c.proxy.recv_buffer_bytes <= (1u << 20));
  FUZZ_CHECK(is_pow2(c.proxy.recv_buffers));
  FUZZ_CHECK(c.proxy.recv_buffers >= 64 && c.proxy.recv_buffers <= 32768);
  FUZZ_CHECK(c.limits.request_line_bytes >= 256 && c.limits.request_line_bytes <= (1u << 20));
  FUZZ_CHECK(c.limits.header_bytes >= 1024 && c.limits.header_bytes <= (1u << 20));
  FUZZ_CHECK(c.limits.header_count >= 8 && c.limits.header_count <= 10000);
  FUZZ_CHECK(c.limits.body_bytes >= 1024 && c.limits.body_bytes <= (4ull << 30));
  FUZZ_CHECK(c.limits.stream_buffer_bytes >= 4096 && c.limits.stream_buffer_bytes <= (64u << 20));
  FUZZ_CHECK(c.poller.interval_ms >= 10 && c.poller.interval_ms <= 60000);
  FUZZ_CHECK(c.upstream.max_attempts >= 1 && c.upstream.max_attempts <= 16);
  FUZZ_CHECK(c.routing.ttft_weight > 0 && c.routing.ttft_weight <= 1000);
  FUZZ_CHECK(c.routing.sample_size >= 2 && c.routing.sample_size <= 256);
  FUZZ_CHECK(c.eject.max_percent <= 100);
  static const std::set<std::string> kPolicies = {"round_robin", "least_requests", "power_of_two",
                                                  "kv_aware", "latency"};
  FUZZ_CHECK(kPolicies.count(c.routing.policy) == 1);
  std::set<std::string> names;
  for (const tr::BackendConfig& b : c.backends) {
    FUZZ_CHECK(valid_backend_name(b.name));
    FUZZ_CHECK(names.insert(b.name).second);
    FUZZ_CHECK(b.url.size() > 7);
    FUZZ_CHECK(!b.host.empty());
    FUZZ_CHECK(b.port != 0);
    FUZZ_CHECK(b.base_path.empty() || b.base_path.front() == '/');
    FUZZ_CHECK(b.base_path.empty() || b.base_path.back() != '/');
    FUZZ_CHECK(b.url.find(b.host) != std::string::npos);
    check_addr(b.addr);
    FUZZ_CHECK(b.addr.port() == b.port);
    FUZZ_CHECK(b.line >= 1);
    FUZZ_CHECK(b.weight > 0);
  }
}

size_t count_lines(std::string_view text) {
  size_t n = 1;
  for (char c : text)
    n += c == '\n' ? 1 : 0;
  return n;
}

// The outcome as text, for comparisons.
std::string outcome(bool ok, const tr::Config& c, const tr::config::Error& e) {
  if (!ok) return "error " + e.str();
  std::string s = "ok";
  for (const tr::BackendConfig& b : c.backends)
    s += " " + b.name + "=" + b.url + "@" + std::to_string(b.line);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);

  tr::Config c;
  tr::config::Error e;
  bool ok = tr::config::load_string(text, kName, &c, &e);
  if (ok) {
    check_config(c);
  } else {
    FUZZ_CHECK(e.file == kName);
    FUZZ_CHECK(!e.message.empty());
    FUZZ_CHECK(e.line >= 0);
    FUZZ_CHECK(static_cast<size_t>(e.line) <= count_lines(text));
    std::string s = e.str();
    FUZZ_CHECK(s.compare(0, std::strlen(kName), kName) == 0);
  }
  std::string first = outcome(ok, c, e);

  {  // same text again: same answer (no state kept between loads)
    tr::Config c2;
    tr::config::Error e2;
    bool ok2 = tr::config::load_string(text, kName, &c2, &e2);
    FUZZ_CHECK(outcome(ok2, c2, e2) == first);
  }
  {  // a comment line after the text changes nothing
    tr::Config c3;
    tr::config::Error e3;
    bool ok3 = tr::config::load_string(text + "\n; fuzz\n", kName, &c3, &e3);
    std::string third = outcome(ok3, c3, e3);
    if (third != first)
      std::fprintf(stderr, "plain: %s\nwith comment: %s\n", first.c_str(), third.c_str());
    FUZZ_CHECK(third == first);
  }

  std::string_view line(text);
  line = line.substr(0, std::min(line.find('\n'), size_t{512}));
  tr::SockAddr a;
  std::string why;
  if (tr::config::parse_sockaddr(line, &a, &why)) {
    check_addr(a);
    FUZZ_CHECK(a.text == line);
  } else {
    FUZZ_CHECK(!why.empty());
  }
  return 0;
}
