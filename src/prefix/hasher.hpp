// Prefix hashing for prefix-cache affinity (issue 9). Pure code: no I/O, no
// clocks, no allocation after construction.
//
// What is hashed
// --------------
// vLLM (V1) caches KV in blocks of block_size tokens (16 by default) and finds
// a request's cached prefix by hashing each *full* block of its token ids
// chained on the previous block's hash (kv_cache_utils.hash_block_tokens),
// then walking the chain from block 0 until the first block it does not hold.
// The proxy has no tokenizer, so it does the same over the prompt's bytes:
// the prompt is cut into blocks of kBlockChars bytes, and
//   h[0] = XXH3_64(block 0, seed)      seed = what else keys the KV (model, adapter)
//   h[k] = XXH3_64(block k, h[k-1])
// so h[k] names the whole prefix up to the end of block k, like vLLM's hash.
// Only full blocks are hashed (a trailing partial block can never be a
// reused prefix in its entirety; vLLM does not cache partial blocks either).
//
// kBlockChars = 256. At the 3.5-4.5 characters per token of English text and
// code (more for escaped JSON, fewer for CJK), 256 bytes are ~64 tokens, i.e.
// ~4 vLLM blocks of 16 tokens; for CJK or heavily escaped text 1-4 blocks. The
// prefix the proxy predicts is therefore rounded down by less than one of our
// blocks (~64 tokens), negligible next to the prefixes worth routing for (a
// system prompt, a shared document, a chat history: 1k-100k tokens), while a
// 100k-token prompt is ~1600 hashes rather than ~6000 at one vLLM block each:
// a quarter of the hashing calls, of the index memory and of the match work.
// (A divergence inside a block loses that block; vLLM loses its 16-token block
// too, so at most ~3 vLLM blocks of difference.)
//
// The byte stream
// ---------------
// The caller feeds pieces in request order; a piece may be of any length and
// cut anywhere (a block may straddle pieces: bytes wait in a carry buffer of
// less than one block; full blocks inside a piece are hashed in place, never
// copied). Pieces are the RAW bytes of JSON string tokens as they sit in the
// body, still escaped ("\u00e9", "\n" stay six and two bytes): the inspector
// never unescapes them, and the same client sends the same bytes each time.
// The same text escaped differently hashes differently (a missed hit, never
// a false one).
// Structure is marked with separator bytes 0x01..0x04 (Mark). An unescaped
// JSON string never contains a byte below 0x20, so a mark cannot be confused
// with string content: ("user", "ab") ("assistant", "c") and ("user", "abc")
// are different streams. For chat: message(role, content) per message, or
// mark(Mark::message) feed(role) mark(Mark::content) feed(content pieces...)
// with mark(Mark::part) between text parts; for completions: prompt(raw).
//
// Bounds
// ------
// At most kMaxBlocks hashes (1 MiB of prompt text, ~260k tokens) are kept, in
// a fixed array inside the hasher; what comes after is not hashed
// (truncated() says so) and is treated by the caller as not cached: the
// prediction is then a lower bound. stop() ends hashing early on purpose: call
// it at the first content the stream cannot represent (an image part, whose
// hash vLLM mixes into the blocks after it), so no block past it is claimed.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace tr::prefix {

inline constexpr size_t kBlockChars = 256;  // bytes of raw prompt text per block
inline constexpr size_t kMaxBlocks = 4096;  // hashes per request (1 MiB of text)

// Structure separators. Values below 0x20 never occur in an unescaped JSON
// string, so they cannot collide with content bytes fed raw.
enum class Mark : uint8_t {
  message = 0x01,  // start of a chat message (before its role)
  content = 0x02,  // between a message's role and its content
  part = 0x03,     // between two text parts of one content array
  prompt = 0x04,   // start of a completions prompt (or one element of a prompt array)
};

// The seed for a model: the same prompt on two models (or LoRA adapters of
// one base model) shares no KV, so their chains must differ.
uint64_t seed_for(std::string_view model);

// One per worker, reused for every request: reset(), feed the pieces, read
// hashes(). Not thread-safe (no need: per worker).
class PrefixHasher {
 public:
  PrefixHasher() = default;
  PrefixHasher(const PrefixHasher&) = delete;
  PrefixHasher& operator=(const PrefixHasher&) = delete;

  // Starts a new prompt whose chain begins at <seed> (seed_for(model)).
  void reset(uint64_t seed = 0);

  // Appends <bytes> to the stream, verbatim. Splitting a stream into pieces
  // differently never changes the hashes.
  void feed(std::string_view bytes) {
    // Fast path: a short piece that does not complete the carried block.
    if (bytes.size() < kBlockChars - carry_len_ && count_ < kMaxBlocks && !stopped_) {
      std::memcpy(carry_.data() + carry_len_, bytes.data(), bytes.size());
      carry_len_ += bytes.size();
      fed_ += bytes.size();
      return;
    }
    feed_slow(bytes);
  }
  void mark(Mark m) {
    char c = static_cast<char>(m);
    feed(std::string_view(&c, 1));
  }
  // mark(message) role mark(content) content.
  void message(std::string_view role, std::string_view content) {
    mark(Mark::message);
    feed(role);
    mark(Mark::content);
    feed(content);
  }
  // mark(prompt) prompt.
  void prompt(std::string_view raw) {
    mark(Mark::prompt);
    feed(raw);
  }
  // Nothing fed after this is hashed (until reset()).
  void stop() { stopped_ = true; }

  // The chain so far: one hash per full block, at most kMaxBlocks. Valid until
  // the next call that feeds or resets.
  std::span<const uint64_t> hashes() const { return {hashes_.data(), count_}; }
  size_t blocks() const { return count_; }
  // Bytes fed since reset() (all of them, hashed or not).
  uint64_t bytes_fed() const { return fed_; }
  // More full blocks were fed than kMaxBlocks (those are not in hashes()).
  bool truncated() const { return truncated_; }

 private:
  void feed_slow(std::string_view bytes);

  uint64_t prev_ = 0;
  uint64_t fed_ = 0;
  size_t count_ = 0;
  size_t carry_len_ = 0;
  bool stopped_ = false;
  bool truncated_ = false;
  std::array<char, kBlockChars> carry_;
  std::array<uint64_t, kMaxBlocks> hashes_;
};

}  // namespace tr::prefix
