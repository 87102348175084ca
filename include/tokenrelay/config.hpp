// Typed, validated configuration. Filled by config::load() (src/config) from
// one INI file; every other module reads it and never parses text itself.
// Defaults here are the documented defaults (docs/CONFIG.md is generated from
// the same key table in src/config/config.cpp).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tr {

// A resolved socket address plus the text the user wrote (for logs).
struct SockAddr {
  sockaddr_storage storage{};
  socklen_t len = 0;
  std::string text;  // "host:port" as configured

  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
  uint16_t port() const;
};

enum class IoMode { automatic, io_uring, epoll };

struct BackendConfig {
  std::string name;  // from "[backend NAME]"
  std::string url;   // as written, e.g. "http://10.0.0.5:8000"
  std::string host;  // host part of url (for the Host header of probes)
  uint16_t port = 80;
  std::string base_path;  // path prefix of url without trailing '/', usually ""
  SockAddr addr;          // resolved at load time
  // Optional engine facts (issue 3); 0 = learn from /metrics.
  uint32_t max_num_batched_tokens = 0;
  uint32_t max_num_seqs = 0;
  double weight = 1.0;
  uint32_t max_inflight = 0;  // 0 = [admission] max_inflight / max_num_seqs
  std::string api_key;        // sent upstream as "Authorization: Bearer" ("" = none)
  // Models this replica serves ("models = a, b"); empty = what its /v1/models lists.
  std::vector<std::string> models;
  std::string scheduling = "fcfs";            // "fcfs" | "priority" (vLLM --scheduling-policy)
  uint32_t long_prefill_token_threshold = 0;  // vLLM --long-prefill-token-threshold; 0 = off
  int line = 0;                               // line of the section header, for messages
};

// One target of a [model NAME] section: a served model and its share.
struct ModelTarget {
  std::string model;
  uint32_t weight = 1;
};

// "[model NAME]": an alias clients may name, sent to one of <targets> (weighted
// random per request); the body's "model" is rewritten to the chosen target.
struct ModelConfig {
  std::string name;
  std::vector<ModelTarget> targets;  // at least one, total weight > 0
  int line = 0;                      // line of the section header
};

struct ProxyConfig {
  SockAddr listen;                            // [proxy] listen, default 0.0.0.0:8000
  uint32_t workers = 0;                       // [proxy] workers, 0 = auto (one per online CPU)
  IoMode io = IoMode::automatic;              // [proxy] io
  uint32_t drain_timeout_ms = 30000;          // [proxy] drain_timeout_ms
  uint32_t reload_drain_timeout_ms = 600000;  // [proxy] reload_drain_timeout_ms
  uint32_t recv_buffer_bytes = 16384;         // [proxy] recv_buffer_bytes (power of two)
  uint32_t recv_buffers = 4096;               // [proxy] recv_buffers per worker (power of two)
};

struct AdminConfig {
  SockAddr listen;  // [admin] listen, default 127.0.0.1:9100
};

struct PollerConfig {
  uint32_t interval_ms = 100;          // [poller] interval_ms (metrics scrape)
  uint32_t health_interval_ms = 1000;  // [poller] health_interval_ms
  uint32_t timeout_ms = 1000;          // [poller] timeout_ms (per scrape deadline)
  uint32_t rise = 2;                   // [poller] rise: good checks to mark a replica up
  uint32_t fall = 3;                   // [poller] fall: failed checks to mark it down
};

// Passive health: replicas that fail requests are ejected for a while.
struct EjectConfig {
  uint32_t failures = 5;           // [eject] failures: consecutive connect failures / 5xx
  uint32_t base_ms = 30000;        // [eject] base_ms: first ejection, doubling on repeat
  uint32_t max_ms = 300000;        // [eject] max_ms: longest ejection
  uint32_t max_percent = 50;       // [eject] max_percent: never eject more of the pool
  uint32_t slow_start_ms = 30000;  // [eject] slow_start_ms: weight ramps up after readmission
};

