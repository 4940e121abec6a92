"""The host side of the AscendC kernels, shared by the `npu` and `emu` backends: the workspace
built by csrc/ascendc/lars_host_plan.h, the staging runner of CANN's cpu / sim builds (run here on
our emulation), and the `npu` backend's Python path with a stand-in for the NPU launch.

No CANN and no NPU here: the stand-in runs the kernels on lars_npu's host emulation at the
address the backend hands to ``npu_launch``. It checks what the Python side does (workspace,
launch arguments, stream, read-back, fallbacks), not that the kernels run on Ascend."""

from __future__ import annotations

import contextlib
import ctypes
import types

import numpy as np
import pytest
import torch
from torch import nn

import lars_npu
from lars_npu import LARS
from lars_npu._backends import _ascend, _ascend_launch, all_backends
from lars_npu._backends import npu as npu_mod
from lars_npu._backends._native import constants, native
from lars_npu._backends.base import Hyper

from .conftest import ALL_BACKENDS

pytestmark = pytest.mark.skipif("emu" not in ALL_BACKENDS, reason="no AscendC emulation built")


def plan(sizes, *, given=None, mode=1, adapt=None, dtype=torch.float32):
    ws = [torch.randn(n).to(dtype) for n in sizes]
    gs = [torch.randn(n).to(dtype) for n in sizes]
    ms = [torch.zeros(n, dtype=dtype) for n in sizes]
    n = len(sizes)
    adapt = [True] * n if adapt is None else adapt
    blob, layout = _ascend.AscendKernelBackend()._plan(
        ws, gs, ms, adapt=adapt, first=[False] * n, nesterov=[False] * n, wd=[1e-4] * n,
        lr=[0.1] * n, mu=[0.9] * n, hyper=Hyper(), mode=mode,
        code=_ascend.kernel_codes()[dtype], given=given,
    )  # fmt: skip
    return blob, layout, (ws, gs, ms)


def test_workspace_layout_is_aligned_and_sized():
    sizes = [1, 7, 16384, 16385, 0, 40000]
    blob, layout, _ = plan(sizes)
    chunks = sum(-(-n // constants().chunk) for n in sizes)
    assert layout["n"] == len(sizes) and layout["num_chunks"] == chunks
    assert blob.dtype == np.uint8 and blob.shape == (layout["bytes"],)
    assert layout["partials"] % 32 == 0 and layout["bytes"] % 32 == 0
    # results: a 32-byte block per chunk for Σw² and one for Σg², one per core for its
    # non-finite flag (256 at most), one per tensor for λ
    slots = constants().flag_slots  # = kMaxCoreFlags of lars_tiling.h
    assert layout["bytes"] - layout["partials"] == 32 * (2 * chunks + slots + len(sizes))
    sums_and_flags = blob[layout["partials"] : layout["partials"] + 32 * (2 * chunks + 256)]
    assert not sums_and_flags.any()  # start at zero: no stale flag, whatever ran before


def results(blob, layout):
    """The results region as 32-byte blocks: (Σw² per chunk, Σg² per chunk, flags, λ)."""
    nc = layout["num_chunks"]
    r = blob[layout["partials"] :].view(np.float32).reshape(-1, 8)
    return r[:nc, 0], r[nc : 2 * nc, 0], r[2 * nc : 2 * nc + 256, 0], r[2 * nc + 256 :, 0]


def test_given_sums_land_in_each_tensors_first_chunk():
    sizes = [5, 40000, 0, 3]
    given = (np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 6.0, 7.0, 8.0]))
    blob, layout, _ = plan(sizes, given=given)
    w, g, flags, _ = results(blob, layout)
    # chunks: tensor 0 -> 0; tensor 1 -> 1, 2, 3; tensor 2 (empty) -> none; tensor 3 -> 4
    np.testing.assert_array_equal(w, [1, 2, 0, 0, 4])
    np.testing.assert_array_equal(g, [5, 6, 0, 0, 8])
    assert not flags.any()
    # a non-finite given Σg² is flagged by the host, as the square-sums kernel would
    blob, layout, _ = plan(sizes, given=(given[0], np.array([5.0, np.inf, 7.0, 8.0])))
    assert np.isnan(results(blob, layout)[2][0])


