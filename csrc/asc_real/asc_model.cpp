// lars_npu's model of the CCE intrinsics the real AscendC headers call (declared in
// include/stub_fun.h), for the `real` runner. Our code, written from the headers' call sites and
// CANN's public documentation of each instruction (asc-devkit docs: the C-API pages of
// asc_copy_gm2ub(_align), asc_add, asc_repeat_reduce_sum, asc_set_mask_count, asc_float2half,
// asc_ffz, ...; the basic API's DataCopyPad, ReduceSum and mask pages).
//
// A sequential model of one Atlas A2 vector core at a time, all in host memory: every
// instruction completes when it is issued, so the order between pipes (set_flag / wait_flag,
// pipe_barrier) is never observable here; checking it is the emulation's job (csrc/emu). What it
// does check: every Unified Buffer access lies inside the core's 192 KiB and starts 32-byte
// aligned where the instruction requires it, every global-memory access is non-null and inside a
// buffer of the launch, and the instructions' documented limits (DataCopyPad's padding, Sqrt's
// positive input). Uninitialised UB and DataCopyPad's unrequested pad bytes hold kPoison, a NaN,
// so a kernel that computes on them shows it.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "asc_model.h"
#include "model/model_factory_mask.h"
#include "stub_fun.h"

namespace lars_asc_real {

namespace {

static_assert(sizeof(half) == 2, "half is a 16-bit type");

constexpr uint64_t kBlockBytes = 32;    // a DataBlock
constexpr uint64_t kRepeatBytes = 256;  // one repeat of a vector instruction: 8 blocks
constexpr int kCtrlFloatMode = 48;      // CTRL[48]: 0 saturation, 1 INF_NAN (fp16 / bf16)

struct Core {
  bool active = false;
  uint8_t* ub = nullptr;
  uint64_t ub_bytes = 0;
  int64_t block_idx = 0, block_num = 0;
  bool counter_mode = false;  // set_mask_count: the mask's low 64 bits are an element count
  uint64_t mask_high = ~uint64_t{0}, mask_low = ~uint64_t{0};
  uint64_t ctrl = 0;
  int64_t acc = 0;  // vcadd's accumulator (get_acc_val): the sum's bits, zero-extended
  bool pad_set = false;
  uint64_t pad_value = 0;
  const std::vector<GmRegion>* gm = nullptr;
};

Core g_core;

Core& Cur(const char* name) {
  if (!g_core.active) Fail(name, "called outside a launch of the real runner");
  return g_core;
}

bool Saturating(const Core& c) { return ((c.ctrl >> kCtrlFloatMode) & 1u) == 0; }

// ---- addresses -------------------------------------------------------------------------------
// p as a UB address of `bytes` bytes, `align`-byte aligned from the UB's start; else a failure.
uint8_t* Ub(const char* name, const Core& c, const void* p, uint64_t bytes, uint64_t align) {
  const auto base = reinterpret_cast<uintptr_t>(c.ub), a = reinterpret_cast<uintptr_t>(p);
  const auto offset = static_cast<long long>(a) - static_cast<long long>(base);
  if (a < base || a - base > c.ub_bytes || bytes > c.ub_bytes - (a - base)) {
    Fail(name, ("Unified Buffer access outside the core's " + std::to_string(c.ub_bytes) +
                " bytes (offset " + std::to_string(offset) + ", " + std::to_string(bytes) +
                " bytes)")
                   .c_str());
  }
  if (align > 1 && (a - base) % align != 0) {
    Fail(name, ("Unified Buffer address not " + std::to_string(align) + "-byte aligned (offset " +
                std::to_string(offset) + ")")
                   .c_str());
  }
  return reinterpret_cast<uint8_t*>(a);
}

// p as a global-memory address of `bytes` bytes: not null, not in the UB, and inside a buffer of
// the launch (when the runner named them); else a failure.
uint8_t* Gm(const char* name, const Core& c, const void* p, uint64_t bytes) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) Fail(name, "null global-memory address");
  const auto ub = reinterpret_cast<uintptr_t>(c.ub);
  if (a < ub + c.ub_bytes && a + bytes > ub) {
    Fail(name, "a global-memory operand points into the Unified Buffer");
  }
  if (c.gm != nullptr && !c.gm->empty()) {
    const bool inside = std::any_of(c.gm->begin(), c.gm->end(), [&](const GmRegion& r) {
      return a >= r.begin && a <= r.end && bytes <= r.end - a;
    });
    if (!inside) {
      Fail(name, ("global memory [" + std::to_string(a) + ", +" + std::to_string(bytes) +
                  ") is outside every buffer of this launch")
                     .c_str());
    }
  }
  return reinterpret_cast<uint8_t*>(a);
}

