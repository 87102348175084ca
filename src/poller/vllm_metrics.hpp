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
//  - histograms via their _sum and _count samples: TTFT, inter-token
//    latency, e2e latency, iteration tokens, and the request phases (queue,
//    prefill, decode, inference time); the buckets of iteration tokens only,
//    summed bound by bound (le parsed as a number: "16" and "16.0" are one
//    bound; a bucket whose le is absent, negative or NaN is ignored);
//  - V1 names win over the older ones when both are present
//    (kv_cache_usage_perc over gpu_cache_usage_perc,
//    inter_token_latency_seconds over time_per_output_token_seconds);
//  - block_size and num_gpu_blocks from the first vllm:cache_config_info
//    sample whose label is a plain unsigned number ("None" counts as absent);
//  - vllm:lora_requests_info: of each engine's samples (and of the unlabelled
//    ones) the one with the largest value, the newest (see tr::LoraInfo);
//  - the same, engine by engine, in out->engine_detail (see EngineMetrics);
//  - _created samples, non-finite values and unknown families are ignored.
// `engines` counts the labels of the families read before the per-engine
// breakdown only (the first block of EngineMetrics fields), as it always did.
// A family that is absent (or whose lines are all malformed) keeps the
// EngineMetrics default (-1, or 0 / !present). Malformed lines are counted in
// out->malformed_lines and never stop the parse. Returns out->any_vllm: true
// if at least one sample named "vllm:..." was seen. Allocates nothing: every
// bound is fixed (kEngineDetailMax, kIterationBucketsMax, kLoraListBytesMax).
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
