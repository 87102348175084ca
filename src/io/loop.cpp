// Backend-independent parts of the loop: the buffer pool's memory, socket
// creation, the buffer-waiter list and the backend choice.
#include "io/loop.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/assert.hpp"

namespace tr::io {

BufferPool::BufferPool(uint32_t buf_bytes, uint32_t count)
    : buf_bytes_(buf_bytes), count_(count), refs_(count, 0) {
  TR_ASSERT(count > 0 && count <= 32768);
  TR_ASSERT((count & (count - 1)) == 0);
  size_t total = static_cast<size_t>(buf_bytes) * count;
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TR_ASSERT(p != MAP_FAILED);
  base_ = static_cast<char*>(p);
}

BufferPool::~BufferPool() {
  munmap(base_, static_cast<size_t>(buf_bytes_) * count_);
}

int Loop::new_stream_socket(int family) {
  int type = SOCK_STREAM | SOCK_CLOEXEC;
  if (backend() == Backend::epoll) type |= SOCK_NONBLOCK;
  int fd = ::socket(family, type, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

void Loop::tune_accepted(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void Loop::wait_for_buffers(Socket* s) {
  if (s->waiting_bufs_) return;
  s->waiting_bufs_ = true;
  s->next_wait_ = nullptr;
  if (wait_tail_) {
    wait_tail_->next_wait_ = s;
  } else {
    wait_head_ = s;
  }
  wait_tail_ = s;
}

Socket* Loop::take_buffer_waiter() {
  Socket* s = wait_head_;
  if (!s) return nullptr;
  wait_head_ = s->next_wait_;
  if (!wait_head_) wait_tail_ = nullptr;
  s->next_wait_ = nullptr;
  s->waiting_bufs_ = false;
  return s;
}

void Loop::forget_buffer_waiter(Socket* s) {
  if (!s->waiting_bufs_) return;
  Socket* prev = nullptr;
  for (Socket* it = wait_head_; it; prev = it, it = it->next_wait_) {
    if (it != s) continue;
    if (prev) {
      prev->next_wait_ = it->next_wait_;
    } else {
      wait_head_ = it->next_wait_;
    }
    if (wait_tail_ == it) wait_tail_ = prev;
    break;
  }
  s->waiting_bufs_ = false;
  s->next_wait_ = nullptr;
}

Loop* make_uring_loop(const LoopOptions& opt, char* why, size_t why_len);
Loop* make_epoll_loop(const LoopOptions& opt, char* why, size_t why_len);

Loop* make_loop(const LoopOptions& opt, char* why, size_t why_len) {
  if (opt.want == LoopOptions::Want::epoll) {
    Loop* l = make_epoll_loop(opt, why, why_len);
    if (l) std::snprintf(why, why_len, "epoll (configured: io = epoll)");
    return l;
  }
  char uring_why[256] = "";
  Loop* l = make_uring_loop(opt, uring_why, sizeof uring_why);
  if (l) {
    std::snprintf(why, why_len, "%s", l->describe());
    return l;
  }
  if (opt.want == LoopOptions::Want::io_uring) {
    std::snprintf(why, why_len, "io_uring unavailable (configured: io = io_uring): %s", uring_why);
    return nullptr;
  }
  l = make_epoll_loop(opt, why, why_len);
  if (l) std::snprintf(why, why_len, "epoll (io_uring unavailable: %s)", uring_why);
  return l;
}

}  // namespace tr::io
