#include "estimator/predict.hpp"

#include <algorithm>
#include <cmath>

namespace tr::estimator {

namespace {

// A count or token amount: NaN and negatives read as 0, huge values as kLoadMax.
inline double clean_amount(double x) {
  return x > 0 ? std::min(x, kLoadMax) : 0.0;
}

// A calibration value: NaN and negatives read as <def>, huge values as <max>.
inline double clean_step(double x, double def, double max) {
  return x >= 0 ? std::min(x, max) : def;
}

}  // namespace

double kv_penalty(double kv_usage) {
  if (!(kv_usage > kKvPenaltyKnee)) return 1.0;  // also NaN and unknown (< 0)
  double u = std::min(kv_usage, 1.0);
  double x = u - kKvPenaltyKnee;
  double p = 1.0 + kKvPenaltyGain * x * x / (1.0 - u + kKvPenaltyEps);
  return std::min(p, kKvPenaltyMax);
}

Prediction predict(const ReplicaLoad& r, const RequestCost& q) {
  const double budget = r.budget_tokens ? r.budget_tokens : kDefaultBudgetTokens;
  const double seqs = r.max_num_seqs ? r.max_num_seqs : kDefaultMaxNumSeqs;
  const double base = clean_step(r.step_base_s, kDefaultStepBaseS, kStepBaseMaxS);
  const double per_token = clean_step(r.step_per_token_s, kDefaultStepPerTokenS, kStepPerTokenMaxS);
  const double running = clean_amount(r.running);
  const double waiting = clean_amount(r.waiting);
  const double prompt = std::max<uint32_t>(q.prompt_tokens, 1);
  const double output = std::max<uint32_t>(q.output_tokens, 1);

  // Prefill: n steps of D decodes plus up to C prefill tokens each.
  const double decodes = std::min(running, seqs);
  const double chunk = std::max(budget - decodes, budget / 8);
  const double prefill = clean_amount(r.prefill_tokens_queued) + prompt;
  const double steps = std::max(1.0, std::ceil(prefill / chunk));
  const double prefill_s = steps * (base + per_token * decodes) + per_token * prefill;

  // Output still to come per running request (slot wait, imposed delay).
  const double remaining = clean_amount(r.decode_tokens_remaining);
  const double mean_remaining =
      decodes >= 1 && remaining > 0 ? remaining / decodes : kSlotWaitDefaultRemainingTokens;

  // Slot wait when the engine is at max_num_seqs.
  double slot_wait_s = 0;
  if (running + waiting >= seqs) {
    const double excess = running + waiting + 1 - seqs;
    slot_wait_s = excess * mean_remaining / seqs * (base + per_token * seqs);
  }

  // Decode in the batch we join, prefill ahead already done.
  const double batch = std::min(running + waiting + 1, seqs);
  const double decode_s = (output - 1) * (base + per_token * batch);

  // What joining costs the requests already running there.
  const double imposed_s = per_token * decodes * (prompt + std::min(output, mean_remaining));

  const double kv = kv_penalty(r.kv_usage);
  const double first_s = slot_wait_s + prefill_s;
  Prediction p;
  p.ttft_s = first_s * (1.0 + kKvTtftShare * (kv - 1.0));
  p.completion_s = (first_s + decode_s) * kv;
  p.imposed_s = imposed_s;
  return p;
}

}  // namespace tr::estimator
