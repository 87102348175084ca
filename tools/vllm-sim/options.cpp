#include "options.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <variant>

namespace tr::sim {

namespace {

// A flag either stores a value into one Options field (with bounds) or sets a
// boolean. Bounds are inclusive and checked before the store.
struct Flag {
  const char* name;  // without the leading "--"
  std::variant<std::string Options::*, uint16_t Options::*, uint32_t Options::*,
               uint64_t Options::*, int64_t Options::*, double Options::*, bool Options::*,
               std::vector<std::string> Options::*>
      target;
  double min;
  double max;
  bool bool_value;  // for switches: the value stored when the flag is present
  const char* help;
  // Takes every following argument up to the next "--flag", as argparse's
  // nargs='+' does (vLLM's --lora-modules a=x b=y).
  bool takes_many = false;
};

constexpr double kU32Max = 4294967295.0;

const Flag kFlags[] = {
    {"host", &Options::host, 0, 0, false, "address to bind (default 127.0.0.1)"},
    {"port", &Options::port, 0, 65535, false, "TCP port, 0 = ephemeral (default 8000)"},
    {"model", &Options::models, 0, 0, false, "served model name (default sim-model); repeatable"},
    {"max-model-len", &Options::max_model_len, 1, 1 << 24, false,
     "prompt + output tokens limit (default 8192)"},
    {"max-num-batched-tokens", &Options::max_num_batched_tokens, 1, 1 << 24, false,
     "token budget per step (default 2048)"},
    {"max-num-seqs", &Options::max_num_seqs, 1, 1 << 20, false,
     "running requests per engine (default 256)"},
    {"kv-blocks", &Options::kv_blocks, 1, 1 << 26, false, "KV blocks per engine (default 4096)"},
    {"block-size", &Options::block_size, 1, 4096, false, "tokens per KV block (default 16)"},
    {"enable-prefix-caching", &Options::prefix_caching, 0, 0, true, "prefix cache on (default)"},
    {"no-prefix-caching", &Options::prefix_caching, 0, 0, false, "prefix cache off"},
    {"step-base-ms", &Options::step_base_ms, 0, 1e6, false, "fixed cost of a step (default 8)"},
    {"step-per-token-us", &Options::step_per_token_us, 0, 1e6, false,
     "cost per scheduled token (default 40)"},
    {"step-per-ctx-ns", &Options::step_per_ctx_ns, 0, 1e9, false,
     "cost per context token of running requests (default 20)"},
    {"speed", &Options::speed, 1e-6, 1e9, false, "divide every step time by this (default 1.0)"},
    {"seed", &Options::seed, 0, 1.8e19, false, "seed of token text and stop points (default 1)"},
    {"created", &Options::created, 0, 1e12, false,
     "fixed \"created\" field (default: wall clock seconds)"},
    {"default-max-tokens", &Options::default_max_tokens, 1, 1 << 24, false,
     "output length when the request gives none (default 256)"},
    {"fault-close-after-tokens", &Options::fault_close_after_tokens, 0, kU32Max, false,
     "close the connection after N tokens of each stream"},
    {"fault-health-503", &Options::fault_health_503, 0, 0, true, "/health answers 503"},
    {"fault-stall-first-byte-ms", &Options::fault_stall_first_byte_ms, 0, 86'400'000, false,
     "wait N ms after a request before any response byte"},
    {"engines", &Options::engines, 1, 64, false, "data-parallel engines (default 1)"},
    {"output-len-mean", &Options::output_len_mean, 0, 1 << 24, false,
     "mean natural output length, log-normal per prompt (default 0 = off)"},
    {"output-len-sigma", &Options::output_len_sigma, 0, 10, false,
     "sigma of the output length's underlying normal (default 0.8)"},
    {"lora-modules", &Options::lora_module_args, 0, 0, false,
     "LoRA adapters NAME=PATH [NAME=PATH ...]; repeatable", true},
    {"max-loras", &Options::max_loras, 1, 1024, false,
     "distinct adapters in one step, per engine (default 1)"},
    {"max-cpu-loras", &Options::max_cpu_loras, 0, 1 << 16, false,
     "resident adapters per engine (default: --max-loras)"},
    {"lora-load-ms", &Options::lora_load_ms, 0, 1e6, false,
     "step time added when a non-resident adapter is used (default 50)"},
    {"scheduling-policy", &Options::scheduling_policy, 0, 0, false,
     "fcfs or priority (default fcfs)"},
    {"tokenizer", &Options::tokenizer, 0, 0, false,
     "prompt token count: chars4 or mixed (default chars4)"},
};

void print_usage(FILE* f) {
  std::fprintf(f, "usage: vllm-sim [flags]\n");
  for (const Flag& fl : kFlags) {
    const bool is_switch = std::holds_alternative<bool Options::*>(fl.target);
    char left[64];
    std::snprintf(left, sizeof left, "--%s%s", fl.name, is_switch ? "" : " V");
    std::fprintf(f, "  %-32s %s\n", left, fl.help);
  }
}

bool parse_number(std::string_view text, double min, double max, double* out) {
  if (text.empty() || text.size() > 63) return false;
  char buf[64];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(buf, &end);
  if (errno != 0 || end != buf + text.size() || !std::isfinite(v)) return false;
  if (v < min || v > max) return false;
  *out = v;
  return true;
}

bool is_integer(double v) {
  return std::floor(v) == v;
}

// Stores <value> into the field of <fl>. Returns false when it does not parse
// or is out of bounds.
bool store(const Flag& fl, std::string_view value, Options* o) {
  double d = 0;
  return std::visit(
      [&](auto member) -> bool {
        using T = std::remove_reference_t<decltype(o->*member)>;
        if constexpr (std::is_same_v<T, std::string>) {
          if (value.empty()) return false;
          o->*member = std::string(value);
          return true;
        } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          if (value.empty()) return false;
          (o->*member).emplace_back(value);
          return true;
        } else if constexpr (std::is_same_v<T, bool>) {
          return false;  // switches take no value
        } else if constexpr (std::is_same_v<T, double>) {
          if (!parse_number(value, fl.min, fl.max, &d)) return false;
          o->*member = d;
          return true;
        } else {
          if (!parse_number(value, fl.min, fl.max, &d) || !is_integer(d)) return false;
          o->*member = static_cast<T>(d);
          return true;
        }
      },
      fl.target);
}

const Flag* find_flag(std::string_view name) {
  for (const Flag& fl : kFlags) {
    if (name == fl.name) return &fl;
  }
  return nullptr;
}

// Prints "vllm-sim: <what> '<arg>'" and the usage on stderr; returns 2.
int fail(const char* what, std::string_view arg) {
  std::fprintf(stderr, "vllm-sim: %s '%.*s'\n", what, static_cast<int>(arg.size()), arg.data());
  print_usage(stderr);
  return 2;
}

// Prints "vllm-sim: <message>" on stderr; returns 2.
int invalid(const std::string& message) {
  std::fprintf(stderr, "vllm-sim: %s\n", message.c_str());
  return 2;
}

// The flags that take one of a few words.
int check_choices(const Options* o) {
  if (o->scheduling_policy != "fcfs" && o->scheduling_policy != "priority") {
    return invalid("--scheduling-policy must be fcfs or priority, not '" + o->scheduling_policy +
                   "'");
  }
  if (o->tokenizer != "chars4" && o->tokenizer != "mixed") {
    return invalid("--tokenizer must be chars4 or mixed, not '" + o->tokenizer + "'");
  }
  return 0;
}

// Splits each NAME=PATH of --lora-modules into <loras> and resolves the
// --max-cpu-loras default. vLLM refuses names that collide and a CPU cache
// smaller than --max-loras; so does the sim.
int parse_lora_modules(Options* o) {
  for (const std::string& arg : o->lora_module_args) {
    const size_t eq = arg.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == arg.size()) {
      return invalid("--lora-modules takes NAME=PATH, not '" + arg + "'");
    }
    LoraModule m{arg.substr(0, eq), arg.substr(eq + 1)};
    const bool is_base = std::find(o->models.begin(), o->models.end(), m.name) != o->models.end();
    const bool seen = std::any_of(o->loras.begin(), o->loras.end(),
                                  [&](const LoraModule& l) { return l.name == m.name; });
    if (is_base || seen) return invalid("LoRA adapter name '" + m.name + "' is already served");
    o->loras.push_back(std::move(m));
  }
  if (o->max_cpu_loras == 0) o->max_cpu_loras = o->max_loras;
  if (o->max_cpu_loras < o->max_loras) {
    return invalid("--max-cpu-loras (" + std::to_string(o->max_cpu_loras) +
                   ") must be >= --max-loras (" + std::to_string(o->max_loras) + ")");
  }
  return 0;
}

}  // namespace

