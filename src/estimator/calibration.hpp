// Calibration of a replica's step time, step_time_s(tokens) = base + per_token
// * tokens, from the deltas of its Prometheus counters between two scrapes.
// One StepCalibrator per replica, owned by the poller thread (no sharing); the
// poller publishes step_base_s() and step_per_token_s() in the score table.
//
// From one scrape interval (all deltas since the previous scrape):
//   step_s   = itl_sum / itl_count        each inter-token interval of a request
//                                         is one engine step, so this is the mean
//                                         step time (weighted by decodes in it)
//   steps    = interval_s / step_s        if the engine was busy all along;
//              min(that, itl_count / running_mean) when running_mean >= 1
//              (each step yields one inter-token interval per decode); with
//              running_mean the mean batch while busy, this stays right when
//              the engine idled part of the interval (a time average that
//              counts the idle part does not correct for it)
//   tokens   = (prompt + generation - ttft_count) / steps
//                                         tokens per step; a request's first token
//                                         is sampled in its last prefill step and
//                                         takes no batch slot of its own
// giving one sample (tokens, step_s). The samples are fitted by recursive least
// squares with exponential forgetting and a prior, in information form (decayed
// sums of the normal equations plus a constant prior precision, solved 2x2 after
// each sample): it cannot wind up and stays at the prior along any direction the
// samples do not excite (e.g. when every interval had the same tokens per step,
// the line goes through that point with the prior's slope).
//   minimise  sum_i f^(age_i) w_i (step_s_i - base - per_token * tokens_i)^2
//           + prior_weight * (base - base_prior)^2
//           + prior_weight * prior_tokens^2 * (per_token - per_token_prior)^2
//   w_i = min(1, itl_count_i / itl_events_full)
// then base and per_token are clamped to [kStepBaseMinS, kStepBaseMaxS] and
// [kStepPerTokenMinS, kStepPerTokenMaxS].
//
// An interval is ignored (not a sample) when: interval_s, the ITL sum or count,
// or a token delta is not finite; any delta is negative (a counter reset or a
// restarted replica; a NaN TTFT delta reads as 0, a NaN running_mean as unknown);
// itl_count < itl_events_min; itl_sum <= 0; the mean step is longer than the
// interval; or no tokens were counted, or more than kCalibrationTokensPerStepMax
// per step.
//
// Known bias: vllm:prompt_tokens_total counts prefix-cache hits, which cost no
// compute, so heavy prefix caching lowers the fitted per-token cost.
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
  double forgetting = 0.97;     // per full-weight sample: memory ~1 / (1 - f) = 33 samples
  double prior_weight = 0.1;    // the prior counts as this many full-weight samples ...
  double prior_tokens = 1024;   // ... for the slope, at this many tokens per step
  double itl_events_min = 5;    // fewer inter-token events: interval ignored
  double itl_events_full = 50;  // this many or more: full weight
};

class StepCalibrator {
 public:
  // <opt> is taken as given except that out-of-range values (forgetting not in
  // (0, 1], non-positive weights) are replaced by the defaults.
  explicit StepCalibrator(const CalibrationOptions& opt = {});

  // One scrape interval's deltas (see above). Returns true when it became a
  // sample, false when ignored. Also records the interval's mean TTFT and ITL
  // (ttft_mean_s(), itl_mean_s()), whether or not it became a sample.
  bool observe(double interval_s, double itl_sum_delta_s, double itl_count_delta,
               double ttft_sum_delta_s, double ttft_count_delta, double prompt_tokens_delta,
               double generation_tokens_delta, double running_mean);

  double step_base_s() const { return base_s_; }
  double step_per_token_s() const { return per_token_s_; }
  double step_time_s(double tokens) const { return base_s_ + per_token_s_ * tokens; }
  // Intervals taken as samples since construction (saturating).
  uint32_t samples() const { return samples_; }
  // Intervals ignored since construction (saturating).
  uint32_t ignored() const { return ignored_; }
  // Means over the last observed interval; -1 when it had no such events.
  double ttft_mean_s() const { return ttft_mean_s_; }
  double itl_mean_s() const { return itl_mean_s_; }

 private:
  void fit();

  CalibrationOptions opt_;
  // Decayed weighted sums: weight, tokens, tokens^2, step, tokens * step.
  double s_w_ = 0, s_x_ = 0, s_xx_ = 0, s_y_ = 0, s_xy_ = 0;
  double base_s_;
  double per_token_s_;
  uint32_t samples_ = 0;
  uint32_t ignored_ = 0;
  double ttft_mean_s_ = -1;
  double itl_mean_s_ = -1;
};

}  // namespace tr::estimator
