"""What ``lars-npu demo`` reports: each run's numbers, the schedule in words, the final table, the
verdict, the JSON and the plot."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .digits import DemoConfig, History, lr_lambda, require, warmup_steps


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def summarize(h: History) -> dict[str, Any]:
    """One run's numbers for the table and the JSON (non-finite values become null). Its
    ``peak_lr`` is the highest learning rate the run used (a warm-up longer than the run never
    reaches the configured peak)."""
    return {
        "run": h.run,
        "label": h.label,
        "batch_size": h.batch_size,
        "peak_lr": max(h.step_lr, default=0.0),
        "steps": len(h.step_loss),
        "final_test_acc": h.epoch_test_acc[-1],
        "best_test_acc": max(h.epoch_test_acc),
        "final_test_loss": _finite(h.epoch_test_loss[-1]),
        "final_train_loss": _finite(h.epoch_train_loss[-1]),
        "final_train_acc": h.epoch_train_acc[-1],
        "first_nonfinite_step": h.first_nonfinite_step,
        "ms_per_step": statistics.median(h.step_ms),
        "ms_per_optimizer_step": statistics.median(h.opt_step_ms),
    }


def history_json(h: History) -> dict[str, Any]:
    """Per-epoch and per-step curves (the per-step timings are summarised, not kept)."""
    d = asdict(h)
    del d["step_ms"], d["opt_step_ms"]
    for k, v in d.items():
        if isinstance(v, list):
            d[k] = [_finite(x) for x in v]
        elif isinstance(v, dict):
            d[k] = {n: [_finite(x) for x in xs] for n, xs in v.items()}
    return d


def to_json(obj: Any, indent: int = 1, level: int = 0) -> str:
    """Indented JSON in which a list of plain values (a curve) stays on one line."""
    pad, inner = " " * (indent * level), " " * (indent * (level + 1))
    if isinstance(obj, dict) and obj:
        items = [
            f"{inner}{json.dumps(str(k))}: {to_json(v, indent, level + 1)}" for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list | tuple) and any(isinstance(x, dict | list | tuple) for x in obj):
        items = [inner + to_json(x, indent, level + 1) for x in obj]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(obj, allow_nan=False)


def describe_schedule(cfg: DemoConfig, steps_per_epoch: int) -> str:
    """The large-batch runs' learning-rate schedule in words, as the steps will run it."""
    total = cfg.epochs * steps_per_epoch
    warm = warmup_steps(cfg.warmup_epochs, steps_per_epoch)
    scaled = f"{cfg.base_lr:g}×{cfg.batch_size}/{cfg.base_batch} = {cfg.peak_lr:g}"
    decay = ", then cosine decay" if total > warm else ""
    if warm == 1:
        return f"lr {scaled} from the first step (no warm-up){decay}"
    epochs = f"{warm / steps_per_epoch:g}"
    if warm < total:
        return f"lr {scaled} after {epochs} warm-up epochs{decay}"
    if warm == total:
        return f"lr rising to {scaled} over a warm-up as long as the {epochs}-epoch run (no decay)"
    reached = cfg.peak_lr * lr_lambda(cfg.epochs, cfg.warmup_epochs, steps_per_epoch)(total - 1)
    return (
        f"lr rising toward {scaled} over a {epochs}-epoch warm-up, cut short by the end of the "
        f"{cfg.epochs}-epoch run at {reached:g} (no decay)"
    )


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "nan/inf" if x is None else format(x, spec)


def format_table(summary: dict[str, Any]) -> str:
    """The final table: one row per run."""
    head = (
        f"{'run':<20}{'batch':>6}{'peak lr':>9}{'test acc':>10}{'best acc':>10}"
        f"{'test loss':>11}{'train loss':>12}{'ms/step':>9}{'ms/opt.step':>13}"
    )
    lines = [head, "-" * len(head)]
    for r in summary["results"].values():
        lines.append(
            f"{r['label']:<20}{r['batch_size']:>6}{r['peak_lr']:>9.3g}{r['final_test_acc']:>10.4f}"
            f"{r['best_test_acc']:>10.4f}{fmt(r['final_test_loss']):>11}"
            f"{fmt(r['final_train_loss']):>12}{r['ms_per_step']:>9.2f}"
            f"{r['ms_per_optimizer_step']:>13.3f}"
        )
    return "\n".join(lines)


