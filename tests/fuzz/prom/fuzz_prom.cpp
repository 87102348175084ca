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
//    (sums, means, engines, cache_config_info, the per-engine breakdown, the
//    iteration-token buckets, lora_requests_info) built on parse_prometheus,
//    and replaces *out whatever it held;
//  - prom_parse_value reads a label value as parse_prom_line reads a sample
//    value.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <string_view>
#include <utility>
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
const char* const kFamilies[] = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:num_preemptions_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:inter_token_latency_seconds_sum",
    "vllm:inter_token_latency_seconds_count",
    "vllm:time_per_output_token_seconds_sum",
    "vllm:time_per_output_token_seconds_count",
    "vllm:e2e_request_latency_seconds_sum",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:iteration_tokens_total_sum",
    "vllm:iteration_tokens_total_count",
    // Read since the per-engine breakdown: their labels do not count in `engines`.
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_queue_time_seconds_count",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:request_prefill_time_seconds_count",
    "vllm:request_decode_time_seconds_sum",
    "vllm:request_decode_time_seconds_count",
    "vllm:request_inference_time_seconds_sum",
    "vllm:request_inference_time_seconds_count",
};
constexpr size_t kFamilyCount = sizeof(kFamilies) / sizeof(kFamilies[0]);
constexpr size_t kFirstNewFamily = 20;

bool plain_count(std::string_view v, uint64_t* out) {
  if (v.empty()) return false;
  uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    if (n > (UINT64_MAX - static_cast<uint64_t>(c - '0')) / 10) return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = n;
  return true;
}

int32_t plain_index(std::string_view v) {
  uint64_t n = 0;
  return plain_count(v, &n) && n <= INT32_MAX ? static_cast<int32_t>(n) : -1;
}

struct RefLora {
  bool any = false;
  double value = 0;
  std::string_view max_lora, running, waiting;
};

// One group of samples (all of them, or one engine's).
struct RefGroup {
  double sum[kFamilyCount] = {};
  uint32_t n[kFamilyCount] = {};
  uint64_t block_size = 0;
  uint64_t num_gpu_blocks = 0;
  std::vector<std::pair<double, double>> buckets;  // (le, cumulative), first seen first
  bool buckets_truncated = false;
  bool any_finite = false;
  double top_le = 0;
  bool has_inf = false;
  double inf = 0;
  RefLora lora;

  double total(size_t i) const { return n[i] != 0 ? sum[i] : -1.0; }
  double mean(size_t i) const { return n[i] != 0 ? sum[i] / n[i] : -1.0; }
  bool hist(size_t i, tr::HistogramTotals* h) const {
    if (n[i] == 0 && n[i + 1] == 0) return false;
    *h = tr::HistogramTotals{sum[i], sum[i + 1], true};
    return true;
  }

  template <class Out>
  void fill(Out* m) const {
    m->running = total(0);
    m->waiting = total(1);
    m->kv_usage = n[2] != 0 ? mean(2) : mean(3);
    m->prefix_queries = total(4);
    m->prefix_hits = total(5);
    m->prompt_tokens = total(6);
    m->generation_tokens = total(7);
    m->preemptions = total(8);
    m->requests_finished = total(9);
    hist(10, &m->ttft);
    if (!hist(12, &m->itl)) hist(14, &m->itl);
    hist(16, &m->e2e);
    hist(18, &m->iteration_tokens);
    hist(20, &m->queue_time);
    hist(22, &m->prefill_time);
    hist(24, &m->decode_time);
    hist(26, &m->inference_time);
    m->block_size = block_size <= UINT32_MAX ? static_cast<uint32_t>(block_size) : 0;
    m->num_gpu_blocks = num_gpu_blocks;
    tr::TokenBuckets& b = m->iteration_buckets;
    std::vector<std::pair<double, double>> sorted = buckets;
    std::sort(sorted.begin(), sorted.end());
    b.size = static_cast<uint32_t>(sorted.size());
    for (size_t i = 0; i < sorted.size(); ++i) {
      b.le[i] = sorted[i].first;
      b.cumulative[i] = sorted[i].second;
    }
    b.truncated = buckets_truncated;
    b.inf_count = has_inf ? inf : -1;
    b.top_le = any_finite ? top_le : -1;
    if (!has_inf) {
      b.covering_le = -1;
    } else if (inf <= 0) {
      b.covering_le = 0;
    } else {
      b.covering_le = std::numeric_limits<double>::infinity();
      for (auto it = sorted.rbegin(); it != sorted.rend(); ++it) {
        if (it->second >= inf) b.covering_le = it->first;
      }
    }
  }
};

