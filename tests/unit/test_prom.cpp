// Prometheus text parser and vLLM /metrics reader, on bytes in the shape real
// servers send. Fixtures (tests/unit/fixtures/):
//   vllm_v1_2engines.prom  vLLM V1 (0.10/0.11 line), two data-parallel engines;
//                          written by gen_vllm_fixtures.py from hand-picked numbers
//   vllm_v0.prom           vLLM V0 (0.6 line): older names, no engine label; same script
//   vllm_v1_lora.prom      vLLM V1, one engine, --enable-lora: four lora_requests_info
//                          samples (one per label combination seen); same script
//   vllm_sim_2engines.prom `build/vllm-sim --port 0 --engines 2` after 7 requests,
//                          saved with `curl -s http://127.0.0.1:PORT/metrics`
// The expected numbers below are the hand-picked per-engine values, summed.
#include <unistd.h>

#include <atomic>
#include <catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <new>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "poller/prom.hpp"
#include "poller/vllm_metrics.hpp"
#include "tokenrelay/engine_metrics.hpp"

#include "alloc_counter.hpp"

namespace {

using tr::EngineMetrics;
using tr::poller::parse_prom_line;
using tr::poller::parse_prometheus;
using tr::poller::parse_vllm_metrics;
using tr::poller::prom_unescape;
using tr::poller::PromLabel;
using tr::poller::PromLine;
using tr::poller::PromSample;

namespace fs = std::filesystem;

// tests/unit/fixtures, found from this file's path: as compiled (absolute, or
// relative to the build directory, which is two levels above this binary),
// or from $TR_FIXTURES_DIR.
fs::path fixtures_dir() {
  std::vector<fs::path> candidates;
  if (const char* env = std::getenv("TR_FIXTURES_DIR")) candidates.emplace_back(env);
  const fs::path here = fs::path(__FILE__).parent_path() / "fixtures";
  candidates.push_back(here);
  if (here.is_relative()) {
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) candidates.push_back(exe.parent_path().parent_path().parent_path() / here);
  }
  for (const fs::path& c : candidates) {
    std::error_code ec;
    if (fs::exists(c / "vllm_v0.prom", ec)) return c;
  }
  return here;
}

std::string read_fixture(const char* name) {
  const fs::path p = fixtures_dir() / name;
  std::ifstream f(p, std::ios::binary);
  INFO("fixture " << p.string());
  REQUIRE(f.good());
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

struct Collected {
  std::vector<PromSample> samples;
  size_t malformed = 0;
};

Collected collect(std::string_view text) {
  Collected c;
  c.malformed = parse_prometheus(text, [&](const PromSample& s) { c.samples.push_back(s); });
  return c;
}

// One sample line, which must parse.
PromSample one(std::string_view line) {
  PromSample s;
  INFO("line: " << line);
  REQUIRE(parse_prom_line(line, &s) == PromLine::sample);
  return s;
}

PromLine kind_of(std::string_view line) {
  PromSample s;
  return parse_prom_line(line, &s);
}

std::string to_crlf(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '\n') out.push_back('\r');
    out.push_back(c);
  }
  return out;
}

void require_same_buckets(const tr::TokenBuckets& a, const tr::TokenBuckets& b) {
  REQUIRE(a.size == b.size);
  for (uint32_t i = 0; i < a.size; ++i) {
    CHECK(a.le[i] == b.le[i]);
    CHECK(a.cumulative[i] == b.cumulative[i]);
  }
  CHECK(a.truncated == b.truncated);
  CHECK(a.inf_count == b.inf_count);
  CHECK(a.top_le == b.top_le);
  CHECK(a.covering_le == b.covering_le);
}

void require_same_lora(const tr::LoraInfo& a, const tr::LoraInfo& b) {
  CHECK(a.present == b.present);
  CHECK(a.max_lora == b.max_lora);
  CHECK(a.updated_s == b.updated_s);
  CHECK(a.running.view() == b.running.view());
  CHECK(a.running.truncated == b.running.truncated);
  CHECK(a.waiting.view() == b.waiting.view());
  CHECK(a.waiting.truncated == b.waiting.truncated);
}

void require_absent_buckets(const tr::TokenBuckets& b) {
  CHECK(b.size == 0);
  CHECK_FALSE(b.truncated);
  CHECK(b.inf_count == -1);
  CHECK(b.top_le == -1);
  CHECK(b.covering_le == -1);
}

void require_absent_lora(const tr::LoraInfo& l) {
  CHECK_FALSE(l.present);
  CHECK(l.max_lora == -1);
  CHECK(l.updated_s == -1);
  CHECK(l.running.view().empty());
  CHECK(l.waiting.view().empty());
  CHECK_FALSE(l.running.truncated);
  CHECK_FALSE(l.waiting.truncated);
}

// The bucket of <b> whose bound is <le>: its cumulative count, or -1.
double cumulative_at(const tr::TokenBuckets& b, double le) {
  for (uint32_t i = 0; i < b.size; ++i) {
    if (b.le[i] == le) return b.cumulative[i];
  }
  return -1;
}

void require_same(const EngineMetrics& a, const EngineMetrics& b) {
  CHECK(a.any_vllm == b.any_vllm);
  CHECK(a.engines == b.engines);
  CHECK(a.running == b.running);
  CHECK(a.waiting == b.waiting);
  CHECK(a.kv_usage == b.kv_usage);
  CHECK(a.prefix_queries == b.prefix_queries);
  CHECK(a.prefix_hits == b.prefix_hits);
  CHECK(a.prompt_tokens == b.prompt_tokens);
  CHECK(a.generation_tokens == b.generation_tokens);
  CHECK(a.preemptions == b.preemptions);
  CHECK(a.requests_finished == b.requests_finished);
  auto same_histogram = [](const tr::HistogramTotals& x, const tr::HistogramTotals& y) {
    CHECK(x.present == y.present);
    CHECK(x.sum == y.sum);
    CHECK(x.count == y.count);
  };
  same_histogram(a.ttft, b.ttft);
  same_histogram(a.itl, b.itl);
  same_histogram(a.e2e, b.e2e);
  CHECK(a.block_size == b.block_size);
  CHECK(a.num_gpu_blocks == b.num_gpu_blocks);
  CHECK(a.malformed_lines == b.malformed_lines);
  same_histogram(a.iteration_tokens, b.iteration_tokens);
  same_histogram(a.queue_time, b.queue_time);
  same_histogram(a.prefill_time, b.prefill_time);
  same_histogram(a.decode_time, b.decode_time);
  same_histogram(a.inference_time, b.inference_time);
  require_same_buckets(a.iteration_buckets, b.iteration_buckets);
  require_same_lora(a.lora, b.lora);
  REQUIRE(a.engine_detail_count == b.engine_detail_count);
  CHECK(a.engine_detail_truncated == b.engine_detail_truncated);
  for (uint32_t i = 0; i < a.engine_detail_count; ++i) {
    const tr::EngineDetail& x = a.engine_detail[i];
    const tr::EngineDetail& y = b.engine_detail[i];
    INFO("engine detail " << i);
    CHECK(x.engine_label() == y.engine_label());
    CHECK(x.index == y.index);
    CHECK(x.running == y.running);
    CHECK(x.waiting == y.waiting);
    CHECK(x.kv_usage == y.kv_usage);
    CHECK(x.prefix_queries == y.prefix_queries);
    CHECK(x.prefix_hits == y.prefix_hits);
    CHECK(x.prompt_tokens == y.prompt_tokens);
    CHECK(x.generation_tokens == y.generation_tokens);
    CHECK(x.preemptions == y.preemptions);
    CHECK(x.requests_finished == y.requests_finished);
    for (auto h : {&tr::EngineDetail::ttft, &tr::EngineDetail::itl, &tr::EngineDetail::e2e,
                   &tr::EngineDetail::iteration_tokens, &tr::EngineDetail::queue_time,
                   &tr::EngineDetail::prefill_time, &tr::EngineDetail::decode_time,
                   &tr::EngineDetail::inference_time}) {
      same_histogram(x.*h, y.*h);
    }
    require_same_buckets(x.iteration_buckets, y.iteration_buckets);
    CHECK(x.block_size == y.block_size);
    CHECK(x.num_gpu_blocks == y.num_gpu_blocks);
    require_same_lora(x.lora, y.lora);
  }
}

