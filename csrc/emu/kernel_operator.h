// lars_npu's own HOST EMULATION of the subset of the AscendC API (kernel_operator.h) that the
// kernels in csrc/ascendc/ use. It is not CANN's CPU-debug mode or simulator, and passing it is
// no claim that a kernel ran on Ascend hardware. It follows the documented semantics and refuses
// what the hardware refuses, each with a clear message (thrown as AscendC::emu::Violation):
//   - DataCopy of a length that is not a whole number of 32-byte blocks, or to/from a Unified
//     Buffer (UB) address that is not 32-byte aligned, or outside the GlobalTensor's buffer;
//   - UB use beyond the emulated SoC's size (TPipe::InitBuffer);
//   - DeQue of an empty queue, AllocTensor with every buffer of a queue in use, EnQue of more
//     tensors than the queue's depth;
//   - use of a LocalTensor after FreeTensor, or access outside its length;
//   - a use of a UB buffer by one pipe (S scalar, V vector, MTE2 GM->UB, MTE3 UB->GM) after
//     another pipe wrote it, or a write after another pipe read it, with nothing in between
//     that orders the two: a SetFlag/WaitFlag<HardEvent::X_Y> pair (transitively: V->S then
//     S->MTE3 orders V before MTE3), the EnQue/DeQue hand-off of a VECIN (MTE2->V) or VECOUT
//     (V->MTE3) queue for what was issued before the EnQue, or FreeTensor -> AllocTensor
//     (V->MTE2 for VECIN, MTE3->V for VECOUT). Hardware runs the pipes concurrently; this
//     catches the races the in-order emulation would otherwise hide (e.g. a scalar SetValue
//     copied out to GM without an S->MTE3 wait). The queues' events are pipe barriers, as on
//     hardware, and order transitively like SetFlag/WaitFlag;
//   - a scalar GetValue of global memory without a DataCacheCleanAndInvalid in this launch after
//     every DMA write to it (the host's tables, an earlier launch's output, this launch's copies);
//   - a DMA whose global-memory address is not 32-byte aligned (lars_npu's rule, see
//     check_gm_alignment);
//   - UB use beyond 184 KiB of A2's 192 (the top 8 KiB are API scratch on 2201);
//   - FreeTensor of a const LocalTensor or a temporary (a compile error: the real signature takes
//     LocalTensor<T>&);
//   - WaitFlag of an event that was not set, SetFlag of one already set, a SetFlag never
//     waited for by the end of the kernel;
//   - DataCopyPad to or from a buffer that is not VECIN / VECOUT (Atlas A2/A3);
//   - Sqrt of a non-positive value (undefined on hardware);
//   - with auto-sync off (LaunchOptions::auto_sync: as built without --cce-auto-sync), a vector
//     instruction that reads UB an earlier one wrote, or writes UB one read or wrote, with no
//     PipeBarrier<PIPE_V>, V->S wait or chain of pipe events between them (emu::vector_deps);
//   - a ReduceSum work tensor smaller than the docs ask for, or overlapping the source (lars_npu's
//     rule: A2 ignores it, other SoCs write it).
// DataCopy on hardware silently rounds a length down to whole 32-byte blocks; the emulation
// refuses it instead (use DataCopyPad for a ragged tail). DataCopyPad GM->UB fills the rest of
// the last 32-byte block with NaN bytes unless padding is asked for, so a kernel that reads
// those lanes shows it.
// ReduceSum follows A2's implementation (see its comment): scalar store of dst, syncs by the
// call, work tensor untouched, a pairwise (not sequential) summation order. WholeReduceSum too:
// one vcadd, each repeat's sum written to UB by the vector unit.
// A2's two floating-point modes (CTRL[48], see emu::saturating): every launch starts in the mode
// the caller asks for (LaunchOptions::saturation; the stream's mode on hardware), a kernel may
// switch with SetSaturationFlag<SaturationMode::FLOAT> and must put back what it found. In
// saturation mode every fp16 result of a vector instruction or conversion that would be ±inf is
// ±65504 and every NaN is 0 (fp16 inputs of a conversion to fp32 included); fp32 stays IEEE.
// AI cores run one after another (emu::Launch), forward, reversed or shuffled as the caller asks
// (a kernel's results must not depend on it), each with its own UB, so per-core partials handed
// over through global memory are real. Per core and launch the emulation counts bytes and
// instructions moved by DMA, scalar GM reads, vector instructions and elements, waits, barriers,
// V->S round trips and what the scalar unit issued while the pipes were drained (emu::Counters).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../cpu/dtypes.h"

#define __aicore__
#define __global__
#define __gm__
// The kernel type (vector-only kernels on Atlas A2/A3); nothing to do on the emulation.
#define KERNEL_TASK_TYPE_DEFAULT(type)

using GM_ADDR = uint8_t*;

// The emulated kernels get their own symbol names (lars_emu_*), so a CANN build of the same
// source can be linked into the same module without a clash: CMakeLists.txt renames every entry
// point for the lars_emu target.

// fp16 storage type of the kernels (the compiler's `half` on Ascend), converted with
// round-to-nearest-even.
struct half {
  uint16_t bits = 0;
  half() = default;
  explicit half(float f) : bits(lars::float_to_half(f)) {}
  explicit operator float() const { return lars::half_to_float(bits); }
};

// Event ids handed out by TPipe::FetchEventID (a global enum in AscendC).
enum event_t : int8_t { EVENT_ID0 = 0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5,
                        EVENT_ID6, EVENT_ID7 };

// The pipes PipeBarrier takes (a global enum in AscendC, as the compiler's pipe_t).
enum pipe_t : uint8_t { PIPE_S = 0, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_ALL,
                        PIPE_FIX };

