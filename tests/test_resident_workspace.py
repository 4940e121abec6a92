"""The kernels' workspace kept resident on the device (csrc/npu/lars_resident.h; docs/ascend.md,
"The resident workspace"): each step the host builds the whole workspace, compares it byte for
byte with what the device buffer is known to hold and sends only what differs.

Three places run the rules here, none on an NPU: ``_C.workspace_upload`` (the plan alone, what
the cost model reads), ``_C.StagedRunner`` (the staging runner of CANN's cpu / sim builds with its
buffer kept between calls, on the emulation, whose new buffers hold 0xFF so that a region wrongly
left unsent shows), and the ``npu`` backend's Python path with a stand-in for the NPU launch on
CPU tensors (tests/test_ascend_host.py), whose "device" buffer is a separate CPU tensor reused
step after step. Every result is compared bit for bit with the emulation's non-resident path."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest
import torch
from torch import nn

import lars_npu
from lars_npu import LARS
from lars_npu._backends import _ascend
from lars_npu._backends import npu as npu_mod
from lars_npu._backends._native import constants, native
from lars_npu._backends.base import Hyper
from lars_npu._backends.emu import BLOCK_DIM, EmuBackend

from .conftest import ALL_BACKENDS
from .test_ascend_host import StandInNative
from .test_ascend_host import stand_in_npu as _stand_in_npu  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif("emu" not in ALL_BACKENDS, reason="no AscendC emulation built")

FLAG_BYTES = 32 * 256  # one 32-byte block per core's flag, kMaxCoreFlags of them


@pytest.fixture
def npu_path(request):
    """test_ascend_host's stand-in: (the npu backend, the recording stand-in _C)."""
    return request.getfixturevalue("_stand_in_npu")


def plan(ws, gs, ms, *, lr=0.1, first=False, given=None, mode=1, eps=1e-5):
    n = len(ws)
    code = _ascend.kernel_codes()[ws[0].dtype]
    return _ascend.AscendKernelBackend()._plan(
        ws, gs, ms, adapt=[True] * n, first=[first] * n, nesterov=[False] * n, wd=[1e-4] * n,
        lr=[lr] * n, mu=[0.9] * n, hyper=Hyper(epsilon=eps), mode=mode, code=code, given=given,
    )  # fmt: skip


def tensors(sizes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=gen).to(dtype) for s in sizes]
    gs = [(torch.randn(s, generator=gen) * 0.01).to(dtype) for s in sizes]
    ms = [torch.zeros(s, dtype=dtype) for s in sizes]
    return ws, gs, ms


SIZES = [100, 40000, 7, 0, 20000, 16384]


# ---- the plan: what is sent, by region --------------------------------------------------------


def test_a_new_buffer_gets_the_tables_and_parameters_and_zeroed_flags():
    blob, layout = plan(*tensors(SIZES))
    up = _ascend.workspace_upload(layout, None, blob)
    p = layout["partials"]
    assert up["full"] and up["bytes"] == p and up["zeroed"] == FLAG_BYTES
    # one copy of everything before the results (tables, then the per-step part), the flags
    # zeroed on the device; the chunk sums and λ are the kernels' to write
    nc = layout["num_chunks"]
    assert up["ranges"] == [(0, p, False), (p + 64 * nc, FLAG_BYTES, True)]
    assert set(up["regions"]) == {"addresses", "chunks", "tensor_chunks", "tiling", "params",
                                  "hyper"}  # fmt: skip


