"""The `real` runner (docs/emulation.md, "The real AscendC runner"): lars_npu's AscendC kernels
compiled against Huawei's REAL AscendC headers (CPU-debug mode, Atlas A2) on lars_npu's own model
of the intrinsics beneath them (csrc/asc_real). Runs only when the runner was built
(-DLARS_NPU_ASC_DEVKIT, -DLARS_NPU_ASC_TOOLS).

- deliberately wrong mini-kernels (csrc/asc_real/testkernels/), each beside a correct twin: a
  DataCopy of a partial 32-byte block, a sum over DataCopyPad's pad lanes, a ReduceSum over lanes
  never written, an access beyond the Unified Buffer or an output buffer — each must fail (an
  error, or a result that is not the right answer) where the twin passes;
- the model's fp16 conversions in both floating-point modes, and MulAddDst / Axpy / PipeBarrier;
- lars_npu's kernels on the real runner against the NumPy reference and the emulation.

The emu test files (test_emu_*.py, test_ascend_host.py) run on this runner too, with
LARS_NPU_EMU_RUNNER=real (tests/conftest.py says what stays the emulation's job there).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import lars_npu
from lars_npu import reference
from lars_npu._backends import emu
from lars_npu._backends._ascend import step_args
from lars_npu._backends._native import native
from lars_npu.check import np64

from .conftest import ptrs

BUILT, WHY = emu.real_runner()
pytestmark = pytest.mark.skipif(not BUILT, reason=f"real runner not built: {WHY}")

TEST_LIBRARY = Path(lars_npu.__file__).resolve().parent / "_asc_real_test.so"


def test_kernel(name, x, *, n, out, y=None, z=None, saturation=True):
    """Runs test kernel `name` (csrc/asc_real/testkernels/driver.cpp) on one core of the real
    runner; a RuntimeError with the runner's message when it refuses the kernel."""
    lib = ctypes.CDLL(str(TEST_LIBRARY), mode=os.RTLD_LOCAL)
    fn = lib.lars_asc_real_testkernel
    fn.argtypes = [ctypes.c_char_p, *[ctypes.c_void_p] * 3, ctypes.c_uint64, ctypes.c_void_p,
                   ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_size_t]  # fmt: skip
    err = ctypes.create_string_buffer(4096)

    def addr(a):
        return None if a is None else a.ctypes.data

    rc = fn(name.encode(), addr(x), addr(y), addr(z), x.nbytes, out.ctypes.data, out.nbytes, n,
            int(saturation), err, len(err))  # fmt: skip
    if rc != 0:
        raise RuntimeError(err.value.decode(errors="replace"))
    return out


test_kernel.__test__ = False  # a helper, not a test


def kernel_sum(name, x):
    return float(test_kernel(name, x, n=x.size, out=np.zeros(8, np.float32))[0])