namespace AscendC {

enum class TPosition { GM, VECIN, VECOUT, VECCALC };
using QuePosition = TPosition;
constexpr int32_t ONE_BLK_SIZE = 32;
using TEventID = int8_t;

// Synchronisation between the pipes of an AI core: X_Y orders pipe Y after pipe X.
enum class HardEvent { MTE2_V, V_MTE2, MTE2_S, S_MTE2, V_MTE3, MTE3_V, V_S, S_V, S_MTE3, MTE3_S,
                       MTE2_MTE3, MTE3_MTE2 };

enum class CacheLine { SINGLE_CACHE_LINE, ENTIRE_DATA_CACHE };
enum class DcciDst { CACHELINE_ALL, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC };

// The saturation switches of the CTRL register (AscendC's SaturationMode): FLOAT is CTRL[48], the
// only one the emulation models (SetSaturationFlag / GetSaturationFlag).
enum class SaturationMode : uint8_t { FLOAT, FLOAT8, INT, CAST };

namespace emu {

enum Pipe : int { NONE = 0, S, V, MTE2, MTE3, NUM_PIPES };

// Atlas A2 (__NPU_ARCH__ 2201): 192 KiB of UB per vector core (TOTAL_UB_SIZE in asc-devkit's
// impl/basic_api/utils/kernel_utils_constants.h).
constexpr uint64_t kUbTotalA2 = 192 * 1024;

inline const char* pipe_name(int p) {
  static const char* names[] = {"none", "S (scalar)", "V (vector)", "MTE2 (GM->UB)",
                                "MTE3 (UB->GM)"};
  return names[p];
}

constexpr int event_from(HardEvent e) {
  switch (e) {
    case HardEvent::MTE2_V: case HardEvent::MTE2_S: case HardEvent::MTE2_MTE3: return MTE2;
    case HardEvent::V_MTE2: case HardEvent::V_MTE3: case HardEvent::V_S: return V;
    case HardEvent::S_MTE2: case HardEvent::S_V: case HardEvent::S_MTE3: return S;
    case HardEvent::MTE3_V: case HardEvent::MTE3_S: case HardEvent::MTE3_MTE2: return MTE3;
  }
  return NONE;
}

constexpr int event_to(HardEvent e) {
  switch (e) {
    case HardEvent::V_MTE2: case HardEvent::S_MTE2: case HardEvent::MTE3_MTE2: return MTE2;
    case HardEvent::MTE2_V: case HardEvent::S_V: case HardEvent::MTE3_V: return V;
    case HardEvent::MTE2_S: case HardEvent::V_S: case HardEvent::MTE3_S: return S;
    case HardEvent::V_MTE3: case HardEvent::S_MTE3: case HardEvent::MTE2_MTE3: return MTE3;
  }
  return NONE;
}

class Violation : public std::runtime_error {
 public:
  explicit Violation(const std::string& what) : std::runtime_error("AscendC emulation: " + what) {}
};

// What the emulated cores did, per core and per launch: the inputs of lars_npu's NPU cost model
// (counted, never timed; see README "AscendC kernels").
// The last four are the latency inputs of the model (lars_npu/_backends/emu.py, step_cost): the
// scalar unit issues every instruction in order, so when it waits for another pipe (WaitFlag<X_S>,
// or the V->S sync ReduceSum performs itself) nothing new is queued behind the pipes until the
// wait is over: the core is "drained", and the next GM->UB copy pays the full DMA latency
// (pipe_fills), as does every scalar read of global memory issued before it (exposed_gm_reads).
// The launch starts drained. A scalar GM read while loads are queued is hidden behind them.
struct Counters {
  uint64_t gm_to_ub_bytes = 0;    // DataCopy / DataCopyPad GM -> UB
  uint64_t ub_to_gm_bytes = 0;    // DataCopy / DataCopyPad UB -> GM
  uint64_t scalar_gm_reads = 0;   // GlobalTensor::GetValue
  uint64_t vector_instrs = 0;     // vector API calls (each one instruction stream of `count`)
  uint64_t queue_waits = 0;       // DeQue, and AllocTensor of a freed buffer (the queues' events)
  uint64_t flag_waits = 0;        // WaitFlag, and the syncs API calls perform themselves
  uint64_t ub_bytes = 0;          // Unified Buffer the core's TPipe took (32-byte blocks)
  uint64_t dma_ops = 0;           // DataCopy / DataCopyPad instructions, both directions
  uint64_t vector_elems = 0;      // elements the vector instructions went over (their counts)
  uint64_t v_barriers = 0;        // PipeBarrier<PIPE_V> and PipeBarrier<PIPE_ALL>
  uint64_t vs_round_trips = 0;    // V->S waits: WaitFlag<V_S>, and ReduceSum's own
  uint64_t pipe_fills = 0;        // GM->UB copies issued while drained (see above)
  uint64_t exposed_gm_reads = 0;  // scalar GM reads issued while drained
};

// State shared by the cores of one launch: global-memory writes by DMA, numbered with the data
// cache maintenance of every core (gm_seq), for the DataCacheCleanAndInvalid rule.
struct LaunchState {
  uint64_t gm_seq = 0;
  std::map<uintptr_t, std::pair<uintptr_t, uint64_t>> dma_writes;  // start -> (end, gm_seq)
  uintptr_t longest_write = 0;
};

// The core being emulated: its block index, the launch's block count and its Unified Buffer.
struct Core {
  int64_t block_idx = 0;
  int64_t block_num = 1;
  std::vector<uint8_t> ub;  // UB bytes of the SoC (e.g. 192 KiB on Atlas A2 / 910B)
  size_t ub_used = 0;
  size_t ub_usable = 0;     // what TPipe may allocate: 184 KiB of A2's 192 (see Launch)
  uint64_t seq = 0;  // count of UB accesses, for the pipe-order checks
  // waited[x][y] = k: every use of UB by pipe x numbered below k is done before pipe y goes on
  uint64_t waited[NUM_PIPES][NUM_PIPES] = {};
  struct Flag {
    int event, id;
    uint64_t seq;                 // UB accesses issued before the SetFlag
    uint64_t before[NUM_PIPES];   // waited[x][from] at the SetFlag: what `from` had waited for
  };
  std::vector<Flag> flags_set;  // set and not yet waited for
  // Data cache: gm_seq of this core's last DataCacheCleanAndInvalid of the entire cache, and of
  // single lines (64-byte line index -> gm_seq); 0: none in this launch.
  uint64_t dcci_all = 0;
  std::map<uintptr_t, uint64_t> dcci_lines;
  LaunchState* launch = nullptr;
  Counters count;
  // CTRL[48] as a flag: true = 0, saturation mode; false = 1, INF_NAN (IEEE) mode.
  bool saturating = true;
  // The scalar unit waited for another pipe and has issued no GM->UB copy since (Counters).
  bool drained = true;
  // With auto-sync off (LaunchOptions::auto_sync): the UB ranges vector instructions read and
  // wrote, not yet known to be complete (emu::vector_deps).
  bool auto_sync = true;
  struct VectorUse {
    uint64_t begin, end;  // UB bytes
    bool write;
    uint64_t seq;  // the instruction's place among the core's UB accesses
    const char* op;
  };
  std::vector<VectorUse> vector_uses;
};

inline Core*& current() {
  thread_local Core* core = nullptr;
  return core;
}

inline Core& core() {
  Core* c = current();
  if (c == nullptr) throw Violation("kernel API used outside emu::Launch");
  return *c;
}

// How emu::Launch runs the cores of the next launches (set by the caller, per thread): the
// order, and where the per-core counters go.
//   order 0: block index 0, 1, ... (forward); -1: reverse; k > 0: a shuffle seeded with k.
// Hardware runs the cores concurrently, so a kernel's results must not depend on the order: the
// tests run every kernel in several orders and require identical bytes.
// saturation: the floating-point mode every core starts a launch in, as the runtime sets CTRL[48]
// from the stream's mode on hardware (aclrtSetDeviceSatMode; torch_npu's INF_NAN_MODE_ENABLE):
// true saturation, false INF_NAN. Saturation by default: the register's reset value, and the mode
// in which a kernel that relies on fp16 inf/NaN fails.
// auto_sync: whether the kernel is taken to be built with the compiler's --cce-auto-sync (CANN's
// default), which inserts PipeBarrier<PIPE_V> between dependent vector instructions on A2 (2201).
// Off, the emulation refuses a vector instruction that reads or writes UB an earlier vector
// instruction wrote, or writes UB one read, unless a PipeBarrier<PIPE_V> (or <PIPE_ALL>), a V->S
// wait, or a chain of pipe events (e.g. a VECOUT buffer copied out, freed and allocated again)
// orders the two (emu::vector_deps). On by default: today's behaviour.
struct LaunchOptions {
  int64_t order = 0;
  std::vector<Counters>* counters = nullptr;  // per core, appended per launch when set
  bool saturation = true;
  bool auto_sync = true;
};

inline LaunchOptions& launch_options() {
  thread_local LaunchOptions options;
  return options;
}

inline std::vector<int64_t> core_order(int64_t block_dim, int64_t order) {
  std::vector<int64_t> idx(static_cast<size_t>(block_dim));
  for (int64_t b = 0; b < block_dim; ++b) idx[static_cast<size_t>(b)] = b;
  if (order == -1) {
    std::reverse(idx.begin(), idx.end());
  } else if (order > 0) {  // Fisher-Yates with a fixed generator: the same order on every host
    std::mt19937_64 gen(static_cast<uint64_t>(order));
    for (size_t i = idx.size(); i > 1; --i) {
      std::swap(idx[i - 1], idx[static_cast<size_t>(gen() % i)]);
    }
  } else if (order != 0) {
    throw Violation("core order: 0 (forward), -1 (reverse) or a positive shuffle seed");
  }
  return idx;
}

// On Atlas A2 (2201) the top 8 KiB of the 192 KiB UB are scratch of some APIs (TMP_UB_OFFSET =
// TOTAL_VEC_LOCAL_SIZE = 184 KiB in asc-devkit's kernel_utils_constants.h): a kernel's TPipe
// gets 184 KiB. The emulation models A2: of any `ub_bytes`, the top 8 KiB are reserved.
constexpr size_t kUbReservedA2 = 8 * 1024;

// Runs `kernel` once per block index 0..block_dim-1, in the order of launch_options(), each on a
// fresh core with `ub_bytes` of UB (of which ub_bytes - 8 KiB are usable).
inline void Launch(int64_t block_dim, size_t ub_bytes, const std::function<void()>& kernel) {
  if (block_dim <= 0) throw Violation("blockDim must be positive");
  if (ub_bytes <= kUbReservedA2) throw Violation("Unified Buffer smaller than A2's reserve");
  const LaunchOptions opts = launch_options();
  LaunchState state;
  std::vector<Counters> counts(static_cast<size_t>(block_dim));
  for (int64_t b : core_order(block_dim, opts.order)) {
    Core c;
    c.block_idx = b;
    c.block_num = block_dim;
    c.ub.assign(ub_bytes, 0);
    c.ub_usable = ub_bytes - kUbReservedA2;
    c.launch = &state;
    c.saturating = opts.saturation;
    c.auto_sync = opts.auto_sync;
    current() = &c;
    try {
      kernel();
      if (!c.flags_set.empty()) {
        throw Violation("a SetFlag was never waited for (SetFlag and WaitFlag come in pairs)");
      }
      // lars_npu's rule: the register outlives the kernel on its core, so a kernel that changes
      // the floating-point mode puts back the one its stream gave it
      if (c.saturating != opts.saturation) {
        throw Violation("the kernel ended in another floating-point mode than it started in "
                        "(SetSaturationFlag<SaturationMode::FLOAT> without restoring CTRL[48])");
      }
    } catch (...) {
      current() = nullptr;
      throw;
    }
    current() = nullptr;
    c.count.ub_bytes = c.ub_used;
    counts[static_cast<size_t>(b)] = c.count;
  }
  if (opts.counters != nullptr) {
    opts.counters->insert(opts.counters->end(), counts.begin(), counts.end());
  }
}

// Global memory [addr, addr + bytes) written by DMA (UB -> GM) in this launch.
inline void dma_wrote(const void* addr, uint64_t bytes) {
  Core& c = core();
  const auto start = reinterpret_cast<uintptr_t>(addr);
  c.launch->dma_writes[start] = {start + bytes, ++c.launch->gm_seq};
  if (bytes > c.launch->longest_write) c.launch->longest_write = bytes;
  c.count.ub_to_gm_bytes += bytes;
  ++c.count.dma_ops;
}

// A GM -> UB copy of `bytes` is issued: the first one after a drain refills the DMA pipe.
inline void dma_read(uint64_t bytes) {
  Core& c = core();
  c.count.gm_to_ub_bytes += bytes;
  ++c.count.dma_ops;
  if (c.drained) ++c.count.pipe_fills;
  c.drained = false;
}

// A scalar read of global memory goes through the core's data cache, which may hold a line from
// before (an earlier launch on this core, the host's copy of the tables, this launch's DMA
// writes): refused unless a DataCacheCleanAndInvalid covering it came after every DMA write to
// it in this launch (and at all in this launch).
inline void scalar_gm_read(const void* addr, size_t bytes) {
  Core& c = core();
  ++c.count.scalar_gm_reads;
  if (c.drained) ++c.count.exposed_gm_reads;
  const auto a = reinterpret_cast<uintptr_t>(addr);
  uint64_t dcci = c.dcci_all;
  for (uintptr_t line = a / 64; line <= (a + bytes - 1) / 64; ++line) {
    auto it = c.dcci_lines.find(line);
    const uint64_t seen = it == c.dcci_lines.end() ? 0 : it->second;
    if (seen > dcci) dcci = seen;  // (one line covers every read the kernels make)
  }
  if (dcci == 0) {
    throw Violation("GlobalTensor::GetValue without a DataCacheCleanAndInvalid first in this "
                    "launch: the data cache may hold a stale line (host copy, earlier launch)");
  }
  const auto& writes = c.launch->dma_writes;
  auto it = writes.upper_bound(a + bytes - 1);
  while (it != writes.begin()) {
    --it;
    if (it->first + c.launch->longest_write <= a) break;  // no earlier write reaches `a`
    if (it->second.first > a && it->second.second > dcci) {
      throw Violation("GlobalTensor::GetValue of global memory written by DMA in this launch "
                      "after the last DataCacheCleanAndInvalid (a stale cache line)");
    }
  }
}

// A pipe event: `from` -> `to`, set when `from` had issued the UB accesses numbered up to `seq`.
struct Event {
  bool set = false;
  int from = NONE, to = NONE;
  uint64_t seq = 0;
  uint64_t before[NUM_PIPES] = {};  // waited[x][from] at the set: what `from` had waited for
};

// Liveness of one queue/buffer slot, shared by the LocalTensors handed out for it, and what the
// pipe-order checks need: the last write, the reads since, and the queue edges.
struct Slot {
  uint8_t* data = nullptr;
  uint32_t bytes = 0;
  uint32_t ub_offset = 0;
  int pos = 0;              // TPosition of the queue or buffer
  bool allocated = false;   // between AllocTensor and FreeTensor
  uint64_t generation = 0;
  int writer = NONE;        // the pipe that wrote the buffer last
  uint64_t write_seq = 0;
  uint64_t read_seq[NUM_PIPES] = {};  // last read by each pipe since that write (0: none)
  // A queue's own events: EnQue sets one (producer -> consumer) that DeQue waits for, and
  // FreeTensor sets one (consumer -> next producer) that the next AllocTensor waits for.
  Event enqueued, freed;
};

// The queue-event counterpart of SetFlag: what `from` issued so far, and what it had waited for.
inline Event set_event(int from, int to) {
  const Core& c = core();
  Event e{true, from, to, c.seq, {}};
  for (int x = 0; x < NUM_PIPES; ++x) e.before[x] = c.waited[x][from];
  return e;
}

// What a wait of pipe `to` for pipe `from` means beyond the pair: when the scalar unit waits
// (to == S) it issues nothing until the wait is over, so the core is drained (Counters), and a
// V -> S wait orders every earlier vector instruction before every later one (the scalar unit
// issues them: PipeBarrier<PIPE_V>'s effect, for the auto-sync-off rule of emu::vector_deps).
inline void waited_for(int from, int to) {
  Core& c = core();
  if (to != S) return;
  c.drained = true;
  if (from == V) {
    ++c.count.vs_round_trips;
    if (c.waited[V][S] > c.waited[V][V]) c.waited[V][V] = c.waited[V][S];
  }
}

// ... and of WaitFlag: pipe `to` goes on only after everything `from` issued before the set
// (and, transitively, what `from` had waited for). A queue's event is a pipe barrier on
// hardware, not a per-buffer one.
inline void wait_event(Event& e) {
  if (!e.set) return;
  Core& c = core();
  ++c.count.queue_waits;
  uint64_t& w = c.waited[e.from][e.to];
  if (e.seq + 1 > w) w = e.seq + 1;
  for (int x = 0; x < NUM_PIPES; ++x) {
    if (e.before[x] > c.waited[x][e.to]) c.waited[x][e.to] = e.before[x];
  }
  e.set = false;
  waited_for(e.from, e.to);
}

// A synchronisation an API call performs itself (SetFlag immediately followed by WaitFlag).
inline void implied_sync(int from, int to) {
  Event e = set_event(from, to);
  wait_event(e);
  --core().count.queue_waits;  // a flag wait, not a queue's
  ++core().count.flag_waits;
}

// With auto-sync off (LaunchOptions::auto_sync), a vector instruction `op` that reads or writes
// these UB ranges: refused when it reads what an earlier vector instruction wrote (RAW), or writes
// what one read or wrote (WAR, WAW), and nothing orders the earlier one before it. On A2 (2201)
// consecutive vector instructions overlap in the V pipe ("同一流水中虽然指令是顺序执行，但并不意味着
// 后一条指令开始执行时前一条指令执行结束": asc-devkit docs, PipeBarrier / 核内同步), and the V-V
// syncs are the compiler's (--cce-auto-sync) or the kernel's. What orders them here:
// PipeBarrier<PIPE_V> or <PIPE_ALL>; a V -> S wait (WaitFlag<V_S>, ReduceSum's own): the scalar
// unit issues the later instruction only after it; and a chain of pipe events that ends in the V
// pipe, e.g. a VECOUT buffer's EnQue/DeQue (V -> MTE3) then FreeTensor/AllocTensor (MTE3 -> V):
// the V pipe then waits for an MTE3 copy that started after the earlier instruction had finished.
// A SetFlag<V_X> alone (EnQue of a VECOUT buffer, FreeTensor of a VECIN one) is not counted as a
// barrier: whether it holds back the vector instructions behind it is not documented.
struct VectorRange {
  uint64_t begin, end;
  bool write;
};

template <typename T>
VectorRange vector_range(uint64_t ub_address, uint64_t count, bool write) {
  return VectorRange{ub_address, ub_address + count * sizeof(T), write};
}

inline void vector_deps(const char* op, std::initializer_list<VectorRange> ranges) {
  Core& c = core();
  if (c.auto_sync) return;
  const uint64_t done = c.waited[V][V];  // vector uses numbered below this are complete
  auto& uses = c.vector_uses;
  uses.erase(std::remove_if(uses.begin(), uses.end(),
                            [done](const Core::VectorUse& u) { return u.seq < done; }),
             uses.end());
  for (const VectorRange& r : ranges) {
    for (const Core::VectorUse& u : uses) {
      if (r.begin >= u.end || u.begin >= r.end || (!r.write && !u.write)) continue;
      const char* kind = !r.write  ? "reads UB that"
                         : u.write ? "writes UB that"
                                   : "overwrites UB that";
      throw Violation(std::string(op) + ": with auto-sync off, the vector instruction " + kind +
                      " an earlier " + u.op + " " + (u.write ? "wrote" : "reads") + " (UB bytes [" +
                      std::to_string(std::max(r.begin, u.begin)) + ", " +
                      std::to_string(std::min(r.end, u.end)) + ")) with no PipeBarrier<PIPE_V> "
                      "between them (" + (!r.write ? "RAW" : u.write ? "WAW" : "WAR") +
                      "; vector instructions overlap in the V pipe)");
    }
  }
  ++c.seq;  // the instruction's number, above every earlier UB access
  for (const VectorRange& r : ranges) uses.push_back({r.begin, r.end, r.write, c.seq, op});
}

// Whether pipe a's use numbered `seq` is ordered before pipe b's next use.
inline bool ordered(const Slot&, int a, int b, uint64_t seq) {
  const Core& c = core();
  return a == b || c.waited[a][b] > seq;
}

// Pipe `p` reads (or writes) the buffer of `slot`. Refused when another pipe wrote it last (or,
// for a write, read it since) and nothing orders that use before `p`: hardware runs the pipes
// concurrently.
inline void access(Slot& slot, int p, bool write, const char* op) {
  Core& c = core();
  auto refuse = [&](int other, const char* what) {
    throw Violation(std::string(op) + ": the " + pipe_name(p) + " pipe uses a UB buffer that the " +
                    pipe_name(other) + " pipe " + what +
                    ", with nothing ordering the two (SetFlag/WaitFlag, or a queue hand-off)");
  };
  if (slot.writer != NONE && !ordered(slot, slot.writer, p, slot.write_seq)) {
    refuse(slot.writer, "wrote");
  }
  const uint64_t seq = ++c.seq;
  if (write) {
    for (int q = S; q < NUM_PIPES; ++q) {
      if (slot.read_seq[q] != 0 && !ordered(slot, q, p, slot.read_seq[q])) {
        refuse(q, "still reads");
      }
    }
    slot.writer = p;
    slot.write_seq = seq;
    for (uint64_t& r : slot.read_seq) r = 0;
  } else {
    slot.read_seq[p] = seq;
  }
}

}  // namespace emu

inline int64_t GetBlockIdx() { return emu::core().block_idx; }
inline int64_t GetBlockNum() { return emu::core().block_num; }

template <typename T>
class GlobalTensor {
 public:
  void SetGlobalBuffer(__gm__ T* buffer, uint64_t size) {
    base_ = buffer;
    size_ = size;
  }
  GlobalTensor operator[](uint64_t offset) const {
    if (offset > size_) throw emu::Violation("GlobalTensor offset beyond its buffer");
    GlobalTensor t;
    t.base_ = base_ + offset;
    t.size_ = size_ - offset;
    return t;
  }
  T GetValue(uint64_t i) const {
    if (i >= size_) throw emu::Violation("GlobalTensor::GetValue out of range");
    emu::scalar_gm_read(base_ + i, sizeof(T));
    return base_[i];
  }
  void SetValue(uint64_t i, T v) {
    if (i >= size_) throw emu::Violation("GlobalTensor::SetValue out of range");
    base_[i] = v;
  }
  T* address() const { return base_; }
  uint64_t size() const { return size_; }

