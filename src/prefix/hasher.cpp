// PrefixHasher: the byte stream cut into kBlockChars blocks, each hashed with
// XXH3-64 seeded by the previous block's hash.
#include "prefix/hasher.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "core/assert.hpp"

namespace tr::prefix {

uint64_t seed_for(std::string_view model) {
  return XXH3_64bits(model.data(), model.size());
}

void PrefixHasher::reset(uint64_t seed) {
  prev_ = seed;
  fed_ = 0;
  count_ = 0;
  carry_len_ = 0;
  stopped_ = false;
  truncated_ = false;
}

void PrefixHasher::feed_slow(std::string_view bytes) {
  const char* p = bytes.data();
  size_t n = bytes.size();
  fed_ += n;
  if (stopped_ || truncated_) return;
  if (count_ == kMaxBlocks) {
    // Only counting now: one more full block would be past the bound.
    // (carry_len_ < kBlockChars, so this cannot overflow.)
    if (n >= kBlockChars - carry_len_) {
      truncated_ = true;
    } else {
      carry_len_ += n;
    }
    return;
  }
  // Locals in the loop: stores into hashes_ may alias the members.
  uint64_t prev = prev_;
  size_t count = count_;
  if (carry_len_ != 0) {
    size_t take = std::min(n, kBlockChars - carry_len_);
    std::memcpy(carry_.data() + carry_len_, p, take);
    carry_len_ += take;
    p += take;
    n -= take;
    if (carry_len_ < kBlockChars) return;
    prev = XXH3_64bits_withSeed(carry_.data(), kBlockChars, prev);
    hashes_[count++] = prev;
    carry_len_ = 0;
  }
  // Full blocks straight from the piece.
  size_t room = kMaxBlocks - count;
  size_t full = n / kBlockChars;
  if (full > room) {
    full = room;
    truncated_ = true;
  }
  for (size_t k = 0; k < full; ++k) {
    prev = XXH3_64bits_withSeed(p, kBlockChars, prev);
    hashes_[count + k] = prev;
    p += kBlockChars;
  }
  count += full;
  n -= full * kBlockChars;
  prev_ = prev;
  count_ = count;
  if (truncated_) return;
  if (n != 0) {
    if (count < kMaxBlocks) std::memcpy(carry_.data(), p, n);
    carry_len_ = n;
  }
  TR_DASSERT(carry_len_ < kBlockChars);
}

}  // namespace tr::prefix
