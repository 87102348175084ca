#include "admin/admin.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "core/assert.hpp"
#include "core/clock.hpp"
#include "core/json.hpp"
#include "core/log.hpp"
#include "proxy/worker.hpp"

namespace tr::admin {

namespace {

constexpr int kReadTimeoutMs = 2000;
constexpr size_t kMaxRequestBytes = 8192;
constexpr uint32_t kStatusRefPromptTokens = 512;
constexpr uint32_t kStatusRefOutputTokens = 128;

void appendf(std::string* out, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void appendf(std::string* out, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n > 0) out->append(buf, static_cast<size_t>(n) < sizeof buf ? n : sizeof buf - 1);
}

// Prometheus label values: escape backslash, quote and newline.
std::string label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string code_label(size_t slot) {
  if (slot < proxy::kNamedCodes) return std::to_string(proxy::kCodes[slot]);
  return std::to_string(slot - proxy::kNamedCodes + 1) + "xx";
}

void family(std::string* out, const char* name, const char* type, const char* help) {
  appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

// Renders one histogram summed over workers; <pick> selects it in a WorkerStats.
template <class Pick>
void render_histogram(std::string* out, const Sources& src, const char* name, Pick pick) {
  const auto& first = pick(*src.workers[0]);
  constexpr size_t n = std::remove_reference_t<decltype(first)>::size();
  uint64_t cum = 0;
  for (size_t i = 0; i <= n; ++i) {
    for (const proxy::WorkerStats* w : src.workers)
      cum += pick(*w).buckets[i].get();
    if (i < n) {
      appendf(out, "%s_bucket{le=\"%g\"} %llu\n", name, first.bounds[i],
              static_cast<unsigned long long>(cum));
    } else {
      appendf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, static_cast<unsigned long long>(cum));
    }
  }
  double sum = 0;
  uint64_t count = 0;
  for (const proxy::WorkerStats* w : src.workers) {
    sum += pick(*w).sum.load(std::memory_order_relaxed);
    count += pick(*w).count.get();
  }
  appendf(out, "%s_sum %.9g\n%s_count %llu\n", name, sum, name,
          static_cast<unsigned long long>(count));
}

// Per-model series: one per metrics slot that has a name (configured or
// discovered models, bounded by models::kStatsSlots) plus model="other".
void render_model_metrics(std::string* out, const Sources& src) {
  if (src.model_slots == nullptr) return;
  const size_t named = src.model_slots->size();
  auto model_label = [&](size_t m) {
    return m < named ? label(src.model_slots->name(m)) : std::string("other");
  };
  auto slots = [&](auto&& each) {
    for (size_t m = 0; m < named; ++m)
      each(m);
    each(models::kOtherSlot);
  };
  auto sum = [&](size_t m, auto get) {
    uint64_t v = 0;
    for (const proxy::WorkerStats* w : src.workers)
      v += get(w->models[m]);
    return v;
  };
  family(out, "tokenrelay_model_requests_total", "counter",
         "Requests answered, by the model the client named (aliases by their own name) and "
         "status code.");
  slots([&](size_t m) {
    for (size_t slot = 0; slot < proxy::kCodeSlots; ++slot) {
      uint64_t v = sum(m, [slot](const proxy::ModelStats& s) { return s.requests[slot].get(); });
      if (v == 0) continue;
      appendf(out, "tokenrelay_model_requests_total{code=\"%s\",model=\"%s\"} %llu\n",
              code_label(slot).c_str(), model_label(m).c_str(), static_cast<unsigned long long>(v));
    }
  });
  family(out, "tokenrelay_model_inflight_requests", "gauge",
         "Requests for the model being handled now (queued, routed or streaming).");
  slots([&](size_t m) {
    int64_t v = 0;
    for (const proxy::WorkerStats* w : src.workers)
      v += w->models[m].inflight.load(std::memory_order_relaxed);
    appendf(out, "tokenrelay_model_inflight_requests{model=\"%s\"} %lld\n", model_label(m).c_str(),
            static_cast<long long>(v));
  });
  // One counter per model slot: <name>{model} summed over workers.
  auto counter = [&](const char* name, const char* help, auto get) {
    family(out, name, "counter", help);
    slots([&](size_t m) {
      appendf(out, "%s{model=\"%s\"} %llu\n", name, model_label(m).c_str(),
              static_cast<unsigned long long>(sum(m, get)));
    });
  };
  counter("tokenrelay_model_prompt_tokens_total",
          "Prompt tokens of answered requests, from the replicas' usage.",
          [](const proxy::ModelStats& s) { return s.prompt_tokens.get(); });
  counter("tokenrelay_model_completion_tokens_total",
          "Completion tokens of answered requests (usage, else relayed token events).",
          [](const proxy::ModelStats& s) { return s.completion_tokens.get(); });
  if (src.catalog == nullptr) return;
  std::shared_ptr<const models::Catalog> cat = src.catalog->current();
  family(out, "tokenrelay_model_backends", "gauge",
         "Replicas serving the model (its pool), by health.");
  for (const models::Model& m : cat->models()) {
    size_t up = 0;
    for (uint32_t r : m.replicas)
      up += src.table->at(r).up.load(std::memory_order_relaxed) ? 1 : 0;
    std::string name = label(m.id);
    appendf(out, "tokenrelay_model_backends{model=\"%s\",state=\"up\"} %zu\n", name.c_str(), up);
    appendf(out, "tokenrelay_model_backends{model=\"%s\",state=\"down\"} %zu\n", name.c_str(),
            m.replicas.size() - up);
  }
}

}  // namespace

std::string render_metrics(const Sources& src) {
  std::string out;
  out.reserve(16384);
  const auto& backends = src.cfg->backends;
  const size_t nb = backends.size();
  // Per worker, its counters of each current replica (by name; nullptr when
  // that worker's configuration did not have it); index nb = no backend.
  std::vector<std::vector<const proxy::BackendStats*>> per(src.workers.size());
  for (size_t w = 0; w < src.workers.size(); ++w) {
    per[w].resize(nb + 1);
    for (size_t b = 0; b < nb; ++b)
      per[w][b] = src.workers[w]->find(backends[b].name);
    per[w][nb] = &src.workers[w]->none();
  }
  auto backend_sum = [&](size_t b, auto get) {
    uint64_t v = 0;
    for (size_t w = 0; w < per.size(); ++w) {
      if (per[w][b]) v += get(*per[w][b]);
    }
    return v;
  };

  family(&out, "tokenrelay_build_info", "gauge", "Build and runtime facts.");
  appendf(&out, "tokenrelay_build_info{io=\"%s\",version=\"%s\",workers=\"%zu\"} 1\n",
          src.io_backend.c_str(), TOKENRELAY_VERSION, src.worker_threads);
  family(&out, "tokenrelay_config_generation", "gauge",
         "Configuration generation serving new connections: 1 at start, +1 per successful reload.");
  appendf(&out, "tokenrelay_config_generation %llu\n",
          static_cast<unsigned long long>(src.generation));
  family(&out, "tokenrelay_config_reloads_total", "counter",
         "SIGHUP reloads, by result (failed: the running configuration was kept).");
  appendf(&out, "tokenrelay_config_reloads_total{result=\"ok\"} %llu\n",
          static_cast<unsigned long long>(src.reloads_ok));
  appendf(&out, "tokenrelay_config_reloads_total{result=\"failed\"} %llu\n",
          static_cast<unsigned long long>(src.reloads_failed));
  family(&out, "tokenrelay_config_last_reload_success_timestamp_seconds", "gauge",
         "Unix time of the last successful reload (0: none since start).");
  appendf(&out, "tokenrelay_config_last_reload_success_timestamp_seconds %.0f\n",
          src.last_reload_ok_unix);

  family(&out, "tokenrelay_requests_total", "counter",
         "Requests answered, by replica (empty: answered by the proxy) and status code.");
  for (size_t b = 0; b <= nb; ++b) {
    std::string name = b < nb ? label(backends[b].name) : std::string();
    for (size_t slot = 0; slot < proxy::kCodeSlots; ++slot) {
      uint64_t v =
          backend_sum(b, [slot](const proxy::BackendStats& s) { return s.requests[slot].get(); });
      if (v == 0 && !(slot == 0 && b < nb)) continue;
      appendf(&out, "tokenrelay_requests_total{backend=\"%s\",code=\"%s\"} %llu\n", name.c_str(),
              code_label(slot).c_str(), static_cast<unsigned long long>(v));
    }
  }

  render_model_metrics(&out, src);

  family(&out, "tokenrelay_inflight_requests", "gauge",
         "Requests routed to a replica and not finished yet.");
  for (size_t b = 0; b < nb; ++b) {
    appendf(
        &out, "tokenrelay_inflight_requests{backend=\"%s\"} %lld\n",
        label(backends[b].name).c_str(),
        static_cast<long long>(src.table->at(b).dispatch.inflight.load(std::memory_order_relaxed)));
  }

  family(&out, "tokenrelay_backend_up", "gauge", "1 if the replica passes its health check.");
  for (size_t b = 0; b < nb; ++b) {
    appendf(&out, "tokenrelay_backend_up{backend=\"%s\"} %d\n", label(backends[b].name).c_str(),
            src.table->at(b).up.load(std::memory_order_relaxed) ? 1 : 0);
  }

  family(&out, "tokenrelay_route_decisions_total", "counter",
         "Routing decisions, by the replica ranked first and the policy.");
  for (size_t b = 0; b < nb; ++b) {
    uint64_t v =
        backend_sum(b, [](const proxy::BackendStats& s) { return s.route_decisions.get(); });
    appendf(&out, "tokenrelay_route_decisions_total{backend=\"%s\",policy=\"%s\"} %llu\n",
            label(backends[b].name).c_str(), label(src.cfg->routing.policy).c_str(),
            static_cast<unsigned long long>(v));
  }
  family(&out, "tokenrelay_route_decision_seconds", "histogram",
         "Time to rank the replicas for one request.");
  render_histogram(
      &out, src, "tokenrelay_route_decision_seconds",
      [](const proxy::WorkerStats& w) -> const auto& { return w.route_decision; });
  family(&out, "tokenrelay_ttft_prediction_error_seconds", "histogram",
         "Predicted minus observed time to first token (latency policy).");
  render_histogram(
      &out, src, "tokenrelay_ttft_prediction_error_seconds",
      [](const proxy::WorkerStats& w) -> const auto& { return w.ttft_error; });

  family(&out, "tokenrelay_scrape_duration_seconds", "histogram",
         "Time to fetch one replica's /metrics.");
  {
    const scores::ScrapeTiming& t = src.table->scrape_timing;
    uint64_t cum = 0;
    for (size_t i = 0; i <= scores::ScrapeTiming::kBuckets; ++i) {
      cum += t.buckets[i].load(std::memory_order_relaxed);
      if (i < scores::ScrapeTiming::kBuckets) {
        appendf(&out, "tokenrelay_scrape_duration_seconds_bucket{le=\"%g\"} %llu\n",
                scores::ScrapeTiming::kBounds[i], static_cast<unsigned long long>(cum));
      } else {
        appendf(&out, "tokenrelay_scrape_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                static_cast<unsigned long long>(cum));
      }
    }
    appendf(&out, "tokenrelay_scrape_duration_seconds_sum %.9g\n",
            t.sum.load(std::memory_order_relaxed));
    appendf(&out, "tokenrelay_scrape_duration_seconds_count %llu\n",
            static_cast<unsigned long long>(t.count.load(std::memory_order_relaxed)));
  }
  family(&out, "tokenrelay_scrape_errors_total", "counter",
         "Failed or unparseable /metrics scrapes, by replica.");
  for (size_t b = 0; b < nb; ++b) {
    appendf(&out, "tokenrelay_scrape_errors_total{backend=\"%s\"} %u\n",
            label(backends[b].name).c_str(), src.table->at(b).scraped.load().scrape_errors);
  }

  family(&out, "tokenrelay_upstream_retries_total", "counter",
         "Attempts moved to another replica or connection before any response byte.");
  for (size_t b = 0; b < nb; ++b) {
    uint64_t v = backend_sum(b, [](const proxy::BackendStats& s) { return s.retries.get(); });
    appendf(&out, "tokenrelay_upstream_retries_total{backend=\"%s\"} %llu\n",
            label(backends[b].name).c_str(), static_cast<unsigned long long>(v));
  }

  family(&out, "tokenrelay_time_to_first_token_seconds", "histogram",
         "From the end of the client's request to the first SSE data event relayed.");
  {
    uint64_t cum = 0;
    for (size_t i = 0; i <= proxy::kTtftBucketCount; ++i) {
      for (const proxy::WorkerStats* w : src.workers)
        cum += w->ttft_buckets[i].get();
      if (i < proxy::kTtftBucketCount) {
        appendf(&out, "tokenrelay_time_to_first_token_seconds_bucket{le=\"%g\"} %llu\n",
                proxy::kTtftBuckets[i], static_cast<unsigned long long>(cum));
      } else {
        appendf(&out, "tokenrelay_time_to_first_token_seconds_bucket{le=\"+Inf\"} %llu\n",
                static_cast<unsigned long long>(cum));
      }
    }
    uint64_t count = 0;
    uint64_t sum_us = 0;
    for (const proxy::WorkerStats* w : src.workers) {
      count += w->ttft_count.get();
      sum_us += w->ttft_sum_us.get();
    }
    appendf(&out, "tokenrelay_time_to_first_token_seconds_sum %.6f\n",
            static_cast<double>(sum_us) / 1e6);
    appendf(&out, "tokenrelay_time_to_first_token_seconds_count %llu\n",
            static_cast<unsigned long long>(count));
  }

  auto sum = [&](auto get) {
    uint64_t v = 0;
    for (const proxy::WorkerStats* w : src.workers)
      v += get(*w);
    return static_cast<unsigned long long>(v);
  };
  family(&out, "tokenrelay_stream_events_total", "counter", "SSE data events relayed to clients.");
  appendf(&out, "tokenrelay_stream_events_total %llu\n",
          sum([](const proxy::WorkerStats& w) { return w.stream_events.get(); }));

  family(&out, "tokenrelay_request_failures_total", "counter",
         "Exchanges that did not end normally, by reason.");
  for (size_t r = 0; r < static_cast<size_t>(proxy::Failure::count_); ++r) {
    appendf(&out, "tokenrelay_request_failures_total{reason=\"%s\"} %llu\n",
            proxy::kFailureNames[r],
            sum([r](const proxy::WorkerStats& w) { return w.failures[r].get(); }));
  }

  family(&out, "tokenrelay_auth_failures_total", "counter",
         "Requests refused with 401 (missing or wrong API key).");
  appendf(&out, "tokenrelay_auth_failures_total %llu\n",
          sum([](const proxy::WorkerStats& w) { return w.auth_failures.get(); }));
  family(&out, "tokenrelay_request_json_malformed_total", "counter",
         "Request bodies that were not valid JSON (forwarded unchanged).");
  appendf(&out, "tokenrelay_request_json_malformed_total %llu\n",
          sum([](const proxy::WorkerStats& w) { return w.json_malformed.get(); }));

  family(&out, "tokenrelay_connections_accepted_total", "counter", "Client connections accepted.");
  appendf(&out, "tokenrelay_connections_accepted_total %llu\n",
          sum([](const proxy::WorkerStats& w) { return w.connections_accepted.get(); }));
  family(&out, "tokenrelay_connections_rejected_total", "counter",
         "Client connections closed at accept (limit reached or draining).");
  appendf(&out, "tokenrelay_connections_rejected_total %llu\n",
          sum([](const proxy::WorkerStats& w) { return w.connections_rejected.get(); }));
  family(&out, "tokenrelay_connections_open", "gauge", "Client connections open.");
  long long open = 0;
  for (const proxy::WorkerStats* w : src.workers) {
    open += w->connections_open.load(std::memory_order_relaxed);
  }
  appendf(&out, "tokenrelay_connections_open %lld\n", open);
  family(&out, "tokenrelay_queue_requests", "gauge",
         "Requests waiting in the admission queue (every usable replica saturated).");
  long long queued = 0;
  for (const proxy::WorkerStats* w : src.workers)
    queued += w->queued.load(std::memory_order_relaxed);
  appendf(&out, "tokenrelay_queue_requests %lld\n", queued);
  family(&out, "tokenrelay_queue_admitted_total", "counter",
         "Requests that waited in the admission queue and then got a replica.");
  appendf(&out, "tokenrelay_queue_admitted_total %llu\n",
          sum([](const proxy::WorkerStats& w) { return w.queue_admitted.get(); }));
  family(&out, "tokenrelay_queue_rejected_total", "counter",
         "Requests answered 429 because the queue was full or the wait too long.");
  appendf(&out, "tokenrelay_queue_rejected_total %llu\n",
          sum([](const proxy::WorkerStats& w) { return w.queue_rejected.get(); }));
  family(&out, "tokenrelay_upstream_connects_total", "counter",
         "New connections opened to replicas.");
  appendf(&out, "tokenrelay_upstream_connects_total %llu\n",
          sum([](const proxy::WorkerStats& w) { return w.upstream_connects.get(); }));
  family(&out, "tokenrelay_upstream_received_bytes_total", "counter",
         "Response bytes read from replicas.");
  appendf(&out, "tokenrelay_upstream_received_bytes_total %llu\n",
          sum([](const proxy::WorkerStats& w) { return w.upstream_bytes_in.get(); }));
  family(&out, "tokenrelay_upstream_reuses_total", "counter",
         "Requests sent on a pooled keep-alive connection.");
  appendf(&out, "tokenrelay_upstream_reuses_total %llu\n",
          sum([](const proxy::WorkerStats& w) { return w.upstream_reuses.get(); }));
  return out;
}

// "models" and "aliases" of /status: the pools routing uses.
void render_model_status(std::string* out, const Sources& src) {
  if (src.catalog == nullptr) return;
  std::shared_ptr<const models::Catalog> cat = src.catalog->current();
  const auto& backends = src.cfg->backends;
  *out += ",\"models\":[";
  bool first = true;
  for (const models::Model& m : cat->models()) {
    *out += first ? "{\"id\":\"" : ",{\"id\":\"";
    first = false;
    json_escape_append(*out, m.id);
    *out += "\",\"parent\":";
    if (m.parent.empty()) {
      *out += "null";
    } else {
      *out += '"';
      json_escape_append(*out, m.parent);
      *out += '"';
    }
    *out += ",\"replicas\":[";
    for (size_t k = 0; k < m.replicas.size(); ++k) {
      *out += k ? ",\"" : "\"";
      json_escape_append(*out, backends[m.replicas[k]].name);
      *out += '"';
    }
    int64_t inflight = 0;
    if (m.slot < models::kStatsSlots) {
      for (const proxy::WorkerStats* w : src.workers)
        inflight += w->models[m.slot].inflight.load(std::memory_order_relaxed);
    }
    appendf(out, "],\"inflight\":%lld}", static_cast<long long>(inflight));
  }
  *out += "],\"aliases\":[";
  first = true;
  for (const models::Alias& a : cat->aliases()) {
    *out += first ? "{\"name\":\"" : ",{\"name\":\"";
    first = false;
    json_escape_append(*out, a.name);
    *out += "\",\"targets\":[";
    for (size_t k = 0; k < a.targets.size(); ++k) {
      *out += k ? ",{\"model\":\"" : "{\"model\":\"";
      json_escape_append(*out, a.targets[k].name);
      appendf(out, "\",\"weight\":%u,\"served\":%s}", a.targets[k].weight,
              a.targets[k].model != models::kNone ? "true" : "false");
    }
    *out += "]}";
  }
  *out += ']';
}

std::string render_status(const Sources& src) {
  std::string out;
  out.reserve(4096);
  const auto& backends = src.cfg->backends;
  int64_t now = mono_ms();
  proxy::TableSource table(src.cfg, src.table);
  // Reference request for the predicted columns: a typical chat turn.
  estimator::RequestCost ref{kStatusRefPromptTokens, kStatusRefOutputTokens};
  appendf(&out, "{\"version\":\"%s\",\"io\":\"%s\",\"policy\":\"", TOKENRELAY_VERSION,
          src.io_backend.c_str());
  json_escape_append(out, src.cfg->routing.policy);
  appendf(&out,
          "\",\"workers\":%zu,\"reference_request\":{\"prompt_tokens\":%u,"
          "\"output_tokens\":%u},\"replicas\":[",
          src.worker_threads, ref.prompt_tokens, ref.output_tokens);
  for (size_t i = 0; i < backends.size(); ++i) {
    const scores::ReplicaSlot& slot = src.table->at(i);
    scores::ScrapedState st = slot.scraped.load();
    routing::ReplicaView v;
    table.view(i, &v);
    estimator::Prediction p = estimator::predict(v.load, ref);
    const scores::Dispatch& d = slot.dispatch;
    if (i) out += ',';
    out += "{\"name\":\"";
    json_escape_append(out, backends[i].name);
    out += "\",\"url\":\"";
    json_escape_append(out, backends[i].url);
    int64_t health_at = slot.last_health_ms.load(std::memory_order_relaxed);
    appendf(&out,
            "\",\"up\":%s,\"health_status\":%d,\"health_age_ms\":%lld,"
            "\"scrape\":{\"ok\":%s,\"age_ms\":%lld,\"scrapes_ok\":%u,\"errors\":%u,"
            "\"engines\":%u,\"running\":%g,\"waiting\":%g,\"kv_usage\":%g,"
            "\"prefix_hit_rate\":%g,\"block_size\":%u,\"num_gpu_blocks\":%llu,"
            "\"ttft_mean_s\":%g,\"itl_mean_s\":%g,\"prompt_tokens_per_s\":%g,"
            "\"generation_tokens_per_s\":%g,\"kv_free_tokens\":%g,\"preemptions_per_s\":%g,"
            "\"peak_running\":%u,\"max_lora\":%d,\"loras_running\":%u},",
            slot.up.load(std::memory_order_relaxed) ? "true" : "false",
            slot.last_health_status.load(std::memory_order_relaxed),
            static_cast<long long>(health_at ? now - health_at : -1),
            st.metrics_ok ? "true" : "false",
            static_cast<long long>(st.scraped_at_ms ? now - st.scraped_at_ms : -1), st.scrapes_ok,
            st.scrape_errors, st.engines, st.running, st.waiting, st.kv_usage, st.prefix_hit_rate,
            st.block_size, static_cast<unsigned long long>(st.num_gpu_blocks), st.ttft_mean_s,
            st.itl_mean_s, st.prompt_tokens_per_s, st.generation_tokens_per_s, st.kv_free_tokens,
            st.preemptions_per_s, st.peak_running, st.max_lora, st.loras_running);
    appendf(&out,
            "\"calibration\":{\"samples\":%u,\"step_base_s\":%g,\"step_per_token_s\":%g,"
            "\"chars_per_token\":%g,\"budget_tokens\":%u,\"max_num_seqs\":%u},",
            st.calibration_samples, v.load.step_base_s, v.load.step_per_token_s, st.chars_per_token,
            v.load.budget_tokens, v.load.max_num_seqs);
    appendf(&out,
            "\"dispatch\":{\"inflight\":%lld,\"prefill_requests\":%lld,"
            "\"prefill_tokens\":%lld,\"decode_requests\":%lld,\"decode_tokens\":%lld},"
            "\"load\":{\"running\":%g,\"waiting\":%g,\"prefill_tokens_queued\":%g,"
            "\"decode_tokens_remaining\":%g},"
            "\"predicted\":{\"ttft_s\":%.6f,\"completion_s\":%.6f}}",
            static_cast<long long>(d.inflight.load(std::memory_order_relaxed)),
            static_cast<long long>(d.prefill_requests.load(std::memory_order_relaxed)),
            static_cast<long long>(d.prefill_tokens.load(std::memory_order_relaxed)),
            static_cast<long long>(d.decode_requests.load(std::memory_order_relaxed)),
            static_cast<long long>(d.decode_tokens.load(std::memory_order_relaxed)), v.load.running,
            v.load.waiting, v.load.prefill_tokens_queued, v.load.decode_tokens_remaining, p.ttft_s,
            p.completion_s);
  }
  out += "]";
  render_model_status(&out, src);
  out += "}\n";
  return out;
}

AdminServer::~AdminServer() {
  stop();
}

void AdminServer::publish(std::shared_ptr<const Sources> src) {
  std::lock_guard<std::mutex> lock(mu_);
  src_ = std::move(src);
}

std::shared_ptr<const Sources> AdminServer::current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return src_;
}

bool AdminServer::start(const SockAddr& addr, std::string* err) {
  listen_fd_ = ::socket(addr.storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) {
    *err = std::string("admin socket: ") + std::strerror(errno);
    return false;
  }
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(listen_fd_, addr.sa(), addr.len) != 0 || ::listen(listen_fd_, 64) != 0) {
    *err = "admin listen " + addr.text + ": " + std::strerror(errno);
    ::close(listen_fd_);
    listen_fd_ = -1;
    return false;
  }
  sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &sl);
  port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  stop_fd_ = eventfd(0, EFD_CLOEXEC);
  thread_ = std::thread([this] { run(); });
  return true;
}

