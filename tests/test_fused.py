"""The fused LARS + momentum-SGD step: kernel vs reference, fused vs unfused, caching, fallbacks."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lars_npu import LARS, exclude_bias_and_norm, reference
from lars_npu._backends import Hyper, cpu, get_backend
from lars_npu._fused import FusedCall
from lars_npu.check import np64

from .conftest import BACKENDS, needs_native


def make_call(params, grads, bufs, first, adapt, wd, lr, mu, nesterov, hyper, fast=True):
    has_m = np.array([m != 0 for m in mu], dtype=np.uint8)
    return FusedCall(
        params=params,
        grads=grads,
        bufs=bufs,
        first=np.asarray(first, dtype=np.uint8),
        adapt=np.asarray(adapt, dtype=np.uint8),
        has_m=has_m,
        wd=np.where(np.asarray(adapt, dtype=bool), np.asarray(wd, dtype=np.float64), 0.0),
        lr=np.asarray(lr, dtype=np.float64),
        mu=np.asarray(mu, dtype=np.float64),
        nesterov=np.asarray(nesterov, dtype=np.uint8),
        hyper=hyper,
        checked=not fast,
        mixed_grad_dtypes=True,
    )


def ref_step(p, g, buf, first, adapt, wd, lr, mu, nesterov, hyper):
    w, m, _, lam = reference.lars_momentum_step(
        np64(p),
        np64(g),
        None if (buf is None or first) else np64(buf),
        lr=lr,
        weight_decay=wd,
        momentum=mu,
        nesterov=nesterov,
        lars=adapt,
        epsilon=hyper.epsilon,
        coefficient=hyper.coefficient,
        use_clip=hyper.use_clip,
        guard_zero_norm=hyper.guard_zero_norm,
    )
    return w, m, lam


RTOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
PAIRS = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float64, torch.float64),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
]


@needs_native
@given(
    sizes=st.lists(st.integers(0, 40000), min_size=1, max_size=8),
    pair=st.sampled_from(range(len(PAIRS))),
    clip=st.booleans(),
    nesterov=st.booleans(),
    budget=st.sampled_from([0, 64, 4096, 1 << 20]),
    seed=st.integers(0, 2**16),
)
def test_fused_kernel_matches_reference(sizes, pair, clip, nesterov, budget, seed):
    old_budget = cpu.CACHE_BUDGET_BYTES
    cpu.CACHE_BUDGET_BYTES = budget
    try:
        _fused_kernel_case(sizes, pair, clip, nesterov, seed)
    finally:
        cpu.CACHE_BUDGET_BYTES = old_budget


def _fused_kernel_case(sizes, pair, clip, nesterov, seed):
    wdt, gdt = PAIRS[pair]
    gen = torch.Generator().manual_seed(seed)
    n = len(sizes)
    params = [torch.randn(k, generator=gen).to(wdt) for k in sizes]
    grads = [(torch.randn(k, generator=gen) * 0.01).to(gdt) for k in sizes]
    mu = [0.9 if i % 3 else 0.0 for i in range(n)]
    first = [i % 2 == 0 for i in range(n)]
    bufs = [torch.randn(k, generator=gen).to(wdt) if mu[i] else None for i, k in enumerate(sizes)]
    adapt = [i % 4 != 3 for i in range(n)]
    wd = [1e-4 * (i + 1) for i in range(n)]
    lr = [0.1 if clip else 0.05 * (i + 1) for i in range(n)]
    hyper = Hyper(use_clip=clip)
    refs = [
        ref_step(
            params[i], grads[i], bufs[i], first[i], adapt[i], wd[i], lr[i], mu[i], nesterov, hyper
        )
        for i in range(n)
    ]
    w_old = [p.double().numpy().copy() for p in params]
    call = make_call(params, grads, bufs, first, adapt, wd, lr, mu, [nesterov] * n, hyper)
    res = get_backend("cpu").fused_sgd_(call)
    assert not bool(res.found_inf)
    # Tolerance: a few roundings of the storage dtype, relative to the size of the terms:
    # |w| for the new weight plus lr·2|m| (the buffer is rounded to the parameter's dtype before
    # torch, and so the kernel, reads it back for the update).
    tol = max(RTOL[gdt], RTOL[wdt])
    for i in range(n):
        w_ref, m_ref, lam = refs[i]
        assert res.trust_ratio[i].item() == pytest.approx(lam, rel=1e-12)
        m_mag = np.abs(m_ref) if m_ref is not None else 0.0
        scale = np.abs(w_old[i]) + lr[i] * 2 * (m_mag + np.abs(grads[i].double().numpy()))
        err = np.abs(params[i].double().numpy() - w_ref)
        assert np.all(err <= tol * scale + 1e-30), (i, float(np.max(err / (scale + 1e-30))))
        if mu[i]:
            np.testing.assert_allclose(bufs[i].double().numpy(), m_ref, rtol=tol, atol=tol * 1e-3)


@needs_native
def test_fused_same_bits_for_thread_count_and_cache_budget(monkeypatch):
    outs = []
    old = torch.get_num_threads()
    try:
        for threads, budget in [(1, 0), (2, 0), (2, 4096), (1, 1 << 30), (2, 100_000)]:
            torch.set_num_threads(threads)
            monkeypatch.setattr(cpu, "CACHE_BUDGET_BYTES", budget)
            gen = torch.Generator().manual_seed(7)
            sizes = [1 << 20, 3, 70_001, 64, 500_000]
            params = [torch.randn(k, generator=gen) for k in sizes]
            grads = [torch.randn(k, generator=gen) for k in sizes]
            bufs = [torch.randn(k, generator=gen) for k in sizes]
            call = make_call(
                params,
                grads,
                bufs,
                [0] * 5,
                [1, 1, 0, 1, 1],
                [1e-4] * 5,
                [0.1] * 5,
                [0.9] * 5,
                [0] * 5,
                Hyper(),
            )
            get_backend("cpu").fused_sgd_(call)
            outs.append(params + bufs)
    finally:
        torch.set_num_threads(old)
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            assert torch.equal(a, b)


@needs_native
def test_fused_non_finite_in_a_late_batch_writes_nothing(monkeypatch):
    monkeypatch.setattr(cpu, "CACHE_BUDGET_BYTES", 1024)  # many batches
    params = [torch.randn(1000) for _ in range(20)]
    grads = [torch.randn(1000) for _ in range(20)]
    bufs = [torch.randn(1000) for _ in range(20)]
    grads[-1][-1] = float("inf")
    before = [t.clone() for t in params + bufs]
    call = make_call(
        params,
        grads,
        bufs,
        [0] * 20,
        [1] * 20,
        [0.0] * 20,
        [0.1] * 20,
        [0.9] * 20,
        [0] * 20,
        Hyper(),
    )
    res = get_backend("cpu").fused_sgd_(call)
    assert bool(res.found_inf)
    for a, b in zip(before, params + bufs, strict=True):
        assert torch.equal(a, b)


# -- the optimizer: fused vs unfused ------------------------------------------------------------


class ConvNet(nn.Module):
    """A convolution (4-D weight) with BatchNorm, then a Linear layer: the fused step's cases
    beyond 2-D weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def batch(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + t)
    return torch.randn(16, 2, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)


