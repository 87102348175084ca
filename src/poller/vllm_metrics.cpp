#include "poller/vllm_metrics.hpp"

#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <system_error>

#include "core/assert.hpp"
#include "poller/prom.hpp"

namespace tr::poller {

namespace {

// The samples parse_vllm_metrics reads. Everything else (other buckets,
// _created, families we do not use) is rejected after a name scan and one
// table probe.
enum class Field : uint8_t {
  none = 0,
  // Read from the start; only these count toward EngineMetrics::engines.
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
  // Added later (EngineMetrics fields below malformed_lines).
  queue_sum,  // vllm:request_queue_time_seconds
  queue_count,
  prefill_sum,  // vllm:request_prefill_time_seconds
  prefill_count,
  decode_sum,  // vllm:request_decode_time_seconds
  decode_count,
  inference_sum,  // vllm:request_inference_time_seconds
  inference_count,
  iteration_bucket,  // vllm:iteration_tokens_total_bucket
  lora_info,         // vllm:lora_requests_info
  count_,
};
constexpr size_t kFieldCount = static_cast<size_t>(Field::count_);
constexpr Field kLastEngineCounted = Field::cache_config;

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
    {"request_queue_time_seconds_sum", Field::queue_sum},
    {"request_queue_time_seconds_count", Field::queue_count},
    {"request_prefill_time_seconds_sum", Field::prefill_sum},
    {"request_prefill_time_seconds_count", Field::prefill_count},
    {"request_decode_time_seconds_sum", Field::decode_sum},
    {"request_decode_time_seconds_count", Field::decode_count},
    {"request_inference_time_seconds_sum", Field::inference_sum},
    {"request_inference_time_seconds_count", Field::inference_count},
    {"iteration_tokens_total_bucket", Field::iteration_bucket},
    {"lora_requests_info", Field::lora_info},
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
constexpr size_t kHashMultiplier = 18;

constexpr size_t slot_of(std::string_view rest) {
  return (rest.size() + kHashMultiplier * static_cast<uint8_t>(rest[kHashByteFront]) +
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

// A label value as an int32_t count, or -1.
int32_t parse_index(std::string_view v) {
  uint64_t n = 0;
  return parse_count(v, &n) && n <= INT32_MAX ? static_cast<int32_t>(n) : -1;
}

// Cumulative bucket counts of one histogram, summed bound by bound.
struct Buckets {
  std::array<double, kIterationBucketsMax> le{};
  std::array<double, kIterationBucketsMax> cumulative{};
  uint32_t size = 0;
  bool truncated = false;
  bool any_finite = false;
  double top_le = 0;
  bool has_inf = false;
  double inf = 0;

  // <le> is >= 0 (finite) or +Inf; <v> is finite.
  void add(double bound, double v) {
    if (std::isinf(bound)) {
      has_inf = true;
      inf += v;
      return;
    }
    top_le = !any_finite || bound > top_le ? bound : top_le;
    any_finite = true;
    for (uint32_t i = 0; i < size; ++i) {
      if (le[i] == bound) {
        cumulative[i] += v;
        return;
      }
    }
    if (size == le.size()) {
      truncated = true;
      return;
    }
    le[size] = bound;
    cumulative[size] = v;
    ++size;
  }

  void fill(tr::TokenBuckets* out) const {
    out->size = size;
    out->truncated = truncated;
    for (uint32_t i = 0; i < size; ++i) {  // insertion sort by bound: at most 32
      uint32_t j = i;
      while (j > 0 && out->le[j - 1] > le[i]) {
        out->le[j] = out->le[j - 1];
        out->cumulative[j] = out->cumulative[j - 1];
        --j;
      }
      out->le[j] = le[i];
      out->cumulative[j] = cumulative[i];
    }
    out->inf_count = has_inf ? inf : -1;
    out->top_le = any_finite ? top_le : -1;
    if (!has_inf) {
      out->covering_le = -1;
    } else if (inf <= 0) {
      out->covering_le = 0;
    } else {
      out->covering_le = std::numeric_limits<double>::infinity();
      for (uint32_t i = 0; i < size; ++i) {
        if (out->cumulative[i] >= inf) {
          out->covering_le = out->le[i];
          break;
        }
      }
    }
  }
};

// The vllm:lora_requests_info sample with the largest value (the newest)
// among those offered; views into the text.
struct LoraBest {
  bool any = false;
  double value = 0;
  std::string_view max_lora;
  std::string_view running;
  std::string_view waiting;

  void offer(const PromSample& s) {
    if (!std::isfinite(s.value)) return;
    if (any && !(s.value > value)) return;  // ties: the first one stays
    any = true;
    value = s.value;
    max_lora = s.label("max_lora");
    running = s.label("running_lora_adapters");
    waiting = s.label("waiting_lora_adapters");
  }
};

// True if <name> is one of the names of <list>.
bool has_name(std::string_view list, std::string_view name) {
  size_t pos = 0;
  while (pos <= list.size()) {
    size_t comma = list.find(',', pos);
    if (comma == std::string_view::npos) comma = list.size();
    if (list.substr(pos, comma - pos) == name) return true;
    pos = comma + 1;
  }
  return false;
}

// Appends the names of <escaped> (a label value: names joined by ',') to
// *out, unescaped, skipping empty names and names already there. Stops, and
// sets out->truncated, at the first new name that does not fit; once
// truncated, *out takes nothing more.
void append_names(std::string_view escaped, tr::AdapterList* out) {
  std::array<char, tr::kLoraListBytesMax> scratch;  // a name with escapes, unescaped
  size_t pos = 0;
  while (pos < escaped.size() && !out->truncated) {
    size_t comma = escaped.find(',', pos);
    if (comma == std::string_view::npos) comma = escaped.size();
    const std::string_view piece = escaped.substr(pos, comma - pos);
    pos = comma + 1;
    std::string_view name;
    if (!prom_unescape(piece, scratch.data(), scratch.size(), &name)) {
      out->truncated = true;  // longer than any list: neither stored nor a duplicate
      break;
    }
    if (name.empty() || has_name(out->view(), name)) continue;
    const size_t sep = out->size != 0 ? 1 : 0;
    if (sep + name.size() > out->bytes.size() - out->size) {
      out->truncated = true;
      break;
    }
    if (sep != 0) out->bytes[out->size] = ',';
    std::memcpy(out->bytes.data() + out->size + sep, name.data(), name.size());
    out->size += static_cast<uint32_t>(sep + name.size());
  }
}

// Merges one group's newest sample into *out (present, max_lora the largest,
// updated_s the largest, lists the union).
void merge_lora(const LoraBest& b, tr::LoraInfo* out) {
  if (!b.any) return;
  const int32_t max_lora = parse_index(b.max_lora);
  out->max_lora = out->present && out->max_lora > max_lora ? out->max_lora : max_lora;
  out->updated_s = out->present && out->updated_s > b.value ? out->updated_s : b.value;
  out->present = true;
  append_names(b.running, &out->running);
  append_names(b.waiting, &out->waiting);
}

// Sums of one group of samples: all of them, or one engine's.
struct Sums {
  std::array<double, kFieldCount> sum{};
  std::array<uint32_t, kFieldCount> n{};
  uint64_t block_size = 0;
  uint64_t num_gpu_blocks = 0;
  Buckets buckets;
  LoraBest lora;

  // <bound> is the parsed le label of an iteration_bucket sample.
  void add(Field f, const PromSample& s, double bound) {
    if (f == Field::cache_config) {
      uint64_t v = 0;
      if (block_size == 0 && parse_count(s.label("block_size"), &v)) block_size = v;
      if (num_gpu_blocks == 0 && parse_count(s.label("num_gpu_blocks"), &v)) num_gpu_blocks = v;
      return;
    }
    if (f == Field::lora_info) {
      lora.offer(s);
      return;
    }
    if (!std::isfinite(s.value)) return;
    if (f == Field::iteration_bucket) {
      buckets.add(bound, s.value);
      return;
    }
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

  // The fields EngineMetrics and EngineDetail share (Out is either).
  template <class Out>
  void fill(Out* out) const {
    out->running = total(Field::running);
    out->waiting = total(Field::waiting);
    out->kv_usage = has(Field::kv_v1) ? mean(Field::kv_v1) : mean(Field::kv_v0);
    out->prefix_queries = total(Field::prefix_queries);
    out->prefix_hits = total(Field::prefix_hits);
    out->prompt_tokens = total(Field::prompt_tokens);
    out->generation_tokens = total(Field::generation_tokens);
    out->preemptions = total(Field::preemptions);
    out->requests_finished = total(Field::request_success);
    histogram(Field::ttft_sum, Field::ttft_count, &out->ttft);
    if (!histogram(Field::itl_sum, Field::itl_count, &out->itl)) {
      histogram(Field::tpot_sum, Field::tpot_count, &out->itl);
    }
    histogram(Field::e2e_sum, Field::e2e_count, &out->e2e);
    histogram(Field::iteration_sum, Field::iteration_count, &out->iteration_tokens);
    histogram(Field::queue_sum, Field::queue_count, &out->queue_time);
    histogram(Field::prefill_sum, Field::prefill_count, &out->prefill_time);
    histogram(Field::decode_sum, Field::decode_count, &out->decode_time);
    histogram(Field::inference_sum, Field::inference_count, &out->inference_time);
    buckets.fill(&out->iteration_buckets);
    out->block_size = block_size <= UINT32_MAX ? static_cast<uint32_t>(block_size) : 0;
    out->num_gpu_blocks = num_gpu_blocks;
  }
};

constexpr std::string_view kUnlabelledEngine = "0";

struct Acc {
  Sums all;
  // Per engine, in order of first appearance; keys are views into the text.
  std::array<Sums, tr::kEngineDetailMax> engine;
  std::array<std::string_view, tr::kEngineDetailMax> engine_key{};
  size_t engine_detail_count = 0;
  bool engine_detail_truncated = false;
  LoraBest unlabelled_lora;  // lora_requests_info without an engine label
  // EngineMetrics::engines: distinct labels of the first families only.
  std::array<std::string_view, kVllmEnginesMax> engines{};
  size_t engine_count = 0;
  bool any_vllm = false;

  void note_engine(std::string_view e) {
    if (e.empty()) return;
    for (size_t i = engine_count; i > 0; --i) {  // newest first: samples come grouped
      if (engines[i - 1] == e) return;
    }
    if (engine_count < engines.size()) engines[engine_count++] = e;
  }

  // The detail entry of engine <key>, created on first sight; nullptr past
  // kEngineDetailMax engines.
  Sums* detail(std::string_view key) {
    for (size_t i = engine_detail_count; i > 0; --i) {  // newest first, as above
      if (engine_key[i - 1] == key) return &engine[i - 1];
    }
    if (engine_detail_count == engine.size()) {
      engine_detail_truncated = true;
      return nullptr;
    }
    engine_key[engine_detail_count] = key;
    return &engine[engine_detail_count++];
  }

  void add(Field f, const PromSample& s) {
    const std::string_view e = s.label("engine");
    if (f <= kLastEngineCounted) note_engine(e);
    double bound = 0;
    if (f == Field::iteration_bucket) {
      // le >= 0 or +Inf; anything else (absent, -Inf, NaN, negative) is not
      // a bucket of a token histogram and the sample is ignored.
      if (!prom_parse_value(s.label("le"), &bound) || !(bound >= 0)) return;
    }
    if (f == Field::lora_info && e.empty()) {
      unlabelled_lora.offer(s);
      return;
    }
    all.add(f, s, bound);
    if (Sums* d = detail(e.empty() ? kUnlabelledEngine : e)) d->add(f, s, bound);
  }
};

void set_engine_label(std::string_view key, tr::EngineDetail* out) {
  const size_t n = key.size() < out->engine.size() ? key.size() : out->engine.size();
  std::memcpy(out->engine.data(), key.data(), n);
  out->engine_size = static_cast<uint32_t>(n);
  out->index = parse_index(key);
}

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

  // An unlabelled lora_requests_info sample (the only kind vLLM writes)
  // belongs to the engine when there is one engine.
  if (acc.unlabelled_lora.any && acc.engine_detail_count <= 1) {
    Sums* d = acc.engine_detail_count == 1 ? &acc.engine[0] : acc.detail(kUnlabelledEngine);
    TR_DASSERT(d != nullptr);
    if (!d->lora.any) d->lora = acc.unlabelled_lora;
  }

  out->any_vllm = acc.any_vllm;
  out->engines = static_cast<uint32_t>(acc.engine_count);
  acc.all.fill(out);
  out->malformed_lines = malformed <= UINT32_MAX ? static_cast<uint32_t>(malformed) : UINT32_MAX;
  out->engine_detail_count = static_cast<uint32_t>(acc.engine_detail_count);
  out->engine_detail_truncated = acc.engine_detail_truncated;
  for (size_t i = 0; i < acc.engine_detail_count; ++i) {
    tr::EngineDetail& d = out->engine_detail[i];
    set_engine_label(acc.engine_key[i], &d);
    acc.engine[i].fill(&d);
    merge_lora(acc.engine[i].lora, &d.lora);
    merge_lora(acc.engine[i].lora, &out->lora);
  }
  merge_lora(acc.unlabelled_lora, &out->lora);
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