def test_read_back_is_the_lambda_the_kernel_applied():
    """λ is what the update kernel wrote (vector Sqrt, fp32), read back with the partials: the
    reference's λ to fp32 rounding; nothing is recomputed on the host."""
    C = native()
    blob, layout, (_ws, _gs, _) = plan([100], given=(np.array([4.0]), np.array([9.0])), mode=0)
    n, nc = layout["n"], layout["num_chunks"]
    assert results(blob, layout)[3][0] == 0.0  # before: the prefill for zero sums (θ·0 = 0)
    C.emu_launch(blob, n, nc, 0, False, True, 4, 192 * 1024)
    found, lam, w_s, g_s = C.ascend_read_back(blob, n, nc)
    assert not found and w_s[0] == 4.0 and g_s[0] == 9.0
    ref = lars_npu.reference.trust_ratio(4.0, 9.0, 1e-4, 0.1)
    np.testing.assert_allclose(lam[0], ref, rtol=1e-6)
    assert lam[0] == results(blob, layout)[3][0]  # the kernel's own fp32 value
    # a core's non-finite flag: found_inf, λ NaN, and the kernel writes nothing
    blob, layout, (_ws, gs, _) = plan([100], given=(np.array([4.0]), np.array([np.nan])), mode=0)
    before = gs[0].clone()
    C.emu_launch(blob, n, nc, 0, False, True, 4, 192 * 1024)
    found, lam, _, _ = C.ascend_read_back(blob, n, nc)
    assert found and np.isnan(lam).all() and torch.equal(gs[0], before)


def test_the_host_plan_takes_a_struct_with_named_fields():
    """ascend_plan takes one _C.AscendStep (the C++ StepArgs), fields by name: an unknown name
    and a per-tensor field of the wrong length are refused, naming the field."""
    x = torch.zeros(16)
    ptr = np.array([x.data_ptr()], dtype=np.int64)
    fields = dict(w=ptr, g=ptr, m=np.zeros(1, np.int64), numel=np.array([16]),
                  adapt=np.ones(1), has_m=np.zeros(1), first=np.zeros(1), nesterov=np.zeros(1),
                  wd=np.zeros(1), lr=np.full(1, 0.1), mu=np.zeros(1))  # fmt: skip
    step = _ascend.step_args(**fields)
    assert list(step.lr) == [np.float32(0.1)] and step.mode == 0 and step.tile_up == 2048
    _, layout = native().ascend_plan(step)
    assert layout["n"] == 1 and layout["num_chunks"] == 1
    with pytest.raises(AttributeError):
        _ascend.step_args(learning_rate=np.zeros(1))
    step.wd = np.zeros(2)
    with pytest.raises(ValueError, match="per-tensor field wd: 2 values for 1 tensors"):
        native().ascend_plan(step)


def test_read_back_refuses_a_workspace_of_the_wrong_size():
    blob, layout, _ = plan([10])
    with pytest.raises(ValueError, match="workspace: expected"):
        native().ascend_read_back(blob[:-32], layout["n"], layout["num_chunks"])


def _train(backend: str, steps: int = 3, dtype=torch.float32, fused=True) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 33), nn.Tanh(), nn.Linear(33, 3)).to(dtype)
    opt = LARS(
        torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
        backend=backend,
        fused=fused,
    )
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 6).to(dtype)).float().square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_staged_runner_gives_the_same_bits(monkeypatch, fused, dtype):
    """The staging runner (every tensor copied to a separate buffer, address tables rewritten,
    results copied back: what CANN's cpu / sim builds do) changes nothing."""
    direct = _train("emu", dtype=dtype, fused=fused)
    monkeypatch.setenv("LARS_NPU_EMU_RUNNER", "staged")
    staged = _train("emu", dtype=dtype, fused=fused)
    for a, b in zip(direct, staged, strict=True):
        assert torch.equal(a, b)