def run(
    fused,
    steps=12,
    use_clip=False,
    scaler=False,
    nesterov=False,
    backend="auto",
    state=None,
    start=0,
    lars_filter=exclude_bias_and_norm,
):
    torch.manual_seed(0)
    model = ConvNet()
    groups = [
        {"params": [("conv.weight", model.conv.weight), ("fc.weight", model.fc.weight)]},
        {
            "params": [
                ("conv.bias", model.conv.bias),
                ("bn.weight", model.bn.weight),
                ("bn.bias", model.bn.bias),
                ("fc.bias", model.fc.bias),
            ],
            "lr": 0.05,
            "momentum": 0.0,
        },
    ]
    sgd = torch.optim.SGD(groups, lr=0.2, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    opt = LARS(sgd, use_clip=use_clip, lars_filter=lars_filter, backend=backend, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    gs = torch.amp.GradScaler("cpu", init_scale=2.0**6) if scaler else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    for t in range(start, steps):
        opt.zero_grad()
        x, y = batch(t)
        loss = nn.functional.cross_entropy(model(x), y)
        if gs is None:
            loss.backward()
            opt.step()
        else:
            gs.scale(loss).backward()
            gs.step(opt)
            gs.update()
        sched.step()
    snap = {
        "model": copy.deepcopy(model.state_dict()),
        "opt": copy.deepcopy(opt.state_dict()),
        "sched": sched.state_dict(),
    }
    return model, opt, snap


@pytest.mark.parametrize("use_clip", [False, True])
@pytest.mark.parametrize("scaler", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_and_unfused_agree_over_many_steps(backend, use_clip, scaler, nesterov):
    a, opt_a, _ = run(True, use_clip=use_clip, scaler=scaler, nesterov=nesterov, backend=backend)
    b, opt_b, _ = run(False, use_clip=use_clip, scaler=scaler, nesterov=nesterov, backend=backend)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    # same state layout: a buffer where the group has momentum, none where it has not
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert ("momentum_buffer" in sa) == ("momentum_buffer" in sb)
        if "momentum_buffer" in sa and sa["momentum_buffer"] is not None:
            torch.testing.assert_close(
                sa["momentum_buffer"], sb["momentum_buffer"], rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize(("first", "second"), [(True, False), (False, True)])
def test_checkpoint_resumes_on_the_other_path(first, second):
    full, _, _ = run(first, steps=10)
    _, _, snap = run(first, steps=5)
    resumed, _, _ = run(second, steps=10, state=snap, start=5)
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_fused_bitwise_resume():
    full, _, _ = run(True, steps=10)
    _, _, snap = run(True, steps=4)
    resumed, _, _ = run(True, steps=10, state=snap, start=4)
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("inner", "why"),
    [
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1), "dampening"),
        (lambda ps: torch.optim.RMSprop(ps, lr=0.1), "RMSprop"),
        (lambda ps: type("MySGD", (torch.optim.SGD,), {})(ps, lr=0.1), "MySGD"),
    ],
)
def test_fused_true_on_unsupported_inner_is_an_error(inner, why):
    model = nn.Linear(3, 2)
    # LARS warns when it is built around RMSprop (λ largely cancels there); the others are silent
    rmsprop = why == "RMSprop"
    with pytest.warns(UserWarning, match="largely cancels") if rmsprop else nullcontext():
        with pytest.raises(ValueError, match=why):
            LARS(inner(model.named_parameters()), fused=True)
        opt = LARS(inner(model.named_parameters()))  # fused=None: the unfused path, silently
    model(torch.randn(4, 3)).sum().backward()
    raw = model.weight.grad.clone()
    opt.step()
    assert not torch.equal(model.weight.grad, raw)  # the unfused path rewrote it


def test_group_setting_changed_later_switches_path():
    model = nn.Linear(3, 2)
    opt = LARS(torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    opt.param_groups[0]["dampening"] = 0.5
    model(torch.randn(4, 3)).sum().backward()
    raw = model.weight.grad.clone()
    opt.step()  # unfused now
    assert not torch.equal(model.weight.grad, raw)
    opt_t = LARS(torch.optim.SGD(model.named_parameters(), lr=0.1), fused=True)
    opt_t.param_groups[0]["maximize"] = True
    with pytest.raises(ValueError, match="maximize"):
        opt_t.step()


def test_sparse_gradients_fall_back_or_refuse():
    emb = nn.Embedding(10, 4, sparse=True)
    lin = nn.Linear(4, 2)
    params = [("emb.weight", emb.weight), ("fc.weight", lin.weight)]
    opt = LARS(torch.optim.SGD(params, lr=0.1), lars_filter=lambda x: "emb" not in x.name)
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    before = emb.weight.detach().clone()
    opt.step()  # fused=None falls back to the unfused path, which lets SGD take the sparse grad
    assert not torch.equal(before, emb.weight)
    opt_t = LARS(
        torch.optim.SGD(params, lr=0.1), lars_filter=lambda x: "emb" not in x.name, fused=True
    )
    with pytest.raises(ValueError, match="sparse"):
        opt_t.step()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_cache_follows_changes(set_to_none):
    """Gradients that come and go, a swapped parameter storage, a reloaded state: the cached
    plan is rebuilt and the step stays equal to the reference."""
    torch.manual_seed(0)
    a, b = nn.Linear(5, 4), nn.Linear(4, 3)
    named = [("a.weight", a.weight), ("a.bias", a.bias), ("b.weight", b.weight), ("b.bias", b.bias)]
    opt = LARS(torch.optim.SGD(named, lr=0.1, momentum=0.9, weight_decay=1e-4))
    mirror = {n: p.detach().clone() for n, p in named}
    bufs: dict[str, np.ndarray | None] = {n: None for n, _ in named}

    def step(use_b: bool) -> None:
        opt.zero_grad(set_to_none=set_to_none)
        x = torch.randn(2, 5)
        out = a(x).sum() + (b(a(x)).sum() if use_b else 0)
        out.backward()
        for n, p in named:
            if p.grad is None:  # set_to_none=False leaves zeros: a real (momentum-only) step
                continue
            w, m, _, _ = reference.lars_momentum_step(
                mirror[n].double().numpy(),
                p.grad.double().numpy(),
                bufs[n],
                lr=0.1,
                weight_decay=1e-4,
                momentum=0.9,
                lars="bias" not in n,
            )
            mirror[n], bufs[n] = torch.from_numpy(w).float(), m
        opt.step()
        for n, p in named:
            torch.testing.assert_close(p.detach(), mirror[n], rtol=1e-5, atol=1e-6, msg=n)

    step(True)
    step(False)  # b has no gradient (or a zero one): skipped, or a momentum-only step
    step(True)
    with torch.no_grad():
        a.weight.data = a.weight.data.clone()  # new storage behind the same Parameter
    step(True)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    step(True)


def test_momentum_zero_keeps_no_buffer_on_fused_path():
    model = nn.Linear(3, 2)
    opt = LARS(torch.optim.SGD(model.named_parameters(), lr=0.1), fused=True)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert all("momentum_buffer" not in opt.state.get(p, {}) for p in model.parameters())


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no native module")
def test_fused_step_is_one_native_call(monkeypatch):
    calls = []
    orig = cpu.CpuBackend.fused_sgd_

    def spy(self, call):
        calls.append(len(call.params))
        return orig(self, call)

    monkeypatch.setattr(cpu.CpuBackend, "fused_sgd_", spy)
    run(None, steps=3)
    assert calls == [6, 6, 6]


def test_step_without_any_gradient_is_a_no_op(backend):
    model = nn.Linear(3, 2)
    for fused in (True, False):
        opt = LARS(
            torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9),
            backend=backend,
            fused=fused,
        )
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert not bool(opt.found_inf) and opt.trust_ratios() == {}


def test_maximize_is_refused_clearly():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="maximize"):
        LARS(torch.optim.SGD(model.named_parameters(), lr=0.1, maximize=True))
    opt = LARS(torch.optim.SGD(model.named_parameters(), lr=0.1))
    opt.param_groups[0]["maximize"] = True
    model(torch.randn(2, 3)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="maximize"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# -- regressions from review: cache holes, buffer dtypes, pickling ------------------------------


def test_buffers_of_another_dtype_after_model_cast():
    m = nn.Linear(64, 32)
    opt = LARS(torch.optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9))
    ref = LARS(torch.optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9), fused=False)
    del ref
    m(torch.randn(4, 64)).sum().backward()
    opt.step()
    m.double()
    for _ in range(3):
        m.zero_grad()
        m(torch.randn(4, 64, dtype=torch.float64)).sum().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert opt.state[m.weight]["momentum_buffer"].shape == m.weight.shape