 private:
  T* base_ = nullptr;
  uint64_t size_ = 0;
};

template <typename T>
class LocalTensor {
 public:
  LocalTensor() = default;
  LocalTensor(std::shared_ptr<emu::Slot> slot, uint32_t offset, uint32_t len)
      : slot_(std::move(slot)), gen_(slot_->generation), offset_(offset), len_(len) {}
  LocalTensor(std::shared_ptr<emu::Slot> slot, uint32_t offset, uint32_t len, uint64_t gen)
      : slot_(std::move(slot)), gen_(gen), offset_(offset), len_(len) {}

  LocalTensor operator[](uint32_t offset) const {
    check(offset, 0);
    return LocalTensor(slot_, offset_ + offset, len_ - offset, gen_);
  }
  T GetValue(uint32_t i) const {
    check(i, 1);
    emu::access(*slot_, emu::S, false, "LocalTensor::GetValue");
    return ptr()[i];
  }
  void SetValue(uint32_t i, T v) const {
    check(i, 1);
    emu::access(*slot_, emu::S, true, "LocalTensor::SetValue");
    ptr()[i] = v;
  }
  uint32_t GetSize() const { return len_; }

  // emulation internals
  T* ptr() const {
    alive();
    return reinterpret_cast<T*>(slot_->data) + offset_;
  }
  uint64_t ub_address() const { return slot_->ub_offset + uint64_t{offset_} * sizeof(T); }
  void check_count(uint32_t count, const char* op) const {
    alive();
    if (count > len_) {
      throw emu::Violation(std::string(op) + ": " + std::to_string(count) +
                           " elements exceed the LocalTensor's " + std::to_string(len_));
    }
  }
  const std::shared_ptr<emu::Slot>& slot() const { return slot_; }
  void use(int pipe, bool write, const char* op) const { emu::access(*slot_, pipe, write, op); }
  // The UB bytes of `count` elements from here, as a vector instruction reads or writes them.
  emu::VectorRange range(uint64_t count, bool write) const {
    return emu::vector_range<T>(ub_address(), count, write);
  }