def test_staged_runner_handles_an_aliased_tensor(monkeypatch):
    monkeypatch.setenv("LARS_NPU_EMU_RUNNER", "staged")
    w = torch.randn(1000)
    w_s, g_s = lars_npu.square_sum_all(w, w, backend="emu")
    ref = float((w.double() ** 2).sum())
    np.testing.assert_allclose([float(w_s), float(g_s)], [ref, ref], rtol=2e-6)


def test_unknown_or_unbuilt_runner_is_a_clear_error(monkeypatch):
    w = torch.randn(10)
    monkeypatch.setenv("LARS_NPU_EMU_RUNNER", "bogus")
    with pytest.raises(ValueError, match="LARS_NPU_EMU_RUNNER='bogus'"):
        lars_npu.square_sum_all(w, w, backend="emu")
    if not hasattr(native(), "cann_host_launch"):
        monkeypatch.setenv("LARS_NPU_EMU_RUNNER", "cann")
        with pytest.raises(RuntimeError, match="built without CANN"):
            lars_npu.square_sum_all(w, w, backend="emu")


# ---- the npu backend's Python path, with a stand-in for torch_npu and the NPU launch ----------


class StandInNative:
    """_C as built with CANN, but ``npu_launch`` runs the kernels on the emulation at the
    workspace address it is given (host memory here), recording every call."""

    def __init__(self) -> None:
        self._C = native()
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):
        return getattr(self._C, name)

    def npu_launch(self, stream, ws_addr, n, nc, dtype, run_sq, run_update, block_dim):
        self.calls.append((stream, n, nc, dtype, run_sq, run_update, block_dim))
        nbytes = self._C.ascend_layout(n, nc)["bytes"]
        ws = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ws_addr))
        self._C.emu_launch(ws, n, nc, dtype, run_sq, run_update, block_dim or 8, 192 * 1024)


@pytest.fixture
def stand_in_npu(monkeypatch):
    C = StandInNative()

    class Stream:
        npu_stream = 0x5EED

    devices_entered = []

    @contextlib.contextmanager
    def device(d):
        devices_entered.append(d)
        yield

    fake_torch_npu = types.SimpleNamespace(
        npu=types.SimpleNamespace(
            current_stream=lambda device=None: Stream(), device=device, device_count=lambda: 1
        )
    )
    for mod in (npu_mod, _ascend_launch):
        monkeypatch.setattr(mod, "loaded", lambda: C)
    monkeypatch.setattr(npu_mod, "native", lambda: C)
    monkeypatch.setattr(npu_mod, "torch_npu", lambda: fake_torch_npu)
    monkeypatch.setattr(npu_mod, "loaded_torch_npu", lambda: fake_torch_npu)
    backend = npu_mod.NpuBackend()
    assert backend.available() == (True, "")
    C.devices_entered = devices_entered
    return backend, C