def test_parameter_swapped_to_a_larger_view_is_handled():
    base = torch.zeros(10)
    p = nn.Parameter(base[:5])
    opt = LARS(torch.optim.SGD([("w", p)], lr=1.0, momentum=0.9), lars_filter=lambda i: False)
    arena = torch.zeros(10)
    opt.state[p]["momentum_buffer"] = arena[:5]
    p.grad = torch.ones(5)
    opt.step()
    with torch.no_grad():
        p.data = base
    p.grad = torch.ones(10)
    with pytest.raises(ValueError, match="momentum_buffer"):
        opt.step()  # as torch SGD: the old buffer does not fit the parameter
    assert arena[5:].eq(0).all()


def test_transposed_parameter_storage_is_noticed():
    w = torch.arange(6.0).reshape(2, 3)
    p = nn.Parameter(w.clone())
    q = nn.Parameter(w.clone())
    opt_p = LARS(torch.optim.SGD([("w", p)], lr=1.0), lars_filter=lambda i: False)
    opt_q = LARS(torch.optim.SGD([("w", q)], lr=1.0), lars_filter=lambda i: False, fused=False)
    for o, t in ((opt_p, p), (opt_q, q)):
        t.grad = torch.ones_like(t)
        o.step()
        with torch.no_grad():
            t.data = t.data.t()
        t.grad = torch.arange(6.0).reshape(3, 2)
        o.step()
    assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("change", ["clear", "replace_buffer", "replace_dict"])
