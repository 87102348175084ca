// Token estimation: how many prompt tokens a request body is, and how many
// output tokens it will generate, learned per model from what responses say.
//
// One ModelLearner per worker thread (no sharing, no locks). Storage is fixed
// at construction: up to kModelsMax models, first come first served, each name
// at most kModelNameBytesMax bytes. Models beyond that, longer names, the empty
// name and models not observed yet share one entry, which also learns from
// every observation of every model (it is the mix of the traffic). Lookups
// compare the name in place (string_view): no allocation, ever.
//
// Chars per token (prompt size)
// -----------------------------
// Learned as a ratio of decayed running sums over observations (chars, tokens)
// of prompt text, with a prior of kDefaultCharsPerToken worth
// kCharsPerTokenPriorTokens tokens:
//   chars_sum  = decay * chars_sum  + s * chars        decay = kCharsPerTokenDecay
//   tokens_sum = decay * tokens_sum + s * tokens       s = min(1, kObservationTokensMax / tokens)
//   chars_per_token = clamp((chars_sum + prior_chars) / (tokens_sum + prior_tokens), 1, 12)
// An observation weighs by its size (a long prompt says more about the
// tokenizer than a short one) but never more than kObservationTokensMax, so
// one huge prompt cannot erase the history. The text's tokens of a chat
// request are usage.prompt_tokens minus kMessageOverheadTokens per message
// (the chat template). Observations whose ratio is outside
// [kObservedCharsPerTokenMin, kObservedCharsPerTokenMax] are ignored (images,
// token-id prompts, mismatched windows).
//
//   prompt_tokens(f) = prompt_token_ids + ceil(prompt_chars / chars_per_token)
//                      + kMessageOverheadTokens * messages,  at least 1
//
// Prompts of mixed text (prose, code, CJK)
// ----------------------------------------
// One ratio cannot fit a model's traffic when prompts differ in kind: a BPE
// tokenizer cuts English prose at ~4 characters per token, code at ~2.5
// (punctuation), CJK at ~1-1.5. When the facts split the characters into
// classes (narrow: the rest; symbol: ASCII punctuation, tab, newline; wide:
// 3- and 4-byte UTF-8), prompt tokens are
//   text_tokens = w_narrow * narrow + w_symbol * symbols + w_wide * wide
// with per-model tokens-per-character weights (priors kClassPrior), learned
// from usage by an exponentiated-gradient step: with P the prediction and T
// the text's real tokens, each class's weight is multiplied by
// (T / P)^(kClassRate * min(1, T / kClassFullTokens) * share), share = its part
// of P; clamped to [kClassWeightMin, kClassWeightMax]. One class alone
// converges geometrically to its ratio; varying mixes separate the classes.
// Facts without the split (token-id prompts, tests) use the single ratio.
//
// Output tokens
// -------------
// A per-model mean of natural output lengths (EWMA, alpha kOutputAlpha after a
// warm-up where it is the plain mean including the prior kDefaultOutputTokens
// as one observation). A request that hit its max_tokens cap is a censored
// observation (its natural length is at least the cap): it moves the mean up
// to the cap when the cap is above the mean, and says nothing otherwise.
//
// The distribution, too: a decayed histogram of the observed lengths in
// power-of-two buckets (1, 2-3, 4-7, ... ; kOutputBuckets of them), each with
// its decayed mass and token sum (so its mean), decay kOutputHistDecay per
// observation (memory ~100). A censored observation is recorded at its cap (a
// lower bound: it under-counts lengths for larger caps, never for smaller).
// When max_tokens is only a cap, what the request will generate is
// E[min(X, cap)], not min(cap, E[X]): a model whose answers are 10 or 1,000
// tokens, asked with max_tokens 100, generates 55 on average, not 100.
//
//   output_tokens(f) = mean                                   no max_tokens
//                    = sum_b m_b * min(mean_b, cap) / sum_b m_b  with a cap, once
//                                      sum_b m_b >= kOutputHistWarm
//                    = min(cap, mean)                          with a cap, before
//   at least 1, at most the cap.
//
// Why not EWMA(completion / max_tokens) * max_tokens: clients of one model mix
// (a classifier with max_tokens 16 that always hits it, a chat UI with 4096
// that stops at 300), and a shared ratio mispredicts both; the natural length
// distribution cut at each request's cap is right for both.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tokenrelay/request_facts.hpp"

