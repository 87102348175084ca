// Latency prediction for one request on one vLLM replica: a closed-form model
// of the V1 scheduler (continuous batching, chunked prefill). Pure and
// allocation-free; workers call predict() for every candidate replica of every
// request, so it is a handful of arithmetic operations (no loops).
//
// The engine model
// ----------------
// Each engine step has a token budget B (max_num_batched_tokens). Running
// decodes take one token each first; what is left goes to prefill chunks, FCFS
// (a long prompt spans several steps); at most S (max_num_seqs) requests run.
// A step costs step(t) = base + per_token * t seconds for t tokens in it.
//
//   D   = min(running, S)                  decodes in every step
//   C   = max(B - D, B / 8)                prefill tokens per step
//   P   = prefill_tokens_queued + p        prefill up to and including ours (p = prompt)
//   n   = max(1, ceil(P / C))              steps until our prompt is done
//   prefill_s = (n - 1) * step(D + C)      full steps ...
//             + step(D + P - (n - 1) * C)  ... and the last, partial one
//             = n * (base + per_token * D) + per_token * P
//
// Waiting for a slot. When running + waiting >= S the request (and the
// waiting requests ahead of it) must wait for running ones to finish:
//   excess = running + waiting + 1 - S     completions needed before we are admitted
//   m      = decode_tokens_remaining / D   mean output still to come per running request
//            (kSlotWaitDefaultRemainingTokens when unknown: D < 1 or nothing remaining)
//   slot_wait_s = excess * m / S * step(S)
// a fluid approximation: a full batch of S requests each ~m steps from the end
// frees S slots per m decode steps. excess > S means several rounds, the later
// ones assumed like the current one. The slot wait and the prefill ahead are
// added although admitted requests' prefill overlaps the wait: pessimistic
// when saturated, and both only grow with load, so the ranking is right.
//
// Decoding. By FCFS all prefill ahead of us is done when our first token
// comes, so our inter-token steps are decode steps of the batch we join
// (prefill of requests arriving after us is unknown and not counted):
//   Dq    = min(running + waiting + 1, S)
//   itl_s = step(Dq)
//   decode_s = (o - 1) * itl_s             o = output tokens (>= 1)
//
// KV-cache pressure. A nearly full KV cache means preemption (recompute) and
// admission stalls, so (u = kv_usage, unknown -> no penalty):
//   kv_penalty(u) = min(kKvPenaltyMax,
//                       1 + kKvPenaltyGain * max(0, u - kKvPenaltyKnee)^2 / (1 - u +
//                       kKvPenaltyEps))
//   ttft_s       = (slot_wait_s + prefill_s) * (1 + kKvTtftShare * (kv_penalty - 1))
//   completion_s = (slot_wait_s + prefill_s + decode_s) * kv_penalty
// so ttft_s <= completion_s always.
//
// Delay imposed on others. Routing each request to its own soonest completion
// overloads fast replicas (every request ignores what it costs the requests
// already there). What joining costs them: each of our prompt tokens lengthens
// a step that the D running requests wait on, and each of our decode steps
// lengthens theirs by per_token for as long as both run:
//   imposed_s = per_token * D * (p + min(o, m))
// (m as in the slot wait). The latency policy can add it to its score
// ([routing] imposed_weight): the sum over requests of own completion plus
// imposed delay is what the mean end-to-end latency measures.
//
// Inputs are sanitized, never trusted: NaN or negative counts read as 0, huge
// ones are capped at kLoadMax; budget or max_num_seqs 0 read as the defaults;
// a NaN or negative calibration reads as the default prior, a huge one is
// clamped to kStepBaseMaxS / kStepPerTokenMaxS; prompt and output read as at
// least 1 token. Every output is finite and >= 0.
#pragma once

#include <cstdint>

#include "estimator/engine_defaults.hpp"

namespace tr::estimator {

// Mean output tokens still to come per running request, when the load does
// not say (used only for the slot wait).
inline constexpr double kSlotWaitDefaultRemainingTokens = 128;
// KV penalty shape: flat below the knee, ~1.2 at 0.90, ~2.7 at 0.95, capped
// from ~0.973 on.
inline constexpr double kKvPenaltyKnee = 0.85;
inline constexpr double kKvPenaltyGain = 10.0;
inline constexpr double kKvPenaltyEps = 0.01;
inline constexpr double kKvPenaltyMax = 5.0;
// Part of the KV penalty applied to TTFT ("mildly").
inline constexpr double kKvTtftShare = 0.5;
// Cap on request counts and token counts read from a ReplicaLoad.
inline constexpr double kLoadMax = 1e9;

struct ReplicaLoad {                              // one replica as the estimator sees it
  uint32_t budget_tokens = kDefaultBudgetTokens;  // max_num_batched_tokens (0 = default)
  uint32_t max_num_seqs = kDefaultMaxNumSeqs;     // (0 = default)
  double step_base_s = kDefaultStepBaseS;         // calibration
  double step_per_token_s = kDefaultStepPerTokenS;
  double running = 0;  // requests decoding or prefilling now (best of scrape and own accounting)
  double waiting = 0;  // requests queued (not yet admitted)
  double prefill_tokens_queued = 0;    // prompt tokens not yet prefilled, of requests ahead
  double decode_tokens_remaining = 0;  // output tokens still to generate by running requests
  double kv_usage = -1;                // 0..1, or -1 unknown
};

struct RequestCost {
  uint32_t prompt_tokens = 0;
  uint32_t output_tokens = 0;
};

struct Prediction {
  double ttft_s = 0;        // time to the first token
  double completion_s = 0;  // time to the last token (>= ttft_s)
  double imposed_s = 0;     // delay added to the requests running there, summed over them
};

// Predicts when <q> would get its first and last token on <r>, from now.
// Total over all inputs: never NaN or infinite, never negative.
Prediction predict(const ReplicaLoad& r, const RequestCost& q);

// The KV-cache penalty factor above: 1 for u <= kKvPenaltyKnee or u unknown
// (negative or NaN), non-decreasing in u, kKvPenaltyMax from u ~= 0.973 on.
double kv_penalty(double kv_usage);

}  // namespace tr::estimator
