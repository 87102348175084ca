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
  base_s_ = opt_.base_prior_s;
  per_token_s_ = opt_.per_token_prior_s;
}

bool StepCalibrator::observe(double interval_s, double itl_sum_delta_s, double itl_count_delta,
                             double ttft_sum_delta_s, double ttft_count_delta,
                             double prompt_tokens_delta, double generation_tokens_delta,
                             double running_mean) {
  const bool ttft_ok = finite_non_negative(ttft_sum_delta_s) && ttft_count_delta > 0 &&
                       std::isfinite(ttft_count_delta);
  ttft_mean_s_ = ttft_ok ? ttft_sum_delta_s / ttft_count_delta : -1;
  const bool itl_ok =
      finite_non_negative(itl_sum_delta_s) && itl_count_delta > 0 && std::isfinite(itl_count_delta);
  itl_mean_s_ = itl_ok ? itl_sum_delta_s / itl_count_delta : -1;

  auto ignore = [this] {
    saturating_increment(&ignored_);
    return false;
  };
  if (!(interval_s > 0) || !std::isfinite(interval_s)) return ignore();
  if (!itl_ok || itl_count_delta < opt_.itl_events_min || !(itl_sum_delta_s > 0)) return ignore();
  if (!finite_non_negative(prompt_tokens_delta) || !finite_non_negative(generation_tokens_delta))
    return ignore();
  if (ttft_count_delta < 0 || ttft_sum_delta_s < 0) return ignore();  // a reset; NaN reads as 0
  const double step_s = itl_sum_delta_s / itl_count_delta;
  if (!(step_s < interval_s)) return ignore();
  double steps = interval_s / step_s;
  if (running_mean >= 1 && std::isfinite(running_mean))
    steps = std::min(steps, itl_count_delta / running_mean);
  const double first_tokens =
      ttft_count_delta > 0 && std::isfinite(ttft_count_delta) ? ttft_count_delta : 0;
  const double batch_tokens =
      prompt_tokens_delta + std::max(0.0, generation_tokens_delta - first_tokens);
  const double tokens = batch_tokens / steps;
  if (!(tokens > 0 && tokens <= kCalibrationTokensPerStepMax)) return ignore();

  const double w = std::min(1.0, itl_count_delta / opt_.itl_events_full);
  const double decay = std::pow(opt_.forgetting, w);
  s_w_ = decay * s_w_ + w;
  s_x_ = decay * s_x_ + w * tokens;
  s_xx_ = decay * s_xx_ + w * tokens * tokens;
  s_y_ = decay * s_y_ + w * step_s;
  s_xy_ = decay * s_xy_ + w * tokens * step_s;
  fit();
  saturating_increment(&samples_);
  return true;
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