void require_absent(const EngineMetrics& m) {
  CHECK(m.running == -1);
  CHECK(m.waiting == -1);
  CHECK(m.kv_usage == -1);
  CHECK(m.prefix_queries == -1);
  CHECK(m.prefix_hits == -1);
  CHECK(m.prompt_tokens == -1);
  CHECK(m.generation_tokens == -1);
  CHECK(m.preemptions == -1);
  CHECK(m.requests_finished == -1);
  CHECK_FALSE(m.ttft.present);
  CHECK_FALSE(m.itl.present);
  CHECK_FALSE(m.e2e.present);
  CHECK_FALSE(m.iteration_tokens.present);
  CHECK(m.block_size == 0);
  CHECK(m.num_gpu_blocks == 0);
  CHECK_FALSE(m.queue_time.present);
  CHECK_FALSE(m.prefill_time.present);
  CHECK_FALSE(m.decode_time.present);
  CHECK_FALSE(m.inference_time.present);
  require_absent_buckets(m.iteration_buckets);
  require_absent_lora(m.lora);
}

size_t count_sample_lines(std::string_view text) {
  size_t n = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    if (!line.empty() && line[0] != '#') ++n;
    pos = nl + 1;
  }
  return n;
}

// ---------------------------------------------------------------------------
// The three fixtures, read into EngineMetrics.

TEST_CASE("vLLM V1 exposition, two engines: sums, kv mean, histograms, cache config", "[prom]") {
  const std::string text = read_fixture("vllm_v1_2engines.prom");
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(text, &m));
  CHECK(m.any_vllm);
  CHECK(m.engines == 2);
  CHECK(m.running == 12);                 // 5 + 7
  CHECK(m.waiting == 2);                  // 2 + 0
  CHECK(m.kv_usage == 0.375);             // mean of 0.4375 and 0.3125
  CHECK(m.prefix_queries == 3573421);     // 1.823401e+06 + 1.75002e+06
  CHECK(m.prefix_hits == 2181180);        // 1.20112e+06 + 980060
  CHECK(m.prompt_tokens == 3712220);      // 1.902113e+06 + 1.810107e+06
  CHECK(m.generation_tokens == 1777782);  // 865442 + 912340
  CHECK(m.preemptions == 4);              // 3 + 1
  CHECK(m.requests_finished == 893);      // (410 + 37 + 5) + (398 + 41 + 2)
  CHECK(m.ttft.present);
  CHECK(m.ttft.count == 893);
  CHECK(m.ttft.sum == Approx(85.31729183197021 + 79.04230117797852));
  CHECK(m.itl.present);  // inter_token_latency_seconds (time_per_output_token has equal values)
  CHECK(m.itl.count == 1776889);  // (865442 - 452) + (912340 - 441)
  CHECK(m.itl.sum == Approx(17299.837101459503 + 18237.98001074791));
  CHECK(m.e2e.present);
  CHECK(m.e2e.count == 893);
  CHECK(m.e2e.sum == Approx(1903.2231044769287 + 1840.5512447357178));
  CHECK(m.iteration_tokens.present);
  CHECK(m.iteration_tokens.count == 409147);  // 204117 + 205030 engine steps
  CHECK(m.iteration_tokens.sum == 5490002);   // 2.767555e+06 + 2.722447e+06 = prompt + generation
  CHECK(m.block_size == 16);
  CHECK(m.num_gpu_blocks == 29127);
  CHECK(m.malformed_lines == 0);
}

TEST_CASE("vLLM V0 exposition: older names, no engine label", "[prom]") {
  const std::string text = read_fixture("vllm_v0.prom");
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(text, &m));
  CHECK(m.engines == 0);
  CHECK(m.running == 3);
  CHECK(m.waiting == 1);
  CHECK(m.kv_usage == 0.28340080971659914);  // vllm:gpu_cache_usage_perc
  CHECK(m.prefix_queries == -1);             // V0 has only a hit-rate gauge
  CHECK(m.prefix_hits == -1);
  CHECK(m.prompt_tokens == 482113);
  CHECK(m.generation_tokens == 310442);
  CHECK(m.preemptions == 0);
  CHECK(m.requests_finished == 1291);  // stop 1203 + length 88
  CHECK(m.ttft.present);
  CHECK(m.ttft.count == 1291);
  CHECK(m.ttft.sum == 301.2248959541321);
  CHECK(m.itl.present);          // from vllm:time_per_output_token_seconds
  CHECK(m.itl.count == 309151);  // 310442 - 1291
  CHECK(m.itl.sum == 7433.402880191803);
  CHECK(m.e2e.present);
  CHECK(m.e2e.count == 1291);
  CHECK(m.e2e.sum == 7981.06702709198);
  CHECK(m.iteration_tokens.present);
  CHECK(m.iteration_tokens.count == 150221);
  CHECK(m.iteration_tokens.sum == 792555);  // prompt + generation
  CHECK(m.block_size == 16);
  CHECK(m.num_gpu_blocks == 27910);
  CHECK(m.malformed_lines == 0);
}

TEST_CASE("vllm-sim exposition, two engines", "[prom]") {
  const std::string text = read_fixture("vllm_sim_2engines.prom");
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(text, &m));
  CHECK(m.engines == 2);
  CHECK(m.running == 0);
  CHECK(m.waiting == 0);
  CHECK(m.kv_usage == 0);
  CHECK(m.prefix_queries == 73);  // 37 + 36
  CHECK(m.prefix_hits == 0);
  CHECK(m.prompt_tokens == 73);
  CHECK(m.generation_tokens == 132);  // 55 + 77
  CHECK(m.preemptions == 0);
  CHECK(m.requests_finished == 7);  // engine 0: stop 4; engine 1: stop 2, length 1
  CHECK(m.ttft.count == 7);
  CHECK(m.ttft.sum == Approx(0.0009286079999999999 + 0.001501226));
  CHECK(m.itl.count == 125);  // 51 + 74
  CHECK(m.itl.sum == Approx(0.009514239000000002 + 0.022219886000000005));
  CHECK(m.e2e.count == 7);
  CHECK(m.e2e.sum == Approx(0.010442847 + 0.023721112000000003));
  CHECK_FALSE(m.iteration_tokens.present);  // recorded before the sim exported it
  CHECK(m.block_size == 16);
  CHECK(m.num_gpu_blocks == 4096);
  CHECK(m.malformed_lines == 0);
}

// ---------------------------------------------------------------------------
// Engine by engine, request phases, iteration-token buckets, LoRA.