// Adds the names of <escaped> to <names> the plain way (see AdapterList).
void ref_append(std::string_view escaped, std::vector<std::string>* names, bool* truncated) {
  size_t joined = 0;
  for (const std::string& x : *names)
    joined += x.size() + (joined != 0 ? 1 : 0);
  size_t i = 0;
  while (!*truncated && i < escaped.size()) {
    size_t comma = escaped.find(',', i);
    if (comma == std::string_view::npos) comma = escaped.size();
    std::string_view piece = escaped.substr(i, comma - i);
    i = comma + 1;
    std::vector<char> buf(piece.size() + 1);
    std::string_view unescaped;
    FUZZ_CHECK(tr::poller::prom_unescape(piece, buf.data(), buf.size(), &unescaped));
    std::string name(unescaped);
    if (name.empty() || std::find(names->begin(), names->end(), name) != names->end()) continue;
    size_t need = name.size() + (joined != 0 ? 1 : 0);
    if (joined + need > tr::kLoraListBytesMax) {
      *truncated = true;
      break;
    }
    joined += need;
    names->push_back(name);
  }
}

struct RefLoraOut {
  bool present = false;
  int32_t max_lora = -1;
  double updated_s = -1;
  std::vector<std::string> running, waiting;
  bool running_truncated = false, waiting_truncated = false;

  void merge(const RefLora& l) {
    if (!l.any) return;
    max_lora = present ? std::max(max_lora, plain_index(l.max_lora)) : plain_index(l.max_lora);
    updated_s = present ? std::max(updated_s, l.value) : l.value;
    present = true;
    ref_append(l.running, &running, &running_truncated);
    ref_append(l.waiting, &waiting, &waiting_truncated);
  }
  void fill(tr::LoraInfo* out) const {
    out->present = present;
    out->max_lora = max_lora;
    out->updated_s = updated_s;
    auto join = [](const std::vector<std::string>& v, bool truncated, tr::AdapterList* a) {
      std::string s;
      for (const std::string& x : v)
        s += (s.empty() ? "" : ",") + x;
      FUZZ_CHECK(s.size() <= a->bytes.size());
      std::memcpy(a->bytes.data(), s.data(), s.size());
      a->size = static_cast<uint32_t>(s.size());
      a->truncated = truncated;
    };
    join(running, running_truncated, &out->running);
    join(waiting, waiting_truncated, &out->waiting);
  }
};

void ref_offer(RefLora* l, const PromSample& s) {
  if (!std::isfinite(s.value)) return;
  if (l->any && !(s.value > l->value)) return;
  *l = RefLora{true, s.value, s.label("max_lora"), s.label("running_lora_adapters"),
               s.label("waiting_lora_adapters")};
}

// Adds one sample of a family read (index into kFamilies, or -1 cache config,
// -2 bucket with its <le>, -3 lora info) to <g>.
void ref_add(RefGroup* g, long family, const PromSample& s, double le) {
  if (family == -1) {
    uint64_t v = 0;
    if (g->block_size == 0 && plain_count(s.label("block_size"), &v)) g->block_size = v;
    if (g->num_gpu_blocks == 0 && plain_count(s.label("num_gpu_blocks"), &v)) {
      g->num_gpu_blocks = v;
    }
    return;
  }
  if (family == -3) {
    ref_offer(&g->lora, s);
    return;
  }
  if (!std::isfinite(s.value)) return;
  if (family == -2) {
    if (std::isinf(le)) {
      g->has_inf = true;
      g->inf += s.value;
      return;
    }
    g->top_le = g->any_finite ? std::max(g->top_le, le) : le;
    g->any_finite = true;
    for (auto& b : g->buckets) {
      if (b.first == le) {
        b.second += s.value;
        return;
      }
    }
    if (g->buckets.size() == tr::kIterationBucketsMax) {
      g->buckets_truncated = true;
      return;
    }
    g->buckets.emplace_back(le, s.value);
    return;
  }
  g->sum[family] += s.value;
  g->n[family] += 1;
}

