// Calibration of a replica's step time, step_time_s(tokens) = base + per_token
// * tokens, from the deltas of its Prometheus counters between scrapes. One
// StepCalibrator per replica, owned by the poller thread (no sharing); the
// poller publishes step_base_s() and step_per_token_s() in the score table.
//
// What vLLM's metrics say about one scrape interval (ScrapeDeltas):
//   itl_sum / itl_count  mean inter-token latency. Each decoding request
//                        observes one per engine step (the time since its
//                        previous token), so this is the mean step time of the
//                        steps that ended in the interval, weighted by their
//                        decodes;
//   steps                vllm:iteration_tokens_total _count: engine steps that
//                        output a token (V0 and V1). When absent, estimated:
//                        busy / step_s if requests ran at both scrapes (busy =
//                        time since the last interval in which a step ended),
//                        else itl_count / mean running;
//   tokens               prompt + generation - ttft_count: the tokens those
//                        steps computed (a first token is sampled in the last
//                        prefill step and takes no batch slot of its own).
// A long prompt is prefilled in chunks over several steps, but V1 counts its
// prompt tokens (prompt_tokens_total, and iteration_tokens_total) only in the
// step that completes it. Over one 100 ms scrape that is badly wrong: the
// intervals of the chunks show full-budget steps (90 ms on an 8 ms + 40 us
// engine) with a few decode tokens each, then one interval claims a 12,000-token
// step that took 90 ms. Fitted interval by interval, those points pull the
// slope to ~5 us/token and the base up to ~40 ms (measured on vllm-sim at 75%
// load with 5-15k-token prompts; bench/calibration). So intervals are
// accumulated into windows, and one window is one sample:
//   x = sum(tokens) / sum(steps),   y = sum(steps * step_s) / sum(steps)
// (busy time over steps, each interval's step_s weighted by its own steps, so a
// window mixing short decode steps and long prefill steps is averaged per step,
// as x is). A window closes at the end of an interval when it spans at least
// window_min_s and window_min_steps, unless that interval's steps took more
// than prefill_pending_ratio x what the current fit predicts for its counted
// tokens: then a chunked prefill is probably under way whose tokens are not
// counted yet, and the window waits for them (at most window_max_s). Intervals
// with no inter-token events add only to the window's duration (their steps,
// if any, had no decode to time them).
//
// The samples (x, y) are fitted by recursive least squares with exponential
// forgetting and a prior, in information form (decayed sums of the normal
// equations plus a constant prior precision, solved 2x2 after each sample): it
// cannot wind up and stays at the prior along any direction the samples do not
// excite (e.g. when every window had the same tokens per step x, the line goes
// through that point and keeps the prior's slope if x is well below
// prior_tokens, the prior's base if x is well above).
//   minimise  sum_i f^(age_i) w_i (y_i - base - per_token * x_i)^2
//           + prior_weight * (base - base_prior)^2
//           + prior_weight * prior_tokens^2 * (per_token - per_token_prior)^2
//   w_i = min(1, itl_count_i / itl_events_full)        (itl_count of the window)
// then base and per_token are clamped to [kStepBaseMinS, kStepBaseMaxS] and
// [kStepPerTokenMinS, kStepPerTokenMaxS].
//
// An interval is ignored (returns false) when it has no inter-token events, or
// its data is garbage: interval_s, a sum, a count or a token delta not finite;
// inter-token events with a zero latency sum; a negative delta (a counter reset
// or a restarted replica; a NaN TTFT delta reads as 0, a steps below 1 or a
// negative running as unknown); a mean inter-token latency longer than the time
// since the last-but-one interval with inter-token events (the longest a step
// ending now can have taken). Garbage also discards the open window. A window
// is dropped, not fitted, with fewer than itl_events_min inter-token events, no
// tokens, or more than kCalibrationTokensPerStepMax tokens per step.
//
// Known biases: vllm:prompt_tokens_total counts prefix-cache hits, which cost no
// compute, so heavy prefix caching lowers the fitted per-token cost. Steps that
// run no decode (a lone prompt prefilled on an idle engine) are not timed by any
// inter-token latency; their prompt is dropped with them only when its last
// interval has no inter-token event either. The step cost per context token
// (attention over the KV cache) is not modelled: it shows up in the base, or in
// the slope when the batch (hence the context) grows with the tokens per step.
// Without the iteration histogram, busy / step_s counts the steps of one engine
// (several data-parallel engines: too few steps). The "prefill pending" test
// sees a chunked prefill in a 100 ms interval; in a 1 s one (a longer [poller]
// interval_ms) it is diluted by the short steps around it, and at light load the
// slope comes out low (~25 us against 40 on vllm-sim).
#pragma once

