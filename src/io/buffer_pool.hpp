// Fixed pool of equal-size receive buffers, one per worker. Under io_uring the
// free buffers live in the kernel's provided-buffer ring (the kernel picks one per
// receive); under epoll in a free stack. Each buffer carries a reference count so
// that several send segments can point into one received buffer; the last unref
// hands it back to its backend.
#pragma once

#include <cstdint>
#include <vector>

#include "core/assert.hpp"

namespace tr::io {

class BufferPool {
 public:
  BufferPool(uint32_t buf_bytes, uint32_t count);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  uint32_t buf_bytes() const { return buf_bytes_; }
  uint32_t count() const { return count_; }
  char* data(uint16_t bid) const {
    TR_DASSERT(bid < count_);
    return base_ + static_cast<size_t>(bid) * buf_bytes_;
  }
  char* base() const { return base_; }

  void ref(uint16_t bid) {
    TR_DASSERT(refs_[bid] > 0);
    ++refs_[bid];
  }
  void unref(uint16_t bid) {
    TR_ASSERT(refs_[bid] > 0);
    if (--refs_[bid] == 0) recycle_(recycle_arg_, bid);
  }
  // A buffer was handed out (by the kernel or the free stack) with one reference.
  void on_handed_out(uint16_t bid) {
    TR_ASSERT(refs_[bid] == 0);
    refs_[bid] = 1;
    ++in_use_;
  }
  void on_returned() { --in_use_; }
  uint32_t in_use() const { return in_use_; }

  // The backend's way of taking a buffer back.
  void set_recycler(void (*fn)(void*, uint16_t), void* arg) { recycle_ = fn, recycle_arg_ = arg; }

 private:
  char* base_ = nullptr;
  uint32_t buf_bytes_;
  uint32_t count_;
  uint32_t in_use_ = 0;
  std::vector<uint16_t> refs_;
  void (*recycle_)(void*, uint16_t) = nullptr;
  void* recycle_arg_ = nullptr;
};

}  // namespace tr::io
