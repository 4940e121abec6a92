"""`lars-npu demo`: real training on scikit-learn's digits, in-process with small settings.

scikit-learn and matplotlib are in the `test` extra, so these tests run (never skip) in CI."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import pytest
import torch

from lars_npu import cli, demo
from lars_npu._tools import demo_report

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
    assert "test acc" in text and "ms/step" in text
    # two epochs end inside the 5-epoch warm-up: the lr reached is 4/10 of the 1.6 configured
    assert "At batch 1024 and peak lr 0.64:" in text and "after 5 warm-up epochs" not in text
    assert "warm-up, cut short by the end of the 2-epoch run at 0.64 (no decay)" in text
    # not a terminal: one plain line per run
    for i, label in enumerate(("momentum SGD", "LARS(momentum SGD)", "SGD, small batch"), 1):
        assert f"run {i}/3: {label}, batch " in text
    assert text.count(" s: test accuracy ") == 3

    png = out_dir / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] > 500 and img.shape[1] > 800
    assert img[..., :3].std() > 0.05  # drawn on, not a blank canvas

    d = json.loads((out_dir / "demo.json").read_text())
    assert d["files"] == {"plot": str(png), "json": str(out_dir / "demo.json")}
    assert d["backend"] in ("cpu", "numpy") and d["settings"]["peak_lr"] == pytest.approx(1.6)
    assert d["results"]["lars"]["peak_lr"] == pytest.approx(0.64)
    assert d["results"]["baseline"]["peak_lr"] == pytest.approx(0.05 * 90 / 225)
    assert "2-epoch run at 0.64" in d["schedule"]
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
    a = demo.run(cfg, None, show_progress=False, log=io.StringIO())
    b = demo.run(cfg, None, show_progress=False, log=io.StringIO())
    assert _numbers(a) == _numbers(b)
    c = demo.run(replace(cfg, seed=1), None, show_progress=False, log=io.StringIO())
    assert _numbers(c) != _numbers(a)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


def test_lars_trains_where_sgd_fails_at_the_scaled_lr():
    """The demo's point, at a third of its default length: with the linearly scaled lr, plain
    momentum SGD collapses to chance while LARS(SGD) learns (see the README for full runs)."""
    cfg = replace(demo.DemoConfig(), epochs=20, runs=("sgd", "lars"), threads=1)
    s = demo.run(cfg, None, show_progress=False, log=io.StringIO())
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
        demo.run(replace(demo.DemoConfig(), runs=("adam",)), None, log=io.StringIO())


def test_demo_refuses_a_backend_that_cannot_run_here(tmp_path, capsys):
    rc = cli.main(["demo", "--backend", "nonesuch", "--out", str(tmp_path / "d")])
    assert rc == 2
    assert "unknown lars_npu backend 'nonesuch'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before any training or writing


def _cfg(**kw) -> demo.DemoConfig:
    return replace(demo.DemoConfig(), **kw)


def test_schedule_and_plot_title_come_from_the_config():
    default = demo_report.describe_schedule(_cfg(), 2)
    assert default == "lr 0.05×1024/32 = 1.6 after 5 warm-up epochs, then cosine decay"
    short = _cfg(epochs=2)
    words = demo_report.describe_schedule(short, 2)
    assert "cut short by the end of the 2-epoch run at 0.64" in words and "decay," not in words
    title = demo_report.plot_title(short, words, "cpu")
    assert "2 epochs" in title and words in title and "vs 32" in title
    assert "vs 32" not in demo_report.plot_title(_cfg(runs=("sgd", "lars")), words, "cpu")
    exact = demo_report.describe_schedule(_cfg(epochs=5), 2)
    assert exact.startswith("lr rising to 0.05×1024/32 = 1.6 over a warm-up as long as the 5-")
    none = demo_report.describe_schedule(_cfg(warmup_epochs=0), 2)
    assert none == "lr 0.05×1024/32 = 1.6 from the first step (no warm-up), then cosine decay"
    odd = demo_report.describe_schedule(_cfg(warmup_epochs=1.3, epochs=10), 2)
    assert "after 1.5 warm-up epochs" in odd  # what the steps run: 3 steps of 2 per epoch


def test_json_keeps_each_curve_on_one_line():
    summary = {
        "settings": {"runs": ["sgd", "lars"], "epochs": 2},
        "history": {"lars": {"step_lr": [0.16, 0.32, None], "trust_ratios": {"fc.weight": [0.5]}}},
        "empty": {},
        "rows": [{"a": 1}, {"b": [1, 2]}],
    }
    text = demo_report.to_json(summary)
    assert json.loads(text) == summary
    lines = text.splitlines()
    assert '   "step_lr": [0.16, 0.32, null],' in lines
    assert '    "fc.weight": [0.5]' in lines and ' "empty": {},' in lines
    with pytest.raises(ValueError):
        demo_report.to_json({"x": [math.nan]})  # NaN is not JSON: summaries hold null instead


class _Recorder(io.StringIO):
    """A stream that remembers what had been flushed, i.e. what a reader could see."""

    def __init__(self):
        super().__init__()
        self.flushed = ""

    def flush(self):
        super().flush()
        self.flushed = self.getvalue()


def test_without_a_terminal_each_run_is_one_line_shown_as_it_starts(monkeypatch):
    log = _Recorder()
    seen_at_start: list[str] = []
    real_train = demo.train

    def train(*args, **kwargs):
        seen_at_start.append(log.flushed)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(demo, "train", train)
    cfg = _cfg(epochs=1, runs=("sgd", "lars"), threads=1)
    demo.run(cfg, None, show_progress=False, log=log)
    first, second = seen_at_start
    assert first.endswith("run 1/2: momentum SGD, batch 1024, 2 steps ... ")
    assert second.endswith("run 2/2: LARS(momentum SGD), batch 1024, 2 steps ... ")
    assert "run 1/2: momentum SGD, batch 1024, 2 steps ... done in " in second  # one line
    assert log.flushed == log.getvalue()
    run_lines = [x for x in log.getvalue().splitlines() if x.startswith("run ")]
    assert len(run_lines) == 2 and all(" s: test accuracy " in x for x in run_lines)


def test_with_progress_bars_each_run_ends_with_its_result_line(capsys):
    log = io.StringIO()
    demo.run(_cfg(epochs=1, runs=("lars",), threads=1), None, show_progress=True, log=log)
    lines = log.getvalue().splitlines()
    assert lines[-1].startswith("  LARS(momentum SGD)  batch 1024, lr 0.32 : test accuracy ")
    assert not any(x.startswith("run ") for x in lines)
    assert "LARS(momentum SGD) (batch 1024, lr 1.6)" in capsys.readouterr().err  # the bar