TEST_CASE("V1 fixture: per-engine detail, phase histograms, buckets", "[prom][detail]") {
  const std::string text = read_fixture("vllm_v1_2engines.prom");
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(text, &m));
  REQUIRE(m.engine_detail_count == 2);
  CHECK_FALSE(m.engine_detail_truncated);
  const tr::EngineDetail& e0 = m.engine_detail[0];
  const tr::EngineDetail& e1 = m.engine_detail[1];
  CHECK(e0.engine_label() == "0");
  CHECK(e0.index == 0);
  CHECK(e1.engine_label() == "1");
  CHECK(e1.index == 1);
  CHECK(e0.running == 5);
  CHECK(e1.running == 7);
  CHECK(e0.waiting == 2);
  CHECK(e1.waiting == 0);
  CHECK(e0.kv_usage == 0.4375);
  CHECK(e1.kv_usage == 0.3125);
  CHECK(e0.prefix_queries == 1823401);
  CHECK(e1.prefix_hits == 980060);
  CHECK(e0.preemptions == 3);
  CHECK(e1.preemptions == 1);
  CHECK(e0.prompt_tokens == 1902113);
  CHECK(e1.prompt_tokens == 1810107);
  CHECK(e0.generation_tokens == 865442);
  CHECK(e1.generation_tokens == 912340);
  CHECK(e0.requests_finished == 452);
  CHECK(e1.requests_finished == 441);
  CHECK(e0.iteration_tokens.count == 204117);
  CHECK(e1.iteration_tokens.count == 205030);
  CHECK(e0.iteration_tokens.sum == 1902113 + 865442);
  CHECK(e0.block_size == 16);
  CHECK(e1.num_gpu_blocks == 29127);
  CHECK(e0.ttft.sum == 85.31729183197021);
  CHECK(e1.queue_time.sum == 10.001);
  CHECK(e1.prefill_time.count == 441);
  require_absent_lora(e0.lora);

  // Request phases, summed.
  CHECK(m.queue_time.present);
  CHECK(m.queue_time.count == 893);
  CHECK(m.queue_time.sum == Approx(12.553 + 10.001));
  CHECK(m.prefill_time.sum == Approx(71.92 + 66.4));
  CHECK(m.decode_time.sum == Approx(1818.75 + 1764.15));
  CHECK(m.inference_time.sum == Approx(1890.67 + 1830.55));
  CHECK(m.inference_time.count == 893);

  // Iteration buckets: vLLM's fixed layout, 13 finite bounds.
  const tr::TokenBuckets& b = m.iteration_buckets;
  REQUIRE(b.size == 13);
  CHECK_FALSE(b.truncated);
  CHECK(b.le[0] == 1);
  CHECK(b.le[12] == 16384);
  CHECK(b.cumulative[0] == 3016 + 3029);
  CHECK(cumulative_at(b, 4096) == 204106 + 205019);
  CHECK(b.inf_count == 409147);
  CHECK(b.top_le == 16384);
  // One step in each engine had more than 16384 tokens (a long prompt's
  // completion): no finite bound covers every observation.
  CHECK(b.covering_le == std::numeric_limits<double>::infinity());
  CHECK(e0.iteration_buckets.cumulative[12] == 204116);
  CHECK(e1.iteration_buckets.cumulative[12] == 205029);
  CHECK(e1.iteration_buckets.inf_count == 205030);
  CHECK(e1.iteration_buckets.covering_le == std::numeric_limits<double>::infinity());
  for (uint32_t i = 1; i < b.size; ++i)
    CHECK(b.le[i - 1] < b.le[i]);
  require_absent_lora(m.lora);
}

TEST_CASE("V0 fixture: one unlabelled engine, lora info, cudagraph-sized buckets",
          "[prom][detail]") {
  const std::string text = read_fixture("vllm_v0.prom");
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(text, &m));
  CHECK(m.engines == 0);  // unchanged: no engine label
  REQUIRE(m.engine_detail_count == 1);
  const tr::EngineDetail& e = m.engine_detail[0];
  CHECK(e.engine_label() == "0");
  CHECK(e.index == 0);
  CHECK(e.running == 3);
  CHECK(e.kv_usage == 0.28340080971659914);
  CHECK(e.num_gpu_blocks == 27910);
  CHECK(e.preemptions == 0);

  CHECK(m.queue_time.present);
  CHECK(m.queue_time.sum == 40.7);
  CHECK_FALSE(m.prefill_time.present);
  CHECK_FALSE(m.decode_time.present);

  const tr::TokenBuckets& b = m.iteration_buckets;
  REQUIRE(b.size == 15);
  CHECK(b.top_le == 8320);
  CHECK(b.inf_count == 150221);
  CHECK(b.covering_le == 8256);  // cumulative 150221 there, 150220 at 8192
  require_same_buckets(b, e.iteration_buckets);

  // max_lora="0", no adapters: present, empty lists.
  CHECK(m.lora.present);
  CHECK(m.lora.max_lora == 0);
  CHECK(m.lora.updated_s == 1753969901.7710264);
  CHECK(m.lora.running.view().empty());
  CHECK(m.lora.waiting.view().empty());
  require_same_lora(m.lora, e.lora);
}

TEST_CASE("LoRA fixture: the newest of several lora_requests_info samples", "[prom][lora]") {
  const std::string text = read_fixture("vllm_v1_lora.prom");
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(text, &m));
  CHECK(m.malformed_lines == 0);
  CHECK(m.engines == 1);
  REQUIRE(m.engine_detail_count == 1);
  // The third sample is the newest; the fourth was first seen later but last
  // set earlier.
  CHECK(m.lora.present);
  CHECK(m.lora.max_lora == 4);
  CHECK(m.lora.updated_s == 1753970391.8807077);
  CHECK(m.lora.running.view() == "sql-lora,chat-lora");
  CHECK(m.lora.waiting.view() == "summ-lora");
  CHECK_FALSE(m.lora.running.truncated);
  // The one engine gets the unlabelled sample.
  require_same_lora(m.lora, m.engine_detail[0].lora);

  CHECK(m.running == 3);
  CHECK(m.preemptions == 2);
  CHECK(m.engine_detail[0].preemptions == 2);
  CHECK(m.queue_time.sum == 3.25);
  CHECK(m.queue_time.count == 212);
  CHECK(m.prefill_time.sum == 17.5);
  CHECK(m.iteration_tokens.count == 38110);
  CHECK(m.iteration_buckets.covering_le == 8192);
  CHECK(m.iteration_buckets.top_le == 16384);
  CHECK(m.num_gpu_blocks == 21048);
}

