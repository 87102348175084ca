// INI -> tr::Config. One declarative key table (kKeys) drives loading,
// defaults, validation and the reference table in docs/CONFIG.md.
//
// Why ini_parse_stream() with our own line reader instead of ini_parse_file():
// Debian's libinih is built with INI_HANDLER_LINENO=0, so the handler is not
// told the line it is on, and with INI_CALL_HANDLER_ON_NEW_SECTION=0, so a
// section without keys is invisible to the handler. The reader below hands
// inih one line at a time, so it always knows the current line number, sees
// every section header, and rejects what inih would silently misread: lines
// longer than inih's buffer (inih would split them in two) and indented lines
// that inih's multi-line mode would glue onto the previous value.
// inih still does the INI syntax: comments (';' or '#' at line start, and
// ';' after whitespace inline), "key = value" / "key: value", trimming.
#include "config/config.hpp"

#include <ini.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "core/assert.hpp"

namespace tr {

uint16_t SockAddr::port() const {
  if (storage.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  }
  if (storage.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
  }
  return 0;
}

namespace config {

namespace {

// ---------------------------------------------------------------------------
// The key table.

enum class Section : uint8_t {
  proxy,
  admin,
  poller,
  limits,
  timeouts,
  upstream,
  routing,
  eject,
  admission,
  auth,
  log,
  backend,
  model
};
constexpr size_t kSectionCount = 13;
constexpr std::array<std::string_view, kSectionCount> kSectionNames = {
    "proxy", "admin",     "poller", "limits", "timeouts", "upstream", "routing",
    "eject", "admission", "auth",   "log",    "backend",  "model"};

// Sections that carry a name: "[backend NAME]", "[model NAME]".
constexpr bool is_named(Section s) {
  return s == Section::backend || s == Section::model;
}

// [routing] policy values (src/routing/policy.hpp parses the same names).
constexpr std::string_view kPolicyNames[] = {"round_robin", "least_requests", "power_of_two",
                                             "kv_aware", "latency"};

enum class Kind : uint8_t {
  u32,         // decimal integer in [min, max]
  u32_auto,    // "auto" (stored as 0) or a decimal integer in [min, max]
  size,        // bytes: decimal integer with optional binary suffix, in [min, max]
  real,        // decimal number in (real_min, real_max]
  io_mode,     // auto | io_uring | epoll
  policy,      // one of kPolicyNames
  text,        // any string, "" = unset (paths, keys)
  sockaddr,    // host:port, [v6]:port, *:port
  url,         // http://host[:port][/base]
  names,       // comma-separated model names
  targets,     // comma-separated MODEL[:WEIGHT]
  scheduling,  // fcfs | priority
};

// Field accessor: the field a key writes. <b> is the backend being loaded
// (only meaningful for keys of [backend NAME]).
template <class T>
using Field = T* (*)(Config& c, BackendConfig& b);

struct Key {
  Section section;
  std::string_view name;
  Kind kind;
  std::string_view default_text;  // parsed exactly like user input; "" = required key
  uint64_t min = 0;               // integer kinds: inclusive bounds
  uint64_t max = 0;
  double real_min = 0;  // real: real_min < value <= real_max
  double real_max = 0;
  bool real_zero_ok = false;  // real: 0 is also accepted (0 = off)
  bool pow2 = false;          // integer kinds: value must be a power of two
  std::string_view doc;
  // Exactly one target, matching kind (checked by static_assert below).
  Field<uint32_t> u32 = nullptr;
  Field<uint64_t> u64 = nullptr;
  Field<double> real = nullptr;
  Field<IoMode> io = nullptr;
  Field<std::string> text = nullptr;
  Field<SockAddr> addr = nullptr;
  Field<BackendConfig> backend = nullptr;  // url: fills url, host, port, base_path, addr
  Field<std::vector<std::string>> names = nullptr;
  Field<std::vector<ModelTarget>> targets = nullptr;
};

#define TR_CFG(T, member) (+[](Config& c, BackendConfig&) -> T* { return &c.member; })
#define TR_BACKEND(T, member) (+[](Config&, BackendConfig& b) -> T* { return &b.member; })
// Keys of [model NAME] write the section being loaded: always the last one.
#define TR_MODEL(T, member) \
  (+[](Config& c, BackendConfig&) -> T* { return &c.models.back().member; })

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;
constexpr uint64_t kDayMs = 86'400'000;

using S = Section;
using K = Kind;

constexpr Key kKeys[] = {
    // [proxy]
    {.section = S::proxy,
     .name = "listen",
     .kind = K::sockaddr,
     .default_text = "0.0.0.0:8000",
     .doc = "Client-facing address (the OpenAI-compatible API).",
     .addr = TR_CFG(SockAddr, proxy.listen)},
    {.section = S::proxy,
     .name = "workers",
     .kind = K::u32_auto,
     .default_text = "auto",
     .min = 1,
     .max = 1024,
     .doc = "Worker threads, one event loop each; auto = one per online CPU.",
     .u32 = TR_CFG(uint32_t, proxy.workers)},
    {.section = S::proxy,
     .name = "io",
     .kind = K::io_mode,
     .default_text = "auto",
     .doc = "Event loop backend; auto = io_uring when the kernel supports it, else epoll.",
     .io = TR_CFG(IoMode, proxy.io)},
    {.section = S::proxy,
     .name = "drain_timeout_ms",
     .kind = K::u32,
     .default_text = "30000",
     .min = 0,
     .max = kDayMs,
     .doc = "On shutdown, how long in-flight requests may finish before connections close.",
     .u32 = TR_CFG(uint32_t, proxy.drain_timeout_ms)},
    {.section = S::proxy,
     .name = "reload_drain_timeout_ms",
     .kind = K::u32,
     .default_text = "600000",
     .min = 0,
     .max = kDayMs,
     .doc = "After a reload (SIGHUP), how long the old configuration's streams may finish before "
            "they are cut.",
     .u32 = TR_CFG(uint32_t, proxy.reload_drain_timeout_ms)},
    {.section = S::proxy,
     .name = "recv_buffer_bytes",
     .kind = K::size,
     .default_text = "16KiB",
     .min = 4 * kKiB,
     .max = 1 * kMiB,
     .pow2 = true,
     .doc = "Size of one receive buffer.",
     .u32 = TR_CFG(uint32_t, proxy.recv_buffer_bytes)},
    {.section = S::proxy,
     .name = "recv_buffers",
     .kind = K::u32,
     .default_text = "4096",
     .min = 64,
     .max = 32768,
     .pow2 = true,
     .doc = "Receive buffers per worker.",
     .u32 = TR_CFG(uint32_t, proxy.recv_buffers)},
    // [admin]
    {.section = S::admin,
     .name = "listen",
     .kind = K::sockaddr,
     .default_text = "127.0.0.1:9100",
     .doc = "Address of /metrics, /status and /health.",
     .addr = TR_CFG(SockAddr, admin.listen)},
    // [poller]
    {.section = S::poller,
     .name = "interval_ms",
     .kind = K::u32,
     .default_text = "100",
     .min = 10,
     .max = 60000,
     .doc = "How often each replica's /metrics is scraped.",
     .u32 = TR_CFG(uint32_t, poller.interval_ms)},
    {.section = S::poller,
     .name = "health_interval_ms",
     .kind = K::u32,
     .default_text = "1000",
     .min = 10,
     .max = 600000,
     .doc = "How often each replica's /health is probed.",
     .u32 = TR_CFG(uint32_t, poller.health_interval_ms)},
    {.section = S::poller,
     .name = "timeout_ms",
     .kind = K::u32,
     .default_text = "1000",
     .min = 10,
     .max = 60000,
     .doc = "Deadline of one scrape or probe.",
     .u32 = TR_CFG(uint32_t, poller.timeout_ms)},
    {.section = S::poller,
     .name = "rise",
     .kind = K::u32,
     .default_text = "2",
     .min = 1,
     .max = 100,
     .doc = "Consecutive good health checks that bring a replica back up.",
     .u32 = TR_CFG(uint32_t, poller.rise)},
    {.section = S::poller,
     .name = "fall",
     .kind = K::u32,
     .default_text = "3",
     .min = 1,
     .max = 100,
     .doc = "Consecutive failed health checks that mark a replica down.",
     .u32 = TR_CFG(uint32_t, poller.fall)},
    // [limits]
    {.section = S::limits,
     .name = "request_line_bytes",
     .kind = K::size,
     .default_text = "8KiB",
     .min = 256,
     .max = 1 * kMiB,
     .doc = "Longest request line; longer is answered 414.",
     .u32 = TR_CFG(uint32_t, limits.request_line_bytes)},
    {.section = S::limits,
     .name = "header_bytes",
     .kind = K::size,
     .default_text = "16KiB",
     .min = 1 * kKiB,
     .max = 1 * kMiB,
     .doc = "Largest request header block; larger is answered 431.",
     .u32 = TR_CFG(uint32_t, limits.header_bytes)},
    {.section = S::limits,
     .name = "header_count",
     .kind = K::u32,
     .default_text = "100",
     .min = 8,
     .max = 10000,
     .doc = "Most request header fields; more is answered 431.",
     .u32 = TR_CFG(uint32_t, limits.header_count)},
    {.section = S::limits,
     .name = "body_bytes",
     .kind = K::size,
     .default_text = "32MiB",
     .min = 1 * kKiB,
     .max = 4 * kGiB,
     .doc = "Largest request body; larger is answered 413.",
     .u64 = TR_CFG(uint64_t, limits.body_bytes)},
    {.section = S::limits,
     .name = "connections_per_worker",
     .kind = K::u32,
     .default_text = "16384",
     .min = 1,
     .max = 1048576,
     .doc = "Most open client connections per worker.",
     .u32 = TR_CFG(uint32_t, limits.connections_per_worker)},
    {.section = S::limits,
     .name = "stream_buffer_bytes",
     .kind = K::size,
     .default_text = "1MiB",
     .min = 4 * kKiB,
     .max = 64 * kMiB,
     .doc = "Unsent response bytes per stream before reads from the replica pause.",
     .u32 = TR_CFG(uint32_t, limits.stream_buffer_bytes)},
    // [timeouts]
    {.section = S::timeouts,
     .name = "client_header_ms",
     .kind = K::u32,
     .default_text = "10000",
     .min = 1,
     .max = kDayMs,
     .doc = "Time to receive a request's headers; then 408.",
     .u32 = TR_CFG(uint32_t, timeouts.client_header_ms)},
    {.section = S::timeouts,
     .name = "client_body_idle_ms",
     .kind = K::u32,
     .default_text = "60000",
     .min = 1,
     .max = kDayMs,
     .doc = "Longest pause while a request body is received.",
     .u32 = TR_CFG(uint32_t, timeouts.client_body_idle_ms)},
    {.section = S::timeouts,
     .name = "keepalive_idle_ms",
     .kind = K::u32,
     .default_text = "60000",
     .min = 1,
     .max = kDayMs,
     .doc = "Idle time before a client keep-alive connection is closed.",
     .u32 = TR_CFG(uint32_t, timeouts.keepalive_idle_ms)},
    {.section = S::timeouts,
     .name = "client_write_ms",
     .kind = K::u32,
     .default_text = "60000",
     .min = 1,
     .max = kDayMs,
     .doc = "Longest a write to a client may make no progress.",
     .u32 = TR_CFG(uint32_t, timeouts.client_write_ms)},
    {.section = S::timeouts,
     .name = "upstream_connect_ms",
     .kind = K::u32,
     .default_text = "5000",
     .min = 1,
     .max = kDayMs,
     .doc = "Time to connect to a replica.",
     .u32 = TR_CFG(uint32_t, timeouts.upstream_connect_ms)},
    {.section = S::timeouts,
     .name = "upstream_first_byte_ms",
     .kind = K::u32,
     .default_text = "300000",
     .min = 1,
     .max = kDayMs,
     .doc = "Time from sending a request to the replica's first response byte; then 504.",
     .u32 = TR_CFG(uint32_t, timeouts.upstream_first_byte_ms)},
    {.section = S::timeouts,
     .name = "upstream_idle_ms",
     .kind = K::u32,
     .default_text = "60000",
     .min = 1,
     .max = kDayMs,
     .doc = "Longest pause between bytes of a replica's response.",
     .u32 = TR_CFG(uint32_t, timeouts.upstream_idle_ms)},
    // [upstream]
    {.section = S::upstream,
     .name = "keepalive_per_backend",
     .kind = K::u32,
     .default_text = "64",
     .min = 0,
     .max = 65536,
     .doc = "Idle connections kept per replica per worker; 0 = no reuse.",
     .u32 = TR_CFG(uint32_t, upstream.keepalive_per_backend)},
    {.section = S::upstream,
     .name = "keepalive_idle_ms",
     .kind = K::u32,
     .default_text = "4000",
     .min = 1,
     .max = kDayMs,
     .doc = "Idle time before a pooled replica connection is closed (keep below uvicorn's 5 s).",
     .u32 = TR_CFG(uint32_t, upstream.keepalive_idle_ms)},
    {.section = S::upstream,
     .name = "max_attempts",
     .kind = K::u32,
     .default_text = "2",
     .min = 1,
     .max = 16,
     .doc = "Replicas tried for one request: 2 = one retry on another replica, only when "
            "nothing was written upstream (connect failed).",
     .u32 = TR_CFG(uint32_t, upstream.max_attempts)},
    // [routing]
    {.section = S::routing,
     .name = "policy",
     .kind = K::policy,
     .default_text = "latency",
     .doc = "How a replica is chosen: latency = minimum predicted completion (TTFT weighted); "
            "least_requests, power_of_two, kv_aware, round_robin.",
     .text = TR_CFG(std::string, routing.policy)},
    {.section = S::routing,
     .name = "ttft_weight",
     .kind = K::real,
     .default_text = "1",
     .real_min = 0,
     .real_max = 1000,
     .doc = "latency policy: score = predicted completion + ttft_weight x predicted TTFT.",
     .real = TR_CFG(double, routing.ttft_weight)},
    {.section = S::routing,
     .name = "imposed_weight",
     .kind = K::real,
     .default_text = "0.3",
     .real_min = 0,
     .real_max = 1000,
     .real_zero_ok = true,
     .doc = "latency policy: also add imposed_weight x the delay the request would add to the "
            "requests already running there (1 = aim at the mean over all requests, 0 = each "
            "request's own completion only).",
     .real = TR_CFG(double, routing.imposed_weight)},
    {.section = S::routing,
     .name = "imposed_cap",
     .kind = K::real,
     .default_text = "0",
     .real_min = 0,
     .real_max = 1000,
     .real_zero_ok = true,
     .doc = "latency policy: the imposed delay counts at most imposed_cap x the request's own "
            "predicted completion (0 = no cap), so a long prompt is not pushed onto a slow "
            "replica by the delay it would add to a busy fast one.",
     .real = TR_CFG(double, routing.imposed_cap)},
    {.section = S::routing,
     .name = "observed_itl",
     .kind = K::u32,
     .default_text = "1",
     .min = 0,
     .max = 1,
     .doc = "1: a replica's predicted decode is no faster than its measured inter-token latency "
            "(which carries the prefill of the requests that keep arriving there); 0: from the "
            "step-time fit and the batch alone.",
     .u32 = TR_CFG(uint32_t, routing.observed_itl)},
    {.section = S::routing,
     .name = "sample_above",
     .kind = K::u32,
     .default_text = "16",
     .min = 2,
     .max = 100000,
     .doc = "With more replicas than this, each decision scores a random sample of them.",
     .u32 = TR_CFG(uint32_t, routing.sample_above)},
    {.section = S::routing,
     .name = "sample_size",
     .kind = K::u32,
     .default_text = "12",
     .min = 2,
     .max = 256,
     .doc = "Replicas scored per decision on large fleets (power-of-d choices).",
     .u32 = TR_CFG(uint32_t, routing.sample_size)},
    // [eject]
    {.section = S::eject,
     .name = "failures",
     .kind = K::u32,
     .default_text = "5",
     .min = 1,
     .max = 1000,
     .doc = "Consecutive connect failures or 5xx answers that eject a replica.",
     .u32 = TR_CFG(uint32_t, eject.failures)},
    {.section = S::eject,
     .name = "base_ms",
     .kind = K::u32,
     .default_text = "30000",
     .min = 1,
     .max = kDayMs,
     .doc = "First ejection; each repeat doubles it.",
     .u32 = TR_CFG(uint32_t, eject.base_ms)},
    {.section = S::eject,
     .name = "max_ms",
     .kind = K::u32,
     .default_text = "300000",
     .min = 1,
     .max = kDayMs,
     .doc = "Longest ejection.",
     .u32 = TR_CFG(uint32_t, eject.max_ms)},
    {.section = S::eject,
     .name = "max_percent",
     .kind = K::u32,
     .default_text = "50",
     .min = 0,
     .max = 100,
     .doc = "Never eject more than this share of the replicas.",
     .u32 = TR_CFG(uint32_t, eject.max_percent)},
    {.section = S::eject,
     .name = "slow_start_ms",
     .kind = K::u32,
     .default_text = "30000",
     .min = 0,
     .max = kDayMs,
     .doc = "After an ejection ends, the replica's routing weight ramps up over this time.",
     .u32 = TR_CFG(uint32_t, eject.slow_start_ms)},
    // [admission]
    {.section = S::admission,
     .name = "max_inflight",
     .kind = K::u32,
     .default_text = "0",
     .min = 0,
     .max = 1000000,
     .doc = "Requests in flight per replica before it counts as saturated; 0 = its "
            "max_num_seqs when configured, else no limit.",
     .u32 = TR_CFG(uint32_t, admission.max_inflight)},
    {.section = S::admission,
     .name = "max_queue",
     .kind = K::u32,
     .default_text = "1024",
     .min = 0,
     .max = 1000000,
     .doc = "Requests waiting for a replica (all workers); beyond it: 429.",
     .u32 = TR_CFG(uint32_t, admission.max_queue)},
    {.section = S::admission,
     .name = "queue_timeout_ms",
     .kind = K::u32,
     .default_text = "30000",
     .min = 1,
     .max = kDayMs,
     .doc = "Longest wait in the queue; then 429 (saturated) or 503 (no replica usable).",
     .u32 = TR_CFG(uint32_t, admission.queue_timeout_ms)},
    {.section = S::admission,
     .name = "retry_after_s",
     .kind = K::u32,
     .default_text = "1",
     .min = 0,
     .max = 3600,
     .doc = "Retry-After header on 429 and 503 answers.",
     .u32 = TR_CFG(uint32_t, admission.retry_after_s)},
    // [auth]
    {.section = S::auth,
     .name = "api_keys_file",
     .kind = K::text,
     .default_text = "",
     .doc = "File of accepted API keys (one per line, or sha256:<hex>); clients must send "
            "Authorization: Bearer KEY. Unset = no authentication.",
     .text = TR_CFG(std::string, auth.api_keys_file)},
    // [log]
    {.section = S::log,
     .name = "access_log",
     .kind = K::text,
     .default_text = "",
     .doc = "Access log path (JSON lines, one per request); unset = off. SIGUSR1 reopens it.",
     .text = TR_CFG(std::string, log.access_log)},
    // [backend NAME]
    {.section = S::backend,
     .name = "url",
     .kind = K::url,
     .default_text = "",
     .doc = "Replica base URL; a host name is resolved once, at load.",
     .backend = +[](Config&, BackendConfig& b) -> BackendConfig* { return &b; }},
    {.section = S::backend,
     .name = "max_num_batched_tokens",
     .kind = K::u32,
     .default_text = "0",
     .min = 0,
     .max = 16777216,
     .doc = "The replica's --max-num-batched-tokens; 0 = learn it from /metrics.",
     .u32 = TR_BACKEND(uint32_t, max_num_batched_tokens)},
    {.section = S::backend,
     .name = "max_num_seqs",
     .kind = K::u32,
     .default_text = "0",
     .min = 0,
     .max = 65536,
     .doc = "The replica's --max-num-seqs; 0 = learn it from /metrics.",
     .u32 = TR_BACKEND(uint32_t, max_num_seqs)},
    {.section = S::backend,
     .name = "weight",
     .kind = K::real,
     .default_text = "1",
     .real_min = 0,
     .real_max = 1000,
     .doc = "Relative capacity of the replica, used by routing.",
     .real = TR_BACKEND(double, weight)},
    {.section = S::backend,
     .name = "api_key",
     .kind = K::text,
     .default_text = "",
     .doc = "Sent to this replica as Authorization: Bearer (vLLM started with --api-key).",
     .text = TR_BACKEND(std::string, api_key)},
    {.section = S::backend,
     .name = "max_inflight",
     .kind = K::u32,
     .default_text = "0",
     .min = 0,
     .max = 1000000,
     .doc = "This replica's in-flight limit; 0 = [admission] max_inflight.",
     .u32 = TR_BACKEND(uint32_t, max_inflight)},
    {.section = S::backend,
     .name = "models",
     .kind = K::names,
     .default_text = "",
     .doc = "Models (and LoRA adapters) this replica serves, comma-separated; overrides what "
            "its /v1/models lists. Unset = discovered from /v1/models.",
     .names = TR_BACKEND(std::vector<std::string>, models)},
    {.section = S::backend,
     .name = "scheduling",
     .kind = K::scheduling,
     .default_text = "fcfs",
     .doc = "The replica's --scheduling-policy. With priority, a request's X-Priority header "
            "(an integer, lower first; high = -1, low = 1) is sent as the body's \"priority\" "
            "and the estimator puts it ahead of less urgent work.",
     .text = TR_BACKEND(std::string, scheduling)},
    {.section = S::backend,
     .name = "long_prefill_token_threshold",
     .kind = K::u32,
     .default_text = "0",
     .min = 0,
     .max = 16777216,
     .doc = "The replica's --long-prefill-token-threshold (most prompt tokens one request "
            "prefills per step); 0 = off.",
     .u32 = TR_BACKEND(uint32_t, long_prefill_token_threshold)},
    // [model NAME]
    {.section = S::model,
     .name = "targets",
     .kind = K::targets,
     .default_text = "",
     .doc = "Served models a request for NAME goes to, as MODEL[:WEIGHT], comma-separated "
            "(weight 1..1000000, default 1), e.g. llama-3-8b:90, llama-3-8b-rc:10. The body's "
            "\"model\" is rewritten to the chosen one. Required.",
     .targets = TR_MODEL(std::vector<ModelTarget>, targets)},
};

#undef TR_CFG
#undef TR_BACKEND
#undef TR_MODEL

constexpr size_t kKeyCount = std::size(kKeys);

constexpr bool is_pow2(uint64_t v) {
  return v != 0 && (v & (v - 1)) == 0;
}

constexpr bool key_is_consistent(const Key& k) {
  int targets = (k.u32 != nullptr) + (k.u64 != nullptr) + (k.real != nullptr) + (k.io != nullptr) +
                (k.text != nullptr) + (k.addr != nullptr) + (k.backend != nullptr) +
                (k.names != nullptr) + (k.targets != nullptr);
  if (targets != 1 || k.name.empty() || k.doc.empty()) return false;
  // Only url and targets may be required; text and list keys default to "" (unset).
  if (k.default_text.empty() && k.kind != Kind::url && k.kind != Kind::text &&
      k.kind != Kind::names && k.kind != Kind::targets) {
    return false;
  }
  if (k.pow2 && !(is_pow2(k.min) && is_pow2(k.max))) return false;
  switch (k.kind) {
    case Kind::u32:
    case Kind::u32_auto:
      return k.u32 != nullptr && k.min <= k.max && k.max <= UINT32_MAX;
    case Kind::size:
      return k.min <= k.max && (k.u64 != nullptr || (k.u32 != nullptr && k.max <= UINT32_MAX));
    case Kind::real:
      return k.real != nullptr && k.real_min < k.real_max;
    case Kind::io_mode:
      return k.io != nullptr;
    case Kind::policy:
    case Kind::text:
      return k.text != nullptr;
    case Kind::sockaddr:
      return k.addr != nullptr;
    case Kind::url:
      return k.backend != nullptr && k.section == Section::backend;
    case Kind::names:
      return k.names != nullptr;
    case Kind::targets:
      return k.targets != nullptr && k.section == Section::model;
    case Kind::scheduling:
      return k.text != nullptr;
  }
  return false;
}

constexpr bool table_is_consistent() {
  for (size_t i = 0; i < kKeyCount; ++i) {
    if (!key_is_consistent(kKeys[i])) return false;
    for (size_t j = i + 1; j < kKeyCount; ++j) {
      if (kKeys[i].section == kKeys[j].section && kKeys[i].name == kKeys[j].name) return false;
    }
  }
  return true;
}
static_assert(table_is_consistent(), "kKeys: bad target, bounds, or duplicate key");

// ---------------------------------------------------------------------------
// Value parsers. Each returns false with *why = what was expected.

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// Decimal digits only: no sign, no spaces, no hex, no overflow.
bool parse_u64(std::string_view s, uint64_t* out) {
  if (s.empty() || s.front() < '0' || s.front() > '9') return false;
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 10);
  if (ec != std::errc() || ptr != s.data() + s.size()) return false;
  *out = v;
  return true;
}

// Integer bytes with an optional binary suffix: k/K/KiB, m/M/MiB, g/G/GiB.
bool parse_size(std::string_view s, uint64_t* out) {
  size_t digits = 0;
  while (digits < s.size() && s[digits] >= '0' && s[digits] <= '9')
    ++digits;
  uint64_t v = 0;
  if (!parse_u64(s.substr(0, digits), &v)) return false;
  std::string_view suffix = trim(s.substr(digits));
  uint64_t unit = 1;
  if (suffix.empty()) {
    unit = 1;
  } else if (suffix == "k" || suffix == "K" || suffix == "KiB") {
    unit = kKiB;
  } else if (suffix == "m" || suffix == "M" || suffix == "MiB") {
    unit = kMiB;
  } else if (suffix == "g" || suffix == "G" || suffix == "GiB") {
    unit = kGiB;
  } else {
    return false;
  }
  if (v > std::numeric_limits<uint64_t>::max() / unit) return false;
  *out = v * unit;
  return true;
}

bool parse_real(std::string_view s, double* out) {
  if (s.empty()) return false;
  double v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

// "16384" -> "16KiB" when exact; plain integer otherwise.
std::string format_size(uint64_t v) {
  if (v != 0 && v % kGiB == 0) return std::to_string(v / kGiB) + "GiB";
  if (v != 0 && v % kMiB == 0) return std::to_string(v / kMiB) + "MiB";
  if (v != 0 && v % kKiB == 0) return std::to_string(v / kKiB) + "KiB";
  return std::to_string(v);
}

std::string format_real(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// Bounds as written in messages and in the reference table.
std::string bounds_text(const Key& k) {
  std::string s;
  switch (k.kind) {
    case Kind::u32:
    case Kind::u32_auto:
      s = std::to_string(k.min) + ".." + std::to_string(k.max);
      break;
    case Kind::size:
      s = format_size(k.min) + ".." + format_size(k.max);
      break;
    case Kind::real:
      s = (k.real_zero_ok ? "0, or > " : "> ") + format_real(k.real_min) +
          " and <= " + format_real(k.real_max);
      break;
    case Kind::io_mode:
      s = "auto, io_uring or epoll";
      break;
    case Kind::policy:
      s = "round_robin, least_requests, power_of_two, kv_aware or latency";
      break;
    case Kind::text:
      s = "up to 4096 bytes";
      break;
    case Kind::sockaddr:
      s = "port 0..65535";
      break;
    case Kind::url:
      s = "http only; port 1..65535";
      break;
    case Kind::names:
      s = "up to " + std::to_string(kModelNamesMax) + " names of 1.." +
          std::to_string(kModelNameBytesMax) + " bytes";
      break;
    case Kind::targets:
      s = "up to " + std::to_string(kModelNamesMax) + " targets; weight 1..1000000";
      break;
    case Kind::scheduling:
      s = "fcfs or priority";
      break;
  }
  if (k.pow2) s += ", power of two";
  return s;
}

std::string type_text(Kind kind) {
  switch (kind) {
    case Kind::u32:
      return "integer";
    case Kind::u32_auto:
      return "auto or integer";
    case Kind::size:
      return "size (bytes; k, m, g suffixes)";
    case Kind::real:
      return "number";
    case Kind::io_mode:
    case Kind::policy:
    case Kind::scheduling:
      return "enum";
    case Kind::names:
      return "list of model names";
    case Kind::targets:
      return "list of MODEL[:WEIGHT]";
    case Kind::text:
      return "string";
    case Kind::sockaddr:
      return "address: host:port, [v6]:port, *:port";
    case Kind::url:
      return "URL: http://host[:port][/base]";
  }
  return "?";
}

// What a malformed value should have looked like, for messages.
std::string expected_text(const Key& k) {
  std::string pow2 = k.pow2 ? ", a power of two" : "";
  switch (k.kind) {
    case Kind::u32:
      return "expected an integer in " + std::to_string(k.min) + ".." + std::to_string(k.max) +
             pow2;
    case Kind::u32_auto:
      return "expected \"auto\" or an integer in " + std::to_string(k.min) + ".." +
             std::to_string(k.max) + pow2;
    case Kind::size:
      return "expected a size in " + format_size(k.min) + ".." + format_size(k.max) +
             " (bytes, or with a suffix k/K/KiB, m/M/MiB, g/G/GiB)" + pow2;
    case Kind::real:
      return "expected a number " + bounds_text(k);
    case Kind::io_mode:
      return "expected auto, io_uring or epoll";
    case Kind::policy:
      return "expected round_robin, least_requests, power_of_two, kv_aware or latency";
    case Kind::text:
      return "expected a value of at most 4096 bytes";
    case Kind::sockaddr:
      return "expected host:port, [ipv6]:port or *:port";
    case Kind::url:
      return "expected http://host[:port][/base]";
    case Kind::names:
      return "expected model names separated by commas (" + bounds_text(k) + ")";
    case Kind::targets:
      return "expected MODEL[:WEIGHT] entries separated by commas, e.g. m:90, m-rc:10 (" +
             bounds_text(k) + ")";
    case Kind::scheduling:
      return "expected fcfs or priority";
  }
  return "";
}

std::string quoted(std::string_view s);

// A model name as a list item: printable, no spaces or commas (vLLM names are
// paths like "meta-llama/Llama-3.1-8B-Instruct"; ':' is allowed).
bool valid_model_name(std::string_view name) {
  if (name.empty() || name.size() > kModelNameBytesMax) return false;
  for (char ch : name) {
    auto u = static_cast<unsigned char>(ch);
    if (u <= ' ' || u == 0x7f || ch == ',' || ch == '"' || ch == '\\' || ch == '[' || ch == ']')
      return false;
  }
  return true;
}

// Splits "a, b ,c" at commas; false on an empty item.
bool split_list(std::string_view text, std::vector<std::string_view>* out) {
  out->clear();
  for (;;) {
    size_t comma = text.find(',');
    std::string_view item = trim(text.substr(0, comma));
    if (item.empty()) return false;
    out->push_back(item);
    if (comma == std::string_view::npos) return true;
    text.remove_prefix(comma + 1);
  }
}

bool parse_names(std::string_view text, std::vector<std::string>* out, std::string* why) {
  std::vector<std::string_view> items;
  if (!split_list(text, &items)) {
    *why = "empty name in the list";
    return false;
  }
  if (items.size() > kModelNamesMax) {
    *why = "more than " + std::to_string(kModelNamesMax) + " names";
    return false;
  }
  std::vector<std::string> names;
  for (std::string_view item : items) {
    if (!valid_model_name(item)) {
      *why = "invalid model name " + quoted(item) + " (1.." + std::to_string(kModelNameBytesMax) +
             " bytes, no spaces, commas, quotes, backslashes or brackets)";
      return false;
    }
    if (std::find(names.begin(), names.end(), item) != names.end()) {
      *why = "model " + quoted(item) + " is listed twice";
      return false;
    }
    names.emplace_back(item);
  }
  *out = std::move(names);
  return true;
}

// "m:90, m-rc:10": the weight is what follows the last ':' when it is all digits
// (model names may contain ':' themselves).
bool parse_targets(std::string_view text, std::vector<ModelTarget>* out, std::string* why) {
  std::vector<std::string_view> items;
  if (!split_list(text, &items)) {
    *why = "empty target in the list";
    return false;
  }
  if (items.size() > kModelNamesMax) {
    *why = "more than " + std::to_string(kModelNamesMax) + " targets";
    return false;
  }
  std::vector<ModelTarget> targets;
  for (std::string_view item : items) {
    ModelTarget t;
    std::string_view name = item;
    size_t colon = item.rfind(':');
    if (colon != std::string_view::npos) {
      std::string_view w = trim(item.substr(colon + 1));
      uint64_t v = 0;
      if (parse_u64(w, &v)) {
        if (v < 1 || v > 1000000) {
          *why = "weight " + quoted(w) + " of " + quoted(trim(item.substr(0, colon))) +
                 " is outside 1..1000000";
          return false;
        }
        t.weight = static_cast<uint32_t>(v);
        name = trim(item.substr(0, colon));
      }
    }
    if (!valid_model_name(name)) {
      *why = "invalid model name " + quoted(name);
      return false;
    }
    for (const ModelTarget& o : targets) {
      if (o.model == name) {
        *why = "target " + quoted(name) + " is listed twice";
        return false;
      }
    }
    t.model = std::string(name);
    targets.push_back(std::move(t));
  }
  *out = std::move(targets);
  return true;
}

bool integer_in_bounds(const Key& k, uint64_t v) {
  return v >= k.min && v <= k.max && (!k.pow2 || is_pow2(v));
}

bool parse_url(std::string_view text, BackendConfig* b, std::string* why) {
  constexpr std::string_view kExpected = "expected http://host[:port][/base]";
  for (char ch : text) {
    if (static_cast<unsigned char>(ch) <= ' ' || ch == 0x7f) {
      *why = "URL contains whitespace or a control character; " + std::string(kExpected);
      return false;
    }
  }
  if (text.size() >= 8 && iequals(text.substr(0, 8), "https://")) {
    *why = "https upstreams are not supported (replicas are reached over plain HTTP/1.1); " +
           std::string(kExpected);
    return false;
  }
  if (text.size() < 7 || !iequals(text.substr(0, 7), "http://")) {
    *why = (text.find("://") != std::string_view::npos ? "unsupported scheme; "
                                                       : "missing http:// scheme; ") +
           std::string(kExpected);
    return false;
  }
  std::string_view rest = text.substr(7);
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos) {
    *why = "user information (user@host) is not supported; " + std::string(kExpected);
    return false;
  }
  if (path.find_first_of("?#") != std::string_view::npos ||
      authority.find_first_of("?#") != std::string_view::npos) {
    *why = "a query or fragment is not allowed; " + std::string(kExpected);
    return false;
  }
  std::string_view host;
  std::string_view port_text;
  bool has_port = false;
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      *why = "missing ']' after an IPv6 address; " + std::string(kExpected);
      return false;
    }
    host = authority.substr(0, close + 1);  // keeps the brackets: usable in a Host header
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        *why = "unexpected text after ']'; " + std::string(kExpected);
        return false;
      }
      has_port = true;
      port_text = after.substr(1);
    }
  } else {
    size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      has_port = true;
      port_text = authority.substr(colon + 1);
      if (port_text.find(':') != std::string_view::npos) {
        *why = "IPv6 addresses must be in brackets, e.g. http://[::1]:8000";
        return false;
      }
    }
  }
  if (host.empty() || host == "[]") {
    *why = "missing host; " + std::string(kExpected);
    return false;
  }
  uint64_t port = 80;
  if (has_port && (!parse_u64(port_text, &port) || port == 0 || port > 65535)) {
    *why = "port must be an integer in 1..65535";
    return false;
  }
  std::string hostport = std::string(host) + ":" + std::to_string(port);
  SockAddr addr;
  std::string addr_why;
  if (!parse_sockaddr(hostport, &addr, &addr_why)) {
    *why = addr_why;
    return false;
  }
  while (!path.empty() && path.back() == '/')
    path.remove_suffix(1);
  b->url = std::string(text);
  b->host = std::string(host);
  b->port = static_cast<uint16_t>(port);
  b->base_path = std::string(path);
  b->addr = std::move(addr);
  return true;
}

