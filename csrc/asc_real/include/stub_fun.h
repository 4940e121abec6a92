// lars_npu's own model of the CCE intrinsic layer that the REAL AscendC headers (asc-devkit,
// CPU-debug mode: ASCENDC_CPU_DEBUG=1, __NPU_ARCH__=2201) call. Those headers include
// "stub_fun.h", which in CANN is a closed library's declarations (with a closed CPU model behind
// them); this file takes its place for lars_npu's `real` runner (docs/emulation.md). Nothing
// here is Huawei's code: the names and argument orders are read from the headers' call sites and
// CANN's public documentation of each instruction; the semantics are implemented in
// asc_model.cpp, also ours.
//
// Three kinds of names:
//  - modelled intrinsics (DMA, vector arithmetic, conversions, reductions, mask and control
//    registers, flags): declared below, implemented in asc_model.cpp;
//  - bookkeeping hooks of the closed CPU-debug library (AscendCBuf*, AscendCQueCreate, ...):
//    no-ops here, but for the one that re-poisons the Unified Buffer (asc_hooks.cpp);
//  - every other intrinsic the headers name somewhere (so that they compile): a catch-all that
//    throws "intrinsic X is not modelled" if a kernel ever reaches it at run time.
#pragma once

#include <cstdint>
#include <type_traits>

#include "stub_def.h"  // asc-tools' CPU-debug types (half, bfloat16_t, ...), the user's copy

// ---- enumerations the headers name ------------------------------------------------------------
// The values are ours (the CCE compiler's are not published); nothing in the model depends on them.
enum pipe_t : uint8_t {
  PIPE_S = 0, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_ALL, PIPE_MTE4, PIPE_MTE5,
  PIPE_V2, PIPE_FIX
};
enum event_t : uint8_t {
  EVENT_ID0 = 0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7
};
enum cache_line_t : uint8_t { SINGLE_CACHE_LINE = 0, ENTIRE_DATA_CACHE };
enum dcci_dst_t : uint8_t { CACHELINE_ALL = 0, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC };
enum pad_t : uint8_t {
  PAD_NONE = 0, PAD_MODE1, PAD_MODE2, PAD_MODE3, PAD_MODE4, PAD_MODE5, PAD_MODE6, PAD_MODE7,
  PAD_MODE8
};
enum QuantMode_t : uint8_t {
  NoQuant = 0, F322F16, F322BF16, DEQF16, VDEQF16, QF322B8_PRE, VQF322B8_PRE, REQ8, VREQ8,
  DEQS322BF16_PRE
};
enum mem_dsb_t : uint8_t { DSB_ALL = 0, DSB_DDR, DSB_UB, DSB_SEQ };
enum mem_t : uint8_t { L1 = 0, L0A, L0B, L0C, UB, BT };
enum Order_t : uint8_t { VALUE_INDEX = 0, INDEX_VALUE, ONLY_VALUE, ONLY_INDEX };
enum atomic_op_t : uint8_t { ATOMIC_SUM = 0, ATOMIC_MAX, ATOMIC_MIN };
enum atomic_type_t : uint8_t {
  ATOMIC_NONE = 0, ATOMIC_F32, ATOMIC_F16, ATOMIC_S16, ATOMIC_S32, ATOMIC_S8, ATOMIC_BF16
};
enum ub_addr8_t : uint8_t { VA0 = 0, VA1, VA2, VA3, VA4, VA5, VA6, VA7 };
enum addr_cal_mode_t : uint8_t { inc = 0, dec };
enum vpart_t : uint8_t { L128 = 0, H128 };

