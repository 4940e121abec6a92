"""Memory shared between the tensors of one step (lars_npu/_sharing.py, csrc/cpu/overlap.h).

A step that writes a tensor sharing memory with another of its tensors is refused on every path
(fused zero-copy, fused on the other backends, unfused, sharded) before anything is written,
naming both; tensors that are only read may share memory, and tensors that share a storage
without sharing bytes (views of one flat buffer) step exactly as separate tensors would.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lars_npu import LARS, LARSSGD, available_backends
from lars_npu._backends._native import native
from lars_npu._sharing import find_conflict
from lars_npu.distributed import ShardedLARS, flat_shard

from .conftest import needs_native

NAMES = ("a.weight", "b.weight", "c.bias")
SHAPE = (4, 3)

# (fused, backend): the fused zero-copy path (cpu), the fused step on the other backends, the
# unfused rewrite + inner step
PATHS = [(None, "auto"), (None, "torch"), (None, "numpy"), (False, "auto"), (False, "torch"),
         (False, "numpy")]  # fmt: skip
if "emu" in available_backends():
    PATHS += [(None, "emu"), (False, "emu")]
PATH_IDS = [f"{'fused' if f is None else 'unfused'}-{b}" for f, b in PATHS]


def separate() -> dict[str, nn.Parameter]:
    torch.manual_seed(0)
    return {
        "a.weight": nn.Parameter(torch.randn(SHAPE)),
        "b.weight": nn.Parameter(torch.randn(SHAPE)),
        "c.bias": nn.Parameter(torch.randn(4)),
    }


def build(params: dict[str, torch.Tensor], fused: bool | None, backend: str, sharded=False):
    sgd = torch.optim.SGD(list(params.items()), lr=0.1, momentum=0.9, weight_decay=1e-2)
    if sharded:
        return ShardedLARS(sgd, backend=backend)
    return LARS(sgd, fused=fused, backend=backend)


def set_grads(params: dict[str, torch.Tensor], t: int) -> None:
    gen = torch.Generator().manual_seed(100 + t)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=gen)


def snapshot(params, opt):
    out = []
    for p in params.values():
        m = (opt.state.get(p) or {}).get("momentum_buffer")
        out.append((p.detach().clone(), p.grad.clone(), None if m is None else m.clone()))
    return out


def unchanged(before, after) -> bool:
    return all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        and ((a[2] is None and b[2] is None) or torch.equal(a[2], b[2]))
        for a, b in zip(before, after, strict=True)
    )  # fmt: skip


def tie(params, case: str) -> None:
    """Make two tensors of the step share memory, the way a user can."""
    a, b = params["a.weight"], params["b.weight"]
    if case == "transposed_parameter":  # Parameter(enc.weight.t()) style tying
        base = torch.randn(SHAPE[1], SHAPE[0])
        a.data = base.t()
        b.data = base.t()
    elif case == "overlapping_flat_views":
        flat = torch.randn(20)
        a.data = flat[0:12].view(SHAPE)
        b.data = flat[6:18].view(SHAPE)
    elif case == "gradient_is_its_parameter":  # the gradient of ½‖w‖²
        a.grad = a.detach()
    elif case == "gradient_is_another_parameter":
        a.grad = b.detach()
    else:
        raise AssertionError(case)


WRITE_CASES = [
    "transposed_parameter",
    "overlapping_flat_views",
    "gradient_is_its_parameter",
    "gradient_is_another_parameter",
]


@pytest.mark.parametrize("case", WRITE_CASES)
@pytest.mark.parametrize(("fused", "backend"), PATHS, ids=PATH_IDS)
def test_written_tensor_sharing_memory_is_refused_before_any_write(fused, backend, case):
    params = separate()
    opt = build(params, fused, backend)
    set_grads(params, 0)
    opt.step()  # momentum buffers exist
    set_grads(params, 1)
    tie(params, case)
    before = snapshot(params, opt)
    with pytest.raises(ValueError, match=r"share memory|appears twice") as err:
        opt.step()
    assert "'a.weight'" in str(err.value)
    if case != "gradient_is_its_parameter":
        assert "'b.weight'" in str(err.value)
    assert unchanged(before, snapshot(params, opt))


@pytest.mark.parametrize("whose", ["another_buffer", "a_gradient", "a_parameter"])
@pytest.mark.parametrize(("fused", "backend"), PATHS, ids=PATH_IDS)
def test_momentum_buffer_sharing_memory_is_refused(fused, backend, whose):
    params = separate()
    opt = build(params, fused, backend)
    set_grads(params, 0)
    opt.step()
    set_grads(params, 1)
    a, b = params["a.weight"], params["b.weight"]
    other = {
        "another_buffer": opt.state[a]["momentum_buffer"],
        "a_gradient": a.grad,
        "a_parameter": a.detach(),
    }[whose]
    opt.state[b]["momentum_buffer"] = other
    before = snapshot(params, opt)
    with pytest.raises(ValueError, match="share memory") as err:
        opt.step()
    assert "'a.weight'" in str(err.value) and "'b.weight'" in str(err.value)
    assert "momentum_buffer" in str(err.value)
    assert unchanged(before, snapshot(params, opt))


@pytest.mark.parametrize(("fused", "backend"), PATHS, ids=PATH_IDS)
def test_views_of_one_flat_buffer_that_do_not_overlap_step_as_separate_tensors(fused, backend):
    """Parameters and gradients packed into one flat buffer each (as DDP's bucket views or a
    flat-parameter scheme do) share a storage but no byte: not refused, same bits."""
    ref = separate()
    params = separate()
    flat_w = torch.zeros(28)
    flat_g = torch.zeros(28)
    offsets = {"a.weight": 0, "b.weight": 12, "c.bias": 24}
    for n, p in params.items():
        view = flat_w[offsets[n] : offsets[n] + p.numel()].view(p.shape)
        view.copy_(p.detach())
        p.data = view
    opt, opt_ref = build(params, fused, backend), build(ref, fused, backend)
    for t in range(3):
        set_grads(ref, t)
        for n, p in params.items():
            g = flat_g[offsets[n] : offsets[n] + p.numel()].view(p.shape)
            g.copy_(ref[n].grad)
            p.grad = g
        opt.step()
        opt_ref.step()
    for n in NAMES:
        assert torch.equal(params[n].detach(), ref[n].detach()), n


@pytest.mark.parametrize("backend", ["auto", "torch", "numpy"])
def test_one_gradient_read_for_two_parameters_by_the_fused_step_is_exact(backend):
    """The fused step only reads gradients: one gradient tensor for two parameters is the same
    as two copies of it. The unfused step rewrites adapted gradients in place: refused."""
    params, ref = separate(), separate()
    opt, opt_ref = build(params, None, backend), build(ref, None, backend)
    for t in range(2):
        set_grads(params, t)
        set_grads(ref, t)
        params["b.weight"].grad = params["a.weight"].grad
        ref["b.weight"].grad = ref["a.weight"].grad.clone()
        opt.step()
        opt_ref.step()
    for n in NAMES:
        assert torch.equal(params[n].detach(), ref[n].detach()), n
    unfused = build(params, False, backend)
    params["b.weight"].grad = params["a.weight"].grad
    with pytest.raises(ValueError, match=r"gradient of parameter 'a\.weight' and gradient of "
                                         r"parameter 'b\.weight' share memory"):  # fmt: skip
        unfused.step()


def test_a_parameter_listed_twice_is_refused_at_construction():
    params = separate()
    a = params["a.weight"]
    with pytest.warns(UserWarning, match="duplicate"):  # torch's SGD only warns
        sgd = torch.optim.SGD([("a.weight", a), ("again", a)], lr=0.1)
    with pytest.raises(ValueError, match="'again' appears twice"):
        LARS(sgd)
    with pytest.raises(ValueError, match="appears twice"), pytest.warns(UserWarning):
        LARSSGD([a, params["b.weight"], a], lr=0.1)
    opt = LARS(torch.optim.SGD([("a.weight", a)], lr=0.1))
    with pytest.raises(ValueError, match="appears twice"), pytest.warns(UserWarning):
        b = params["b.weight"]
        opt.add_param_group({"params": [("b.weight", b), ("b2", b)]})
    assert len(opt.param_groups) == 1
    # one put in another's place after construction: the step refuses it (written twice)
    for fused in (None, False):
        b = params["b.weight"]
        opt = LARS(torch.optim.SGD([("a.weight", a), ("b.weight", b)], lr=0.1, momentum=0.9),
                   fused=fused)  # fmt: skip
        opt.param_groups[0]["params"][1] = a
        a.grad = torch.ones_like(a)
        before = a.detach().clone()
        with pytest.raises(ValueError, match=r"appears twice|share memory"):
            opt.step()
        assert torch.equal(a.detach(), before)


@pytest.mark.usefixtures("one_rank")
@pytest.mark.parametrize("case", WRITE_CASES)
def test_sharded_lars_refuses_sharing_before_any_write(case):
    params = {n: flat_shard(p) for n, p in separate().items()}
    opt = build(params, None, "auto", sharded=True)
    set_grads(params, 0)
    opt.step()
    set_grads(params, 1)
    a, b = params["a.weight"], params["b.weight"]
    if case == "transposed_parameter" or case == "overlapping_flat_views":
        flat = torch.randn(20)  # two flat shards overlapping in one buffer
        a.data, b.data = flat[0:12], flat[6:18]
    elif case == "gradient_is_its_parameter":
        a.grad = a.detach()
    else:
        a.grad = b.detach()
    before = snapshot(params, opt)
    with pytest.raises(ValueError, match="share memory") as err:
        opt.step()
    assert "'a.weight'" in str(err.value)
    assert unchanged(before, snapshot(params, opt))


# -- the check itself: numpy (every path) and C++ (the fused plan) against brute force --------


def brute_force(begin, end, written) -> bool:
    n = len(begin)
    return any(
        (written[i] or written[j]) and begin[i] < end[j] and begin[j] < end[i]
        and end[i] > begin[i] and end[j] > begin[j]
        for i in range(n) for j in range(i + 1, n)
    )  # fmt: skip


ranges = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 12), st.booleans()), min_size=0, max_size=12
)


@given(ranges)
def test_find_conflict_agrees_with_brute_force(rs):
    begin = np.asarray([b for b, _, _ in rs], dtype=np.int64)
    end = begin + np.asarray([n for _, n, _ in rs], dtype=np.int64)
    written = np.asarray([w for _, _, w in rs], dtype=bool)
    expect = brute_force(begin, end, written)
    hit = find_conflict(begin, end, written)
    assert (hit is not None) == expect
    if hit is not None:
        i, j = hit
        assert i != j and (written[i] or written[j])
        assert begin[i] < end[j] and begin[j] < end[i]
    C = native()
    if C is not None:
        ci, cj = C._testing.find_conflict(begin, end, written.astype(np.uint8))
        assert (ci >= 0) == expect
        if ci >= 0:
            assert ci != cj and (written[ci] or written[cj])
            assert begin[ci] < end[cj] and begin[cj] < end[ci]


@needs_native
def test_native_fused_plan_refuses_overlap_even_after_a_proven_step():
    """The operator proves the tensors disjoint natively (and skips the sort while the byte
    ranges are those of the last proven step): a parameter re-pointed into another's memory is
    refused with a ValueError naming its role, before any write."""
    from lars_npu._backends.cpu import CpuBackend

    ws = [torch.randn(8), torch.randn(8)]
    gs = [torch.randn(8), torch.randn(8)]
    ms = [torch.zeros(8), torch.zeros(8)]
    rest = (
        torch.zeros(2, dtype=torch.int64),
        torch.tensor([3, 3], dtype=torch.uint8),
        torch.tensor([[0.1, 0.0, 0.9, 0.0]], dtype=torch.float64),
        1e-5,
        1e-3,
        False,
        False,
    )

    def step(w, g, m):
        return torch.ops.lars_npu.fused_step_(w, g, m, *rest)

    step(ws, gs, ms)
    step(ws, gs, ms)  # same ranges: no new proof needed
    big = torch.randn(12)
    before = big.clone()
    for w, g, m, role in [
        ([big[0:8], big[4:12]], gs, ms, "parameter"),
        (ws, gs, [ms[0], ms[0]], "momentum_buffer"),
        (ws, [ws[1], gs[1]], ms, "gradient"),
    ]:
        with pytest.raises(ValueError, match="shares memory") as err:
            step(w, g, m)
        assert re.match(r"lars_npu\[(parameter|momentum_buffer|gradient) \d\]", str(err.value))
        assert role in str(err.value)
    assert torch.equal(big, before)
    # two gradients sharing memory: only read, accepted
    step(ws, [gs[0], gs[0]], ms)
    assert CpuBackend.verifies_layout
