#include "metrics.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "core/assert.hpp"

namespace tr::sim {

namespace {

// Bucket boundaries as vLLM V1 declares them (vllm/v1/metrics/loggers.py).
constexpr double kTtftBounds[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                  0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                  20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
constexpr double kItlBounds[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                 0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
constexpr double kE2eBounds[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                 5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
// vllm:iteration_tokens_total (tokens, vllm/v1/metrics/loggers.py).
constexpr double kIterationTokensBounds[] = {1,   8,    16,   32,   64,   128,  256,
                                             512, 1024, 2048, 4096, 8192, 16384};
constexpr size_t kTtftBuckets = sizeof(kTtftBounds) / sizeof(double);
constexpr size_t kItlBuckets = sizeof(kItlBounds) / sizeof(double);
constexpr size_t kE2eBuckets = sizeof(kE2eBounds) / sizeof(double);
constexpr size_t kIterationTokensBuckets = sizeof(kIterationTokensBounds) / sizeof(double);
static_assert(kTtftBuckets <= Histogram::kBucketsMax);
static_assert(kItlBuckets <= Histogram::kBucketsMax);
static_assert(kE2eBuckets <= Histogram::kBucketsMax);
static_assert(kIterationTokensBuckets <= Histogram::kBucketsMax);

void init_hist(Histogram* h, const double* bounds, size_t n) {
  h->bounds = bounds;
  h->bucket_count = n;
}

// Label values escape '\\', '"' and newline (text format 0.0.4).
void append_label_value(std::string* out, std::string_view value) {
  for (char c : value) {
    if (c == '\\' || c == '"') out->push_back('\\');
    if (c == '\n') {
      out->append("\\n");
      continue;
    }
    out->push_back(c);
  }
}

// Writes `{engine="E"<extra>,model_name="M"}` with the label names sorted;
// <extra> is inserted between engine and model_name and must start with ','
// (finished_reason and le both sort there).
void append_labels(std::string* out, size_t engine, std::string_view extra,
                   std::string_view model) {
  char buf[32];
  int n = std::snprintf(buf, sizeof buf, "{engine=\"%zu\"", engine);
  out->append(buf, n);
  out->append(extra);
  out->append(",model_name=\"");
  append_label_value(out, model);
  out->append("\"}");
}

void header(std::string* out, std::string_view name, std::string_view type, std::string_view help) {
  out->append("# HELP ").append(name).append(" ").append(help).append("\n");
  out->append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void sample(std::string* out, std::string_view name, std::string_view suffix, size_t engine,
            std::string_view extra, std::string_view model, double v) {
  out->append(name).append(suffix);
  append_labels(out, engine, extra, model);
  out->push_back(' ');
  append_prom_float(out, v);
  out->push_back('\n');
}

struct Ctx {
  std::string* out;
  std::string_view model;
  const std::vector<EngineGauges>& engines;
  double created_s;
};

void gauge(const Ctx& c, std::string_view name, std::string_view help,
           double (*get)(const EngineGauges&)) {
  header(c.out, name, "gauge", help);
  for (size_t e = 0; e < c.engines.size(); ++e) {
    sample(c.out, name, "", e, "", c.model, get(c.engines[e]));
  }
}

// prometheus_client names a counter family without "_total" in HELP/TYPE and
// emits <name>_total and <name>_created samples.
void counter(const Ctx& c, std::string_view name, std::string_view help,
             uint64_t (*get)(const EngineMetrics&)) {
  header(c.out, name, "counter", help);
  for (size_t e = 0; e < c.engines.size(); ++e) {
    sample(c.out, name, "_total", e, "", c.model, static_cast<double>(get(*c.engines[e].metrics)));
    sample(c.out, name, "_created", e, "", c.model, c.created_s);
  }
}

void histogram(const Ctx& c, std::string_view name, std::string_view help,
               const Histogram EngineMetrics::*member) {
  header(c.out, name, "histogram", help);
  for (size_t e = 0; e < c.engines.size(); ++e) {
    const Histogram& h = c.engines[e].metrics->*member;
    uint64_t cumulative = 0;
    std::string le;
    for (size_t b = 0; b <= h.bucket_count; ++b) {
      cumulative += h.counts[b];
      le.assign(",le=\"");
      if (b < h.bucket_count) {
        append_prom_float(&le, h.bounds[b]);
      } else {
        le.append("+Inf");
      }
      le.push_back('"');
      sample(c.out, name, "_bucket", e, le, c.model, static_cast<double>(cumulative));
    }
    TR_ASSERT(cumulative == h.count);
    sample(c.out, name, "_count", e, "", c.model, static_cast<double>(h.count));
    sample(c.out, name, "_sum", e, "", c.model, h.sum);
    sample(c.out, name, "_created", e, "", c.model, c.created_s);
  }
}

}  // namespace

void Histogram::observe(double v) {
  TR_DASSERT(bounds != nullptr);
  size_t b = 0;
  while (b < bucket_count && v > bounds[b])
    ++b;
  counts[b] += 1;
  count += 1;
  sum += v;
}

EngineMetrics::EngineMetrics() {
  init_hist(&ttft, kTtftBounds, kTtftBuckets);
  init_hist(&itl, kItlBounds, kItlBuckets);
  init_hist(&e2e, kE2eBounds, kE2eBuckets);
  init_hist(&iteration_tokens, kIterationTokensBounds, kIterationTokensBuckets);
}

void append_prom_float(std::string* out, double v) {
  if (std::isinf(v)) {
    out->append(v > 0 ? "+Inf" : "-Inf");
    return;
  }
  if (std::isnan(v)) {
    out->append("NaN");
    return;
  }
  // Python repr: shortest round-trip digits; fixed notation for 1e-4 <= |v| < 1e16.
  char buf[64];
  const double mag = std::fabs(v);
  std::to_chars_result r;
  if (v == 0 || (mag >= 1e-4 && mag < 1e16)) {
    r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
  } else {
    r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  }
  TR_ASSERT(r.ec == std::errc());
  std::string s(buf, r.ptr);
  const bool scientific = s.find('e') != std::string::npos;
  if (!scientific && s.find('.') == std::string::npos) s += ".0";
  if (scientific) {
    // Python writes "1e-05" and "1.5e+20": exponent with sign and >= 2 digits.
    size_t e = s.find('e');
    std::string mant = s.substr(0, e);
    std::string ex = s.substr(e + 1);
    char sign = '+';
    if (!ex.empty() && (ex[0] == '-' || ex[0] == '+')) {
      sign = ex[0];
      ex.erase(0, 1);
    }
    if (ex.size() < 2) ex.insert(0, "0");
    s = mant + "e" + sign + ex;
  }
  // floatToGoString: Go switches to exponent form once there are more than
  // 6 digits before the point.
  const size_t dot = s.find('.');
  if (v > 0 && !scientific && dot != std::string::npos && dot > 6) {
    std::string mantissa = s.substr(0, 1) + "." + s.substr(1, dot - 1) + s.substr(dot + 1);
    while (!mantissa.empty() && (mantissa.back() == '0' || mantissa.back() == '.')) {
      mantissa.pop_back();
    }
    char ebuf[32];
    std::snprintf(ebuf, sizeof ebuf, "e+0%zu", dot - 1);
    s = mantissa + ebuf;
  }
  out->append(s);
}

void render_metrics(std::string* out, std::string_view model_name,
                    const std::vector<EngineGauges>& engines, const CacheInfo& cache,
                    const LoraInfo& lora, double created_s) {
  const Ctx c{out, model_name, engines, created_s};
  gauge(c, "vllm:num_requests_running", "Number of requests in model execution batches.",
        [](const EngineGauges& g) { return static_cast<double>(g.running); });
  gauge(c, "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
        [](const EngineGauges& g) { return static_cast<double>(g.waiting); });
  gauge(c, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
        [](const EngineGauges& g) { return g.kv_usage; });
  counter(c, "vllm:prefix_cache_queries",
          "Prefix cache queries, in terms of number of queried tokens.",
          [](const EngineMetrics& m) { return m.prefix_cache_queries; });
  counter(c, "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
          [](const EngineMetrics& m) { return m.prefix_cache_hits; });
  counter(c, "vllm:num_preemptions", "Cumulative number of preemption from the engine.",
          [](const EngineMetrics& m) { return m.preemptions; });
  counter(c, "vllm:prompt_tokens", "Number of prefill tokens processed.",
          [](const EngineMetrics& m) { return m.prompt_tokens; });
  counter(c, "vllm:generation_tokens", "Number of generation tokens processed.",
          [](const EngineMetrics& m) { return m.generation_tokens; });

  header(out, "vllm:request_success", "counter", "Count of successfully processed requests.");
  static constexpr struct {
    FinishReason reason;
    const char* label;
  } kReasons[] = {{FinishReason::stop, ",finished_reason=\"stop\""},
                  {FinishReason::length, ",finished_reason=\"length\""},
                  {FinishReason::abort, ",finished_reason=\"abort\""}};
  for (size_t e = 0; e < engines.size(); ++e) {
    for (const auto& r : kReasons) {
      const uint64_t n = engines[e].metrics->finished[static_cast<size_t>(r.reason)];
      sample(out, "vllm:request_success", "_total", e, r.label, model_name, static_cast<double>(n));
      sample(out, "vllm:request_success", "_created", e, r.label, model_name, created_s);
    }
  }

  histogram(c, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            &EngineMetrics::ttft);
  histogram(c, "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            &EngineMetrics::itl);
  histogram(c, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            &EngineMetrics::e2e);
  histogram(c, "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
            &EngineMetrics::iteration_tokens);

  // Info gauge: CacheConfig.metrics_info() (every field str()-ed) plus the
  // engine label, labels sorted.
  header(out, "vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig");
  for (size_t e = 0; e < engines.size(); ++e) {
    char buf[512];
    int n = std::snprintf(buf, sizeof buf,
                          "vllm:cache_config_info{block_size=\"%u\",cache_dtype=\"auto\","
                          "calculate_kv_scales=\"False\",cpu_offload_gb=\"0\","
                          "enable_prefix_caching=\"%s\",engine=\"%zu\","
                          "gpu_memory_utilization=\"0.9\",is_attention_free=\"False\","
                          "num_cpu_blocks=\"None\",num_gpu_blocks=\"%u\","
                          "num_gpu_blocks_override=\"None\",prefix_caching_hash_algo=\"sha256\","
                          "sliding_window=\"None\",swap_space=\"4\"} 1.0\n",
                          cache.block_size, cache.prefix_caching ? "True" : "False", e,
                          cache.num_gpu_blocks);
    TR_ASSERT(n > 0 && static_cast<size_t>(n) < sizeof buf);
    out->append(buf, n);
  }

  // vLLM sets this gauge to the current time under labels that name the
  // adapters in use; its labels carry no model_name. Label names sorted.
  if (lora.enabled) {
    header(out, "vllm:lora_requests_info", "gauge", "Running stats on lora requests.");
    for (size_t e = 0; e < engines.size(); ++e) {
      char buf[64];
      int n =
          std::snprintf(buf, sizeof buf, "vllm:lora_requests_info{engine=\"%zu\",max_lora=\"%u\"",
                        e, lora.max_loras);
      out->append(buf, n);
      out->append(",running_lora_adapters=\"");
      append_label_value(out, engines[e].running_lora_adapters);
      out->append("\",waiting_lora_adapters=\"");
      append_label_value(out, engines[e].waiting_lora_adapters);
      out->append("\"} ");
      append_prom_float(out, lora.now_s);
      out->push_back('\n');
    }
  }

  header(out, "vllm_sim:aborted_requests", "counter",
         "Requests aborted because the client disconnected (vllm-sim only).");
  for (size_t e = 0; e < engines.size(); ++e) {
    sample(out, "vllm_sim:aborted_requests", "_total", e, "", model_name,
           static_cast<double>(engines[e].metrics->aborted));
    sample(out, "vllm_sim:aborted_requests", "_created", e, "", model_name, created_s);
  }
  counter(c, "vllm_sim:engine_steps", "Engine steps run (vllm-sim only: ground truth).",
          [](const EngineMetrics& m) { return m.steps; });
  counter(c, "vllm_sim:step_tokens",
          "Tokens scheduled in engine steps, prompt chunks when "
          "computed (vllm-sim only: ground truth).",
          [](const EngineMetrics& m) { return m.step_tokens; });
  if (lora.enabled) {
    counter(c, "vllm_sim:lora_loads",
            "Adapters made resident, each adding --lora-load-ms to its step (vllm-sim only).",
            [](const EngineMetrics& m) { return m.lora_loads; });
  }
  header(out, "vllm_sim:step_seconds", "counter",
         "Simulated duration of the engine steps (vllm-sim only: ground truth).");
  for (size_t e = 0; e < engines.size(); ++e) {
    sample(out, "vllm_sim:step_seconds", "_total", e, "", model_name,
           engines[e].metrics->step_seconds);
    sample(out, "vllm_sim:step_seconds", "_created", e, "", model_name, created_s);
  }
}

}  // namespace tr::sim