 private:
  void alive() const {
    if (!slot_ || !slot_->allocated || slot_->generation != gen_) {
      throw emu::Violation("use of a LocalTensor after FreeTensor (or never allocated)");
    }
  }
  void check(uint32_t i, uint32_t extra) const {
    alive();
    if (i + extra > len_) throw emu::Violation("LocalTensor index out of range");
  }
  std::shared_ptr<emu::Slot> slot_;
  uint64_t gen_ = 0;
  uint32_t offset_ = 0;
  uint32_t len_ = 0;
};

class TPipe;

template <TPosition pos, int32_t depth>
class TQue {
 public:
  template <typename T>
  LocalTensor<T> AllocTensor() {
    for (auto& s : slots_) {
      if (!s->allocated) {
        s->allocated = true;
        ++s->generation;
        emu::wait_event(s->freed);  // the FreeTensor's event: consumer before next producer
        return LocalTensor<T>(s, 0, s->bytes / sizeof(T));
      }
    }
    throw emu::Violation("AllocTensor: every buffer of the queue is in use (missing FreeTensor)");
  }
  template <typename T>
  void EnQue(const LocalTensor<T>& t) {
    t.check_count(0, "EnQue");
    if (static_cast<int32_t>(queued_.size()) >= depth) {
      throw emu::Violation("EnQue: queue depth exceeded");
    }
    // The queue's event orders its producer before its consumer, for what was issued before
    // the EnQue: MTE2 -> V for VECIN, V -> MTE3 for VECOUT. Nothing else (not a scalar write).
    t.slot()->enqueued = pos == TPosition::VECIN ? emu::set_event(emu::MTE2, emu::V)
                                                 : emu::set_event(emu::V, emu::MTE3);
    queued_.push_back(t.slot());
  }
  template <typename T>
  LocalTensor<T> DeQue() {
    if (queued_.empty()) throw emu::Violation("DeQue of an empty queue");
    auto s = queued_.front();
    queued_.erase(queued_.begin());
    emu::wait_event(s->enqueued);
    return LocalTensor<T>(s, 0, s->bytes / sizeof(T), s->generation);
  }
  // Non-const, as the real signature (kernel_tpipe.h: FreeTensor(LocalTensor<T>&)): a const
  // tensor or a temporary is refused at compile time, as CANN's compiler refuses it.
  template <typename T>
  void FreeTensor(LocalTensor<T>& t) {
    t.check_count(0, "FreeTensor");
    emu::Slot& s = *t.slot();
    s.allocated = false;
    ++s.generation;
    // FreeTensor -> AllocTensor orders the consumer before the next producer: V -> MTE2 for
    // VECIN, MTE3 -> V for VECOUT.
    s.freed = pos == TPosition::VECIN ? emu::set_event(emu::V, emu::MTE2)
                                      : emu::set_event(emu::MTE3, emu::V);
  }