TEST_CASE("two engines with engine-labelled lora samples and buckets", "[prom][lora][detail]") {
  const char* text =
      "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 4\n"
      "vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 6\n"
      "vllm:num_preemptions_total{engine=\"0\",model_name=\"m\"} 7\n"
      "vllm:num_preemptions_total{engine=\"1\",model_name=\"m\"} 2\n"
      "vllm:lora_requests_info{engine=\"0\",max_lora=\"2\",running_lora_adapters=\"a,b\","
      "waiting_lora_adapters=\"\"} 100\n"
      "vllm:lora_requests_info{engine=\"0\",max_lora=\"2\",running_lora_adapters=\"c\","
      "waiting_lora_adapters=\"a\"} 300\n"
      "vllm:lora_requests_info{engine=\"0\",max_lora=\"2\",running_lora_adapters=\"x\","
      "waiting_lora_adapters=\"y\"} 200\n"
      "vllm:lora_requests_info{engine=\"1\",max_lora=\"3\",running_lora_adapters=\"b,c\","
      "waiting_lora_adapters=\"d\"} 250\n"
      "vllm:lora_requests_info{engine=\"1\",max_lora=\"3\",running_lora_adapters=\"z\","
      "waiting_lora_adapters=\"\"} NaN\n"
      // Buckets: engine 1 lists them in another order and spells the bounds
      // differently; engine 1 has one observation above its top bucket.
      "vllm:iteration_tokens_total_bucket{engine=\"0\",le=\"8.0\"} 5\n"
      "vllm:iteration_tokens_total_bucket{engine=\"0\",le=\"64.0\"} 9\n"
      "vllm:iteration_tokens_total_bucket{engine=\"0\",le=\"512.0\"} 10\n"
      "vllm:iteration_tokens_total_bucket{engine=\"0\",le=\"+Inf\"} 10\n"
      "vllm:iteration_tokens_total_bucket{engine=\"1\",le=\"+Inf\"} 4\n"
      "vllm:iteration_tokens_total_bucket{engine=\"1\",le=\"512\"} 3\n"
      "vllm:iteration_tokens_total_bucket{engine=\"1\",le=\"8\"} 1\n"
      "vllm:iteration_tokens_total_bucket{engine=\"1\",le=\"64\"} 3\n"
      "vllm:iteration_tokens_total_count{engine=\"1\"} 4\n"
      "vllm:iteration_tokens_total_sum{engine=\"1\"} 1500\n";
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(text, &m));
  CHECK(m.engines == 2);
  REQUIRE(m.engine_detail_count == 2);
  const tr::EngineDetail& e0 = m.engine_detail[0];
  const tr::EngineDetail& e1 = m.engine_detail[1];
  CHECK(e0.running == 4);
  CHECK(e1.running == 6);
  CHECK(e0.preemptions == 7);
  CHECK(e1.preemptions == 2);
  CHECK(m.preemptions == 9);

  // Each engine: its sample with the largest value (NaN ignored).
  CHECK(e0.lora.max_lora == 2);
  CHECK(e0.lora.updated_s == 300);
  CHECK(e0.lora.running.view() == "c");
  CHECK(e0.lora.waiting.view() == "a");
  CHECK(e1.lora.max_lora == 3);
  CHECK(e1.lora.updated_s == 250);
  CHECK(e1.lora.running.view() == "b,c");
  CHECK(e1.lora.waiting.view() == "d");
  // The sum: union in order of first appearance, the largest max_lora.
  CHECK(m.lora.present);
  CHECK(m.lora.max_lora == 3);
  CHECK(m.lora.updated_s == 300);
  CHECK(m.lora.running.view() == "c,b");
  CHECK(m.lora.waiting.view() == "a,d");

  // Buckets, per engine and summed by bound.
  REQUIRE(e1.iteration_buckets.size == 3);
  CHECK(e1.iteration_buckets.le[0] == 8);
  CHECK(e1.iteration_buckets.cumulative[0] == 1);
  CHECK(e1.iteration_buckets.le[2] == 512);
  CHECK(e1.iteration_buckets.covering_le == std::numeric_limits<double>::infinity());
  CHECK(e0.iteration_buckets.covering_le == 512);
  CHECK(e0.iteration_buckets.top_le == 512);
  CHECK_FALSE(e0.iteration_tokens.present);
  CHECK(e1.iteration_tokens.present);
  CHECK(e1.iteration_tokens.sum == 1500);
  const tr::TokenBuckets& b = m.iteration_buckets;
  REQUIRE(b.size == 3);
  CHECK(b.cumulative[0] == 6);
  CHECK(b.cumulative[1] == 12);
  CHECK(b.cumulative[2] == 13);
  CHECK(b.inf_count == 14);
  CHECK(b.covering_le == std::numeric_limits<double>::infinity());
}

TEST_CASE("unlabelled lora info with several engines stays in the sum", "[prom][lora]") {
  const char* text =
      "vllm:num_requests_running{engine=\"0\"} 1\n"
      "vllm:num_requests_running{engine=\"1\"} 1\n"
      "vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"old\","
      "waiting_lora_adapters=\"\"} 1.75e+09\n"
      "vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"new\","
      "waiting_lora_adapters=\"\"} 1.76e+09\n";
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(text, &m));
  REQUIRE(m.engine_detail_count == 2);
  require_absent_lora(m.engine_detail[0].lora);
  require_absent_lora(m.engine_detail[1].lora);
  CHECK(m.lora.present);
  CHECK(m.lora.max_lora == 1);
  CHECK(m.lora.running.view() == "new");

  // With no other family the unlabelled sample makes engine "0".
  REQUIRE(
      parse_vllm_metrics("vllm:lora_requests_info{max_lora=\"None\",running_lora_adapters=\"a\","
                         "waiting_lora_adapters=\"b,,a\"} 5\n",
                         &m));
  REQUIRE(m.engine_detail_count == 1);
  CHECK(m.engine_detail[0].engine_label() == "0");
  CHECK(m.engines == 0);
  CHECK(m.lora.max_lora == -1);  // not a number
  CHECK(m.lora.present);
  CHECK(m.lora.waiting.view() == "b,a");  // empty names dropped
  require_same_lora(m.lora, m.engine_detail[0].lora);

  // Only non-finite values: absent.
  REQUIRE(
      parse_vllm_metrics("vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"a\","
                         "waiting_lora_adapters=\"\"} +Inf\n",
                         &m));
  require_absent_lora(m.lora);
}

TEST_CASE("long adapter lists are cut at a name boundary", "[prom][lora]") {
  // 60 names of 9 bytes ("adapter00".."adapter59"): 599 bytes with commas.
  std::string list;
  for (int i = 0; i < 60; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "adapter%02d", i);
    if (!list.empty()) list += ',';
    list += name;
  }
  const std::string text = "vllm:lora_requests_info{max_lora=\"8\",running_lora_adapters=\"" +
                           list + "\",waiting_lora_adapters=\"" + list.substr(0, 509) + "\"} 7\n";
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(text, &m));
  const tr::AdapterList& r = m.lora.running;
  CHECK(r.truncated);
  // 51 names fit (51 x 10 - 1 = 509 bytes); the 52nd would need 519.
  CHECK(r.size == 509);
  CHECK(r.view() == list.substr(0, 509));
  CHECK(r.view().back() != ',');
  // Exactly 51 names: not truncated.
  CHECK_FALSE(m.lora.waiting.truncated);
  CHECK(m.lora.waiting.view() == list.substr(0, 509));

  // A list of exactly kLoraListBytesMax bytes fits; one byte more does not.
  const std::string a(tr::kLoraListBytesMax - 2, 'a');
  struct Case {
    std::string names;
    bool truncated;
    std::string kept;
  };
  const Case cases[] = {
      {a + ",b", false, a + ",b"},  // 512 bytes
      {a + ",bc", true, a},         // 513: the last name does not fit
      {a + "aaa", true, ""},        // one name of 513 bytes
  };
  for (const Case& c : cases) {
    INFO(c.names.size());
    REQUIRE(parse_vllm_metrics(
        "vllm:lora_requests_info{running_lora_adapters=\"" + c.names + "\"} 1\n", &m));
    CHECK(m.lora.running.truncated == c.truncated);
    CHECK(m.lora.running.view() == c.kept);
  }

  // The sum of two engines' lists is truncated the same way.
  const std::string half = list.substr(0, 299);  // adapter00..adapter29
  const std::string rest = list.substr(300);     // adapter30..adapter59
  const std::string two =
      "vllm:lora_requests_info{engine=\"0\",running_lora_adapters=\"" + half + "\"} 1\n" +
      "vllm:lora_requests_info{engine=\"1\",running_lora_adapters=\"" + rest + "\"} 1\n";
  REQUIRE(parse_vllm_metrics(two, &m));
  CHECK_FALSE(m.engine_detail[0].lora.running.truncated);
  CHECK_FALSE(m.engine_detail[1].lora.running.truncated);
  CHECK(m.lora.running.truncated);
  CHECK(m.lora.running.view() == list.substr(0, 509));

  // Escaped names are stored unescaped.
  REQUIRE(parse_vllm_metrics(
      "vllm:lora_requests_info{running_lora_adapters=\"q\\\"x,b\\\\s,n\\nl\"} 1\n", &m));
  CHECK(m.lora.running.view() == "q\"x,b\\s,n\nl");
}

