// Latency prediction for one request on one vLLM replica: a closed-form model
// of the V1 scheduler (continuous batching, chunked prefill). Pure and
// allocation-free; workers call predict() for every candidate replica of every
// request, so it is a handful of arithmetic operations (no loops). With the
// inputs of the data-parallel, long-prefill, KV-fit, preemption, priority and
// LoRA terms at their defaults it is exactly the base model (those terms are
// then compiled out of the path taken: same formulas, no cost).
//
// The engine model
// ----------------
// Each engine step has a token budget B (max_num_batched_tokens). Running
// decodes take one token each first; what is left goes to prefill chunks, FCFS
// (a long prompt spans several steps); at most S (max_num_seqs) requests run.
// A step costs step(t) = base + per_token * t seconds for t tokens in it.
//
// Data-parallel engines. A URL may front E engines (vLLM data parallel), each
// its own scheduler with budget B, max_num_seqs S and KV cache; the DP front
// end sends a request to the least-loaded engine. The load counts of a
// ReplicaLoad (running, waiting, prefill and decode tokens, their priority
// breakdowns, preemptions) are replica totals; the model below runs on the
// engine the request would join, taken as the per-engine share:
//   running_e = running / E, waiting_e = waiting / E, ... (E = engines, >= 1)
// and every symbol below is of that engine. E = 1 is the single engine.
//
//   D   = min(running, S)                  decodes in every step
//   C   = max(B - D, B / 8)                prefill tokens per step
//   Q   = prefill_tokens_queued            prefill ahead of us (see Priority for "ahead")
//   P   = Q + p                            prefill up to and including ours (p = prompt)
//   n   = max(1, ceil(P / C))              steps until our prompt is done
//   prefill_s = (n - 1) * step(D + C)      full steps ...
//             + step(D + P - (n - 1) * C)  ... and the last, partial one
//             = n * (base + per_token * D) + per_token * P
//
// long_prefill_token_threshold. With 0 < T < C, vLLM V1 caps each request's
// chunk at T tokens per step (running and waiting alike), so our prompt takes
// at least ceil(p / T) steps even on an idle engine, and a step where our
// chunk is capped leaves budget to requests behind us. The prefill ahead
// still drains first at C per step (FCFS, work-conserving), so:
//   j  = floor(Q / C)                      steps of prefill ahead only
//   r  = Q - j * C                         ahead's share of step j + 1
//   g  = min(T, C - r, p)                  our chunk in step j + 1
//   n  = j + 1 + ceil((p - g) / T)         then T per step
// (T >= C gives back n = ceil(P / C).) This is >= max(ceil(P / C),
// ceil(p / T)), and more than that when a queue ahead ends mid-step: e.g.
// Q = 3000, C = 2048, T = 512, p = 2000 gives j = 1, r = 952, g = 512,
// n = 1 + 1 + ceil(1488 / 512) = 5, where the max form says 4. The cost
// formula above still holds (every step has D decodes; the P tokens are
// spread over the n steps), plus what fills the budget we leave (Priority).
// The requests ahead are assumed to fill the budget; if the queue ahead is
// one long prompt, T caps it too and we would run beside it (sooner than n).
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
// KV fit (kv_free_tokens F >= 0: free blocks x block_size of the engine the
// request would join; unknown (< 0) -> no wait). V1 admits a waiting request
// only if allocate_slots gets blocks for its chunk (FCFS: the head that does
// not fit stops admission), and a running request needs a block every
// block_size tokens; when none is free the scheduler preempts the newest
// running request (recompute), which would be ours. So the request needs,
// after the prefill queued ahead has taken its blocks, its prompt at
// admission (its chunks follow within n steps; a prompt admitted without room
// for all of them is the newest, so the one preempted) and one more token per
// decode step, while the running requests
// free their blocks as they finish. With H the tokens the running requests
// hold and h what one of them frees,
//   H = F * u / (1 - u),  h = max(H / max(D, 1), kKvContextMinTokens)   (u = kv_usage)
//   H = D * kKvDefaultContextTokens,  h = kKvDefaultContextTokens  (u unknown or
//                                                      >= kKvUsageHeldMax)
// (both non-decreasing in F), finishing at the slot wait's rate (a full
// turnover of the batch per m steps), fluid:
//   need(t) = Q + p + t                    t = our decode steps after admission
//   room(t) = F + H * min(1, t / m)
// room - need is concave in t, so it is enough to check both ends, t = 0
// and t = o:
//   missing = max(0, Q + p - F, Q + p + o - F - H * min(1, o / m))
//   kv_wait_s = ceil(missing / h) * m / max(D, 1) * step(D)
// completions needed, at the rate the running batch finishes (like the slot
// wait, whose S is D here). The running requests' own remaining growth and
// the frees while the queue ahead prefills are left out (the two partly
// cancel). A request that fits predicts no wait whatever kv_usage says; one
// that does not waits for real completions, which can be several turnovers
// of the batch: hard, not a soft penalty.
//
// The slot wait, the KV wait and the LoRA slot wait (below) all wait for
// running requests to finish, concurrently, so the request waits for the
// longest of them: admission_s = max(slot_wait_s, kv_wait_s, lora_wait_s).
//
// Decoding. By FCFS all prefill ahead of us is done when our first token
// comes, so our inter-token steps are decode steps of the batch we join
// (prefill of requests arriving after us is unknown to the model):
//   Dq    = min(running + waiting + 1, S)
//   itl_s = max(step(Dq), observed_itl + per_token)
//   decode_s = (o - 1) * itl_s             o = output tokens (>= 1)
// where observed_itl is the engine's recent mean inter-token latency from its
// metrics (0 when unknown): on an engine that keeps receiving long prompts,
// every decode step also carries their prefill chunks, which step(Dq) cannot
// see; the measured ITL does.
//
// KV-cache pressure. A nearly full KV cache means preemption (recompute) and
// admission stalls, so (u = kv_usage, unknown -> no penalty):
//   kv_penalty(u) = min(kKvPenaltyMax,
//                       1 + kKvPenaltyGain * max(0, u - kKvPenaltyKnee)^2 / (1 - u +
//                       kKvPenaltyEps))
// The penalty is the soft prior for churn among the running requests near a
// full cache (their growth preempting each other, which the fit check leaves
// out); the fit check is this request's own admission. Not to compound them,
// the penalty multiplies the waits for slots and adapters, the prefill and
// the decode, and the part of the KV wait beyond those waits is added after:
//   wait_s       = max(slot_wait_s, lora_wait_s)
//   kv_extra_s   = max(0, kv_wait_s - wait_s)       (admission_s = wait_s + kv_extra_s)
//   first_s      = wait_s + prefill_s
//   ttft_s       = ((first_s * (1 + kKvTtftShare * (kv_penalty - 1)) + kv_extra_s)
//                  * stretch + lora_load_s
//   completion_s = ((first_s + decode_s) * kv_penalty + kv_extra_s) * stretch + lora_load_s
// so ttft_s <= completion_s always (stretch and lora_load_s below; both are 1
// and 0 by default, and then this is ttft_s = first_s * (1 + ...),
// completion_s = (first_s + decode_s) * kv_penalty as before the KV fit).
//
// Preemptions. A replica that preempts (preemptions_per_s, replica total;
// lambda = preemptions_per_s / E per engine) recomputes each victim's
// context, h tokens (as in the KV fit), as prefill chunks:
//   recompute_s = h / C * (base + per_token * D) + per_token * h
// (the prefill cost above for h tokens, fractional steps). Those seconds of
// engine time do no useful work, so the engine runs at 1 - rho of its speed:
//   rho     = min(lambda * recompute_s, kPreemptBusyMax)
//   stretch = 1 / (1 - rho)                (<= 4)
// which stretches everything the engine does for us (waits, prefill, decode).
// The chance that we are the victim (newest first) is not priced. The KV
// penalty guesses the same churn from usage; with both fed they overlap for
// a hot replica (the measured rate is the better one).
//
// Priority (priority_scheduling). vLLM's priority policy orders the waiting
// queue by (priority, arrival), lower value first. The load is aggregated,
// so the caller gives a bounded breakdown of the queued load into
// kPriorityClasses classes, priority_class(p): 0 for p < 0 (urgent), 1 for
// p == 0 (vLLM's default), 2 for p > 0 (background):
//   waiting_by_class[k], prefill_tokens_by_class[k]  (replica totals)
// What the breakdown does not cover (total - sum, foreign load) counts as
// class 1. Only classes <= ours count ahead: Q and the waiting count of the
// slot wait and the KV fit are then
//   ahead = min(total, sum_{k <= c} by_class[k] (+ uncovered if c >= 1))
// (equal class counts whole: FCFS within a class; coarse, so pessimistic
// for the most urgent inside a class). Running requests always count, and
// so does the decode batch Dq (everyone waiting joins it). The prefill of
// the classes behind us fills the budget our steps leave (the last partial
// step, and the T-capped ones), so the tokens in our n steps are
//   min(Q_all + p, n * C)                  Q_all = all queued prefill
// instead of P. vLLM priority mode also preempts the lowest-priority running
// request when a running one needs a block; not modelled (the KV fit of an
// urgent request is as of FCFS). Off (default): everything counts, as above.
//
// LoRA (q.adapter: the request names an adapter). Nothing if the adapter is
// running on the engine (adapter_resident). Otherwise loading it costs
// lora_load_s (caller's measurement, kDefaultLoraLoadS by default), in TTFT
// and completion, and stalls the steps of the D running requests:
// imposed_s += D * lora_load_s. If loras_running >= max_loras (max_loras > 0;
// 0 = unlimited) a waiting request with a new adapter is skipped until an
// adapter slot frees: until the last of the k = max(1, D / loras_running)
// requests of one adapter finishes. Their remaining lengths uniform on
// [0, 2m] (mean m), the last of k finishes after 2m * k / (k + 1) steps:
//   lora_wait_s = 2 * m * k / (k + 1) * step(D)
// (m at k = 1, towards 2m for many; the fluid "completions / rate" form
// would give m / loras_running, far too short: any completion does not free
// an adapter). D counts base-model requests too, so k is an upper bound.
//
// Delay imposed on others. Routing each request to its own soonest completion
// overloads fast replicas (every request ignores what it costs the requests
// already there). What joining costs them: each of our prompt tokens lengthens
// a step that the D running requests wait on, and each of our decode steps
// lengthens theirs by per_token for as long as both run:
//   imposed_s = per_token * D * (p + min(o, m))  (+ D * lora_load_s, see LoRA)
// (m as in the slot wait). The latency policy can add it to its score
// ([routing] imposed_weight): the sum over requests of own completion plus
// imposed delay is what the mean end-to-end latency measures.
//
// Inputs are sanitized, never trusted: NaN or negative counts read as 0, huge
// ones are capped at kLoadMax; budget or max_num_seqs 0 read as the defaults;
// a NaN or negative calibration reads as the default prior, a huge one is
// clamped to kStepBaseMaxS / kStepPerTokenMaxS; prompt and output read as at
// least 1 token; engines 0 reads as 1, more than kEnginesMax as kEnginesMax;
// kv_free_tokens NaN or negative reads as unknown, huge as kLoadMax;
// lora_load_s NaN or negative reads as kDefaultLoraLoadS, huge as
// kLoraLoadMaxS. Every output is finite and >= 0.
#pragma once

