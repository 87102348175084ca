#include "estimator/calibration.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace tr::estimator {

namespace {

bool finite_non_negative(double x) {
  return std::isfinite(x) && x >= 0;
}

void saturating_increment(uint32_t* n) {
  if (*n < std::numeric_limits<uint32_t>::max()) ++*n;
}

}  // namespace

StepCalibrator::StepCalibrator(const CalibrationOptions& opt) : opt_(opt) {
  const CalibrationOptions def;
  if (!(opt_.base_prior_s >= kStepBaseMinS && opt_.base_prior_s <= kStepBaseMaxS))
    opt_.base_prior_s = def.base_prior_s;
  if (!(opt_.per_token_prior_s >= kStepPerTokenMinS && opt_.per_token_prior_s <= kStepPerTokenMaxS))
    opt_.per_token_prior_s = def.per_token_prior_s;
  if (!(opt_.forgetting > 0 && opt_.forgetting <= 1)) opt_.forgetting = def.forgetting;
  if (!(opt_.prior_weight > 0 && std::isfinite(opt_.prior_weight)))
    opt_.prior_weight = def.prior_weight;
  if (!(opt_.prior_tokens > 0 && std::isfinite(opt_.prior_tokens)))
    opt_.prior_tokens = def.prior_tokens;
  if (!finite_non_negative(opt_.itl_events_min)) opt_.itl_events_min = def.itl_events_min;
  if (!(opt_.itl_events_full > 0 && std::isfinite(opt_.itl_events_full)))
    opt_.itl_events_full = def.itl_events_full;
  if (!finite_non_negative(opt_.window_min_s)) opt_.window_min_s = def.window_min_s;
  if (!finite_non_negative(opt_.window_min_steps)) opt_.window_min_steps = def.window_min_steps;
  if (!(opt_.window_max_s >= opt_.window_min_s && std::isfinite(opt_.window_max_s)))
    opt_.window_max_s = std::max(def.window_max_s, opt_.window_min_s);
  if (!(opt_.prefill_pending_ratio > 0)) opt_.prefill_pending_ratio = def.prefill_pending_ratio;
  base_s_ = opt_.base_prior_s;
  per_token_s_ = opt_.per_token_prior_s;
}

void StepCalibrator::discard_window() {
  window_ = Window{};
  since_steps_s_ = 0;
  prev_since_s_ = 0;
  prefill_pending_ = false;
}

bool StepCalibrator::observe(const ScrapeDeltas& d) {
  const bool ttft_ok =
      finite_non_negative(d.ttft_sum_s) && d.ttft_count > 0 && std::isfinite(d.ttft_count);
  ttft_mean_s_ = ttft_ok ? d.ttft_sum_s / d.ttft_count : -1;
  const bool itl_ok =
      finite_non_negative(d.itl_sum_s) && d.itl_count > 0 && std::isfinite(d.itl_count);
  itl_mean_s_ = itl_ok ? d.itl_sum_s / d.itl_count : -1;

  auto garbage = [this] {
    discard_window();
    saturating_increment(&ignored_);
    return false;
  };
  if (!(d.interval_s > 0) || !std::isfinite(d.interval_s)) return garbage();
  if (!finite_non_negative(d.itl_sum_s) || !finite_non_negative(d.itl_count)) return garbage();
  if (!finite_non_negative(d.prompt_tokens) || !finite_non_negative(d.generation_tokens))
    return garbage();
  if (d.ttft_count < 0 || d.ttft_sum_s < 0) return garbage();   // a reset; NaN reads as 0
  if (d.itl_count > 0 && !(d.itl_sum_s > 0)) return garbage();  // latencies of zero

  window_.duration_s += d.interval_s;
  since_steps_s_ += d.interval_s;
  if (!(d.itl_count > 0)) {
    // No decode step ended (idle, or steps that only prefilled): nothing to
    // time them with. A window waiting for a prefill can still time out.
    maybe_close_window();
    saturating_increment(&ignored_);
    return false;
  }
  const double step_s = d.itl_sum_s / d.itl_count;
  const double since_s = since_steps_s_;
  since_steps_s_ = 0;
  // A step that ended here began after the previous interval with steps began
  // (a preempted request's latency can be longer: rare, and dropped).
  const double step_max_s = since_s + prev_since_s_;
  prev_since_s_ = since_s;
  if (step_s > step_max_s) return garbage();

  // Steps in the interval: counted by the engine when it says (iteration
  // histogram); else from the time it was busy when requests ran at both
  // scrapes (or the batch is unknown); else from the batch, one inter-token
  // event per decode per step.
  const double r0 = d.running_start;
  const double r1 = d.running_end;
  double steps = since_s / step_s;
  if (d.steps >= 1 && std::isfinite(d.steps)) {
    steps = d.steps;
  } else if (!(r0 >= 1 && r1 >= 1) && r0 >= 0 && r1 >= 0 && r0 + r1 >= 2) {
    steps = d.itl_count / ((r0 + r1) / 2);
  }
  if (!(steps > 0) || !std::isfinite(steps)) return garbage();

  const double first_tokens = d.ttft_count > 0 && std::isfinite(d.ttft_count) ? d.ttft_count : 0;
  const double tokens = d.prompt_tokens + std::max(0.0, d.generation_tokens - first_tokens);
  window_.tokens += tokens;
  window_.steps += steps;
  window_.busy_s += steps * step_s;
  window_.itl_events += d.itl_count;
  // Steps much slower than their counted tokens explain: a prefill whose
  // prompt is not counted yet (it will be when it completes).
  prefill_pending_ = step_s > opt_.prefill_pending_ratio * step_time_s(tokens / steps);

  maybe_close_window();
  return true;
}

