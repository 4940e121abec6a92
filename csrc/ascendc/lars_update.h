// AscendC kernel: the LARS update (pass 2), the NPU twin of the CPU rewrite / fused step.
// Same source for CANN and for lars_npu's host emulation (csrc/emu/). Needs DataCopyPad and
// DataCacheCleanAndInvalid: Atlas A2 / A3.
//
// Reads what the earlier launches of the step wrote: first the cores' non-finite flags (from
// KernelSquareSums; O(cores) bytes by one DataCopy, added by ReduceSum — given a work tensor of the
// size the AscendC docs ask for, though A2 ignores it —, no scalar read of global memory; the
// launch's one V -> S round trip): if one is NaN, the core returns without writing (the step is
// skipped on the device, with no host synchronisation; the host reads the same flags when it asks).
// Then, for its chunks (blockIdx, blockIdx + blockNum, ...), it takes λ of the chunk's tensor from
// the table KernelLambda wrote (one scalar read per tensor it touches, after the data cache
// maintenance of Init) and streams the chunk through UB:
//   mode 0 (LARSUpdate):  g  <- λ(g + wd·w)
//   mode 1 (fused step):  g' = λ(g + wd·w) (g' = g where not adapted); m <- g' (first step) or
//                         μ·m + g'; d = g' + μ·m (nesterov) or m (μ = 0: no buffer, d = g');
//                         w <- w - lr·d
// A tensor's last tile may be ragged: DataCopyPad moves exactly its elements in and out and the
// vector instructions run on exactly those (no scalar access to tensor data, whose cache lines
// could be shared with data DMA writes). fp32 computes on the input queues' tiles in place and
// writes the results straight into the output queues' (no widening or narrowing copies); fp16
// widens by Cast into fp32 work tiles and narrows by Cast. Dependent vector instructions are
// separated by PipeBarrier<PIPE_V> (the kernels do not rely on --cce-auto-sync: docs/emulation.md).
// Scalar reads of global memory per core: the tiling, per chunk its descriptor, per tensor it
// touches its parameters, addresses and λ: O(chunks it updates), never O(all chunks).
// UB per core: UpdateUbBytes in lars_tiling.h (Init takes its buffers from there), the same in both
// modes = 3 input queues x 2 tiles + 2 output queues x 1 tile in the storage type (+ 3 fp32 work
// tiles for fp16) + the flags queue 8 KiB + 160 B: with tile_elems = 2048, 72.2 KiB (fp32) or 64.2
// KiB (fp16), of the 184 KiB usable on 910B (256 KiB on 910A, which has no DataCopyPad). The host
// plan refuses a tile above MaxTileUpdate: 5,616 elements (fp32), 6,416 (fp16).
#pragma once

#include "lars_tiling.h"

namespace lars_ascendc {

template <typename T>
class KernelUpdate {
 public:
  __aicore__ inline KernelUpdate() {}

