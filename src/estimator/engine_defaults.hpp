// Defaults and sane ranges of the vLLM engine parameters the estimator uses.
// Shared by prediction (what to assume when a value is unknown or garbage)
// and calibration (its prior, and where it clamps a fit).
#pragma once

#include <cstdint>

namespace tr::estimator {

// vLLM V1 defaults when the replica's config does not say.
inline constexpr uint32_t kDefaultBudgetTokens = 2048;  // max_num_batched_tokens
inline constexpr uint32_t kDefaultMaxNumSeqs = 256;     // max_num_seqs
// vllm serve's defaults on larger GPUs (H100/H200/MI300 class): assumed once a
// replica is seen running more than kDefaultMaxNumSeqs requests at once.
inline constexpr uint32_t kLargeGpuBudgetTokens = 8192;
inline constexpr uint32_t kLargeGpuMaxNumSeqs = 1024;
// Data-parallel engines behind one URL (--data-parallel-size): 1 when unknown,
// clamped to kEnginesMax.
inline constexpr uint32_t kDefaultEngines = 1;
inline constexpr uint32_t kEnginesMax = 1024;
// Loading a LoRA adapter that is not among the running ones (from the CPU
// cache or disk into a GPU slot): an assumed cost when the caller has no
// measurement; a caller's value is clamped to kLoraLoadMaxS.
inline constexpr double kDefaultLoraLoadS = 0.05;
inline constexpr double kLoraLoadMaxS = 10.0;

// Step time model: step_time_s(tokens) = step_base_s + step_per_token_s * tokens.
// Prior for an uncalibrated replica (a mid-size model on one datacenter GPU).
inline constexpr double kDefaultStepBaseS = 0.015;      // 15 ms fixed cost per step
inline constexpr double kDefaultStepPerTokenS = 40e-6;  // 40 us per token in the step

// Sane ranges. A calibrated value is clamped into them; prediction replaces a
// negative or NaN value by the default and clamps a huge one to the maximum.
inline constexpr double kStepBaseMinS = 0.5e-3;
inline constexpr double kStepBaseMaxS = 2.0;
inline constexpr double kStepPerTokenMinS = 0.1e-6;
inline constexpr double kStepPerTokenMaxS = 10e-3;

static_assert(kStepBaseMinS <= kDefaultStepBaseS && kDefaultStepBaseS <= kStepBaseMaxS);
static_assert(kStepPerTokenMinS <= kDefaultStepPerTokenS &&
              kDefaultStepPerTokenS <= kStepPerTokenMaxS);

}  // namespace tr::estimator