def data(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("n", [1, 7, 8, 13, 100, 1000, 4096])
def test_the_correct_sum_kernel_is_right(n):
    x = data(n)
    assert kernel_sum("sum_right", x) == pytest.approx(float(x.astype(np.float64).sum()), abs=1e-4)


def test_a_datacopy_of_a_partial_block_is_refused_by_the_real_library():
    """DataCopy moves whole 32-byte blocks (hardware drops the rest silently): the real
    library's CPU-debug check refuses 13 floats; 16 are whole blocks, and the kernel is right."""
    x = data(13)
    with pytest.raises(RuntimeError, match=r"DataCopy.*32B align.*count value is 13"):
        kernel_sum("sum_datacopy_unaligned", x)
    x = data(16)
    assert kernel_sum("sum_datacopy_unaligned", x) == kernel_sum("sum_right", x)


def test_reading_datacopypad_pad_lanes_is_caught_by_the_poison():
    """The lanes DataCopyPad adds up to a 32-byte boundary hold poison (a NaN) when no padding
    value was asked for: a sum over the rounded-up count is NaN, not the answer."""
    x = data(13)
    assert np.isnan(kernel_sum("sum_reads_pad_lanes", x))
    assert kernel_sum("sum_right", x) == pytest.approx(float(x.sum()), abs=1e-5)
    x = data(16)  # no pad lanes: the rounded-up count is the count
    assert kernel_sum("sum_reads_pad_lanes", x) == kernel_sum("sum_right", x)


def test_reducing_lanes_never_written_is_caught_by_the_poison():
    """The Unified Buffer starts as poison (after the real TPipe fills it with pseudo-random
    values): a ReduceSum over a whole repeat of which the kernel wrote 48 lanes is NaN."""
    x = data(48)
    assert np.isnan(kernel_sum("sum_uninitialized_lanes", x))
    assert kernel_sum("sum_right", x) == pytest.approx(float(x.sum()), abs=1e-5)
    x = data(64)  # every lane written: the same kernel is right
    assert kernel_sum("sum_uninitialized_lanes", x) == kernel_sum("sum_right", x)


def test_accesses_beyond_the_core_are_refused_naming_the_intrinsic():
    out = np.zeros(8, np.float32)
    with pytest.raises(RuntimeError, match=r"copy_ubuf_to_gm: global memory .* outside every"):
        test_kernel("store_past_output", np.zeros(8, np.float32), n=8, out=out)
    with pytest.raises(RuntimeError, match="vector_dup: Unified Buffer access outside"):
        test_kernel("dup_past_ub", np.zeros(8, np.float32), n=8, out=out)


def test_muladddst_axpy_and_a_vector_barrier():
    """MulAddDst (vmla), Axpy (vaxpy) and PipeBarrier<PIPE_V> through the real headers:
    out = x*y + z, then out += 0.5*x, over 200 floats (three full repeats and a partial one)."""
    x, y, z = data(200, 1), data(200, 2), data(200, 3)
    out = test_kernel("muladd_axpy", x, y=y, z=z, n=200, out=np.zeros(200, np.float32))
    expected = (x * y + z) + np.float32(0.5) * x  # fp32, each step rounded, as the model does
    np.testing.assert_array_equal(out, expected)


def test_muladddst_and_axpy_with_half_sources_into_float():
    """The mixed forms: a float destination with half sources (a repeat of 64 lanes reads four
    32-byte blocks of each half operand)."""
    n = 208
    x, y = (np.zeros(2 * n, np.float16) for _ in range(2))  # every input `in_bytes` long
    x[:n], y[:n] = data(n, 4).astype(np.float16), data(n, 5).astype(np.float16)
    z = data(n, 6)
    out = test_kernel("muladd_axpy_f16", x, y=y, z=z, n=n, out=np.zeros(n, np.float32))
    xf, yf = x[:n].astype(np.float32), y[:n].astype(np.float32)
    np.testing.assert_array_equal(out, (xf * yf + z) + np.float32(0.5) * xf)


F16_IN = np.array([np.inf, -np.inf, np.nan, 1.0, 65504.0, -2.0, 2.0**-24, 3.0] + [0.0] * 8,
                  dtype=np.float16)  # fmt: skip
F32_IN = np.array([1e6, -1e6, np.nan, np.inf, 1.0, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 65519.0,
                   65520.0, -65520.0, 2.0**-25, 3 * 2.0**-26, 1e-9, -0.0, 0.1, 1 / 3],
                  dtype=np.float32)  # fmt: skip


def test_fp16_conversions_follow_the_floating_point_mode():
    """half -> float is exact in INF_NAN mode; in saturation mode (CTRL[48] = 0) an inf / NaN
    fp16 source becomes ±65504 / 0. float -> half (CAST_RINT) rounds to nearest even, as numpy,
    in INF_NAN mode; saturation mode clamps to ±65504 and turns NaN into 0."""
    ieee = test_kernel("cast_f16_to_f32", F16_IN, n=16, out=np.zeros(16, np.float32),
                       saturation=False)  # fmt: skip
    np.testing.assert_array_equal(ieee, F16_IN.astype(np.float32))
    sat = test_kernel("cast_f16_to_f32", F16_IN, n=16, out=np.zeros(16, np.float32))
    np.testing.assert_array_equal(sat[:3], [65504.0, -65504.0, 0.0])
    np.testing.assert_array_equal(sat[3:], F16_IN[3:].astype(np.float32))

    with np.errstate(over="ignore"):
        want = F32_IN.astype(np.float16)
    ieee = test_kernel("cast_f32_to_f16", F32_IN, n=16, out=np.zeros(16, np.float16),
                       saturation=False)  # fmt: skip
    np.testing.assert_array_equal(ieee.view(np.uint16), want.view(np.uint16))
    sat = test_kernel("cast_f32_to_f16", F32_IN, n=16, out=np.zeros(16, np.float16))
    clamped = np.where(np.isnan(want), np.float16(0), np.clip(want, -65504, 65504))
    np.testing.assert_array_equal(sat.view(np.uint16), clamped.astype(np.float16).view(np.uint16))


def test_an_unknown_test_kernel_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no test kernel bogus"):
        test_kernel("bogus", np.zeros(8, np.float32), n=8, out=np.zeros(8, np.float32))


# -- lars_npu's kernels on the real runner ------------------------------------------------------

SIZES = [1, 7, 8, 16, 4096, 4100, 16384, 16389, 70_001]
CHUNK = 16384
RTOL = {torch.float32: 2e-5, torch.float16: 2e-3}


def run_step(runner, dtype, mode, block_dim, *, order=0, sizes=SIZES, tile_sq=4096, tile_up=2048):
    """One step of the kernels over `sizes` on `runner` ("real" or "emulation"): (tensors after,
    read-back, the inputs before)."""
    gen = torch.Generator().manual_seed(3)
    k = len(sizes)
    ws = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    gs = [(torch.randn(n, generator=gen) * 0.01).to(dtype) for n in sizes]
    ms = [(torch.randn(n, generator=gen) * 0.01).to(dtype) if i % 3 else None
          for i, n in enumerate(sizes)]  # fmt: skip
    before = [t.clone() if t is not None else None for t in ws + gs + ms]
    step = step_args(
        w=ptrs(ws), g=ptrs(gs), m=ptrs(ms), numel=np.array(sizes, dtype=np.int64),
        adapt=np.array([i % 4 != 3 for i in range(k)], dtype=np.uint8),
        has_m=np.array([m is not None for m in ms], dtype=np.uint8),
        first=np.array([i % 2 for i in range(k)], dtype=np.uint8),
        nesterov=np.zeros(k, dtype=np.uint8), wd=np.full(k, 1e-3), lr=np.full(k, 0.1),
        mu=np.array([0.9 if m is not None else 0.0 for m in ms]),
        dtype=0 if dtype == torch.float32 else 1, mode=mode, tile_sq=tile_sq, tile_up=tile_up,
        chunk_elems=CHUNK,
    )  # fmt: skip
    C = native()
    blob, layout = C.ascend_plan(step)
    n, nc = layout["n"], layout["num_chunks"]
    if runner == "real":
        emu.real_launch(blob, n, nc, step.dtype, True, True, block_dim, order)
    else:
        with pytest.MonkeyPatch.context() as mp:  # the emulation, whatever the session's runner
            mp.setenv(emu.RUNNER_ENV, "emulation")
            C.emu_launch(blob, n, nc, step.dtype, True, True, block_dim, 192 * 1024, False, order)
    return ws + gs + ms, C.ascend_read_back(blob, n, nc), before


def assert_matches_reference(after, lam, before, dtype, mode):
    k = len(after) // 3
    for i in range(k):
        w0, g0, m0 = before[i], before[k + i], before[2 * k + i]
        adapt, first = i % 4 != 3, i % 2 == 1
        if mode == 0:
            wn, gn = np64(w0), np64(g0)
            ref = reference.lars_update(wn, gn, (wn * wn).sum(), (gn * gn).sum(), 1e-3, 0.1)
            ref = ref if adapt else gn
            scale = np.abs(gn) + 1e-3 * np.abs(wn) + np.abs(ref)
            assert np.all(np.abs(np64(after[k + i]) - ref) <= RTOL[dtype] * scale + 1e-7), i
        else:
            w_ref, m_ref, _, lam_ref = reference.lars_momentum_step(
                np64(w0), np64(g0), None if (m0 is None or first) else np64(m0), lr=0.1,
                weight_decay=1e-3, momentum=0.9 if m0 is not None else 0.0, nesterov=False,
                lars=adapt,
            )  # fmt: skip
            if adapt:
                assert lam[i] == pytest.approx(lam_ref, rel=1e-5)
            m_mag = np.abs(m_ref) if m_ref is not None else 0.0
            scale = np.abs(np64(w0)) + 0.2 * (m_mag + np.abs(np64(g0)) + 1e-3)
            assert np.all(np.abs(np64(after[i]) - w_ref) <= RTOL[dtype] * scale), i
            if m_ref is not None:
                np.testing.assert_allclose(np64(after[2 * k + i]), m_ref, rtol=RTOL[dtype],
                                           atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("mode", [0, 1], ids=["rewrite", "fused"])
@pytest.mark.parametrize("block_dim", [1, 7, 48])
def test_kernels_on_the_real_runner_match_the_reference_and_the_emulation(dtype, mode, block_dim):
    after, (found, lam, w_s, g_s), before = run_step("real", dtype, mode, block_dim)
    assert not found
    assert_matches_reference(after, lam, before, dtype, mode)
    # the emulation: the same kernels on lars_npu's other model of the API; both are ours, and
    # agree to well within a rounding of the type
    emu_after, (emu_found, emu_lam, emu_w_s, emu_g_s), _ = run_step(
        "emulation", dtype, mode, block_dim
    )
    assert found == emu_found
    np.testing.assert_allclose(lam, emu_lam, rtol=1e-6)
    np.testing.assert_allclose(w_s, emu_w_s, rtol=1e-6)
    np.testing.assert_allclose(g_s, emu_g_s, rtol=1e-6)
    for a, b in zip(after, emu_after, strict=True):
        if a is not None:
            np.testing.assert_allclose(np64(a), np64(b), rtol=RTOL[dtype] / 10, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("mode", [0, 1], ids=["rewrite", "fused"])
def test_the_largest_legal_tiles_run_on_the_real_library(dtype, mode):
    """At the largest tiles the host plan allows (184 KiB of UB), the real TPipe takes the
    kernels' buffers and the step matches the reference."""
    T = native()._testing
    code = 0 if dtype == torch.float32 else 1
    top_sq, top_up = T.ascend_max_tile("square_sums", code), T.ascend_max_tile("update", code)
    sizes = [2 * top_up + 5, 3 * top_sq // 2 + 3, 40, 17]
    after, (found, lam, _, _), before = run_step(
        "real", dtype, mode, 3, sizes=sizes, tile_sq=top_sq, tile_up=top_up
    )
    assert not found
    assert_matches_reference(after, lam, before, dtype, mode)


@pytest.mark.parametrize("order", [-1, 5])
def test_the_real_runner_gives_the_same_bytes_in_every_core_order(order):
    forward, *_ = run_step("real", torch.float32, 1, 8)
    other, *_ = run_step("real", torch.float32, 1, 8, order=order)
    for a, b in zip(forward, other, strict=True):
        if a is not None:
            assert torch.equal(a, b)


@pytest.mark.parametrize("saturation", [True, False], ids=["saturation", "inf_nan"])
def test_an_inf_fp16_gradient_skips_the_step_in_both_floating_point_modes(saturation):
    gen = torch.Generator().manual_seed(1)
    w, g = torch.randn(5000, generator=gen).half(), torch.randn(5000, generator=gen).half()
    g[4321] = float("inf")
    w0, g0 = w.clone(), g.clone()
    step = step_args(
        w=ptrs([w]), g=ptrs([g]), m=ptrs([None]), numel=np.array([5000]),
        adapt=np.ones(1, np.uint8), has_m=np.zeros(1, np.uint8), first=np.zeros(1, np.uint8),
        nesterov=np.zeros(1, np.uint8), wd=np.full(1, 1e-3), lr=np.full(1, 0.1),
        mu=np.zeros(1), dtype=1, mode=1, tile_sq=4096, tile_up=2048, chunk_elems=CHUNK,
    )  # fmt: skip
    C = native()
    blob, layout = C.ascend_plan(step)
    n, nc = layout["n"], layout["num_chunks"]
    emu.real_launch(blob, n, nc, 1, True, True, 4, 0, saturation)
    found, *_ = C.ascend_read_back(blob, n, nc)
    assert found
    assert torch.equal(w, w0) and torch.equal(g, g0)


def test_the_real_runner_refuses_more_cores_than_flag_slots():
    x = torch.ones(64)
    step = step_args(
        w=ptrs([x]), g=ptrs([x]), m=ptrs([None]), numel=np.array([64]),
        adapt=np.ones(1, np.uint8), has_m=np.zeros(1, np.uint8), first=np.zeros(1, np.uint8),
        nesterov=np.zeros(1, np.uint8), wd=np.zeros(1), lr=np.full(1, 0.1), mu=np.zeros(1),
        dtype=0, mode=0, tile_sq=4096, tile_up=2048, chunk_elems=CHUNK,
    )  # fmt: skip
    blob, layout = native().ascend_plan(step)
    with pytest.raises(ValueError, match="block_dim: at most 256"):
        emu.real_launch(blob, layout["n"], layout["num_chunks"], 0, True, True, 257)


def test_the_emu_backend_runs_on_the_real_runner(monkeypatch):
    """LARS_NPU_EMU_RUNNER=real sends the `emu` backend's launches to the real runner."""
    original, calls = emu.real_launch, []

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(emu, "real_launch", spy)
    monkeypatch.setenv(emu.RUNNER_ENV, "real")
    w, g = torch.randn(300), torch.randn(300)
    on_cpu = lars_npu.lars_update(w, g, (w * w).sum(), (g * g).sum(), 1e-3, 0.1)
    monkeypatch.setenv("LARS_NPU_BACKEND", "emu")
    on_real = lars_npu.lars_update(w, g, (w * w).sum(), (g * g).sum(), 1e-3, 0.1)
    assert calls
    torch.testing.assert_close(on_real, on_cpu, rtol=1e-5, atol=1e-7)