int parse_options(int argc, char** argv, Options* opts) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      print_usage(stdout);
      return 1;
    }
    if (arg.substr(0, 2) != "--") return fail("unexpected argument", arg);
    std::string_view name = arg.substr(2);
    std::string_view value;
    bool has_inline_value = false;
    if (size_t eq = name.find('='); eq != std::string_view::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_inline_value = true;
    }
    const Flag* fl = find_flag(name);
    if (fl == nullptr) return fail("unknown flag", arg);
    if (auto sw = std::get_if<bool Options::*>(&fl->target)) {
      if (has_inline_value) return fail("this flag takes no value:", arg);
      opts->*(*sw) = fl->bool_value;
      continue;
    }
    if (!has_inline_value) {
      if (i + 1 >= argc) return fail("this flag needs a value:", arg);
      value = argv[++i];
    }
    for (;;) {
      if (!store(*fl, value, opts)) {
        std::fprintf(stderr, "vllm-sim: bad value '%.*s' for --%.*s\n",
                     static_cast<int>(value.size()), value.data(), static_cast<int>(name.size()),
                     name.data());
        print_usage(stderr);
        return 2;
      }
      if (!fl->takes_many || i + 1 >= argc || std::string_view(argv[i + 1]).substr(0, 2) == "--") {
        break;
      }
      value = argv[++i];
    }
  }
  if (opts->models.empty()) opts->models.push_back("sim-model");
  if (int rc = check_choices(opts); rc != 0) return rc;
  if (int rc = parse_lora_modules(opts); rc != 0) return rc;
  // vLLM refuses to start when the KV cache cannot hold one max-length request;
  // without this check a lone request could preempt itself forever.
  if (static_cast<uint64_t>(opts->kv_blocks) * opts->block_size < opts->max_model_len) {
    std::fprintf(stderr,
                 "vllm-sim: --kv-blocks * --block-size (%llu tokens) must be >= --max-model-len "
                 "(%u), as vLLM requires\n",
                 static_cast<unsigned long long>(opts->kv_blocks) * opts->block_size,
                 opts->max_model_len);
    return 2;
  }
  return 0;
}

}  // namespace tr::sim
