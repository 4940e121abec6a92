// The kernels' workspace kept resident in device memory between steps: each step the host still
// builds the whole workspace (lars_host_plan.h), compares it byte for byte with what the device
// buffer is known to hold, and sends only the ranges that differ. One header for every launcher:
// the staging runner (lars_staging.h: CANN's cpu / sim builds, and lars_npu's emulation, where CI
// runs it), the operators' NPU kernels (lars_npu_ops.cpp) and, through lars_npu._C
// (workspace_upload), the Python npu backend and the NPU cost model. Plain C++17: no torch, no
// CANN; device memory is reached through a memory policy, as in lars_staging.h.
//
// The rule (docs/ascend.md, "The resident workspace"): an upload is skipped only where a byte
// comparison of the host workspace with the bytes this buffer is KNOWN to hold says they are
// equal. Known means: sent to this very buffer (same address, same capacity, same layout) by a
// sync whose step then completed (commit). A new, reallocated or resized buffer, another layout,
// a sync or launch that threw, a step never committed: nothing is known, everything the step
// needs is sent. The regions the kernels write (the results) are never known: what a step needs
// of them comes from the host every step, or is written by the kernels before anything reads it.
//
// What a step needs of each region of a workspace (workspace_segments):
//   tables, per-step part   kCompare: sent where they differ from the known bytes
//   chunk sums              kNone when the square-sums kernel runs (it writes every chunk's two
//                           blocks whole before the λ kernel reads them), else kSend (the host's
//                           given sums, and zeros in every other chunk)
//   cores' flags            kZero when the square-sums kernel runs: it writes the flags of the
//                           cores it has, and the others must read 0 (the update kernel reads
//                           those of its block count, the host all kMaxCoreFlags); else kSend
//                           (the host's flag for non-finite given sums)
//   λ table                 kNone when the λ kernel runs (it writes every tensor's block), else
//                           kSend (the host's prefill, which read-back returns)
// A workspace without chunks runs no kernel at all (launch_on_stream returns early): then every
// results region is kSend.
//
// Memory policy `Mem` (as lars_staging.h's):
//   void to_device(uint64_t dst, const void* src, uint64_t bytes);
//   void zero(uint64_t dst, uint64_t bytes);   optional: without it, zeros are copied from the host
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../ascendc/lars_host_plan.h"