void AdminServer::stop() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    ssize_t n = ::write(stop_fd_, &one, sizeof one);
    (void)n;
    thread_.join();
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
  listen_fd_ = stop_fd_ = -1;
}

void AdminServer::run() {
  pthread_setname_np(pthread_self(), "tr-admin");
  for (;;) {
    pollfd pfd[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    int n = poll(pfd, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (pfd[1].revents) return;
    if (!(pfd[0].revents & POLLIN)) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    serve_one(fd);
    ::close(fd);
  }
}

// One request per connection (Connection: close), bounded in size and time.
void AdminServer::serve_one(int fd) {
  std::string req;
  int64_t deadline = mono_ms() + kReadTimeoutMs;
  char buf[2048];
  while (req.find("\r\n\r\n") == std::string::npos) {
    int64_t left = deadline - mono_ms();
    if (left <= 0 || req.size() > kMaxRequestBytes) return;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) <= 0) return;
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r <= 0) return;
    req.append(buf, static_cast<size_t>(r));
  }
  size_t sp1 = req.find(' ');
  size_t sp2 = sp1 == std::string::npos ? sp1 : req.find(' ', sp1 + 1);
  std::string method = sp1 == std::string::npos ? "" : req.substr(0, sp1);
  std::string path = sp2 == std::string::npos ? "" : req.substr(sp1 + 1, sp2 - sp1 - 1);
  if (size_t q = path.find('?'); q != std::string::npos) path.resize(q);

  int status = 200;
  std::string body;
  const char* ctype = "text/plain; charset=utf-8";
  std::shared_ptr<const Sources> src = current();
  TR_ASSERT(src && src->cfg && src->table);  // published before start()
  if (method != "GET" && method != "HEAD") {
    status = 405;
    body = "method not allowed\n";
  } else if (path == "/metrics") {
    body = render_metrics(*src);
    ctype = "text/plain; version=0.0.4; charset=utf-8";
  } else if (path == "/status") {
    body = render_status(*src);
    ctype = "application/json";
  } else if (path == "/health") {
    bool up = src->table->any_up();
    status = up ? 200 : 503;
    body = up ? "ok\n" : "no replica is up\n";
  } else {
    status = 404;
    body = "not found: try /metrics, /status or /health\n";
  }
  std::string resp;
  appendf(&resp,
          "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
          status,
          status == 200   ? "OK"
          : status == 503 ? "Service Unavailable"
                          : "Error",
          ctype, body.size());
  if (method != "HEAD") resp += body;
  size_t off = 0;
  while (off < resp.size()) {
    pollfd p{fd, POLLOUT, 0};
    if (poll(&p, 1, kReadTimeoutMs) <= 0) return;
    ssize_t w = ::send(fd, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
    if (w <= 0) return;
    off += static_cast<size_t>(w);
  }
}

}  // namespace tr::admin
