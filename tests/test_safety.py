"""Adversarial tests of the fused step's cache and the unfused step's transaction.

The rule everywhere: after any mutation a user can make between steps, a step either gives the
result torch's own SGD gives on the unfused path, or is refused with a clear error naming the
parameter, with nothing written. Old storages are kept alive on purpose, so that a write through
a stale pointer shows up as a failed assertion instead of a crash.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from torch import nn

from lars_npu import LARS, available_backends
from lars_npu._checks import check_storage

from .conftest import BACKENDS, needs_native

FUSED_BACKENDS = [b for b in BACKENDS if b in ("cpu", "torch", "numpy")]


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
    if not isinstance(t, torch.Tensor):  # a non-tensor state entry: its value
        return torch.tensor(t)
    if t.layout != torch.strided:
        return t.to_dense()
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
                    x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)
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


# -- momentum buffers re-pointed behind the cache --------------------------------------------------


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


# -- shapes that fit by element count only ---------------------------------------------------------


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


# -- the zero-copy path is really taken ------------------------------------------------------------


@needs_native
def test_plain_fused_sgd_steps_take_the_zero_copy_path():
    params, opt = make(None, backend="auto")
    for t in range(4):
        grads(params, t)
        opt.step()
    stats = opt._driver.stats
    assert stats["native"] == 4 and stats["checked"] == 0, stats
    assert stats["rebuilds"] == 1, stats


@needs_native
def test_operator_refusal_is_a_value_error_with_role_and_index():
    """The operator's own error (torch.ops.lars_npu.fused_step_ called directly) is a ValueError
    whose message names role and index; lars_npu turns it into a TensorError naming the
    parameter."""
    from lars_npu._ops import TensorError, named

    w, g, m = torch.zeros(2, 3), torch.zeros(3, 2), torch.zeros(2, 3)
    args = (
        torch.zeros(1, dtype=torch.int64),
        torch.tensor([3], dtype=torch.uint8),
        torch.tensor([[0.1, 0.0, 0.9, 0.0]], dtype=torch.float64),
        1e-5,
        1e-3,
        False,
        False,
    )
    with pytest.raises(ValueError, match=r"^lars_npu\[gradient 0\]: has shape \(3, 2\)") as exc:
        torch.ops.lars_npu.fused_step_([w], [g], [m], *args)
    err = named(exc.value, ["fc.weight"])
    assert isinstance(err, TensorError) and isinstance(err, ValueError)
    assert (err.role, err.index, err.name) == ("gradient", 0, "fc.weight")
    assert str(err).startswith("gradient of parameter 'fc.weight' has shape (3, 2)")


# -- the unfused step as a transaction -------------------------------------------------------------


def _stepped(fused, **kw):
    """An optimizer after one step, with fresh gradients for the next."""
    params, opt = make(fused, **kw)
    grads(params, 0)
    opt.step()
    grads(params, 1)
    return params, opt


def _unfused(**kw):
    return _stepped(False, **kw)


def assert_refused(params, opt, pattern):
    """The next step raises a ValueError matching ``pattern`` and writes nothing."""
    before = snapshot(params, opt)
    with pytest.raises(ValueError, match=pattern):
        opt.step()
    assert_same(before, snapshot(params, opt))


def test_checkpoint_with_buffers_of_the_wrong_shape_is_refused_at_load():
    params, opt = _unfused()
    sd = opt.state_dict()
    sd["state"][0]["momentum_buffer"] = torch.zeros(3, 3)  # a.weight is (8, 5)
    before = snapshot(params, opt)
    with pytest.raises(ValueError, match=r"a\.weight.*\(3, 3\)"):
        opt.load_state_dict(sd)
    assert_same(before, snapshot(params, opt))


def test_checkpoint_with_non_finite_buffers_is_refused_at_load():
    _params, opt = _unfused()
    sd = opt.state_dict()
    sd["state"][2]["momentum_buffer"] = torch.full((3, 8), float("nan"))
    with pytest.raises(ValueError, match=r"b\.weight.*inf/nan"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize("fused", [True, False])
def test_buffer_of_the_wrong_shape_in_the_state_is_refused_before_any_write(fused):
    params, opt = _stepped(fused)
    opt.state[params["b.weight"]]["momentum_buffer"] = torch.zeros(8, 3)
    assert_refused(params, opt, r"b\.weight")


def test_expanded_gradient_is_refused_by_name_before_any_write():
    params, opt = _unfused()
    params["b.weight"].grad = torch.ones(1, 8).expand(3, 8)  # stride 0: cannot be rewritten
    assert_refused(params, opt, r"b\.weight.*overlapping")


def test_lbfgs_and_differentiable_sgd_are_refused_at_construction():
    w = nn.Parameter(torch.ones(3))
    with pytest.raises(TypeError, match="LBFGS"):
        LARS(torch.optim.LBFGS([w]))
    with pytest.raises(ValueError, match="differentiable=True"):
        LARS(torch.optim.SGD([w], lr=0.1, differentiable=True))


@pytest.mark.parametrize("inner", ["RMSprop", "Adagrad", "Adadelta", "Rprop"])
def test_scale_invariant_inner_optimizers_warn(inner):
    w = nn.Parameter(torch.ones(3))
    with pytest.warns(UserWarning, match=f"{inner}.*largely cancels"):
        LARS(getattr(torch.optim, inner)([("w", w)]))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    ("key", "value"), [("momentum", float("nan")), ("momentum", -0.5), ("dampening", float("inf"))]
)
def test_bad_inner_hyper_parameters_are_refused_before_any_write(fused, key, value):
    params, opt = _stepped(fused)
    opt.param_groups[0][key] = value
    assert_refused(params, opt, rf"param_groups\[0\].*{key}")


def test_inner_step_raising_puts_gradients_and_weight_decay_back_and_a_retry_is_exact():
    params, opt = _unfused()
    ref_params, ref_opt = _unfused()
    boom = {"left": 1}

    def hook(optimizer, args, kwargs):
        if boom["left"]:
            boom["left"] -= 1
            raise RuntimeError("inner step failed")

    handle = opt.optimizer.register_step_pre_hook(hook)
    before = snapshot(params, opt)
    with pytest.raises(RuntimeError, match="inner step failed"):
        opt.step()
    assert_same(before, snapshot(params, opt))  # gradients back to g, not g'
    assert opt.param_groups[0]["weight_decay"] == 1e-3
    opt.step()  # the retry applies LARS once
    handle.remove()
    ref_opt.step()
    for n in params:
        assert torch.equal(params[n], ref_params[n]), n
        assert torch.equal(params[n].grad, ref_params[n].grad), n


def test_add_param_group_rolls_back_whatever_the_filter_raises():
    _params, opt = make(None)

    def picky(info):
        raise KeyError(info.name)

    opt.lars_filter = picky
    n = len(opt.param_groups)
    with pytest.raises(KeyError):
        opt.add_param_group({"params": [("c.weight", nn.Parameter(torch.ones(2)))]})
    assert len(opt.param_groups) == n


# -- global hooks once per step --------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_global_and_own_hooks_fire_once_per_step(fused):
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    params, opt = make(fused)
    seen = []
    h1 = register_optimizer_step_pre_hook(lambda o, a, k: seen.append(("pre", type(o).__name__)))
    h2 = register_optimizer_step_post_hook(lambda o, a, k: seen.append(("post", type(o).__name__)))
    h3 = opt.register_step_pre_hook(lambda o, a, k: seen.append(("lars pre", "")))
    h4 = opt.optimizer.register_step_post_hook(lambda o, a, k: seen.append(("sgd post", "")))
    try:
        grads(params, 0)
        opt.step()
    finally:
        for h in (h1, h2, h3, h4):
            h.remove()
    inner = [] if fused else [("sgd post", "")]  # the inner's own hooks run when it steps
    assert seen == [("pre", "LARS"), ("lars pre", ""), *inner, ("post", "LARS")]


# -- weight-decay schedules ------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_weight_decay_schedule_to_zero_and_back(fused):
    from lars_npu import reference

    w = nn.Parameter(torch.tensor([[0.5, -0.8, 0.2], [0.6, 0.4, -0.2]], dtype=torch.float64))
    opt = LARS(
        torch.optim.SGD([("fc.weight", w)], lr=0.5, momentum=0.9, weight_decay=0.5),
        fused=fused,
        coefficient=0.1,
    )
    mirror, buf = w.detach().numpy().copy(), None
    for t, wd in enumerate([0.5, 0.0, 0.0, 0.2]):
        opt.param_groups[0]["weight_decay"] = wd
        g = torch.full_like(w, 0.1 * (t + 1))
        w.grad = g.clone()
        opt.step()
        mirror, buf, _, _ = reference.lars_momentum_step(
            mirror, g.numpy(), buf, lr=0.5, weight_decay=wd, momentum=0.9, coefficient=0.1
        )
        np_w = w.detach().numpy()
        assert abs(np_w - mirror).max() < 1e-12, (t, wd, np_w, mirror)
        assert opt.param_groups[0]["weight_decay"] == wd


# -- non-finite pre-check in the gradient's dtype, devices -----------------------------------------


def test_finite_check_does_not_overflow_for_large_finite_fp16():
    from lars_npu.functional import all_finite

    big = torch.full((4096,), 60000.0, dtype=torch.float16)  # 2-norm in fp16: inf
    assert torch._foreach_norm([big])[0].isinf()
    assert all_finite([big, torch.ones(3)])
    assert not all_finite([big, torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor([float("-inf")], dtype=torch.bfloat16)])


def test_fused_auto_falls_back_to_unfused_for_several_devices(monkeypatch):
    from lars_npu._fused import FusedDriver, MixedDevicesError

    def several(*a, **k):
        raise MixedDevicesError("the fused step needs every parameter on one device")

    monkeypatch.setattr(FusedDriver, "precise_checks", staticmethod(several))
    params, opt = make(None, backend="torch")  # a backend that never verifies natively
    ref_params, ref_opt = make(False, backend="torch")
    grads(params, 0)
    grads(ref_params, 0)
    opt.step()  # fused=None: the unfused path, as for sparse gradients
    ref_opt.step()
    for n in params:
        assert torch.equal(params[n], ref_params[n]), n
    params, opt = make(True, backend="torch")
    grads(params, 0)
    with pytest.raises(ValueError, match="fused=True: the fused step needs every parameter"):
        opt.step()


# -- test gaps from a mutation run ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [True, False])
def test_use_clip_at_lr_zero_on_a_zero_weight_gives_zero(backend, fused):
    """λ = 0 for a zero weight, and λ/lr at lr = 0 is taken at its limit: clipped λ = 0."""
    w = nn.Parameter(torch.zeros(4, 3))
    opt = LARS(
        torch.optim.SGD([("fc.weight", w)], lr=0.0, momentum=0.9, weight_decay=1e-3),
        use_clip=True,
        fused=fused,
        backend=backend,
    )
    w.grad = torch.randn(4, 3)
    opt.step()
    assert opt.trust_ratios() == {"fc.weight": 0.0}
    if not fused:
        assert torch.equal(w.grad, torch.zeros(4, 3))  # g' = 0·(g + wd·0)
    assert torch.equal(opt.state[w]["momentum_buffer"], torch.zeros(4, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_chunk_tensor_with_weight_decay_element_by_element(backend):
    """A tensor of 3 chunks and a tail (> 16,384 elements), wd > 0: every element against the
    reference, so λ-per-chunk and chunk-tail bugs cannot hide."""
    from lars_npu import lars_update, reference, square_sum_all

    n = 3 * 16384 + 77
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(n, generator=gen, dtype=torch.float64).float()
    g = (torch.randn(n, generator=gen, dtype=torch.float64) * 1e-2).float()
    ws, gs = square_sum_all(w, g, backend=backend)
    out = lars_update(w, g, ws, gs, 5e-4, 0.1, backend=backend)
    wn, gn = w.double().numpy(), g.double().numpy()
    w_s, g_s = float((wn * wn).sum()), float((gn * gn).sum())
    ref = reference.lars_update(wn, gn, w_s, g_s, 5e-4, 0.1)
    lam = reference.trust_ratio(w_s, g_s, 5e-4, 0.1)
    import numpy as np

    # fp32 output: each element within a few ulps of the scale of its terms, λ(|g| + wd·|w|)
    # (g + wd·w may cancel, so a plain relative tolerance would be meaningless there)
    err = np.abs(out.double().numpy() - ref)
    bound = 4e-7 * lam * (np.abs(gn) + 5e-4 * np.abs(wn)) + 1e-30
    assert (err <= bound).all(), (err / bound).max()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [True, False])
def test_multi_chunk_tensor_optimizer_step_element_by_element(backend, fused):
    """The same tensor through LARS(SGD) (λ from the multi-tensor or fused kernels' chunked sums):
    two steps, every element against the NumPy reference model."""
    import numpy as np

    from lars_npu import reference

    n = 3 * 16384 + 77
    gen = torch.Generator().manual_seed(6)
    w = nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64))
    opt = LARS(
        torch.optim.SGD([("fc.weight", w)], lr=0.1, momentum=0.9, weight_decay=5e-4),
        fused=fused,
        backend=backend,
    )
    mirror, buf = w.detach().numpy().copy(), None
    for _ in range(2):
        g = torch.randn(n, generator=gen, dtype=torch.float64) * 1e-2
        w.grad = g.clone()
        opt.step()
        mirror, buf, _, _ = reference.lars_momentum_step(
            mirror, g.numpy(), buf, lr=0.1, weight_decay=5e-4, momentum=0.9
        )
        np.testing.assert_allclose(w.detach().numpy(), mirror, rtol=1e-12, atol=1e-15)


# -- every state entry the inner step reads: type, shape, finiteness ---------------------------


def _scalar_model(fused):
    """A model with a 0-dim parameter, placed last so that a bad entry is met after others."""
    torch.manual_seed(0)
    named = [("w", nn.Parameter(torch.randn(4, 3))), ("s", nn.Parameter(torch.tensor(0.7)))]
    opt = LARS(torch.optim.SGD(named, lr=0.1, momentum=0.9), fused=fused)
    params = dict(named)
    for t in range(2):
        for p in params.values():
            p.grad = torch.full_like(p, 0.1 * (t + 1))
        if t == 0:
            opt.step()
    return params, opt


@pytest.mark.parametrize(
    ("value", "kind", "pattern"),
    [
        (torch.tensor(0.5), ValueError, r"state\['momentum_buffer'\] of parameter 'b\.weight' has "
                                        r"shape \(\)"),
        (0.5, TypeError, r"'b\.weight' must be a tensor or None, got float"),
        (torch.zeros(3, 8, dtype=torch.int64), TypeError, r"'b\.weight' has dtype torch.int64"),
    ],
    ids=["0-dim", "float", "integer"],
)  # fmt: skip
def test_checkpoint_with_a_misfit_momentum_entry_is_refused_at_load(value, kind, pattern):
    params, opt = _unfused()
    sd = copy.deepcopy(opt.state_dict())  # (state_dict shares the live state's entry dicts)
    sd["state"][2]["momentum_buffer"] = value  # b.weight is (3, 8)
    before = snapshot(params, opt)
    with pytest.raises(kind, match=pattern):
        opt.load_state_dict(sd)
    assert_same(before, snapshot(params, opt))


def test_checkpoint_with_a_nan_0_dim_buffer_of_a_scalar_parameter_is_refused_at_load():
    params, opt = _scalar_model(False)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["momentum_buffer"] = torch.tensor(float("nan"))
    with pytest.raises(ValueError, match=r"'s' holds inf/nan"):
        opt.load_state_dict(sd)
    sd["state"][1]["momentum_buffer"] = torch.tensor(0.25)  # a fitting 0-dim buffer loads
    sd["state"][1]["step"] = float("inf")  # but no non-finite entry of any kind does
    with pytest.raises(ValueError, match=r"state\['step'\] of parameter 's' is inf"):
        opt.load_state_dict(sd)
    del sd["state"][1]["step"]
    opt.load_state_dict(sd)
    opt.step()
    assert torch.isfinite(params["s"]).all()


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize(
    "value", [torch.tensor(0.5), 0.5, torch.zeros(3, 8, dtype=torch.int32)],
    ids=["0-dim", "float", "integer"],
)  # fmt: skip
def test_misfit_momentum_entry_in_the_state_is_refused_before_any_write(fused, value):
    """Set directly between steps (not through a load): every path checks every entry before its
    first write, so the parameters before b.weight are not stepped either."""
    params, opt = _stepped(fused)
    opt.state[params["b.weight"]]["momentum_buffer"] = value
    before = snapshot(params, opt)
    with pytest.raises((ValueError, TypeError), match=r"b\.weight"):
        opt.step()
    assert_same(before, snapshot(params, opt))


# -- non-finite sparse gradients -----------------------------------------------------------------


class _Sparse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4, sparse=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, idx):
        return self.fc(self.emb(idx)).sum()


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_sparse_gradient_skips_the_whole_step(fused, bad):
    """The sparse-embedding recipe (exclude the embedding with lars_filter): its gradient goes to
    the inner SGD untouched, and a NaN/inf in it skips the step like a dense one."""
    model = _Sparse()

    def keep_dense(info):
        return not info.name.startswith("emb") and info.ndim > 1

    opt = LARS(torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9),
               lars_filter=keep_dense, fused=fused)  # fmt: skip
    model(torch.tensor([1, 2, 3])).backward()
    opt.step()  # a finite step: both kinds of gradient step
    opt.zero_grad()
    model(torch.tensor([1, 5])).backward()
    g = model.emb.weight.grad
    model.emb.weight.grad = torch.sparse_coo_tensor(
        g._indices(), torch.full_like(g._values(), bad), g.shape, check_invariants=True
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bufs = {n: opt.state[p]["momentum_buffer"].to_dense() for n, p in model.named_parameters()}
    with pytest.warns(RuntimeWarning, match="inf/nan"):
        opt.step()
    assert bool(opt.found_inf)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
        assert torch.equal(opt.state[p]["momentum_buffer"].to_dense(), bufs[n]), n


def test_all_finite_ignores_empty_tensors():
    from lars_npu.functional import all_finite

    assert all_finite([torch.zeros(0), torch.ones(2)])
    assert not all_finite([torch.zeros(0), torch.tensor([1.0, float("nan")])])


# -- smaller defects -------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [None, False])
def test_complex_parameter_is_the_same_named_type_error_on_every_path(fused):
    p = nn.Parameter(torch.ones(3, dtype=torch.complex64))
    opt = LARS(torch.optim.SGD([("z", p)], lr=0.1, momentum=0.9), fused=fused)
    p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match=r"parameter 'z' has dtype torch.complex64; supported"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3, dtype=torch.complex64))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("where", ["gradient", "parameter", "momentum_buffer"])
def test_negative_bit_tensors_step_by_their_values(backend, fused, where):
    """torch's negative bit (``x.conj().imag``, ``_neg_view``): the memory holds -value. Every
    path steps by the values, as with the resolved tensor."""
    outs = []
    for lazy in (True, False):
        params, opt = make(fused, backend=backend)
        grads(params, 0)
        opt.step()
        grads(params, 1)
        p = params["a.weight"]
        if where == "gradient":
            val = p.grad.clone()
            p.grad = (-val)._neg_view() if lazy else val
        elif where == "parameter":
            val = p.detach().clone()
            p.data = (-val)._neg_view() if lazy else val
        else:
            val = opt.state[p]["momentum_buffer"].clone()
            opt.state[p]["momentum_buffer"] = (-val)._neg_view() if lazy else val
        opt.step()
        outs.append({n: q.detach().clone() for n, q in params.items()})
    for n in outs[0]:
        assert torch.equal(outs[0][n], outs[1][n]), n


def test_unexpected_keyword_with_an_optimizer_instance_is_named():
    sgd = torch.optim.SGD([("w", nn.Parameter(torch.ones(2, 2)))], lr=0.1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lr'"):
        LARS(sgd, lr=0.1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="LARSSGD"):  # parameters: the factory class is named
        LARS([nn.Parameter(torch.ones(2))])  # type: ignore[arg-type]


@pytest.mark.parametrize("fused", [None, False])
def test_sparse_momentum_buffer_of_a_dense_gradient_is_refused_before_any_write(fused):
    """A checkpoint of a model with sparse gradients resumed with dense ones: torch's SGD cannot
    add a dense gradient to a sparse buffer, so the step is refused up front, by name."""
    params, opt = _stepped(fused)
    buf = opt.state[params["b.weight"]]["momentum_buffer"]
    opt.state[params["b.weight"]]["momentum_buffer"] = buf.to_sparse()
    assert_refused(params, opt, r"momentum_buffer of parameter 'b\.weight' is sparse")


@pytest.mark.parametrize(
    ("dtype", "value"), [(torch.float64, 1e39), (torch.float32, 1e5)], ids=["fp64", "fp32"]
)
def test_checkpoint_finite_only_before_the_cast_to_the_parameter_dtype_is_refused(dtype, value):
    """torch's load casts floating state to the parameter's dtype: 1e39 is finite in fp64, inf
    in fp32 (and 1e5 in fp16)."""
    params, opt = _unfused()
    if dtype == torch.float32:  # fp16 parameters, an fp32 checkpoint
        for p in params.values():
            p.data = p.data.half()
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        st["momentum_buffer"] = st["momentum_buffer"].to(dtype)
    sd["state"][2]["momentum_buffer"][0, 0] = value
    with pytest.raises(ValueError, match=r"'b\.weight' holds inf/nan \(in the parameter's dtype"):
        opt.load_state_dict(sd)


def test_checkpoint_with_a_sparse_nan_entry_is_refused_at_load():
    _params, opt = _unfused()
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["momentum_buffer"] = torch.full((8, 5), float("nan")).to_sparse()
    with pytest.raises(ValueError, match=r"'a\.weight' holds inf/nan"):
        opt.load_state_dict(sd)


def _emb_and_w(fused):
    emb, w = nn.Parameter(torch.zeros(4, 2)), nn.Parameter(torch.randn(3))
    opt = LARS(torch.optim.SGD([("emb.bias", emb), ("w", w)], lr=0.5), fused=fused,
               lars_filter=lambda i: i.name == "w")  # fmt: skip
    w.grad = torch.randn(3)
    return emb, w, opt


@pytest.mark.parametrize("fused", [None, False])
def test_uncoalesced_sparse_gradient_whose_sum_overflows_skips_the_step(fused):
    emb, w, opt = _emb_and_w(fused)
    emb.grad = torch.sparse_coo_tensor(
        torch.tensor([[1, 1]]), torch.full((2, 2), 2.5e38), (4, 2), check_invariants=True
    )  # two finite entries for one row: their sum, which SGD applies, is inf
    before = (emb.detach().clone(), w.detach().clone())
    with pytest.warns(RuntimeWarning, match="inf/nan"):
        opt.step()
    assert bool(opt.found_inf)
    assert torch.equal(emb.detach(), before[0]) and torch.equal(w.detach(), before[1])


@pytest.mark.parametrize("fused", [None, False])
def test_sparse_gradient_whose_values_are_a_parameter_is_refused(fused):
    emb, _w, opt = _emb_and_w(fused)
    a = nn.Parameter(torch.randn(2, 2))
    opt.add_param_group({"params": [("a.bias", a)], "lr": 0.5})
    a.grad = torch.ones(2, 2)
    emb.grad = torch.sparse_coo_tensor(
        torch.tensor([[0, 1]]), a.detach(), (4, 2), check_invariants=True
    )
    before = a.detach().clone()
    with pytest.raises(ValueError, match=r"'a\.bias' and sparse gradient of parameter 'emb\.bias'"):
        opt.step()
    assert torch.equal(a.detach(), before)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "emu") if b in available_backends()])
def test_expanded_gradient_of_an_excluded_parameter_steps_on_every_backend(backend):
    """The gradient of a parameter LARS excludes is only read: a stride-0 one is fine (the
    staged copy of it is not written back), and the result is torch's."""
    results = []
    for be in (backend, "torch"):
        torch.manual_seed(0)
        w0, b, w2 = (nn.Parameter(torch.randn(4, 3)) for _ in range(3))
        opt = LARS(torch.optim.SGD([("l0.weight", w0), ("l1.bias", b), ("l2.weight", w2)],
                                   lr=0.1, momentum=0.9), fused=False, backend=be)  # fmt: skip
        w0.grad, w2.grad = torch.randn(4, 3), torch.randn(4, 3)
        b.grad = torch.full((1, 1), 0.5).expand(4, 3)
        opt.step()
        results.append([t.detach().clone() for t in (w0, b, w2)])
    for x, y in zip(*results, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fused", [None, False])
def test_a_backend_raising_mid_rewrite_leaves_every_gradient_as_it_was(fused, monkeypatch):
    params, opt = _stepped(False)
    from lars_npu._backends.cpu import CpuBackend

    def half_then_raise(self, weights, grads, *args, **kwargs):
        grads[0].mul_(3.0)
        raise RuntimeError("backend failed midway")

    monkeypatch.setattr(CpuBackend, "multi_lars_", half_then_raise)
    opt.fused = False
    before = snapshot(params, opt)
    with pytest.raises(RuntimeError, match="midway"):
        opt.step()
    assert_same(before, snapshot(params, opt))


def test_numpy_fused_step_takes_negative_bit_fp64_tensors_by_their_values():
    outs = []
    for lazy in (True, False):
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        opt = LARS(torch.optim.SGD([("w", w)], lr=0.1, momentum=0.9), backend="numpy")
        g = torch.randn(4, 3, dtype=torch.float64)
        w.grad = (-g)._neg_view() if lazy else g
        opt.step()
        outs.append(w.detach().clone())
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(
    ("fused", "how"),
    [(None, "float8"), (False, "float8"), (None, "meta"), (False, "meta"), (False, "inference")],
)
def test_unusable_momentum_buffers_are_refused_by_name(fused, how):
    """(An inference-mode buffer is refused where torch's ops would refuse to write it; the fused
    CPU kernel writes its memory like any other's, with the right values.)"""
    params, opt = _stepped(fused)
    buf = opt.state[params["b.weight"]]["momentum_buffer"]
    before = snapshot(params, opt)
    if how == "float8":
        new = buf.to(torch.float8_e4m3fn)
    elif how == "inference":
        with torch.inference_mode():
            new = buf.clone()
    else:
        new = torch.zeros_like(buf, device="meta")
    opt.state[params["b.weight"]]["momentum_buffer"] = new
    with pytest.raises((ValueError, TypeError), match=r"momentum_buffer of parameter 'b\.weight'"):
        opt.step()
    opt.state[params["b.weight"]]["momentum_buffer"] = buf
    assert_same(before, snapshot(params, opt))


@pytest.mark.parametrize("fused", [None, False])
def test_zero_tensor_gradient_is_refused_by_name(fused):
    params, opt = _stepped(fused)
    params["b.bias"].grad = torch._efficientzerotensor(params["b.bias"].shape)
    assert_refused(params, opt, r"gradient of parameter 'b\.bias' has no memory")