void Poison(uint8_t* p, uint64_t bytes) {
  for (uint64_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(kPoison >> (8 * (i % 4)));
}

// ---- fp16 <-> fp32 -----------------------------------------------------------------------------
float F16ToF32(uint16_t h) {
  const int exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  float v;
  if (exp == 0x1F) {
    v = man != 0 ? std::nanf("") : INFINITY;
  } else if (exp == 0) {
    v = std::ldexp(static_cast<float>(man), -24);
  } else {
    v = std::ldexp(static_cast<float>(man | 0x400), exp - 25);
  }
  return (h & 0x8000) != 0 ? -v : v;
}

// x (exact in double) to fp16 with `round`; `saturate`: inf -> ±65504, NaN -> 0 (CTRL[48] = 0).
uint16_t ToF16(double x, Round round, bool saturate) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (std::isnan(x)) return saturate ? 0 : 0x7E00;
  const uint16_t max_finite = sign | 0x7BFF, inf = sign | 0x7C00;
  if (std::isinf(x)) return saturate ? max_finite : inf;
  const double a = std::fabs(x);
  if (a == 0.0) return sign;
  int e;
  std::frexp(a, &e);                         // a = m * 2^e, m in [0.5, 1)
  const int q = std::max(e - 11, -24);       // the quantum's exponent: 11 bits, or subnormal
  const double scaled = std::ldexp(a, -q);   // exact
  double ip = std::floor(scaled);
  const double frac = scaled - ip;
  const bool odd = std::fmod(ip, 2.0) != 0.0;
  bool up = false;
  switch (round) {
    case Round::Rint: up = frac > 0.5 || (frac == 0.5 && odd); break;
    case Round::Round: up = frac >= 0.5; break;
    case Round::Floor: up = sign != 0 && frac > 0; break;
    case Round::Ceil: up = sign == 0 && frac > 0; break;
    case Round::Trunc: up = false; break;
    case Round::Odd: up = frac > 0 && !odd; break;
  }
  if (up) ip += 1;
  if (std::ldexp(ip, q) > 65504.0) {  // beyond fp16: inf unless the rounding goes towards zero
    const bool to_inf = round == Round::Rint || round == Round::Round ||
                        (round == Round::Ceil && sign == 0) || (round == Round::Floor && sign);
    return saturate || !to_inf ? max_finite : inf;
  }
  // ip * 2^q: subnormal bits are ip itself; a normal's biased exponent is q + 25, and ip - 1024
  // its mantissa (a carry to 2048 moves into the exponent by itself)
  const auto bits = q == -24 ? static_cast<uint32_t>(ip)
                             : (static_cast<uint32_t>(q + 25) << 10) + static_cast<uint32_t>(ip) -
                                   1024u;
  return static_cast<uint16_t>(sign | bits);
}

// ---- vector operands -------------------------------------------------------------------------
uint64_t Size(Ty t) { return t == Ty::F32 ? 4 : 2; }

// Address of lane `e` of repeat `r`: a block holds 32 bytes of the operand's type; blocks are
// `blk` blocks apart inside a repeat, repeats `rep` blocks apart.
uint8_t* Lane(const Operand& o, uint64_t r, uint64_t e) {
  const uint64_t per_block = kBlockBytes / Size(o.ty);
  return static_cast<uint8_t*>(o.base) + (r * o.rep + (e / per_block) * o.blk) * kBlockBytes +
         (e % per_block) * Size(o.ty);
}