TEST_CASE("iteration buckets: bounds, +Inf, limits, bad samples", "[prom][buckets]") {
  EngineMetrics m;
  // No observations: covering is 0.
  REQUIRE(
      parse_vllm_metrics("vllm:iteration_tokens_total_bucket{le=\"1.0\"} 0\n"
                         "vllm:iteration_tokens_total_bucket{le=\"8.0\"} 0\n"
                         "vllm:iteration_tokens_total_bucket{le=\"+Inf\"} 0\n",
                         &m));
  CHECK(m.iteration_buckets.covering_le == 0);
  CHECK(m.iteration_buckets.top_le == 8);
  CHECK(m.iteration_buckets.inf_count == 0);
  // No +Inf bucket: unknown.
  REQUIRE(parse_vllm_metrics("vllm:iteration_tokens_total_bucket{le=\"8\"} 3\n", &m));
  CHECK(m.iteration_buckets.size == 1);
  CHECK(m.iteration_buckets.inf_count == -1);
  CHECK(m.iteration_buckets.covering_le == -1);
  // Bad le or value: the sample is ignored; the smallest covering bound wins.
  REQUIRE(
      parse_vllm_metrics("vllm:iteration_tokens_total_bucket{le=\"-Inf\"} 3\n"
                         "vllm:iteration_tokens_total_bucket{le=\"NaN\"} 3\n"
                         "vllm:iteration_tokens_total_bucket{le=\"-2\"} 3\n"
                         "vllm:iteration_tokens_total_bucket{le=\"x\"} 3\n"
                         "vllm:iteration_tokens_total_bucket{} 3\n"
                         "vllm:iteration_tokens_total_bucket{le=\"4\"} NaN\n"
                         "vllm:iteration_tokens_total_bucket{le=\"16\"} 3\n"
                         "vllm:iteration_tokens_total_bucket{le=\"32\"} 3\n"
                         "vllm:iteration_tokens_total_bucket{le=\"Inf\"} 3\n",
                         &m));
  REQUIRE(m.iteration_buckets.size == 2);
  CHECK(m.iteration_buckets.le[0] == 16);
  CHECK(m.iteration_buckets.covering_le == 16);
  CHECK(m.iteration_buckets.top_le == 32);
  CHECK(m.malformed_lines == 0);
  CHECK(m.engine_detail_count == 1);
  CHECK_FALSE(m.iteration_tokens.present);  // buckets alone: no _sum/_count

  // More finite bounds than kIterationBucketsMax (the capture sizes of older
  // vLLM: 1 2 4 8 16 ... 512): the first ones are kept, top_le sees them all.
  std::string many;
  std::vector<int> bounds = {1, 2, 4};
  for (int v = 8; v < 256; v += 8)
    bounds.push_back(v);
  for (int v = 256; v <= 512; v += 16)
    bounds.push_back(v);
  REQUIRE(bounds.size() > tr::kIterationBucketsMax);
  for (size_t i = 0; i < bounds.size(); ++i) {
    many += "vllm:iteration_tokens_total_bucket{engine=\"0\",le=\"" + std::to_string(bounds[i]) +
            ".0\"} " +
            std::to_string(bounds[i] >= 300   ? 50
                           : bounds[i] >= 100 ? 40
                                              : 10) +
            "\n";
  }
  many += "vllm:iteration_tokens_total_bucket{engine=\"0\",le=\"+Inf\"} 50\n";
  REQUIRE(parse_vllm_metrics(many, &m));
  const tr::TokenBuckets& b = m.iteration_buckets;
  CHECK(b.truncated);
  CHECK(b.size == tr::kIterationBucketsMax);
  CHECK(b.le[b.size - 1] == bounds[tr::kIterationBucketsMax - 1]);
  CHECK(b.top_le == 512);
  // The recorded bounds stop below 300: none covers, so +Inf (a valid bound).
  CHECK(b.covering_le == std::numeric_limits<double>::infinity());
  require_same_buckets(b, m.engine_detail[0].iteration_buckets);
}

TEST_CASE("engine detail: order, unlabelled samples, the bound", "[prom][detail]") {
  EngineMetrics m;
  // Order of first appearance; unlabelled samples join engine "0".
  REQUIRE(
      parse_vllm_metrics("vllm:num_requests_waiting{engine=\"7\"} 1\n"
                         "vllm:num_requests_waiting 2\n"
                         "vllm:num_requests_waiting{engine=\"0\"} 3\n"
                         "vllm:num_requests_waiting{engine=\"replica-b-engine-long\"} 4\n",
                         &m));
  REQUIRE(m.engine_detail_count == 3);
  CHECK(m.engines == 3);  // 7, 0, the long one: as always, unlabelled not counted
  CHECK(m.engine_detail[0].engine_label() == "7");
  CHECK(m.engine_detail[0].index == 7);
  CHECK(m.engine_detail[1].engine_label() == "0");
  CHECK(m.engine_detail[1].waiting == 5);
  CHECK(m.engine_detail[2].engine_label() == "replica-b-engine");  // cut to 16 bytes
  CHECK(m.engine_detail[2].index == -1);
  CHECK(m.engine_detail[2].waiting == 4);
  CHECK(m.waiting == 10);

  // Families read only since the breakdown do not change `engines`.
  REQUIRE(
      parse_vllm_metrics("vllm:request_queue_time_seconds_sum{engine=\"3\"} 1.5\n"
                         "vllm:request_queue_time_seconds_count{engine=\"3\"} 2\n",
                         &m));
  CHECK(m.engines == 0);
  REQUIRE(m.engine_detail_count == 1);
  CHECK(m.engine_detail[0].engine_label() == "3");
  CHECK(m.engine_detail[0].queue_time.sum == 1.5);
  CHECK(m.queue_time.count == 2);

  // Past kEngineDetailMax engines: summed, counted, not listed.
  std::string many;
  for (size_t e = 0; e < tr::kEngineDetailMax + 3; ++e) {
    many += "vllm:num_requests_running{engine=\"" + std::to_string(e) + "\"} 1\n";
    many += "vllm:num_gpu_blocks_unknown{engine=\"" + std::to_string(e) + "\"} 1\n";
  }
  REQUIRE(parse_vllm_metrics(many, &m));
  CHECK(m.engine_detail_count == tr::kEngineDetailMax);
  CHECK(m.engine_detail_truncated);
  CHECK(m.engines == tr::kEngineDetailMax + 3);
  CHECK(m.running == static_cast<double>(tr::kEngineDetailMax + 3));
  CHECK(m.engine_detail[tr::kEngineDetailMax - 1].engine_label() ==
        std::to_string(tr::kEngineDetailMax - 1));
  for (uint32_t i = 0; i < m.engine_detail_count; ++i)
    CHECK(m.engine_detail[i].running == 1);
}

TEST_CASE("every fixture line parses; +Inf buckets match _count", "[prom]") {
  for (const char* name :
       {"vllm_v1_2engines.prom", "vllm_v0.prom", "vllm_v1_lora.prom", "vllm_sim_2engines.prom"}) {
    INFO(name);
    const std::string text = read_fixture(name);
    const Collected c = collect(text);
    CHECK(c.malformed == 0);
    CHECK(c.samples.size() == count_sample_lines(text));

    // Series key: base name and every label but le.
    auto key = [](const PromSample& s, std::string_view suffix) {
      std::string k(s.name.substr(0, s.name.size() - suffix.size()));
      size_t pos = 0;
      PromLabel l;
      while (s.next_label(&pos, &l)) {
        if (l.name == "le") continue;
        k.append("|").append(l.name).append("=").append(l.value);
      }
      return k;
    };
    std::map<std::string, double> inf_bucket, count;
    for (const PromSample& s : c.samples) {
      if (s.name.ends_with("_bucket") && s.label("le") == "+Inf") {
        inf_bucket[key(s, "_bucket")] = s.value;
      } else if (s.name.ends_with("_count")) {
        count[key(s, "_count")] = s.value;
      }
    }
    CHECK(inf_bucket.size() > 5);
    CHECK(inf_bucket == count);
  }
}