namespace tr::estimator {

inline constexpr size_t kModelsMax = 64;
inline constexpr size_t kModelNameBytesMax = 256;

inline constexpr double kDefaultCharsPerToken = 4.0;
inline constexpr double kCharsPerTokenMin = 1.0;
inline constexpr double kCharsPerTokenMax = 12.0;
inline constexpr double kCharsPerTokenPriorTokens = 64;  // prior's weight
inline constexpr double kCharsPerTokenDecay = 0.98;      // per observation: memory ~50
inline constexpr double kObservationTokensMax = 8192;    // one observation's weight cap
inline constexpr double kObservedCharsPerTokenMin = 0.5;
inline constexpr double kObservedCharsPerTokenMax = 24.0;
inline constexpr uint32_t kMessageOverheadTokens = 4;  // chat template, per message

inline constexpr double kClassPrior[3] = {0.25, 0.4, 0.67};  // narrow, symbol, wide
inline constexpr double kClassRate = 0.3;
inline constexpr double kClassFullTokens = 256;
inline constexpr double kClassWeightMin = 1.0 / 16;
inline constexpr double kClassWeightMax = 4.0;

inline constexpr double kDefaultOutputTokens = 256;
inline constexpr double kOutputAlpha = 0.05;  // EWMA weight once warm (memory ~20)
inline constexpr size_t kOutputBuckets = 18;  // [2^k, 2^(k+1)); the last is open
inline constexpr double kOutputHistDecay = 0.99;
inline constexpr double kOutputHistWarm = 8;  // mass before the histogram is used

static_assert(kCharsPerTokenMin <= kDefaultCharsPerToken &&
              kDefaultCharsPerToken <= kCharsPerTokenMax);
static_assert(kCharsPerTokenDecay > 0 && kCharsPerTokenDecay < 1);
static_assert(kOutputAlpha > 0 && kOutputAlpha < 1);

class ModelLearner {
 public:
  ModelLearner() = default;

  // Estimated prompt tokens of a request (formula above), from its model's
  // entry. Saturates at UINT32_MAX; at least 1.
  uint32_t prompt_tokens(const RequestFacts& f) const;

  // Estimated output tokens of a request (formula above); at least 1 and at
  // most max_tokens when that is positive.
  uint32_t output_tokens(const RequestFacts& f) const;

  // A response's usage: <prompt_chars> and <messages> as the request's facts
  // counted them, <prompt_tokens> from usage.prompt_tokens. Ignored when the
  // chars or the text's tokens are 0 or their ratio is implausible.
  void observe_usage(std::string_view model, uint64_t prompt_chars, uint32_t messages,
                     uint64_t prompt_tokens);
  // The same for a request's facts, also learning the per-class weights.
  void observe_usage(const RequestFacts& f, uint64_t prompt_tokens);

  // A request that finished normally (not aborted): <completion_tokens> as
  // counted from the relayed events or usage, <max_tokens> as requested (-1 or
  // 0: none). completion_tokens == 0 is ignored.
  void observe_finished(std::string_view model, uint32_t completion_tokens, int64_t max_tokens);

  // Counter deltas over one scrape window of a replica serving <model>: the
  // prompt chars sent to it (by all workers) and vllm:prompt_tokens_total's
  // delta. Both must cover the same traffic. Treated like one usage
  // observation without messages (the template overhead is not separated,
  // which biases chars/token down by a few percent). Negative, NaN or zero
  // deltas (a counter reset, an idle window) are ignored.
  void observe_prompt_totals(std::string_view model, double chars_sent_delta,
                             double prompt_tokens_delta);

  // The current estimates for <model> (the shared entry's when it has none).
  double chars_per_token(std::string_view model) const;
  double output_mean_tokens(std::string_view model) const;
  // E[min(X, cap)] over the learned distribution of <model>'s lengths X; -1
  // before kOutputHistWarm observations.
  double expected_output_tokens(std::string_view model, double cap) const;

  // Models with an entry of their own (<= kModelsMax).
  size_t models() const { return used_; }

 private:
  struct Entry {
    double chars_sum = 0;   // decayed
    double tokens_sum = 0;  // decayed
    double chars_per_token = kDefaultCharsPerToken;
    double output_mean_tokens = kDefaultOutputTokens;
    uint32_t outputs = 0;  // observations taken into the mean (saturating)
    std::array<double, kOutputBuckets> hist_mass{};    // decayed observations per bucket
    std::array<double, kOutputBuckets> hist_tokens{};  // ... and their decayed token sum
    double hist_total = 0;                             // sum of hist_mass
    std::array<double, 3> class_weight{kClassPrior[0], kClassPrior[1], kClassPrior[2]};
    uint32_t name_bytes = 0;
    std::array<char, kModelNameBytesMax> name{};
  };

  // The model's entry, or the shared one.
  const Entry& find(std::string_view model) const;
  // The model's entry, created when there is room; nullptr when the model
  // must use the shared entry.
  Entry* find_or_add(std::string_view model);
  void learn_prompt(std::string_view model, double chars, double tokens);
  static void learn_prompt(Entry* e, double chars, double tokens);
  static void learn_output(Entry* e, double tokens, bool capped);
  static void learn_classes(Entry* e, const std::array<double, 3>& n, double tokens);
  static std::array<double, 3> classes_of(const RequestFacts& f);

  std::array<Entry, kModelsMax> entries_;
  Entry shared_;
  size_t used_ = 0;
};

}  // namespace tr::estimator
