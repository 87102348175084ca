#include "estimator/tokens.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace tr::estimator {

namespace {

uint32_t saturate_u32(double x) {
  constexpr double kMax = std::numeric_limits<uint32_t>::max();
  if (!(x > 1)) return 1;  // also NaN
  return x >= kMax ? std::numeric_limits<uint32_t>::max() : static_cast<uint32_t>(x);
}

}  // namespace

const ModelLearner::Entry& ModelLearner::find(std::string_view model) const {
  for (size_t i = 0; i < used_; ++i) {
    const Entry& e = entries_[i];
    if (e.name_bytes == model.size() && std::memcmp(e.name.data(), model.data(), model.size()) == 0)
      return e;
  }
  return shared_;
}

ModelLearner::Entry* ModelLearner::find_or_add(std::string_view model) {
  if (model.empty() || model.size() > kModelNameBytesMax) return nullptr;
  const Entry& found = find(model);
  if (&found != &shared_) return const_cast<Entry*>(&found);
  if (used_ == kModelsMax) return nullptr;
  Entry& e = entries_[used_++];
  e = Entry{};
  std::memcpy(e.name.data(), model.data(), model.size());
  e.name_bytes = static_cast<uint32_t>(model.size());
  return &e;
}

void ModelLearner::learn_prompt(Entry* e, double chars, double tokens) {
  const double s = std::min(1.0, kObservationTokensMax / tokens);
  e->chars_sum = kCharsPerTokenDecay * e->chars_sum + s * chars;
  e->tokens_sum = kCharsPerTokenDecay * e->tokens_sum + s * tokens;
  const double cpt = (e->chars_sum + kDefaultCharsPerToken * kCharsPerTokenPriorTokens) /
                     (e->tokens_sum + kCharsPerTokenPriorTokens);
  e->chars_per_token = std::clamp(cpt, kCharsPerTokenMin, kCharsPerTokenMax);
}

void ModelLearner::learn_prompt(std::string_view model, double chars, double tokens) {
  if (!(chars > 0) || !(tokens >= 1)) return;  // also NaN
  const double ratio = chars / tokens;
  if (!(ratio >= kObservedCharsPerTokenMin && ratio <= kObservedCharsPerTokenMax)) return;
  if (Entry* e = find_or_add(model)) learn_prompt(e, chars, tokens);
  learn_prompt(&shared_, chars, tokens);
}

namespace {
size_t output_bucket(double tokens) {
  size_t b = 0;
  for (double bound = 2; b + 1 < kOutputBuckets && tokens >= bound; bound *= 2)
    ++b;
  return b;
}
}  // namespace

void ModelLearner::learn_output(Entry* e, double tokens, bool capped) {
  // The distribution (a censored length is recorded at its cap: a lower bound).
  for (size_t b = 0; b < kOutputBuckets; ++b) {
    e->hist_mass[b] *= kOutputHistDecay;
    e->hist_tokens[b] *= kOutputHistDecay;
  }
  size_t b = output_bucket(tokens);
  e->hist_mass[b] += 1;
  e->hist_tokens[b] += tokens;
  e->hist_total = e->hist_total * kOutputHistDecay + 1;
  // Censored: the natural length is at least <tokens>; news only if above the mean.
  if (capped && tokens <= e->output_mean_tokens) return;
  const double alpha = std::max(kOutputAlpha, 1.0 / (static_cast<double>(e->outputs) + 2));
  e->output_mean_tokens += alpha * (tokens - e->output_mean_tokens);
  if (e->outputs < std::numeric_limits<uint32_t>::max()) ++e->outputs;
}

std::array<double, 3> ModelLearner::classes_of(const RequestFacts& f) {
  double wide = static_cast<double>(f.prompt_wide_chars);
  double symbols = static_cast<double>(f.prompt_symbol_chars);
  double narrow = std::max(0.0, static_cast<double>(f.prompt_chars) - wide - symbols);
  return {narrow, symbols, wide};
}