namespace lars_asc_real {

// Raises the model's error (a C++ exception the runner turns into a Python RuntimeError).
[[noreturn]] void Fail(const char* intrinsic, const char* what);
[[noreturn]] void Unmodelled(const char* intrinsic);

// Element types of the vector model: float and half. The headers also instantiate the vector
// intrinsics with integer types (in code lars_npu's kernels never reach): those compile and throw
// "not modelled" if reached.
enum class Ty : uint8_t { F32, F16, Other };
template <typename T>
constexpr Ty TyOf() {
  if constexpr (std::is_same_v<T, float>) return Ty::F32;
  if constexpr (std::is_same_v<T, half>) return Ty::F16;
  return Ty::Other;
}

// What an unmodelled intrinsic "returns" (it throws first): converts to whatever the caller
// expects, and takes the operators the headers apply to such results, so that they compile.
struct AnyValue {
  template <typename T>
  operator T() const {
    return T();
  }
};
template <typename U>
int64_t operator&(AnyValue, U) { return 0; }
template <typename U>
int64_t operator>>(AnyValue, U) { return 0; }

// One vector operand: its UB address and strides (in 32-byte blocks).
struct Operand {
  void* base;
  Ty ty;
  uint32_t blk;  // block stride inside a repeat
  uint32_t rep;  // repeat stride
};

enum class Op : uint8_t { Add, Mul, MulAddDst, Muls, Axpy, Sqrt, Dup, Conv };
enum class Round : uint8_t { Rint, Round, Floor, Ceil, Trunc, Odd };

void Vector(const char* name, Op op, Operand dst, Operand s0, Operand s1, float scalar,
            uint8_t repeat, Round round = Round::Rint);
void ReduceAdd(const char* name, Operand dst, Operand src, uint8_t repeat, bool accumulate);
float HalfToFloat(half h);

// A scalar operand as the model computes with it (the element types it does not model are
// refused by Vector before the value is used).
template <typename U>
float Scalar(U value) {
  if constexpr (std::is_same_v<U, half>) {
    return HalfToFloat(value);
  } else if constexpr (std::is_arithmetic_v<U>) {
    return static_cast<float>(value);
  } else {
    return 0.0f;
  }
}

}  // namespace lars_asc_real

// ---- DMA between global memory and the Unified Buffer -----------------------------------------
// copy_*: nBurst bursts of lenBurst 32-byte blocks, gaps in blocks. *_align_b*: lenBurst in
// bytes, left/right padding in elements, GM gaps in bytes, UB gaps in blocks (DataCopyPad).
void copy_gm_to_ubuf(void* dst, void* src, uint8_t sid, uint16_t nBurst, uint16_t lenBurst,
                     uint16_t srcGap, uint16_t dstGap);
void copy_ubuf_to_gm(void* dst, void* src, uint8_t sid, uint16_t nBurst, uint16_t lenBurst,
                     uint16_t srcGap, uint16_t dstGap);
void copy_ubuf_to_ubuf(void* dst, void* src, uint8_t sid, uint16_t nBurst, uint16_t lenBurst,
                       uint16_t srcGap, uint16_t dstGap);
void copy_gm_to_ubuf_align_b8(void* dst, void* src, uint8_t sid, uint16_t nBurst,
                              uint32_t lenBurst, uint8_t leftPad, uint8_t rightPad,
                              uint64_t srcGap, uint32_t dstGap);
void copy_gm_to_ubuf_align_b16(void* dst, void* src, uint8_t sid, uint16_t nBurst,
                               uint32_t lenBurst, uint8_t leftPad, uint8_t rightPad,
                               uint64_t srcGap, uint32_t dstGap);
void copy_gm_to_ubuf_align_b32(void* dst, void* src, uint8_t sid, uint16_t nBurst,
                               uint32_t lenBurst, uint8_t leftPad, uint8_t rightPad,
                               uint64_t srcGap, uint32_t dstGap);
void copy_ubuf_to_gm_align_b8(void* dst, void* src, uint8_t sid, uint16_t nBurst,
                              uint32_t lenBurst, uint8_t leftPad, uint8_t rightPad,
                              uint32_t srcGap, uint64_t dstGap);
void copy_ubuf_to_gm_align_b16(void* dst, void* src, uint8_t sid, uint16_t nBurst,
                               uint32_t lenBurst, uint8_t leftPad, uint8_t rightPad,
                               uint32_t srcGap, uint64_t dstGap);
void copy_ubuf_to_gm_align_b32(void* dst, void* src, uint8_t sid, uint16_t nBurst,
                               uint32_t lenBurst, uint8_t leftPad, uint8_t rightPad,
                               uint32_t srcGap, uint64_t dstGap);
void set_mov_pad_val(uint64_t value);

