"""Atlas A2's two floating-point modes (CTRL[48]: saturation, INF_NAN) and the fp16 kernels.

In saturation mode the vector unit turns fp16 inf into ±65504 and NaN into 0, in arithmetic and
in conversions; a kernel that widened an inf fp16 gradient in that mode would see a finite Σg²
and take a garbage step. The fp16 kernels switch their core to INF_NAN for their run and back
(csrc/ascendc/lars_float_mode.h). lars_npu's emulation models both modes: every launch starts in
the one asked for (``LARS_NPU_EMU_FLOAT_MODE``, as a stream's mode on the device), and an inf or
NaN fp16 gradient must skip the step in each. Our emulation, not CANN's simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import lars_npu
from lars_npu import LARS
from lars_npu._backends import get_backend
from lars_npu._backends._ascend import step_args
from lars_npu._backends._native import native
from lars_npu._backends.base import Hyper

from .conftest import ALL_BACKENDS, ptrs

pytestmark = pytest.mark.skipif("emu" not in ALL_BACKENDS, reason="no AscendC emulation built")

MODES = {"saturation": True, "inf_nan": False}
INF, NAN = float("inf"), float("nan")


def test_the_emulated_saturation_mode_saturates_fp16_and_inf_nan_mode_does_not():
    """A direct probe of the emulated vector unit: in saturation mode fp16 ±inf becomes ±65504
    and NaN 0, in a widening Cast (source), a narrowing Cast (result: 1e6 overflows) and fp16
    arithmetic (60000 + 60000); in INF_NAN mode they are IEEE. Finite values are the same."""
    T = native()._testing
    sat = T.emu_fp16_probe(True)
    assert sat["cast_half_to_float"] == [65504.0, -65504.0, 0.0, 1.0]
    assert sat["cast_float_to_half"] == [65504.0, -65504.0, 0.0, 65504.0, 1.0]
    assert sat["add_half"] == [65504.0, 2.0]
    ieee = T.emu_fp16_probe(False)
    w, n, a = ieee["cast_half_to_float"], ieee["cast_float_to_half"], ieee["add_half"]
    assert w[:2] == [INF, -INF] and math.isnan(w[2]) and w[3] == 1.0
    assert n[:2] == [INF, -INF] and math.isnan(n[2]) and n[3:] == [INF, 1.0]
    assert a == [INF, 2.0]


def test_a_kernel_relying_on_fp16_inf_through_a_cast_fails_in_saturation_mode():
    """The deliberately wrong mini-kernel widens an inf and a NaN fp16 value and squares and adds
    them in fp32 without setting the mode, as the fp16 kernels did: right in INF_NAN mode, a finite
    sum in saturation mode. The same computation under the kernels' InfNanMode is right in both."""
    T = native()._testing
    T.emu_selftest("fp16_inf_without_mode", saturation=False)
    with pytest.raises(RuntimeError, match="finite sum of squares"):
        T.emu_selftest("fp16_inf_without_mode", saturation=True)
    for sat in MODES.values():
        T.emu_selftest("fp16_inf_in_inf_nan_mode", saturation=sat)


@pytest.mark.parametrize("mode", MODES)
def test_a_kernel_must_put_back_the_floating_point_mode_it_found(mode):
    with pytest.raises(RuntimeError, match="ended in another floating-point mode"):
        native()._testing.emu_selftest("mode_not_restored", saturation=MODES[mode])


# -- the kernels themselves, launched directly on the emulation in each mode


def launch(ws, gs, ms, *, mode, saturation, adapt=None, lr=0.1, block_dim=4):
    """One fp16 step of the three kernels, every launch starting in the given floating-point
    mode, as built without --cce-auto-sync (the kernels' own barriers; the results do not depend
    on it): (found_inf, λ)."""
    C = native()
    n = len(gs)
    has_m = np.array([m is not None for m in ms], dtype=np.uint8)
    step = step_args(
        w=ptrs(ws), g=ptrs(gs), m=ptrs(ms), numel=np.array([g.numel() for g in gs]),
        adapt=np.array([True] * n if adapt is None else adapt, dtype=np.uint8), has_m=has_m,
        first=np.zeros(n, dtype=np.uint8), nesterov=np.zeros(n, dtype=np.uint8),
        wd=np.full(n, 1e-4), lr=np.full(n, lr), mu=np.where(has_m, 0.9, 0.0),
        dtype=1, mode=mode, tile_sq=4096, tile_up=2048, chunk_elems=16384,
    )  # fmt: skip
    blob, layout = C.ascend_plan(step)
    n_, nc = layout["n"], layout["num_chunks"]
    C.emu_launch(
        blob, n_, nc, 1, True, True, block_dim, 192 * 1024, saturation=saturation, auto_sync=False
    )
    found, lam, _, _ = C.ascend_read_back(blob, n_, nc)
    return found, lam


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel_mode", [0, 1], ids=["rewrite", "fused"])
@given(
    special=st.sampled_from([INF, -INF, NAN]),
    size=st.sampled_from([1, 17, 2048, 5000, 16384 + 9]),
    where=st.floats(0.0, 1.0),
    which=st.integers(0, 1),
)
def test_an_inf_or_nan_fp16_gradient_skips_the_step_in_both_modes(
    mode, kernel_mode, special, size, where, which
):
    """Two fp16 tensors, one gradient element ±inf or NaN anywhere (a tile's or a ragged tail's):
    found_inf, λ NaN, and not one byte of weights, gradients or momentum written, whatever mode
    the launches start in."""
    gen = torch.Generator().manual_seed(size)
    sizes = [size, 300]
    ws = [torch.randn(n, generator=gen).half() for n in sizes]
    gs = [(torch.randn(n, generator=gen) * 0.01).half() for n in sizes]
    ms = [(torch.randn(n, generator=gen) * 0.01).half() for n in sizes]
    gs[which][min(int(where * sizes[which]), sizes[which] - 1)] = special
    before = [t.clone() for t in ws + gs + ms]
    found, lam = launch(ws, gs, ms, mode=kernel_mode, saturation=MODES[mode])
    assert found and np.isnan(lam).all()
    for a, b in zip(before, ws + gs + ms, strict=True):
        assert a.view(torch.int16).equal(b.view(torch.int16))  # bit for bit, NaN included


