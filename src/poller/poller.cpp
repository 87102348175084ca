#include "poller/poller.hpp"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <thread>
#include <utility>

#include "core/assert.hpp"
#include "core/clock.hpp"
#include "core/json.hpp"
#include "core/log.hpp"
#include "estimator/calibration.hpp"
#include "models/catalog.hpp"
#include "poller/http_client.hpp"
#include "poller/models.hpp"
#include "poller/vllm_metrics.hpp"
#include "scores/table.hpp"
#include "tokenrelay/engine_metrics.hpp"

namespace tr::poller {

namespace {

// One keep-alive connection per replica per kind of request, so a slow
// /v1/models or /metrics never delays a health check.
enum Channel : uint32_t { kHealth = 0, kModels = 1, kMetrics = 2, kChannelCount = 3 };

// A scrape that fails this many times in a row marks the scraped state stale
// (workers then route on their own accounting alone).
constexpr uint32_t kScrapeFailuresStale = 3;

enum class HealthState : uint8_t { unknown, down, up };

std::string host_header(const BackendConfig& b) {
  if (b.host.empty()) return b.addr.text;
  std::string h;
  bool bracket = b.host.find(':') != std::string::npos && b.host.front() != '[';
  if (bracket) h.push_back('[');
  h.append(b.host);
  if (bracket) h.push_back(']');
  h.push_back(':');
  h.append(std::to_string(b.port));
  return h;
}

std::vector<Target> make_targets(const tr::Config& cfg) {
  std::vector<Target> targets;
  targets.reserve(cfg.backends.size());
  for (const BackendConfig& b : cfg.backends) {
    Target t;
    t.addr = b.addr.storage;
    t.addr_len = b.addr.len;
    t.host_header = host_header(b);
    targets.push_back(std::move(t));
  }
  return targets;
}

// "HTTP 503" or "connect: Connection refused".
std::string describe(const Response& r) {
  if (r.status > 0) return "HTTP " + std::to_string(r.status);
  char buf[128];
  const char* text = strerror_r(-r.status, buf, sizeof buf);  // GNU variant
  std::string s = stage_name(r.stage);
  s.append(": ").append(text);
  return s;
}

// <base_path> + <suffix>, with bytes that cannot appear raw in a request target
// percent-encoded (the config loader should not let them through; never trust it).
// A base path too long for a request line is dropped (logged by the caller).
std::string request_path(const std::string& base_path, const char* suffix) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string p;
  for (char ch : base_path) {
    unsigned char u = static_cast<unsigned char>(ch);
    if (u <= 0x20 || u >= 0x7f) {
      p.push_back('%');
      p.push_back(kHex[u >> 4]);
      p.push_back(kHex[u & 15]);
    } else {
      p.push_back(ch);
    }
  }
  if (p.size() + std::strlen(suffix) > kRequestPathBytesMax) p.clear();  // still a valid probe
  return p.append(suffix);
}

uint32_t saturating_inc(uint32_t v) {
  return v == UINT32_MAX ? v : v + 1;
}

// The next tick of a fixed-rate schedule; skips ticks missed entirely.
int64_t next_tick(int64_t prev_ms, int64_t interval_ms, int64_t now_ms) {
  int64_t next = prev_ms + interval_ms;
  return next > now_ms ? next : now_ms + interval_ms;
}

}  // namespace

struct Poller::Impl final : HttpHandler {
  struct Replica {
    std::string name;
    std::string url;
    std::string health_path;
    std::string models_path;
    HealthState state = HealthState::unknown;
    uint32_t successes = 0;  // consecutive good health checks
    uint32_t failures = 0;   // consecutive failed health checks
    bool models_known = false;
    bool models_failing = false;  // last /v1/models failed (logged once)
    std::vector<ModelEntry> models;
    std::vector<std::string> configured_models;  // [backend] models: overrides discovery
    // /metrics scraping: the previous good scrape (for deltas), calibration, and
    // the state last published to the table.
    std::string metrics_path;
    int64_t metrics_sent_ms = 0;
    int64_t prev_scrape_ms = 0;
    EngineMetrics prev;
    bool have_prev = false;
    uint64_t prev_chars_sent = 0;
    uint32_t scrape_failures = 0;  // consecutive
    bool metrics_failing = false;  // logged once
    estimator::StepCalibrator calibrator;
    scores::ScrapedState published;
    std::array<uint32_t, scores::kLoraHashesMax> lora_hashes{};  // of the last scrape
  };

