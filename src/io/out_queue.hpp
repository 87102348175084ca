// Ordered bytes waiting to be written to one socket. A segment points either
// into a pool buffer (holding one reference on it: the zero-copy relay of
// received bytes) or at a heap block the queue owns (response heads, error
// events). fill() turns the front of the queue into the socket's iovecs;
// consume() drops what the kernel took, releasing buffers as they empty.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#include "io/buffer_pool.hpp"
#include "io/loop.hpp"

namespace tr::io {

class OutQueue {
 public:
  OutQueue() = default;
  ~OutQueue();
  OutQueue(const OutQueue&) = delete;
  OutQueue& operator=(const OutQueue&) = delete;

  // Appends bytes inside pool buffer <bid>; takes over one reference to it.
  void push_buf(BufferPool* pool, uint16_t bid, const char* p, uint32_t len);
  // Appends a copy of <bytes> (owned by the queue until written).
  void push_copy(std::string_view bytes);
  // Appends bytes the caller keeps alive and unchanged until they are written
  // or the queue is cleared (a request body held by the client connection).
  void push_ref(const char* p, uint32_t len);
  // Moves every segment, in order, to the back of <to>.
  void move_all_to(OutQueue* to);

  bool empty() const { return count_ == 0; }
  uint64_t bytes() const { return bytes_; }
  uint32_t segments() const { return count_; }

  // Fills s->iov from the front of the queue (up to kMaxSendIov segments).
  // Returns the number of bytes described.
  uint64_t fill(Socket* s) const;
  // The kernel wrote <n> bytes from the front.
  void consume(uint64_t n);
  // Drops everything (connection closing).
  void clear();

 private:
  struct Seg {
    const char* p;
    uint32_t len;
    int32_t bid;  // >= 0: pool buffer reference; -1: heap block at <owned> (or borrowed
                  // bytes when <owned> is null)
    char* owned;
    BufferPool* pool;
  };
  void grow();
  void push(const Seg& g);
  void release(Seg& s);

  Seg* segs_ = nullptr;
  uint32_t cap_ = 0;  // power of two
  uint32_t head_ = 0;
  uint32_t count_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace tr::io
