// Per-loop timers: a binary min-heap of intrusive Timer nodes (no allocation
// per timer once the heap's vector has grown). Millisecond resolution, monotonic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tr::io {

class TimerHandler {
 public:
  virtual void on_timer(uintptr_t tag) = 0;

 protected:
  ~TimerHandler() = default;
};

struct Timer {
  int64_t deadline_ms = 0;
  int32_t heap_index = -1;  // -1 = not armed
  TimerHandler* handler = nullptr;
  uintptr_t tag = 0;
  bool armed() const { return heap_index >= 0; }
};

class Timers {
 public:
  // Arms (or re-arms) <t> to fire at now + <after_ms>.
  void arm(Timer* t, int64_t now_ms, int64_t after_ms);
  void disarm(Timer* t);
  // Milliseconds until the next deadline (0 if due), or -1 when none is armed.
  int64_t next_in_ms(int64_t now_ms) const;
  // Fires every timer due at <now_ms>. A handler may arm or disarm any timer.
  void fire_due(int64_t now_ms);
  size_t size() const { return heap_.size(); }

 private:
  void sift_up(size_t i);
  void sift_down(size_t i);
  void swap_nodes(size_t a, size_t b);
  std::vector<Timer*> heap_;
};

}  // namespace tr::io