  Impl(const tr::Config& cfg, scores::Table* t)
      : table(t),
        timeout_ms(std::max<uint32_t>(cfg.poller.timeout_ms, 1)),
        health_interval_ms(std::max<uint32_t>(cfg.poller.health_interval_ms, 1)),
        metrics_interval_ms(std::max<uint32_t>(cfg.poller.interval_ms, 1)),
        rise(std::max<uint32_t>(cfg.poller.rise, 1)),
        fall(std::max<uint32_t>(cfg.poller.fall, 1)),
        client(make_targets(cfg), kChannelCount, this) {
    TR_ASSERT(table != nullptr);
    TR_ASSERT(table->size() == cfg.backends.size());
    replicas.resize(cfg.backends.size());
    for (size_t i = 0; i < replicas.size(); ++i) {
      const BackendConfig& b = cfg.backends[i];
      replicas[i].name = b.name;
      replicas[i].url = b.url;
      replicas[i].health_path = request_path(b.base_path, "/health");
      replicas[i].models_path = request_path(b.base_path, "/v1/models");
      replicas[i].metrics_path = request_path(b.base_path, "/metrics");
      replicas[i].configured_models = b.models;
      if (replicas[i].models_path == "/v1/models" && !b.base_path.empty()) {
        TR_LOG_WARN("replica %s (%s): base path over %zu bytes; probing without it", b.name.c_str(),
                    b.url.c_str(), kRequestPathBytesMax);
      }
    }
    wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd < 0) {
      TR_LOG_ERROR("poller: eventfd: %m");
      TR_ASSERT(wake_fd >= 0);
    }
    client.set_wake_fd(wake_fd);
    models_json = std::make_shared<const std::string>("{\"object\":\"list\",\"data\":[]}");
    models_by_replica = std::make_shared<const ModelsByReplica>(replicas.size());
    aliases = cfg.models;
  }

  ~Impl() override {
    client.set_wake_fd(-1);
    ::close(wake_fd);
  }

  void on_response(uint32_t target, uint32_t channel, const Response& r) override {
    TR_DASSERT(target < replicas.size());
    if (channel == kHealth) {
      on_health(target, r);
    } else if (channel == kMetrics) {
      on_metrics(target, r);
    } else {
      TR_DASSERT(channel == kModels);
      on_models(target, r);
    }
  }

  // One /metrics answer: parse, take deltas against the previous good scrape,
  // feed the step-time calibration, publish through the slot's seqlock.
  void on_metrics(uint32_t i, const Response& r) {
    Replica& rep = replicas[i];
    int64_t now = mono_ms();
    table->scrape_timing.observe(static_cast<double>(now - rep.metrics_sent_ms) / 1000.0);
    scores::ScrapedState& st = rep.published;
    EngineMetrics em;
    bool ok = r.status == 200 && parse_vllm_metrics(r.body, &em);
    if (!ok) {
      st.scrape_errors = saturating_inc(st.scrape_errors);
      rep.scrape_failures = saturating_inc(rep.scrape_failures);
      if (rep.scrape_failures >= kScrapeFailuresStale) st.metrics_ok = false;
      if (!rep.metrics_failing) {
        rep.metrics_failing = true;
        TR_LOG_WARN("replica %s (%s): /metrics: %s", rep.name.c_str(), rep.url.c_str(),
                    r.status == 200 ? "no vllm: metrics in the exposition" : describe(r).c_str());
      }
      publish(i, st);
      return;
    }
    if (rep.metrics_failing) {
      rep.metrics_failing = false;
      TR_LOG_INFO("replica %s (%s): /metrics readable again", rep.name.c_str(), rep.url.c_str());
    }
    rep.scrape_failures = 0;
    st.metrics_ok = true;
    st.scrapes_ok = saturating_inc(st.scrapes_ok);
    st.scraped_at_ms = now;
    st.engines = em.engines;
    st.running = static_cast<float>(em.running);
    st.waiting = static_cast<float>(em.waiting);
    st.kv_usage = static_cast<float>(em.kv_usage);
    if (em.block_size) st.block_size = em.block_size;
    if (em.num_gpu_blocks) st.num_gpu_blocks = em.num_gpu_blocks;
    read_engines(em, &st, &rep.lora_hashes);
    if (rep.have_prev && now > rep.prev_scrape_ms) {
      const EngineMetrics& p = rep.prev;
      double interval_s = static_cast<double>(now - rep.prev_scrape_ms) / 1000.0;
      // Counter deltas; a negative one (replica restarted) reads as "no data".
      auto delta = [](double cur, double prev) {
        return cur >= 0 && prev >= 0 && cur >= prev ? cur - prev : -1.0;
      };
      double d_prompt = delta(em.prompt_tokens, p.prompt_tokens);
      double d_gen = delta(em.generation_tokens, p.generation_tokens);
      double d_preempt = delta(em.preemptions, p.preemptions);
      if (d_preempt >= 0) {
        st.preemptions_per_s =
            static_cast<float>(0.7 * st.preemptions_per_s + 0.3 * d_preempt / interval_s);
      }
      // Inter-token latency as requests see it now (prefill chunks included).
      double d_itl_n = delta(em.itl.count, p.itl.count);
      double d_itl_s = delta(em.itl.sum, p.itl.sum);
      if (d_itl_n > 0 && d_itl_s >= 0) {
        double itl = d_itl_s / d_itl_n;
        st.itl_ewma_s = st.itl_ewma_s > 0 ? static_cast<float>(0.95 * st.itl_ewma_s + 0.05 * itl)
                                          : static_cast<float>(itl);
      } else if (d_itl_n == 0) {
        st.itl_ewma_s *= 0.9f;  // idle: what it was says less and less
      }
      double d_queries = delta(em.prefix_queries, p.prefix_queries);
      double d_hits = delta(em.prefix_hits, p.prefix_hits);
      if (d_queries > 0 && d_hits >= 0) st.prefix_hit_rate = static_cast<float>(d_hits / d_queries);
      st.prompt_tokens_per_s = d_prompt >= 0 ? static_cast<float>(d_prompt / interval_s) : -1;
      st.generation_tokens_per_s = d_gen >= 0 ? static_cast<float>(d_gen / interval_s) : -1;
      uint64_t chars = table->at(i).dispatch.prompt_chars_sent.load(std::memory_order_relaxed);
      double d_chars = static_cast<double>(chars - rep.prev_chars_sent);
      if (d_prompt > 0 && d_chars > 0) {
        double sample = d_chars / d_prompt;
        if (sample >= 0.5 && sample <= 16) {  // otherwise traffic from elsewhere dominates
          st.chars_per_token = st.chars_per_token < 0
                                   ? static_cast<float>(sample)
                                   : static_cast<float>(0.8 * st.chars_per_token + 0.2 * sample);
        }
      }
      estimator::ScrapeDeltas cd;
      if (calibration_deltas(p, em, interval_s, &cd)) {
        rep.calibrator.observe(cd);
        st.step_base_s = static_cast<float>(rep.calibrator.step_base_s());
        st.step_per_token_s = static_cast<float>(rep.calibrator.step_per_token_s());
        st.calibration_samples = rep.calibrator.samples();
        st.ttft_mean_s = static_cast<float>(rep.calibrator.ttft_mean_s());
        st.itl_mean_s = static_cast<float>(rep.calibrator.itl_mean_s());
      }
    }
    rep.prev = em;
    rep.have_prev = true;
    rep.prev_chars_sent = table->at(i).dispatch.prompt_chars_sent.load(std::memory_order_relaxed);
    rep.prev_scrape_ms = now;
    update_fleet_calibration();
    publish(i, st);
  }

  // Engine facts from one scrape: the engine a new request would join (vLLM's
  // data-parallel front end picks the least loaded, 4 x waiting + running),
  // its free KV, the largest batch any engine ran (from which max_num_seqs
  // and the token budget are learned, docs/CONFIG.md), the running adapters.
  static void read_engines(const EngineMetrics& em, scores::ScrapedState* st,
                           std::array<uint32_t, scores::kLoraHashesMax>* lora_hashes) {
    double best_load = -1;
    double free_tokens = -1;
    double peak = em.engines <= 1 && em.running >= 0 ? em.running : 0;
    for (uint32_t k = 0; k < em.engine_detail_count; ++k) {
      const EngineDetail& e = em.engine_detail[k];
      if (e.running < 0) continue;
      peak = std::max(peak, e.running);
      double load = 4 * std::max(0.0, e.waiting) + e.running;
      uint64_t blocks = e.num_gpu_blocks ? e.num_gpu_blocks : st->num_gpu_blocks;
      uint32_t bs = e.block_size ? e.block_size : st->block_size;
      if (best_load < 0 || load < best_load) {
        best_load = load;
        free_tokens = e.kv_usage >= 0 && blocks && bs
                          ? (1.0 - std::min(1.0, e.kv_usage)) * static_cast<double>(blocks) * bs
                          : -1;
      }
    }
    if (em.engine_detail_count == 0 && em.kv_usage >= 0 && st->num_gpu_blocks && st->block_size) {
      free_tokens = (1.0 - std::min(1.0, em.kv_usage)) * static_cast<double>(st->num_gpu_blocks) *
                    st->block_size;
    }
    st->kv_free_tokens = static_cast<float>(free_tokens);
    st->peak_running = std::max<uint32_t>(st->peak_running, static_cast<uint32_t>(peak));
    // A batch larger than vLLM's A100-class default (256 sequences) means the
    // larger-GPU defaults (vllm serve on H100/H200/MI300: 1,024 / 8,192), or
    // a configured limit at least that high. The budget is not visible in V1
    // metrics (iteration-token buckets count whole prompts at their last
    // chunk), so it follows the sequence limit's class.
    if (st->peak_running > estimator::kDefaultMaxNumSeqs) {
      st->learned_seqs = std::max<uint32_t>(st->peak_running, estimator::kLargeGpuMaxNumSeqs);
      st->learned_budget = estimator::kLargeGpuBudgetTokens;
    }
    lora_hashes->fill(0);
    st->max_lora = em.lora.present ? em.lora.max_lora : -1;
    st->loras_running = 0;
    if (em.lora.present) {
      std::string_view list = em.lora.running.view();
      while (!list.empty()) {
        size_t comma = list.find(',');
        std::string_view name = list.substr(0, comma);
        if (!name.empty()) {
          if (st->loras_running < scores::kLoraHashesMax) {
            (*lora_hashes)[st->loras_running] = scores::lora_hash(name.data(), name.size());
          }
          ++st->loras_running;
        }
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
      }
    }
  }

  // Mean calibration over replicas that have one (for those that do not yet).
  void update_fleet_calibration() {
    double base = 0;
    double per_token = 0;
    uint32_t n = 0;
    for (const Replica& r : replicas) {
      if (r.published.calibration_samples == 0) continue;
      base += r.published.step_base_s;
      per_token += r.published.step_per_token_s;
      ++n;
    }
    fleet_calibrated = n;
    if (n) {
      fleet_base_s = base / n;
      fleet_per_token_s = per_token / n;
    }
  }

  // Publishes the full state (for /status) and the compact routing state.
  void publish(uint32_t i, const scores::ScrapedState& st) {
    scores::RoutingState rs;
    if (st.metrics_ok) {
      rs.flags |= scores::RoutingState::kMetricsOk;
      rs.running = st.running;
      rs.waiting = st.waiting;
      rs.kv_usage = st.kv_usage;
      rs.kv_free_tokens = st.kv_free_tokens;
      rs.preemptions_per_s = st.preemptions_per_s;
      rs.itl_ewma_s = st.itl_ewma_s;
      rs.engines = static_cast<uint16_t>(std::clamp<uint32_t>(st.engines, 1, UINT16_MAX));
      rs.max_lora = static_cast<int16_t>(std::clamp<int32_t>(st.max_lora, -1, INT16_MAX));
      rs.loras_running = static_cast<uint16_t>(std::min<uint32_t>(st.loras_running, UINT16_MAX));
      std::copy(replicas[i].lora_hashes.begin(), replicas[i].lora_hashes.end(), rs.lora_hashes);
    }
    rs.learned_seqs = st.learned_seqs;
    rs.learned_budget = st.learned_budget;
    if (st.calibration_samples > 0) {
      rs.flags |= scores::RoutingState::kCalibrated;
      rs.step_base_s = st.step_base_s;
      rs.step_per_token_s = st.step_per_token_s;
    } else if (fleet_calibrated > 0) {
      // Not calibrated yet (no traffic, so no samples): assume it is like the
      // calibrated replicas. A pessimistic prior would keep it idle forever, and
      // an idle replica never gets calibrated.
      rs.step_base_s = static_cast<float>(fleet_base_s);
      rs.step_per_token_s = static_cast<float>(fleet_per_token_s);
    }
    table->at(i).routing.store(rs);
    table->at(i).scraped.store(st);
  }

  void metrics_round(int64_t now) {
    for (uint32_t i = 0; i < replicas.size(); ++i) {
      if (replicas[i].state == HealthState::down) continue;
      // A scrape still in flight (slow replica) is not doubled up: get() refuses.
      if (client.get(i, kMetrics, replicas[i].metrics_path, now + timeout_ms)) {
        replicas[i].metrics_sent_ms = now;
      }
    }
  }

  void on_health(uint32_t i, const Response& r) {
    Replica& rep = replicas[i];
    scores::ReplicaSlot& slot = table->at(i);
    int64_t now = mono_ms();
    bool ok = r.status == 200;
    slot.last_health_status.store(r.status, std::memory_order_relaxed);
    slot.last_health_ms.store(now, std::memory_order_relaxed);
    if (ok) {
      rep.successes = saturating_inc(rep.successes);
      rep.failures = 0;
    } else {
      rep.failures = saturating_inc(rep.failures);
      rep.successes = 0;
    }
    HealthState next = rep.state;
    if (rep.state == HealthState::unknown) {
      next = ok ? HealthState::up : HealthState::down;  // the first result decides
    } else if (ok && rep.successes >= rise) {
      next = HealthState::up;
    } else if (!ok && rep.failures >= fall) {
      next = HealthState::down;
    }
    if (next == rep.state) return;
    rep.state = next;
    slot.up.store(next == HealthState::up, std::memory_order_relaxed);
    if (next == HealthState::up) {
      TR_LOG_INFO("replica %s (%s) is up", rep.name.c_str(), rep.url.c_str());
      // poll_once() already asked every replica for its models in this round.
      if (!in_poll_once) client.get(i, kModels, rep.models_path, now + timeout_ms);
    } else {
      TR_LOG_WARN("replica %s (%s) is down: %s", rep.name.c_str(), rep.url.c_str(),
                  describe(r).c_str());
    }
    publish_models();
  }

  void on_models(uint32_t i, const Response& r) {
    Replica& rep = replicas[i];
    std::vector<ModelEntry> models;
    ModelsParseResult res;
    std::string why;
    bool ok = false;
    if (r.status != 200) {
      why = describe(r);
    } else if (parse_models(r.body, &models, &res, &why)) {
      ok = true;
    }
    if (!ok) {
      // A replica that is not known to be up has its failure logged by health.
      if (!rep.models_failing && rep.state == HealthState::up) {
        TR_LOG_WARN("replica %s (%s): GET %s failed: %s; keeping %zu known model(s)",
                    rep.name.c_str(), rep.url.c_str(), rep.models_path.c_str(), why.c_str(),
                    rep.models.size());
      } else {
        TR_LOG_DEBUG("replica %s: GET %s failed: %s", rep.name.c_str(), rep.models_path.c_str(),
                     why.c_str());
      }
      rep.models_failing = rep.models_failing || rep.state == HealthState::up;
      return;
    }
    rep.models_failing = false;
    if (res.skipped > 0) {
      TR_LOG_DEBUG("replica %s: %zu /v1/models entries skipped", rep.name.c_str(), res.skipped);
    }
    if (rep.models_known && same_models(models, rep.models)) {
      rep.models = std::move(models);  // new "created" stamps: nothing to log or rebuild
      return;
    }
    rep.models = std::move(models);
    rep.models_known = true;
    std::string ids;
    for (const ModelEntry& m : rep.models) {
      if (!ids.empty()) ids.append(", ");
      ids.append(m.id);
    }
    TR_LOG_INFO("replica %s (%s) serves %zu model(s): %s", rep.name.c_str(), rep.url.c_str(),
                rep.models.size(), ids.c_str());
    publish_models();
  }

  // Rebuilds both model snapshots from the replicas' current state.
  void publish_models() {
    std::vector<const std::vector<ModelEntry>*> lists(replicas.size(), nullptr);
    auto by_replica = std::make_shared<ModelsByReplica>(replicas.size());
    for (size_t i = 0; i < replicas.size(); ++i) {
      const Replica& rep = replicas[i];
      if (rep.state == HealthState::up && rep.models_known) lists[i] = &rep.models;
      (*by_replica)[i].reserve(rep.models.size());
      for (const ModelEntry& m : rep.models)
        (*by_replica)[i].push_back(m.id);
    }
    auto json = std::make_shared<std::string>();
    merge_models(lists, json.get(), alias_cards());
    publish_catalog();
    std::shared_ptr<const std::string> json_c = std::move(json);
    std::shared_ptr<const ModelsByReplica> by_replica_c = std::move(by_replica);
    std::atomic_store_explicit(&models_json, std::move(json_c), std::memory_order_release);
    std::atomic_store_explicit(&models_by_replica, std::move(by_replica_c),
                               std::memory_order_release);
  }

  // /v1/models cards for the [model NAME] aliases, so clients can discover them.
  std::vector<ModelEntry> alias_cards() const {
    std::vector<ModelEntry> cards;
    for (const ModelConfig& a : aliases) {
      std::string j = "{\"id\":\"";
      json_escape_append(j, a.name);
      j += "\",\"object\":\"model\",\"created\":0,\"owned_by\":\"tokenrelay\",\"root\":\"";
      json_escape_append(j, a.name);
      j += "\",\"parent\":null}";
      cards.push_back(ModelEntry{a.name, std::move(j), ""});
    }
    return cards;
  }

  // The model pools workers route on (models/catalog.hpp): what each replica
  // serves, configured or last discovered, whatever its health now.
  void publish_catalog() {
    if (cell == nullptr) return;
    std::vector<models::ReplicaModels> served(replicas.size());
    for (size_t i = 0; i < replicas.size(); ++i) {
      const Replica& rep = replicas[i];
      models::ReplicaModels& out = served[i];
      if (!rep.configured_models.empty()) {
        out.known = true;
        for (const std::string& id : rep.configured_models) {
          std::string parent;  // what discovery says of a configured name, if anything
          for (const ModelEntry& m : rep.models) {
            if (m.id == id) parent = m.parent;
          }
          out.entries.push_back({id, std::move(parent)});
        }
      } else if (rep.models_known && !rep.models.empty()) {
        // (An empty list says nothing of what the replica serves.)
        out.known = true;
        for (const ModelEntry& m : rep.models)
          out.entries.push_back({m.id, m.parent});
      }
    }
    cell->publish(models::Catalog::build(served, aliases, slots));
  }

  void health_round(int64_t now) {
    for (uint32_t i = 0; i < replicas.size(); ++i) {
      // Still waiting on the previous check (timeout_ms > interval): skip this one.
      client.get(i, kHealth, replicas[i].health_path, now + timeout_ms);
    }
  }

  void models_round(int64_t now, bool only_up) {
    for (uint32_t i = 0; i < replicas.size(); ++i) {
      if (only_up && replicas[i].state != HealthState::up) continue;
      client.get(i, kModels, replicas[i].models_path, now + timeout_ms);
    }
  }

  void drain_wake() {
    uint64_t v;
    ssize_t n = ::read(wake_fd, &v, sizeof v);
    (void)n;  // EAGAIN: already drained
  }

  void poll_once() {
    int64_t now = mono_ms();
    in_poll_once = true;
    health_round(now);
    models_round(now, false);
    // Every request ends by its deadline (now + timeout_ms), so this is bounded.
    while (client.in_flight() > 0) {
      if (client.run(INT64_MAX)) drain_wake();
    }
    in_poll_once = false;
    next_health_ms = now + health_interval_ms;
    next_models_ms = now + kModelsIntervalMs;
  }

  void thread_main() {
    pthread_setname_np(pthread_self(), "tr-poller");
    while (!stop_requested.load(std::memory_order_acquire)) {
      int64_t now = mono_ms();
      if (now >= next_health_ms) {
        health_round(now);
        next_health_ms = next_tick(next_health_ms, health_interval_ms, now);
      }
      if (now >= next_models_ms) {
        models_round(now, true);
        next_models_ms = next_tick(next_models_ms, kModelsIntervalMs, now);
      }
      if (now >= next_metrics_ms) {
        metrics_round(now);
        next_metrics_ms = next_tick(next_metrics_ms, metrics_interval_ms, now);
      }
      if (client.run(std::min({next_health_ms, next_models_ms, next_metrics_ms}))) drain_wake();
    }
  }

  scores::Table* table;
  const uint32_t timeout_ms;
  const uint32_t health_interval_ms;
  const uint32_t metrics_interval_ms;
  uint32_t fleet_calibrated = 0;  // replicas with a calibration
  double fleet_base_s = 0;        // their mean step base
  double fleet_per_token_s = 0;   // their mean per-token step cost
  const uint32_t rise;            // consecutive good checks: down -> up ([poller] rise)
  const uint32_t fall;            // consecutive failed checks: up -> down ([poller] fall)
  std::vector<Replica> replicas;
  HttpClient client;
  int wake_fd = -1;
  bool in_poll_once = false;
  int64_t next_health_ms = 0;  // 0: never polled, so the thread starts with a round
  int64_t next_models_ms = 0;
  int64_t next_metrics_ms = 0;
  std::atomic<bool> stop_requested{false};
  std::thread thread;
  // Snapshots read by worker threads; accessed only through std::atomic_load and
  // std::atomic_store. (libstdc++ 12's std::atomic<std::shared_ptr> unlocks with a
  // relaxed store after load(), which ThreadSanitizer reports as a race; the free
  // functions use a mutex pool and are clean.)
  std::shared_ptr<const std::string> models_json;
  std::shared_ptr<const ModelsByReplica> models_by_replica;
  std::vector<ModelConfig> aliases;     // [model NAME] sections
  models::CatalogCell* cell = nullptr;  // where model pools are published (may be null)
  models::SlotNames* slots = nullptr;
};