def test_user_edits_of_state_are_followed(change):
    def build(fused):
        torch.manual_seed(0)
        m = nn.Linear(4, 3)
        return m, LARS(torch.optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9), fused=fused)

    results = []
    for fused in (True, False):
        m, opt = build(fused)
        for t in range(4):
            if t == 2:
                if change == "clear":
                    opt.state.clear()
                elif change == "replace_buffer":
                    for p in m.parameters():
                        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
                else:
                    for p in m.parameters():
                        opt.state[p] = {"momentum_buffer": torch.ones_like(p)}
            m.zero_grad()
            m(torch.full((2, 4), float(t + 1))).sum().backward()
            opt.step()
        results.append([p.detach().clone() for p in m.parameters()])
        assert len(opt.state) == 2
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_in_place_edits_of_groups_are_followed():
    def run_one(fused):
        torch.manual_seed(0)
        a, b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4, 4))
        opt = LARS(torch.optim.SGD([("a", a)], lr=0.1, momentum=0.9), coefficient=1.0, fused=fused)
        a.grad = torch.ones(4, 4)
        opt.step()
        opt.param_groups[0]["params"][0] = b
        b.grad = torch.ones(4, 4)
        opt.step()
        opt.param_groups[0]["lars_mask"][0] = False
        b.grad = torch.ones(4, 4)  # the unfused path left g' in .grad: give both the raw one
        opt.step()
        return a.detach().clone(), b.detach().clone()

    for x, y in zip(run_one(True), run_one(False), strict=True):
        torch.testing.assert_close(x, y)


