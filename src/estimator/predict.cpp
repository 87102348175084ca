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

// Of a replica total <total> and its breakdown <by_class> by priority class,
// the part at classes <= <cls> (equal or more urgent); the part the
// breakdown does not cover counts as class 1. Never more than <total>.
inline double ahead_of(const PerPriorityClass& by_class, double total, size_t cls) {
  static_assert(kPriorityClasses == 3);
  const double urgent = clean_amount(by_class[0]);
  const double normal = clean_amount(by_class[1]);
  const double background = clean_amount(by_class[2]);
  double ahead = urgent;
  if (cls >= 1) ahead += normal + std::max(0.0, total - (urgent + normal + background));
  if (cls >= 2) ahead += background;
  return std::min(ahead, total);
}

// Whether any input of the data-parallel, long-prefill, KV-fit, preemption,
// priority or LoRA terms differs from the value under which they are off.
inline bool uses_extensions(const ReplicaLoad& r, const RequestCost& q) {
  return (r.engines > 1) | (r.long_prefill_threshold > 0) | (r.kv_free_tokens >= 0) |
         (r.preemptions_per_s > 0) | r.priority_scheduling | (q.adapter & !r.adapter_resident) |
         (r.observed_itl_s > 0);
}

}  // namespace

double kv_penalty(double kv_usage) {
  if (!(kv_usage > kKvPenaltyKnee)) return 1.0;  // also NaN and unknown (< 0)
  double u = std::min(kv_usage, 1.0);
  double x = u - kKvPenaltyKnee;
  double p = 1.0 + kKvPenaltyGain * x * x / (1.0 - u + kKvPenaltyEps);
  return std::min(p, kKvPenaltyMax);
}

