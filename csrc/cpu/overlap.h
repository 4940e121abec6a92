// Memory shared between the tensors of one step (lars_npu/_sharing.py is the same check in
// Python, for the paths that do not come through the fused plan; a property test keeps the two
// in agreement). A step writes some tensors and reads others; when a written tensor shares a byte
// with any other tensor of the step, the result depends on the order of the writes, so the step
// is refused before anything is written. Ranges that are only read may overlap.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace lars {

struct ByteRange {
  uint64_t begin;  // first byte
  uint64_t end;    // one past the last byte (begin == end: empty, shares nothing)
  bool written;
  int64_t id;      // the caller's label, returned on a conflict
};

// Two ranges that overlap while at least one of them is written, as their ids, or {-1, -1}.
// O(n log n): sorted by start, a range conflicts with an earlier one exactly when it starts
// before the furthest end of the earlier ranges (all of them when it is written, the written
// ones when it is only read). Reorders `r`.
inline std::pair<int64_t, int64_t> find_conflict(std::vector<ByteRange>& r) {
  r.erase(std::remove_if(r.begin(), r.end(), [](const ByteRange& x) { return x.end <= x.begin; }),
          r.end());
  std::stable_sort(r.begin(), r.end(),
                   [](const ByteRange& a, const ByteRange& b) { return a.begin < b.begin; });
  uint64_t reach_all = 0, reach_written = 0;
  size_t who_all = 0, who_written = 0;
  bool any = false, any_written = false;
  for (size_t k = 0; k < r.size(); ++k) {
    const ByteRange& x = r[k];
    if (any && x.written && x.begin < reach_all) return {r[who_all].id, x.id};
    if (any_written && x.begin < reach_written) return {r[who_written].id, x.id};
    if (!any || x.end > reach_all) {
      reach_all = x.end;
      who_all = k;
      any = true;
    }
    if (x.written && (!any_written || x.end > reach_written)) {
      reach_written = x.end;
      who_written = k;
      any_written = true;
    }
  }
  return {-1, -1};
}

}  // namespace lars