Poller::Poller(const tr::Config& cfg, tr::scores::Table* table)
    : impl_(std::make_unique<Impl>(cfg, table)) {}

Poller::~Poller() {
  stop();
}

void Poller::poll_once() {
  TR_ASSERT(!impl_->thread.joinable());
  impl_->poll_once();
}

void Poller::set_catalog(models::CatalogCell* cell, models::SlotNames* slots) {
  TR_ASSERT(!impl_->thread.joinable() && cell != nullptr && slots != nullptr);
  impl_->cell = cell;
  impl_->slots = slots;
  impl_->publish_catalog();
}

void Poller::seed_health(uint32_t i, bool up) {
  TR_ASSERT(!impl_->thread.joinable() && i < impl_->replicas.size());
  impl_->replicas[i].state = up ? HealthState::up : HealthState::down;
  impl_->table->at(i).up.store(up, std::memory_order_relaxed);
}

void Poller::start() {
  TR_ASSERT(!impl_->thread.joinable());
  impl_->stop_requested.store(false, std::memory_order_relaxed);
  impl_->thread = std::thread([impl = impl_.get()] { impl->thread_main(); });
}

void Poller::stop() {
  if (!impl_->thread.joinable()) return;
  impl_->stop_requested.store(true, std::memory_order_release);
  uint64_t one = 1;
  ssize_t n = ::write(impl_->wake_fd, &one, sizeof one);
  TR_ASSERT(n == sizeof one);
  impl_->thread.join();
}

std::shared_ptr<const std::string> Poller::models_json() const {
  return std::atomic_load_explicit(&impl_->models_json, std::memory_order_acquire);
}

std::shared_ptr<const ModelsByReplica> Poller::models_by_replica() const {
  return std::atomic_load_explicit(&impl_->models_by_replica, std::memory_order_acquire);
}

}  // namespace tr::poller
