"""The benchmark runs end to end on a small shape set and reports real numbers (no timing
assertions: speed targets live in the benchmark's table, not in tests)."""

from __future__ import annotations

import json
import math

import pytest

from lars_npu import bench
from lars_npu._tools import shapes


@pytest.fixture
def mini(monkeypatch):
    monkeypatch.setitem(
        bench.SETS,
        "mini",
        lambda: [("a.weight", (64, 32)), ("a.bias", (64,)), ("b.weight", (10, 64))],
    )
    return "mini"


def test_shape_sets_match_the_models():
    r = shapes.resnet50_shapes()
    assert len(r) == 161 and sum(math.prod(s) for _, s in r) == 25_557_032
    b = shapes.bert_large_shapes()
    assert len(b) == 391 and 330e6 < sum(math.prod(s) for _, s in b) < 340e6
    assert len(shapes.tiny_shapes()) == 10_000
    assert bench.SETS is shapes.SETS  # the scripts in benchmarks/ read bench.SETS


def test_bench_produces_table_and_json(mini, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--set", "mini", "--repeats", "1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "lars_npu fused" in table and "torch backend + SGD foreach" in table and "triad" in table
    d = json.loads(out.read_text())
    assert d["triad_gbs"] > 0
    rows = {r["method"]: r for r in d["rows"]}
    assert rows["lars_npu fused"]["ms"] > 0 and rows["lars_npu fused"]["speedup_of_fused"] == 1
    assert rows["NumPy reference"]["ms"] > 0


def test_every_row_computes_the_same_step(mini):
    """The rows are the package's own paths (and timm's, when it imports), so their timings
    compare the same work: one step of each moves the parameters alike."""
    import torch

    methods = bench._methods(None, numpy_ok=True)
    assert [m for m, _ in methods] == [
        "lars_npu fused",
        "lars_npu unfused",
        "torch backend + SGD foreach",
        "NumPy reference",
    ]
    after = []
    for _, build in methods:
        named = shapes.make_params(bench.SETS[mini]())
        grads = [p.grad.clone() for _, p in named]
        opt = build(named)
        for _ in range(2):  # the second step uses the momentum buffer
            for (_, p), g in zip(named, grads, strict=True):
                p.grad = g.clone()  # the unfused paths leave g' in p.grad
            opt.step()
        after.append([p.detach().clone() for _, p in named])
    for other in after[1:]:
        for p, q in zip(after[0], other, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.fixture
def fake_timm(tmp_path, monkeypatch):
    """A package named timm on sys.path, written by the test, whose import is what runs."""
    import sys

    def make(init: str, optim: str) -> None:
        pkg = tmp_path / "timm"
        (pkg / "optim").mkdir(parents=True)
        (pkg / "__init__.py").write_text(init)
        (pkg / "optim" / "__init__.py").write_text(optim)
        monkeypatch.syspath_prepend(str(tmp_path))

    yield make
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        del sys.modules[name]


def test_timm_is_imported_as_a_package(fake_timm, mini, capsys):
    fake_timm('__version__ = "0.0.fake"\n', "from torch.optim import SGD as Lars\n")
    lars, note = bench.load_timm_lars()
    assert lars is not None and lars.__name__ == "SGD" and note == "timm 0.0.fake"
    assert bench.main(["--set", mini, "--repeats", "1", "--no-numpy", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["timm Lars"]["ms"] > 0 and rows["timm Lars"]["note"] == "timm 0.0.fake"


def test_timm_that_does_not_import_is_a_row_saying_why(fake_timm, mini, capsys):
    fake_timm("raise RuntimeError('operator torchvision::nms does not exist')\n", "")
    lars, note = bench.load_timm_lars()
    assert lars is None
    assert (
        note == "timm does not import here (RuntimeError: operator torchvision::nms does not exist)"
    )
    assert bench.main(["--set", mini, "--repeats", "1", "--no-numpy", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["timm Lars"]["ms"] is None and rows["timm Lars"]["note"] == note


def test_without_timm_the_row_says_it_is_not_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a)
    )
    assert bench.load_timm_lars() == (None, "timm not installed (pip install timm)")