// ---- vector instructions (float and half; the element type comes from the pointers) -----------
template <typename T>
inline void vadd(T* dst, T* src0, T* src1, uint8_t repeat, uint8_t dstBlk, uint8_t src0Blk,
                 uint8_t src1Blk, uint8_t dstRep, uint8_t src0Rep, uint8_t src1Rep) {
  using namespace lars_asc_real;
  Vector("vadd", Op::Add, {dst, TyOf<T>(), dstBlk, dstRep}, {src0, TyOf<T>(), src0Blk, src0Rep},
         {src1, TyOf<T>(), src1Blk, src1Rep}, 0.0f, repeat);
}
template <typename T>
inline void vmul(T* dst, T* src0, T* src1, uint8_t repeat, uint8_t dstBlk, uint8_t src0Blk,
                 uint8_t src1Blk, uint8_t dstRep, uint8_t src0Rep, uint8_t src1Rep) {
  using namespace lars_asc_real;
  Vector("vmul", Op::Mul, {dst, TyOf<T>(), dstBlk, dstRep}, {src0, TyOf<T>(), src0Blk, src0Rep},
         {src1, TyOf<T>(), src1Blk, src1Rep}, 0.0f, repeat);
}
// dst = src0 * src1 + dst (MulAddDst); dst may be float with half sources
template <typename D, typename S>
inline void vmla(D* dst, S* src0, S* src1, uint8_t repeat, uint8_t dstBlk, uint8_t src0Blk,
                 uint8_t src1Blk, uint8_t dstRep, uint8_t src0Rep, uint8_t src1Rep) {
  using namespace lars_asc_real;
  Vector("vmla", Op::MulAddDst, {dst, TyOf<D>(), dstBlk, dstRep},
         {src0, TyOf<S>(), src0Blk, src0Rep}, {src1, TyOf<S>(), src1Blk, src1Rep}, 0.0f, repeat);
}
template <typename T, typename U>
inline void vmuls(T* dst, T* src, U value, uint8_t repeat, uint16_t dstBlk, uint16_t srcBlk,
                  uint16_t dstRep, uint16_t srcRep) {
  using namespace lars_asc_real;
  Vector("vmuls", Op::Muls, {dst, TyOf<T>(), dstBlk, dstRep}, {src, TyOf<T>(), srcBlk, srcRep},
         {nullptr, TyOf<T>(), 0, 0}, Scalar(value), repeat);
}
// dst = src * value + dst (Axpy); dst may be float with a half source
template <typename D, typename S, typename U>
inline void vaxpy(D* dst, S* src, U value, uint8_t repeat, uint16_t dstBlk, uint16_t srcBlk,
                  uint16_t dstRep, uint16_t srcRep) {
  using namespace lars_asc_real;
  Vector("vaxpy", Op::Axpy, {dst, TyOf<D>(), dstBlk, dstRep}, {src, TyOf<S>(), srcBlk, srcRep},
         {nullptr, TyOf<S>(), 0, 0}, Scalar(value), repeat);
}
template <typename T>
inline void vsqrt(T* dst, T* src, uint8_t repeat, uint16_t dstBlk, uint16_t srcBlk,
                  uint16_t dstRep, uint16_t srcRep) {
  using namespace lars_asc_real;
  Vector("vsqrt", Op::Sqrt, {dst, TyOf<T>(), dstBlk, dstRep}, {src, TyOf<T>(), srcBlk, srcRep},
         {nullptr, TyOf<T>(), 0, 0}, 0.0f, repeat);
}
template <typename T, typename U>
inline void vector_dup(T* dst, U value, uint8_t repeat, uint16_t dstBlk, uint16_t srcBlk,
                       uint16_t dstRep, uint16_t srcRep) {
  using namespace lars_asc_real;
  (void)srcBlk;
  (void)srcRep;
  Vector("vector_dup", Op::Dup, {dst, TyOf<T>(), dstBlk, dstRep}, {nullptr, TyOf<T>(), 0, 0},
         {nullptr, TyOf<T>(), 0, 0}, Scalar(value), repeat);
}
// Reduction of each repeat's active lanes (a pairwise tree); accumulate = true sums the repeats
// in order into the accumulator that get_acc_val reads, else repeat r's sum goes to
// dst[r * dstRep] (dstRep in elements).
template <typename T>
inline void vcadd(T* dst, T* src, uint8_t repeat, uint16_t dstRep, uint16_t srcBlk,
                  uint16_t srcRep, bool accumulate) {
  using namespace lars_asc_real;
  ReduceAdd("vcadd", {dst, TyOf<T>(), 0, dstRep}, {src, TyOf<T>(), srcBlk, srcRep}, repeat,
            accumulate);
}
int64_t get_acc_val();

