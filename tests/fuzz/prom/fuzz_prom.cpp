// libFuzzer target: the Prometheus text parser (src/poller/prom.hpp) and the
// vLLM metrics reader on top of it (src/poller/vllm_metrics.hpp). The input is
// a /metrics body as a replica would send it.
//
// Checks, beyond the sanitizers:
//  - parse_prometheus returns views into the text: names start with a name
//    character, labels_raw lies inside its line, every label of a sample can
//    be walked with next_label and label() finds the first of each name;
//  - prom_unescape never grows a value, succeeds with a buffer of exactly the
//    unescaped size and fails with one byte less;
//  - parse_prometheus agrees, line by line, with parse_prom_line, and counts
//    every line that is not a sample, blank or comment as malformed;
//  - parse_vllm_metrics agrees with a plain re-implementation of its contract
//    (sums, means, engines, cache_config_info) built on parse_prometheus, and
//    replaces *out whatever it held.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "../common.hpp"
#include "poller/prom.hpp"
#include "poller/vllm_metrics.hpp"

namespace {

using tr::poller::PromLabel;
using tr::poller::PromLine;
using tr::poller::PromSample;

bool name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}

bool same_double(double a, double b) {
  return std::memcmp(&a, &b, sizeof a) == 0 || (std::isnan(a) && std::isnan(b));
}

void check_unescape(std::string_view escaped) {
  std::vector<char> big(escaped.size() + 1);
  std::string_view out;
  FUZZ_CHECK(tr::poller::prom_unescape(escaped, big.data(), big.size(), &out));
  FUZZ_CHECK(out.size() <= escaped.size());
  if (std::memchr(escaped.data(), '\\', escaped.size()) == nullptr) {
    FUZZ_CHECK(out.data() == escaped.data());  // no escapes: the text itself
    return;
  }
  std::string result(out);
  std::vector<char> exact(result.size() + 1);
  std::string_view again;
  FUZZ_CHECK(tr::poller::prom_unescape(escaped, exact.data(), result.size(), &again));
  FUZZ_CHECK(again == result);
  if (!result.empty()) {
    FUZZ_CHECK(!tr::poller::prom_unescape(escaped, exact.data(), result.size() - 1, &again));
    FUZZ_CHECK(again.empty());
  }
}

void check_sample(const PromSample& s, std::string_view text) {
  FUZZ_CHECK(!s.name.empty());
  FUZZ_CHECK(name_start(s.name.front()));
  FUZZ_CHECK(trfuzz::view_inside(s.name, text.data(), text.size()));
  FUZZ_CHECK(trfuzz::view_inside(s.labels_raw, text.data(), text.size()));
  if (!s.labels_raw.empty()) FUZZ_CHECK(s.labels_raw.data() > s.name.data());
  size_t pos = 0;
  PromLabel l;
  std::vector<PromLabel> labels;
  while (s.next_label(&pos, &l)) {
    FUZZ_CHECK(pos <= s.labels_raw.size());
    FUZZ_CHECK(!l.name.empty());
    FUZZ_CHECK(trfuzz::view_inside(l.name, s.labels_raw.data(), s.labels_raw.size()));
    FUZZ_CHECK(trfuzz::view_inside(l.value, s.labels_raw.data(), s.labels_raw.size()));
    check_unescape(l.value);
    labels.push_back(l);
    FUZZ_CHECK(labels.size() <= s.labels_raw.size());  // each label takes bytes
  }
  FUZZ_CHECK(pos == s.labels_raw.size());
  for (size_t i = 0; i < labels.size(); ++i) {
    bool first = true;
    for (size_t j = 0; j < i; ++j)
      first = first && labels[j].name != labels[i].name;
    if (first) FUZZ_CHECK(s.label(labels[i].name).data() == labels[i].value.data());
  }
}

// Each line by itself, as parse_prom_line sees it; returns the samples the
// whole-text parse must report, in order, and the malformed lines.
size_t line_by_line(std::string_view text, std::vector<PromSample>* samples) {
  size_t malformed = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t nl = text.find('\n', i);
    bool terminated = nl != std::string_view::npos;
    std::string_view line = text.substr(i, (terminated ? nl : text.size()) - i);
    i = terminated ? nl + 1 : text.size();
    PromSample s;
    PromLine k = tr::poller::parse_prom_line(line, &s);
    if (k == PromLine::skip) continue;
    if (k == PromLine::malformed || !terminated) {
      ++malformed;
      continue;
    }
    samples->push_back(s);
  }
  return malformed;
}

