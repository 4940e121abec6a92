"""`lars-npu demo`: real training on scikit-learn's digits, in-process with small settings.

scikit-learn and matplotlib are in the `test` extra, so these tests run (never skip) in CI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from lars_npu import cli, demo

LAYERS = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]


def _numbers(summary: dict) -> dict:
    """The results without the timings (which are the only thing allowed to vary)."""
    out = {}
    for run, r in summary["results"].items():
        out[run] = {k: v for k, v in r.items() if not k.startswith("ms_")}
    return {"results": out, "history": summary["history"]}


def test_demo_command_writes_table_plot_and_json(tmp_path, capsys):
    out_dir = tmp_path / "out"
    rc = cli.main(
        ["demo", "--epochs", "2", "--out", str(out_dir), "--no-progress", "--threads", "1"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    for label in ("momentum SGD", "LARS(momentum SGD)", "SGD, small batch"):
        assert f"\n{label} " in text  # a row of the final table
    assert "test acc" in text and "ms/step" in text and "At batch 1024" in text

    png = out_dir / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] > 500 and img.shape[1] > 800
    assert img[..., :3].std() > 0.05  # drawn on, not a blank canvas

    d = json.loads((out_dir / "demo.json").read_text())
    assert d["files"] == {"plot": str(png), "json": str(out_dir / "demo.json")}
    assert d["backend"] in ("cpu", "numpy") and d["settings"]["peak_lr"] == pytest.approx(1.6)
    assert d["data"]["train"] + d["data"]["test"] == 1797
    for run, steps in (("sgd", 4), ("lars", 4), ("baseline", 2 * math.ceil(1438 / 32))):
        r = d["results"][run]
        assert r["steps"] == steps
        assert 0.0 <= r["final_test_acc"] <= 1.0 and r["final_test_loss"] > 0
        assert r["ms_per_step"] > 0 and r["ms_per_optimizer_step"] > 0
        h = d["history"][run]
        assert len(h["epoch_test_acc"]) == 2 and len(h["step_loss"]) == steps
    lam = d["history"]["lars"]["trust_ratios"]
    assert sorted(lam) == LAYERS  # biases are not adapted (exclude_bias_and_norm)
    assert all(len(v) == 4 and all(0.0 <= x <= 1.0 for x in v) for v in lam.values())
    assert any(x < 1.0 for v in lam.values() for x in v)  # LARS cut some layer's step
    assert d["history"]["sgd"]["trust_ratios"] == {}


def test_demo_json_flag_prints_the_summary(tmp_path, capsys):
    rc = cli.main(
        [
            "demo",
            "--epochs",
            "1",
            "--no-baseline",
            "--out",
            str(tmp_path),
            "--json",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    d = json.loads(captured.out)  # stdout is the JSON alone; the log went to stderr
    assert set(d["results"]) == {"sgd", "lars"}
    assert "digits (scikit-learn)" in captured.err
    assert json.loads((tmp_path / "demo.json").read_text())["results"] == d["results"]


def test_demo_is_seeded_and_restores_the_runtime():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    cfg = replace(demo.DemoConfig(), epochs=1, runs=("lars",), threads=1)
    a = demo.run(cfg, None, show_progress=False, log=lambda s: None)
    b = demo.run(cfg, None, show_progress=False, log=lambda s: None)
    assert _numbers(a) == _numbers(b)
    c = demo.run(replace(cfg, seed=1), None, show_progress=False, log=lambda s: None)
    assert _numbers(c) != _numbers(a)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


def test_lars_trains_where_sgd_fails_at_the_scaled_lr():
    """The demo's point, at a third of its default length: with the linearly scaled lr, plain
    momentum SGD collapses to chance while LARS(SGD) learns (see the README for full runs)."""
    cfg = replace(demo.DemoConfig(), epochs=20, runs=("sgd", "lars"), threads=1)
    s = demo.run(cfg, None, show_progress=False, log=lambda s: None)
    sgd, lars = s["results"]["sgd"], s["results"]["lars"]
    assert lars["final_test_acc"] > 0.9
    assert sgd["final_test_acc"] < 0.5
    assert "LARS ends" in demo.verdict(s) and "collapsed" in demo.verdict(s)


def test_lr_schedule_warms_up_then_decays():
    f = demo.lr_lambda(epochs=10, warmup_epochs=2, steps_per_epoch=3)
    assert [f(i) for i in range(6)] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    assert f(29) < 0.01 and all(f(i) >= f(i + 1) for i in range(6, 29))


def test_data_split_is_stratified_and_standardised():
    d = demo.load_digits_data(seed=0, test_fraction=0.2)
    assert len(d.y_train) + len(d.y_test) == 1797
    assert d.x_train.shape[1:] == (1, 8, 8)
    counts = torch.bincount(d.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~20% of every digit
    assert abs(d.x_train.mean().item()) < 1e-4 and d.x_train.std().item() == pytest.approx(1, 1e-4)
    overlap = set(map(bytes, d.x_train.numpy())) & set(map(bytes, d.x_test.numpy()))
    assert len(overlap) < 5  # (the data set holds a few duplicate images)


def test_unknown_run_is_refused():
    with pytest.raises(ValueError, match="unknown run"):
        demo.run(replace(demo.DemoConfig(), runs=("adam",)), None, log=lambda s: None)


def test_demo_refuses_a_backend_that_cannot_run_here(tmp_path, capsys):
    rc = cli.main(["demo", "--backend", "nonesuch", "--out", str(tmp_path / "d")])
    assert rc == 2
    assert "unknown lars_npu backend 'nonesuch'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before any training or writing
