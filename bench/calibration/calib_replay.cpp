// calib_replay: feeds a recorded /metrics trace (bench/calibration/record.py)
// through the poller's parser and the StepCalibrator, exactly as the poller
// does (parse_vllm_metrics, calibration_deltas, observe), and prints the fit.
//
//   zcat trace.gz | build/bench/calib_replay [--no-iteration] [--every S]
//
// --no-iteration  hide vllm:iteration_tokens_total (a server without it)
// --every S       print the fit every S seconds of trace time (default 10)
// --stride N      use every Nth scrape only (a longer [poller] interval_ms)
// --opt NAME=V    a CalibrationOptions field (forgetting, prior_weight,
//                 prior_tokens, window_min_s, window_min_steps, window_max_s,
//                 prefill_pending_ratio, base_prior_s, per_token_prior_s)
//
// When the trace comes from vllm-sim, its vllm_sim:* counters give the ground
// truth: the least-squares line through every interval's true (tokens per
// step, mean step time), printed as "truth".
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "estimator/calibration.hpp"
#include "poller/vllm_metrics.hpp"
#include "tokenrelay/engine_metrics.hpp"

namespace {

struct Scrape {
  double t_s = 0;
  std::string text;
};

// The value of the first sample named exactly <name> (any labels), summed over
// engines; -1 when absent.
double sim_counter(std::string_view text, std::string_view name) {
  double total = -1;
  size_t pos = 0;
  while ((pos = text.find(name, pos)) != std::string_view::npos) {
    const bool line_start = pos == 0 || text[pos - 1] == '\n';
    const size_t after = pos + name.size();
    pos = after;
    if (!line_start || after >= text.size() || (text[after] != '{' && text[after] != ' ')) continue;
    const size_t eol = text.find('\n', after);
    const std::string_view line = text.substr(after, eol - after);
    const size_t sp = line.rfind(' ');
    if (sp == std::string_view::npos) continue;
    total =
        (total < 0 ? 0 : total) + std::strtod(std::string(line.substr(sp + 1)).c_str(), nullptr);
  }
  return total;
}

struct Truth {  // sums for the OLS line through per-interval truth
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  void add(double x, double y) {
    n += 1;
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  bool line(double* a, double* b) const {
    const double det = n * sxx - sx * sx;
    if (n < 2 || !(det > 0)) return false;
    *b = (n * sxy - sx * sy) / det;
    *a = (sy - *b * sx) / n;
    return true;
  }
};

}  // namespace

bool set_option(tr::estimator::CalibrationOptions* o, const char* arg) {
  const char* eq = std::strchr(arg, '=');
  if (eq == nullptr) return false;
  const std::string_view name(arg, static_cast<size_t>(eq - arg));
  const double v = std::atof(eq + 1);
  struct Field {
    const char* name;
    double tr::estimator::CalibrationOptions::*member;
  };
  static constexpr Field kFields[] = {
      {"base_prior_s", &tr::estimator::CalibrationOptions::base_prior_s},
      {"per_token_prior_s", &tr::estimator::CalibrationOptions::per_token_prior_s},
      {"forgetting", &tr::estimator::CalibrationOptions::forgetting},
      {"prior_weight", &tr::estimator::CalibrationOptions::prior_weight},
      {"prior_tokens", &tr::estimator::CalibrationOptions::prior_tokens},
      {"itl_events_min", &tr::estimator::CalibrationOptions::itl_events_min},
      {"itl_events_full", &tr::estimator::CalibrationOptions::itl_events_full},
      {"window_min_s", &tr::estimator::CalibrationOptions::window_min_s},
      {"window_min_steps", &tr::estimator::CalibrationOptions::window_min_steps},
      {"window_max_s", &tr::estimator::CalibrationOptions::window_max_s},
      {"prefill_pending_ratio", &tr::estimator::CalibrationOptions::prefill_pending_ratio},
  };
  for (const Field& f : kFields) {
    if (name == f.name) {
      o->*f.member = v;
      return true;
    }
  }
  return false;
}

int main(int argc, char** argv) {
  bool no_iteration = false;
  double every_s = 10;
  size_t stride = 1;
  tr::estimator::CalibrationOptions opt;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-iteration") == 0) {
      no_iteration = true;
    } else if (std::strcmp(argv[i], "--every") == 0 && i + 1 < argc) {
      every_s = std::atof(argv[++i]);
    } else if (std::strcmp(argv[i], "--stride") == 0 && i + 1 < argc &&
               std::atoi(argv[i + 1]) > 0) {
      stride = static_cast<size_t>(std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--opt") == 0 && i + 1 < argc &&
               set_option(&opt, argv[i + 1])) {
      ++i;
    } else {
      std::fprintf(stderr,
                   "usage: zcat trace.gz | calib_replay [--no-iteration] [--every S] "
                   "[--stride N] [--opt NAME=VALUE]...\n");
      return 2;
    }
  }