// parse_vllm_metrics' contract, written the plain way.
tr::EngineMetrics reference_vllm(std::string_view text) {
  struct Family {
    std::string_view name;
    double sum = 0;
    uint32_t n = 0;
  };
  std::vector<Family> f = {
      {"vllm:num_requests_running"},
      {"vllm:num_requests_waiting"},
      {"vllm:kv_cache_usage_perc"},
      {"vllm:gpu_cache_usage_perc"},
      {"vllm:prefix_cache_queries_total"},
      {"vllm:prefix_cache_hits_total"},
      {"vllm:prompt_tokens_total"},
      {"vllm:generation_tokens_total"},
      {"vllm:num_preemptions_total"},
      {"vllm:request_success_total"},
      {"vllm:time_to_first_token_seconds_sum"},
      {"vllm:time_to_first_token_seconds_count"},
      {"vllm:inter_token_latency_seconds_sum"},
      {"vllm:inter_token_latency_seconds_count"},
      {"vllm:time_per_output_token_seconds_sum"},
      {"vllm:time_per_output_token_seconds_count"},
      {"vllm:e2e_request_latency_seconds_sum"},
      {"vllm:e2e_request_latency_seconds_count"},
      {"vllm:iteration_tokens_total_sum"},
      {"vllm:iteration_tokens_total_count"},
  };
  tr::EngineMetrics m;
  std::set<std::string_view> engines;
  uint64_t block_size = 0;
  tr::poller::parse_prometheus_if(
      text,
      [&m](std::string_view name) {
        if (name.substr(0, 5) == "vllm:") m.any_vllm = true;
        return true;
      },
      [&](const PromSample& s) {
        bool cache_config = s.name == "vllm:cache_config_info";
        Family* fam = nullptr;
        for (Family& x : f) {
          if (x.name == s.name) fam = &x;
        }
        if (!cache_config && fam == nullptr) return;
        std::string_view e = s.label("engine");
        if (!e.empty()) engines.insert(e);
        if (cache_config) {
          auto count = [](std::string_view v, uint64_t* out) {
            if (v.empty()) return false;
            uint64_t n = 0;
            for (char c : v) {
              if (c < '0' || c > '9') return false;
              if (n > (UINT64_MAX - static_cast<uint64_t>(c - '0')) / 10) return false;
              n = n * 10 + static_cast<uint64_t>(c - '0');
            }
            *out = n;
            return true;
          };
          uint64_t v = 0;
          if (block_size == 0 && count(s.label("block_size"), &v)) block_size = v;
          if (m.num_gpu_blocks == 0 && count(s.label("num_gpu_blocks"), &v)) m.num_gpu_blocks = v;
          return;
        }
        if (!std::isfinite(s.value)) return;
        fam->sum += s.value;
        fam->n += 1;
      });
  auto total = [&f](size_t i) { return f[i].n != 0 ? f[i].sum : -1.0; };
  auto mean = [&f](size_t i) { return f[i].n != 0 ? f[i].sum / f[i].n : -1.0; };
  auto hist = [&f](size_t i, tr::HistogramTotals* h) {
    if (f[i].n == 0 && f[i + 1].n == 0) return false;
    *h = tr::HistogramTotals{f[i].sum, f[i + 1].sum, true};
    return true;
  };
  m.engines = static_cast<uint32_t>(std::min(engines.size(), tr::poller::kVllmEnginesMax));
  m.running = total(0);
  m.waiting = total(1);
  m.kv_usage = f[2].n != 0 ? mean(2) : mean(3);
  m.prefix_queries = total(4);
  m.prefix_hits = total(5);
  m.prompt_tokens = total(6);
  m.generation_tokens = total(7);
  m.preemptions = total(8);
  m.requests_finished = total(9);
  hist(10, &m.ttft);
  if (!hist(12, &m.itl)) hist(14, &m.itl);
  hist(16, &m.e2e);
  hist(18, &m.iteration_tokens);
  m.block_size = block_size <= UINT32_MAX ? static_cast<uint32_t>(block_size) : 0;
  return m;
}

