"""Adversarial tests of the fused step's cache and the unfused step's transaction (issue 12).

The rule everywhere: after any mutation a user can make between steps, a step either gives the
result torch's own SGD gives on the unfused path, or is refused with a clear error naming the
parameter, with nothing written. Old storages are kept alive on purpose, so that a write through
a stale pointer shows up as a failed assertion instead of a crash.
"""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from lars_npu import LARS
from lars_npu._backends._native import native
from lars_npu._fused import check_storage

from .conftest import BACKENDS

FUSED_BACKENDS = [b for b in BACKENDS if b in ("cpu", "torch", "numpy")]
needs_native = pytest.mark.skipif(native() is None, reason="lars_npu._C is not built")


def make(fused: bool | None, backend: str = "auto", momentum: float = 0.9):
    torch.manual_seed(0)
    a, b = nn.Linear(5, 8), nn.Linear(8, 3)
    named = [("a.weight", a.weight), ("a.bias", a.bias), ("b.weight", b.weight), ("b.bias", b.bias)]
    sgd = torch.optim.SGD(named, lr=0.1, momentum=momentum, weight_decay=1e-3)
    opt = LARS(sgd, fused=fused, backend=backend)
    return dict(named), opt


def grads(params: dict[str, torch.Tensor], t: int) -> None:
    gen = torch.Generator().manual_seed(1000 + t)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=gen)


def _clone(t):
    """A copy, or for a tensor whose storage no longer holds its elements (torch itself would
    read out of bounds) a marker of that storage's size."""
    if t is None:
        return None
    try:
        check_storage(t, "t")
    except ValueError:
        return torch.tensor([t.untyped_storage().nbytes()], dtype=torch.int64)
    return t.detach().clone()


def snapshot(params, opt):
    ws = {n: _clone(p) for n, p in params.items()}
    gs = {n: _clone(p.grad) for n, p in params.items()}
    ms = {n: _clone((opt.state.get(p) or {}).get("momentum_buffer")) for n, p in params.items()}
    return ws, gs, ms


def assert_same(a, b):
    for part_a, part_b in zip(a, b, strict=True):
        for n in part_a:
            x, y = part_a[n], part_b[n]
            assert (x is None) == (y is None), n
            if x is not None:
                assert x.shape == y.shape, n  # bit patterns: NaN garbage equals itself
                assert torch.equal(
                    x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8)
                ), n


def both(mutate, steps_before=2, backend="cpu"):
    """Run the same mutation on a fused and an unfused optimizer; return both outcomes."""
    out = []
    for fused in (True, False):
        params, opt = make(fused, backend=backend if fused else "auto")
        for t in range(steps_before):
            grads(params, t)
            opt.step()
        keep = mutate(params, opt)
        gc.collect()
        before = snapshot(params, opt)
        try:
            grads_now = {n: p.grad for n, p in params.items()}
            opt.step()
            err = None
        except (ValueError, TypeError, RuntimeError) as exc:
            err = exc
            assert_same(before, snapshot(params, opt))  # a refused step wrote nothing
            del grads_now
        out.append((params, opt, err, keep))
    return out


def _regrad_same(params, opt):
    grads(params, 99)


# -- item 1: momentum buffers re-pointed behind the cache ---------------------------------------


def _buf(params, opt, name="a.weight"):
    return opt.state[params[name]]["momentum_buffer"]