def test_npu_backend_is_unavailable_without_a_cann_build():
    ok, why = all_backends()["npu"].available()
    if not hasattr(native(), "npu_launch"):
        assert not ok and "built without CANN" in why


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_npu_backend_step_matches_emu(stand_in_npu, monkeypatch, dtype, fused):
    """The optimizer step through the npu backend's path (workspace copied "to the device",
    launch on the current stream, partials copied back) gives the emu backend's bits."""
    backend, C = stand_in_npu
    monkeypatch.setenv("LARS_NPU_BLOCK_DIM", "5")
    results = []
    for via_npu in (True, False):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 20000), nn.Linear(20000, 2)).to(dtype)
        opt = LARS(
            torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9),
            backend="emu",
            fused=fused,
        )
        model(torch.randn(3, 4).to(dtype)).float().sum().backward()
        with monkeypatch.context() as m:
            if via_npu:  # resolve() would refuse CPU tensors for "npu": hand the backend over
                m.setattr(lars_npu.optim, "resolve", lambda device, requested: backend)
                m.setattr(lars_npu.functional, "resolve", lambda device, requested: backend)
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    # one call per step, both kernels on the current stream, block count from the environment
    assert len(C.calls) == 1
    stream, n, nc, code, run_sq, run_update, block_dim = C.calls[0]
    assert (stream, n, code, run_sq, run_update, block_dim) == (
        0x5EED, 4, _ascend.kernel_codes()[dtype], True, True, 5,
    )  # fmt: skip
    assert nc == sum(-(-p.numel() // constants().chunk) for p in model.parameters())
    assert C.devices_entered == [torch.device("cpu")]  # launched under the tensors' device


@pytest.mark.parametrize("bad", [False, True])
def test_npu_backend_step_has_no_host_wait(stand_in_npu, monkeypatch, bad):
    """multi_lars_ and fused_sgd_ on the npu path return found_inf and λ as tensors computed on
    the device from the workspace (cores' flags, the kernel's λ table): the results region is
    never copied back (read_back is never called), so nothing waits for the kernels."""
    from lars_npu._fused import FusedCall

    backend, C = stand_in_npu

    def no_read_back(*args):
        raise AssertionError("the npu step copied the results back to the host")

    monkeypatch.setattr(C, "ascend_read_back", no_read_back)
    gen = torch.Generator().manual_seed(3)
    ws = [torch.randn(5000, generator=gen), torch.randn(300, generator=gen)]
    gs = [torch.randn(5000, generator=gen) * 0.01, torch.randn(300, generator=gen) * 0.01]
    if bad:
        gs[1][7] = float("inf")
    g0 = [g.clone() for g in gs]
    res = backend.multi_lars_(ws, gs, [True, False], [1e-4, 1e-4], [0.1, 0.1], Hyper())
    assert isinstance(res.found_inf, torch.Tensor) and res.found_inf.dim() == 0
    assert bool(res.found_inf) == bad
    if bad:
        assert torch.isnan(res.trust_ratio).all()
        assert all(torch.equal(a, b) for a, b in zip(g0, gs, strict=True))  # nothing written
    else:
        wn, gn = ws[0].double().numpy(), g0[0].double().numpy()
        ref = lars_npu.reference.trust_ratio((wn**2).sum(), (gn**2).sum(), 1e-4, 0.1)
        np.testing.assert_allclose(res.trust_ratio[0].item(), ref, rtol=1e-5)
        assert res.trust_ratio[1].item() == 1.0  # not adapted
    p, m = ws[0].clone(), torch.zeros(5000)
    call = FusedCall(
        params=[p], grads=[gs[1][:0].new_full((5000,), float("nan")) if bad else g0[0]],
        bufs=[m], first=np.ones(1, np.uint8), adapt=np.ones(1, np.uint8),
        has_m=np.ones(1, np.uint8), wd=np.array([1e-4]), lr=np.array([0.1]),
        mu=np.array([0.9]), nesterov=np.zeros(1, np.uint8), hyper=Hyper(),
    )  # fmt: skip
    res = backend.fused_sgd_(call)
    assert bool(res.found_inf) == bad
    assert torch.equal(p, ws[0]) == bad  # skipped: untouched; else the step moved it


@pytest.mark.parametrize("bad", [None, 0, 1])
def test_mixed_fp32_fp16_lists_launch_once_per_dtype_group(stand_in_npu, bad):
    """fp32 and fp16 tensors in one call: grouped by dtype, a square-sums launch per group, then
    (every group's Σg² finite) an update launch per group with those sums — never tensor by
    tensor, never torch ops. A non-finite gradient in either group: nothing written anywhere."""
    backend, C = stand_in_npu
    gen = torch.Generator().manual_seed(4)
    dts = [torch.float32, torch.float16, torch.float32, torch.float16]
    ws = [torch.randn(3000 + 7 * i, generator=gen).to(d) for i, d in enumerate(dts)]
    gs = [(torch.randn(3000 + 7 * i, generator=gen) * 0.01).to(d) for i, d in enumerate(dts)]
    if bad is not None:
        gs[bad][5] = float("nan")
    g0 = [g.clone() for g in gs]
    adapt = [True, True, False, True]
    res = backend.multi_lars_(ws, gs, adapt, [1e-4] * 4, [0.1] * 4, Hyper())
    calls = [(n, code, sq, up) for _, n, _, code, sq, up, _ in C.calls]
    if bad is not None:
        assert bool(res.found_inf) and torch.isnan(res.trust_ratio).all()
        assert calls == [(2, 0, True, False), (2, 1, True, False)]  # sums only
        for a, b in zip(g0, gs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        return
    assert calls == [(2, 0, True, False), (2, 1, True, False), (2, 0, False, True),
                     (2, 1, False, True)]  # fmt: skip
    assert not bool(res.found_inf)
    for i in range(4):
        wn, gn = ws[i].double().numpy(), g0[i].double().numpy()
        if adapt[i]:
            ref = lars_npu.reference.lars_update(wn, gn, (wn**2).sum(), (gn**2).sum(), 1e-4, 0.1)
            lam = lars_npu.reference.trust_ratio((wn**2).sum(), (gn**2).sum(), 1e-4, 0.1)
            assert res.trust_ratio[i].item() == pytest.approx(lam, rel=1e-5)
        else:
            ref = gn
        tol = 2e-5 if dts[i] == torch.float32 else 2e-3
        np.testing.assert_allclose(gs[i].double().numpy(), ref, rtol=tol, atol=1e-7)


def test_npu_backend_needs_a_visible_device(stand_in_npu, monkeypatch):
    fake = types.SimpleNamespace(npu=types.SimpleNamespace(device_count=lambda: 0))
    monkeypatch.setattr(npu_mod, "torch_npu", lambda: fake)
    ok, why = npu_mod.NpuBackend().available()
    assert not ok and "no NPU device" in why


def test_kernel_inputs_beyond_fp32_are_refused_before_anything_runs(stand_in_npu):
    backend, C = stand_in_npu
    w, g = torch.ones(8), torch.full((8,), 2.0)
    for kwargs, name in (((1.0, 1e39), "norm_gradient"), ((1e39, 1.0), "norm_weight")):
        with pytest.raises(ValueError, match=name):
            backend.lars_update(w, g, *kwargs, 0.0, 1.0, Hyper())
    with pytest.raises(ValueError, match="epsilon"):
        backend.lars_update(w, g, 1.0, 1.0, 0.0, 1.0, Hyper(epsilon=1e-50))
    assert not C.calls
    with pytest.raises(ValueError, match="norm_gradient"):  # the emu backend too
        lars_npu.lars_update(w, g, 1.0, 1e39, 0.0, 1.0, backend="emu")


@pytest.mark.parametrize(
    ("wd", "lr", "name"),
    [
        ([0.0, 1e39], [0.1, 0.1], r"weight_decays\[1\]=1e\+39"),
        ([0.0, 0.0], [0.1, 1e-46], r"lrs\[1\]=1e-46"),  # would flush to 0 in fp32
        ([0.0, 0.0], [1e40, 0.1], r"lrs\[0\]=1e\+40"),
    ],
)
def test_multi_lars_refuses_wd_and_lr_beyond_fp32(stand_in_npu, wd, lr, name):
    """multi_lars_ hands wd and lr to the kernels in fp32: out of its range they would silently
    become inf or 0 there. Refused, naming the value, before anything runs or is written."""
    backend, C = stand_in_npu
    ws = [torch.ones(8), torch.ones(8)]
    gs = [torch.full((8,), 2.0), torch.full((8,), 2.0)]
    before = [g.clone() for g in gs]
    for b in (backend, all_backends()["emu"]):
        with pytest.raises(ValueError, match=name):
            b.multi_lars_(ws, gs, [True, True], wd, lr, Hyper())
    assert not C.calls
    assert all(torch.equal(a, b) for a, b in zip(before, gs, strict=True))


@pytest.mark.parametrize(
    ("field", "value", "name"),
    [("wd", 1e39, r"weight_decay\[0\]"), ("lr", 1e-46, r"lr\[0\]"),
     ("mu", 1e39, r"momentum\[0\]")],
)  # fmt: skip
def test_fused_step_refuses_wd_lr_momentum_beyond_fp32(stand_in_npu, field, value, name):
    from lars_npu._fused import FusedCall

    backend, C = stand_in_npu
    p, g, m = torch.ones(8), torch.full((8,), 2.0), torch.zeros(8)
    values = {"wd": np.array([1e-4]), "lr": np.array([0.1]), "mu": np.array([0.9])}
    values[field] = np.array([value])
    call = FusedCall(
        params=[p], grads=[g], bufs=[m], first=np.zeros(1, np.uint8),
        adapt=np.ones(1, np.uint8), has_m=np.ones(1, np.uint8), nesterov=np.zeros(1, np.uint8),
        hyper=Hyper(), **values,
    )  # fmt: skip
    for b in (backend, all_backends()["emu"]):
        with pytest.raises(ValueError, match=name):
            b.fused_sgd_(call)
    assert not C.calls
    assert torch.equal(p, torch.ones(8)) and torch.equal(m, torch.zeros(8))


def test_one_dtype_for_weights_gradients_and_buffers():
    """The kernels read w, g and m with one element width: a mixed call is refused."""
    w = torch.full((64,), 2.0)
    g = torch.full((64,), 1.0, dtype=torch.float16)
    with pytest.raises(TypeError, match="one dtype per call"):
        all_backends()["emu"].square_sum_all(w, g)


def test_npu_backend_given_sums_skip_the_square_sums_kernel(stand_in_npu):
    backend, C = stand_in_npu
    w, g = torch.randn(100), torch.randn(100)
    out = backend.lars_update(w, g, 4.0, 9.0, 1e-3, 0.1, Hyper())
    lam = lars_npu.reference.trust_ratio(4.0, 9.0, 1e-3, 0.1)
    ref = lam * (g.double() + 1e-3 * w.double())
    np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-9)
    assert C.calls[-1][4:6] == (False, True)  # no square-sums launch, one update launch


def test_npu_backend_sends_other_dtypes_to_torch_ops(stand_in_npu):
    backend, C = stand_in_npu
    w = torch.randn(50, dtype=torch.bfloat16)
    g = torch.randn(50, dtype=torch.bfloat16)
    w_s, g_s = backend.square_sum_all(w, g)
    assert not C.calls  # no kernel launch for bf16
    np.testing.assert_allclose(float(w_s), float((w.double() ** 2).sum()), rtol=1e-5)
    np.testing.assert_allclose(float(g_s), float((g.double() ** 2).sum()), rtol=1e-5)
    res = backend.multi_lars_([w, w.float()], [g, g.float()], [True, True], [0.0, 0.0],
                              [0.1, 0.1], Hyper())  # fmt: skip
    assert not C.calls and not bool(res.found_inf)


def test_npu_block_dim_env_is_checked(monkeypatch):
    monkeypatch.setenv("LARS_NPU_BLOCK_DIM", "-1")
    with pytest.raises(ValueError, match="LARS_NPU_BLOCK_DIM"):
        npu_mod.block_dim()
    monkeypatch.setenv("LARS_NPU_BLOCK_DIM", "")
    assert npu_mod.block_dim() == 0