#define LARS_ASC_VCONV(NAME, D, S, ROUND)                                                        \
  inline void NAME(D* dst, S* src, uint8_t repeat, uint16_t dstBlk, uint16_t srcBlk,           \
                   uint16_t dstRep, uint16_t srcRep) {                                          \
    using namespace lars_asc_real;                                                              \
    Vector(#NAME, Op::Conv, {dst, TyOf<D>(), dstBlk, dstRep}, {src, TyOf<S>(), srcBlk, srcRep}, \
           {nullptr, TyOf<S>(), 0, 0}, 0.0f, repeat, Round::ROUND);                             \
  }
LARS_ASC_VCONV(vconv_f162f32, float, half, Rint)  // exact
LARS_ASC_VCONV(vconv_f322f16, half, float, Rint)  // CAST_NONE: the default rounding, RNE
LARS_ASC_VCONV(vconv_f322f16r, half, float, Rint)
LARS_ASC_VCONV(vconv_f322f16a, half, float, Round)
LARS_ASC_VCONV(vconv_f322f16f, half, float, Floor)
LARS_ASC_VCONV(vconv_f322f16c, half, float, Ceil)
LARS_ASC_VCONV(vconv_f322f16z, half, float, Trunc)
LARS_ASC_VCONV(vconv_f322f16o, half, float, Odd)
#undef LARS_ASC_VCONV

// ---- mask, control register, synchronisation, system registers -----------------------------
void set_mask_count();
void set_mask_norm();
void set_vector_mask(uint64_t high, uint64_t low);
int64_t get_ctrl();
void set_ctrl(uint64_t value);
uint64_t sbitset0(uint64_t value, int64_t bit);
uint64_t sbitset1(uint64_t value, int64_t bit);
int64_t sff0(uint64_t value);
void set_flag(pipe_t src, pipe_t dst, event_t id);
void set_flag(pipe_t src, pipe_t dst, uint64_t id);
void wait_flag(pipe_t src, pipe_t dst, event_t id);
void wait_flag(pipe_t src, pipe_t dst, uint64_t id);
void pipe_barrier(pipe_t pipe);
void dcci(void* addr, cache_line_t line, dcci_dst_t dst);
void dcci(void* addr, uint64_t line, uint64_t dst);
void dcci(void* addr, uint64_t line);
int64_t get_block_num();
int64_t get_block_idx();
void set_atomic_none();
void set_l1_3d_size(uint64_t value);
void set_padding(uint64_t value);

// ---- bookkeeping hooks of the closed CPU-debug library (asc_hooks.cpp) ------------------------
void AscendCBufAbsAddr(uint8_t hardware, uint64_t addr, uint32_t len);
void AscendCBufInit(uint8_t pos, int32_t type, int32_t num, uint64_t addr, uint32_t len);
void AscendCBufAlloc(uint8_t pos, uint8_t hardware, uint64_t addr, uint64_t len);
void AscendCBufEnque(uint8_t src, uint8_t dst, uint8_t pos, uint64_t addr);
void AscendCBufDeque(uint8_t src, uint8_t dst, uint8_t pos, uint64_t addr);
void AscendCBufFree(uint8_t pos, uint8_t hardware, uint64_t addr, uint64_t len);
void AscendCBufGet(uint8_t pos, uint8_t hardware, uint64_t addr, uint32_t len);
void AscendCQueCreate(uint8_t src, uint8_t dst, int32_t depth);
void AscendCTBufPoolInit(uint8_t pos, uint64_t addr, uint32_t len, uint64_t handle);
void AscendCTBufPoolResetCheck(uint8_t pos, uint64_t addr, uint64_t len, uint64_t handle);
void AscendCUpdateTbufPoolStatus(uint64_t handle, bool reset);

// ---- every other intrinsic the headers name: throws if reached --------------------------------
#define LARS_ASC_UNMODELLED(NAME)                                \
  template <typename... A>                                      \
  inline lars_asc_real::AnyValue NAME(A&&...) {                 \
    lars_asc_real::Unmodelled(#NAME);                           \
  }
#include "unmodelled_intrinsics.inc"
#undef LARS_ASC_UNMODELLED