double Load(const char* name, const Core& c, const Operand& o, uint64_t r, uint64_t e) {
  const uint8_t* p = Ub(name, c, Lane(o, r, e), Size(o.ty), 1);
  if (o.ty == Ty::F32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

void Store(const char* name, const Core& c, const Operand& o, uint64_t r, uint64_t e, double v,
           Round round) {
  uint8_t* p = Ub(name, c, Lane(o, r, e), Size(o.ty), 1);
  if (o.ty == Ty::F32) {
    const auto f = static_cast<float>(v);  // round to nearest even (the host's IEEE mode)
    std::memcpy(p, &f, 4);
  } else {
    const uint16_t h = ToF16(v, round, Saturating(c));
    std::memcpy(p, &h, 2);
  }
}

// A result rounded to the destination's type (fp32 arithmetic is IEEE in both modes).
double Rounded(Ty t, double v, bool saturate) {
  if (t == Ty::F32) return static_cast<float>(v);
  return F16ToF32(ToF16(v, Round::Rint, saturate));
}

// Repeats and active lanes: counter mode takes the mask's low 64 bits as the element count and
// ignores `repeat`; normal mode runs `repeat` repeats with the lanes whose mask bit is set.
struct Lanes {
  uint64_t per_repeat, repeats, count;
  bool counter;
  uint64_t high, low;
  bool Active(uint64_t r, uint64_t e) const {
    if (counter) return r * per_repeat + e < count;
    return ((e < 64 ? low >> e : high >> (e - 64)) & 1u) != 0;
  }
};

Lanes LanesOf(const Core& c, uint64_t widest, uint8_t repeat) {
  Lanes l{kRepeatBytes / widest, repeat, 0, c.counter_mode, c.mask_high, c.mask_low};
  if (c.counter_mode) {
    l.count = c.mask_low;
    l.repeats = (l.count + l.per_repeat - 1) / l.per_repeat;
  }
  return l;
}

void CheckOperand(const char* name, const Core& c, const Operand& o) {
  if (o.ty == Ty::Other) Unmodelled(name);
  Ub(name, c, o.base, 0, kBlockBytes);  // the start of every vector operand is 32-byte aligned
}

// ---- DMA ---------------------------------------------------------------------------------------
enum class Dir { GmToUb, UbToGm, UbToUb };

// Burst DMA (DataCopy): nBurst bursts of lenBurst blocks, gaps in blocks on both sides.
void Burst(const char* name, Dir dir, void* dst, void* src, uint16_t n, uint16_t len,
           uint16_t src_gap, uint16_t dst_gap) {
  const auto& c = Cur(name);
  const uint64_t bytes = uint64_t{len} * kBlockBytes;
  for (uint64_t i = 0; i < n && bytes > 0; ++i) {
    auto* s = static_cast<uint8_t*>(src) + i * (bytes + src_gap * kBlockBytes);
    auto* d = static_cast<uint8_t*>(dst) + i * (bytes + dst_gap * kBlockBytes);
    s = dir == Dir::GmToUb ? Gm(name, c, s, bytes) : Ub(name, c, s, bytes, kBlockBytes);
    d = dir == Dir::UbToGm ? Gm(name, c, d, bytes) : Ub(name, c, d, bytes, kBlockBytes);
    std::memmove(d, s, bytes);
  }
}

// DataCopyPad GM -> UB: each burst of `len` bytes lands in UB after `left` pad elements, followed
// by `right` pad elements and dummy bytes up to the next 32-byte boundary. Pad elements hold the
// set_mov_pad_val value when one was set on this core, else poison; the dummy bytes are poison.
void PadIn(const char* name, uint64_t elem, void* dst, void* src, uint16_t n, uint32_t len,
           uint8_t left, uint8_t right, uint64_t src_gap, uint32_t dst_gap) {
  const auto& c = Cur(name);
  if (len % elem != 0) Fail(name, "burst length is not a whole number of elements");
  if (left * elem > kBlockBytes || right * elem > kBlockBytes) {
    Fail(name, "left / right padding beyond 32 bytes");
  }
  const uint64_t lb = left * elem, rb = right * elem;
  const uint64_t foot = (lb + len + rb + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
  for (uint64_t i = 0; i < n && (len > 0 || foot > 0); ++i) {
    const uint8_t* s = Gm(name, c, static_cast<uint8_t*>(src) + i * (len + src_gap), len);
    uint8_t* d = Ub(name, c, static_cast<uint8_t*>(dst) + i * (foot + dst_gap * kBlockBytes), foot,
                    kBlockBytes);
    Poison(d, foot);
    for (uint64_t k = 0; c.pad_set && k < lb + len + rb; k += elem) {
      if (k < lb || k >= lb + len) std::memcpy(d + k, &c.pad_value, elem);  // little endian
    }
    std::memcpy(d + lb, s, len);
  }
}

// DataCopyPad UB -> GM: each burst's `len` bytes from a 32-byte aligned UB slot.
void PadOut(const char* name, uint64_t elem, void* dst, void* src, uint16_t n, uint32_t len,
            uint8_t left, uint8_t right, uint32_t src_gap, uint64_t dst_gap) {
  const auto& c = Cur(name);
  if (len % elem != 0) Fail(name, "burst length is not a whole number of elements");
  if (left != 0 || right != 0) Unmodelled(name);  // padding is for GM -> UB
  const uint64_t slot = (uint64_t{len} + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
  for (uint64_t i = 0; i < n && len > 0; ++i) {
    const uint8_t* s = Ub(name, c, static_cast<uint8_t*>(src) + i * (slot + src_gap * kBlockBytes),
                          len, kBlockBytes);
    uint8_t* d = Gm(name, c, static_cast<uint8_t*>(dst) + i * (len + dst_gap), len);
    std::memmove(d, s, len);
  }
}

}  // namespace

void Fail(const char* intrinsic, const char* what) {
  std::string where = g_core.active ? " (block " + std::to_string(g_core.block_idx) + ")" : "";
  throw ModelError(std::string(intrinsic) + ": " + what + where);
}

void Unmodelled(const char* intrinsic) {
  Fail(intrinsic, "this intrinsic (or this element type) is not modelled by lars_npu's real "
                  "runner (csrc/asc_real); the kernel reached it");
}

float HalfToFloat(half h) {
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return F16ToF32(bits);
}

void Vector(const char* name, Op op, Operand dst, Operand s0, Operand s1, float scalar,
            uint8_t repeat, Round round) {
  const Core& c = Cur(name);
  const bool two = op == Op::Add || op == Op::Mul || op == Op::MulAddDst;
  const bool one = op != Op::Dup;
  CheckOperand(name, c, dst);
  if (one) CheckOperand(name, c, s0);
  if (two) CheckOperand(name, c, s1);
  const uint64_t widest = std::max(Size(dst.ty), one ? Size(s0.ty) : 0);
  const Lanes l = LanesOf(c, widest, repeat);
  const bool sat = Saturating(c);
  for (uint64_t r = 0; r < l.repeats; ++r) {
    for (uint64_t e = 0; e < l.per_repeat; ++e) {
      if (!l.Active(r, e)) continue;
      const double a = one ? Load(name, c, s0, r, e) : 0.0;
      const double b = two ? Load(name, c, s1, r, e) : 0.0;
      double v = 0.0;
      switch (op) {
        case Op::Add: v = a + b; break;
        case Op::Mul: v = a * b; break;
        case Op::MulAddDst:  // dst = src0 * src1 + dst, rounded after each step
          v = Rounded(dst.ty, a * b, sat) + Load(name, c, dst, r, e);
          break;
        case Op::Muls: v = a * scalar; break;
        case Op::Axpy:  // dst = src * scalar + dst
          v = Rounded(dst.ty, a * scalar, sat) + Load(name, c, dst, r, e);
          break;
        case Op::Sqrt:
          if (a <= 0.0) Fail(name, "input not positive (the instruction takes positive values)");
          v = std::sqrt(a);
          break;
        case Op::Dup: v = scalar; break;
        case Op::Conv:
          v = a;
          // saturation mode also clamps an inf / NaN fp16 source of a widening conversion (the
          // docs put fp16 precision conversion under CTRL[48]; lars_npu's emulation reads it so)
          if (sat && s0.ty == Ty::F16 && !std::isfinite(v)) {
            v = std::isnan(v) ? 0.0 : std::copysign(65504.0, v);
          }
          break;
      }
      Store(name, c, dst, r, e, v, op == Op::Conv ? round : Round::Rint);
    }
  }
}

void ReduceAdd(const char* name, Operand dst, Operand src, uint8_t repeat, bool accumulate) {
  Core& c = Cur(name);
  CheckOperand(name, c, src);
  if (dst.ty == Ty::Other) Unmodelled(name);
  const Lanes l = LanesOf(c, Size(src.ty), repeat);
  const bool sat = Saturating(c);
  double total = 0.0;
  std::vector<double> v(l.per_repeat);
  for (uint64_t r = 0; r < l.repeats; ++r) {
    for (uint64_t e = 0; e < l.per_repeat; ++e) {
      v[e] = l.Active(r, e) ? Load(name, c, src, r, e) : 0.0;
    }
    // a binary tree of neighbours (ReduceDataBlock's "key feature"), each sum in the type; an
    // fp16 partial sum beyond 65504 is 65504 (asc_repeat_reduce_sum's documented example)
    for (uint64_t width = l.per_repeat; width > 1; width /= 2) {
      for (uint64_t i = 0; i < width / 2; ++i) {
        double s = v[2 * i] + v[2 * i + 1];
        if (src.ty == Ty::F16 && std::isfinite(s)) s = std::clamp(s, -65504.0, 65504.0);
        v[i] = Rounded(src.ty, s, sat);
      }
    }
    if (accumulate) {  // the repeats' sums added in order (ReduceSum of n elements on A2)
      total = Rounded(src.ty, total + v[0], sat);
    } else {
      uint8_t* p = Ub(name, c, static_cast<uint8_t*>(dst.base) + r * dst.rep * Size(dst.ty),
                      Size(dst.ty), Size(dst.ty));
      Store(name, c, {p, dst.ty, 0, 0}, 0, 0, v[0], Round::Rint);
    }
  }
  if (accumulate) {
    if (src.ty == Ty::F32) {
      const auto f = static_cast<float>(total);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      c.acc = static_cast<int64_t>(bits);
    } else {
      c.acc = static_cast<int64_t>(ToF16(total, Round::Rint, sat));
    }
  }
}

// ---- the runner's side -------------------------------------------------------------------------
void BeginCore(uint8_t* ub, size_t ub_bytes, int64_t block_idx, int64_t block_num,
               bool saturation, const std::vector<GmRegion>* gm) {
  g_core = Core{};
  g_core.active = true;
  g_core.ub = ub;
  g_core.ub_bytes = ub_bytes;
  g_core.block_idx = block_idx;
  g_core.block_num = block_num;
  g_core.ctrl = saturation ? 0 : uint64_t{1} << kCtrlFloatMode;
  g_core.gm = gm;
  Poison(ub, ub_bytes);
}

void PoisonUnifiedBuffer(uint64_t addr, uint64_t bytes) {
  const Core& c = Cur("AscendCBufAbsAddr");
  Poison(Ub("AscendCBufAbsAddr", c, reinterpret_cast<void*>(addr), bytes, 1), bytes);
}

void EndCore() { g_core = Core{}; }

}  // namespace lars_asc_real

using lars_asc_real::Burst;
using lars_asc_real::Cur;
using lars_asc_real::Dir;
using lars_asc_real::Fail;
using lars_asc_real::PadIn;
using lars_asc_real::PadOut;

// ---- DMA ----------------------------------------------------------------------------------------
void copy_gm_to_ubuf(void* dst, void* src, uint8_t, uint16_t n, uint16_t len, uint16_t src_gap,
                     uint16_t dst_gap) {
  Burst("copy_gm_to_ubuf", Dir::GmToUb, dst, src, n, len, src_gap, dst_gap);
}
void copy_ubuf_to_gm(void* dst, void* src, uint8_t, uint16_t n, uint16_t len, uint16_t src_gap,
                     uint16_t dst_gap) {
  Burst("copy_ubuf_to_gm", Dir::UbToGm, dst, src, n, len, src_gap, dst_gap);
}
void copy_ubuf_to_ubuf(void* dst, void* src, uint8_t, uint16_t n, uint16_t len, uint16_t src_gap,
                       uint16_t dst_gap) {
  Burst("copy_ubuf_to_ubuf", Dir::UbToUb, dst, src, n, len, src_gap, dst_gap);
}
#define LARS_ASC_PAD(BITS)                                                                      \
  void copy_gm_to_ubuf_align_b##BITS(void* dst, void* src, uint8_t, uint16_t n, uint32_t len,   \
                                     uint8_t left, uint8_t right, uint64_t src_gap,            \
                                     uint32_t dst_gap) {                                       \
    PadIn("copy_gm_to_ubuf_align_b" #BITS, BITS / 8, dst, src, n, len, left, right, src_gap,   \
          dst_gap);                                                                            \
  }                                                                                            \
  void copy_ubuf_to_gm_align_b##BITS(void* dst, void* src, uint8_t, uint16_t n, uint32_t len,   \
                                     uint8_t left, uint8_t right, uint32_t src_gap,            \
                                     uint64_t dst_gap) {                                       \
    PadOut("copy_ubuf_to_gm_align_b" #BITS, BITS / 8, dst, src, n, len, left, right, src_gap,  \
           dst_gap);                                                                           \
  }