void StepCalibrator::maybe_close_window() {
  if (window_.duration_s < opt_.window_min_s || window_.steps < opt_.window_min_steps) return;
  if (prefill_pending_ && window_.duration_s < opt_.window_max_s) return;
  const Window w = window_;
  window_ = Window{};
  if (w.itl_events < opt_.itl_events_min || !(w.steps > 0)) return;
  const double tokens_per_step = w.tokens / w.steps;
  if (!(tokens_per_step > 0 && tokens_per_step <= kCalibrationTokensPerStepMax)) return;
  add_sample(tokens_per_step, w.busy_s / w.steps,
             std::min(1.0, w.itl_events / opt_.itl_events_full));
}

void StepCalibrator::add_sample(double x, double y, double w) {
  const double decay = std::pow(opt_.forgetting, w);
  s_w_ = decay * s_w_ + w;
  s_x_ = decay * s_x_ + w * x;
  s_xx_ = decay * s_xx_ + w * x * x;
  s_y_ = decay * s_y_ + w * y;
  s_xy_ = decay * s_xy_ + w * x * y;
  fit();
  saturating_increment(&samples_);
}

void StepCalibrator::fit() {
  // Normal equations with the prior:
  //   [s_w + pa   s_x       ] [base     ]   [s_y  + pa * base_prior     ]
  //   [s_x        s_xx + pb ] [per_token] = [s_xy + pb * per_token_prior]
  // pa, pb > 0 make the matrix positive definite (det > 0).
  const double pa = opt_.prior_weight;
  const double pb = opt_.prior_weight * opt_.prior_tokens * opt_.prior_tokens;
  const double m00 = s_w_ + pa;
  const double m01 = s_x_;
  const double m11 = s_xx_ + pb;
  const double r0 = s_y_ + pa * opt_.base_prior_s;
  const double r1 = s_xy_ + pb * opt_.per_token_prior_s;
  const double det = m00 * m11 - m01 * m01;
  if (!(det > 0) || !std::isfinite(det))
    return;  // unreachable short of overflow; keep the last fit
  const double base = (r0 * m11 - m01 * r1) / det;
  const double per_token = (m00 * r1 - m01 * r0) / det;
  if (!std::isfinite(base) || !std::isfinite(per_token)) return;
  base_s_ = std::clamp(base, kStepBaseMinS, kStepBaseMaxS);
  per_token_s_ = std::clamp(per_token, kStepPerTokenMinS, kStepPerTokenMaxS);
}

}  // namespace tr::estimator
