"""lars_npu.LARS as a user uses it: wrapper semantics, training vs the reference, checkpoints,
GradScaler, schedulers, hooks, and the guarantees of a refused or skipped step."""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lars_npu
from lars_npu import LARS, reference

from ._problem import Net
from .conftest import BACKENDS


def data(seed: int = 0, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def make(seed: int = 0, **sgd) -> tuple[Net, torch.optim.SGD]:
    torch.manual_seed(seed)
    model = Net()
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-4) | sgd
    return model, torch.optim.SGD(model.named_parameters(), **kw)


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    x, y = data(step)
    return nn.functional.cross_entropy(model(x), y)


def warmup(step: int) -> float:
    return min(1.0, (step + 1) / 3)


@pytest.fixture(params=[False, True], ids=["unfused", "fused"])
def fused(request: pytest.FixtureRequest) -> bool:
    return request.param


# -- construction and validation ----------------------------------------------------------------


def test_takes_over_weight_decay():
    _model, sgd = make(weight_decay=5e-5)
    opt = LARS(sgd)
    g = opt.param_groups[0]
    # one source of truth: the group's own weight_decay stays (LARS zeroes it only while it
    # steps the inner optimizer)
    assert g["weight_decay"] == 5e-5 and "lars_weight_decay" not in g
    assert opt.param_groups is sgd.param_groups and opt.state is sgd.state
    names = g["param_names"]
    mask = dict(zip(names, g["lars_mask"], strict=False))
    assert mask == {
        "fc1.weight": True,
        "fc1.bias": False,
        "LayerNorm.weight": False,
        "LayerNorm.bias": False,
        "fc2.weight": True,
        "fc2.bias": False,
    }


def test_exclude_bias_and_norm_filter_catches_torch_norm_names():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = LARS(
        torch.optim.SGD(model.named_parameters(), lr=0.1),
        lars_filter=lars_npu.exclude_bias_and_norm,
    )
    names = opt.param_groups[0]["param_names"]
    assert dict(zip(names, opt.param_groups[0]["lars_mask"], strict=False)) == {
        "0.weight": True,
        "0.bias": False,
        "1.weight": False,
        "1.bias": False,
    }
    # MindSpore's default misses BatchNorm's "1.weight"
    opt2 = LARS(torch.optim.SGD(model.named_parameters(), lr=0.1))
    assert dict(zip(names, opt2.param_groups[0]["lars_mask"], strict=False))["1.weight"] is True


def test_filter_sees_param_info():
    seen = []

    def f(info: lars_npu.ParamInfo) -> bool:
        seen.append((info.name, tuple(info.shape), info.ndim, info.dtype))
        return info.ndim == 2

    _model, sgd = make()
    LARS(sgd, lars_filter=f)
    assert ("fc1.weight", (16, 6), 2, torch.float32) in seen
    assert len(seen) == 6  # evaluated once per parameter


def test_missing_names_warn_once_and_default_adapts_everything():
    model = Net()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="named_parameters"):
        opt = LARS(sgd)
    assert all(opt.param_groups[0]["lars_mask"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))]})  # no second warning
        LARS(
            torch.optim.SGD(Net().parameters(), lr=0.1), lars_filter=lars_npu.exclude_bias_and_norm
        )  # needs no names: no warning


@pytest.mark.parametrize(
    "cls",
    [torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam],
)
def test_refuses_adam_family(cls):
    with pytest.raises(TypeError, match="LARS can not be used with"):
        LARS(cls(Net().parameters()))