tr::EngineMetrics reference_vllm(std::string_view text) {
  tr::EngineMetrics m;
  std::set<std::string_view> engines;
  RefGroup all;
  std::vector<std::pair<std::string_view, RefGroup>> detail;  // first seen first
  bool detail_truncated = false;
  RefLora unlabelled;
  tr::poller::parse_prometheus_if(
      text,
      [&m](std::string_view name) {
        if (name.substr(0, 5) == "vllm:") m.any_vllm = true;
        return true;
      },
      [&](const PromSample& s) {
        long family = -100;
        for (size_t i = 0; i < kFamilyCount; ++i) {
          if (s.name == kFamilies[i]) family = static_cast<long>(i);
        }
        if (s.name == "vllm:cache_config_info") family = -1;
        if (s.name == "vllm:iteration_tokens_total_bucket") family = -2;
        if (s.name == "vllm:lora_requests_info") family = -3;
        if (family == -100) return;
        std::string_view e = s.label("engine");
        bool counted = family == -1 || (family >= 0 && family < static_cast<long>(kFirstNewFamily));
        if (counted && !e.empty()) engines.insert(e);
        double le = 0;
        if (family == -2) {
          std::string_view v = s.label("le");
          if (!tr::poller::prom_parse_value(v, &le) || !(le >= 0)) return;
        }
        if (family == -3 && e.empty()) {
          ref_offer(&unlabelled, s);
          return;
        }
        ref_add(&all, family, s, le);
        std::string_view key = e.empty() ? std::string_view("0") : e;
        RefGroup* g = nullptr;
        for (auto& d : detail) {
          if (d.first == key) g = &d.second;
        }
        if (g == nullptr && detail.size() < tr::kEngineDetailMax) {
          detail.emplace_back(key, RefGroup{});
          g = &detail.back().second;
        } else if (g == nullptr) {
          detail_truncated = true;
        }
        if (g != nullptr) ref_add(g, family, s, le);
      });
  if (unlabelled.any && detail.size() <= 1) {
    if (detail.empty()) detail.emplace_back("0", RefGroup{});
    if (!detail[0].second.lora.any) detail[0].second.lora = unlabelled;
  }
  m.engines = static_cast<uint32_t>(std::min(engines.size(), tr::poller::kVllmEnginesMax));
  all.fill(&m);
  m.engine_detail_count = static_cast<uint32_t>(detail.size());
  m.engine_detail_truncated = detail_truncated;
  RefLoraOut sum_lora;
  for (size_t i = 0; i < detail.size(); ++i) {
    tr::EngineDetail& d = m.engine_detail[i];
    std::string_view key = detail[i].first;
    size_t n = std::min(key.size(), d.engine.size());
    std::memcpy(d.engine.data(), key.data(), n);
    d.engine_size = static_cast<uint32_t>(n);
    d.index = plain_index(key);
    detail[i].second.fill(&d);
    RefLoraOut one;
    one.merge(detail[i].second.lora);
    one.fill(&d.lora);
    sum_lora.merge(detail[i].second.lora);
  }
  sum_lora.merge(unlabelled);
  sum_lora.fill(&m.lora);
  return m;
}

void check_same_histogram(const tr::HistogramTotals& a, const tr::HistogramTotals& b) {
  FUZZ_CHECK(a.present == b.present);
  FUZZ_CHECK(same_double(a.sum, b.sum));
  FUZZ_CHECK(same_double(a.count, b.count));
}

void check_same_buckets(const tr::TokenBuckets& a, const tr::TokenBuckets& b) {
  FUZZ_CHECK(a.size == b.size);
  FUZZ_CHECK(a.size <= tr::kIterationBucketsMax);
  for (uint32_t i = 0; i < a.size && i < tr::kIterationBucketsMax; ++i) {
    FUZZ_CHECK(same_double(a.le[i], b.le[i]));
    FUZZ_CHECK(same_double(a.cumulative[i], b.cumulative[i]));
  }
  FUZZ_CHECK(a.truncated == b.truncated);
  FUZZ_CHECK(same_double(a.inf_count, b.inf_count));
  FUZZ_CHECK(same_double(a.top_le, b.top_le));
  FUZZ_CHECK(same_double(a.covering_le, b.covering_le));
}