  __aicore__ inline void Init(GM_ADDR w_addrs, GM_ADDR g_addrs, GM_ADDR m_addrs, GM_ADDR chunks,
                              GM_ADDR partials, GM_ADDR params, GM_ADDR tiling_gm) {
    AscendC::GlobalTensor<uint32_t> t;
    t.SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t*>(tiling_gm), 4);
    // Everything below is read by scalar loads through the data cache: the host's tables and the
    // square-sums launch's partials (other cores, DMA). Drop stale lines first.
    AscendC::DataCacheCleanAndInvalid<uint32_t, AscendC::CacheLine::ENTIRE_DATA_CACHE,
                                      AscendC::DcciDst::CACHELINE_OUT>(t);
    tiling_ = UpdateTiling{t.GetValue(0), t.GetValue(1), t.GetValue(2), t.GetValue(3)};
    const uint64_t n = tiling_.num_tensors;
    wAddr_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(w_addrs), n);
    gAddr_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(g_addrs), n);
    mAddr_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(m_addrs), n);
    chunks_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(chunks),
                            uint64_t{tiling_.num_chunks} * 3);
    partials_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(partials),
                              (uint64_t{2} * tiling_.num_chunks + kMaxCoreFlags + n) * kBlock);
    params_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(params), n * kTensorParams);
    // the sizes of lars_tiling.h's formula, which the host plan bounds the tile by
    const UpdateUb ub = UpdateBuffers(tiling_.tile_elems, sizeof(T));
    pipe_.InitBuffer(inW_, BUFFER_NUM, static_cast<uint32_t>(ub.in));
    pipe_.InitBuffer(inG_, BUFFER_NUM, static_cast<uint32_t>(ub.in));
    pipe_.InitBuffer(inM_, BUFFER_NUM, static_cast<uint32_t>(ub.in));
    pipe_.InitBuffer(outA_, 1, static_cast<uint32_t>(ub.out));
    pipe_.InitBuffer(outB_, 1, static_cast<uint32_t>(ub.out));
    if (ub.work > 0) {
      pipe_.InitBuffer(bufW_, static_cast<uint32_t>(ub.work));
      pipe_.InitBuffer(bufG_, static_cast<uint32_t>(ub.work));
      pipe_.InitBuffer(bufM_, static_cast<uint32_t>(ub.work));
    }
    pipe_.InitBuffer(inP_, 1, static_cast<uint32_t>(ub.flags));
    pipe_.InitBuffer(bufSums_, static_cast<uint32_t>(ub.sums));
    pipe_.InitBuffer(bufReduce_, static_cast<uint32_t>(ub.reduce_work));
  }

  __aicore__ inline void Process() {
    if (AnyNonFinite()) return;  // every core decides the same way: write nothing
    const int64_t step = AscendC::GetBlockNum();
    for (int64_t c = AscendC::GetBlockIdx(); c < static_cast<int64_t>(tiling_.num_chunks);
         c += step) {
      const uint64_t tensor = chunks_.GetValue(3 * c);
      const uint64_t offset = chunks_.GetValue(3 * c + 1);
      const uint64_t length = chunks_.GetValue(3 * c + 2);
      UpdateChunk(tensor, offset, length);
    }
  }

 private:
  // The square-sums launch's flags, one block per core (NaN: a non-finite Σg²), by DMA and a
  // vector sum: NaN when any is. The flags of cores beyond this launch's block count are 0 (the
  // host zeroes the region; both launches of a step have the same block count).
  __aicore__ inline bool AnyNonFinite() {
    int64_t cores = AscendC::GetBlockNum();
    if (cores > static_cast<int64_t>(kMaxCoreFlags)) cores = kMaxCoreFlags;
    const uint32_t count = static_cast<uint32_t>(cores) * kBlock;
    AscendC::LocalTensor<float> in = inP_.template AllocTensor<float>();
    AscendC::DataCopy(in, partials_[uint64_t{2} * tiling_.num_chunks * kBlock], count);
    inP_.EnQue(in);
    in = inP_.template DeQue<float>();
    AscendC::LocalTensor<float> sums = bufSums_.Get<float>(), work = bufReduce_.Get<float>();
    AscendC::ReduceSum(sums, in, work, static_cast<int32_t>(count));  // stored by the scalar unit
    inP_.FreeTensor(in);
    const float total = sums.GetValue(0);  // UB: the scalar unit's own store
    return total - total != 0.0f;
  }

  // What the update of a tensor's chunks needs of the tensor: read by scalar loads once per tensor
  // per core (a core meets a tensor's chunks one after another), λ from the table the λ kernel
  // wrote (an earlier launch: read after the data cache maintenance of Init).
  struct TensorArgs {
    uint64_t w = 0, g = 0, m = 0;  // data addresses
    float lam = 1.0f, wd = 0.0f, lr = 0.0f, mu = 0.0f;
    bool adapt = false, has_m = false, first = false, nesterov = false;
  };

  __aicore__ inline const TensorArgs& Tensor(uint64_t tensor) {
    if (tensor == curTensor_) return cur_;
    curTensor_ = tensor;
    const uint64_t p = tensor * kTensorParams;
    const uint32_t flags = static_cast<uint32_t>(params_.GetValue(p + 3));
    cur_.adapt = flags & 1u;
    cur_.has_m = flags & 2u;
    cur_.first = flags & 4u;
    cur_.nesterov = flags & 8u;
    cur_.wd = params_.GetValue(p);
    cur_.lr = params_.GetValue(p + 1);
    cur_.mu = params_.GetValue(p + 2);
    cur_.lam = cur_.adapt ? partials_.GetValue((uint64_t{2} * tiling_.num_chunks +
                                                kMaxCoreFlags + tensor) * kBlock)
                          : 1.0f;
    cur_.w = wAddr_.GetValue(tensor);
    cur_.g = gAddr_.GetValue(tensor);
    cur_.m = tiling_.mode == 1 && cur_.has_m ? mAddr_.GetValue(tensor) : 0;
    return cur_;
  }

  // What one tile's arithmetic takes besides the tiles (the tensor's, and the launch's mode).
  struct TileArgs {
    float lam, wd, lr, mu;  // wd: 0 where not adapted
    bool fused, use_m, first, nesterov;
  };

  __aicore__ inline void UpdateChunk(uint64_t tensor, uint64_t offset, uint64_t length) {
    const TensorArgs& a = Tensor(tensor);
    AscendC::GlobalTensor<T> w, g, m;
    w.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(a.w) + offset, length);
    g.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(a.g) + offset, length);
    const bool fused = tiling_.mode == 1;
    const bool use_m = fused && a.has_m;
    if (use_m) m.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(a.m) + offset, length);
    const TileArgs s{a.lam, a.adapt ? a.wd : 0.0f, a.lr, a.mu, fused, use_m, a.first, a.nesterov};
    for (uint64_t done = 0; done < length; done += tiling_.tile_elems) {
      const uint32_t n = static_cast<uint32_t>(
          length - done < tiling_.tile_elems ? length - done : tiling_.tile_elems);
      CopyIn(w, g, m, done, n, use_m && !a.first);
      Compute(n, s);
      CopyOut(w, g, m, done, n, fused, use_m);
    }
  }

  // GM -> UB of n elements: DataCopy for whole 32-byte blocks, DataCopyPad for a ragged tail.
  __aicore__ inline static void Load(const AscendC::LocalTensor<T>& dst,
                                     const AscendC::GlobalTensor<T>& src, uint32_t n) {
    if ((n * sizeof(T)) % 32 == 0) {
      AscendC::DataCopy(dst, src, n);
    } else {
      AscendC::DataCopyExtParams copy{1, static_cast<uint32_t>(n * sizeof(T)), 0, 0, 0};
      AscendC::DataCopyPadExtParams<T> pad{};  // no padding: the pad lanes are never read
      AscendC::DataCopyPad(dst, src, copy, pad);
    }
  }

  // UB -> GM of exactly n elements.
  __aicore__ inline static void Store(const AscendC::GlobalTensor<T>& dst,
                                      const AscendC::LocalTensor<T>& src, uint32_t n) {
    if ((n * sizeof(T)) % 32 == 0) {
      AscendC::DataCopy(dst, src, n);
    } else {
      AscendC::DataCopyExtParams copy{1, static_cast<uint32_t>(n * sizeof(T)), 0, 0, 0};
      AscendC::DataCopyPad(dst, src, copy);
    }
  }

  __aicore__ inline void CopyIn(const AscendC::GlobalTensor<T>& w,
                                const AscendC::GlobalTensor<T>& g,
                                const AscendC::GlobalTensor<T>& m, uint64_t start, uint32_t n,
                                bool read_m) {
    AscendC::LocalTensor<T> lw = inW_.template AllocTensor<T>();
    AscendC::LocalTensor<T> lg = inG_.template AllocTensor<T>();
    Load(lw, w[start], n);
    Load(lg, g[start], n);
    inW_.EnQue(lw);
    inG_.EnQue(lg);
    if (read_m) {
      AscendC::LocalTensor<T> lm = inM_.template AllocTensor<T>();
      Load(lm, m[start], n);
      inM_.EnQue(lm);
    }
  }

  __aicore__ inline void Compute(uint32_t n, const TileArgs& s) {
    const bool fused = s.fused, use_m = s.use_m, first = s.first;
    AscendC::LocalTensor<T> lw = inW_.template DeQue<T>();
    AscendC::LocalTensor<T> lg = inG_.template DeQue<T>();
    AscendC::LocalTensor<T> lm;
    if (use_m && !first) lm = inM_.template DeQue<T>();
    AscendC::LocalTensor<T> outA = outA_.template AllocTensor<T>();
    AscendC::LocalTensor<T> outB;
    if (fused) outB = outB_.template AllocTensor<T>();
    if constexpr (sizeof(T) == sizeof(float)) {
      ComputeFp32(lw, lg, lm, outA, outB, n, s);
    } else {
      ComputeFp16(lw, lg, lm, outA, outB, n, s);
    }
    inW_.FreeTensor(lw);
    inG_.FreeTensor(lg);
    if (use_m && !first) inM_.FreeTensor(lm);
    outA_.EnQue(outA);
    if (fused) outB_.EnQue(outB);
  }

  // fp32: on the input tiles in place, results straight into the output tiles (outA doubles as
  // scratch until it receives the result). The same multiplies and adds, each rounded once, as
  // when everything went through fp32 work tiles.
  __aicore__ inline void ComputeFp32(const AscendC::LocalTensor<T>& lw,
                                     const AscendC::LocalTensor<T>& lg,
                                     const AscendC::LocalTensor<T>& lm,
                                     const AscendC::LocalTensor<T>& outA,
                                     const AscendC::LocalTensor<T>& outB, uint32_t n,
                                     const TileArgs& s) {
    AscendC::Muls(outA, lw, s.wd, n);  // wd·w
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Add(lg, lg, outA, n);  // g + wd·w
    AscendC::PipeBarrier<PIPE_V>();
    if (!s.fused) {
      AscendC::Muls(outA, lg, s.lam, n);  // g' = λ(g + wd·w)
      return;
    }
    AscendC::LocalTensor<T> d = lg;  // the direction w moves along
    if (s.use_m) {
      AscendC::Muls(outB, lg, s.lam, n);  // m = g' (first step)
      if (!s.first) {
        AscendC::Muls(lm, lm, s.mu, n);  // μ·m
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Add(outB, outB, lm, n);  // m = μ·m + g'
      }
      if (s.nesterov) {
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Muls(lg, lg, s.lam, n);  // g'
        AscendC::Muls(outA, outB, s.mu, n);  // μ·m
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Add(lg, lg, outA, n);  // d = g' + μ·m
      } else {
        d = outB;  // d = m
      }
    } else {
      AscendC::Muls(lg, lg, s.lam, n);  // d = g'
    }
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Muls(outA, d, -s.lr, n);  // -lr·d
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Add(outA, outA, lw, n);  // w - lr·d
  }

  // fp16: widened by Cast into the fp32 work tiles, computed there, narrowed by Cast.
  __aicore__ inline void ComputeFp16(const AscendC::LocalTensor<T>& lw,
                                     const AscendC::LocalTensor<T>& lg,
                                     const AscendC::LocalTensor<T>& lm,
                                     const AscendC::LocalTensor<T>& outA,
                                     const AscendC::LocalTensor<T>& outB, uint32_t n,
                                     const TileArgs& s) {
    AscendC::LocalTensor<float> fw = bufW_.Get<float>();
    AscendC::LocalTensor<float> fg = bufG_.Get<float>();
    AscendC::LocalTensor<float> fm = bufM_.Get<float>();
    AscendC::PipeBarrier<PIPE_V>();  // the previous tile's reads and writes of the work tiles
    AscendC::Cast(fw, lw, AscendC::RoundMode::CAST_NONE, n);
    AscendC::Cast(fg, lg, AscendC::RoundMode::CAST_NONE, n);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Muls(fm, fw, s.wd, n);  // wd·w
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Add(fg, fg, fm, n);  // g + wd·w
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Muls(fg, fg, s.lam, n);  // g' = λ(g + wd·w)
    if (!s.fused) {
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::Cast(outA, fg, AscendC::RoundMode::CAST_RINT, n);
      return;
    }
    AscendC::LocalTensor<float> d = fg;  // the direction w moves along
    if (s.use_m) {
      if (s.first) {
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Cast(outB, fg, AscendC::RoundMode::CAST_RINT, n);  // m = g'
      } else {
        AscendC::Cast(fm, lm, AscendC::RoundMode::CAST_NONE, n);  // (fm's wd·w was read above)
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Muls(fm, fm, s.mu, n);  // μ·m
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Add(fm, fm, fg, n);  // μ·m + g'
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Cast(outB, fm, AscendC::RoundMode::CAST_RINT, n);
      }
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::Cast(fm, outB, AscendC::RoundMode::CAST_NONE, n);  // the stored (rounded) buffer,
      AscendC::PipeBarrier<PIPE_V>();                             // as torch reads it
      if (s.nesterov) {
        AscendC::Muls(fm, fm, s.mu, n);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Add(fg, fg, fm, n);  // d = g' + μ·m
      } else {
        d = fm;  // d = m
      }
    }
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Muls(d, d, -s.lr, n);  // -lr·d
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Add(fw, fw, d, n);  // w - lr·d
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Cast(outA, fw, AscendC::RoundMode::CAST_RINT, n);
  }

  __aicore__ inline void CopyOut(const AscendC::GlobalTensor<T>& w,
                                 const AscendC::GlobalTensor<T>& g,
                                 const AscendC::GlobalTensor<T>& m, uint64_t start, uint32_t n,
                                 bool fused, bool use_m) {
    AscendC::LocalTensor<T> outA = outA_.template DeQue<T>();
    Store(fused ? w[start] : g[start], outA, n);
    outA_.FreeTensor(outA);
    if (fused) {
      AscendC::LocalTensor<T> outB = outB_.template DeQue<T>();
      if (use_m) Store(m[start], outB, n);
      outB_.FreeTensor(outB);
    }
  }

  UpdateTiling tiling_{};
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::TPosition::VECIN, BUFFER_NUM> inW_, inG_, inM_;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> outA_, outB_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> bufW_, bufG_, bufM_;
  AscendC::TQue<AscendC::TPosition::VECIN, 1> inP_;  // the cores' flag blocks from GM
  AscendC::TBuf<AscendC::TPosition::VECCALC> bufSums_, bufReduce_;
  AscendC::GlobalTensor<uint64_t> wAddr_, gAddr_, mAddr_, chunks_;
  AscendC::GlobalTensor<float> partials_, params_;
  uint64_t curTensor_ = ~uint64_t{0};  // the tensor whose arguments are in cur_
  TensorArgs cur_{};
};

}  // namespace lars_ascendc