LARS_ASC_PAD(8)
LARS_ASC_PAD(16)
LARS_ASC_PAD(32)
#undef LARS_ASC_PAD

void set_mov_pad_val(uint64_t value) {
  auto& c = Cur("set_mov_pad_val");
  c.pad_set = true;
  c.pad_value = value;
}

// ---- registers -------------------------------------------------------------------------------
int64_t get_acc_val() { return Cur("get_acc_val").acc; }
void set_mask_count() { Cur("set_mask_count").counter_mode = true; }
void set_mask_norm() { Cur("set_mask_norm").counter_mode = false; }
void set_vector_mask(uint64_t high, uint64_t low) {
  auto& c = Cur("set_vector_mask");
  c.mask_high = high;
  c.mask_low = low;
}
int64_t get_ctrl() { return static_cast<int64_t>(Cur("get_ctrl").ctrl); }
void set_ctrl(uint64_t value) { Cur("set_ctrl").ctrl = value; }
uint64_t sbitset0(uint64_t value, int64_t bit) {
  if (bit < 0 || bit > 63) Fail("sbitset0", "bit index outside 0..63");
  return value & ~(uint64_t{1} << bit);
}
uint64_t sbitset1(uint64_t value, int64_t bit) {
  if (bit < 0 || bit > 63) Fail("sbitset1", "bit index outside 0..63");
  return value | (uint64_t{1} << bit);
}
int64_t sff0(uint64_t value) {  // the first 0 bit from the least significant, -1 if none
  for (int64_t i = 0; i < 64; ++i) {
    if (((value >> i) & 1u) == 0) return i;
  }
  return -1;
}
int64_t get_block_num() { return Cur("get_block_num").block_num; }
int64_t get_block_idx() { return Cur("get_block_idx").block_idx; }