// Parses <text> for key <k> and stores it. On failure *why says what was wrong.
bool apply_value(const Key& k, std::string_view text, Config& c, BackendConfig& b,
                 std::string* why) {
  switch (k.kind) {
    case Kind::u32:
    case Kind::u32_auto: {
      if (k.kind == Kind::u32_auto && text == "auto") {
        *k.u32(c, b) = 0;
        return true;
      }
      uint64_t v = 0;
      if (!parse_u64(text, &v) || !integer_in_bounds(k, v)) break;
      *k.u32(c, b) = static_cast<uint32_t>(v);
      return true;
    }
    case Kind::size: {
      uint64_t v = 0;
      if (!parse_size(text, &v) || !integer_in_bounds(k, v)) break;
      if (k.u64 != nullptr) {
        *k.u64(c, b) = v;
      } else {
        *k.u32(c, b) = static_cast<uint32_t>(v);
      }
      return true;
    }
    case Kind::real: {
      double v = 0;
      if (!parse_real(text, &v)) break;
      if (!(v > k.real_min && v <= k.real_max) && !(k.real_zero_ok && v == 0)) break;
      *k.real(c, b) = v;
      return true;
    }
    case Kind::io_mode:
      if (text == "auto") {
        *k.io(c, b) = IoMode::automatic;
      } else if (text == "io_uring") {
        *k.io(c, b) = IoMode::io_uring;
      } else if (text == "epoll") {
        *k.io(c, b) = IoMode::epoll;
      } else {
        break;
      }
      return true;
    case Kind::text:
      if (text.size() > 4096) break;
      k.text(c, b)->assign(text);
      return true;
    case Kind::policy:
      for (std::string_view name : kPolicyNames) {
        if (text == name) {
          k.text(c, b)->assign(name);
          return true;
        }
      }
      break;
    case Kind::sockaddr: {
      std::string reason;
      if (parse_sockaddr(text, k.addr(c, b), &reason)) return true;
      *why = reason + "; " + expected_text(k);
      return false;
    }
    case Kind::url:
      return parse_url(text, k.backend(c, b), why);
    case Kind::names:
      if (text.empty()) {  // the default: discover
        k.names(c, b)->clear();
        return true;
      }
      if (parse_names(text, k.names(c, b), why)) return true;
      *why += "; " + expected_text(k);
      return false;
    case Kind::targets:
      if (parse_targets(text, k.targets(c, b), why)) return true;
      *why += "; " + expected_text(k);
      return false;
    case Kind::scheduling:
      if (text == "fcfs" || text == "priority") {
        k.text(c, b)->assign(text);
        return true;
      }
      break;
  }
  *why = expected_text(k);
  if (text.find(" #") != std::string_view::npos || text.find("\t#") != std::string_view::npos) {
    *why += " (inline comments start with ';', not '#')";
  }
  return false;
}

