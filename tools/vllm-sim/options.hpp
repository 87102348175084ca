// vllm-sim command line: one declarative flag table (options.cpp) feeds the
// parser, the range checks and the usage text. The flags are a contract with
// the integration tests, the demo and the benchmarks; see README.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tr::sim {

// One --lora-modules entry: the adapter's served name and its path (the path
// is only echoed as the model card's "root").
struct LoraModule {
  std::string name;
  std::string path;
};

struct Options {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;             // 0 = ephemeral
  std::vector<std::string> models;  // served names; {"sim-model"} when none given
  uint32_t max_model_len = 8192;    // tokens, prompt + output
  uint32_t max_num_batched_tokens = 2048;
  uint32_t max_num_seqs = 256;
  uint32_t kv_blocks = 4096;  // per engine
  uint32_t block_size = 16;   // tokens per KV block
  bool prefix_caching = true;
  double step_base_ms = 8.0;
  double step_per_token_us = 40.0;
  double step_per_ctx_ns = 20.0;
  double speed = 1.0;  // divides every step time
  uint64_t seed = 1;
  int64_t created = -1;  // -1 = wall clock seconds per request
  uint32_t default_max_tokens = 256;
  uint32_t fault_close_after_tokens = 0;  // 0 = off
  bool fault_health_503 = false;
  uint32_t fault_stall_first_byte_ms = 0;  // 0 = off
  uint32_t engines = 1;
  uint32_t output_len_mean = 0;               // 0 = off: stop points as without the flag
  double output_len_sigma = 0.8;              // sigma of the log-normal's underlying normal
  std::vector<std::string> lora_module_args;  // raw NAME=PATH, parsed into <loras>
  std::vector<LoraModule> loras;
  uint32_t max_loras = 1;      // distinct adapters in one step, per engine
  uint32_t max_cpu_loras = 0;  // resident adapters per engine; 0 = max_loras
  double lora_load_ms = 50.0;  // added to the step that first uses a non-resident adapter
  std::string scheduling_policy = "fcfs";  // "fcfs" or "priority"
  std::string tokenizer = "chars4";        // "chars4" (ceil(code points / 4)) or "mixed"
};

// Fills <opts> from argv. Returns 0 on success; 1 when --help was asked
// (usage already printed on stdout); 2 on a bad flag (message and usage
// already printed on stderr).
int parse_options(int argc, char** argv, Options* opts);

}  // namespace tr::sim
