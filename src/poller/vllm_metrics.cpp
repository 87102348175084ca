#include "poller/vllm_metrics.hpp"

#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <system_error>

#include "core/assert.hpp"
#include "poller/prom.hpp"

namespace tr::poller {

namespace {

// The samples parse_vllm_metrics reads. Everything else (buckets, _created,
// families we do not use) is rejected after a name scan and one table probe.
enum class Field : uint8_t {
  none = 0,
  running,
  waiting,
  kv_v1,  // vllm:kv_cache_usage_perc
  kv_v0,  // vllm:gpu_cache_usage_perc
  prefix_queries,
  prefix_hits,
  prompt_tokens,
  generation_tokens,
  preemptions,
  request_success,
  ttft_sum,
  ttft_count,
  itl_sum,  // vllm:inter_token_latency_seconds
  itl_count,
  tpot_sum,  // vllm:time_per_output_token_seconds (older name of the same histogram)
  tpot_count,
  e2e_sum,
  e2e_count,
  iteration_sum,  // vllm:iteration_tokens_total
  iteration_count,
  cache_config,
  count_,
};
constexpr size_t kFieldCount = static_cast<size_t>(Field::count_);

constexpr std::string_view kPrefix = "vllm:";

struct Name {
  std::string_view rest;  // the sample name after "vllm:"
  Field field;
};

constexpr Name kNames[] = {
    {"num_requests_running", Field::running},
    {"num_requests_waiting", Field::waiting},
    {"kv_cache_usage_perc", Field::kv_v1},
    {"gpu_cache_usage_perc", Field::kv_v0},
    {"prefix_cache_queries_total", Field::prefix_queries},
    {"prefix_cache_hits_total", Field::prefix_hits},
    {"prompt_tokens_total", Field::prompt_tokens},
    {"generation_tokens_total", Field::generation_tokens},
    {"num_preemptions_total", Field::preemptions},
    {"request_success_total", Field::request_success},
    {"time_to_first_token_seconds_sum", Field::ttft_sum},
    {"time_to_first_token_seconds_count", Field::ttft_count},
    {"inter_token_latency_seconds_sum", Field::itl_sum},
    {"inter_token_latency_seconds_count", Field::itl_count},
    {"time_per_output_token_seconds_sum", Field::tpot_sum},
    {"time_per_output_token_seconds_count", Field::tpot_count},
    {"e2e_request_latency_seconds_sum", Field::e2e_sum},
    {"e2e_request_latency_seconds_count", Field::e2e_count},
    {"iteration_tokens_total_sum", Field::iteration_sum},
    {"iteration_tokens_total_count", Field::iteration_count},
    {"cache_config_info", Field::cache_config},
};
constexpr size_t kNameCount = sizeof(kNames) / sizeof(kNames[0]);
static_assert(kNameCount + 1 == kFieldCount, "one name per field");

// A perfect hash over kNames: the length and two bytes pick one of 64 slots,
// then one compare confirms. build_table() proves at compile time that no two
// names share a slot; if a new name breaks that, retune the multiplier or the
// two byte positions (a brute-force search over small values finds one).
constexpr size_t kSlots = 64;
constexpr size_t kHashByteFront = 1;  // rest[1]
constexpr size_t kHashByteBack = 5;   // rest[size - 5]

constexpr size_t slot_of(std::string_view rest) {
  return (rest.size() + 5u * static_cast<uint8_t>(rest[kHashByteFront]) +
          static_cast<uint8_t>(rest[rest.size() - kHashByteBack])) &
         (kSlots - 1);
}

struct Table {
  std::array<uint8_t, kSlots> entry{};  // index into kNames + 1; 0 = empty slot
  size_t rest_min = SIZE_MAX;
  size_t rest_max = 0;
  bool perfect = true;
};

constexpr Table build_table() {
  Table t;
  for (size_t i = 0; i < kNameCount; ++i) {
    const std::string_view rest = kNames[i].rest;
    t.rest_min = rest.size() < t.rest_min ? rest.size() : t.rest_min;
    t.rest_max = rest.size() > t.rest_max ? rest.size() : t.rest_max;
    const size_t s = slot_of(rest);
    if (t.entry[s] != 0) t.perfect = false;
    t.entry[s] = static_cast<uint8_t>(i + 1);
  }
  return t;
}

constexpr Table kTable = build_table();
static_assert(kTable.perfect, "two vllm: names share a slot: retune slot_of");
static_assert(kTable.rest_min >= kHashByteBack && kTable.rest_min > kHashByteFront,
              "slot_of reads inside every name that passes the length check");
static_assert(kNameCount < 255, "entries are stored as uint8_t");

// <name> is a full sample name; returns the field it fills, or none.
Field lookup(std::string_view name) {
  if (name.size() < kPrefix.size() + kTable.rest_min) return Field::none;
  if (name.size() > kPrefix.size() + kTable.rest_max) return Field::none;
  const std::string_view rest = name.substr(kPrefix.size());
  const uint8_t e = kTable.entry[slot_of(rest)];
  if (e == 0) return Field::none;
  const Name& n = kNames[e - 1];
  return n.rest == rest ? n.field : Field::none;
}

// A label value such as "16" or "4096"; false for "None", "" or anything else.
bool parse_count(std::string_view v, uint64_t* out) {
  if (v.empty()) return false;
  uint64_t n = 0;
  const std::from_chars_result r = std::from_chars(v.data(), v.data() + v.size(), n);
  if (r.ec != std::errc() || r.ptr != v.data() + v.size()) return false;
  *out = n;
  return true;
}

struct Acc {
  std::array<double, kFieldCount> sum{};
  std::array<uint32_t, kFieldCount> n{};
  std::array<std::string_view, kVllmEnginesMax> engines{};  // views into the text
  size_t engine_count = 0;
  uint64_t block_size = 0;
  uint64_t num_gpu_blocks = 0;
  bool any_vllm = false;