  std::vector<Scrape> scrapes;
  std::string line;
  size_t seen = 0;
  bool keep = false;
  while (std::getline(std::cin, line)) {
    if (line.rfind("#@ ", 0) == 0) {
      keep = seen++ % stride == 0;
      if (keep) scrapes.push_back(Scrape{std::atof(line.c_str() + 3) / 1e3, {}});
    } else if (keep) {
      scrapes.back().text.append(line).push_back('\n');
    }
  }
  if (scrapes.size() < 2) {
    std::fprintf(stderr, "calib_replay: fewer than two scrapes in the input\n");
    return 1;
  }

  tr::estimator::StepCalibrator cal(opt);
  Truth truth;
  tr::EngineMetrics prev;
  double prev_steps = -1, prev_tokens = -1, prev_busy = -1;
  const double t0 = scrapes.front().t_s;
  double next_print = every_s;
  double half_sum_a = 0, half_sum_b = 0, half_min_b = 1e9, half_max_b = 0;
  int half_n = 0;
  const double t_end = scrapes.back().t_s - t0;
  for (size_t i = 0; i < scrapes.size(); ++i) {
    tr::EngineMetrics cur;
    tr::poller::parse_vllm_metrics(scrapes[i].text, &cur);
    if (no_iteration) cur.iteration_tokens = tr::HistogramTotals{};
    const double steps = sim_counter(scrapes[i].text, "vllm_sim:engine_steps_total");
    const double tokens = sim_counter(scrapes[i].text, "vllm_sim:step_tokens_total");
    const double busy = sim_counter(scrapes[i].text, "vllm_sim:step_seconds_total");
    if (i > 0) {
      tr::estimator::ScrapeDeltas d;
      if (tr::poller::calibration_deltas(prev, cur, scrapes[i].t_s - scrapes[i - 1].t_s, &d)) {
        cal.observe(d);
      }
      if (steps > prev_steps && prev_steps >= 0) {
        truth.add((tokens - prev_tokens) / (steps - prev_steps),
                  (busy - prev_busy) / (steps - prev_steps));
      }
    }
    prev = cur;
    prev_steps = steps;
    prev_tokens = tokens;
    prev_busy = busy;
    const double t = scrapes[i].t_s - t0;
    if (t >= t_end / 2 && cal.samples() > 0) {
      half_sum_a += cal.step_base_s();
      half_sum_b += cal.step_per_token_s();
      half_min_b = std::min(half_min_b, cal.step_per_token_s());
      half_max_b = std::max(half_max_b, cal.step_per_token_s());
      ++half_n;
    }
    if (every_s > 0 && t >= next_print) {
      std::printf("t=%6.1fs  base %6.2f ms  per_token %6.1f us  (windows %u)\n", t,
                  cal.step_base_s() * 1e3, cal.step_per_token_s() * 1e6, cal.samples());
      next_print += every_s;
    }
  }
  std::printf("final: base %.2f ms, per_token %.1f us (windows %u, intervals ignored %u)\n",
              cal.step_base_s() * 1e3, cal.step_per_token_s() * 1e6, cal.samples(), cal.ignored());
  if (half_n > 0) {
    std::printf("second half: mean base %.2f ms, mean per_token %.1f us (min %.1f, max %.1f)\n",
                half_sum_a / half_n * 1e3, half_sum_b / half_n * 1e6, half_min_b * 1e6,
                half_max_b * 1e6);
  }
  double a, b;
  if (truth.line(&a, &b)) {
    std::printf("truth (vllm_sim: counters): base %.2f ms, per_token %.1f us\n", a * 1e3, b * 1e6);
  }
  return 0;
}