 private:
  friend class TPipe;
  std::vector<std::shared_ptr<emu::Slot>> slots_;
  std::vector<std::shared_ptr<emu::Slot>> queued_;
};

template <TPosition pos>
class TBuf {
 public:
  template <typename T>
  LocalTensor<T> Get() {
    if (!slot_) throw emu::Violation("TBuf::Get before TPipe::InitBuffer");
    return LocalTensor<T>(slot_, 0, slot_->bytes / sizeof(T), slot_->generation);
  }

 private:
  friend class TPipe;
  std::shared_ptr<emu::Slot> slot_;
};

class TPipe {
 public:
  // One id per event type: an id set twice before it is waited for is refused (SetFlag).
  TEventID FetchEventID(HardEvent) { return 0; }
  template <TPosition pos, int32_t depth>
  void InitBuffer(TQue<pos, depth>& que, int32_t num, uint32_t bytes) {
    if (num <= 0 || num > depth + 1) throw emu::Violation("InitBuffer: bad buffer count");
    for (int32_t i = 0; i < num; ++i) que.slots_.push_back(take(bytes, pos));
  }
  template <TPosition pos>
  void InitBuffer(TBuf<pos>& buf, uint32_t bytes) {
    buf.slot_ = take(bytes, pos);
    buf.slot_->allocated = true;  // a TBuf is usable as soon as it exists
  }

 private:
  std::shared_ptr<emu::Slot> take(uint32_t bytes, TPosition pos) {
    emu::Core& c = emu::core();
    const uint32_t aligned = (bytes + ONE_BLK_SIZE - 1) / ONE_BLK_SIZE * ONE_BLK_SIZE;
    if (c.ub_used + aligned > c.ub_usable) {
      throw emu::Violation("Unified Buffer overflow: " + std::to_string(c.ub_used + aligned) +
                           " bytes requested, a kernel may use " + std::to_string(c.ub_usable) +
                           " (of " + std::to_string(c.ub.size()) +
                           "; on Atlas A2 the top 8 KiB are reserved)");
    }
    auto s = std::make_shared<emu::Slot>();
    s->data = c.ub.data() + c.ub_used;
    s->bytes = bytes;
    s->ub_offset = static_cast<uint32_t>(c.ub_used);
    s->pos = static_cast<int>(pos);
    c.ub_used += aligned;
    return s;
  }
};

template <HardEvent event>
void SetFlag(TEventID id) {
  emu::Core& c = emu::core();
  for (const auto& f : c.flags_set) {
    if (f.event == static_cast<int>(event) && f.id == static_cast<int>(id)) {
      throw emu::Violation("SetFlag of an event id that is already set and not waited for");
    }
  }
  emu::Core::Flag f{static_cast<int>(event), static_cast<int>(id), c.seq, {}};
  for (int x = 0; x < emu::NUM_PIPES; ++x) f.before[x] = c.waited[x][emu::event_from(event)];
  c.flags_set.push_back(f);
}

// Everything the `from` pipe issued before the matching SetFlag is done before the `to` pipe
// goes on.
template <HardEvent event>
void WaitFlag(TEventID id) {
  emu::Core& c = emu::core();
  for (auto it = c.flags_set.begin(); it != c.flags_set.end(); ++it) {
    if (it->event == static_cast<int>(event) && it->id == static_cast<int>(id)) {
      ++c.count.flag_waits;
      const int from = emu::event_from(event), to = emu::event_to(event);
      uint64_t& w = c.waited[from][to];
      if (it->seq + 1 > w) w = it->seq + 1;
      for (int x = 0; x < emu::NUM_PIPES; ++x) {  // and what `from` had waited for: transitive
        if (it->before[x] > c.waited[x][to]) c.waited[x][to] = it->before[x];
      }
      c.flags_set.erase(it);
      emu::waited_for(from, to);
      return;
    }
  }
  throw emu::Violation("WaitFlag of an event that was not set (SetFlag first)");
}

// Orders, within a pipe, every earlier instruction's reads and writes before the next one starts
// (asc-devkit docs, PipeBarrier(ISASI)). PIPE_V: what the auto-sync-off rule of emu::vector_deps
// asks for between dependent vector instructions. PIPE_ALL: every pipe waits for every earlier
// instruction of every pipe (the scalar unit too: the core is drained). PIPE_MTE2 / PIPE_MTE3
// (copies whose UB or GM ranges overlap) are accepted and not modelled: no kernel here has such
// copies. PIPE_S is not supported by the hardware (the scalar pipe is in order), as in AscendC.
template <pipe_t pipe>
void PipeBarrier() {
  static_assert(pipe != PIPE_S, "PipeBarrier<PIPE_S> is not supported");
  emu::Core& c = emu::core();
  if (pipe == PIPE_V || pipe == PIPE_ALL) {
    ++c.count.v_barriers;
    c.waited[emu::V][emu::V] = c.seq + 1;
  }
  if (pipe == PIPE_ALL) {
    for (auto& row : c.waited) {
      for (uint64_t& w : row) w = std::max(w, c.seq + 1);
    }
    c.drained = true;
  }
}

// Data-cache maintenance before scalar reads of global memory that DMA, the host or an earlier
// launch wrote: the emulation has no cache, but records it (emu::scalar_gm_read checks it).
template <typename T, CacheLine line, DcciDst dst>
void DataCacheCleanAndInvalid(const GlobalTensor<T>& g) {
  emu::Core& c = emu::core();
  const uint64_t seq = ++c.launch->gm_seq;
  if (line == CacheLine::ENTIRE_DATA_CACHE) {
    c.dcci_all = seq;
  } else {
    c.dcci_lines[reinterpret_cast<uintptr_t>(g.address()) / 64] = seq;
  }
}

// CTRL[48], the floating-point saturation mode (Atlas A2: SetSaturationFlag / GetSaturationFlag
// in basic_api/kernel_operator_common_intf.h; a scalar write of the core's control register).
// enableSat true: saturation mode (CTRL[48] = 0); false: INF_NAN mode (CTRL[48] = 1).
template <SaturationMode mode>
void SetSaturationFlag(bool enableSat) {
  static_assert(mode == SaturationMode::FLOAT, "the emulation models SaturationMode::FLOAT only");
  emu::core().saturating = enableSat;
}

template <SaturationMode mode>
bool GetSaturationFlag() {
  static_assert(mode == SaturationMode::FLOAT, "the emulation models SaturationMode::FLOAT only");
  return emu::core().saturating;
}

// ---- data movement --------------------------------------------------------------------------
namespace emu {
// lars_npu's rule for the global-memory side of every DMA: a 32-byte aligned address. A2's MTE
// takes other addresses for DataCopyPad, but a misaligned start splits every 32-byte block over
// two and plain DataCopy is documented for aligned data only; the host plan therefore refuses
// tensors whose base is not 32-byte aligned (the backends stage those into aligned copies), and
// chunk and tile offsets keep every copy aligned from there.
inline void check_gm_alignment(const void* gm, const char* op) {
  if (reinterpret_cast<uintptr_t>(gm) % ONE_BLK_SIZE != 0) {
    throw Violation(std::string(op) + ": global memory address not 32-byte aligned");
  }
}

template <typename T>
void check_copy(const LocalTensor<T>& local, uint64_t gm_size, uint32_t count, const char* op) {
  local.check_count(count, op);
  if ((uint64_t{count} * sizeof(T)) % ONE_BLK_SIZE != 0) {
    throw Violation(std::string(op) + ": length " + std::to_string(count * sizeof(T)) +
                    " bytes is not a whole number of 32-byte blocks (handle the tail)");
  }
  if (local.ub_address() % ONE_BLK_SIZE != 0) {
    throw Violation(std::string(op) + ": Unified Buffer address not 32-byte aligned");
  }
  if (count > gm_size) throw Violation(std::string(op) + ": beyond the GlobalTensor's buffer");
}
}  // namespace emu

template <typename T>
void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count) {
  emu::check_copy(dst, src.size(), count, "DataCopy GM->UB");
  emu::check_gm_alignment(src.address(), "DataCopy GM->UB");
  dst.use(emu::MTE2, true, "DataCopy GM->UB");
  emu::dma_read(uint64_t{count} * sizeof(T));
  std::memcpy(dst.ptr(), src.address(), count * sizeof(T));
}