def test_refuses_lamb_by_name_and_accepts_others():
    class MyLamb(torch.optim.SGD):
        pass

    with pytest.raises(TypeError, match="MyLamb"):
        LARS(MyLamb(Net().parameters(), lr=0.1))
    for cls in (torch.optim.RMSprop, torch.optim.Adagrad):  # accepted as given, with a warning
        with pytest.warns(UserWarning, match=f"LARS around {cls.__name__}.*largely cancels"):
            LARS(cls(Net().named_parameters(), lr=0.1))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(epsilon=0.0), ValueError, "epsilon"),
        (dict(epsilon=-1e-5), ValueError, "epsilon"),
        (dict(epsilon=float("nan")), ValueError, "epsilon"),
        (dict(coefficient=0.0), ValueError, "coefficient"),
        (dict(coefficient=float("inf")), ValueError, "coefficient"),
        (dict(coefficient="0.1"), TypeError, "coefficient"),
        (dict(use_clip=1), TypeError, "use_clip"),
        (dict(guard_zero_norm="yes"), TypeError, "guard_zero_norm"),
        (dict(lars_filter=True), TypeError, "lars_filter"),
        (dict(backend="tpu"), ValueError, "tpu"),
        (dict(backend=3), TypeError, "backend"),
        (dict(fused="yes"), TypeError, "fused"),
    ],
)
def test_constructor_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LARS(make()[1], **kwargs)