TEST_CASE("parsing allocates nothing", "[prom]") {
  const std::string text = read_fixture("vllm_v1_2engines.prom");
  const std::string lora = read_fixture("vllm_v1_lora.prom");
  const std::string escaped_lora =
      "vllm:lora_requests_info{engine=\"0\",running_lora_adapters=\"a\\\"b,c\"} 1\n"
      "vllm:lora_requests_info{running_lora_adapters=\"d,a\\\"b\"} 2\n";
  EngineMetrics m;
  double total = 0;
  const uint64_t before = g_allocations;
  const bool found_lora = parse_vllm_metrics(lora, &m) && m.lora.present;
  const bool found_escaped = parse_vllm_metrics(escaped_lora, &m) && m.lora.present;
  const bool found = parse_vllm_metrics(text, &m);
  const size_t malformed = parse_prometheus(text, [&](const PromSample& s) {
    total += s.value;
    (void)s.label("engine");
  });
  const uint64_t allocations = g_allocations - before;
  CHECK(found);
  CHECK(found_lora);
  CHECK(found_escaped);
  CHECK(malformed == 0);
  CHECK(total > 0);
  CHECK(allocations == 0);
}

// ---------------------------------------------------------------------------
// Format details.

TEST_CASE("label order does not matter", "[prom]") {
  const PromSample a = one(R"(m{engine="1",le="0.5",model_name="x"} 3)");
  const PromSample b = one(R"(m{model_name="x",engine="1",le="0.5"} 3)");
  const PromSample c = one(R"(m{le="0.5",model_name="x",engine="1"} 3)");
  for (const PromSample* s : {&a, &b, &c}) {
    CHECK(s->label("engine") == "1");
    CHECK(s->label("le") == "0.5");
    CHECK(s->label("model_name") == "x");
    CHECK(s->label("missing").empty());
  }

  const char* orders[] = {
      "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2\n"
      "vllm:num_requests_running{model_name=\"m\",engine=\"1\"} 3\n"
      "vllm:cache_config_info{num_gpu_blocks=\"100\",engine=\"0\",block_size=\"32\"} 1\n",
      "vllm:num_requests_running{model_name=\"m\",engine=\"0\"} 2\n"
      "vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 3\n"
      "vllm:cache_config_info{block_size=\"32\",engine=\"0\",num_gpu_blocks=\"100\"} 1\n",
  };
  for (const char* text : orders) {
    EngineMetrics m;
    REQUIRE(parse_vllm_metrics(text, &m));
    CHECK(m.running == 5);
    CHECK(m.engines == 2);
    CHECK(m.block_size == 32);
    CHECK(m.num_gpu_blocks == 100);
  }
}

TEST_CASE("escaped label values", "[prom]") {
  const PromSample s = one(R"(m{a="x\"y\\z\nw",b="c}d,e=\"f",c="#"} 1)");
  CHECK(s.label("a") == R"(x\"y\\z\nw)");
  CHECK(s.label("b") == R"(c}d,e=\"f)");
  CHECK(s.label("c") == "#");
  CHECK(s.value == 1);

  char buf[32];
  std::string_view v;
  REQUIRE(prom_unescape(s.label("a"), buf, sizeof buf, &v));
  CHECK(v == "x\"y\\z\nw");
  REQUIRE(prom_unescape(s.label("b"), buf, sizeof buf, &v));
  CHECK(v == "c}d,e=\"f");
  // Without escapes the input is returned as is, and the buffer is not needed.
  REQUIRE(prom_unescape("plain", nullptr, 0, &v));
  CHECK(v == "plain");
  REQUIRE(prom_unescape({}, nullptr, 0, &v));
  CHECK(v.empty());
  // Too small a buffer: false, nothing half-written is returned.
  CHECK_FALSE(prom_unescape(R"(ab\"cd)", buf, 4, &v));
  CHECK(v.empty());
  // An escape the format does not define is kept as written.
  REQUIRE(prom_unescape(R"(a\tb)", buf, sizeof buf, &v));
  CHECK(v == R"(a\tb)");

  // A model name with escapes still sums with the others.
  EngineMetrics m;
  REQUIRE(
      parse_vllm_metrics("vllm:num_requests_waiting{engine=\"0\",model_name=\"a\\\"b\\\\\"} 4\n"
                         "vllm:num_requests_waiting{engine=\"0\",model_name=\"c\"} 1\n",
                         &m));
  CHECK(m.waiting == 5);
  CHECK(m.engines == 1);
}

TEST_CASE("next_label walks the set in order", "[prom]") {
  const PromSample s = one(R"(m{ a = "1" , b="" ,c="x\"y",} 7)");
  size_t pos = 0;
  PromLabel l;
  std::vector<std::pair<std::string, std::string>> seen;
  while (s.next_label(&pos, &l))
    seen.emplace_back(std::string(l.name), std::string(l.value));
  REQUIRE(seen.size() == 3);
  CHECK(seen[0] == std::pair<std::string, std::string>{"a", "1"});
  CHECK(seen[1] == std::pair<std::string, std::string>{"b", ""});
  CHECK(seen[2] == std::pair<std::string, std::string>{"c", R"(x\"y)"});
  CHECK_FALSE(s.next_label(&pos, &l));

  const PromSample bare = one("m 1");
  pos = 0;
  CHECK(bare.labels_raw.empty());
  CHECK_FALSE(bare.next_label(&pos, &l));
  CHECK(one("m{} 1").labels_raw.empty());
}

TEST_CASE("values: decimal, exponent, +Inf, -Inf, NaN", "[prom]") {
  CHECK(one("m 0").value == 0);
  CHECK(one("m 4.0").value == 4);
  CHECK(one("m -2.5").value == -2.5);
  CHECK(one("m +3").value == 3);
  CHECK(one("m .5").value == 0.5);
  CHECK(one("m 1e+06").value == 1e6);
  CHECK(one("m 1.823401e+06").value == 1823401);
  CHECK(one("m 1.5E-3").value == 1.5e-3);
  CHECK(one("m 1.7539699214471252e+09").value == 1753969921.4471252);
  CHECK(one("m +Inf").value == std::numeric_limits<double>::infinity());
  CHECK(one("m -Inf").value == -std::numeric_limits<double>::infinity());
  CHECK(one("m Inf").value == std::numeric_limits<double>::infinity());
  CHECK(std::isnan(one("m NaN").value));
  CHECK(std::signbit(one("m -0.0").value));

  for (const char* bad :
       {"m abc", "m 1_000", "m 0x10", "m --1", "m +-1", "m +", "m 1e999", "m 1.2.3", "m 5%"}) {
    INFO(bad);
    CHECK(kind_of(bad) == PromLine::malformed);
  }
}

TEST_CASE("timestamps", "[prom]") {
  PromSample s = one("m{a=\"b\"} 3 1712345678901");
  CHECK(s.value == 3);
  CHECK(s.has_timestamp);
  CHECK(s.timestamp_ms == 1712345678901);
  s = one("m 3 -5");
  CHECK(s.timestamp_ms == -5);
  s = one("m 3");
  CHECK_FALSE(s.has_timestamp);
  CHECK(kind_of("m 3 12.5") == PromLine::malformed);
  CHECK(kind_of("m 3 4 5") == PromLine::malformed);
  CHECK(kind_of("m 3 now") == PromLine::malformed);

  EngineMetrics m;
  REQUIRE(parse_vllm_metrics("vllm:num_requests_running{engine=\"0\"} 6 1712345678901\n", &m));
  CHECK(m.running == 6);
}

