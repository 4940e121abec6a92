"""Every backend against the NumPy reference: backend × dtype × shape × hyper-parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lars_npu
from lars_npu import reference
from lars_npu._backends import Hyper, get_backend
from lars_npu.check import np64
from lars_npu.functional import lars_

from .conftest import BACKENDS, DTYPES, assert_matches_reference

SHAPES = [(), (1,), (3,), (7,), (8,), (9,), (2, 3), (31, 33), (16384,), (16385,), (1 << 20 | 5,)]


def make(shape, dtype, seed=0, gscale=0.01):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    g = (torch.randn(shape, generator=gen, dtype=torch.float64) * gscale).to(dtype)
    return w, g


def ref_update(w, g, wd, lr, hyper: Hyper):
    wn, gn = np64(w), np64(g)
    w_s, g_s = float(np.sum(wn * wn)), float(np.sum(gn * gn))
    lam = reference.trust_ratio(
        w_s,
        g_s,
        wd,
        lr,
        epsilon=hyper.epsilon,
        coefficient=hyper.coefficient,
        use_clip=hyper.use_clip,
        guard_zero_norm=hyper.guard_zero_norm,
    )
    out = lam * (gn + wd * wn)
    return np.asarray(out), np.asarray(abs(lam) * (np.abs(gn) + wd * np.abs(wn))), w_s, g_s


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_square_sum_all(backend, dtype, shape):
    w, g = make(shape, dtype)
    w_s, g_s = lars_npu.square_sum_all(w, g, backend=backend)
    assert w_s.dtype == torch.float32 and w_s.dim() == 0 and g_s.dim() == 0
    wn, gn = np64(w), np64(g)
    np.testing.assert_allclose(
        [w_s.item(), g_s.item()], [np.sum(wn * wn), np.sum(gn * gn)], rtol=1e-5
    )


HYPERS = [
    (0.0, 1.0, Hyper()),
    (5e-4, 0.1, Hyper()),
    (5e-4, 0.1, Hyper(use_clip=True)),
    (1e-4, 0.0, Hyper(use_clip=True)),
    (1e-4, 3.0, Hyper(epsilon=1e-3, coefficient=0.02, guard_zero_norm=True)),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("hp", range(len(HYPERS)))
def test_lars_update_and_multi(backend, dtype, shape, hp):
    wd, lr, hyper = HYPERS[hp]
    w, g = make(shape, dtype, seed=hp)
    ref, scale, w_s, g_s = ref_update(w, g, wd, lr, hyper)
    out = lars_npu.lars_update(
        w,
        g,
        w_s,
        g_s,
        wd,
        lr,
        epsilon=hyper.epsilon,
        coefficient=hyper.coefficient,
        use_clip=hyper.use_clip,
        guard_zero_norm=hyper.guard_zero_norm,
        backend=backend,
    )
    assert out.dtype == dtype and out.shape == g.shape
    assert_matches_reference(out, ref, scale, dtype)
    g2 = g.clone()
    res = lars_([w], [g2], adapt=[True], weight_decays=[wd], lrs=[lr], hyper=hyper, backend=backend)
    assert not bool(res.found_inf)
    assert_matches_reference(g2, ref, scale, dtype)


def test_golden_example_every_backend(backend):
    w = torch.tensor([[0.5, 0.8, 0.2], [0.6, 0.4, 0.2]])
    g = torch.tensor([[0.4, 0.4, 0.5], [0.2, 0.4, 0.3]])
    w_s, g_s = lars_npu.square_sum_all(w, g, backend=backend)
    out = lars_npu.lars_update(
        w, g, w_s, g_s, 0.0, 1.0, epsilon=1e-5, coefficient=1e-3, backend=backend
    )
    golden = torch.tensor([[0.0005265, 0.0005265, 0.00065813], [0.00026325, 0.0005265, 0.00039488]])
    torch.testing.assert_close(out, golden, rtol=2e-5, atol=0)


def test_zero_weight_and_zero_gradient(backend, dtype):
    w, g = make((4, 5), dtype)
    z = torch.zeros_like(w)
    out = lars_npu.lars_update(
        z, g, 0.0, float(np64(g).__pow__(2).sum()), 1e-3, 0.1, backend=backend
    )
    assert torch.count_nonzero(out) == 0  # λ = 0: a zero weight tensor never moves
    wd = 1e-2
    w_s = float((np64(w) ** 2).sum())
    out = lars_npu.lars_update(w, z, w_s, 0.0, wd, 0.1, backend=backend)
    lam = reference.trust_ratio(w_s, 0.0, wd, 0.1)
    ref = lam * wd * np64(w)
    assert_matches_reference(out, ref, np.abs(ref), dtype)


def test_multi_tensor_mixed_list(backend):
    """Many tensors of mixed sizes and dtypes, adapted or not, in one call."""
    gen = torch.Generator().manual_seed(3)
    sizes = [1, 5, 64, 1000, 16384, 40000, 3, 0]
    ws, gs, adapt, wds, lrs = [], [], [], [], []
    for i, n in enumerate(sizes):
        dt = DTYPES[i % len(DTYPES)]
        ws.append(torch.randn(n, generator=gen).to(dt))
        gs.append((torch.randn(n, generator=gen) * 0.1).to(dt))
        adapt.append(i % 3 != 1)
        wds.append(1e-4 * i)
        lrs.append(0.05 * (i + 1))
    hyper = Hyper(use_clip=True)
    before = [g.clone() for g in gs]
    refs = [ref_update(w, g, wd, lr, hyper) for w, g, wd, lr in zip(ws, gs, wds, lrs, strict=False)]
    res = lars_(ws, gs, adapt=adapt, weight_decays=wds, lrs=lrs, hyper=hyper, backend=backend)
    assert not bool(res.found_inf)
    for i, (g, b) in enumerate(zip(gs, before, strict=False)):
        if adapt[i]:
            assert_matches_reference(g, refs[i][0], refs[i][1], g.dtype)
        else:
            assert torch.equal(g, b), "a filtered-out gradient must stay untouched"
            assert res.trust_ratio[i].item() == 1.0


def test_non_finite_gradient_writes_nothing(backend):
    ws = [torch.randn(100), torch.randn(10)]
    gs = [torch.randn(100), torch.randn(10)]
    gs[1][3] = float("nan")
    before = [g.clone() for g in gs]
    res = lars_(
        ws,
        gs,
        adapt=[True, False],
        weight_decays=[0.0, 0.0],
        lrs=[0.1, 0.1],
        hyper=Hyper(),
        backend=backend,
    )
    assert bool(res.found_inf)
    for g, b in zip(gs, before, strict=False):
        assert torch.equal(
            g,
            b,
        ) or torch.allclose(g, b, equal_nan=True)
    gs[1][3] = float("inf")
    res = lars_(
        ws,
        gs,
        adapt=[True, True],
        weight_decays=[0.0, 0.0],
        lrs=[0.1, 0.1],
        hyper=Hyper(),
        backend=backend,
    )
    assert bool(res.found_inf)
    assert torch.equal(gs[0], before[0])


def test_non_contiguous_tensors(backend, dtype):
    base_w, base_g = make((12, 10), dtype)
    w, g = base_w.t(), base_g.t()  # transposed views
    assert not g.is_contiguous()
    wd, lr, hyper = 1e-3, 0.1, Hyper()
    ref, scale, _, _ = ref_update(w, g, wd, lr, hyper)
    g_view = base_g.clone().t()
    lars_([w], [g_view], adapt=[True], weight_decays=[wd], lrs=[lr], hyper=hyper, backend=backend)
    assert_matches_reference(g_view, ref, scale, dtype)
    # a strided slice: every other column
    wide_w, wide_g = make((8, 20), dtype, seed=5)
    w2, g2 = wide_w[:, ::2], wide_g.clone()[:, ::2]
    ref2, scale2, _, _ = ref_update(w2, g2, wd, lr, hyper)
    lars_([w2], [g2], adapt=[True], weight_decays=[wd], lrs=[lr], hyper=hyper, backend=backend)
    assert_matches_reference(g2, ref2, scale2, dtype)


@given(
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple),
    dtype_i=st.integers(0, 3),
    wd=st.sampled_from([0.0, 1e-5, 1e-3, 0.1]),
    lr=st.sampled_from([0.0, 1e-3, 0.1, 2.0]),
    clip=st.booleans(),
    guard=st.booleans(),
    gscale=st.sampled_from([0.0, 1e-4, 1.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_property_every_backend_matches_reference(
    shape, dtype_i, wd, lr, clip, guard, gscale, seed
):
    dtype = DTYPES[dtype_i]
    w, g = make(shape, dtype, seed=seed, gscale=gscale)
    hyper = Hyper(use_clip=clip, guard_zero_norm=guard)
    ref, scale, _, _ = ref_update(w, g, wd, lr, hyper)
    for name in BACKENDS:
        g2 = g.clone()
        lars_([w], [g2], adapt=[True], weight_decays=[wd], lrs=[lr], hyper=hyper, backend=name)
        assert_matches_reference(g2, ref, scale, dtype)


@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_property_multi_tensor_lists(sizes, seed):
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(n, generator=gen) for n in sizes]
    gs = [torch.randn(n, generator=gen) * 0.01 for n in sizes]
    adapt = [(i + seed) % 4 != 0 for i in range(len(sizes))]
    wds = [1e-4] * len(sizes)
    lrs = [0.1] * len(sizes)
    hyper = Hyper()
    for name in BACKENDS:
        gg = [g.clone() for g in gs]
        lars_(ws, gg, adapt=adapt, weight_decays=wds, lrs=lrs, hyper=hyper, backend=name)
        for i in range(len(sizes)):
            if adapt[i]:
                ref, scale, _, _ = ref_update(ws[i], gs[i], 1e-4, 0.1, hyper)
                assert_matches_reference(gg[i], ref, scale, torch.float32)
            else:
                assert torch.equal(gg[i], gs[i])


def test_backends_agree_on_a_list(dtype):
    """All backends give results within tolerance of each other, not only of the reference."""
    if len(BACKENDS) < 2:
        pytest.skip("one backend only")
    w, g = make((300, 7), dtype, seed=11)
    outs = {}
    for name in BACKENDS:
        g2 = g.clone()
        lars_([w], [g2], adapt=[True], weight_decays=[1e-3], lrs=[0.2], hyper=Hyper(), backend=name)
        outs[name] = g2
    ref, scale, _, _ = ref_update(w, g, 1e-3, 0.2, Hyper())
    for out in outs.values():
        assert_matches_reference(out, ref, scale, dtype)


def test_get_backend_errors():
    with pytest.raises(ValueError, match="unknown lars_npu backend"):
        get_backend("tpu")


SUMS_BACKENDS = [*BACKENDS, *(["emu"] if "emu" in lars_npu.available_backends() else [])]


@pytest.mark.parametrize("name", SUMS_BACKENDS)
@pytest.mark.parametrize("mixed", [False, True], ids=["fp32", "fp32+fp16"])
def test_square_sums_and_rewrite_given_sums_match_the_reference(name, mixed):
    """The backend protocol's two pieces for sharded steps (the local sums of squares, and the
    rewrite given the all-reduced sums): every backend has them (natively on cpu, one launch per
    dtype on the AscendC kernels, per tensor elsewhere); the results equal the reference's,
    including λ as applied, with an excluded tensor and a non-contiguous gradient among them."""
    backend = get_backend(name)
    shapes = [(7,), (31, 33), (16385,), (3, 5)]
    ws, gs = [], []
    for i, s in enumerate(shapes):
        w, g = make(s, torch.float16 if mixed and i % 2 else torch.float32, seed=i)
        ws.append(w)
        gs.append(g)
    gs[1] = gs[1].t().contiguous().t()  # non-contiguous (a transposed view)
    adapt = [True, True, False, True]
    w_s, g_s = backend.square_sums(ws, gs, adapt)
    for i, (w, g) in enumerate(zip(ws, gs, strict=True)):
        want_w = float(np.sum(np64(w) ** 2)) if adapt[i] else 0.0
        want_g = float(np.sum(np64(g) ** 2))
        tol = 1e-5 if w.dtype == torch.float32 else 2e-3
        assert float(w_s[i]) == pytest.approx(want_w, rel=tol, abs=1e-12), (i, "w")
        assert float(g_s[i]) == pytest.approx(want_g, rel=tol, abs=1e-12), (i, "g")
    hyper = Hyper(coefficient=0.01, use_clip=True)
    # sums "from other ranks": the local ones doubled
    tw, tg = 2 * w_s.double().cpu().numpy(), 2 * g_s.double().cpu().numpy()
    sel = [i for i in range(4) if adapt[i]]
    wds, lrs = [1e-3, 0.0, 5e-4], [0.1, 0.1, 0.0]
    want = []
    for j, i in enumerate(sel):
        lam = reference.trust_ratio(tw[i], tg[i], wds[j], lrs[j], epsilon=hyper.epsilon,
                                    coefficient=hyper.coefficient, use_clip=True)  # fmt: skip
        want.append((lam, (np64(gs[i]) + wds[j] * np64(ws[i])) * lam))
    lam = backend.rewrite_given_sums_([ws[i] for i in sel], [gs[i] for i in sel], tw[sel], tg[sel],
                                      wds, lrs, hyper)  # fmt: skip
    for j, i in enumerate(sel):
        tol = 1e-5 if ws[i].dtype == torch.float32 else 2e-3
        assert lam[j] == pytest.approx(want[j][0], rel=tol), (i, "λ")
        np.testing.assert_allclose(np64(gs[i]), want[j][1], rtol=tol * 10, atol=1e-6)