void ModelLearner::learn_classes(Entry* e, const std::array<double, 3>& n, double tokens) {
  double p = 0;
  for (size_t k = 0; k < 3; ++k)
    p += e->class_weight[k] * n[k];
  if (!(p > 0) || !(tokens >= 1)) return;
  const double r = std::clamp(tokens / p, 1.0 / 8, 8.0);
  const double rate = kClassRate * std::min(1.0, tokens / kClassFullTokens);
  for (size_t k = 0; k < 3; ++k) {
    if (n[k] <= 0) continue;
    double share = e->class_weight[k] * n[k] / p;
    e->class_weight[k] = std::clamp(e->class_weight[k] * std::pow(r, rate * share), kClassWeightMin,
                                    kClassWeightMax);
  }
}

uint32_t ModelLearner::prompt_tokens(const RequestFacts& f) const {
  double tokens = static_cast<double>(f.prompt_token_ids) +
                  static_cast<double>(kMessageOverheadTokens) * f.messages;
  if (f.prompt_wide_chars + f.prompt_symbol_chars > 0) {
    const Entry& e = find(f.model);
    std::array<double, 3> n = classes_of(f);
    double text = 0;
    for (size_t k = 0; k < 3; ++k)
      text += e.class_weight[k] * n[k];
    tokens += std::ceil(text);
  } else if (f.prompt_chars > 0) {
    tokens += std::ceil(static_cast<double>(f.prompt_chars) / find(f.model).chars_per_token);
  }
  return saturate_u32(tokens);
}

uint32_t ModelLearner::output_tokens(const RequestFacts& f) const {
  double mean = find(f.model).output_mean_tokens;
  if (f.max_tokens > 0) {
    double cap = static_cast<double>(f.max_tokens);
    double e = expected_output_tokens(f.model, cap);
    mean = e >= 0 ? std::min(e, cap) : std::min(mean, cap);
  }
  return saturate_u32(std::round(mean));
}

double ModelLearner::expected_output_tokens(std::string_view model, double cap) const {
  const Entry& e = find(model);
  if (e.hist_total < kOutputHistWarm) return -1;
  double mass = 0;
  double sum = 0;
  for (size_t b = 0; b < kOutputBuckets; ++b) {
    if (e.hist_mass[b] <= 0) continue;
    mass += e.hist_mass[b];
    sum += e.hist_mass[b] * std::min(e.hist_tokens[b] / e.hist_mass[b], cap);
  }
  return mass > 0 ? sum / mass : -1;
}

void ModelLearner::observe_usage(std::string_view model, uint64_t prompt_chars, uint32_t messages,
                                 uint64_t prompt_tokens) {
  const double overhead = static_cast<double>(kMessageOverheadTokens) * messages;
  learn_prompt(model, static_cast<double>(prompt_chars),
               static_cast<double>(prompt_tokens) - overhead);
}

void ModelLearner::observe_usage(const RequestFacts& f, uint64_t prompt_tokens) {
  observe_usage(f.model, f.prompt_chars, f.messages, prompt_tokens);
  if (f.prompt_wide_chars + f.prompt_symbol_chars == 0 || f.prompt_chars == 0) return;
  const double text = static_cast<double>(prompt_tokens) -
                      static_cast<double>(kMessageOverheadTokens) * f.messages -
                      static_cast<double>(f.prompt_token_ids);
  const double ratio = static_cast<double>(f.prompt_chars) / text;
  if (!(ratio >= kObservedCharsPerTokenMin && ratio <= kObservedCharsPerTokenMax)) return;
  std::array<double, 3> n = classes_of(f);
  if (Entry* e = find_or_add(f.model)) learn_classes(e, n, text);
  learn_classes(&shared_, n, text);
}

void ModelLearner::observe_prompt_totals(std::string_view model, double chars_sent_delta,
                                         double prompt_tokens_delta) {
  learn_prompt(model, chars_sent_delta, prompt_tokens_delta);
}

void ModelLearner::observe_finished(std::string_view model, uint32_t completion_tokens,
                                    int64_t max_tokens) {
  if (completion_tokens == 0) return;
  const bool capped = max_tokens > 0 && static_cast<int64_t>(completion_tokens) >= max_tokens;
  const double tokens = completion_tokens;
  if (Entry* e = find_or_add(model)) learn_output(e, tokens, capped);
  learn_output(&shared_, tokens, capped);
}

double ModelLearner::chars_per_token(std::string_view model) const {
  return find(model).chars_per_token;
}

double ModelLearner::output_mean_tokens(std::string_view model) const {
  return find(model).output_mean_tokens;
}

}  // namespace tr::estimator