template <typename T>
void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
  emu::check_copy(src, dst.size(), count, "DataCopy UB->GM");
  emu::check_gm_alignment(dst.address(), "DataCopy UB->GM");
  src.use(emu::MTE3, false, "DataCopy UB->GM");
  emu::dma_wrote(dst.address(), uint64_t{count} * sizeof(T));
  std::memcpy(dst.address(), src.ptr(), count * sizeof(T));
}

// DataCopyPad: GM <-> UB moves of any whole number of elements (Atlas A2/A3). One block only
// (blockCount 1, no strides) is emulated: what the kernels use for a tensor's ragged tail.
struct DataCopyExtParams {
  uint16_t blockCount = 1;
  uint32_t blockLen = 0;  // bytes
  uint32_t srcStride = 0;
  uint32_t dstStride = 0;
  uint32_t rsv = 0;
};

template <typename T>
struct DataCopyPadExtParams {
  bool isPad = false;
  uint8_t leftPadding = 0;
  uint8_t rightPadding = 0;
  T paddingValue{};
};

namespace emu {
template <typename T>
uint32_t check_pad_copy(const LocalTensor<T>& local, uint64_t gm_size,
                        const DataCopyExtParams& p, const char* op) {
  if (p.blockCount != 1 || p.srcStride != 0 || p.dstStride != 0) {
    throw Violation(std::string(op) + ": only one block without strides is emulated");
  }
  if (p.blockLen == 0 || p.blockLen % sizeof(T) != 0) {
    throw Violation(std::string(op) + ": blockLen must be a positive number of whole elements");
  }
  const uint32_t count = p.blockLen / sizeof(T);
  const uint32_t padded = (p.blockLen + ONE_BLK_SIZE - 1) / ONE_BLK_SIZE * ONE_BLK_SIZE;
  local.check_count(padded / sizeof(T), op);
  if (local.ub_address() % ONE_BLK_SIZE != 0) {
    throw Violation(std::string(op) + ": Unified Buffer address not 32-byte aligned");
  }
  if (count > gm_size) throw Violation(std::string(op) + ": beyond the GlobalTensor's buffer");
  return count;
}

// On Atlas A2/A3, DataCopyPad moves between GM and VECIN / VECOUT buffers only.
template <typename T>
void check_pad_position(const LocalTensor<T>& local, const char* op) {
  const int pos = local.slot()->pos;
  if (pos != static_cast<int>(TPosition::VECIN) && pos != static_cast<int>(TPosition::VECOUT)) {
    throw Violation(std::string(op) + ": only VECIN / VECOUT buffers on Atlas A2/A3");
  }
}
}  // namespace emu

template <typename T>
void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src,
                 const DataCopyExtParams& params, const DataCopyPadExtParams<T>& pad) {
  const uint32_t count = emu::check_pad_copy(dst, src.size(), params, "DataCopyPad GM->UB");
  emu::check_pad_position(dst, "DataCopyPad GM->UB");
  emu::check_gm_alignment(src.address(), "DataCopyPad GM->UB");
  dst.use(emu::MTE2, true, "DataCopyPad GM->UB");
  emu::dma_read(params.blockLen);
  const uint32_t padded = (params.blockLen + ONE_BLK_SIZE - 1) / ONE_BLK_SIZE * ONE_BLK_SIZE;
  std::memset(reinterpret_cast<uint8_t*>(dst.ptr()) + params.blockLen, 0xFF,
              padded - params.blockLen);  // hardware: the block's first element; NaN here,
                                          // so a kernel that reads pad lanes shows it
  std::memcpy(dst.ptr(), src.address(), params.blockLen);
  if (pad.isPad) {
    for (uint32_t i = 0; i < pad.rightPadding && count + i < padded / sizeof(T); ++i) {
      dst.ptr()[count + i] = pad.paddingValue;
    }
  }
}

template <typename T>
void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src,
                 const DataCopyExtParams& params) {
  emu::check_pad_copy(src, dst.size(), params, "DataCopyPad UB->GM");
  emu::check_pad_position(src, "DataCopyPad UB->GM");
  emu::check_gm_alignment(dst.address(), "DataCopyPad UB->GM");
  src.use(emu::MTE3, false, "DataCopyPad UB->GM");
  emu::dma_wrote(dst.address(), params.blockLen);
  std::memcpy(dst.address(), src.ptr(), params.blockLen);  // exactly blockLen bytes
}