// ---- synchronisation: every instruction has completed when the next is issued ------------------
namespace {
void CheckEvent(const char* name, pipe_t src, pipe_t dst, uint64_t id) {
  Cur(name);
  if (src > PIPE_FIX || dst > PIPE_FIX || id > EVENT_ID7) Fail(name, "pipe or event out of range");
}
}  // namespace
void set_flag(pipe_t src, pipe_t dst, event_t id) { CheckEvent("set_flag", src, dst, id); }
void set_flag(pipe_t src, pipe_t dst, uint64_t id) { CheckEvent("set_flag", src, dst, id); }
void wait_flag(pipe_t src, pipe_t dst, event_t id) { CheckEvent("wait_flag", src, dst, id); }
void wait_flag(pipe_t src, pipe_t dst, uint64_t id) { CheckEvent("wait_flag", src, dst, id); }
void pipe_barrier(pipe_t pipe) {
  Cur("pipe_barrier");
  if (pipe > PIPE_FIX) Fail("pipe_barrier", "pipe out of range");
}
void dcci(void* addr, cache_line_t, dcci_dst_t) {
  if (addr == nullptr) Fail("dcci", "null address");
}
void dcci(void* addr, uint64_t, uint64_t) {
  if (addr == nullptr) Fail("dcci", "null address");
}
void dcci(void* addr, uint64_t) {
  if (addr == nullptr) Fail("dcci", "null address");
}
// mode setters with nothing to model for these kernels (atomics off, no L1 / padding use)
void set_atomic_none() {}
void set_l1_3d_size(uint64_t) {}
void set_padding(uint64_t) {}

