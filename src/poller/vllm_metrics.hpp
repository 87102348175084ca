// What a vLLM server's /metrics says about its engines, read into
// tr::EngineMetrics. Pure code (no I/O, no allocation), tested without sockets.
#pragma once

#include <cstddef>
#include <string_view>

#include "estimator/calibration.hpp"
#include "tokenrelay/engine_metrics.hpp"

namespace tr::poller {

// Distinct `engine` label values counted per scrape; more are still summed
// but not counted (EngineMetrics::engines saturates here).
inline constexpr size_t kVllmEnginesMax = 64;

// Replaces *out with what <text> (a Prometheus text exposition) says:
//  - gauges and counters summed over every sample of the family, i.e. over
//    the `engine` label (data-parallel engines) and over `model_name`;
//    vllm:request_success_total over every `finished_reason` too;
//  - kv_usage is the mean over the samples (one per engine), not the sum;
//  - histograms via their _sum and _count samples (buckets are not read):
//    TTFT, inter-token latency, e2e latency, iteration tokens;
//  - V1 names win over the older ones when both are present
//    (kv_cache_usage_perc over gpu_cache_usage_perc,
//    inter_token_latency_seconds over time_per_output_token_seconds);
//  - block_size and num_gpu_blocks from the first vllm:cache_config_info
//    sample whose label is a plain unsigned number ("None" counts as absent);
//  - _created samples, non-finite values and unknown families are ignored.
// A family that is absent (or whose lines are all malformed) keeps the
// EngineMetrics default (-1, or 0 / !present). Malformed lines are counted in
// out->malformed_lines and never stop the parse. Returns out->any_vllm: true
// if at least one sample named "vllm:..." was seen.
bool parse_vllm_metrics(std::string_view text, tr::EngineMetrics* out);

// The step-time calibration's input for the <interval_s> between two
// consecutive scrapes of one replica, <prev> then <cur>. A counter that went
// backwards (restart) or is absent gives a negative delta, which the
// calibrator treats as garbage; an absent iteration histogram or running gauge
// reads as unknown. Returns false (nothing to observe) when either scrape
// lacks the inter-token latency or TTFT histogram.
bool calibration_deltas(const tr::EngineMetrics& prev, const tr::EngineMetrics& cur,
                        double interval_s, estimator::ScrapeDeltas* out);

}  // namespace tr::poller
