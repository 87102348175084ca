#include "io/out_queue.hpp"

#include <cstdlib>

#include "core/assert.hpp"

namespace tr::io {

OutQueue::~OutQueue() {
  clear();
  std::free(segs_);
}

void OutQueue::grow() {
  uint32_t ncap = cap_ ? cap_ * 2 : 8;
  Seg* n = static_cast<Seg*>(std::malloc(sizeof(Seg) * ncap));
  TR_ASSERT(n != nullptr);
  for (uint32_t i = 0; i < count_; ++i)
    n[i] = segs_[(head_ + i) & (cap_ - 1)];
  std::free(segs_);
  segs_ = n;
  cap_ = ncap;
  head_ = 0;
}

void OutQueue::push(const Seg& g) {
  if (count_ == cap_) grow();
  segs_[(head_ + count_) & (cap_ - 1)] = g;
  ++count_;
  bytes_ += g.len;
}

void OutQueue::push_ref(const char* p, uint32_t len) {
  if (len == 0) return;
  push(Seg{p, len, -1, nullptr, nullptr});
}

void OutQueue::move_all_to(OutQueue* to) {
  while (count_ > 0) {
    to->push(segs_[head_]);
    head_ = (head_ + 1) & (cap_ - 1);
    --count_;
  }
  bytes_ = 0;
}

void OutQueue::push_buf(BufferPool* pool, uint16_t bid, const char* p, uint32_t len) {
  if (len == 0) {
    pool->unref(bid);
    return;
  }
  push(Seg{p, len, bid, nullptr, pool});
}

void OutQueue::push_copy(std::string_view bytes) {
  if (bytes.empty()) return;
  char* block = static_cast<char*>(std::malloc(bytes.size()));
  TR_ASSERT(block != nullptr);
  std::memcpy(block, bytes.data(), bytes.size());
  push(Seg{block, static_cast<uint32_t>(bytes.size()), -1, block, nullptr});
}

uint64_t OutQueue::fill(Socket* s) const {
  uint32_t n = count_ < static_cast<uint32_t>(kMaxSendIov) ? count_ : kMaxSendIov;
  uint64_t total = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const Seg& g = segs_[(head_ + i) & (cap_ - 1)];
    s->iov[i].iov_base = const_cast<char*>(g.p);
    s->iov[i].iov_len = g.len;
    total += g.len;
  }
  s->iovcnt = static_cast<int>(n);
  return total;
}

void OutQueue::release(Seg& g) {
  if (g.bid >= 0) {
    g.pool->unref(static_cast<uint16_t>(g.bid));
  } else if (g.owned) {
    std::free(g.owned);
  }
}

void OutQueue::consume(uint64_t n) {
  TR_ASSERT(n <= bytes_);
  bytes_ -= n;
  while (n > 0) {
    TR_ASSERT(count_ > 0);
    Seg& g = segs_[head_];
    if (n < g.len) {
      g.p += n;
      g.len -= static_cast<uint32_t>(n);
      return;
    }
    n -= g.len;
    release(g);
    head_ = (head_ + 1) & (cap_ - 1);
    --count_;
  }
}

void OutQueue::clear() {
  while (count_ > 0) {
    release(segs_[head_]);
    head_ = (head_ + 1) & (cap_ - 1);
    --count_;
  }
  bytes_ = 0;
}

}  // namespace tr::io