TEST_CASE("blanks, comments, CRLF", "[prom]") {
  CHECK(kind_of("") == PromLine::skip);
  CHECK(kind_of("   ") == PromLine::skip);
  CHECK(kind_of("\r") == PromLine::skip);
  CHECK(kind_of("# HELP m Some help.") == PromLine::skip);
  CHECK(kind_of("# TYPE m gauge") == PromLine::skip);
  CHECK(kind_of("  # indented comment") == PromLine::skip);
  CHECK(kind_of("#no space") == PromLine::skip);

  CHECK(one("m 1\r").value == 1);
  CHECK(one("m 1   ").value == 1);
  CHECK(one("m 1 \t \r").value == 1);
  CHECK(one("  m 1").value == 1);
  CHECK(one("m\t\t2").value == 2);
  CHECK(one("m {a=\"b\"} 3").label("a") == "b");
  CHECK(one("m{a=\"b\"}4").value == 4);
  CHECK(one("m{a=\"b\",} 5").label("a") == "b");

  const std::string text = read_fixture("vllm_v1_2engines.prom");
  EngineMetrics lf, crlf;
  REQUIRE(parse_vllm_metrics(text, &lf));
  REQUIRE(parse_vllm_metrics(to_crlf(text), &crlf));
  require_same(lf, crlf);
  CHECK(collect(to_crlf(text)).malformed == 0);
}

TEST_CASE("malformed lines are skipped and counted; the rest still parses", "[prom]") {
  const std::string text =
      "# TYPE vllm:num_requests_running gauge\n"
      "vllm:num_requests_running{engine=\"0\" 3\n"          // label set not closed
      "vllm:num_requests_running{engine=0} 3\n"             // value not quoted
      "vllm:num_requests_running{engine=\"0\"} three\n"     // value not a number
      "vllm:num_requests_running{engine=\"0\"}\n"           // no value
      "vllm:num_requests_running{engine=\"0\",=\"x\"} 3\n"  // empty label name
      "vllm:num_requests_running{engine=\"0\"} 3 4 5\n"     // trailing junk
      "vllm:num_requests_running-x 3\n"                     // bad name character
      "9vllm:num_requests_running 3\n"                      // name starts with a digit
      "{engine=\"0\"} 3\n"                                  // no name
      "vllm:num_requests_running{engine=\"1\"} 4\n"         // the one good line
      "vllm:num_requests_waiting{engine=\"1\",model_name=\"unterminated} 9\n"
      "vllm:num_requests_waiting{engine=\"1\"} 2\n";
  const Collected c = collect(text);
  CHECK(c.malformed == 10);
  REQUIRE(c.samples.size() == 2);
  CHECK(c.samples[0].value == 4);
  CHECK(c.samples[1].value == 2);

  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(text, &m));
  CHECK(m.running == 4);
  CHECK(m.waiting == 2);
  CHECK(m.engines == 1);
  CHECK(m.malformed_lines == 10);

  // parse_vllm_metrics checks only the lines it reads: broken lines of other
  // families cost nothing and are not counted.
  EngineMetrics n;
  REQUIRE(
      parse_vllm_metrics("http_requests_total{handler=\"/x\" 3\n"
                         "vllm:num_requests_running 1\n",
                         &n));
  CHECK(n.running == 1);
  CHECK(n.malformed_lines == 0);
  CHECK(collect("http_requests_total{handler=\"/x\" 3\nvllm:num_requests_running 1\n").malformed ==
        1);
}

TEST_CASE("empty input", "[prom]") {
  const Collected c = collect("");
  CHECK(c.malformed == 0);
  CHECK(c.samples.empty());
  EngineMetrics m;
  m.running = 99;  // replaced, not merged
  CHECK_FALSE(parse_vllm_metrics("", &m));
  CHECK_FALSE(m.any_vllm);
  CHECK(m.engines == 0);
  require_absent(m);
  CHECK(m.engine_detail_count == 0);
  CHECK(m.malformed_lines == 0);
  CHECK_FALSE(parse_vllm_metrics("\n\n# only comments\n", &m));
}

TEST_CASE("a missing family leaves -1", "[prom]") {
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics("vllm:num_requests_running{engine=\"0\"} 3\n", &m));
  CHECK(m.running == 3);
  CHECK(m.engines == 1);
  m.running = -1;
  require_absent(m);

  // The V1 fixture without its kv-cache gauges (both names).
  const std::string text = read_fixture("vllm_v1_2engines.prom");
  std::string without_kv;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("cache_usage_perc") != std::string::npos) continue;
    without_kv.append(line).push_back('\n');
  }
  REQUIRE(parse_vllm_metrics(without_kv, &m));
  CHECK(m.kv_usage == -1);
  CHECK(m.running == 12);

  // Only _created samples of a family: the family is absent, vllm: was seen.
  REQUIRE(
      parse_vllm_metrics("vllm:prompt_tokens_created{engine=\"0\"} 1.7539699214471252e+09\n", &m));
  CHECK(m.any_vllm);
  CHECK(m.prompt_tokens == -1);
  // Only non-finite values: absent as well.
  REQUIRE(parse_vllm_metrics("vllm:num_requests_running{engine=\"0\"} NaN\n", &m));
  CHECK(m.running == -1);
  REQUIRE(
      parse_vllm_metrics("vllm:num_requests_running{engine=\"0\"} NaN\n"
                         "vllm:num_requests_running{engine=\"1\"} +Inf\n"
                         "vllm:num_requests_running{engine=\"2\"} 2\n",
                         &m));
  CHECK(m.running == 2);
}

TEST_CASE("calibration deltas between two scrapes", "[prom]") {
  EngineMetrics a;
  EngineMetrics b;
  REQUIRE(parse_vllm_metrics(read_fixture("vllm_v1_2engines.prom"), &a));
  b = a;
  b.itl.sum += 1.5;
  b.itl.count += 120;
  b.ttft.sum += 0.4;
  b.ttft.count += 2;
  b.prompt_tokens += 9000;
  b.generation_tokens += 122;
  b.iteration_tokens.count += 11;
  b.running = 13;
  tr::estimator::ScrapeDeltas d;
  REQUIRE(tr::poller::calibration_deltas(a, b, 0.1, &d));
  CHECK(d.interval_s == 0.1);
  CHECK(d.itl_sum_s == Approx(1.5));
  CHECK(d.itl_count == 120);
  CHECK(d.ttft_sum_s == Approx(0.4));
  CHECK(d.ttft_count == 2);
  CHECK(d.prompt_tokens == 9000);
  CHECK(d.generation_tokens == 122);
  CHECK(d.steps == 11);
  CHECK(d.running_start == 12);
  CHECK(d.running_end == 13);

  // A server without the iteration histogram: steps unknown.
  EngineMetrics c = b;
  c.iteration_tokens = tr::HistogramTotals{};
  REQUIRE(tr::poller::calibration_deltas(a, c, 0.1, &d));
  CHECK(d.steps == -1);
  // A restart: counters went backwards, the calibrator sees negative deltas.
  EngineMetrics restarted = a;
  restarted.prompt_tokens = 10;
  restarted.itl.count = 5;
  REQUIRE(tr::poller::calibration_deltas(a, restarted, 0.1, &d));
  CHECK(d.prompt_tokens == -1);
  CHECK(d.itl_count < 0);
  // No inter-token latency histogram: nothing to observe.
  EngineMetrics no_itl = b;
  no_itl.itl = tr::HistogramTotals{};
  CHECK_FALSE(tr::poller::calibration_deltas(a, no_itl, 0.1, &d));
}

TEST_CASE("non-vLLM input", "[prom]") {
  EngineMetrics m;
  CHECK_FALSE(
      parse_vllm_metrics("# HELP node_load1 1m load average.\n"
                         "# TYPE node_load1 gauge\n"
                         "node_load1 0.21\n"
                         "vllm_sim:aborted_requests_total{engine=\"0\"} 1.0\n"
                         "vllmx:num_requests_running 3\n",
                         &m));
  CHECK_FALSE(m.any_vllm);
  require_absent(m);

  const char* html = "<html><body><h1>404 Not Found</h1></body></html>\n";
  CHECK_FALSE(parse_vllm_metrics(html, &m));
  CHECK(m.malformed_lines == 1);
  CHECK(collect(html).malformed == 1);
}