  void note_engine(std::string_view e) {
    if (e.empty()) return;
    for (size_t i = engine_count; i > 0; --i) {  // newest first: samples come grouped
      if (engines[i - 1] == e) return;
    }
    if (engine_count < engines.size()) engines[engine_count++] = e;
  }

  void add(Field f, const PromSample& s) {
    note_engine(s.label("engine"));
    if (f == Field::cache_config) {
      uint64_t v = 0;
      if (block_size == 0 && parse_count(s.label("block_size"), &v)) block_size = v;
      if (num_gpu_blocks == 0 && parse_count(s.label("num_gpu_blocks"), &v)) num_gpu_blocks = v;
      return;
    }
    if (!std::isfinite(s.value)) return;
    const size_t i = static_cast<size_t>(f);
    sum[i] += s.value;
    n[i] += 1;
  }

  bool has(Field f) const { return n[static_cast<size_t>(f)] != 0; }
  double total(Field f) const { return has(f) ? sum[static_cast<size_t>(f)] : -1.0; }
  double mean(Field f) const {
    return has(f) ? sum[static_cast<size_t>(f)] / n[static_cast<size_t>(f)] : -1.0;
  }

  bool histogram(Field sum_field, Field count_field, tr::HistogramTotals* h) const {
    if (!has(sum_field) && !has(count_field)) return false;
    h->sum = sum[static_cast<size_t>(sum_field)];
    h->count = sum[static_cast<size_t>(count_field)];
    h->present = true;
    return true;
  }
};

}  // namespace

bool parse_vllm_metrics(std::string_view text, tr::EngineMetrics* out) {
  *out = tr::EngineMetrics{};
  Acc acc;
  Field field = Field::none;
  const size_t malformed = parse_prometheus_if(
      text,
      [&](std::string_view name) {
        if (name.size() < kPrefix.size() ||
            std::memcmp(name.data(), kPrefix.data(), kPrefix.size()) != 0) {
          return false;
        }
        acc.any_vllm = true;
        field = lookup(name);
        return field != Field::none;
      },
      [&](const PromSample& s) {
        TR_DASSERT(field != Field::none);
        acc.add(field, s);
      });

  out->any_vllm = acc.any_vllm;
  out->engines = static_cast<uint32_t>(acc.engine_count);
  out->running = acc.total(Field::running);
  out->waiting = acc.total(Field::waiting);
  out->kv_usage = acc.has(Field::kv_v1) ? acc.mean(Field::kv_v1) : acc.mean(Field::kv_v0);
  out->prefix_queries = acc.total(Field::prefix_queries);
  out->prefix_hits = acc.total(Field::prefix_hits);
  out->prompt_tokens = acc.total(Field::prompt_tokens);
  out->generation_tokens = acc.total(Field::generation_tokens);
  out->preemptions = acc.total(Field::preemptions);
  out->requests_finished = acc.total(Field::request_success);
  acc.histogram(Field::ttft_sum, Field::ttft_count, &out->ttft);
  if (!acc.histogram(Field::itl_sum, Field::itl_count, &out->itl)) {
    acc.histogram(Field::tpot_sum, Field::tpot_count, &out->itl);
  }
  acc.histogram(Field::e2e_sum, Field::e2e_count, &out->e2e);
  acc.histogram(Field::iteration_sum, Field::iteration_count, &out->iteration_tokens);
  out->block_size = acc.block_size <= UINT32_MAX ? static_cast<uint32_t>(acc.block_size) : 0;
  out->num_gpu_blocks = acc.num_gpu_blocks;
  out->malformed_lines = malformed <= UINT32_MAX ? static_cast<uint32_t>(malformed) : UINT32_MAX;
  return out->any_vllm;
}

bool calibration_deltas(const tr::EngineMetrics& prev, const tr::EngineMetrics& cur,
                        double interval_s, estimator::ScrapeDeltas* out) {
  if (!(cur.itl.present && prev.itl.present && cur.ttft.present && prev.ttft.present)) return false;
  // Counters: -1 when absent in either scrape or gone backwards.
  auto counter = [](double c, double p) { return c >= 0 && p >= 0 && c >= p ? c - p : -1.0; };
  estimator::ScrapeDeltas d;
  d.interval_s = interval_s;
  d.itl_sum_s = cur.itl.sum - prev.itl.sum;
  d.itl_count = cur.itl.count - prev.itl.count;
  d.ttft_sum_s = cur.ttft.sum - prev.ttft.sum;
  d.ttft_count = cur.ttft.count - prev.ttft.count;
  d.prompt_tokens = counter(cur.prompt_tokens, prev.prompt_tokens);
  d.generation_tokens = counter(cur.generation_tokens, prev.generation_tokens);
  if (cur.iteration_tokens.present && prev.iteration_tokens.present) {
    d.steps = cur.iteration_tokens.count - prev.iteration_tokens.count;
  }
  d.running_start = prev.running;
  d.running_end = cur.running;
  *out = d;
  return true;
}

}  // namespace tr::poller