// ---- vector computation (elementwise over `count` elements)
// --------------------------------------
namespace emu {
constexpr float kHalfMax = 65504.0f;

// Whether the core runs in saturation mode (CTRL[48] = 0). What A2 documents for it (asc-devkit
// docs, SetCtrlSpr / SetSaturationFlag; CANN's aclrtFloatOverflowMode): an inf result of fp16 /
// bf16 arithmetic or precision conversion becomes ±MAX and a NaN result 0; fp32 arithmetic is
// IEEE in both modes. Whether an inf fp16 SOURCE of a conversion to fp32 survives is not
// documented: the emulation takes the reading a kernel cannot get wrong by relying on, that it
// does not (±inf -> ±65504, NaN -> 0), as CANN's PyTorch guide describes the mode ("Inf and NaN
// become the data type's maximum and 0").
inline bool saturating() { return core().saturating; }

inline float saturate_half_value(float v) {
  if (v != v) return 0.0f;
  if (v > kHalfMax) return kHalfMax;
  if (v < -kHalfMax) return -kHalfMax;
  return v;
}

// An element as the vector unit computes it (fp32), and a result stored in the destination type:
// fp16 rounded to nearest even once, then saturated in saturation mode.
inline float in(float v) { return v; }
inline float in(half v) { return static_cast<float>(v); }
template <typename T>
T out(float v);
template <>
inline float out<float>(float v) {
  return v;
}
template <>
inline half out<half>(float v) {
  half h(v);
  return saturating() ? half(saturate_half_value(static_cast<float>(h))) : h;
}

// A vector instruction over `count` elements: reads its sources, then writes its destination,
// on the V pipe.
template <typename D, typename... Srcs>
void vector_op(const char* op, uint32_t count, const LocalTensor<D>& dst, const Srcs&... srcs) {
  Core& c = core();
  ++c.count.vector_instrs;
  c.count.vector_elems += count;
  (srcs.use(V, false, op), ...);
  dst.use(V, true, op);
  vector_deps(op, {srcs.range(count, false)..., dst.range(count, true)});
}

// ... one that also reads its destination (dst = f(srcs) + dst: MulAddDst, Axpy).
template <typename D, typename... Srcs>
void vector_acc_op(const char* op, uint32_t count, const LocalTensor<D>& dst,
                   const Srcs&... srcs) {
  Core& c = core();
  ++c.count.vector_instrs;
  c.count.vector_elems += count;
  (srcs.use(V, false, op), ...);
  dst.use(V, true, op);
  vector_deps(op, {srcs.range(count, false)..., dst.range(count, false), dst.range(count, true)});
}
}  // namespace emu

template <typename T>
void Mul(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b,
         uint32_t count) {
  dst.check_count(count, "Mul");
  a.check_count(count, "Mul");
  b.check_count(count, "Mul");
  emu::vector_op("Mul", count, dst, a, b);
  for (uint32_t i = 0; i < count; ++i) {
    dst.ptr()[i] = emu::out<T>(emu::in(a.ptr()[i]) * emu::in(b.ptr()[i]));
  }
}

template <typename T>
void Add(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b,
         uint32_t count) {
  dst.check_count(count, "Add");
  a.check_count(count, "Add");
  b.check_count(count, "Add");
  emu::vector_op("Add", count, dst, a, b);
  for (uint32_t i = 0; i < count; ++i) {
    dst.ptr()[i] = emu::out<T>(emu::in(a.ptr()[i]) + emu::in(b.ptr()[i]));
  }
}

template <typename T>
void Muls(const LocalTensor<T>& dst, const LocalTensor<T>& src, T scalar, uint32_t count) {
  dst.check_count(count, "Muls");
  src.check_count(count, "Muls");
  emu::vector_op("Muls", count, dst, src);
  for (uint32_t i = 0; i < count; ++i) {
    dst.ptr()[i] = emu::out<T>(emu::in(src.ptr()[i]) * emu::in(scalar));
  }
}

namespace emu {
// a * b rounded to float, kept from being contracted with what follows into one fused
// multiply-add (which some compilers do by default where the target has one): MulAddDst and Axpy
// are modelled as a multiply and an add, each rounded, like the Mul + Add they replace. Whether
// A2's vmla / vaxpy round once or twice is not documented: claim a tolerance, never bits.
inline void products(float* out, const float* a, const float* b, float scalar, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) out[i] = a[i] * (b != nullptr ? b[i] : scalar);
}
}  // namespace emu

// dst = src0 * src1 + dst (vmla on A2). T float with U float or half, or both half.
template <typename T, typename U>
void MulAddDst(const LocalTensor<T>& dst, const LocalTensor<U>& src0, const LocalTensor<U>& src1,
               const int32_t& count) {
  static_assert(std::is_same<T, U>::value || (std::is_same<T, float>::value &&
                                              std::is_same<U, half>::value),
                "MulAddDst: src half with dst half / float, or src and dst float");
  const auto n = static_cast<uint32_t>(count);
  dst.check_count(n, "MulAddDst");
  src0.check_count(n, "MulAddDst");
  src1.check_count(n, "MulAddDst");
  emu::vector_acc_op("MulAddDst", n, dst, src0, src1);
  std::vector<float> a(n), b(n), p(n);
  for (uint32_t i = 0; i < n; ++i) {
    a[i] = emu::in(src0.ptr()[i]);
    b[i] = emu::in(src1.ptr()[i]);
  }
  emu::products(p.data(), a.data(), b.data(), 0.0f, n);
  for (uint32_t i = 0; i < n; ++i) dst.ptr()[i] = emu::out<T>(p[i] + emu::in(dst.ptr()[i]));
}

// dst = src * scalar + dst (vaxpy on A2). T float with U float or half, or both half.
template <typename T, typename U>
void Axpy(const LocalTensor<T>& dst, const LocalTensor<U>& src, const U& scalar,
          const int32_t& count) {
  static_assert(std::is_same<T, U>::value || (std::is_same<T, float>::value &&
                                              std::is_same<U, half>::value),
                "Axpy: src half with dst half / float, or src and dst float");
  const auto n = static_cast<uint32_t>(count);
  dst.check_count(n, "Axpy");
  src.check_count(n, "Axpy");
  emu::vector_acc_op("Axpy", n, dst, src);
  std::vector<float> a(n), p(n);
  for (uint32_t i = 0; i < n; ++i) a[i] = emu::in(src.ptr()[i]);
  emu::products(p.data(), a.data(), nullptr, emu::in(scalar), n);
  for (uint32_t i = 0; i < n; ++i) dst.ptr()[i] = emu::out<T>(p[i] + emu::in(dst.ptr()[i]));
}

template <typename T>
void Sqrt(const LocalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
  dst.check_count(count, "Sqrt");
  src.check_count(count, "Sqrt");
  emu::vector_op("Sqrt", count, dst, src);
  for (uint32_t i = 0; i < count; ++i) {  // documented: undefined for a non-positive input
    if (static_cast<float>(src.ptr()[i]) <= 0.0f) {
      throw emu::Violation("Sqrt of a non-positive value (undefined on hardware)");
    }
  }
  for (uint32_t i = 0; i < count; ++i) {
    dst.ptr()[i] = emu::out<T>(std::sqrt(emu::in(src.ptr()[i])));
  }
}

template <typename T>
void Duplicate(const LocalTensor<T>& dst, T scalar, uint32_t count) {
  dst.check_count(count, "Duplicate");
  emu::vector_op("Duplicate", count, dst);
  for (uint32_t i = 0; i < count; ++i) dst.ptr()[i] = scalar;
}