TEST_CASE("V1 names win over the older ones when both are present", "[prom]") {
  EngineMetrics m;
  REQUIRE(
      parse_vllm_metrics("vllm:gpu_cache_usage_perc{engine=\"0\"} 0.9\n"
                         "vllm:kv_cache_usage_perc{engine=\"0\"} 0.5\n"
                         "vllm:kv_cache_usage_perc{engine=\"1\"} 0.25\n"
                         "vllm:gpu_cache_usage_perc{engine=\"1\"} 0.9\n"
                         "vllm:time_per_output_token_seconds_sum{engine=\"0\"} 100\n"
                         "vllm:time_per_output_token_seconds_count{engine=\"0\"} 1000\n"
                         "vllm:inter_token_latency_seconds_sum{engine=\"0\"} 5\n"
                         "vllm:inter_token_latency_seconds_count{engine=\"0\"} 50\n"
                         "vllm:request_time_per_output_token_seconds_sum{engine=\"0\"} 77\n",
                         &m));
  CHECK(m.kv_usage == 0.375);
  CHECK(m.itl.present);
  CHECK(m.itl.sum == 5);
  CHECK(m.itl.count == 50);
  CHECK(m.engines == 2);
}

TEST_CASE("cache_config_info: string labels, None is absent", "[prom]") {
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(
      "vllm:cache_config_info{block_size=\"16\",engine=\"0\",num_gpu_blocks=\"None\"} 1.0\n", &m));
  CHECK(m.block_size == 16);
  CHECK(m.num_gpu_blocks == 0);

  // The first engine that knows its block count gives it.
  REQUIRE(parse_vllm_metrics(
      "vllm:cache_config_info{block_size=\"None\",engine=\"0\",num_gpu_blocks=\"None\"} 1.0\n"
      "vllm:cache_config_info{block_size=\"32\",engine=\"1\",num_gpu_blocks=\"4096\"} 1.0\n"
      "vllm:cache_config_info{block_size=\"64\",engine=\"2\",num_gpu_blocks=\"8192\"} 1.0\n",
      &m));
  CHECK(m.block_size == 32);
  CHECK(m.num_gpu_blocks == 4096);
  CHECK(m.engines == 3);

  for (const char* bad : {"\"16.0\"", "\"-16\"", "\"\"", "\"16 \"", "\"1e3\"", "\"x16\""}) {
    INFO(bad);
    const std::string text = std::string("vllm:cache_config_info{block_size=") + bad +
                             ",num_gpu_blocks=" + bad + "} 1\n";
    REQUIRE(parse_vllm_metrics(text, &m));
    CHECK(m.block_size == 0);
    CHECK(m.num_gpu_blocks == 0);
  }
}

TEST_CASE("sums over model_name; engines counted once each, up to the bound", "[prom]") {
  EngineMetrics m;
  REQUIRE(
      parse_vllm_metrics("vllm:request_success_total{engine=\"0\",finished_reason=\"stop\","
                         "model_name=\"a\"} 3\n"
                         "vllm:request_success_total{engine=\"0\",finished_reason=\"stop\","
                         "model_name=\"b\"} 4\n"
                         "vllm:request_success_total{engine=\"1\",finished_reason=\"error\","
                         "model_name=\"a\"} 1\n"
                         "vllm:request_success_created{engine=\"1\",finished_reason=\"stop\","
                         "model_name=\"a\"} 1.75e+09\n",
                         &m));
  CHECK(m.requests_finished == 8);
  CHECK(m.engines == 2);

  std::string many;
  for (size_t e = 0; e < tr::poller::kVllmEnginesMax + 6; ++e) {
    many += "vllm:num_requests_running{engine=\"" + std::to_string(e) + "\"} 1\n";
    many += "vllm:num_requests_waiting{engine=\"" + std::to_string(e) + "\"} 1\n";
  }
  REQUIRE(parse_vllm_metrics(many, &m));
  CHECK(m.engines == tr::poller::kVllmEnginesMax);
  CHECK(m.running == static_cast<double>(tr::poller::kVllmEnginesMax + 6));
}

TEST_CASE("a body cut mid-line yields exactly the complete lines before the cut", "[prom]") {
  const std::string text = read_fixture("vllm_v1_2engines.prom");

  // Cut inside the value of engine 1's prompt-token counter: "1.810107e+06" -> "1.81".
  const std::string line = "vllm:prompt_tokens_total{engine=\"1\"";
  const size_t at = text.find(line);
  REQUIRE(at != std::string::npos);
  const size_t value = text.find("} ", at) + 2;
  EngineMetrics m;
  REQUIRE(parse_vllm_metrics(std::string_view(text).substr(0, value + 4), &m));
  CHECK(m.prompt_tokens == 1902113);  // engine 0 only; no 1.81 from the cut line
  CHECK(m.malformed_lines == 1);
  CHECK(m.running == 12);
  CHECK(m.generation_tokens == -1);  // comes after the cut
  CHECK(m.e2e.present == false);

  // Every cut: the same result as the text up to the last '\n' before it,
  // plus one malformed line if the cut left part of a sample line.
  for (size_t cut = 0; cut <= text.size(); cut += 61) {
    const std::string_view part = std::string_view(text).substr(0, cut);
    const size_t last_nl = part.rfind('\n');
    const std::string_view whole =
        last_nl == std::string_view::npos ? std::string_view() : part.substr(0, last_nl + 1);
    const std::string_view tail = part.substr(whole.size());
    EngineMetrics got, want;
    parse_vllm_metrics(part, &got);
    parse_vllm_metrics(whole, &want);
    INFO("cut at " << cut);
    const bool partial_sample = !tail.empty() && tail[0] != '#';
    CHECK(got.malformed_lines == want.malformed_lines + (partial_sample ? 1 : 0));
    got.malformed_lines = want.malformed_lines;
    require_same(got, want);
  }
}

// ---------------------------------------------------------------------------
// Cost. Hidden: run with `unit_prom [.perf]` on an optimized build.

// Best of several timed rounds: the least disturbed by other processes.
template <class F>
double ns_per_byte(const std::string& text, F&& fn) {
  using clock = std::chrono::steady_clock;
  for (int i = 0; i < 20; ++i)
    fn();  // warm caches and branch predictors
  double best = std::numeric_limits<double>::infinity();
  for (int round = 0; round < 7; ++round) {
    size_t runs = 0;
    const auto start = clock::now();
    auto now = start;
    do {
      for (int i = 0; i < 20; ++i)
        fn();
      runs += 20;
      now = clock::now();
    } while (now - start < std::chrono::milliseconds(60));
    const double ns = std::chrono::duration<double, std::nano>(now - start).count();
    const double per_byte = ns / (static_cast<double>(runs) * static_cast<double>(text.size()));
    best = per_byte < best ? per_byte : best;
  }
  return best;
}

TEST_CASE("parse cost per byte", "[.perf]") {
  for (const char* name :
       {"vllm_v1_2engines.prom", "vllm_v0.prom", "vllm_v1_lora.prom", "vllm_sim_2engines.prom"}) {
    const std::string text = read_fixture(name);
    volatile double sink = 0;
    const double vllm = ns_per_byte(text, [&] {
      EngineMetrics m;
      parse_vllm_metrics(text, &m);
      sink = sink + m.running;
    });
    const double full = ns_per_byte(text, [&] {
      double total = 0;
      parse_prometheus(text, [&](const PromSample& s) { total += s.value; });
      sink = sink + total;
    });
    std::printf(
        "%-24s %6zu bytes  parse_vllm_metrics %.3f ns/byte (%.1f us/scrape)  "
        "parse_prometheus (every line) %.3f ns/byte\n",
        name, text.size(), vllm, vllm * static_cast<double>(text.size()) / 1000.0, full);
    CHECK(vllm < 10.0);  // the budget: well under 10 us per KB
  }
}

}  // namespace