def test_not_an_optimizer():
    with pytest.raises(TypeError, match="optimizer"):
        LARS([torch.ones(1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="already a LARS"):
        LARS(LARS(make()[1]))


# -- training against the reference -------------------------------------------------------------


def reference_run(steps, use_clip, nesterov=False, seed=0, guard=False, wd=1e-4, mom=0.9):
    """The same training loop with the NumPy reference doing the whole optimizer step."""
    model, _ = make(seed)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    bufs: dict[str, np.ndarray | None] = {n: None for n in names}
    for t in range(steps):
        lr = 0.1 * warmup(t)
        model.zero_grad()
        loss_of(model, t).backward()
        with torch.no_grad():
            for n in names:
                p = params[n]
                adapt = "LayerNorm" not in n and "bias" not in n
                w, m, _, _ = reference.lars_momentum_step(
                    p.detach().double().numpy(),
                    p.grad.double().numpy(),
                    bufs[n],
                    lr=lr,
                    weight_decay=wd,
                    momentum=mom,
                    nesterov=nesterov,
                    lars=adapt,
                    use_clip=use_clip,
                    guard_zero_norm=guard,
                )
                bufs[n] = m
                p.copy_(torch.from_numpy(w))
    return model


def lars_run(
    steps,
    use_clip,
    backend="auto",
    nesterov=False,
    seed=0,
    guard=False,
    wd=1e-4,
    mom=0.9,
    fused=None,
):
    model, sgd = make(seed, nesterov=nesterov, weight_decay=wd, momentum=mom)
    opt = LARS(sgd, use_clip=use_clip, guard_zero_norm=guard, backend=backend, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    for t in range(steps):
        opt.zero_grad()
        loss_of(model, t).backward()
        opt.step()
        sched.step()
    return model, opt


@pytest.mark.parametrize("use_clip", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_training_matches_reference(backend, use_clip, nesterov, fused):
    steps = 8
    ref = reference_run(steps, use_clip, nesterov)
    got, opt = lars_run(steps, use_clip, backend, nesterov, fused=fused)
    for (n, p), (_, q) in zip(got.named_parameters(), ref.named_parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    assert not bool(opt.found_inf)
    lam = opt.trust_ratios()
    assert set(lam) == {"fc1.weight", "fc2.weight"}
    assert all(0 < v < math.inf for v in lam.values())


def test_training_matches_reference_momentum_zero_and_guard(backend, fused):
    ref = reference_run(5, True, guard=True, mom=0.0, wd=0.0)
    got, opt = lars_run(5, True, backend, guard=True, mom=0.0, wd=0.0, fused=fused)
    for (n, p), (_, q) in zip(got.named_parameters(), ref.named_parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    assert all(
        "momentum_buffer" not in s or s["momentum_buffer"] is None for s in opt.state.values()
    )


def test_loss_decreases():
    model, sgd = make(lr=0.5)
    opt = LARS(sgd, coefficient=0.02)
    x, y = data(0, 128)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_fused_path_leaves_raw_grad():
    model, sgd = make()
    opt = LARS(sgd)  # fused by default for plain SGD
    loss_of(model, 0).backward()
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, raw[n])
    assert all("momentum_buffer" in opt.state[p] for p in model.parameters())


def test_unfused_path_leaves_rewritten_grad():
    model, sgd = make()
    opt = LARS(sgd, fused=False)
    loss_of(model, 0).backward()
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    w_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        if "bias" in n or "LayerNorm" in n:
            assert torch.equal(p.grad, raw[n])  # no LARS, no decay
        else:
            w = w_before[n].double().numpy()
            g = raw[n].double().numpy()
            expect = reference.lars_update(w, g, (w * w).sum(), (g * g).sum(), 1e-4, 0.1)
            np.testing.assert_allclose(p.grad.double().numpy(), expect, rtol=1e-5, atol=1e-9)


def test_closure_and_hooks():
    model, sgd = make()
    opt = LARS(sgd, fused=False)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    sgd.register_step_post_hook(lambda o, a, k: calls.append("inner-post"))

    def closure():
        opt.zero_grad()
        loss = loss_of(model, 0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor)
    assert calls == ["pre", "inner-post", "post"]
    opt.step(closure)
    assert calls.count("pre") == 2


def test_zero_grad_and_add_param_group():
    model, sgd = make()
    opt = LARS(sgd)
    loss_of(model, 0).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    extra = nn.Linear(3, 3)
    opt.add_param_group(
        {"params": list(extra.named_parameters()), "lr": 0.05, "weight_decay": 1e-3}
    )
    g = opt.param_groups[-1]
    assert g["weight_decay"] == 1e-3 and "lars_weight_decay" not in g
    assert g["lars_mask"] == [True, False]
    # a group added to the inner optimizer directly is taken over at the next step
    more = nn.Linear(2, 2)
    sgd.add_param_group({"params": list(more.named_parameters()), "weight_decay": 2e-3})
    (
        model(torch.randn(2, 6)).sum()
        + extra(torch.randn(1, 3)).sum()
        + more(torch.randn(1, 2)).sum()
    ).backward()
    opt.step()
    assert sgd.param_groups[-1]["weight_decay"] == 2e-3
    assert "lars_mask" in sgd.param_groups[-1]


def test_weight_decay_changed_later_is_taken_over_again():
    model, sgd = make()
    opt = LARS(sgd)
    opt.param_groups[0]["weight_decay"] = 3e-3
    loss_of(model, 0).backward()
    opt.step()
    assert opt.param_groups[0]["weight_decay"] == 3e-3  # put back after the inner step


# -- checkpoints ---------------------------------------------------------------------------------


def test_state_dict_round_trip_and_bitwise_resume(tmp_path, fused):
    def train(opt, sched, model, start, stop):
        for t in range(start, stop):
            opt.zero_grad()
            loss_of(model, t).backward()
            opt.step()
            sched.step()

    model_a, sgd_a = make()
    opt_a = LARS(sgd_a, use_clip=True, fused=fused)
    sched_a = torch.optim.lr_scheduler.LambdaLR(opt_a, warmup)
    train(opt_a, sched_a, model_a, 0, 10)

    model_b, sgd_b = make()
    opt_b = LARS(sgd_b, use_clip=True, fused=fused)
    sched_b = torch.optim.lr_scheduler.LambdaLR(opt_b, warmup)
    train(opt_b, sched_b, model_b, 0, 4)
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"model": model_b.state_dict(), "opt": opt_b.state_dict(), "sched": sched_b.state_dict()},
        path,
    )

    ck = torch.load(path, weights_only=True)
    assert ck["opt"]["lars"] == {
        "epsilon": 1e-5,
        "coefficient": 1e-3,
        "use_clip": True,
        "guard_zero_norm": False,
    }
    model_c, sgd_c = make(seed=123)
    opt_c = LARS(sgd_c, use_clip=False, coefficient=0.5, fused=fused)  # checkpoint's values win
    sched_c = torch.optim.lr_scheduler.LambdaLR(opt_c, warmup)
    model_c.load_state_dict(ck["model"])
    opt_c.load_state_dict(ck["opt"])
    sched_c.load_state_dict(ck["sched"])
    assert opt_c.use_clip is True and opt_c.coefficient == 1e-3
    train(opt_c, sched_c, model_c, 4, 10)
    for p, q in zip(model_a.parameters(), model_c.parameters(), strict=False):
        assert torch.equal(p, q)


def test_state_dict_holds_no_functions():
    def my_filter(x):
        return "fc1" in x.name

    model, sgd = make()
    opt = LARS(sgd, lars_filter=my_filter)
    loss_of(model, 0).backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert sd["param_groups"][0]["lars_mask"] == [True, True, False, False, False, False]
    # the stored filter result wins over a new optimizer's filter
    _model2, sgd2 = make()
    opt2 = LARS(sgd2)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lars_mask"] == [True, True, False, False, False, False]


def test_plain_inner_checkpoint_loads_and_is_taken_over():
    model, sgd = make(weight_decay=5e-4)
    loss_of(model, 0).backward()
    sgd.step()
    sd = copy.deepcopy(sgd.state_dict())
    _model2, sgd2 = make(weight_decay=0.0)
    opt = LARS(sgd2)
    opt.load_state_dict(sd)
    g = opt.param_groups[0]
    assert g["weight_decay"] == 5e-4 and "lars_weight_decay" not in g
    assert "momentum_buffer" in opt.state[g["params"][0]]


def test_bad_checkpoint_leaves_optimizer_unchanged():
    _model, sgd = make()
    opt = LARS(sgd)
    sd = opt.state_dict()
    sd["lars"] = dict(sd["lars"], epsilon=-1.0)
    before = copy.deepcopy(opt.param_groups[0]["lars_mask"])
    with pytest.raises(ValueError, match="epsilon"):
        opt.load_state_dict(sd)
    assert opt.epsilon == 1e-5 and opt.param_groups[0]["lars_mask"] == before


# -- GradScaler, non-finite gradients, refused steps -----------------------------------------------


def snapshot(model, opt):
    return (
        [p.detach().clone() for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [{k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()],
        copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]),
    )


def assert_same(a, b):
    for x, y in zip(a[0], b[0], strict=False):
        assert torch.equal(x, y)
    for x, y in zip(a[1], b[1], strict=False):
        assert (x is None and y is None) or torch.allclose(x, y, equal_nan=True)
    for x, y in zip(a[2], b[2], strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k])
    assert a[3] == b[3]


def test_grad_scaler_unscales_and_skips_inf(fused):
    model, sgd = make()
    opt = LARS(sgd, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(loss_of(model, 0)).backward()
    scaler.step(opt)
    scaler.update()
    assert not bool(opt.found_inf)
    # an overflowing step: GradScaler's own skip comes first, LARS is never called
    opt.zero_grad()
    scaler.scale(loss_of(model, 1)).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    before = snapshot(model, opt)
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale
    assert all(torch.equal(x, y) for x, y in zip(before[0], model.parameters(), strict=True))


def test_grad_scaler_matches_unscaled_training(fused):
    model_a, sgd_a = make()
    opt_a = LARS(sgd_a, fused=fused)
    model_b, sgd_b = make()
    opt_b = LARS(sgd_b, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for t in range(4):
        opt_a.zero_grad()
        loss_of(model_a, t).backward()
        opt_a.step()
        opt_b.zero_grad()
        scaler.scale(loss_of(model_b, t)).backward()
        scaler.unscale_(opt_b)
        scaler.step(opt_b)
        scaler.update()
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_skips_step(backend, bad, fused):
    model, sgd = make()
    opt = LARS(sgd, backend=backend, fused=fused)
    loss_of(model, 0).backward()
    opt.step()  # momentum buffers exist now
    opt.zero_grad()
    loss_of(model, 1).backward()
    model.fc2.bias.grad[0] = bad  # even on a parameter LARS does not adapt
    before = snapshot(model, opt)
    with pytest.warns(RuntimeWarning, match="inf/nan"):
        opt.step()
    assert bool(opt.found_inf) and opt.found_inf.dim() == 0
    assert_same(before, snapshot(model, opt))
    assert all(math.isnan(v) for v in opt.trust_ratios().values())
    model.fc2.bias.grad[0] = 0.0
    opt.step()
    assert not bool(opt.found_inf)


def test_refused_step_writes_nothing(fused):
    model, sgd = make()
    opt = LARS(sgd, fused=fused)
    loss_of(model, 0).backward()
    opt.step()
    loss_of(model, 1).backward()
    # a bad lr on the second group, after the first group's params
    extra = nn.Linear(2, 2)
    opt.add_param_group({"params": list(extra.named_parameters()), "lr": 0.1})
    extra(torch.randn(1, 2)).sum().backward()
    opt.param_groups[1]["lr"] = float("nan")
    opt.param_groups[0]["weight_decay"] = 1e-2  # a pending take-over must not be committed
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\]"):
        opt.step()
    assert_same(before, snapshot(model, opt))
    opt.param_groups[1]["lr"] = -1.0
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert_same(before, snapshot(model, opt))


def test_mismatched_gradient_is_refused_before_writing(fused):
    model, sgd = make()
    opt = LARS(sgd, fused=fused)
    loss_of(model, 0).backward()
    # torch checks assignments to .grad, but .data swaps bypass it: LARS must still refuse
    model.fc2.weight.grad.data = torch.zeros(5)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"fc2\.weight"):
        opt.step()
    assert_same(before, snapshot(model, opt))


def test_sparse_gradients():
    emb = nn.Embedding(10, 4, sparse=True)
    lin = nn.Linear(4, 2)
    params = [("emb.weight", emb.weight), ("fc.weight", lin.weight), ("fc.bias", lin.bias)]
    opt = LARS(torch.optim.SGD(params, lr=0.1))
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    assert emb.weight.grad.is_sparse
    before = [p.detach().clone() for _, p in params]
    with pytest.raises(ValueError, match=r"emb\.weight.*sparse"):
        opt.step()
    assert all(torch.equal(b, p) for b, (_, p) in zip(before, params, strict=False))
    # excluded from LARS, the sparse gradient goes to the inner optimizer untouched
    opt2 = LARS(torch.optim.SGD(params, lr=0.1), lars_filter=lambda x: "emb" not in x.name)
    opt2.step()
    assert not torch.equal(before[0], emb.weight)


def test_non_contiguous_parameters_train(backend, fused):
    base = torch.randn(8, 6)
    start = base.t().clone()
    p = nn.Parameter(base.t())  # a non-contiguous leaf
    assert not p.is_contiguous()
    q = nn.Parameter(base.t().contiguous())
    opt_p = LARS(torch.optim.SGD([("w", p)], lr=0.1, momentum=0.9), backend=backend, fused=fused)
    opt_q = LARS(torch.optim.SGD([("w", q)], lr=0.1, momentum=0.9), backend=backend, fused=fused)
    x = torch.randn(3, 6)
    for _ in range(3):
        for opt, w in ((opt_p, p), (opt_q, q)):
            opt.zero_grad()
            (x @ w).square().sum().backward()
            opt.step()
    torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=0)
    assert not torch.equal(p.detach(), start)


def test_use_clip_with_zero_lr_is_legal(fused):
    model, sgd = make(lr=0.0)
    opt = LARS(sgd, use_clip=True, fused=fused)
    loss_of(model, 0).backward()
    w = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(math.isfinite(v) and v == 1.0 for v in opt.trust_ratios().values())
    # lr 0: nothing moves
    assert all(torch.equal(a, b) for a, b in zip(w, model.parameters(), strict=True))


@pytest.mark.skipif(len(BACKENDS) < 2, reason="one backend only")
def test_env_var_selects_backend_at_call_time(monkeypatch):
    seen = []
    from lars_npu._backends import numpy_

    orig = numpy_.NumpyBackend.multi_lars_

    def spy(self, *a, **k):
        seen.append("numpy")
        return orig(self, *a, **k)

    monkeypatch.setattr(numpy_.NumpyBackend, "multi_lars_", spy)
    model, sgd = make()
    opt = LARS(sgd, fused=False)
    loss_of(model, 0).backward()
    opt.step()
    assert seen == []
    monkeypatch.setenv("LARS_NPU_BACKEND", "numpy")
    opt.step()
    assert seen == ["numpy"]
    monkeypatch.setenv("LARS_NPU_BACKEND", "npu")
    with pytest.raises((RuntimeError, ValueError), match="npu"):
        opt.step()


def test_repr_and_pickle():
    _model, sgd = make()
    opt = LARS(sgd)
    assert "LARS(epsilon=1e-05" in repr(opt) and "SGD" in repr(opt)
    opt2 = copy.deepcopy(opt)
    assert opt2.coefficient == opt.coefficient


def test_load_state_dict_validates_before_changing_anything():
    _, sgd = make()
    opt = LARS(sgd)
    extra = nn.Linear(2, 2)
    opt.add_param_group({"params": list(extra.named_parameters()), "lr": 0.05})
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][1]["weight_decay"] = float("nan")
    bad["param_groups"][0]["lr"] = 123.0
    bad["lars"]["epsilon"] = 0.5
    with pytest.raises(ValueError, match="weight_decay"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.epsilon == 1e-5
    assert opt.param_groups[1]["weight_decay"] == 1e-4


@pytest.mark.parametrize(
    ("group", "match"),
    [
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"weight_decay": float("inf")}, "weight_decay"),
        ({"weight_decay": -1e-4}, "weight_decay"),
    ],
)
def test_bad_group_values_at_construction(group, match):
    model = Net()
    sgd = torch.optim.SGD(model.named_parameters(), lr=0.1)
    sgd.param_groups[0].update(group)
    with pytest.raises(ValueError, match=match):
        LARS(sgd)


