"""The benchmark runs end to end on a small shape set and reports real numbers (no timing
assertions: speed targets live in the benchmark's table, not in tests)."""

from __future__ import annotations

import json
import math

import pytest

from lars_npu import bench


@pytest.fixture
def mini(monkeypatch):
    monkeypatch.setitem(
        bench.SETS,
        "mini",
        lambda: [("a.weight", (64, 32)), ("a.bias", (64,)), ("b.weight", (10, 64))],
    )
    return "mini"


def test_shape_sets_match_the_models():
    r = bench.resnet50_shapes()
    assert len(r) == 161 and sum(math.prod(s) for _, s in r) == 25_557_032
    b = bench.bert_large_shapes()
    assert len(b) == 391 and 330e6 < sum(math.prod(s) for _, s in b) < 340e6
    assert len(bench.tiny_shapes()) == 10_000


def test_bench_produces_table_and_json(mini, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--set", "mini", "--repeats", "1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "lars_npu fused" in table and "torch _foreach LARS" in table and "triad" in table
    d = json.loads(out.read_text())
    assert d["triad_gbs"] > 0
    rows = {r["method"]: r for r in d["rows"]}
    assert rows["lars_npu fused"]["ms"] > 0 and rows["lars_npu fused"]["speedup_of_fused"] == 1
    assert rows["NumPy reference"]["ms"] > 0


def test_foreach_peer_matches_lars_reference_math():
    """The torch-ops peer in the table computes the same step (else its timing means nothing)."""
    import torch

    from lars_npu import LARS

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(3, 3))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b, strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    peer = bench.ForeachLars(a, lr=0.1, momentum=0.9, weight_decay=1e-4)
    ours = LARS(
        torch.optim.SGD(
            list(zip(["w0", "w1"], b, strict=True)), lr=0.1, momentum=0.9, weight_decay=1e-4
        ),
        lars_filter=lambda x: True,
    )
    for _ in range(3):
        peer.step()
        ours.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
