// What one scrape of a replica's Prometheus /metrics says about its engine,
// summed over data-parallel engines (the `engine` label), and engine by engine
// in EngineMetrics::engine_detail. Filled by tr::poller::parse_vllm_metrics
// (src/poller/vllm_metrics.hpp); counters and histogram sums are cumulative as
// exposed (the poller takes deltas). Fixed size: nothing here allocates.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tr {

// Engines broken down one by one (more are still summed into the totals).
inline constexpr size_t kEngineDetailMax = 16;
// Finite buckets of vllm:iteration_tokens_total recorded per histogram.
inline constexpr size_t kIterationBucketsMax = 32;
// Bytes of each LoRA adapter list (names joined by ',').
inline constexpr size_t kLoraListBytesMax = 512;
// Bytes of an `engine` label value kept in EngineDetail::engine.
inline constexpr size_t kEngineLabelBytesMax = 16;

struct HistogramTotals {
  double sum = 0;    // <name>_sum
  double count = 0;  // <name>_count
  bool present = false;
};

// The buckets of vllm:iteration_tokens_total (tokens per engine step).
//
// What vLLM puts there (vllm/v1/metrics/loggers.py, vllm/v1/metrics/stats.py):
//  - One observation per batch of engine-core outputs (about one engine step):
//    the generation tokens output in it plus, for each request whose prefill
//    completed in it, that request's WHOLE prompt length. A chunked prompt is
//    counted once, in the step that finishes it, and prefix-cached prompt
//    tokens are counted too. So an observation is not the step's scheduled
//    tokens: it can exceed max_num_batched_tokens (a 20k prompt through an
//    8k budget is one 20k observation) and is usually far below it.
//  - Bounds: current V1 releases use a fixed list, 1 8 16 32 64 128 256 512
//    1024 2048 4096 8192 16384, whatever the configuration. Older releases
//    (V0, and early V1) used the sorted cudagraph capture sizes (derived from
//    max_num_seqs: 1 2 4 8 16 ... up to min(2 x max_num_seqs, 512) by
//    default), or 1 8 ... 4096 8096 with enforce_eager. No release derives
//    them from max_num_batched_tokens.
// Hence: top_le is the exporter's bucket layout, never the token budget;
// covering_le is an upper bound on the largest observation, which is itself
// neither an upper nor a lower bound on max_num_batched_tokens (see above).
// The most a caller can infer is a floor on the budget from a window in
// which no prefill completed (decode-only steps are <= the budget), and that
// only to the resolution of the buckets.
struct TokenBuckets {
  // Finite bounds, ascending, with the cumulative count of observations <= each.
  std::array<double, kIterationBucketsMax> le{};
  std::array<double, kIterationBucketsMax> cumulative{};
  uint32_t size = 0;       // entries of le/cumulative in use
  bool truncated = false;  // more distinct finite bounds than kIterationBucketsMax
                           // were exposed; the first ones met were kept
  double inf_count = -1;   // the le="+Inf" bucket (all observations); -1 = absent
  double top_le = -1;      // largest finite bound exposed (counting dropped ones);
                           // -1 = no finite bucket
  // Smallest recorded finite bound whose cumulative count reaches inf_count:
  // an upper bound on the most tokens any one observation had. 0 when
  // inf_count == 0 (no observations); +Inf when no recorded bound reaches it
  // (observations above the top bucket); -1 when inf_count is absent.
  double covering_le = -1;
};

// An adapter list as vLLM writes it: names joined by ','. Stored unescaped,
// empty names dropped; when the names do not all fit, a prefix of whole names
// is kept and truncated is set.
struct AdapterList {
  std::array<char, kLoraListBytesMax> bytes{};
  uint32_t size = 0;  // bytes in use
  bool truncated = false;
  std::string_view view() const { return std::string_view(bytes.data(), size); }
};

// vllm:lora_requests_info. vLLM sets this gauge, labelled only max_lora,
// running_lora_adapters and waiting_lora_adapters (no engine or model_name
// label), to the current Unix time (set_to_current_time) each time it logs
// scheduler stats. A label combination once seen is never removed, so the
// exposition holds one sample per combination the server ever had; the one
// with the largest value is the current state, and that is the one read.
// (With several API-server processes prometheus sums the values per
// combination: "largest" is then only a guess. vLLM warns that the gauge is
// misleading under data parallelism, where all engines write the same series.)
struct LoraInfo {
  bool present = false;   // a usable sample was found (finite value)
  int32_t max_lora = -1;  // --max-loras; -1 = label absent or not a number
  double updated_s = -1;  // the sample's value: Unix time of its last update
  AdapterList running;    // running_lora_adapters
  AdapterList waiting;    // waiting_lora_adapters
};

