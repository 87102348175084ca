// The replica table: one cache-line-aligned slot per configured replica, shared
// by every thread of the process. Fixed capacity, allocated once at start (and
// on reload), never resized while workers run.
//
// Writers and readers:
//  - the poller thread is the only writer of health fields (up, last check);
//  - workers add and remove their own dispatch accounting (inflight) with
//    atomic read-modify-write; the slot is the only place they share.
// Readers use relaxed loads: each field is independently meaningful and a
// decision made on a value one scrape old is fine (issue 3 adds the scraped
// engine state behind a seqlock in the same slot).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace tr::scores {

struct alignas(64) ReplicaSlot {
  // Health, written by the poller.
  std::atomic<bool> up{true};
  std::atomic<int64_t> last_health_ms{0};      // mono ms of the last completed check
  std::atomic<int32_t> last_health_status{0};  // HTTP status, or -errno
  // Dispatch accounting, written by workers.
  std::atomic<int64_t> inflight{0};
};

class Table {
 public:
  explicit Table(size_t n) : n_(n), slots_(std::make_unique<ReplicaSlot[]>(n)) {}
  size_t size() const { return n_; }
  ReplicaSlot& at(size_t i) { return slots_[i]; }
  const ReplicaSlot& at(size_t i) const { return slots_[i]; }
  bool any_up() const {
    for (size_t i = 0; i < n_; ++i) {
      if (slots_[i].up.load(std::memory_order_relaxed)) return true;
    }
    return false;
  }

 private:
  size_t n_;
  std::unique_ptr<ReplicaSlot[]> slots_;
};

}  // namespace tr::scores
