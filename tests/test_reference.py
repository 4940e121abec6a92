"""The NumPy reference against docs/semantics.md's formula worked by hand: the oracle must be
right itself."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lars_npu import reference

W = np.array([[0.5, 0.8, 0.2], [0.6, 0.4, 0.2]], dtype=np.float32)
G = np.array([[0.4, 0.4, 0.5], [0.2, 0.4, 0.3]], dtype=np.float32)
GOLDEN = np.array(
    [[0.0005265, 0.0005265, 0.00065813], [0.00026325, 0.0005265, 0.00039488]], dtype=np.float32
)


def test_golden_example_from_mindspore_docs() -> None:
    w_s, g_s = reference.square_sum_all(W, G)
    assert w_s.dtype == np.float32 and g_s.dtype == np.float32
    np.testing.assert_allclose([w_s, g_s], [1.49, 0.86], rtol=1e-6)
    out = reference.lars_update(W, G, w_s, g_s, 0.0, 1.0, epsilon=1e-5, coefficient=1e-3)
    assert out.dtype == np.float32
    # MindSpore prints 5 significant digits; agree to that.
    np.testing.assert_allclose(out, GOLDEN, rtol=2e-5)


def test_trust_ratio_formula_by_hand() -> None:
    lam = reference.trust_ratio(4.0, 9.0, 0.1, 1.0, epsilon=1e-5, coefficient=1e-3)
    assert lam == pytest.approx(1e-3 * 2.0 / (3.0 + 0.1 * 2.0 + 1e-5), rel=1e-15)


def test_zero_weight_gives_zero_update() -> None:
    g = np.ones(4)
    out = reference.lars_update(np.zeros(4), g, 0.0, 4.0, 1e-4, 0.1)
    assert np.all(out == 0.0)


def test_zero_gradient_gives_lambda_wd_w() -> None:
    w = np.array([3.0, 4.0])
    wd = 1e-2
    lam = 1e-3 * 5.0 / (0.0 + wd * 5.0 + 1e-5)
    out = reference.lars_update(w, np.zeros(2), 25.0, 0.0, wd, 0.1)
    np.testing.assert_allclose(out, lam * wd * w, rtol=1e-15)


@pytest.mark.parametrize("lr", [1e-6, 1e-3, 0.1, 1.0, 10.0])
def test_clip_bounds(lr: float) -> None:
    for w_s, g_s in [(1e6, 1e-6), (1.0, 1.0), (1e-8, 1e4), (0.0, 1.0)]:
        lam = reference.trust_ratio(w_s, g_s, 0.0, lr, use_clip=True)
        raw = reference.trust_ratio(w_s, g_s, 0.0, lr)
        assert 0.0 <= lam <= 1.0
        assert lam == pytest.approx(min(raw / lr, 1.0), rel=1e-15)


def test_clip_at_zero_lr_takes_the_limit() -> None:
    assert reference.trust_ratio(1.0, 1.0, 0.0, 0.0, use_clip=True) == 1.0
    assert reference.trust_ratio(0.0, 1.0, 0.0, 0.0, use_clip=True) == 0.0


def test_guard_zero_norm() -> None:
    assert reference.trust_ratio(0.0, 1.0, 0.1, 0.1, guard_zero_norm=True) == 1.0
    assert reference.trust_ratio(1.0, 0.0, 0.1, 0.1, guard_zero_norm=True) == 1.0
    # guard comes before clipping: 1 / lr clipped to 1
    assert reference.trust_ratio(0.0, 1.0, 0.0, 0.5, use_clip=True, guard_zero_norm=True) == 1.0
    # non-zero norms are unaffected
    a = reference.trust_ratio(2.0, 3.0, 0.1, 0.1, guard_zero_norm=True)
    assert a == reference.trust_ratio(2.0, 3.0, 0.1, 0.1)


def test_momentum_step_matches_torch_sgd_conventions() -> None:
    w = np.array([1.0, -2.0, 3.0])
    g = np.array([0.1, 0.2, -0.3])
    w1, m1, gp, lam = reference.lars_momentum_step(
        w, g, None, lr=0.1, weight_decay=0.01, momentum=0.9
    )
    assert m1 is not None
    np.testing.assert_allclose(gp, lam * (g + 0.01 * w))
    np.testing.assert_allclose(m1, gp)  # first step: m = g'
    np.testing.assert_allclose(w1, w - 0.1 * gp)
    w2, m2, gp2, _ = reference.lars_momentum_step(
        w1, g, m1, lr=0.1, weight_decay=0.01, momentum=0.9, nesterov=True
    )
    np.testing.assert_allclose(m2, 0.9 * m1 + gp2)
    np.testing.assert_allclose(w2, w1 - 0.1 * (gp2 + 0.9 * m2))
    # excluded parameter: no LARS, no decay; momentum 0 keeps no buffer
    w3, m3, gp3, lam3 = reference.lars_momentum_step(
        w, g, None, lr=0.1, weight_decay=0.01, lars=False
    )
    assert m3 is None and lam3 == 1.0
    np.testing.assert_array_equal(gp3, g)
    np.testing.assert_allclose(w3, w - 0.1 * g)


def test_reference_never_imports_native() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(reference))
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert mods <= {"__future__", "math", "numpy"}, mods
    assert not math.isnan(reference.trust_ratio(1.0, 1.0, 0.0, 1.0))