def _outcome(r: dict[str, Any]) -> str:
    """How one run ended, in words: diverged, collapsed to chance, or its accuracy."""
    acc = f"{r['final_test_acc']:.2%} test accuracy"
    if r["first_nonfinite_step"] is not None:
        return f"{acc}: its loss became inf/nan at step {r['first_nonfinite_step']}"
    loss = r["final_train_loss"]
    if loss is not None and abs(loss - math.log(10)) < 0.01:
        return f"{acc}: it collapsed to a constant prediction (training loss ≈ ln 10)"
    return acc


def verdict(summary: dict[str, Any]) -> str:
    """What happened, from the numbers (whichever run won)."""
    res = summary["results"]
    lines = []
    if "sgd" in res and "lars" in res:
        sgd, lars = res["sgd"], res["lars"]
        lines.append(
            f"At batch {lars['batch_size']} and peak lr {lars['peak_lr']:g}: LARS(momentum SGD) "
            f"{_outcome(lars)}; momentum SGD {_outcome(sgd)}."
        )
        gap = lars["final_test_acc"] - sgd["final_test_acc"]
        if abs(gap) < 0.005:
            lines.append("The two end within half a point of each other.")
        else:
            winner = "LARS" if gap > 0 else "plain momentum SGD"
            lines.append(f"{winner} ends {abs(gap) * 100:.1f} points ahead.")
    if "baseline" in res:
        b = res["baseline"]
        line = (
            f"Small-batch momentum SGD (batch {b['batch_size']}, lr {b['peak_lr']:g}, "
            f"{b['steps']} steps) {_outcome(b)}"
        )
        big = res.get("lars") or res.get("sgd")
        if big is not None:
            line += f"; the large-batch runs took {big['steps']} steps."
        lines.append(line)
    return "\n".join(lines)


def plot_title(cfg: DemoConfig, schedule: str, backend: str) -> str:
    vs = f" vs {cfg.base_batch}" if "baseline" in cfg.runs else ""
    epochs = f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"
    run = f"digits, {epochs}, batch {cfg.batch_size}{vs}"
    return f"lars_npu demo: {run}; LARS backend {backend}\n{schedule}"


def plot(histories: list[History], cfg: DemoConfig, title: str, path: Path) -> None:
    """Four panels, over epochs: training loss, test accuracy, the learning rates (global, and
    per layer under LARS: lr·λ), and LARS's trust ratio λ per layer."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    colors = {"sgd": "tab:red", "lars": "tab:blue", "baseline": "tab:gray"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax_loss, ax_acc, ax_lr, ax_lam = axes.flat
    lr_drawn: list[list[float]] = []
    for h in histories:
        c = colors[h.run]
        label = f"{h.label}, batch {h.batch_size}"
        ls = "--" if h.run == "baseline" else "-"
        epochs = range(1, len(h.epoch_test_acc) + 1)
        ax_loss.plot(epochs, h.epoch_train_loss, color=c, ls=ls, label=label)
        ax_acc.plot(epochs, h.epoch_test_acc, color=c, ls=ls, label=label)
        x = [(i + 1) / h.steps_per_epoch for i in range(len(h.step_lr))]
        if h.step_lr not in lr_drawn:  # SGD and LARS share one schedule: draw it once
            lr_drawn.append(h.step_lr)
            same = [o.label for o in histories if o.step_lr == h.step_lr]
            ax_lr.plot(
                x,
                h.step_lr,
                color=c if len(same) == 1 else "k",
                ls=ls,
                lw=1.5,
                label=f"lr, {' and '.join(same)} (batch {h.batch_size})",
            )
        for name, lams in h.trust_ratios.items():
            line = ax_lam.plot(x, lams, lw=1.2, label=name)[0]
            eff = [lr * lam for lr, lam in zip(h.step_lr, lams, strict=True)]
            ax_lr.plot(x, eff, lw=1, ls=":", color=line.get_color(), label=f"lr·λ {name}")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log")
    ax_loss.set_title("training loss (whole training set)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax_acc.set_title(f"test accuracy ({cfg.test_fraction:.0%} held out)")
    top = max((max(v) for v in lr_drawn if v), default=1.0)
    ax_lr.set(xlabel="epoch", ylabel="learning rate", yscale="log", ylim=(top * 1e-3, top * 2))
    ax_lr.set_title("learning rate: global, and each layer's under LARS (lr·λ)")
    ax_lam.set(xlabel="epoch", ylabel="λ", yscale="log")
    clip = "clipped to λ/lr ≤ 1, " if cfg.use_clip else ""
    ax_lam.set_title(f"LARS trust ratio λ per layer ({clip}θ={cfg.coefficient:g})")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower center" if ax is ax_lr else "best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