@pytest.mark.parametrize("mode", MODES)
def test_the_fp16_update_overflows_to_inf_as_torch_in_both_modes(mode):
    """The fused fp16 step of a tensor LARS does not adapt (g' = g): w - lr·g beyond fp16's range
    is inf, as torch and the CPU backend store it (IEEE), not the ±65504 saturation would store:
    the kernel's INF_NAN mode covers its narrowing Casts too."""
    w = torch.tensor([60000.0, -60000.0, 1.0] * 6).half()
    g = torch.tensor([-1.0, 1.0, 0.5] * 6).half()
    ref = (w.float() - 10000.0 * g.float()).half()
    assert torch.isinf(ref[:2]).all() and ref[2] == -5000.0
    found, _ = launch([w], [g], [None], mode=1, saturation=MODES[mode], adapt=[False], lr=10000.0)
    assert not found
    assert w.view(torch.int16).equal(ref.view(torch.int16))


# -- through the emu backend: the backend ops and the optimizer, LARS_NPU_EMU_FLOAT_MODE


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("special", [INF, NAN], ids=["inf", "nan"])
def test_backend_ops_see_an_inf_or_nan_fp16_gradient_in_both_modes(monkeypatch, mode, special):
    monkeypatch.setenv("LARS_NPU_EMU_FLOAT_MODE", mode)
    monkeypatch.setenv("LARS_NPU_EMU_AUTO_SYNC", "off")  # the kernels' own barriers
    w, g = torch.randn(5000).half(), (torch.randn(5000) * 0.01).half()
    g[4321] = special
    _, g_s = lars_npu.square_sum_all(w, g, backend="emu")
    assert not math.isfinite(float(g_s))
    emu = get_backend("emu")
    ws = [torch.randn(300).half(), w]
    gs = [(torch.randn(300) * 0.01).half(), g]
    before = [t.clone() for t in ws + gs]
    res = emu.multi_lars_(ws, gs, [True, True], [1e-4, 1e-4], [0.1, 0.1], Hyper())
    assert bool(res.found_inf) and torch.isnan(res.trust_ratio).all()
    for a, b in zip(before, ws + gs, strict=True):
        assert a.view(torch.int16).equal(b.view(torch.int16))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("special", [INF, NAN], ids=["inf", "nan"])
@pytest.mark.parametrize("fused", [True, False])
def test_optimizer_skips_the_step_for_an_inf_or_nan_fp16_gradient_in_both_modes(
    monkeypatch, mode, special, fused
):
    monkeypatch.setenv("LARS_NPU_EMU_FLOAT_MODE", mode)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 40), nn.Tanh(), nn.Linear(40, 3)).half()
    opt = LARS(
        torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
        backend="emu",
        fused=fused,
    )
    x = torch.randn(8, 6).half()
    model(x).float().sum().backward()
    opt.step()  # a real step first: momentum buffers exist
    assert not bool(opt.found_inf)
    opt.zero_grad()
    model(x).float().sum().backward()
    model[0].weight.grad[3, 2] = special
    params = [p.detach().clone() for p in model.parameters()]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="inf/nan"):
        opt.step()
    assert bool(opt.found_inf)
    for p, q in zip(params, model.parameters(), strict=True):
        assert p.view(torch.int16).equal(q.detach().view(torch.int16))
    for b, p in zip(bufs, model.parameters(), strict=True):
        assert torch.equal(b, opt.state[p]["momentum_buffer"])


def test_unknown_float_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LARS_NPU_EMU_FLOAT_MODE", "ieee")
    w = torch.randn(10)
    with pytest.raises(ValueError, match="LARS_NPU_EMU_FLOAT_MODE='ieee'"):
        lars_npu.square_sum_all(w, w, backend="emu")
