// fp16 inf/NaN through the kernels whatever floating-point mode the device runs in.
//
// Atlas A2 / A3 have two modes, bit 48 of each core's CTRL register (asc-devkit docs,
// SetCtrlSpr(ISASI) table "Atlas A2 ... CTRL寄存器比特位", and SetSaturationFlag(ISASI)):
//   CTRL[48] = 0  saturation: an inf result of fp16 / bf16 arithmetic or precision conversion
//                 becomes ±MAX (65504 for fp16) and a NaN result 0;
//   CTRL[48] = 1  INF_NAN: IEEE 754, inf and NaN as they come.
// fp32 arithmetic is IEEE in both (the bit covers half and bfloat16_t only). The runtime starts a
// kernel in its stream's mode: CANN's aclrtFloatOverflowMode, set by aclrtSetDeviceSatMode for
// streams created after the call (torch_npu: INF_NAN_MODE_ENABLE). CANN documents INF_NAN as the
// default on A2 / A3; saturation is what a user gets who asks for it (aclrtSetDeviceSatMode, or
// INF_NAN_MODE_ENABLE=0 in torch_npu, e.g. to match Atlas 910A results).
//
// The fp16 kernels read gradients as fp16 and widen them with Cast before they square and add
// them in fp32; the square-sums kernel's non-finite flag is 0·Σg². In saturation mode an inf or
// NaN gradient would come out of the Cast as ±65504 or 0 (the docs put fp16 conversions under the
// bit; CANN's PyTorch guide says the mode turns inf and NaN into the type's maximum and 0; that a
// SOURCE inf survives a widening Cast is documented nowhere): Σg² finite, no skip, and the update
// would write a step computed from a garbage gradient.
//
// So the fp16 kernels switch their core to INF_NAN mode for their whole run: InfNanMode (one per
// kernel entry, declared before the kernel object) calls SetSaturationFlag<FLOAT>(false) — the
// API the docs recommend on A2 / A3 for CTRL[48] — before any vector instruction, and on exit
// puts back the mode it found (GetSaturationFlag), so what runs next on the core gets its
// stream's mode. It is destroyed after the kernel object, whose TPipe destructor ends with
// pipe_barrier(PIPE_ALL) (asc-devkit impl/basic_api/kernel_tpipe_impl.h, TPipe::Destroy): no
// vector instruction of the kernel is still in flight when the mode changes back. INF_NAN also
// makes the fp16 update IEEE like torch and the CPU backend: a result beyond fp16's range is inf
// (saturation would store ±65504).
//
// Not chosen: a host check of the device's mode (aclrtGetDeviceSatMode). The mode belongs to the
// stream, fixed when it was created; the device's current setting does not prove the mode of
// torch_npu's current stream. The register the kernel sets is the one the vector unit uses.
//
// lars_npu's emulation (csrc/emu) models both modes (LARS_NPU_EMU_FLOAT_MODE), and refuses a
// kernel that ends in another mode than it started in. The fp32 kernels need none of this.
#pragma once

namespace lars_ascendc {

class InfNanMode {
 public:
  __aicore__ inline InfNanMode()
      : saturating_(AscendC::GetSaturationFlag<AscendC::SaturationMode::FLOAT>()) {
    AscendC::SetSaturationFlag<AscendC::SaturationMode::FLOAT>(false);
  }
  __aicore__ inline ~InfNanMode() {
    AscendC::SetSaturationFlag<AscendC::SaturationMode::FLOAT>(saturating_);
  }
  InfNanMode(const InfNanMode&) = delete;
  InfNanMode& operator=(const InfNanMode&) = delete;

 private:
  bool saturating_;  // the mode the kernel started in
};

}  // namespace lars_ascendc