// Levenshtein distance, capped: for "did you mean" hints only.
size_t edit_distance(std::string_view a, std::string_view b) {
  constexpr size_t kMax = 64;
  if (a.size() >= kMax || b.size() >= kMax) return kMax;
  std::array<size_t, kMax> prev{}, cur{};
  for (size_t j = 0; j <= b.size(); ++j)
    prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    prev = cur;
  }
  return prev[b.size()];
}

bool valid_backend_name(std::string_view name) {
  if (name.empty() || name.size() > kBackendNameBytesMax) return false;
  for (char ch : name) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

std::string quoted(std::string_view s) {
  constexpr size_t kShown = 80;
  std::string q = "\"";
  q.append(s.substr(0, kShown));
  if (s.size() > kShown) q += "...";
  q += '"';
  return q;
}

// ---------------------------------------------------------------------------
// The loader: state shared by the line reader and the inih handler.

class Loader {
 public:
  Loader(std::string_view text, const std::string& name) : text_(text), name_(name) {}

  bool run(Config* out, Error* err);

 private:
  static char* read_line_cb(char* str, int num, void* self) {
    return static_cast<Loader*>(self)->read_line(str, num);
  }
  static int on_key_cb(void* self, const char* section, const char* name, const char* value) {
    (void)section;  // tracked by the reader: see on_section()
    return static_cast<Loader*>(self)->on_key(name, value) ? 1 : 0;
  }

  char* read_line(char* str, int num);
  bool on_key(std::string_view name, std::string_view value);
  bool on_section(std::string_view label);
  bool finish_section();
  bool check_models();
  bool on_model_section(std::string_view rest);
  void apply_defaults(Section section, BackendConfig& b);
  bool fail(int line, std::string message);
  std::string section_label() const;
  std::string_view line_text(int line) const;

  std::string_view text_;
  const std::string& name_;
  size_t pos_ = 0;  // next unread byte of text_
  int line_ = 0;    // line last handed to inih (1-based)

  Config cfg_;
  BackendConfig unused_backend_;  // accessor argument for non-backend keys

  bool in_section_ = false;
  Section section_ = Section::proxy;
  int section_line_ = 0;
  int backend_ = -1;                       // index into cfg_.backends while in [backend NAME]
  std::string prev_key_;                   // last key of this section: inih continues it on indent
  std::array<int, kKeyCount> key_line_{};  // line each key was set on in this section, 0 = not
  std::array<int, kSectionCount> section_first_line_{};

  bool failed_ = false;
  Error err_;
};

bool Loader::fail(int line, std::string message) {
  if (!failed_) {
    failed_ = true;
    err_.file = name_;
    err_.line = line;
    err_.message = std::move(message);
  }
  return false;
}

std::string Loader::section_label() const {
  if (section_ == Section::backend) return "[backend " + cfg_.backends[backend_].name + "]";
  if (section_ == Section::model) return "[model " + cfg_.models.back().name + "]";
  return "[" + std::string(kSectionNames[static_cast<size_t>(section_)]) + "]";
}

std::string_view Loader::line_text(int line) const {
  size_t start = 0;
  for (int i = 1; i < line; ++i) {
    size_t nl = text_.find('\n', start);
    if (nl == std::string_view::npos) return {};
    start = nl + 1;
  }
  size_t end = text_.find('\n', start);
  return trim(text_.substr(start, end == std::string_view::npos ? end : end - start));
}

// inih's reader: hands over one line (without its '\n') per call; nullptr
// ends parsing (end of text, or after the first error).
char* Loader::read_line(char* str, int num) {
  if (failed_ || pos_ >= text_.size()) return nullptr;
  TR_ASSERT(num >= 2);
  size_t nl = text_.find('\n', pos_);
  size_t end = nl == std::string_view::npos ? text_.size() : nl;
  std::string_view raw = text_.substr(pos_, end - pos_);
  pos_ = nl == std::string_view::npos ? text_.size() : nl + 1;
  ++line_;

  if (raw.find('\0') != std::string_view::npos) {
    fail(line_, "NUL byte in line");
    return nullptr;
  }
  std::string_view body = raw;  // what inih will look at, after its BOM skip
  if (line_ == 1 && body.substr(0, 3) == "\xEF\xBB\xBF") body.remove_prefix(3);
  std::string_view content = trim(body);
  bool comment = !content.empty() && (content.front() == ';' || content.front() == '#');
  bool indented = !body.empty() && (body.front() == ' ' || body.front() == '\t');

  if (!content.empty() && !comment && indented && !prev_key_.empty()) {
    fail(line_, "indented line would continue the value of \"" + prev_key_ +
                    "\" (multi-line values are not supported); remove the indentation");
    return nullptr;
  }

  std::string_view pass = raw;
  size_t room = static_cast<size_t>(num) - 1;
  if (pass.size() > room) {
    if (comment || content.empty()) {
      pass = pass.substr(0, room);  // inih ignores the line either way
    } else {
      // An inline comment may be what makes it long: drop it as inih would.
      for (size_t i = 1; i < pass.size(); ++i) {
        if (pass[i] == ';' && (pass[i - 1] == ' ' || pass[i - 1] == '\t')) {
          pass = trim(pass.substr(0, i));
          break;
        }
      }
      if (pass.size() > room) {
        fail(line_, "line is too long (" + std::to_string(raw.size()) + " bytes; at most " +
                        std::to_string(room) + " without comments)");
        return nullptr;
      }
    }
  }

  if (!comment && !content.empty() && content.front() == '[') {
    // Section header. Find ']' as inih does (an inline comment ends the search);
    // a header without one is left to inih to report as a syntax error.
    for (size_t i = 1; i < content.size(); ++i) {
      if (content[i] == ';' && (content[i - 1] == ' ' || content[i - 1] == '\t')) break;
      if (content[i] == ']') {
        if (!on_section(trim(content.substr(1, i - 1)))) return nullptr;
        break;
      }
    }
  }

  std::memcpy(str, pass.data(), pass.size());
  str[pass.size()] = '\0';
  return str;
}

void Loader::apply_defaults(Section section, BackendConfig& b) {
  for (const Key& k : kKeys) {
    if (k.section != section || k.default_text.empty()) continue;
    std::string why;
    bool ok = apply_value(k, k.default_text, cfg_, b, &why);
    TR_ASSERT(ok);  // the table's defaults are checked by the unit tests
  }
}

// Called when a section ends (next header or end of file).
bool Loader::finish_section() {
  if (!in_section_) return true;
  if (section_ == Section::model) {
    const ModelConfig& m = cfg_.models.back();
    if (m.targets.empty()) {
      return fail(section_line_, "[model " + m.name + "] has no targets (required)");
    }
    return true;
  }
  if (section_ != Section::backend) return true;
  const BackendConfig& b = cfg_.backends[backend_];
  if (b.url.empty()) {
    return fail(section_line_, "[backend " + b.name + "] has no url (required)");
  }
  return true;
}

// Checks that need the whole file: what [model NAME] sections point at.
bool Loader::check_models() {
  for (const ModelConfig& m : cfg_.models) {
    for (const ModelTarget& t : m.targets) {
      if (t.model == m.name) {
        return fail(m.line, "[model " + m.name + "] names itself as a target");
      }
      for (const ModelConfig& other : cfg_.models) {
        if (other.name == t.model) {
          return fail(m.line, "[model " + m.name + "] target \"" + t.model +
                                  "\" is itself a [model] section (line " +
                                  std::to_string(other.line) +
                                  "); targets must be models the replicas serve");
        }
      }
    }
  }
  return true;
}

bool Loader::on_section(std::string_view label) {
  if (!finish_section()) return false;
  in_section_ = true;
  section_line_ = line_;
  prev_key_.clear();
  key_line_.fill(0);
  backend_ = -1;

  for (size_t s = 0; s < kSectionCount; ++s) {
    if (is_named(static_cast<Section>(s)) || label != kSectionNames[s]) continue;
    section_ = static_cast<Section>(s);
    if (section_first_line_[s] != 0) {
      return fail(line_, "duplicate section [" + std::string(label) + "] (first at line " +
                             std::to_string(section_first_line_[s]) + ")");
    }
    section_first_line_[s] = line_;
    return true;
  }

  if (label.substr(0, 5) == "model" && (label.size() == 5 || label[5] == ' ' || label[5] == '\t')) {
    return on_model_section(label.substr(5));
  }
  std::string_view kw = label.substr(0, 7);
  std::string_view rest = label.substr(kw.size());
  if (kw != "backend" || (!rest.empty() && rest.front() != ' ' && rest.front() != '\t')) {
    return fail(line_, "unknown section [" + std::string(label) +
                           "]; expected [proxy], [admin], [poller], [limits], [timeouts], "
                           "[upstream], [routing], [eject], [admission], [auth], [log], "
                           "[backend NAME] or [model NAME]");
  }
  std::string_view name = trim(rest);
  if (name.empty()) return fail(line_, "[backend] needs a replica name: [backend NAME]");
  if (!valid_backend_name(name)) {
    return fail(line_,
                "invalid backend name " + quoted(name) + ": expected 1 to 64 of A-Z a-z 0-9 _ . -");
  }
  for (const BackendConfig& other : cfg_.backends) {
    if (other.name == name) {
      return fail(line_, "duplicate backend name \"" + std::string(name) + "\" (first at line " +
                             std::to_string(other.line) + ")");
    }
  }
  if (cfg_.backends.size() >= kBackendsMax) {
    return fail(line_,
                "too many [backend NAME] sections (at most " + std::to_string(kBackendsMax) + ")");
  }
  section_ = Section::backend;
  BackendConfig& b = cfg_.backends.emplace_back();
  b.name = std::string(name);
  b.line = line_;
  apply_defaults(Section::backend, b);
  backend_ = static_cast<int>(cfg_.backends.size()) - 1;
  return true;
}

bool Loader::on_model_section(std::string_view rest) {
  std::string_view name = trim(rest);
  if (name.empty()) return fail(line_, "[model] needs a model name: [model NAME]");
  if (!valid_model_name(name)) {
    return fail(line_, "invalid model name " + quoted(name) + " (1.." +
                           std::to_string(kModelNameBytesMax) +
                           " bytes, no spaces, commas, quotes, backslashes or brackets)");
  }
  for (const ModelConfig& other : cfg_.models) {
    if (other.name == name) {
      return fail(line_, "duplicate section [model " + std::string(name) + "] (first at line " +
                             std::to_string(other.line) + ")");
    }
  }
  if (cfg_.models.size() >= kModelSectionsMax) {
    return fail(line_, "too many [model NAME] sections (at most " +
                           std::to_string(kModelSectionsMax) + ")");
  }
  section_ = Section::model;
  ModelConfig& m = cfg_.models.emplace_back();
  m.name = std::string(name);
  m.line = line_;
  apply_defaults(Section::model, unused_backend_);
  return true;
}

bool Loader::on_key(std::string_view name, std::string_view value) {
  if (failed_) return false;
  if (!in_section_) {
    return fail(line_, "key \"" + std::string(name) +
                           "\" is outside any section; keys go after a [SECTION] header");
  }
  prev_key_ = std::string(name);
  size_t index = kKeyCount;
  for (size_t i = 0; i < kKeyCount; ++i) {
    if (kKeys[i].section == section_ && kKeys[i].name == name) {
      index = i;
      break;
    }
  }
  if (index == kKeyCount) {
    std::string msg = "unknown key " + quoted(name) + " in " + section_label();
    size_t best = 3;
    std::string_view hint;
    for (const Key& k : kKeys) {
      if (k.section != section_) continue;
      size_t d = edit_distance(name, k.name);
      if (d < best) {
        best = d;
        hint = k.name;
      }
    }
    if (!hint.empty()) msg += "; did you mean \"" + std::string(hint) + "\"?";
    return fail(line_, std::move(msg));
  }
  const Key& k = kKeys[index];
  if (key_line_[index] != 0) {
    return fail(line_, "duplicate key \"" + std::string(name) + "\" in " + section_label() +
                           " (first at line " + std::to_string(key_line_[index]) + ")");
  }
  key_line_[index] = line_;
  BackendConfig& b = section_ == Section::backend ? cfg_.backends[backend_] : unused_backend_;
  std::string why;
  if (!apply_value(k, value, cfg_, b, &why)) {
    return fail(line_, "invalid value " + quoted(value) + " for key \"" + std::string(name) +
                           "\" in " + section_label() + ": " + why);
  }
  return true;
}

bool Loader::run(Config* out, Error* err) {
  cfg_.path = name_;
  for (size_t s = 0; s < kSectionCount; ++s) {
    if (!is_named(static_cast<Section>(s))) {
      apply_defaults(static_cast<Section>(s), unused_backend_);
    }
  }
  int syntax_line = ini_parse_stream(&Loader::read_line_cb, this, &Loader::on_key_cb, this);
  if (syntax_line < 0) {
    // -1/-2 only come from file open or malloc failures, which the stream API does not do.
    fail(0, "internal error: ini_parse_stream returned " + std::to_string(syntax_line));
  } else if (syntax_line > 0 && (!failed_ || syntax_line < err_.line)) {
    // inih saw a line that is neither a comment, a [section] nor key = value.
    std::string_view bad = line_text(syntax_line);
    failed_ = false;
    fail(syntax_line, !bad.empty() && bad.front() == '['
                          ? "malformed section header " + quoted(bad) + "; expected [NAME]"
                          : "expected \"key = value\", got " + quoted(bad));
  }
  if (!failed_) finish_section();
  if (!failed_) check_models();
  if (!failed_ && cfg_.backends.empty()) {
    fail(0, "no [backend NAME] section: at least one replica is required");
  }
  if (failed_) {
    *err = err_;
    return false;
  }
  *out = std::move(cfg_);
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------
// Public API.

std::string Error::str() const {
  if (line == 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ": " + message;
}

bool load_string(const std::string& text, const std::string& name, tr::Config* out, Error* err) {
  TR_ASSERT(out != nullptr);
  TR_ASSERT(err != nullptr);
  Loader loader(text, name);
  return loader.run(out, err);
}

bool load_file(const std::string& path, tr::Config* out, Error* err) {
  TR_ASSERT(out != nullptr);
  TR_ASSERT(err != nullptr);
  *err = Error{path, 0, {}};
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    err->message = std::string("cannot open: ") + std::strerror(errno);
    return false;
  }
  std::string text;
  char buf[16384];
  bool ok = true;
  for (;;) {
    size_t n = std::fread(buf, 1, sizeof buf, f);
    text.append(buf, n);
    if (text.size() > kFileBytesMax) {
      err->message = "file is larger than " + format_size(kFileBytesMax);
      ok = false;
      break;
    }
    if (n < sizeof buf) {
      if (std::ferror(f)) {
        err->message = std::string("cannot read: ") + std::strerror(errno);
        ok = false;
      }
      break;
    }
  }
  std::fclose(f);
  return ok && load_string(text, path, out, err);
}

bool parse_sockaddr(std::string_view text, tr::SockAddr* out, std::string* why) {
  TR_ASSERT(out != nullptr);
  TR_ASSERT(why != nullptr);
  std::string_view host;
  std::string_view port_text;
  bool bracketed = false;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) {
      *why = "missing ']' after an IPv6 address";
      return false;
    }
    host = text.substr(1, close - 1);
    std::string_view after = text.substr(close + 1);
    if (after.empty() || after.front() != ':') {
      *why = "missing :port after ']'";
      return false;
    }
    port_text = after.substr(1);
    bracketed = true;
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      *why = "missing :port";
      return false;
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      *why = "IPv6 addresses must be in brackets, e.g. [::1]:8000";
      return false;
    }
  }
  uint64_t port = 0;
  if (!parse_u64(port_text, &port) || port > 65535) {
    *why = "port must be an integer in 0..65535";
    return false;
  }
  if (host.empty()) {
    *why = "missing host (use *:port for all IPv4 addresses)";
    return false;
  }
  SockAddr result;
  if (host == "*" && !bracketed) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_ANY);
    sin.sin_port = htons(static_cast<uint16_t>(port));
    std::memcpy(&result.storage, &sin, sizeof sin);
    result.len = sizeof sin;
  } else {
    addrinfo hints{};
    hints.ai_family = bracketed ? AF_INET6 : AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (bracketed ? AI_NUMERICHOST : 0);
    std::string host_z(host);
    std::string port_z = std::to_string(port);
    addrinfo* list = nullptr;
    int rc = getaddrinfo(host_z.c_str(), port_z.c_str(), &hints, &list);
    if (rc != 0) {
      *why = (bracketed ? "invalid IPv6 address \"" : "cannot resolve host \"") + host_z +
             "\": " + gai_strerror(rc);
      return false;
    }
    const addrinfo* pick = list;
    for (const addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
      if (ai->ai_family == AF_INET) {
        pick = ai;
        break;
      }
    }
    TR_ASSERT(pick != nullptr);
    TR_ASSERT(pick->ai_addrlen <= sizeof result.storage);
    std::memcpy(&result.storage, pick->ai_addr, pick->ai_addrlen);
    result.len = static_cast<socklen_t>(pick->ai_addrlen);
    freeaddrinfo(list);
  }
  result.text = std::string(text);
  *out = std::move(result);
  return true;
}

std::string reference_markdown() {
  std::string md =
      "| Section | Key | Type | Default | Bounds | Description |\n"
      "|---|---|---|---|---|---|\n";
  for (const Key& k : kKeys) {
    md += "| `[";
    md += k.section == Section::backend ? "backend NAME"
          : k.section == Section::model ? "model NAME"
                                        : kSectionNames[static_cast<size_t>(k.section)];
    md += "]` | `";
    md += k.name;
    md += "` | ";
    md += type_text(k.kind);
    md += " | ";
    if (k.default_text.empty()) {
      md += k.kind == Kind::text || k.kind == Kind::names ? "unset" : "required";
    } else {
      md += '`';
      md += k.default_text;
      md += '`';
    }
    md += " | ";
    md += bounds_text(k);
    md += " | ";
    md += k.doc;
    md += " |\n";
  }
  return md;
}

}  // namespace config
}  // namespace tr