#include <cstdint>

#include "estimator/engine_defaults.hpp"

namespace tr::estimator {

// A sample claiming more tokens per step than this is garbage (no engine
// batches that many); it also keeps the fit's sums of squares finite.
inline constexpr double kCalibrationTokensPerStepMax = 1e7;

struct CalibrationOptions {
  double base_prior_s = kDefaultStepBaseS;           // a0
  double per_token_prior_s = kDefaultStepPerTokenS;  // b0
  double forgetting = 0.99;  // per full-weight sample: memory ~1 / (1 - f) = 100 windows
  // The prior weighs as prior_weight full-weight samples: on the base as that
  // many samples, on the slope as that many samples prior_tokens tokens per
  // step away from the others.
  double prior_weight = 0.1;
  double prior_tokens = 128;
  double itl_events_min = 5;           // a window with fewer inter-token events is dropped
  double itl_events_full = 50;         // this many or more: full weight
  double window_min_s = 0.5;           // a window spans at least this long ...
  double window_min_steps = 8;         // ... and this many steps ...
  double window_max_s = 10;            // ... and waits for a pending prefill at most this long
  double prefill_pending_ratio = 1.5;  // step time / fit above this: prefill pending
};

// The deltas of one scrape interval (current scrape minus the previous one).
struct ScrapeDeltas {
  double interval_s = 0;
  double itl_sum_s = 0;  // vllm:inter_token_latency_seconds (or time_per_output_token)
  double itl_count = 0;
  double ttft_sum_s = 0;  // vllm:time_to_first_token_seconds
  double ttft_count = 0;
  double prompt_tokens = 0;      // vllm:prompt_tokens_total
  double generation_tokens = 0;  // vllm:generation_tokens_total
  double steps = -1;             // vllm:iteration_tokens_total _count; < 1 or NaN: unknown
  double running_start = -1;     // vllm:num_requests_running at the previous scrape; < 0: unknown
  double running_end = -1;       // ... and at this one
};

class StepCalibrator {
 public:
  // <opt> is taken as given except that out-of-range values (forgetting not in
  // (0, 1], non-positive weights or windows) are replaced by the defaults.
  explicit StepCalibrator(const CalibrationOptions& opt = {});

  // One scrape interval (see above). Returns true when it went into the open
  // window, false when it was ignored. Also records the interval's mean TTFT
  // and ITL (ttft_mean_s(), itl_mean_s()), whether or not it was ignored.
  bool observe(const ScrapeDeltas& d);

  double step_base_s() const { return base_s_; }
  double step_per_token_s() const { return per_token_s_; }
  double step_time_s(double tokens) const { return base_s_ + per_token_s_ * tokens; }
  // Windows fitted since construction (saturating).
  uint32_t samples() const { return samples_; }
  // Intervals ignored since construction (saturating).
  uint32_t ignored() const { return ignored_; }
  // Means over the last observed interval; -1 when it had no such events.
  double ttft_mean_s() const { return ttft_mean_s_; }
  double itl_mean_s() const { return itl_mean_s_; }

 private:
  struct Window {
    double duration_s = 0;
    double tokens = 0;
    double steps = 0;
    double busy_s = 0;  // sum over intervals of steps * mean step time
    double itl_events = 0;
  };

  void discard_window();
  void maybe_close_window();
  void add_sample(double tokens_per_step, double step_s, double w);
  void fit();

  CalibrationOptions opt_;
  // Decayed weighted sums: weight, tokens, tokens^2, step, tokens * step.
  double s_w_ = 0, s_x_ = 0, s_xx_ = 0, s_y_ = 0, s_xy_ = 0;
  double base_s_;
  double per_token_s_;
  Window window_;
  double since_steps_s_ = 0;      // time since the last interval with inter-token events
  double prev_since_s_ = 0;       // the same, as it was at that interval
  bool prefill_pending_ = false;  // the last such interval looked mid-prefill
  uint32_t samples_ = 0;
  uint32_t ignored_ = 0;
  double ttft_mean_s_ = -1;
  double itl_mean_s_ = -1;
};

}  // namespace tr::estimator
