// Deliberately broken mini-kernels, run on the emulation to prove that it refuses what the
// hardware refuses (tests/test_emu_kernels.py). Each case throws AscendC::emu::Violation.
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernel_operator.h"
// (after kernel_operator.h, as in lars_kernels.cpp)
#include "../ascendc/lars_float_mode.h"

namespace lars_emu {

namespace {
// FreeTensor takes LocalTensor<T>& (non-const) as in the real AscendC headers: the emulation
// must not accept a call that CANN's compiler rejects (tests/test_emu_kernels.py also compiles
// such calls and expects the compiler to refuse them).
template <typename Arg, typename = void>
struct can_free : std::false_type {};
template <typename Arg>
struct can_free<Arg, std::void_t<decltype(std::declval<AscendC::TQue<AscendC::TPosition::VECIN, 2>&>()
                                              .FreeTensor(std::declval<Arg>()))>>
    : std::true_type {};
static_assert(can_free<AscendC::LocalTensor<float>&>::value, "FreeTensor(LocalTensor&)");
static_assert(!can_free<const AscendC::LocalTensor<float>&>::value,
              "FreeTensor must not take a const LocalTensor (the real signature does not)");
static_assert(!can_free<AscendC::LocalTensor<float>&&>::value,
              "FreeTensor must not take a temporary (the real signature does not)");
// Sets the emulation's launch options (core order, counters, floating-point mode) for this
// thread and puts the previous ones back.
class WithOptions {
 public:
  explicit WithOptions(AscendC::emu::LaunchOptions o) : saved_(AscendC::emu::launch_options()) {
    AscendC::emu::launch_options() = o;
  }
  ~WithOptions() { AscendC::emu::launch_options() = saved_; }
  WithOptions(const WithOptions&) = delete;
  WithOptions& operator=(const WithOptions&) = delete;