namespace {

// The model; <kExtended> false compiles out the terms that are off (each
// gives 0, or 1 for the stretch, then), so the common case pays nothing for
// them. Both instances are the same formulas: the tests compare them.
template <bool kExtended>
inline Prediction predict_impl(const ReplicaLoad& r, const RequestCost& q) {
  const double budget = r.budget_tokens ? r.budget_tokens : kDefaultBudgetTokens;
  const double seqs = r.max_num_seqs ? r.max_num_seqs : kDefaultMaxNumSeqs;
  const double base = clean_step(r.step_base_s, kDefaultStepBaseS, kStepBaseMaxS);
  const double per_token = clean_step(r.step_per_token_s, kDefaultStepPerTokenS, kStepPerTokenMaxS);
  const double prompt = std::max<uint32_t>(q.prompt_tokens, 1);
  const double output = std::max<uint32_t>(q.output_tokens, 1);

  // The engine the request would join: the per-engine share of the totals.
  // (x * 1.0 is x: one engine is exactly the single-engine model.)
  double share = 1.0;
  if constexpr (kExtended) {
    if (r.engines > 1) share = 1.0 / std::min(r.engines, kEnginesMax);
  }
  const double running = clean_amount(r.running) * share;
  const double waiting_all = clean_amount(r.waiting) * share;
  const double queued_all = clean_amount(r.prefill_tokens_queued) * share;

  // What is queued ahead of us: all of it, or in priority mode the classes
  // at least as urgent as ours.
  double waiting = waiting_all;
  double queued = queued_all;
  if constexpr (kExtended) {
    if (r.priority_scheduling) {
      const size_t cls = priority_class(q.priority);
      waiting = ahead_of(r.waiting_by_class, clean_amount(r.waiting), cls) * share;
      queued =
          ahead_of(r.prefill_tokens_by_class, clean_amount(r.prefill_tokens_queued), cls) * share;
    }
  }

  // Prefill: n steps of D decodes plus up to C prefill tokens each.
  const double decodes = std::min(running, seqs);
  const double chunk = std::max(budget - decodes, budget / 8);
  const double prefill = queued + prompt;
  double steps = std::max(1.0, std::ceil(prefill / chunk));
  double tokens = prefill;
  if constexpr (kExtended) {
    const double threshold = r.long_prefill_threshold;
    if (threshold > 0 && threshold < chunk) {
      // Our chunk is capped at T: the queue ahead drains at C per step, then T per step for us.
      // (At an exact multiple of C, rounding either way gives the same n.)
      const double full = std::floor(queued / chunk);
      const double rest = std::clamp(queued - full * chunk, 0.0, chunk);
      const double first = std::min({threshold, chunk - rest, prompt});
      steps = full + 1 + std::ceil((prompt - first) / threshold);
    }
    // Lower-priority prefill fills the budget our steps leave.
    const double behind = queued_all - queued;
    if (behind > 0) tokens = std::min(prefill + behind, steps * chunk);
  }
  const double prefill_s = steps * (base + per_token * decodes) + per_token * tokens;

  // Output still to come per running request (slot wait, imposed delay).
  const double remaining = clean_amount(r.decode_tokens_remaining) * share;
  const double mean_remaining =
      decodes >= 1 && remaining > 0 ? remaining / decodes : kSlotWaitDefaultRemainingTokens;

  // Slot wait when the engine is at max_num_seqs.
  double slot_wait_s = 0;
  if (running + waiting >= seqs) {
    const double excess = running + waiting + 1 - seqs;
    slot_wait_s = excess * mean_remaining / seqs * (base + per_token * seqs);
  }

  // The terms below are 0 (the stretch 1) when their inputs are at the defaults.
  double kv_wait_s = 0;
  double lora_wait_s = 0;
  double lora_load_s = 0;
  double stretch = 1.0;
  if constexpr (kExtended) {
    const double decode_step_s = base + per_token * decodes;

    // KV held by the running requests, and what one of them frees (or recomputes).
    const double kv_free = r.kv_free_tokens >= 0 ? std::min(r.kv_free_tokens, kLoadMax) : -1;
    double held = decodes * kKvDefaultContextTokens;
    double context = kKvDefaultContextTokens;
    if (kv_free >= 0 && r.kv_usage >= 0 && r.kv_usage < kKvUsageHeldMax) {
      held = std::min(kv_free * r.kv_usage / (1.0 - r.kv_usage), kLoadMax);
      context = std::max(held / std::max(decodes, 1.0), kKvContextMinTokens);
    }

    // KV fit: wait for completions to free what the queue ahead and we need.
    if (kv_free >= 0) {
      const double admit = queued + prompt;
      const double freed = held * std::min(1.0, output / mean_remaining);
      const double missing = std::max({0.0, admit - kv_free, admit + output - kv_free - freed});
      if (missing > 0) {
        const double completions = std::ceil(missing / context);
        kv_wait_s = completions * mean_remaining / std::max(decodes, 1.0) * decode_step_s;
      }
    }

    // LoRA: load the adapter, after waiting for an adapter slot if all are taken.
    if (q.adapter && !r.adapter_resident) {
      lora_load_s = clean_step(r.lora_load_s, kDefaultLoraLoadS, kLoraLoadMaxS);
      const double loras = clean_amount(r.loras_running);
      if (r.max_loras && loras >= r.max_loras && decodes >= 1) {
        const double per_adapter = std::max(1.0, decodes / loras);
        lora_wait_s = 2 * mean_remaining * per_adapter / (per_adapter + 1) * decode_step_s;
      }
    }

    // Preemption recompute: the share of engine time that does no useful work.
    const double preemptions = clean_amount(r.preemptions_per_s) * share;
    if (preemptions > 0) {
      const double recompute_s = context / chunk * decode_step_s + per_token * context;
      stretch = 1.0 / (1.0 - std::min(preemptions * recompute_s, kPreemptBusyMax));
    }
  }

  // Decode in the batch we join, prefill ahead already done; no slower than
  // the engine's recent inter-token latency plus our own token (which also
  // carries the prefill chunks of the requests that keep arriving there).
  const double batch = std::min(running + waiting_all + 1, seqs);
  double itl_s = base + per_token * batch;
  if constexpr (kExtended) {
    const double observed = std::min(clean_amount(r.observed_itl_s), kStepBaseMaxS);
    itl_s = std::max(itl_s, observed + per_token);
  }
  const double decode_s = (output - 1) * itl_s;

  // What joining costs the requests already running there.
  double imposed_s = per_token * decodes * (prompt + std::min(output, mean_remaining));

  const double kv = kv_penalty(r.kv_usage);
  Prediction p;
  if constexpr (!kExtended) {
    const double first_s = slot_wait_s + prefill_s;
    p.ttft_s = first_s * (1.0 + kKvTtftShare * (kv - 1.0));
    p.completion_s = (first_s + decode_s) * kv;
  } else {
    imposed_s += decodes * lora_load_s;
    const double wait_s = std::max(slot_wait_s, lora_wait_s);
    const double kv_extra_s = std::max(0.0, kv_wait_s - wait_s);
    const double first_s = wait_s + prefill_s;
    p.ttft_s = (first_s * (1.0 + kKvTtftShare * (kv - 1.0)) + kv_extra_s) * stretch + lora_load_s;
    p.completion_s = ((first_s + decode_s) * kv + kv_extra_s) * stretch + lora_load_s;
  }
  p.imposed_s = imposed_s;
  return p;
}

}  // namespace

Prediction predict(const ReplicaLoad& r, const RequestCost& q) {
  return uses_extensions(r, q) ? predict_impl<true>(r, q) : predict_impl<false>(r, q);
}

}  // namespace tr::estimator