// Admission control: a bounded wait when every usable replica is saturated.
struct AdmissionConfig {
  uint32_t max_inflight = 0;          // [admission] max_inflight per replica; 0 = the
                                      // replica's max_num_seqs if configured, else unlimited
  uint32_t max_queue = 1024;          // [admission] max_queue: waiting requests (all workers)
  uint32_t queue_timeout_ms = 30000;  // [admission] queue_timeout_ms -> 429
  uint32_t retry_after_s = 1;         // [admission] retry_after_s: Retry-After on 429/503
};

struct LimitsConfig {
  uint32_t request_line_bytes = 8 * 1024;      // [limits] request_line_bytes -> 414
  uint32_t header_bytes = 16 * 1024;           // [limits] header_bytes -> 431
  uint32_t header_count = 100;                 // [limits] header_count -> 431
  uint64_t body_bytes = 32ull * 1024 * 1024;   // [limits] body_bytes -> 413
  uint32_t connections_per_worker = 16384;     // [limits] connections_per_worker
  uint32_t stream_buffer_bytes = 1024 * 1024;  // [limits] stream_buffer_bytes: unsent bytes
                                               // per stream before upstream reads pause
};

struct TimeoutsConfig {
  uint32_t client_header_ms = 10000;         // [timeouts] client_header_ms -> 408
  uint32_t client_body_idle_ms = 60000;      // [timeouts] client_body_idle_ms
  uint32_t keepalive_idle_ms = 60000;        // [timeouts] keepalive_idle_ms
  uint32_t client_write_ms = 60000;          // [timeouts] client_write_ms
  uint32_t upstream_connect_ms = 5000;       // [timeouts] upstream_connect_ms
  uint32_t upstream_first_byte_ms = 300000;  // [timeouts] upstream_first_byte_ms -> 504
  uint32_t upstream_idle_ms = 60000;         // [timeouts] upstream_idle_ms
};

struct UpstreamConfig {
  uint32_t keepalive_per_backend = 64;  // [upstream] keepalive_per_backend (per worker)
  uint32_t keepalive_idle_ms = 4000;    // [upstream] keepalive_idle_ms (below uvicorn's 5 s)
  uint32_t max_attempts = 2;            // [upstream] max_attempts: 2 = one retry on another
                                        // replica, only when nothing was written upstream
};

struct RoutingConfig {
  std::string policy = "latency";  // [routing] policy: round_robin | least_requests |
                                   // power_of_two | kv_aware | latency
  double ttft_weight = 1.0;        // [routing] ttft_weight: score = completion + w * ttft
  double imposed_weight = 0.3;     // [routing] imposed_weight: + w * delay added to others
  double imposed_cap = 0;          // [routing] imposed_cap: that delay <= cap x own completion
  uint32_t observed_itl = 1;       // [routing] observed_itl: decode >= measured ITL
  uint32_t sample_above = 16;      // [routing] sample_above: sample beyond this many replicas
  uint32_t sample_size = 12;       // [routing] sample_size: replicas evaluated per decision
};

struct AuthConfig {
  std::string api_keys_file;  // [auth] api_keys_file ("" = authentication off)
};

struct LogConfig {
  std::string access_log;  // [log] access_log ("" = off)
};

struct Config {
  std::string path;  // file it was loaded from
  ProxyConfig proxy;
  AdminConfig admin;
  PollerConfig poller;
  LimitsConfig limits;
  TimeoutsConfig timeouts;
  UpstreamConfig upstream;
  RoutingConfig routing;
  EjectConfig eject;
  AdmissionConfig admission;
  AuthConfig auth;
  LogConfig log;
  std::vector<BackendConfig> backends;  // in file order
  std::vector<ModelConfig> models;      // [model NAME] sections, in file order
};

}  // namespace tr