def test_pickle_and_deepcopy_after_a_fused_step():
    import pickle

    m = nn.Linear(3, 2)
    opt = LARS(torch.optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9))
    m(torch.randn(2, 3)).sum().backward()
    opt.step()
    copy.deepcopy(opt)
    opt2 = pickle.loads(pickle.dumps(opt))
    assert opt2.coefficient == opt.coefficient


def test_nan_trust_ratio_stays_nan_with_clip(backend):
    p = nn.Parameter(torch.tensor([float("nan"), 1.0]))
    opt = LARS(torch.optim.SGD([("w", p)], lr=0.1), use_clip=True, backend=backend, fused=False)
    p.grad = torch.tensor([0.5, 0.5])
    opt.step()
    assert np.isnan(opt.trust_ratios()["w"])


class _OnDevice(torch.Tensor):
    """A found_inf flag that lives on an accelerator (as the npu backend returns it): reading it
    on the host is the wait the fused step must not do; it counts the reads."""

    reads = 0

    @property
    def device(self):  # type: ignore[override]
        return torch.device("meta")

    def __bool__(self) -> bool:
        type(self).reads += 1
        return bool(torch.Tensor(self).as_subclass(torch.Tensor).item())


@pytest.mark.parametrize("skipped", [False, True])
def test_fused_step_does_not_read_a_device_side_found_inf(monkeypatch, skipped):
    """A skip decided on the device (npu), the optimizer's side: after a fused step whose backend
    decided the skip on the device, LARS neither waits for the flag nor drops new momentum
    buffers; the flag is read when the user reads opt.found_inf (and the skip warning comes
    then)."""
    from lars_npu._backends import MultiResult
    from lars_npu._backends import cpu as cpu_mod

    real = cpu_mod.CpuBackend.fused_sgd_

    def on_device(self, call):
        res = real(self, call)
        return MultiResult(res.found_inf.as_subclass(_OnDevice), res.trust_ratio)

    monkeypatch.setattr(cpu_mod.CpuBackend, "fused_sgd_", on_device)
    _OnDevice.reads = 0
    p = nn.Parameter(torch.randn(4, 3))
    opt = LARS(torch.optim.SGD([("w", p)], lr=0.1, momentum=0.9), fused=True)
    p.grad = torch.randn(4, 3)
    if skipped:
        p.grad[0, 0] = float("inf")
    before = p.detach().clone()
    opt.step()
    assert _OnDevice.reads == 0  # no host read during the step
    assert "momentum_buffer" in opt.state[p]  # zeros if skipped: the same as no buffer yet
    if skipped:
        assert torch.equal(p, before) and not opt.state[p]["momentum_buffer"].any()
        with pytest.warns(RuntimeWarning, match="inf/nan"):
            assert bool(opt.found_inf)
    else:
        assert not bool(opt.found_inf)
    assert _OnDevice.reads >= 1
    # a skipped first step then a good one equals one good first step (m = 0·μ + g' = g')
    p.grad = torch.ones(4, 3)
    q = nn.Parameter(before.clone())
    ref = LARS(torch.optim.SGD([("w", q)], lr=0.1, momentum=0.9), fused=False)
    q.grad = torch.ones(4, 3)
    if skipped:
        opt.step()
        ref.step()
        torch.testing.assert_close(p, q)
