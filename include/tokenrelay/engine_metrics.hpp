// What one scrape of a replica's Prometheus /metrics says about its engine,
// summed over data-parallel engines (the `engine` label). Filled by
// tr::poller::parse_vllm_metrics (src/poller/vllm_metrics.hpp); counters and
// histogram sums are cumulative as exposed (the poller takes deltas).
#pragma once

#include <cstdint>

namespace tr {

struct HistogramTotals {
  double sum = 0;    // <name>_sum
  double count = 0;  // <name>_count
  bool present = false;
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
};

}  // namespace tr