def test_a_steady_step_sends_nothing_and_per_step_changes_send_the_parameters():
    ws, gs, ms = tensors(SIZES)
    first, layout = plan(ws, gs, ms, first=True)
    steady, _ = plan(ws, gs, ms)
    n = layout["n"]
    params = -(-16 * n // 32) * 32  # {wd, lr, mu, flags} fp32 per tensor, in whole blocks
    # the first-step flag flips: the parameters' region, once
    up = _ascend.workspace_upload(layout, first, steady)
    assert not up["full"] and up["regions"] == {"params": params} and up["copies"] == 2
    # unchanged: nothing sent, only the flags zeroed on the device
    up = _ascend.workspace_upload(layout, steady, plan(ws, gs, ms)[0])
    assert up["bytes"] == 0 and up["zeroed"] == FLAG_BYTES and up["copies"] == 1
    assert up["compared"] == layout["partials"]
    # a scheduler's lr: the parameters again; epsilon: the hyper-parameters' block
    up = _ascend.workspace_upload(layout, steady, plan(ws, gs, ms, lr=0.05)[0])
    assert up["regions"] == {"params": params}
    up = _ascend.workspace_upload(layout, steady, plan(ws, gs, ms, eps=1e-6)[0])
    assert up["regions"] == {"hyper": 32} and up["bytes"] == 32
    # new gradient VALUES at the same addresses change nothing in the workspace
    gs2 = [g.mul_(3.0) for g in gs]
    assert _ascend.workspace_upload(layout, steady, plan(ws, gs2, ms)[0])["bytes"] == 0


def test_what_the_kernels_do_not_write_is_sent_every_step():
    """Given sums (no square-sums kernel): the host's chunk sums and flags are sent whole every
    step, never compared (a square-sums launch may have written them since). No λ kernel: the
    host's λ table is sent. No chunk at all: no kernel runs, every result comes from the host."""
    ws, gs, ms = tensors(SIZES)
    n = len(SIZES)
    given = (np.arange(1.0, n + 1), np.arange(2.0, n + 2))
    a, layout = plan(ws, gs, ms, given=given, mode=0)
    nc = layout["num_chunks"]
    up = _ascend.workspace_upload(layout, a, a, run_square_sums=False)
    assert up["bytes"] == 64 * nc + FLAG_BYTES and up["zeroed"] == 0
    assert up["regions"] == {"partials": 64 * nc, "flags": FLAG_BYTES}
    up = _ascend.workspace_upload(layout, a, a, run_update=False)
    assert up["regions"] == {"lambda": 32 * n} and up["zeroed"] == FLAG_BYTES
    empty, lay0 = plan(*tensors([0, 0]))
    assert lay0["num_chunks"] == 0
    up = _ascend.workspace_upload(lay0, empty, empty)
    assert up["bytes"] == lay0["bytes"] - lay0["partials"] and up["zeroed"] == 0


def test_a_re_pointed_tensor_sends_its_addresses_in_few_copies():
    ws, gs, ms = tensors([64] * 300)
    a, layout = plan(ws, gs, ms)
    ws2 = list(ws)
    ws2[5] = ws[5].clone()
    up = _ascend.workspace_upload(layout, a, plan(ws2, gs, ms)[0])
    assert up["regions"] == {"addresses": up["bytes"]} and up["copies"] == 2  # + the flags
    # every weight re-pointed: one address in every 32-byte block of two tables, scattered
    ws3 = [w.clone() for w in ws]
    up = _ascend.workspace_upload(layout, a, plan(ws3, gs, ms)[0])
    assert 0 < up["bytes"] <= 4 * 8 * 300 and up["copies"] <= 17


def test_workspace_upload_refuses_a_workspace_of_another_layout():
    a, layout = plan(*tensors([10, 20]))
    b, _ = plan(*tensors([10]))
    with pytest.raises(ValueError, match="workspace: expected"):
        _ascend.workspace_upload(layout, b, a)
    with pytest.raises(ValueError, match="workspace: expected"):
        _ascend.workspace_upload(layout, a, b)


# ---- the staging runner, its buffer kept between calls (_C.StagedRunner) ----------------------


class StagedResident(EmuBackend):
    """The emu backend's kernels through the staging runner of lars_staging.h with ONE buffer
    kept between launches (what CANN's cpu / sim runners do), recording each launch's counts."""

    def __init__(self, block_dim: int = BLOCK_DIM) -> None:
        self.runner = native().StagedRunner(block_dim=block_dim)
        self.counts: list[dict] = []

    def _launch(self, blob, layout, code, *, run_square_sums, run_update, device):
        self.counts.append(
            self.runner.launch(
                blob, layout["n"], layout["num_chunks"], code, run_square_sums, run_update
            )
        )


@contextlib.contextmanager
def backend_for_cpu(monkeypatch, backend):
    """LARS and the functional API on CPU tensors run `backend` (resolve() would refuse an
    instance outside the registry)."""
    with monkeypatch.context() as m:
        m.setattr(lars_npu.optim, "resolve", lambda device, requested: backend)
        m.setattr(lars_npu.functional, "resolve", lambda device, requested: backend)
        yield


def train(monkeypatch, backend, *, steps=6, fused=True, dtype=torch.float32, seed=0, hook=None):
    """A small model, SGD with momentum and a scheduler that changes lr every other step; the
    parameters after each step. `backend` None: the emu backend's own (non-resident) path."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 300), nn.Tanh(), nn.Linear(300, 70), nn.Linear(70, 3))
    model = model.to(dtype)
    opt = LARS(
        torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
        backend="emu",
        fused=fused,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    out = []
    ctx = backend_for_cpu(monkeypatch, backend) if backend is not None else contextlib.nullcontext()
    with ctx:
        for t in range(steps):
            gen = torch.Generator().manual_seed(100 + t)
            opt.zero_grad(set_to_none=False)  # gradients stay where they are: same addresses
            x = torch.randn(16, 6, generator=gen).to(dtype)
            model(x).float().square().mean().backward()
            if hook is not None:
                hook(t, model, opt)
            opt.step()
            sched.step()
            out.append([p.detach().clone() for p in model.parameters()])
    return out


def same_bits(runs_a, runs_b):
    for step_a, step_b in zip(runs_a, runs_b, strict=True):
        for a, b in zip(step_a, step_b, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_staged_resident_steps_give_the_same_bits_and_send_only_what_changed(
    monkeypatch, fused, dtype
):
    want = train(monkeypatch, None, fused=fused, dtype=dtype)
    b = StagedResident()
    got = train(monkeypatch, b, fused=fused, dtype=dtype)
    same_bits(want, got)
    assert b.runner.known and all(c["allocations"] == 1 for c in b.counts)
    writes = [c for c in b.counts if c["regions"].get("lambda", 0) == 0]  # update launches
    assert b.counts[0]["full"] and not any(c["full"] for c in b.counts[1:])
    if fused:  # one launch pair per step: first step, flags flip, steady, lr, steady, lr
        assert len(b.counts) == 6  # (StepLR halves lr before steps 2 and 4)
        per_step = [set(c["regions"]) for c in b.counts]
        assert per_step[1:] == [{"params"}, {"params"}, set(), {"params"}, set()]
    else:  # the unfused path: a rewrite launch per step, square sums and update in one
        assert all(set(c["regions"]) <= {"params"} for c in writes[1:])
    for c in b.counts:  # what the plan says is what the device received
        assert c["moved"]["in"] == c["bytes"] + c["tensor_bytes"]
        assert c["moved"]["zeroed"] == c["zeroed"]


def test_staged_resident_survives_re_pointing_set_and_new_gradients(monkeypatch):
    """`.data =` another tensor, `set_` onto another storage, gradients freed and re-made (new
    addresses): each step sends the addresses that changed, and the results stay the
    non-resident path's, bit for bit."""

    def hook(t, model, opt):
        w = model[0].weight
        if t == 2:
            w.data = w.data.clone()
        if t == 3:
            with torch.no_grad():
                w.set_(w.detach().clone().untyped_storage(), 0, w.shape, w.stride())
        if t == 4:
            for p in model.parameters():
                p.grad = p.grad.clone()

    want = train(monkeypatch, None, hook=hook)
    b = StagedResident()
    got = train(monkeypatch, b, hook=hook)
    same_bits(want, got)
    assert not any(c["full"] for c in b.counts[1:])


def test_staged_resident_fewer_cores_after_a_skipped_step(monkeypatch):
    """A skipped step (inf gradient) leaves NaN flags in the device buffer, in the slot of the
    core that met it; the next step runs on fewer cores, which never write that slot: it must
    read 0 there (the flags are zeroed on the device every step), not skip again."""
    b = StagedResident(block_dim=8)
    w = torch.randn(16384 * 8)
    m = torch.zeros_like(w)
    lam = []
    for t, cores in enumerate((8, 2, 2)):
        b.runner.block_dim = cores
        g = torch.full_like(w, 0.01)
        if t == 0:
            g[16384 * 6] = float("inf")  # chunk 6: core 6 of 8
        blob, layout = plan([w], [g], [m], first=t == 0)
        b._launch(blob, layout, 0, run_square_sums=True, run_update=True, device=w.device)
        found, lam_t, _, _ = native().ascend_read_back(blob, layout["n"], layout["num_chunks"])
        assert bool(found) == (t == 0)
        lam.append(lam_t)
    assert np.isfinite(lam[1]).all()


def test_staged_resident_layout_and_dtype_changes(monkeypatch):
    """Between launches: another number of tensors, another shape, another dtype, the same again:
    each launch's results are the emulation's. Another layout: everything sent (in a buffer
    replaced when too small or far too large); the same layout in another dtype: the tiling's
    dtype field and the addresses; the same tensors again: nothing."""
    b = StagedResident()
    emu = lars_npu._backends.all_backends()["emu"]
    cases = [
        ([100, 40000], torch.float32),
        ([100, 40000, 5], torch.float32),  # a tensor added
        ([100], torch.float32),  # removed
        ([100, 40001], torch.float32),  # a shape changed
        ([100, 40000], torch.float16),  # another dtype
        ([100, 40000], torch.float32),
        ([100, 40000], torch.float32),
    ]
    ws: list[torch.Tensor] = []
    last = None
    for sizes, dtype in cases:
        if (sizes, dtype) != last:  # (the same tensors when nothing changes)
            ws, gs, _ = tensors(sizes, dtype)
            rewritten = {be: [g.clone() for g in gs] for be in (emu, b)}
        last = (sizes, dtype)
        out = []
        for be in (emu, b):
            for dst, g in zip(rewritten[be], gs, strict=True):
                dst.copy_(g)
            n = len(ws)
            out.append(
                be.multi_lars_(ws, rewritten[be], [True] * n, [1e-4] * n, [0.1] * n, Hyper())
            )
        assert all(torch.equal(x, y) for x, y in zip(*rewritten.values(), strict=True))
        assert torch.equal(out[0].trust_ratio, out[1].trust_ratio)
        assert not bool(out[1].found_inf)
    c = b.counts
    assert [x["full"] for x in c] == [True, True, True, True, False, False, False]
    assert {"tiling", "addresses"} <= set(c[4]["regions"])  # (and what lies between: one copy)
    assert c[4]["copies"] == 2  # + the flags
    assert c[-1]["bytes"] == 0
    assert c[-1]["allocations"] > 1  # replaced on the way


@pytest.mark.parametrize("after", [0, 1, 2])
def test_staged_resident_a_launch_that_throws_midway(monkeypatch, after):
    """A host-to-device copy throws (the workspace's first copy, its flag zeroing, a tensor's
    copy): the step raises, and the next launch sends everything again; results stay right."""
    b = StagedResident()
    ws, gs, ms = tensors([100, 40000])
    blob, layout = plan(ws, gs, ms)
    b._launch(blob, layout, 0, run_square_sums=True, run_update=True, device=None)
    assert b.runner.known
    b.runner.fail_after_copies = after
    with pytest.raises(RuntimeError, match="injected failure"):
        b._launch(
            plan(ws, gs, ms)[0], layout, 0, run_square_sums=True, run_update=True, device=None
        )
    assert not b.runner.known
    ws_ref = [w.clone() for w in ws]
    ms_ref = [m.clone() for m in ms]
    blob, _ = plan(ws, gs, ms)
    b._launch(blob, layout, 0, run_square_sums=True, run_update=True, device=None)
    assert b.counts[-1]["full"] and b.counts[-1]["bytes"] == layout["partials"]
    ref, _ = plan(ws_ref, gs, ms_ref)
    native().emu_launch(ref, layout["n"], layout["num_chunks"], 0, True, True, BLOCK_DIM, 192 << 10)
    assert all(torch.equal(a, c) for a, c in zip(ws, ws_ref, strict=True))
    assert np.array_equal(blob[layout["partials"] :], ref[layout["partials"] :])


# ---- the npu backend's Python path (stand-in launch; the "device" is a CPU tensor) ------------


def test_npu_backend_steps_keep_the_workspace_and_give_the_emulations_bits(npu_path, monkeypatch):
    backend, _ = npu_path
    want = train(monkeypatch, None)
    seen = []
    got = train(monkeypatch, backend, hook=lambda t, m, o: seen.append(backend.resident.last))
    same_bits(want, got)
    lasts = [*seen[1:], backend.resident.last]  # the upload of each step
    assert lasts[0]["full"] and not any(u["full"] for u in lasts[1:])
    assert [set(u["regions"]) for u in lasts[1:]] == [{"params"}, {"params"}, set(), {"params"},
                                                      set()]  # fmt: skip
    # one buffer, the same every step: the launch got the same device address each time
    pool = backend.resident._pool()
    assert len(pool) == 1 and pool[0].shadow is not None


def test_npu_backend_a_launch_that_throws_leaves_the_buffer_unknown(npu_path, monkeypatch):
    backend, C = npu_path
    ws, gs, _ = tensors([100, 40000])
    args = ([True, True], [1e-4] * 2, [0.1] * 2, Hyper())
    backend.multi_lars_(ws, [g.clone() for g in gs], *args)
    real = C.npu_launch

    def fails(*a):
        raise RuntimeError("lars_npu: launch of lars_square_sums failed (stand-in)")

    monkeypatch.setattr(C, "npu_launch", fails)
    with pytest.raises(RuntimeError, match="stand-in"):
        backend.multi_lars_(ws, [g.clone() for g in gs], *args)
    assert backend.resident._pool()[0].shadow is None
    monkeypatch.setattr(C, "npu_launch", real)
    g_res = [g.clone() for g in gs]
    res = backend.multi_lars_(ws, g_res, *args)
    assert backend.resident.last["full"]
    g_emu = [g.clone() for g in gs]
    ref = lars_npu._backends.all_backends()["emu"].multi_lars_(ws, g_emu, *args)
    assert torch.equal(res.trust_ratio, ref.trust_ratio)
    assert all(torch.equal(a, b) for a, b in zip(g_res, g_emu, strict=True))


def test_npu_backend_a_failed_copy_leaves_the_buffer_unknown(npu_path, monkeypatch):
    """A copy into the device buffer that throws after some ranges went in."""
    backend, _ = npu_path
    ws, gs, _ = tensors([100, 40000])
    args = ([True, True], [1e-4] * 2, [0.1] * 2, Hyper())
    backend.multi_lars_(ws, [g.clone() for g in gs], *args)
    real = torch.Tensor.zero_

    def broken_zero(self):
        raise RuntimeError("device fill failed (test)")

    monkeypatch.setattr(torch.Tensor, "zero_", broken_zero)
    with pytest.raises(RuntimeError, match="device fill failed"):
        backend.multi_lars_(ws, [g.clone() for g in gs], *args)
    monkeypatch.setattr(torch.Tensor, "zero_", real)
    assert backend.resident._pool()[0].shadow is None
    res = backend.multi_lars_(ws, [g.clone() for g in gs], *args)
    assert backend.resident.last["full"] and not bool(res.found_inf)


def test_npu_backend_two_optimizers_alternating_keep_their_own_buffers(npu_path, monkeypatch):
    """Two models, two LARS (one fused, one not), one device and stream, steps alternating: each
    result is the one its model gets alone. Their workspaces have one layout, so they may share a
    buffer: then each step sends what differs (addresses, parameters), never everything."""
    backend, _ = npu_path
    want_a = train(monkeypatch, None, seed=1, steps=4)
    want_b = train(monkeypatch, None, seed=2, steps=4, fused=False)

    def model_opt(seed, fused):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 300), nn.Tanh(), nn.Linear(300, 70), nn.Linear(70, 3))
        opt = LARS(
            torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
            backend="emu",
            fused=fused,
        )
        return model, opt, torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)

    runs = {1: model_opt(1, True), 2: model_opt(2, False)}
    got: dict[int, list] = {1: [], 2: []}
    uploads = []
    with backend_for_cpu(monkeypatch, backend):
        for t in range(4):
            for seed, (model, opt, sched) in runs.items():
                gen = torch.Generator().manual_seed(100 + t)
                opt.zero_grad(set_to_none=False)
                model(torch.randn(16, 6, generator=gen)).float().square().mean().backward()
                opt.step()
                sched.step()
                uploads.append(backend.resident.last)
                got[seed].append([p.detach().clone() for p in model.parameters()])
    same_bits(want_a, got[1])
    same_bits(want_b, got[2])
    assert uploads[0]["full"]
    assert all(not u["full"] and u["bytes"] < uploads[0]["bytes"] // 2 for u in uploads[2:])


def test_npu_backend_another_stream_gets_another_buffer(npu_path, monkeypatch):
    """A launch on another stream never uses a buffer whose copies and kernels are ordered on the
    first: it gets its own (everything sent); back on the first, nothing is sent."""
    backend, C = npu_path
    current = {"stream": 0x5EED}

    class Stream:
        @property
        def npu_stream(self):
            return current["stream"]

    @contextlib.contextmanager
    def device(d):
        yield

    fake = types.SimpleNamespace(
        npu=types.SimpleNamespace(
            current_stream=lambda device=None: Stream(), device=device, device_count=lambda: 1
        )
    )
    monkeypatch.setattr(npu_mod, "loaded_torch_npu", lambda: fake)
    ws, gs, _ = tensors([100, 40000])
    args = ([True, True], [1e-4] * 2, [0.1] * 2, Hyper())
    fulls = []
    for s in (0x5EED, 0x5EED, 0xBEEF, 0x5EED, 0xBEEF):
        current["stream"] = s
        res = backend.multi_lars_(ws, [g.clone() for g in gs], *args)
        assert not bool(res.found_inf)
        fulls.append(backend.resident.last["full"])
    assert fulls == [True, False, True, False, False]
    assert [c[0] for c in C.calls] == [0x5EED, 0x5EED, 0xBEEF, 0x5EED, 0xBEEF]
    pool = backend.resident._pool()
    assert {e.stream for e in pool} == {0x5EED, 0xBEEF} and len(pool) == 2


def test_npu_backend_buffers_belong_to_their_thread(npu_path):
    """Another thread never gets this thread's buffer (its reads of a launch's outcome come
    after the launch returns)."""
    import threading

    backend, _ = npu_path
    ws, gs, _ = tensors([100, 40000])
    args = ([True, True], [1e-4] * 2, [0.1] * 2, Hyper())
    backend.multi_lars_(ws, [g.clone() for g in gs], *args)
    other = []

    def run():
        backend.multi_lars_(ws, [g.clone() for g in gs], *args)
        other.append((backend.resident.last["full"], len(backend.resident._pool())))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert other == [(True, 1)]
    backend.multi_lars_(ws, [g.clone() for g in gs], *args)
    assert not backend.resident.last["full"] and len(backend.resident._pool()) == 1


def test_npu_backend_mixed_and_given_sum_launches_stay_right(npu_path):
    """Mixed fp32 / fp16 lists (square sums per group, then rewrites with the sums as given),
    several calls on the same tensors: every call's results are the emulation's."""
    backend, _ = npu_path
    emu = lars_npu._backends.all_backends()["emu"]
    dts = [torch.float32, torch.float16, torch.float32, torch.float16]
    gen = torch.Generator().manual_seed(4)
    ws = [torch.randn(3000 + 7 * i, generator=gen).to(d) for i, d in enumerate(dts)]
    gs = [(torch.randn(3000 + 7 * i, generator=gen) * 0.01).to(d) for i, d in enumerate(dts)]
    args = ([True, True, False, True], [1e-4] * 4, [0.1] * 4, Hyper())
    for _ in range(3):
        g_npu, g_emu = [g.clone() for g in gs], [g.clone() for g in gs]
        a = backend.multi_lars_(ws, g_npu, *args)
        b = emu.multi_lars_(ws, g_emu, *args)
        assert torch.equal(a.trust_ratio, b.trust_ratio)
        assert all(torch.equal(x, y) for x, y in zip(g_npu, g_emu, strict=True))
    assert not backend.resident.last["full"]


def test_stand_in_native_is_the_one_of_test_ascend_host():
    assert StandInNative.__module__.endswith("test_ascend_host")
    assert constants().flag_slots * 32 == FLAG_BYTES


# ---- the table of docs/ascend.md ("The resident workspace") ----------------------------------


def model_workspace(numels, *, lr=0.1, first=False, given=None):
    """The workspace of one fused fp32 step over tensors of these sizes, each at its own aligned
    address (as a model's are; nothing is dereferenced)."""
    n = len(numels)
    k = constants()
    sizes = [-(-x * 4 // 32) * 32 for x in numels]
    offsets = np.cumsum([0, *sizes[:-1]], dtype=np.int64)
    ones, zeros = np.ones(n, np.uint8), np.zeros(n, np.uint8)
    step = _ascend.step_args(
        w=(1 << 40) + offsets, g=(2 << 40) + offsets, m=(3 << 40) + offsets,
        numel=np.asarray(numels, np.int64), adapt=ones, has_m=ones,
        first=ones if first else zeros, nesterov=zeros, wd=np.full(n, 5e-5),
        lr=np.full(n, lr), mu=np.full(n, 0.9), dtype=0, mode=1, tile_sq=k.tile_square_sums,
        tile_up=k.tile_update, chunk_elems=k.chunk,
    )  # fmt: skip
    if given is not None:
        step.given_ws, step.given_gs = given
    return native().ascend_plan(step)


def test_the_docs_table_is_what_the_rules_send():
    from pathlib import Path

    from lars_npu._tools.shapes import SETS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "ascend.md").read_text()
    section = doc.split("## The resident workspace", 1)[1]
    for name in ("resnet50", "bert-large"):
        numels = [int(np.prod(s)) for _, s in SETS[name]()]
        n = len(numels)
        first, layout = model_workspace(numels, first=True)
        steady, _ = model_workspace(numels)
        lr, _ = model_workspace(numels, lr=0.05)
        g1, _ = model_workspace(numels, given=(np.ones(n), np.ones(n)))
        g2, _ = model_workspace(numels, given=(np.full(n, 2.0), np.full(n, 3.0)))
        row = [
            layout["bytes"],
            _ascend.workspace_upload(layout, None, first)["bytes"],
            _ascend.workspace_upload(layout, first, steady)["bytes"],
            _ascend.workspace_upload(layout, steady, steady)["bytes"],
            _ascend.workspace_upload(layout, steady, lr)["bytes"],
            _ascend.workspace_upload(layout, g1, g2, run_square_sums=False)["bytes"],
        ]
        want = "| " + name + " | " + " | ".join(f"{b:,} B" for b in row) + " |"
        assert want in section, want