#include <array>
#include <cstddef>
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
// KV held per running request (and recomputed per preemption) when the load
// does not say: kv_usage unknown, or nothing running.
inline constexpr double kKvDefaultContextTokens = 1024;
// From this kv_usage on, F * u / (1 - u) is noise: the held tokens read as
// D * kKvDefaultContextTokens.
inline constexpr double kKvUsageHeldMax = 0.999;
// Floor of the KV a finishing request frees when derived from the load (one
// block of vLLM's default size), so that h stays > 0 and falls with F.
inline constexpr double kKvContextMinTokens = 16;
// Cap on the share of engine time lost to preemption recompute (stretch <= 4).
inline constexpr double kPreemptBusyMax = 0.75;

// Priority classes of the queued-load breakdown: 0 urgent (priority < 0),
// 1 normal (== 0, vLLM's default), 2 background (> 0).
inline constexpr size_t kPriorityClasses = 3;
inline constexpr size_t priority_class(int32_t priority) {
  return priority < 0 ? 0 : priority == 0 ? 1 : 2;
}
using PerPriorityClass = std::array<double, kPriorityClasses>;

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
  // Everything below has a default under which predict() is as without it.
  uint32_t engines = kDefaultEngines;   // data-parallel engines; counts above are their totals
  uint32_t long_prefill_threshold = 0;  // long_prefill_token_threshold (0 = off)
  double kv_free_tokens = -1;           // free KV blocks x block_size of one engine (-1 = unknown)
  double preemptions_per_s = 0;         // recent preemption rate, replica total
  bool priority_scheduling = false;     // --scheduling-policy priority
  bool adapter_resident = false;        // the request's LoRA adapter is running there
  uint32_t max_loras = 0;               // --max-loras (0 = unknown: unlimited)
  double loras_running = 0;             // adapters running on the engine
  double lora_load_s = kDefaultLoraLoadS;  // cost of loading an adapter that is not running
  double observed_itl_s = 0;  // the engine's recent mean inter-token latency (0 = unknown)
  // Breakdown of waiting / prefill_tokens_queued by priority_class(); read
  // only with priority_scheduling; what it does not cover counts as class 1.
  PerPriorityClass waiting_by_class{};
  PerPriorityClass prefill_tokens_by_class{};
};

struct RequestCost {
  uint32_t prompt_tokens = 0;
  uint32_t output_tokens = 0;  // also the KV growth the request needs
  int32_t priority = 0;        // vLLM priority: lower = more urgent
  bool adapter = false;        // names a LoRA adapter
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
