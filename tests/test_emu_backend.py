"""The `emu` backend from Python: the AscendC kernels on our host emulation behind the functional
ops (LARS_NPU_BACKEND=emu) and the optimizer (LARS(..., backend="emu"), fused step included),
compared with the NumPy reference. Our emulation, not CANN's simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lars_npu
from lars_npu import LARS, reference

from ._problem import Net
from .conftest import ALL_BACKENDS

pytestmark = pytest.mark.skipif("emu" not in ALL_BACKENDS, reason="no AscendC emulation built")


def test_env_var_selects_emu_for_functional_ops(monkeypatch):
    w = torch.tensor([[0.5, 0.8, 0.2], [0.6, 0.4, 0.2]])
    g = torch.tensor([[0.4, 0.4, 0.5], [0.2, 0.4, 0.3]])
    monkeypatch.setenv("LARS_NPU_BACKEND", "emu")
    w_s, g_s = lars_npu.square_sum_all(w, g)
    out = lars_npu.lars_update(w, g, w_s, g_s, 0.0, 1.0)
    golden = torch.tensor([[0.0005265, 0.0005265, 0.00065813], [0.00026325, 0.0005265, 0.00039488]])
    torch.testing.assert_close(out, golden, rtol=2e-5, atol=0)


def test_given_sums_are_used_as_given():
    """LARSUpdate takes the sums of squares as inputs: the kernel must use the given ones."""
    w, g = torch.randn(100), torch.randn(100)
    out = lars_npu.lars_update(w, g, 4.0, 9.0, 1e-3, 0.1, backend="emu")
    lam = reference.trust_ratio(4.0, 9.0, 1e-3, 0.1)
    ref = lam * (g.double() + 1e-3 * w.double())
    np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-9)


def test_unsupported_dtype_is_a_clear_error():
    w = torch.randn(4, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32 and float16"):
        lars_npu.square_sum_all(w, w, backend="emu")


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("use_clip", [False, True])
def test_optimizer_on_emu_matches_cpu_backend(fused, use_clip):
    """The same training run on the emulated AscendC kernels and on the CPU kernels (both
    checked against the reference elsewhere) agrees to fp32 rounding."""
    results = []
    for backend in ("emu", "cpu" if "cpu" in ALL_BACKENDS else "numpy"):
        torch.manual_seed(0)
        model = Net(hidden=40)
        opt = LARS(
            torch.optim.SGD(
                model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True
            ),
            use_clip=use_clip,
            backend=backend,
            fused=fused,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
        for t in range(6):
            gen = torch.Generator().manual_seed(t)
            x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        results.append((model, opt))
    (a, oa), (b, ob) = results
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)
    la, lb = oa.trust_ratios(), ob.trust_ratios()
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) <= 1e-5 * lb[k] for k in la)


def test_fp16_parameters_fused_step_on_emu():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(300, 7).half())
    q = nn.Parameter(p.detach().clone())
    opt_e = LARS(torch.optim.SGD([("w", p)], lr=0.1, momentum=0.9), backend="emu", fused=True)
    opt_r = LARS(torch.optim.SGD([("w", q)], lr=0.1, momentum=0.9), backend="numpy", fused=True)
    for t in range(3):
        gen = torch.Generator().manual_seed(t)
        grad = (torch.randn(300, 7, generator=gen) * 0.01).half()
        p.grad = grad.clone()
        q.grad = grad.clone()
        opt_e.step()
        opt_r.step()
    torch.testing.assert_close(p.float(), q.float(), rtol=4e-3, atol=1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_gradient_skips_the_step_on_emu(fused):
    model = Net(hidden=40)
    opt = LARS(
        torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9), backend="emu", fused=fused
    )
    nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    model.fc1.weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="inf/nan"):
        opt.step()
    assert bool(opt.found_inf)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_buffers_of_another_dtype_are_staged_in_the_parameter_dtype():
    """After model.half(), torch SGD's fp32 momentum buffers meet fp16 parameters: the kernel
    must see them in fp16 (a raw fp32 buffer read as fp16 would be garbage), and the result
    must match the CPU path."""
    results = []
    for backend in ("emu", "numpy"):
        torch.manual_seed(0)
        m = nn.Linear(16, 8)
        opt = LARS(
            torch.optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9), backend=backend, fused=True
        )
        m(torch.randn(4, 16)).sum().backward()
        opt.step()
        m.half()
        m.zero_grad()
        m(torch.randn(4, 16).half()).float().sum().backward()
        opt.step()
        assert opt.state[m.weight]["momentum_buffer"].dtype == torch.float32
        results.append([p.detach().float().clone() for p in m.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=4e-3, atol=1e-3)


@pytest.mark.parametrize("order", ["reverse", "shuffle:1", "shuffle:7"])
def test_optimizer_on_emu_is_the_same_in_every_core_order(monkeypatch, order):
    """Cores run concurrently on hardware: the emulation runs them in another order and the
    training run must be bit-identical to the forward order."""

    def train(core_order: str) -> list[torch.Tensor]:
        monkeypatch.setenv("LARS_NPU_EMU_CORE_ORDER", core_order)
        torch.manual_seed(0)
        model = Net(hidden=40)
        opt = LARS(
            torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
            backend="emu",
            fused=True,
        )
        for t in range(3):
            gen = torch.Generator().manual_seed(t)
            x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(train("forward"), train(order), strict=True):
        assert torch.equal(a, b)


def test_unknown_core_order_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LARS_NPU_EMU_CORE_ORDER", "sideways")
    w = torch.randn(10)
    with pytest.raises(ValueError, match="LARS_NPU_EMU_CORE_ORDER='sideways'"):
        lars_npu.square_sum_all(w, w, backend="emu")


@pytest.mark.parametrize("fused", [True, False])
def test_odd_offset_views_work_on_emu(fused):
    """A parameter (and gradient) that is a view starting at element 1 — base address 4 bytes
    past a 32-byte boundary — is staged into an aligned copy for the kernels and written back:
    the same result as the CPU backend."""
    results = []
    for backend in ("emu", "cpu" if "cpu" in ALL_BACKENDS else "numpy"):
        base = torch.randn(1 + 33 * 5, generator=torch.Generator().manual_seed(1))
        p = nn.Parameter(base[1:].view(33, 5))
        assert p.data_ptr() % 32 != 0
        opt = LARS(
            torch.optim.SGD([("w", p)], lr=0.1, momentum=0.9, weight_decay=1e-4),
            backend=backend,
            fused=fused,
        )
        gbase = torch.zeros(1 + 33 * 5)
        for t in range(3):
            gbase[1:] = torch.randn(33 * 5, generator=torch.Generator().manual_seed(10 + t))
            p.grad = gbase[1:].view(33, 5)
            opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-7)


def test_odd_offset_views_in_functional_ops_on_emu():
    base_w, base_g = torch.randn(301), torch.randn(301) * 0.01
    w, g = base_w[1:], base_g[1:]
    w_s, g_s = lars_npu.square_sum_all(w, g, backend="emu")
    np.testing.assert_allclose(float(w_s), float((w.double() ** 2).sum()), rtol=2e-6)
    np.testing.assert_allclose(float(g_s), float((g.double() ** 2).sum()), rtol=2e-6)
    out = lars_npu.lars_update(w, g, w_s, g_s, 1e-3, 0.1, backend="emu")
    ref = reference.lars_update(
        w.double().numpy(), g.double().numpy(), float(w_s), float(g_s), 1e-3, 0.1
    )
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=2e-5, atol=1e-9)


def test_mixed_fp32_fp16_model_fused_step_on_emu():
    """A model with fp32 and fp16 parameters: the fused step runs on the kernels in two dtype
    groups and matches the NumPy reference backend."""
    results = []
    for backend in ("emu", "numpy"):
        torch.manual_seed(0)
        a = nn.Parameter(torch.randn(300, 7))
        b = nn.Parameter(torch.randn(5000).half())
        opt = LARS(
            torch.optim.SGD([("a", a), ("b", b)], lr=0.1, momentum=0.9, weight_decay=1e-4),
            backend=backend,
            fused=True,
        )
        for t in range(3):
            gen = torch.Generator().manual_seed(t)
            a.grad = torch.randn(300, 7, generator=gen) * 0.01
            b.grad = (torch.randn(5000, generator=gen) * 0.01).half()
            opt.step()
        results.append((a.detach().clone(), b.detach().float().clone(), opt.trust_ratios()))
    (a1, b1, l1), (a2, b2, l2) = results
    torch.testing.assert_close(a1, a2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b1, b2, rtol=4e-3, atol=1e-3)
    assert l1.keys() == l2.keys() and all(abs(l1[k] - l2[k]) <= 1e-3 * l2[k] for k in l1)