void check_same(const tr::EngineMetrics& a, const tr::EngineMetrics& b) {
  FUZZ_CHECK(a.any_vllm == b.any_vllm);
  FUZZ_CHECK(a.engines == b.engines);
  FUZZ_CHECK(same_double(a.running, b.running));
  FUZZ_CHECK(same_double(a.waiting, b.waiting));
  FUZZ_CHECK(same_double(a.kv_usage, b.kv_usage));
  FUZZ_CHECK(same_double(a.prefix_queries, b.prefix_queries));
  FUZZ_CHECK(same_double(a.prefix_hits, b.prefix_hits));
  FUZZ_CHECK(same_double(a.prompt_tokens, b.prompt_tokens));
  FUZZ_CHECK(same_double(a.generation_tokens, b.generation_tokens));
  FUZZ_CHECK(same_double(a.preemptions, b.preemptions));
  FUZZ_CHECK(same_double(a.requests_finished, b.requests_finished));
  const tr::HistogramTotals* ha[] = {&a.ttft, &a.itl, &a.e2e, &a.iteration_tokens};
  const tr::HistogramTotals* hb[] = {&b.ttft, &b.itl, &b.e2e, &b.iteration_tokens};
  for (size_t i = 0; i < 4; ++i) {
    FUZZ_CHECK(ha[i]->present == hb[i]->present);
    FUZZ_CHECK(same_double(ha[i]->sum, hb[i]->sum));
    FUZZ_CHECK(same_double(ha[i]->count, hb[i]->count));
  }
  FUZZ_CHECK(a.block_size == b.block_size);
  FUZZ_CHECK(a.num_gpu_blocks == b.num_gpu_blocks);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);

  std::vector<PromSample> samples;
  size_t malformed = tr::poller::parse_prometheus(text, [&](const PromSample& s) {
    check_sample(s, text);
    samples.push_back(s);
  });
  std::vector<PromSample> expected;
  size_t expected_malformed = line_by_line(text, &expected);
  FUZZ_CHECK(malformed == expected_malformed);
  FUZZ_CHECK(samples.size() == expected.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    FUZZ_CHECK(samples[i].name.data() == expected[i].name.data());
    FUZZ_CHECK(samples[i].name.size() == expected[i].name.size());
    FUZZ_CHECK(samples[i].labels_raw.data() == expected[i].labels_raw.data() ||
               samples[i].labels_raw.empty());
    FUZZ_CHECK(samples[i].labels_raw.size() == expected[i].labels_raw.size());
    FUZZ_CHECK(same_double(samples[i].value, expected[i].value));
    FUZZ_CHECK(samples[i].has_timestamp == expected[i].has_timestamp);
    if (samples[i].has_timestamp) FUZZ_CHECK(samples[i].timestamp_ms == expected[i].timestamp_ms);
  }

  // A filter that rejects everything still counts the lines with no name.
  size_t nameless = tr::poller::parse_prometheus_if(
      text, [](std::string_view) { return false; }, [](const PromSample&) { FUZZ_CHECK(false); });
  FUZZ_CHECK(nameless <= malformed);

  tr::EngineMetrics m;
  bool any = tr::poller::parse_vllm_metrics(text, &m);
  FUZZ_CHECK(any == m.any_vllm);
  FUZZ_CHECK(m.engines <= tr::poller::kVllmEnginesMax);
  FUZZ_CHECK(m.malformed_lines <= malformed);
  check_same(m, reference_vllm(text));

  // *out is replaced, not merged into.
  tr::EngineMetrics dirty;
  dirty.any_vllm = true;
  dirty.engines = 7;
  dirty.running = dirty.waiting = dirty.kv_usage = 123;
  dirty.ttft = tr::HistogramTotals{1, 2, true};
  dirty.block_size = 16;
  dirty.num_gpu_blocks = 99;
  dirty.malformed_lines = 5;
  tr::poller::parse_vllm_metrics(text, &dirty);
  check_same(m, dirty);
  FUZZ_CHECK(m.malformed_lines == dirty.malformed_lines);
  return 0;
}