void check_same_lora(const tr::LoraInfo& a, const tr::LoraInfo& b) {
  FUZZ_CHECK(a.present == b.present);
  FUZZ_CHECK(a.max_lora == b.max_lora);
  FUZZ_CHECK(same_double(a.updated_s, b.updated_s));
  FUZZ_CHECK(a.running.size <= tr::kLoraListBytesMax);
  FUZZ_CHECK(a.waiting.size <= tr::kLoraListBytesMax);
  FUZZ_CHECK(a.running.view() == b.running.view());
  FUZZ_CHECK(a.running.truncated == b.running.truncated);
  FUZZ_CHECK(a.waiting.view() == b.waiting.view());
  FUZZ_CHECK(a.waiting.truncated == b.waiting.truncated);
}

// The fields EngineMetrics and EngineDetail share.
template <class M>
void check_same_common(const M& a, const M& b) {
  FUZZ_CHECK(same_double(a.running, b.running));
  FUZZ_CHECK(same_double(a.waiting, b.waiting));
  FUZZ_CHECK(same_double(a.kv_usage, b.kv_usage));
  FUZZ_CHECK(same_double(a.prefix_queries, b.prefix_queries));
  FUZZ_CHECK(same_double(a.prefix_hits, b.prefix_hits));
  FUZZ_CHECK(same_double(a.prompt_tokens, b.prompt_tokens));
  FUZZ_CHECK(same_double(a.generation_tokens, b.generation_tokens));
  FUZZ_CHECK(same_double(a.preemptions, b.preemptions));
  FUZZ_CHECK(same_double(a.requests_finished, b.requests_finished));
  for (auto h : {&M::ttft, &M::itl, &M::e2e, &M::iteration_tokens, &M::queue_time, &M::prefill_time,
                 &M::decode_time, &M::inference_time}) {
    check_same_histogram(a.*h, b.*h);
  }
  FUZZ_CHECK(a.block_size == b.block_size);
  FUZZ_CHECK(a.num_gpu_blocks == b.num_gpu_blocks);
  check_same_buckets(a.iteration_buckets, b.iteration_buckets);
  check_same_lora(a.lora, b.lora);
}

void check_same(const tr::EngineMetrics& a, const tr::EngineMetrics& b) {
  FUZZ_CHECK(a.any_vllm == b.any_vllm);
  FUZZ_CHECK(a.engines == b.engines);
  check_same_common(a, b);
  FUZZ_CHECK(a.engine_detail_count == b.engine_detail_count);
  FUZZ_CHECK(a.engine_detail_count <= tr::kEngineDetailMax);
  FUZZ_CHECK(a.engine_detail_truncated == b.engine_detail_truncated);
  for (uint32_t i = 0; i < a.engine_detail_count && i < tr::kEngineDetailMax; ++i) {
    const tr::EngineDetail& x = a.engine_detail[i];
    const tr::EngineDetail& y = b.engine_detail[i];
    FUZZ_CHECK(x.engine_label() == y.engine_label());
    FUZZ_CHECK(x.index == y.index);
    check_same_common(x, y);
  }
}

// prom_parse_value reads a label value (le) the way a sample value is read.
void check_parse_value(std::string_view v) {
  if (v.empty() || v.find_first_of(" \t\r\n{") != std::string_view::npos) return;
  double a = 0;
  bool ok = tr::poller::prom_parse_value(v, &a);
  PromSample s;
  std::string line = "m " + std::string(v);
  bool line_ok = tr::poller::parse_prom_line(line, &s) == PromLine::sample && !s.has_timestamp;
  FUZZ_CHECK(ok == line_ok);
  if (ok) FUZZ_CHECK(same_double(a, s.value));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);

  std::vector<PromSample> samples;
  size_t malformed = tr::poller::parse_prometheus(text, [&](const PromSample& s) {
    check_sample(s, text);
    check_parse_value(s.label("le"));
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
  dirty.queue_time = tr::HistogramTotals{3, 4, true};
  dirty.iteration_buckets.size = 3;
  dirty.iteration_buckets.covering_le = 8;
  dirty.lora.present = true;
  dirty.lora.running.size = 4;
  dirty.engine_detail_count = 2;
  dirty.engine_detail[1].running = 9;
  dirty.engine_detail[0].lora.max_lora = 3;
  tr::poller::parse_vllm_metrics(text, &dirty);
  check_same(m, dirty);
  FUZZ_CHECK(m.malformed_lines == dirty.malformed_lines);
  return 0;
}
