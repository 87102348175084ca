#include "io/timer.hpp"

#include "core/assert.hpp"

namespace tr::io {

void Timers::swap_nodes(size_t a, size_t b) {
  Timer* ta = heap_[a];
  Timer* tb = heap_[b];
  heap_[a] = tb;
  heap_[b] = ta;
  tb->heap_index = static_cast<int32_t>(a);
  ta->heap_index = static_cast<int32_t>(b);
}

void Timers::sift_up(size_t i) {
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (heap_[parent]->deadline_ms <= heap_[i]->deadline_ms) break;
    swap_nodes(parent, i);
    i = parent;
  }
}

void Timers::sift_down(size_t i) {
  const size_t n = heap_.size();
  for (;;) {
    size_t l = 2 * i + 1;
    size_t r = l + 1;
    size_t m = i;
    if (l < n && heap_[l]->deadline_ms < heap_[m]->deadline_ms) m = l;
    if (r < n && heap_[r]->deadline_ms < heap_[m]->deadline_ms) m = r;
    if (m == i) break;
    swap_nodes(i, m);
    i = m;
  }
}

void Timers::arm(Timer* t, int64_t now_ms, int64_t after_ms) {
  TR_ASSERT(t->handler != nullptr);
  int64_t deadline = now_ms + after_ms;
  if (t->armed()) {
    int64_t old = t->deadline_ms;
    t->deadline_ms = deadline;
    if (deadline < old) {
      sift_up(static_cast<size_t>(t->heap_index));
    } else {
      sift_down(static_cast<size_t>(t->heap_index));
    }
    return;
  }
  t->deadline_ms = deadline;
  t->heap_index = static_cast<int32_t>(heap_.size());
  heap_.push_back(t);
  sift_up(heap_.size() - 1);
}

void Timers::disarm(Timer* t) {
  if (!t->armed()) return;
  size_t i = static_cast<size_t>(t->heap_index);
  size_t last = heap_.size() - 1;
  if (i != last) swap_nodes(i, last);
  heap_.pop_back();
  t->heap_index = -1;
  if (i < heap_.size()) {
    sift_down(i);
    sift_up(i);
  }
}

int64_t Timers::next_in_ms(int64_t now_ms) const {
  if (heap_.empty()) return -1;
  int64_t d = heap_[0]->deadline_ms - now_ms;
  return d < 0 ? 0 : d;
}

void Timers::fire_due(int64_t now_ms) {
  while (!heap_.empty() && heap_[0]->deadline_ms <= now_ms) {
    Timer* t = heap_[0];
    disarm(t);
    t->handler->on_timer(t->tag);
  }
}

}  // namespace tr::io