// ReduceSum, count form, as Atlas A2 implements it (asc-devkit impl/basic_api/dav_c220/
// kernel_operator_vec_reduce_impl.h, ReduceSumImpl): ONE vcadd over `count` elements in counter
// mode; a V->S sync; the scalar unit reads the accumulator and stores it to dst[0] (a scalar write
// of UB); then S->V and S->MTE3 syncs, so what follows may use dst on any pipe. The work tensor is
// never touched, and count must be in [1, UB bytes / 4] (ASCENDC_CHECK_VALUE_RANGE in the
// interface). lars_npu's rule, for the SoCs that do write it (the docs' two-level sum, one partial
// per 64-lane repeat): the work tensor holds at least ceil(count / 64) floats rounded up to whole
// 32-byte blocks, and does not overlap src (emu::check_reduce_work). Summation order: a pairwise
// tree over adjacent lanes within each 64-lane (256-byte) repeat, the repeats accumulated in order
// — not the naive sequential sum, so a kernel or test cannot depend on bit-equality with one (the
// hardware's exact tree is not documented: claim a tolerance, never bits).
namespace emu {
// One repeat of vcadd (fp32, up to 64 lanes): a pairwise tree over adjacent lanes, the missing
// lanes 0. The hardware's exact tree is not documented: claim a tolerance, never bits.
inline float vcadd_tree(const float* src, uint32_t n) {
  float lane[64];
  for (uint32_t i = 0; i < 64; ++i) lane[i] = i < n ? src[i] : 0.0f;
  for (uint32_t width = 32; width >= 1; width /= 2) {
    for (uint32_t i = 0; i < width; ++i) lane[i] = lane[2 * i] + lane[2 * i + 1];
  }
  return lane[0];
}
}  // namespace emu

namespace emu {
template <typename T>
void check_reduce_work(const LocalTensor<T>& src, const LocalTensor<T>& work, uint32_t count) {
  const uint32_t repeats = count <= 64 ? 1 : (count + 63) / 64;
  const uint32_t need = (repeats + 7) / 8 * 8;
  if (work.GetSize() < need) {
    throw Violation("ReduceSum: the work tensor holds " + std::to_string(work.GetSize()) +
                    " elements, the docs ask for " + std::to_string(need) + " for count " +
                    std::to_string(count) + " (A2 ignores it; other SoCs write it)");
  }
  const uint64_t s0 = src.ub_address(), s1 = s0 + uint64_t{count} * sizeof(T);
  const uint64_t w0 = work.ub_address(), w1 = w0 + uint64_t{need} * sizeof(T);
  if (s0 < w1 && w0 < s1) {
    throw Violation("ReduceSum: the work tensor overlaps the source (A2 ignores it; other SoCs "
                    "write their partial sums there while reading the source)");
  }
}
}  // namespace emu

template <typename T>
void ReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& work,
               const int32_t count) {
  static_assert(std::is_same<T, float>::value, "the emulation's ReduceSum takes float");
  if (count < 1 || static_cast<uint64_t>(count) * sizeof(T) > emu::kUbTotalA2) {
    throw emu::Violation("ReduceSum: count " + std::to_string(count) +
                         " outside [1, UB size / element size]");
  }
  const auto n = static_cast<uint32_t>(count);
  work.check_count(0, "ReduceSum");
  emu::check_reduce_work(src, work, n);  // lars_npu's rule: A2 itself never touches it
  dst.check_count(1, "ReduceSum");
  src.check_count(n, "ReduceSum");
  ++emu::core().count.vector_instrs;
  emu::core().count.vector_elems += n;
  src.use(emu::V, false, "ReduceSum (vcadd)");
  emu::vector_deps("ReduceSum (vcadd)", {src.range(n, false)});
  float total = 0.0f;
  for (uint32_t r = 0; r < n; r += 64) {
    total += emu::vcadd_tree(src.ptr() + r, std::min(n - r, 64u));
  }
  emu::implied_sync(emu::V, emu::S);
  dst.use(emu::S, true, "ReduceSum (scalar store of the accumulator)");
  dst.ptr()[0] = total;
  emu::implied_sync(emu::S, emu::V);
  emu::implied_sync(emu::S, emu::MTE3);
}

// WholeReduceSum, continuous-mask form, as A2 implements it (dav_c220 WholeReduceSumImpl: the mask
// set, then ONE vcadd with `repeatTime` repeats in normal mode, each repeat's sum written to UB by
// the vector unit: no scalar step, no sync). fp32 only here; `mask` lanes (1..64) of each repeat,
// repeat r reading from src + r * srcRepStride blocks and writing ONE element at
// dst + r * dstRepStride elements (the docs: dst needs only 4-byte alignment for an fp32 sum).
// srcBlkStride 1 (contiguous lanes) is the only one emulated. Summation order per repeat: the
// same pairwise tree as ReduceSum's (emu::vcadd_tree).
template <typename T, bool isSetMask = true>
void WholeReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t mask,
                    const int32_t repeatTime, const int32_t dstRepStride,
                    const int32_t srcBlkStride, const int32_t srcRepStride) {
  static_assert(std::is_same<T, float>::value, "the emulation's WholeReduceSum takes float");
  static_assert(isSetMask, "the emulation's WholeReduceSum sets its mask itself");
  if (mask < 1 || mask > 64 || repeatTime < 0 || repeatTime > 255 || dstRepStride < 0 ||
      srcRepStride < 0) {
    throw emu::Violation("WholeReduceSum: mask in [1, 64], repeatTime in [0, 255], strides >= 0");
  }
  if (srcBlkStride != 1) throw emu::Violation("WholeReduceSum: only srcBlkStride 1 is emulated");
  if (repeatTime == 0) return;  // a no-op on A2
  const auto reps = static_cast<uint32_t>(repeatTime), lanes = static_cast<uint32_t>(mask);
  const uint32_t src_span = (reps - 1) * static_cast<uint32_t>(srcRepStride) * 8 + lanes;
  const uint32_t dst_span = (reps - 1) * static_cast<uint32_t>(dstRepStride) + 1;
  src.check_count(src_span, "WholeReduceSum");
  dst.check_count(dst_span, "WholeReduceSum");
  if (src.ub_address() % ONE_BLK_SIZE != 0) {
    throw emu::Violation("WholeReduceSum: source not 32-byte aligned in UB");
  }
  emu::Core& c = emu::core();
  ++c.count.vector_instrs;
  c.count.vector_elems += uint64_t{reps} * lanes;
  src.use(emu::V, false, "WholeReduceSum (vcadd)");
  dst.use(emu::V, true, "WholeReduceSum (vcadd)");
  emu::vector_deps("WholeReduceSum (vcadd)", {src.range(src_span, false),
                                              dst.range(dst_span, true)});
  std::vector<float> sums(reps);
  for (uint32_t r = 0; r < reps; ++r) {
    sums[r] = emu::vcadd_tree(src.ptr() + r * static_cast<uint32_t>(srcRepStride) * 8, lanes);
  }
  for (uint32_t r = 0; r < reps; ++r) dst.ptr()[r * static_cast<uint32_t>(dstRepStride)] = sums[r];
}

enum class RoundMode { CAST_NONE, CAST_RINT };

// half -> float is exact; in saturation mode an inf / NaN fp16 source gives ±65504 / 0 (see
// emu::saturating). float -> half rounds to nearest even; in saturation mode a result beyond
// fp16's range is ±65504 and NaN is 0, in INF_NAN mode ±inf and NaN.
inline void Cast(const LocalTensor<float>& dst, const LocalTensor<half>& src, RoundMode,
                 uint32_t count) {
  dst.check_count(count, "Cast");
  src.check_count(count, "Cast");
  emu::vector_op("Cast", count, dst, src);
  const bool sat = emu::saturating();
  for (uint32_t i = 0; i < count; ++i) {
    const float v = static_cast<float>(src.ptr()[i]);
    dst.ptr()[i] = sat ? emu::saturate_half_value(v) : v;
  }
}

inline void Cast(const LocalTensor<half>& dst, const LocalTensor<float>& src, RoundMode,
                 uint32_t count) {
  dst.check_count(count, "Cast");
  src.check_count(count, "Cast");
  emu::vector_op("Cast", count, dst, src);
  for (uint32_t i = 0; i < count; ++i) dst.ptr()[i] = emu::out<half>(src.ptr()[i]);
}

}  // namespace AscendC
