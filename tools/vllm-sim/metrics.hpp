// Per-engine counters and histograms, and their Prometheus text exposition in
// the shape vLLM V1 serves (prometheus_client output, labels sorted). Pure:
// the caller passes the gauges and the time stamps.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tr::sim {

enum class FinishReason : uint8_t { none = 0, stop, length, abort };

// A histogram with fixed upper bounds (seconds, or tokens); counts are per
// bucket (not cumulative) and made cumulative when rendered.
struct Histogram {
  static constexpr size_t kBucketsMax = 24;
  const double* bounds = nullptr;
  size_t bucket_count = 0;  // bounds, +Inf excluded
  std::array<uint64_t, kBucketsMax + 1> counts{};
  uint64_t count = 0;
  double sum = 0;

  void observe(double v);
};

struct EngineMetrics {
  uint64_t prefix_cache_queries = 0;  // tokens
  uint64_t prefix_cache_hits = 0;     // tokens
  uint64_t prompt_tokens = 0;
  uint64_t generation_tokens = 0;
  uint64_t preemptions = 0;
  uint64_t aborted = 0;                // client disconnects (sim-specific)
  std::array<uint64_t, 4> finished{};  // indexed by FinishReason
  Histogram ttft;
  Histogram itl;
  Histogram e2e;
  // vllm:iteration_tokens_total, as vLLM V1 fills it: one observation per
  // step that output at least one token, of the step's generated tokens plus
  // the whole prompt of each request whose prefill the step completed.
  Histogram iteration_tokens;
  // Ground truth for calibration experiments (sim only, vllm_sim:*), credited
  // when each step ends: steps, their simulated duration (the engine's busy
  // time) and the tokens they scheduled (a prompt chunk in the step that
  // computes it).
  uint64_t steps = 0;
  double step_seconds = 0;
  uint64_t step_tokens = 0;
  uint64_t lora_loads = 0;  // adapters made resident (sim only, vllm_sim:lora_loads)

  EngineMetrics();
};

// What the exposition needs from one engine at render time.
struct EngineGauges {
  const EngineMetrics* metrics;
  uint32_t running;
  uint32_t waiting;
  double kv_usage;  // 0..1
  // Comma-separated adapter names of the running / waiting requests ("" for
  // none); rendered only when LoRA is on.
  std::string running_lora_adapters;
  std::string waiting_lora_adapters;
};

// vllm:lora_requests_info, present when the sim serves adapters.
struct LoraInfo {
  bool enabled = false;
  uint32_t max_loras = 0;
  double now_s = 0;  // the gauge's value: wall-clock seconds, as set_to_current_time()
};

struct CacheInfo {
  uint32_t block_size;
  uint32_t num_gpu_blocks;
  bool prefix_caching;
};

// Appends the full exposition to <out>. <created_s> is the wall-clock second
// (with fraction) the metrics were created, as prometheus_client reports it.
void render_metrics(std::string* out, std::string_view model_name,
                    const std::vector<EngineGauges>& engines, const CacheInfo& cache,
                    const LoraInfo& lora, double created_s);

// Appends <v> the way prometheus_client's floatToGoString does ("1.0", "0.25",
// "1.7e+09", "+Inf").
void append_prom_float(std::string* out, double v);

}  // namespace tr::sim