// One data-parallel engine (one value of the `engine` label). Same meanings
// and sentinels as the EngineMetrics fields of the same names, over that
// engine's samples only (summed over model_name).
struct EngineDetail {
  std::array<char, kEngineLabelBytesMax> engine{};  // the label value as written,
                                                    // cut to kEngineLabelBytesMax
  uint32_t engine_size = 0;                         // bytes of engine in use
  int32_t index = -1;  // the label as a plain unsigned number; -1 if not one
  std::string_view engine_label() const { return std::string_view(engine.data(), engine_size); }

  double running = -1;
  double waiting = -1;
  double kv_usage = -1;  // mean over this engine's samples
  double prefix_queries = -1;
  double prefix_hits = -1;
  double prompt_tokens = -1;
  double generation_tokens = -1;
  double preemptions = -1;
  double requests_finished = -1;
  HistogramTotals ttft;
  HistogramTotals itl;
  HistogramTotals e2e;
  HistogramTotals iteration_tokens;
  HistogramTotals queue_time;
  HistogramTotals prefill_time;
  HistogramTotals decode_time;
  HistogramTotals inference_time;
  TokenBuckets iteration_buckets;
  uint32_t block_size = 0;
  uint64_t num_gpu_blocks = 0;
  LoraInfo lora;
};

struct EngineMetrics {
  bool any_vllm = false;  // at least one vllm: family was found
  uint32_t engines = 0;   // distinct `engine` label values seen (0 if unlabelled)

  // Gauges (sums over engines). -1 = family absent.
  double running = -1;   // vllm:num_requests_running
  double waiting = -1;   // vllm:num_requests_waiting
  double kv_usage = -1;  // vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc, 0..1
                         // (mean over engines, not sum)

  // Counters (sums over engines). -1 = family absent.
  double prefix_queries = -1;     // vllm:prefix_cache_queries_total (tokens)
  double prefix_hits = -1;        // vllm:prefix_cache_hits_total (tokens)
  double prompt_tokens = -1;      // vllm:prompt_tokens_total
  double generation_tokens = -1;  // vllm:generation_tokens_total
  double preemptions = -1;        // vllm:num_preemptions_total
  double requests_finished = -1;  // vllm:request_success_total, all finished_reason

  // Histograms (sums over engines).
  HistogramTotals ttft;  // vllm:time_to_first_token_seconds
  HistogramTotals itl;   // vllm:inter_token_latency_seconds (older: time_per_output_token_seconds)
  HistogramTotals e2e;   // vllm:e2e_request_latency_seconds
  HistogramTotals iteration_tokens;  // vllm:iteration_tokens_total: _count = engine steps
                                     // that output a token, _sum = their tokens

  // vllm:cache_config_info labels (0 = absent).
  uint32_t block_size = 0;
  uint64_t num_gpu_blocks = 0;  // per engine as exposed (not summed)

  // Lines of the scrape the parser skipped as malformed (including a final
  // line cut short without its '\n'); the rest was still read.
  uint32_t malformed_lines = 0;

  // --- Added after the fields above; those keep their meaning. -------------

  // Per-request phase histograms (sums over engines), observed when a request
  // finishes: seconds WAITING (queued, until first scheduled), in PREFILL
  // (first scheduled to first token), in DECODE (first to last token), and
  // RUNNING (prefill + decode). Older servers may lack some or all of them.
  HistogramTotals queue_time;      // vllm:request_queue_time_seconds
  HistogramTotals prefill_time;    // vllm:request_prefill_time_seconds
  HistogramTotals decode_time;     // vllm:request_decode_time_seconds
  HistogramTotals inference_time;  // vllm:request_inference_time_seconds

  // vllm:iteration_tokens_total buckets summed over engines, bound by bound.
  TokenBuckets iteration_buckets;

  // vllm:lora_requests_info: max_lora is the largest over engines, the lists
  // are the union (in order of first appearance) of the engines' current
  // samples and of the unlabelled one. present = false when the family is
  // absent (the server runs without --enable-lora).
  LoraInfo lora;

  // One entry per `engine` label value, in order of first appearance, over
  // the families above; samples without the label count as engine "0", so
  // an unlabelled exposition gives one entry. An unlabelled lora_requests_info
  // sample (vLLM's only kind) is given to the engine when there is exactly
  // one (creating entry "0" if there is none); with several engines it is in
  // `lora` only. Engines past kEngineDetailMax are summed above, not listed.
  std::array<EngineDetail, kEngineDetailMax> engine_detail{};
  uint32_t engine_detail_count = 0;      // entries in use
  bool engine_detail_truncated = false;  // more engines than kEngineDetailMax
};

}  // namespace tr