@pytest.mark.parametrize(
    ("key", "value", "fused"),
    [
        ("momentum", float("nan"), True),  # unfused: momentum is the inner SGD's, as in torch
        ("lr", float("inf"), True),
        ("lr", float("inf"), False),
        ("lr", -0.1, True),
    ],
)
def test_bad_group_values_at_step_write_nothing(key, value, fused):
    model, sgd = make()
    opt = LARS(sgd, fused=fused)
    loss_of(model, 0).backward()
    opt.step()
    loss_of(model, 1).backward()
    opt.param_groups[0][key] = value
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=key):
        opt.step()
    assert_same(before, snapshot(model, opt))


@pytest.mark.parametrize("bad_dtype", [torch.float64, torch.int32, torch.bfloat16])
def test_gradient_dtype_mismatch_names_the_parameter(fused, bad_dtype):
    model, sgd = make()
    opt = LARS(sgd, fused=fused)
    loss_of(model, 0).backward()
    opt.step()
    loss_of(model, 1).backward()
    g = model.fc1.weight.grad
    model.fc1.weight.grad.data = g.to(bad_dtype) if bad_dtype != torch.int32 else g.int()
    before = snapshot(model, opt)
    with pytest.raises(TypeError, match=r"fc1\.weight"):
        opt.step()
    assert_same(before, snapshot(model, opt))