namespace lars_npu_host {
namespace resident {

// Regions, for counting what is sent (Counts::sent_by_region).
enum Region : int {
  kAddresses = 0,  // w, wsq, g, m address tables
  kChunks,         // the flat work list
  kTensorChunks,   // chunk ranges per tensor
  kTiling,         // the two tiling structs
  kParams,         // {wd, lr, mu, flags} per tensor
  kHyper,          // epsilon, coefficient, use_clip, guard
  kPartials,       // Σw², Σg² blocks per chunk
  kFlags,          // a non-finite flag per core
  kLambda,         // λ per tensor
  kIndex,          // a launcher's own tables (lars_npu_ops.cpp: chunk -> tensor of the call)
  kExtra,          // a launcher's own values (lars_npu_ops.cpp: given sums, host λ)
  kPadding,        // between a launcher's pieces
  kNumRegions
};

inline const char* region_name(int r) {
  static const char* const names[kNumRegions] = {
      "addresses", "chunks", "tensor_chunks", "tiling", "params", "hyper",
      "partials",  "flags",  "lambda",        "index",  "extra",  "padding"};
  return r >= 0 && r < kNumRegions ? names[r] : "?";
}

enum class Policy : uint8_t {
  kCompare,  // written by the host only: sent where it differs from the known bytes
  kSend,     // needed from the host, never known (kernels or device ops write it): sent whole
  kZero,     // needed as zeros: set on the device (sent from the host when not all zero there)
  kNone,     // written by the kernels before anything reads it: neither sent nor zeroed
};

struct Segment {
  uint64_t offset = 0, bytes = 0;
  int region = kPadding;
  Policy policy = Policy::kCompare;
};

inline bool same_compare_segments(const std::vector<Segment>& a, const std::vector<Segment>& b) {
  auto next = [](const std::vector<Segment>& s, size_t i) {
    while (i < s.size() && s[i].policy != Policy::kCompare) ++i;
    return i;
  };
  size_t i = next(a, 0), j = next(b, 0);
  for (; i < a.size() && j < b.size(); i = next(a, i + 1), j = next(b, j + 1)) {
    if (a[i].offset != b[j].offset || a[i].bytes != b[j].bytes) return false;
  }
  return i >= a.size() && j >= b.size();
}

// The segments of one workspace of layout L at byte `base` of a buffer, for a launch that runs
// the square-sums kernel (run_sq) and / or the λ and update kernels (run_update).
inline void workspace_segments(std::vector<Segment>& out, uint64_t base,
                               const lars_ascendc::host::Layout& L, bool run_sq,
                               bool run_update) {
  const bool runs = L.num_chunks > 0;  // a launch without chunks runs no kernel
  const bool sq = runs && run_sq, lam = runs && run_update;
  const struct {
    uint64_t begin, end;
    int region;
    Policy policy;
  } parts[] = {
      {L.w_addrs, L.chunks, kAddresses, Policy::kCompare},
      {L.chunks, L.tensor_chunks, kChunks, Policy::kCompare},
      {L.tensor_chunks, L.sq_tiling, kTensorChunks, Policy::kCompare},
      {L.sq_tiling, L.params, kTiling, Policy::kCompare},
      {L.params, L.hyper, kParams, Policy::kCompare},
      {L.hyper, L.partials, kHyper, Policy::kCompare},
      {L.partials, L.flags, kPartials, sq ? Policy::kNone : Policy::kSend},
      {L.flags, L.lambda, kFlags, sq ? Policy::kZero : Policy::kSend},
      {L.lambda, L.bytes, kLambda, lam ? Policy::kNone : Policy::kSend},
  };
  for (const auto& p : parts) {
    if (p.end > p.begin) out.push_back({base + p.begin, p.end - p.begin, p.region, p.policy});
  }
}

// A launcher's own bytes (never written by a kernel) from `begin` to `end`.
inline void host_segment(std::vector<Segment>& out, uint64_t begin, uint64_t end, int region) {
  if (end > begin) out.push_back({begin, end - begin, region, Policy::kCompare});
}

// Adds kCompare segments (region kPadding) for the bytes of [0, total) no segment covers: the
// alignment gaps between a launcher's pieces, which the host writes (zeros) and no kernel does.
inline void fill_gaps(std::vector<Segment>& segs, uint64_t total) {
  std::sort(segs.begin(), segs.end(),
            [](const Segment& a, const Segment& b) { return a.offset < b.offset; });
  std::vector<Segment> out;
  uint64_t at = 0;
  for (const Segment& s : segs) {
    if (s.offset > at) out.push_back({at, s.offset - at, kPadding, Policy::kCompare});
    out.push_back(s);
    at = std::max(at, s.offset + s.bytes);
  }
  if (total > at) out.push_back({at, total - at, kPadding, Policy::kCompare});
  segs.swap(out);
}

// Sorts the segments and checks that they tile [0, total) exactly, so that no byte is left out
// of the decision (a gap would be a byte the device never gets).
inline void check_tiling(std::vector<Segment>& segs, uint64_t total) {
  std::sort(segs.begin(), segs.end(),
            [](const Segment& a, const Segment& b) { return a.offset < b.offset; });
  uint64_t at = 0;
  for (const Segment& s : segs) {
    if (s.offset != at) {
      throw std::logic_error(
          "lars_npu: resident workspace segments leave a gap or overlap at byte " +
          std::to_string(at));
    }
    at += s.bytes;
  }
  if (at != total) throw std::logic_error("lars_npu: resident workspace segments do not cover it");
}

// One copy (or device-side zeroing) of [offset, offset + bytes).
struct Range {
  uint64_t offset = 0, bytes = 0;
  bool zero = false;
};

struct Counts {
  uint64_t sent = 0;    // bytes copied host -> device
  uint64_t zeroed = 0;  // bytes set to zero on the device (zero_by_copy: copied from the host)
  uint64_t copies = 0;  // separate copies and zeroings
  uint64_t compared = 0;  // bytes compared with the known ones
  bool full = false;      // nothing was known of the buffer
  bool zero_by_copy = false;
  uint64_t sent_by_region[kNumRegions] = {};
};

struct Plan {
  std::vector<Range> ranges;
  Counts counts;
};

// Ranges closer than this are sent as one copy (the bytes between are equal to the known ones, or
// needed anyway): a copy costs a call and a DMA set-up (microseconds), 8 KiB over PCIe a fraction
// of one.
constexpr uint64_t kMergeGap = 8192;
// At most this many copies per sync: beyond, the closest ranges are merged.
constexpr size_t kMaxCopies = 16;
// Comparison granule: differing bytes are sent in whole 32-byte blocks (of the buffer).
constexpr uint64_t kGranule = 32;

namespace detail {

inline bool all_zero(const uint8_t* p, uint64_t bytes) {
  for (uint64_t i = 0; i < bytes; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

// Appends [b, e) to runs, merging with the last run when they touch or are close.
inline void add_run(std::vector<std::pair<uint64_t, uint64_t>>& runs, uint64_t b, uint64_t e) {
  if (!runs.empty() && b <= runs.back().second + kMergeGap) {
    runs.back().second = std::max(runs.back().second, e);
  } else {
    runs.emplace_back(b, e);
  }
}

// Merges the runs separated by the smallest gaps (ties: the first) until at most `cap` remain.
inline void cap_runs(std::vector<std::pair<uint64_t, uint64_t>>& runs, size_t cap) {
  if (runs.size() <= cap) return;
  std::vector<size_t> order(runs.size() - 1);  // gap i lies between runs i and i + 1
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto gap = [&runs](size_t i) { return runs[i + 1].first - runs[i].second; };
  std::stable_sort(order.begin(), order.end(),
                   [&gap](size_t a, size_t b) { return gap(a) < gap(b); });
  std::vector<bool> merge(order.size(), false);
  for (size_t k = 0; k < runs.size() - cap; ++k) merge[order[k]] = true;
  std::vector<std::pair<uint64_t, uint64_t>> out{runs[0]};
  for (size_t i = 1; i < runs.size(); ++i) {
    if (merge[i - 1]) {
      out.back().second = runs[i].second;
    } else {
      out.push_back(runs[i]);
    }
  }
  runs.swap(out);
}

}  // namespace detail

// What to send of `cur` (the host workspace, segs tiling it) to a buffer known to hold `known`
// in the kCompare segments (nullptr: nothing known).
inline Plan plan(const std::vector<Segment>& segs, const uint8_t* cur, const uint8_t* known) {
  Plan p;
  p.counts.full = known == nullptr;
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  std::vector<Range> zeros;
  for (const Segment& s : segs) {
    if (s.bytes == 0) continue;
    const uint64_t end = s.offset + s.bytes;
    switch (s.policy) {
      case Policy::kNone:
        break;
      case Policy::kSend:
        detail::add_run(runs, s.offset, end);
        break;
      case Policy::kZero:
        if (detail::all_zero(cur + s.offset, s.bytes)) {
          zeros.push_back({s.offset, s.bytes, true});
        } else {  // the host wants something else there: send it
          detail::add_run(runs, s.offset, end);
        }
        break;
      case Policy::kCompare:
        if (known == nullptr) {
          detail::add_run(runs, s.offset, end);
          break;
        }
        p.counts.compared += s.bytes;
        for (uint64_t b = s.offset; b < end;) {
          const uint64_t e = std::min(end, (b / kGranule + 1) * kGranule);
          if (std::memcmp(cur + b, known + b, e - b) != 0) detail::add_run(runs, b, e);
          b = e;
        }
        break;
    }
  }
  detail::cap_runs(runs, kMaxCopies);
  for (const auto& [b, e] : runs) {
    p.ranges.push_back({b, e - b, false});
    p.counts.sent += e - b;
    // bytes per region: the run against every segment it overlaps
    for (const Segment& s : segs) {
      const uint64_t lo = std::max(b, s.offset), hi = std::min(e, s.offset + s.bytes);
      if (hi > lo) p.counts.sent_by_region[s.region] += hi - lo;
    }
  }
  for (const Range& z : zeros) {
    // a zeroing inside a sent run is part of that copy (its host bytes are zero)
    bool inside = false;
    for (const auto& [b, e] : runs) inside = inside || (z.offset >= b && z.offset + z.bytes <= e);
    if (inside) continue;
    p.ranges.push_back(z);
    p.counts.zeroed += z.bytes;
  }
  p.counts.copies = p.ranges.size();
  return p;
}

namespace detail {
template <typename Mem, typename = void>
struct has_zero : std::false_type {};
template <typename Mem>
struct has_zero<Mem, std::void_t<decltype(std::declval<Mem&>().zero(uint64_t{}, uint64_t{}))>>
    : std::true_type {};
}  // namespace detail

// Carries out a plan on the buffer at `addr`: copies from `cur`, zeroes on the device.
template <typename Mem>
void apply(Mem& mem, uint64_t addr, const uint8_t* cur, Plan& p) {
  for (const Range& r : p.ranges) {
    if (!r.zero) {
      mem.to_device(addr + r.offset, cur + r.offset, r.bytes);
    } else if constexpr (detail::has_zero<Mem>::value) {
      mem.zero(addr + r.offset, r.bytes);
    } else {  // a policy that cannot set device memory: zeros from the host
      p.counts.zero_by_copy = true;
      static const uint8_t zeros[4096] = {};
      for (uint64_t done = 0; done < r.bytes; done += sizeof(zeros)) {
        mem.to_device(addr + r.offset + done, zeros,
                      std::min<uint64_t>(sizeof(zeros), r.bytes - done));
      }
    }
  }
}

// What one device buffer is known to hold. Not thread-safe: one step at a time per buffer (the
// launchers lease a buffer to one step; lars_npu_ops.cpp, lars_staging.h).
class Resident {
 public:
  // Brings the buffer at `addr` (`capacity` bytes) to what the step described by `segs` needs of
  // the host workspace `cur` (segs tile [0, total)), on the memory policy `mem`. Until commit(),
  // nothing is known of the buffer: an exception anywhere from here on (a copy, the launch)
  // leaves it unknown, and the next sync sends everything.
  template <typename Mem>
  Counts sync(Mem& mem, uint64_t addr, uint64_t capacity, const uint8_t* cur, uint64_t total,
              std::vector<Segment> segs) {
    check_tiling(segs, total);
    if (total > capacity) throw std::logic_error("lars_npu: workspace larger than its buffer");
    const bool known = valid_ && addr == addr_ && capacity == capacity_ && total == total_ &&
                       same_compare_segments(segs, segs_);
    valid_ = false;  // from here on, until commit()
    Plan p = plan(segs, cur, known ? shadow_.data() : nullptr);
    if (!known) {
      shadow_.assign(total, 0);
      segs_.clear();
    }
    apply(mem, addr, cur, p);
    // the buffer now holds cur wherever a kCompare segment is (sent, or compared equal)
    for (const Range& r : p.ranges) {
      if (!r.zero) std::memcpy(shadow_.data() + r.offset, cur + r.offset, r.bytes);
    }
    addr_ = addr;
    capacity_ = capacity;
    total_ = total;
    segs_ = std::move(segs);
    pending_ = true;
    return p.counts;
  }

  // The step that used the synced buffer completed: what sync sent is known from now on.
  void commit() {
    if (pending_) valid_ = true;
    pending_ = false;
  }

  // Nothing is known of the buffer any more (it was freed, or a step failed).
  void invalidate() {
    valid_ = false;
    pending_ = false;
  }

  bool known() const { return valid_; }

  // Bytes of `cur` in kCompare segments that differ from what the buffer at `addr` is known to
  // hold (of `compared`), or known = false when nothing is known of it for these segments: for
  // choosing among buffers (the choice never decides what is sent: sync does).
  struct Difference {
    bool known = false;
    uint64_t differ = 0, compared = 0;
  };
  Difference differing(uint64_t addr, uint64_t capacity, const uint8_t* cur, uint64_t total,
                       std::vector<Segment> segs) const {
    check_tiling(segs, total);
    Difference d;
    if (!(valid_ && addr == addr_ && capacity == capacity_ && total == total_ &&
          same_compare_segments(segs, segs_))) {
      return d;
    }
    d.known = true;
    for (const Segment& s : segs) {
      if (s.policy != Policy::kCompare) continue;
      d.compared += s.bytes;
      for (uint64_t b = s.offset, end = s.offset + s.bytes; b < end;) {
        const uint64_t e = std::min(end, (b / kGranule + 1) * kGranule);
        if (std::memcmp(cur + b, shadow_.data() + b, e - b) != 0) d.differ += e - b;
        b = e;
      }
    }
    return d;
  }

 private:
  bool valid_ = false, pending_ = false;
  uint64_t addr_ = 0, capacity_ = 0, total_ = 0;
  std::vector<Segment> segs_;
  std::vector<uint8_t> shadow_;  // the buffer's bytes in segs_'s kCompare segments, as sent
};

// The plan for one workspace of layout (n, nc) between two host workspaces, `previous` (what the
// buffer holds from the last step; nullptr: a new buffer) and `current`: what lars_npu._C's
// workspace_upload reports, for the cost model.
inline Plan workspace_plan(uint64_t n, uint64_t nc, const uint8_t* previous,
                           const uint8_t* current, bool run_sq, bool run_update) {
  const lars_ascendc::host::Layout L = lars_ascendc::host::make_layout(n, nc);
  std::vector<Segment> segs;
  workspace_segments(segs, 0, L, run_sq, run_update);
  check_tiling(segs, L.bytes);
  return plan(segs, current, previous);
}

}  // namespace resident
}  // namespace lars_npu_host