 private:
  AscendC::emu::LaunchOptions saved_;
};

// Σx² in fp32 of 16 fp16 values, 1 but for x[3] = `special`, widened by Cast as the fp16 kernels
// widen a gradient tile (the scalar stores of the specials ordered before the vector unit).
float sum_squares_fp16(AscendC::TPipe& pipe, float special) {
  AscendC::TBuf<AscendC::TPosition::VECCALC> hb, fb, sb;
  pipe.InitBuffer(hb, 16 * sizeof(half));
  pipe.InitBuffer(fb, 16 * sizeof(float));
  pipe.InitBuffer(sb, 8 * sizeof(float));
  AscendC::LocalTensor<half> h = hb.Get<half>();
  AscendC::LocalTensor<float> f = fb.Get<float>(), sum = sb.Get<float>();
  AscendC::Duplicate(h, half(1.0f), 16);
  AscendC::SetFlag<AscendC::HardEvent::V_S>(0);
  AscendC::WaitFlag<AscendC::HardEvent::V_S>(0);
  h.SetValue(3, half(special));
  AscendC::SetFlag<AscendC::HardEvent::S_V>(0);
  AscendC::WaitFlag<AscendC::HardEvent::S_V>(0);
  AscendC::Cast(f, h, AscendC::RoundMode::CAST_NONE, 16);
  AscendC::PipeBarrier<PIPE_V>();
  AscendC::Mul(f, f, f, 16);
  AscendC::PipeBarrier<PIPE_V>();
  AscendC::ReduceSum(sum, f, sum, 16);  // stored by the scalar unit, read by it (work: dst)
  return sum.GetValue(0);
}
}  // namespace

void selftest(const std::string& which, bool saturation) {
  AscendC::emu::LaunchOptions options;
  options.saturation = saturation;
  // the "nosync_" cases run as kernels built without --cce-auto-sync
  options.auto_sync = which.rfind("nosync_", 0) != 0;
  WithOptions with(options);
  alignas(64) float gm_data[64] = {};
  AscendC::emu::Launch(1, 192 * 1024, [&] {
    AscendC::TPipe pipe;
    AscendC::TQue<AscendC::TPosition::VECIN, 2> que;
    pipe.InitBuffer(que, 2, 32 * sizeof(float));
    AscendC::GlobalTensor<float> gm;
    gm.SetGlobalBuffer(gm_data, 64);
    if (which == "empty_deque") {
      (void)que.DeQue<float>();
    } else if (which == "use_after_free") {
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      que.FreeTensor(t);
      AscendC::Duplicate(t, 1.0f, 8);
    } else if (which == "alloc_exhausted") {
      (void)que.AllocTensor<float>();
      (void)que.AllocTensor<float>();
      (void)que.AllocTensor<float>();
    } else if (which == "misaligned_ub") {
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      AscendC::DataCopy(t[3], gm, 8);  // 12 bytes into the buffer: not 32-byte aligned
    } else if (which == "gm_overrun") {
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      AscendC::DataCopy(t, gm[40], 32);  // 32 elements from element 40 of 64
    } else if (which == "partial_block") {
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      AscendC::DataCopy(t, gm, 12);  // 48 bytes: hardware would silently copy 32
    } else if (which == "scalar_after_vector") {
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      AscendC::Duplicate(t, 1.0f, 8);
      (void)t.GetValue(0);  // no V -> S wait: may read before the vector unit wrote
    } else if (which == "scalar_write_copied_out") {
      AscendC::TQue<AscendC::TPosition::VECOUT, 1> out;
      pipe.InitBuffer(out, 1, 32);
      AscendC::LocalTensor<float> t = out.AllocTensor<float>();
      t.SetValue(0, 1.0f);
      out.EnQue(t);  // the queue orders V -> MTE3, not S -> MTE3
      t = out.DeQue<float>();
      AscendC::DataCopy(gm, t, 8);
    } else if (which == "vector_reads_dma_without_queue") {
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
      pipe.InitBuffer(buf, 32 * sizeof(float));
      AscendC::LocalTensor<float> t = buf.Get<float>();
      AscendC::DataCopy(t, gm, 32);
      AscendC::Muls(t, t, 2.0f, 32);  // no MTE2 -> V wait and no queue in between
    } else if (which == "wait_without_set") {
      AscendC::WaitFlag<AscendC::HardEvent::V_S>(0);
    } else if (which == "set_twice") {
      AscendC::SetFlag<AscendC::HardEvent::V_S>(0);
      AscendC::SetFlag<AscendC::HardEvent::V_S>(0);
    } else if (which == "set_never_waited") {
      AscendC::SetFlag<AscendC::HardEvent::V_S>(0);
    } else if (which == "vector_overwrites_copy_source") {
      AscendC::TQue<AscendC::TPosition::VECOUT, 1> out;
      pipe.InitBuffer(out, 1, 32);
      AscendC::LocalTensor<float> t = out.AllocTensor<float>();
      AscendC::Duplicate(t, 1.0f, 8);
      out.EnQue(t);
      t = out.DeQue<float>();
      AscendC::DataCopy(gm, t, 8);     // MTE3 reads the buffer...
      AscendC::Duplicate(t, 2.0f, 8);  // ...while V overwrites it: no MTE3 -> V, no FreeTensor
    } else if (which == "write_after_enque") {
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      que.EnQue(t);
      AscendC::DataCopy(t, gm, 32);  // the queue's flag covers only what came before EnQue
      t = que.DeQue<float>();
      AscendC::Muls(t, t, 2.0f, 32);
    } else if (which == "pad_copy_veccalc") {
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
      pipe.InitBuffer(buf, 32 * sizeof(float));
      AscendC::DataCopyExtParams copy{1, 3 * sizeof(float), 0, 0, 0};
      AscendC::DataCopyPadExtParams<float> pad{};
      AscendC::DataCopyPad(buf.Get<float>(), gm, copy, pad);
    } else if (which == "sqrt_of_zero") {
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
      pipe.InitBuffer(buf, 32 * sizeof(float));
      AscendC::LocalTensor<float> t = buf.Get<float>();
      AscendC::Duplicate(t, 0.0f, 8);
      AscendC::Sqrt(t, t, 8);
    } else if (which == "gm_read_without_dcci") {
      // WRONG: a scalar read of global memory (the host's table, an earlier launch's output)
      // with no DataCacheCleanAndInvalid first: the core's data cache may hold a stale line
      (void)gm.GetValue(0);
    } else if (which == "gm_read_after_dma_without_dcci") {
      // WRONG: DCCI, then a DMA write to GM, then a scalar read of it: the line is stale again
      AscendC::DataCacheCleanAndInvalid<float, AscendC::CacheLine::ENTIRE_DATA_CACHE,
                                        AscendC::DcciDst::CACHELINE_OUT>(gm);
      AscendC::TQue<AscendC::TPosition::VECOUT, 1> out;
      pipe.InitBuffer(out, 1, 32);
      AscendC::LocalTensor<float> t = out.AllocTensor<float>();
      AscendC::Duplicate(t, 1.0f, 8);
      out.EnQue(t);
      t = out.DeQue<float>();
      AscendC::DataCopy(gm[8], t, 8);
      out.FreeTensor(t);
      AscendC::SetFlag<AscendC::HardEvent::MTE3_S>(0);
      AscendC::WaitFlag<AscendC::HardEvent::MTE3_S>(0);
      (void)gm.GetValue(9);
    } else if (which == "single_line_dcci_elsewhere") {
      // WRONG: the one cache line invalidated is not the one read
      AscendC::DataCacheCleanAndInvalid<float, AscendC::CacheLine::SINGLE_CACHE_LINE,
                                        AscendC::DcciDst::CACHELINE_OUT>(gm);
      (void)gm.GetValue(40);  // 160 bytes on: another 64-byte line
    } else if (which == "ub_185k") {
      // WRONG on A2: 185 KiB for the kernel, but the top 8 KiB of 192 are the APIs' scratch
      AscendC::TBuf<AscendC::TPosition::VECCALC> big;
      pipe.InitBuffer(big, 185 * 1024 - 2 * 32 * sizeof(float));
    } else if (which == "ub_184k") {
      AscendC::TBuf<AscendC::TPosition::VECCALC> big;  // everything A2 leaves to a kernel
      pipe.InitBuffer(big, 184 * 1024 - 2 * 32 * sizeof(float));
    } else if (which == "misaligned_gm") {
      // WRONG for lars_npu's kernels: a DMA from a global address that is not 32-byte aligned
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      AscendC::DataCopy(t, gm[3], 8);
    } else if (which == "reduce_sum_work_holds_partials") {
      // WRONG: takes ReduceSum's work tensor for per-repeat partial sums. A2 never writes it.
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
      pipe.InitBuffer(buf, 256 * sizeof(float));
      AscendC::LocalTensor<float> all = buf.Get<float>();
      AscendC::LocalTensor<float> src = all, work = all[128], dst = all[192];
      AscendC::Duplicate(all, 0.0f, 256);
      AscendC::Duplicate(src, 1.0f, 128);
      AscendC::ReduceSum(dst, src, work, 128);
      AscendC::SetFlag<AscendC::HardEvent::V_S>(0);
      AscendC::WaitFlag<AscendC::HardEvent::V_S>(0);
      if (work.GetValue(0) != 64.0f) {
        throw std::logic_error("kernel result wrong: ReduceSum's work tensor holds no partials");
      }
    } else if (which == "reduce_sum_sequential_bits") {
      // WRONG: expects the bits of a sequential fp32 sum. 1 + 63 x 2^-24: sequentially every
      // 2^-24 rounds away; A2's pairwise tree adds them first.
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
      pipe.InitBuffer(buf, 128 * sizeof(float));
      AscendC::LocalTensor<float> src = buf.Get<float>(), dst = src[64];
      AscendC::Duplicate(src, 5.9604645e-8f, 64);
      AscendC::SetFlag<AscendC::HardEvent::V_S>(0);
      AscendC::WaitFlag<AscendC::HardEvent::V_S>(0);
      src.SetValue(0, 1.0f);
      float sequential = 0.0f;
      for (int i = 0; i < 64; ++i) sequential += src.GetValue(i);
      AscendC::SetFlag<AscendC::HardEvent::S_V>(0);
      AscendC::WaitFlag<AscendC::HardEvent::S_V>(0);
      AscendC::ReduceSum(dst, src, dst, 64);  // work: dst's 8 floats (the docs allow dst there)
      if (dst.GetValue(0) != sequential) {
        throw std::logic_error("kernel result wrong: ReduceSum is not a sequential sum");
      }
    } else if (which == "fp16_inf_without_mode") {
      // WRONG: takes an inf / NaN fp16 gradient to reach Σg² through the widening Cast, in
      // whatever mode the stream gave the core. In saturation mode (CTRL[48] = 0) the Cast gives
      // 65504 and 0: Σg² is finite, the step would not be skipped.
      const float inf_sum = sum_squares_fp16(pipe, INFINITY);
      const float nan_sum = sum_squares_fp16(pipe, NAN);
      if (inf_sum - inf_sum == 0.0f || nan_sum - nan_sum == 0.0f) {
        throw std::logic_error("kernel result wrong: an inf / NaN fp16 value gave a finite "
                               "sum of squares (the Cast saturated it)");
      }
    } else if (which == "fp16_inf_in_inf_nan_mode") {
      // right: the fp16 kernels' InfNanMode (lars_float_mode.h) around the same computation
      const lars_ascendc::InfNanMode inf_nan;
      const float inf_sum = sum_squares_fp16(pipe, INFINITY);
      const float nan_sum = sum_squares_fp16(pipe, NAN);
      if (inf_sum != INFINITY || nan_sum == nan_sum) {
        throw std::logic_error("selftest fp16: inf / NaN did not reach the sum in INF_NAN mode");
      }
    } else if (which == "mode_not_restored") {
      // WRONG: switches the core's floating-point mode and leaves it switched for what runs next
      AscendC::SetSaturationFlag<AscendC::SaturationMode::FLOAT>(
          !AscendC::GetSaturationFlag<AscendC::SaturationMode::FLOAT>());
    } else if (which == "reduce_sum_work_is_src") {
      // WRONG for lars_npu's kernels: the source passed as the work tensor. A2 ignores it, but the
      // SoCs that use it write partial sums there while reading the source.
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
      pipe.InitBuffer(buf, 72 * sizeof(float));
      AscendC::LocalTensor<float> src = buf.Get<float>(), dst = src[64];
      AscendC::Duplicate(src, 1.0f, 64);
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::ReduceSum(dst, src, src, 64);
    } else if (which == "reduce_sum_work_too_small") {
      // WRONG: 8 floats of work for 1,024 elements (16 repeats: the docs ask for 16)
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf, wb;
      pipe.InitBuffer(buf, 1032 * sizeof(float));
      pipe.InitBuffer(wb, 8 * sizeof(float));
      AscendC::LocalTensor<float> src = buf.Get<float>(), dst = src[1024];
      AscendC::Duplicate(src, 1.0f, 1024);
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::ReduceSum(dst, src, wb.Get<float>(), 1024);
    } else if (which == "nosync_raw" || which == "nosync_war" || which == "nosync_waw") {
      // WRONG with auto-sync off: two dependent vector instructions, no PipeBarrier<PIPE_V>
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
      pipe.InitBuffer(buf, 64 * sizeof(float));
      AscendC::LocalTensor<float> a = buf.Get<float>(), b = a[32];
      AscendC::Duplicate(b, 0.0f, 32);
      AscendC::PipeBarrier<PIPE_V>();
      if (which == "nosync_raw") {
        AscendC::Duplicate(a, 1.0f, 32);
        AscendC::Muls(b, a, 2.0f, 32);  // reads what the Duplicate writes
      } else if (which == "nosync_war") {
        AscendC::Muls(b, a[8], 2.0f, 8);
        AscendC::Duplicate(a, 1.0f, 16);  // overwrites what the Muls reads
      } else {
        AscendC::Duplicate(a, 1.0f, 32);
        AscendC::Duplicate(a[24], 2.0f, 8);  // writes over the first one's last block
      }
    } else if (which == "nosync_queue_is_not_a_barrier") {
      // WRONG with auto-sync off: a VECOUT buffer's EnQue/DeQue orders V before MTE3, not before
      // the next vector instruction, which reads what the first one wrote
      AscendC::TQue<AscendC::TPosition::VECOUT, 1> out;
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
      pipe.InitBuffer(out, 1, 8 * sizeof(float));
      pipe.InitBuffer(buf, 8 * sizeof(float));
      AscendC::LocalTensor<float> o = out.AllocTensor<float>();
      AscendC::Duplicate(o, 1.0f, 8);
      out.EnQue(o);
      o = out.DeQue<float>();
      AscendC::DataCopy(gm, o, 8);
      AscendC::Muls(buf.Get<float>(), o, 2.0f, 8);
    } else if (which == "nosync_ok") {
      // the same with auto-sync off, each dependency ordered: a PipeBarrier<PIPE_V>; a V -> S
      // wait (the scalar unit issues what follows); a chain of pipe events (a VECOUT buffer
      // copied out, freed, allocated again); ReduceSum (its own V -> S sync); and independent
      // vector instructions (disjoint UB, or reads only) need nothing
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
      pipe.InitBuffer(buf, 96 * sizeof(float));
      AscendC::LocalTensor<float> a = buf.Get<float>(), b = a[32], w = a[64];
      AscendC::Duplicate(a, 1.0f, 16);
      AscendC::Duplicate(a[16], 1.0f, 16);  // disjoint
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::Muls(b, a, 2.0f, 32);
      AscendC::Muls(w, a, 3.0f, 32);  // reads a too: no dependency on the other read
      AscendC::SetFlag<AscendC::HardEvent::V_S>(0);
      AscendC::WaitFlag<AscendC::HardEvent::V_S>(0);
      AscendC::Add(a, b, w, 32);  // a = 5
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::ReduceSum(b, a, b[8], 32);  // 160, by the scalar unit; orders V before V itself
      AscendC::Duplicate(a, 0.0f, 32);
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::TQue<AscendC::TPosition::VECOUT, 1> out;
      pipe.InitBuffer(out, 1, 8 * sizeof(float));
      for (int round = 0; round < 2; ++round) {  // round 1's Duplicate after round 0's copy
        AscendC::LocalTensor<float> o = out.AllocTensor<float>();
        AscendC::Duplicate(o, 1.0f + static_cast<float>(round), 8);
        out.EnQue(o);
        o = out.DeQue<float>();
        AscendC::DataCopy(gm[8 * round], o, 8);
        out.FreeTensor(o);
      }
      AscendC::SetFlag<AscendC::HardEvent::MTE3_S>(0);
      AscendC::WaitFlag<AscendC::HardEvent::MTE3_S>(0);
      if (b.GetValue(0) != 160.0f || gm_data[0] != 1.0f || gm_data[8] != 2.0f) {
        throw std::logic_error("selftest nosync_ok: wrong data");
      }
    } else if (which == "ok") {
      // the same moves, each ordered as the hardware needs
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      AscendC::DataCopy(t, gm, 32);
      que.EnQue(t);
      t = que.DeQue<float>();  // MTE2 -> V by the queue
      AscendC::Duplicate(t, 1.0f, 8);
      auto id = static_cast<event_t>(pipe.FetchEventID(AscendC::HardEvent::V_S));
      AscendC::SetFlag<AscendC::HardEvent::V_S>(id);
      AscendC::WaitFlag<AscendC::HardEvent::V_S>(id);
      t.SetValue(1, t.GetValue(0) + 1.0f);
      id = static_cast<event_t>(pipe.FetchEventID(AscendC::HardEvent::S_MTE3));
      AscendC::SetFlag<AscendC::HardEvent::S_MTE3>(id);
      AscendC::WaitFlag<AscendC::HardEvent::S_MTE3>(id);
      AscendC::DataCopy(gm, t, 8);
      AscendC::DataCopyExtParams copy{1, 5 * sizeof(float), 0, 0, 0};
      AscendC::DataCopyPad(gm[8], t, copy);  // exactly 5 elements out
      que.FreeTensor(t);
      if (gm_data[0] != 1.0f || gm_data[1] != 2.0f || gm_data[12] != 1.0f ||
          gm_data[13] != 0.0f) {
        throw std::logic_error("selftest ok: wrong data");
      }
      // FreeTensor -> AllocTensor orders the vector unit before the next load into the buffer
      AscendC::TQue<AscendC::TPosition::VECIN, 1> in;
      pipe.InitBuffer(in, 1, 32 * sizeof(float));
      for (int round = 0; round < 2; ++round) {
        AscendC::LocalTensor<float> x = in.AllocTensor<float>();
        AscendC::DataCopy(x, gm, 32);
        in.EnQue(x);
        x = in.DeQue<float>();
        AscendC::Muls(x, x, 1.0f, 32);  // the vector unit reads and writes it in place
        in.FreeTensor(x);
      }
      // VECOUT: copy out, FreeTensor, AllocTensor, and the vector unit may write again
      AscendC::TQue<AscendC::TPosition::VECOUT, 1> out;
      pipe.InitBuffer(out, 1, 32);
      for (int round = 0; round < 2; ++round) {
        AscendC::LocalTensor<float> o = out.AllocTensor<float>();
        AscendC::Duplicate(o, 3.0f, 8);
        out.EnQue(o);
        o = out.DeQue<float>();
        AscendC::DataCopy(gm[16], o, 8);
        out.FreeTensor(o);
      }
      // a chain of waits orders transitively: V -> S, then S -> MTE3 orders V before MTE3
      AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
      pipe.InitBuffer(buf, 32);
      AscendC::LocalTensor<float> b = buf.Get<float>();
      AscendC::Duplicate(b, 4.0f, 8);
      AscendC::SetFlag<AscendC::HardEvent::V_S>(0);
      AscendC::WaitFlag<AscendC::HardEvent::V_S>(0);
      AscendC::SetFlag<AscendC::HardEvent::S_MTE3>(0);
      AscendC::WaitFlag<AscendC::HardEvent::S_MTE3>(0);
      AscendC::DataCopy(gm[24], b, 8);
      if (gm_data[16] != 3.0f || gm_data[24] != 4.0f) {
        throw std::logic_error("selftest ok: wrong data (second part)");
      }
      // ReduceSum into a VECOUT buffer, copied out at once: the call orders its scalar store
      // before MTE3 itself (A2)
      AscendC::TQue<AscendC::TPosition::VECOUT, 1> red;
      pipe.InitBuffer(red, 1, 96 * sizeof(float));
      AscendC::LocalTensor<float> r = red.AllocTensor<float>();
      AscendC::Duplicate(r, 0.5f, 96);
      AscendC::ReduceSum(r[88], r, r[88], 80);  // work: dst's block (8 floats, as the docs ask)
      red.EnQue(r);
      r = red.DeQue<float>();
      AscendC::DataCopy(gm[32], r[88], 8);
      red.FreeTensor(r);
      if (gm_data[32] != 40.0f || gm_data[33] != 0.5f) {
        throw std::logic_error("selftest ok: wrong data (ReduceSum)");
      }
      // ReduceSum's dst is written by the scalar unit only (vcadd reads src; the accumulator is
      // stored by S): reducing into a buffer that MTE3 is copying out needs MTE3 -> S, not
      // MTE3 -> V (the previous emulation, which wrote dst on V, refused this right kernel)
      AscendC::TQue<AscendC::TPosition::VECOUT, 1> red2;
      pipe.InitBuffer(red2, 1, 64 * sizeof(float));
      AscendC::LocalTensor<float> r2 = red2.AllocTensor<float>();
      AscendC::Duplicate(r2, 1.0f, 64);
      red2.EnQue(r2);
      r2 = red2.DeQue<float>();
      AscendC::DataCopy(gm[40], r2, 8);  // MTE3 reads r2 ...
      AscendC::SetFlag<AscendC::HardEvent::MTE3_S>(0);
      AscendC::WaitFlag<AscendC::HardEvent::MTE3_S>(0);
      AscendC::ReduceSum(r2, r2[8], r2, 56);  // ... and only then the scalar store into it
      if (r2.GetValue(0) != 56.0f) throw std::logic_error("selftest ok: wrong data (ReduceSum 2)");
      red2.FreeTensor(r2);
      // scalar reads of GM after the data cache maintenance they need: the entire cache after
      // the DMA writes, and a single line
      AscendC::SetFlag<AscendC::HardEvent::MTE3_S>(0);
      AscendC::WaitFlag<AscendC::HardEvent::MTE3_S>(0);
      AscendC::DataCacheCleanAndInvalid<float, AscendC::CacheLine::ENTIRE_DATA_CACHE,
                                        AscendC::DcciDst::CACHELINE_OUT>(gm);
      AscendC::DataCacheCleanAndInvalid<float, AscendC::CacheLine::SINGLE_CACHE_LINE,
                                        AscendC::DcciDst::CACHELINE_OUT>(gm[48]);
      if (gm.GetValue(32) != 40.0f || gm.GetValue(48) != gm_data[48]) {
        throw std::logic_error("selftest ok: wrong data (GetValue)");
      }
      // MulAddDst (dst += a * b), Axpy (dst += a * s) and WholeReduceSum (each repeat's sum to
      // UB by the vector unit, no scalar step): the values, read after a V -> S wait
      AscendC::TBuf<AscendC::TPosition::VECCALC> fb;
      pipe.InitBuffer(fb, 208 * sizeof(float));
      AscendC::LocalTensor<float> acc = fb.Get<float>(), x = acc[64], sums = acc[192];
      AscendC::Duplicate(acc, 1.0f, 64);
      AscendC::Duplicate(x, 2.0f, 128);
      AscendC::Duplicate(sums, 0.0f, 16);
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::MulAddDst(acc, x, x, 64);  // 1 + 2 * 2 = 5
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::Axpy(acc, x, 0.5f, 64);  // 5 + 2 * 0.5 = 6
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::WholeReduceSum(sums, acc, 64, 1, 1, 1, 8);        // 384 into sums[0]
      AscendC::WholeReduceSum(sums[9], x, 5, 2, 2, 1, 8);        // 10 into sums[9] and sums[11]
      AscendC::SetFlag<AscendC::HardEvent::V_S>(0);
      AscendC::WaitFlag<AscendC::HardEvent::V_S>(0);
      if (sums.GetValue(0) != 384.0f || sums.GetValue(1) != 0.0f || sums.GetValue(9) != 10.0f ||
          sums.GetValue(10) != 0.0f || sums.GetValue(11) != 10.0f) {
        throw std::logic_error("selftest ok: wrong data (MulAddDst, Axpy, WholeReduceSum)");
      }
    } else {
      throw std::invalid_argument("unknown selftest case " + which);
    }
  });
}

std::vector<std::pair<std::string, std::vector<float>>> fp16_probe(bool saturation) {
  AscendC::emu::LaunchOptions options;
  options.saturation = saturation;
  WithOptions with(options);
  const float widen_in[4] = {INFINITY, -INFINITY, NAN, 1.0f};
  const float narrow_in[5] = {1e6f, -1e6f, NAN, INFINITY, 1.0f};
  const float add_in[2] = {60000.0f, 1.0f};
  std::vector<std::pair<std::string, std::vector<float>>> out;
  AscendC::emu::Launch(1, 192 * 1024, [&] {
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> hb, fb, ab;
    pipe.InitBuffer(hb, 16 * sizeof(half));
    pipe.InitBuffer(fb, 16 * sizeof(float));
    pipe.InitBuffer(ab, 16 * sizeof(half));
    AscendC::LocalTensor<half> h = hb.Get<half>(), a = ab.Get<half>();
    AscendC::LocalTensor<float> f = fb.Get<float>();
    for (int i = 0; i < 4; ++i) h.SetValue(i, half(widen_in[i]));  // scalar stores: exact
    for (int i = 0; i < 5; ++i) f.SetValue(i, narrow_in[i]);
    for (int i = 0; i < 2; ++i) a.SetValue(i, half(add_in[i]));
    AscendC::SetFlag<AscendC::HardEvent::S_V>(0);
    AscendC::WaitFlag<AscendC::HardEvent::S_V>(0);
    AscendC::Cast(f[8], h, AscendC::RoundMode::CAST_NONE, 4);  // half -> float
    AscendC::Cast(h[8], f, AscendC::RoundMode::CAST_RINT, 5);  // float -> half
    AscendC::Add(a[8], a, a, 2);                                // fp16 arithmetic
    AscendC::SetFlag<AscendC::HardEvent::V_S>(0);
    AscendC::WaitFlag<AscendC::HardEvent::V_S>(0);
    std::vector<float> widened, narrowed, added;
    for (uint32_t i = 0; i < 4; ++i) widened.push_back(f.GetValue(8 + i));
    for (uint32_t i = 0; i < 5; ++i) narrowed.push_back(static_cast<float>(h.GetValue(8 + i)));
    for (uint32_t i = 0; i < 2; ++i) added.push_back(static_cast<float>(a.GetValue(8 + i)));
    out = {{"cast_half_to_float", widened}, {"cast_float_to_half", narrowed}, {"add_half", added}};
  });
  return out;
}

std::vector<float> cross_core_probe(int64_t block_dim, int64_t core_order) {
  if (block_dim <= 0 || block_dim > 64) throw std::invalid_argument("block_dim: 1..64");
  struct alignas(32) Block {  // 8 floats: one 32-byte block per core
    float v[8];
  };
  std::vector<Block> gm_data(static_cast<size_t>(block_dim), Block{});
  AscendC::emu::LaunchOptions saved = AscendC::emu::launch_options();
  AscendC::emu::launch_options() = {core_order, nullptr};
  try {
    AscendC::emu::Launch(block_dim, 192 * 1024, [&] {
      // WRONG: core b waits for nothing, yet takes what core b - 1 wrote in this launch
      const int64_t b = AscendC::GetBlockIdx();
      AscendC::GlobalTensor<float> gm;
      gm.SetGlobalBuffer(gm_data[0].v, static_cast<uint64_t>(block_dim) * 8);
      AscendC::DataCacheCleanAndInvalid<float, AscendC::CacheLine::ENTIRE_DATA_CACHE,
                                        AscendC::DcciDst::CACHELINE_OUT>(gm);
      const float prev = b > 0 ? gm.GetValue(static_cast<uint64_t>(b - 1) * 8) : 0.0f;
      AscendC::TPipe pipe;
      AscendC::TQue<AscendC::TPosition::VECOUT, 1> out;
      pipe.InitBuffer(out, 1, 32);
      AscendC::LocalTensor<float> t = out.AllocTensor<float>();
      AscendC::Duplicate(t, prev + 1.0f, 8);
      out.EnQue(t);
      t = out.DeQue<float>();
      AscendC::DataCopy(gm[static_cast<uint64_t>(b) * 8], t, 8);
      out.FreeTensor(t);
    });
  } catch (...) {
    AscendC::emu::launch_options() = saved;
    throw;
  }
  AscendC::emu::launch_options() = saved;
  std::vector<float> r;
  for (const Block& blk : gm_data) r.push_back(blk.v[0]);
  return r;
}

}  // namespace lars_emu