@needs_native
@pytest.mark.parametrize(
    "how",
    ["resize_", "set_", "data_small", "data_same_shape", "storage_resize_0"],
)
def test_momentum_buffer_repointed_never_uses_the_old_storage(how):
    def mutate(params, opt):
        buf = _buf(params, opt)
        old = buf.detach().clone()
        alias = buf.detach()  # the old storage, kept alive: stale writes would change it
        if how == "resize_":
            buf.resize_(1000)
        elif how == "set_":
            buf.set_(torch.zeros(1))
        elif how == "data_small":
            buf.data = torch.zeros(1)
        elif how == "data_same_shape":
            buf.data = torch.zeros_like(buf)
        else:
            buf.untyped_storage().resize_(0)
        grads(params, 7)
        return old, alias, how

    (pf, of, ef, (old_f, alias_f, _)), (pu, ou, eu, _) = both(mutate)
    if how in ("data_same_shape",):
        assert ef is None and eu is None
        for n in pf:
            torch.testing.assert_close(pf[n].detach(), pu[n].detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(_buf(pf, of), _buf(pu, ou), rtol=1e-6, atol=1e-7)
    else:  # the fused step refuses, naming the parameter (the unfused one refuses too)
        assert ef is not None and "a.weight" in str(ef), ef
        assert eu is not None
    if how in ("set_", "data_small", "data_same_shape"):  # the old storage, orphaned: untouched
        assert torch.equal(alias_f, old_f)


# -- item 2: shapes that fit by element count only ----------------------------------------------


@needs_native
def test_gradient_of_transposed_shape_is_refused_by_name():
    params, opt = make(True, backend="cpu")
    grads(params, 0)
    opt.step()
    grads(params, 1)
    params["a.weight"].grad.data = torch.randn(5, 8)  # (5, 8) for an (8, 5) parameter
    before = snapshot(params, opt)
    with pytest.raises(ValueError, match=r"a\.weight.*shape|shape.*a\.weight"):
        opt.step()
    assert_same(before, snapshot(params, opt))


@needs_native
@pytest.mark.parametrize("fused", [True, False])
def test_parameter_repointed_to_a_smaller_view_at_the_same_address(fused):
    params, opt = make(fused, backend="cpu" if fused else "auto")
    for t in range(2):
        grads(params, t)
        opt.step()
    p = params["a.weight"]
    full = p.data  # the old storage stays alive; nothing may be written past the view
    tail = full.flatten()[10:].clone()
    p.data = full.flatten()[:10]
    grads_old_shape = p.grad  # still (8, 5)
    assert grads_old_shape.shape == (8, 5)
    before = snapshot(params, opt)
    with pytest.raises(ValueError, match=r"a\.weight"):
        opt.step()
    assert_same(before, snapshot(params, opt))
    assert torch.equal(full.flatten()[10:], tail)


@needs_native
def test_parameter_reshaped_with_fitting_gradient_and_buffer_steps_like_torch():
    results = []
    for fused in (True, False):
        params, opt = make(fused, backend="cpu" if fused else "auto")
        for t in range(2):
            grads(params, t)
            opt.step()
        p = params["a.weight"]
        full = p.data
        tail = full.flatten()[10:].clone()
        p.data = full.flatten()[:10].clone()
        opt.state[p]["momentum_buffer"] = opt.state[p]["momentum_buffer"].flatten()[:10].clone()
        grads(params, 5)
        opt.step()
        assert torch.equal(full.flatten()[10:], tail)
        results.append({n: q.detach().clone() for n, q in params.items()})
    for n in results[0]:
        torch.testing.assert_close(results[0][n], results[1][n], rtol=1e-6, atol=1e-7)


@needs_native
@pytest.mark.parametrize("how", ["swap_grads", "grad_view_same_address", "gc", "param_storage_0"])
def test_more_mutations_fused_equals_unfused_or_refuses(how):
    def mutate(params, opt):
        grads(params, 11)
        a, b = params["a.bias"], params["b.weight"]
        if how == "swap_grads":  # same-shape gradients swapped between two parameters
            w1 = params["a.weight"]
            g = w1.grad
            w1.grad = g.flip(0).contiguous()
        elif how == "grad_view_same_address":
            big = torch.randn(100)
            a.grad = big[: a.numel()].view(a.shape)
        elif how == "param_storage_0":
            b.untyped_storage().resize_(0)
        return None

    (pf, _of, ef, _), (pu, _ou, eu, _) = both(mutate)
    if how == "param_storage_0":
        assert ef is not None and "b.weight" in str(ef)
        return
    assert ef is None and eu is None
    for n in pf:
        torch.testing.assert_close(pf[n].detach(), pu[n].detach(), rtol=1e-6, atol=1e-7)


# -- item 10: the zero-copy path is really taken ------------------------------------------------


@needs_native
def test_plain_fused_sgd_steps_take_the_zero_copy_path():
    params, opt = make(None, backend="auto")
    for t in range(4):
        grads(params, t)
        opt.step()
    stats = opt._driver.stats
    assert stats["zero_copy"] == 4 and stats["checked"] == 0, stats
    assert stats["rebuilds"] == 1, stats


@needs_native
def test_layout_mismatch_is_a_real_exception_type():
    C = native()
    assert issubclass(C.LayoutError, ValueError)
    import numpy as np

    plan = C.FusedPlan(
        [(2, 3)],
        np.zeros(1, np.int64),
        np.zeros(1, np.int64),
        np.ones(1, np.uint8),
        np.ones(1, np.uint8),
    )
    w, g, m = torch.zeros(2, 3), torch.zeros(3, 2), torch.zeros(2, 3)
    dl = torch._C._to_dlpack
    st = torch.Tensor.untyped_storage
    with pytest.raises(C.LayoutError) as exc:
        plan.step(
            [dl(w)],
            [dl(g)],
            [dl(m)],
            np.zeros(1, np.uint8),
            np.zeros(1),
            np.ones(1),
            np.zeros(1),
            np.zeros(1, np.uint8),
            1e-5,
            1e-3,
            False,
            False,
            1,
            [st(w)],
            [st(g)],
            [st(m)],
        )
    assert exc.value.role == "gradient" and exc.value.index == 0