// ---- the real library's asserts ----------------------------------------------------------------
namespace lars_asc_real {
namespace {
char* g_log = nullptr;
size_t g_log_len = 0;
FILE* g_saved_stdout = nullptr;
FILE* g_log_file = nullptr;
}  // namespace

CaptureLog::CaptureLog() {
  g_log_file = open_memstream(&g_log, &g_log_len);
  if (g_log_file != nullptr) {
    std::fflush(stdout);
    g_saved_stdout = stdout;
    stdout = g_log_file;
  }
}

CaptureLog::~CaptureLog() {
  if (g_log_file == nullptr) return;
  std::fflush(g_log_file);
  stdout = g_saved_stdout;
  std::fclose(g_log_file);
  if (g_log_len > 0) std::fwrite(g_log, 1, g_log_len, stdout);  // nothing printed is lost
  std::fflush(stdout);
  std::free(g_log);
  g_log = nullptr;
  g_log_len = 0;
  g_log_file = nullptr;
}

int RaiseFromLibrary(int sig) {
  if (std::uncaught_exceptions() > 0) return 0;  // a check while unwinding: the first error wins
  // the library logged why just before: quote its last error line (else its last line)
  std::string error, last;
  if (g_log_file != nullptr) {
    std::fflush(g_log_file);
    const std::string text(g_log, g_log_len);
    for (size_t at = 0; at < text.size();) {
      const size_t nl = std::min(text.find('\n', at), text.size());
      const std::string line = text.substr(at, nl - at);
      if (!line.empty()) last = line;
      if (line.find("ERROR") != std::string::npos) error = line;
      at = nl + 1;
    }
  }
  const std::string why = !error.empty() ? error : !last.empty() ? last : "(nothing logged)";
  throw ModelError("the AscendC library's CPU-debug check failed (raise(" + std::to_string(sig) +
                   ")): " + why);
}

}  // namespace lars_asc_real

// The mask register as asc-tools' API checks read it (include/model/model_factory_mask.h).
uint64_t ModelFactoryGetMaskHigh() { return Cur("ModelFactoryGetMaskHigh").mask_high; }
uint64_t ModelFactoryGetMaskLow() { return Cur("ModelFactoryGetMaskLow").mask_low; }
uint64_t ModelFactoryGetMaskMode() { return Cur("ModelFactoryGetMaskMode").counter_mode ? 1 : 0; }
