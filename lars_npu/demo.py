"""``lars-npu demo``: what LARS is for, on real data, in well under a minute on a 2-core CPU.

It trains the same small CNN on scikit-learn's bundled handwritten-digits data set (1,797 8×8
images, shipped inside scikit-learn: no download) at a batch size that is large for the data
set, once with plain momentum SGD and once with ``LARS(SGD)``, under the same linearly scaled
learning rate (``base_lr · batch / 32``) with the same warm-up and cosine decay, the same
initial weights and the same batches; and, as the baseline both try to match, with momentum SGD
at batch 32 and the base learning rate. It prints progress and a final table, and writes a PNG
of the curves and of LARS's per-layer trust ratios λ, and a JSON summary.

Everything is seeded (weights, split, batch order) and run with a fixed thread count, so the same
command on the same machine gives the same accuracies and losses (timings vary, of course).

Needs the ``demo`` extra (scikit-learn, matplotlib): ``pip install "lars-npu[demo]"``.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from . import LARS, __version__, exclude_bias_and_norm
from ._backends import resolve

DEMO_EXTRA_HINT = 'install the demo extra: pip install "lars-npu[demo]" (scikit-learn, matplotlib)'


class MissingDemoDependency(RuntimeError):
    """scikit-learn or matplotlib is not installed."""


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDemoDependency(
            f"lars-npu demo needs {module.split('.')[0]} ({exc}); {DEMO_EXTRA_HINT}"
        ) from None


# -- settings ----------------------------------------------------------------------------------


@dataclass
class DemoConfig:
    """The demo's settings (the CLI's defaults are these)."""

    epochs: int = 60
    batch_size: int = 1024  # 71% of the 1,438 training images: 2 steps per epoch
    base_lr: float = 0.05  # the momentum-SGD learning rate that works at base_batch...
    base_batch: int = 32
    warmup_epochs: float = 5.0  # ...scaled linearly to batch_size, reached after the warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    coefficient: float = 0.02  # LARS trust coefficient θ (NVIDIA LARC's default with clipping)
    use_clip: bool = True  # λ/lr clipped to [0, 1]: LARS never steps further than SGD would
    seed: int = 0
    threads: int = 2
    test_fraction: float = 0.2
    backend: str = "auto"
    device: str = "cpu"
    runs: tuple[str, ...] = ("sgd", "lars", "baseline")

    @property
    def peak_lr(self) -> float:
        return self.base_lr * self.batch_size / self.base_batch

    def batch_and_lr(self, run: str) -> tuple[int, float]:
        """The batch size and peak learning rate of a run (the baseline: base_batch, base_lr)."""
        if run == "baseline":
            return self.base_batch, self.base_lr
        return self.batch_size, self.peak_lr


# -- data and model ----------------------------------------------------------------------------


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_data(seed: int, test_fraction: float) -> Data:
    """scikit-learn's 8×8 digits, split by a seeded stratified permutation, standardised with the
    training set's mean and standard deviation."""
    datasets = _require("sklearn.datasets")
    bunch = datasets.load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8), 0..16
    y = torch.tensor(bunch.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    train_idx: list[torch.Tensor] = []
    test_idx: list[torch.Tensor] = []
    for c in range(10):  # stratified: the same share of every digit in the test set
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = torch.cat(train_idx).sort().values
    te = torch.cat(test_idx).sort().values
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return Data(x[tr], y[tr], x[te], y[te])


def make_model() -> nn.Sequential:
    """A small CNN for 8×8 inputs: two conv layers and two fully connected ones (no
    normalisation layers, so nothing but the optimizer keeps the layers' step sizes in check)."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),  # 4×4
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),  # 2×2
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 2 * 2, 64),
            relu3=nn.ReLU(),
            fc2=nn.Linear(64, 10),
        )
    )


# -- one training run --------------------------------------------------------------------------

RUNS: dict[str, str] = {
    "sgd": "momentum SGD",
    "lars": "LARS(momentum SGD)",
    "baseline": "SGD, small batch",
}


@dataclass
class History:
    """What one run produced (lists of plain floats, JSON-ready)."""

    run: str
    label: str
    batch_size: int
    peak_lr: float
    steps_per_epoch: int
    step_lr: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)  # the batch's loss before the step
    trust_ratios: dict[str, list[float]] = field(default_factory=dict)  # LARS: λ per step
    epoch_train_loss: list[float] = field(default_factory=list)  # whole set, end of epoch
    epoch_train_acc: list[float] = field(default_factory=list)
    epoch_test_loss: list[float] = field(default_factory=list)
    epoch_test_acc: list[float] = field(default_factory=list)
    first_nonfinite_step: int | None = None
    step_ms: list[float] = field(default_factory=list)  # forward + backward + step
    opt_step_ms: list[float] = field(default_factory=list)  # optimizer.step() alone


def lr_lambda(epochs: int, warmup_epochs: float, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step factor of the peak learning rate: linear warm-up over ``warmup_epochs`` (the
    first step at 1/warm-up-steps of the peak), then cosine decay to 0 at the last step."""
    total = epochs * steps_per_epoch
    warm = max(1, round(warmup_epochs * steps_per_epoch))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    return f


def make_optimizer(run: str, model: nn.Module, cfg: DemoConfig, lr: float) -> Optimizer:
    """Momentum SGD, or LARS around the same SGD. Weight decay applies to the weights, not the
    biases, in every run (LARS takes the decay over from SGD, and leaves the biases alone)."""
    named = list(model.named_parameters())
    sgd = torch.optim.SGD(
        [
            {"params": [(n, p) for n, p in named if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [(n, p) for n, p in named if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=cfg.momentum,
    )
    if run in ("sgd", "baseline"):
        return sgd
    if run == "lars":
        return LARS(
            sgd,
            coefficient=cfg.coefficient,
            use_clip=cfg.use_clip,
            lars_filter=exclude_bias_and_norm,
            backend=cfg.backend,
        )
    raise ValueError(f"unknown run {run!r}; expected one of {sorted(RUNS)}")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    out = model(x)
    loss = nn.functional.cross_entropy(out, y).item()
    acc = (out.argmax(1) == y).float().mean().item()
    return loss, acc


def train(
    run: str,
    cfg: DemoConfig,
    data: Data,
    progress: Callable[[int], None] | None = None,
) -> History:
    """One seeded training run; ``progress(1)`` is called after every step. Every run starts
    from the same initial weights and draws its batches from the same seeded permutations."""
    batch, peak_lr = cfg.batch_and_lr(run)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = make_model().to(device)
    opt = make_optimizer(run, model, cfg, peak_lr)
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg.epochs, cfg.warmup_epochs, steps_per_epoch)
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    h = History(run, RUNS[run], batch, peak_lr, steps_per_epoch)
    step = 0
    for _epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        for b in range(steps_per_epoch):
            idx = order[b * batch : (b + 1) * batch]
            lr = float(opt.param_groups[0]["lr"])
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            value = loss.item()  # waits for the device, so the timing below is complete
            t2 = time.perf_counter()
            sched.step()
            h.step_lr.append(lr)
            h.step_loss.append(value)
            h.step_ms.append((t2 - t0) * 1e3)
            h.opt_step_ms.append((t2 - t1) * 1e3)
            if isinstance(opt, LARS):
                for name, lam in opt.trust_ratios().items():
                    h.trust_ratios.setdefault(name, []).append(lam)
            if h.first_nonfinite_step is None and not math.isfinite(value):
                h.first_nonfinite_step = step
            step += 1
            if progress is not None:
                progress(1)
        model.eval()
        tr_loss, tr_acc = evaluate(model, x_train, y_train)
        te_loss, te_acc = evaluate(model, x_test, y_test)
        h.epoch_train_loss.append(tr_loss)
        h.epoch_train_acc.append(tr_acc)
        h.epoch_test_loss.append(te_loss)
        h.epoch_test_acc.append(te_acc)
    return h


# -- the whole demo ----------------------------------------------------------------------------


@contextmanager
def seeded_runtime(threads: int, device: str = "cpu") -> Iterator[None]:
    """A fixed thread count and deterministic algorithms for the demo, restored afterwards. Off
    the CPU, an op without a deterministic kernel warns instead of raising (e.g. cuBLAS without
    CUBLAS_WORKSPACE_CONFIG): the demo's reproducibility promise is for the CPU."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=torch.device(device).type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def summarize(h: History) -> dict[str, Any]:
    """One run's numbers for the table and the JSON (non-finite values become null)."""
    return {
        "run": h.run,
        "label": h.label,
        "batch_size": h.batch_size,
        "peak_lr": h.peak_lr,
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


def _history_json(h: History) -> dict[str, Any]:
    """Per-epoch and per-step curves (the per-step timings are summarised, not kept)."""
    d = asdict(h)
    del d["step_ms"], d["opt_step_ms"]
    for k, v in d.items():
        if isinstance(v, list):
            d[k] = [_finite(x) for x in v]
        elif isinstance(v, dict):
            d[k] = {n: [_finite(x) for x in xs] for n, xs in v.items()}
    return d


def run(
    cfg: DemoConfig,
    out_dir: Path | None,
    *,
    show_progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train every run in ``cfg.runs``; write ``demo.json`` and ``demo.png`` into ``out_dir``
    (when given) and return the summary that ``demo.json`` holds. ``show_progress``: True,
    False, or None (progress bars only on a terminal)."""
    _require("sklearn.datasets")  # missing: fail before training, not after it
    _require("matplotlib")
    from tqdm.auto import tqdm

    for r in cfg.runs:
        if r not in RUNS:
            raise ValueError(f"unknown run {r!r}; expected some of {list(RUNS)}")
    data = load_digits_data(cfg.seed, cfg.test_fraction)
    device = torch.device(cfg.device)
    backend = resolve(device, cfg.backend).name
    n = len(data.y_train)
    log(
        f"digits (scikit-learn): {n} training / {len(data.y_test)} test images, 8×8; "
        f"{cfg.epochs} epochs on {device}, {cfg.threads} thread{'s' if cfg.threads != 1 else ''}; "
        f"LARS backend: {backend}\n"
        f"batch {cfg.batch_size} ({math.ceil(n / cfg.batch_size)} steps/epoch), lr "
        f"{cfg.base_lr:g}×{cfg.batch_size}/{cfg.base_batch} = {cfg.peak_lr:g} after "
        f"{cfg.warmup_epochs:g} warm-up epochs, then cosine decay; momentum {cfg.momentum:g}, "
        f"weight decay {cfg.weight_decay:g}; LARS θ={cfg.coefficient:g}"
        f"{', use_clip' if cfg.use_clip else ''}"
    )
    histories: list[History] = []
    with seeded_runtime(cfg.threads, cfg.device):
        for r in cfg.runs:
            batch, lr = cfg.batch_and_lr(r)
            with tqdm(
                total=cfg.epochs * math.ceil(n / batch),
                desc=f"{RUNS[r]} (batch {batch}, lr {lr:g})",
                unit="step",
                disable=None if show_progress is None else not show_progress,
                leave=False,
            ) as bar:
                h = train(r, cfg, data, progress=bar.update)
            histories.append(h)
            s = summarize(h)
            log(
                f"  {h.label:<19} batch {batch:>4}, lr {lr:<5g}: test accuracy "
                f"{s['final_test_acc']:.4f}, test loss {_fmt(s['final_test_loss'])}"
            )
    summary: dict[str, Any] = {
        "lars_npu": __version__,
        "torch": torch.__version__,
        "backend": backend,
        "settings": {**asdict(cfg), "peak_lr": cfg.peak_lr, "runs": list(cfg.runs)},
        "data": {
            "source": "sklearn.datasets.load_digits",
            "train": n,
            "test": len(data.y_test),
        },
        "results": {h.run: summarize(h) for h in histories},
        "history": {h.run: _history_json(h) for h in histories},
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / "demo.png"
        plot(histories, cfg, backend, png)
        path = out_dir / "demo.json"
        summary["files"] = {"plot": str(png), "json": str(path)}
        path.write_text(to_json(summary) + "\n")
    return summary


_NUMBER_LIST = re.compile(r"\[\s*([-+0-9.eE,\snul]+?)\s*\]")


def to_json(summary: dict[str, Any]) -> str:
    """Indented JSON, with each list of numbers (the curves) on one line."""
    text = json.dumps(summary, indent=1, allow_nan=False)
    return _NUMBER_LIST.sub(
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text
    )


def _fmt(x: float | None, spec: str = ".4f") -> str:
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
            f"{r['best_test_acc']:>10.4f}{_fmt(r['final_test_loss']):>11}"
            f"{_fmt(r['final_train_loss']):>12}{r['ms_per_step']:>9.2f}"
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


# -- the plot ----------------------------------------------------------------------------------


def plot(histories: list[History], cfg: DemoConfig, backend: str, path: Path) -> None:
    """Four panels, over epochs: training loss, test accuracy, the learning rates (global, and
    per layer under LARS: lr·λ), and LARS's trust ratio λ per layer."""
    matplotlib = _require("matplotlib")
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
    fig.suptitle(
        f"lars_npu demo: digits, batch {cfg.batch_size} vs {cfg.base_batch}; lr "
        f"{cfg.base_lr:g}×{cfg.batch_size}/{cfg.base_batch} = {cfg.peak_lr:g} after "
        f"{cfg.warmup_epochs:g} warm-up epochs, cosine decay; LARS backend {backend}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- ``lars-npu demo`` -----------------------------------------------------------------------------

HELP = "train a small CNN at large batch: momentum SGD vs LARS(SGD), with plots"
DESCRIPTION = (
    "Train a small CNN on scikit-learn's bundled handwritten digits (no "
    "download) at a large batch with momentum SGD and with LARS(SGD), under the same "
    "linearly scaled learning rate and warm-up, plus small-batch SGD as a baseline; print "
    "a table, write a PNG plot (curves and LARS's per-layer trust ratios) and a JSON "
    "summary. Seeded: the same command gives the same numbers. Needs the demo extra: "
    'pip install "lars-npu[demo]".'
)


def add_arguments(p: Any) -> None:
    from ._usage import progress_flags

    d = DemoConfig()
    p.add_argument("--epochs", type=int, metavar="N", default=d.epochs, help="default: %(default)s")
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        default=d.batch_size,
        help="large batch (default: %(default)s)",
    )
    p.add_argument(
        "--base-lr",
        type=float,
        metavar="LR",
        default=d.base_lr,
        help=f"SGD lr at batch {d.base_batch}, scaled by batch/{d.base_batch} "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=float,
        metavar="E",
        default=d.warmup_epochs,
        help="default: %(default)s",
    )
    p.add_argument(
        "--coefficient",
        type=float,
        metavar="θ",
        default=d.coefficient,
        help="LARS θ (default: %(default)s)",
    )
    p.add_argument("--no-clip", action="store_true", help="LARS without use_clip")
    p.add_argument(
        "--no-baseline", action="store_true", help=f"skip the batch-{d.base_batch} SGD run"
    )
    p.add_argument("--seed", type=int, metavar="S", default=d.seed, help="default: %(default)s")
    p.add_argument(
        "--threads",
        type=int,
        metavar="T",
        default=d.threads,
        help="torch threads (default: %(default)s)",
    )
    p.add_argument(
        "--backend",
        metavar="NAME",
        default=d.backend,
        help="LARS backend (default: %(default)s: the fastest)",
    )
    p.add_argument(
        "--device", metavar="D", default=d.device, help="torch device (default: %(default)s)"
    )
    p.add_argument(
        "--out",
        default="lars-npu-demo",
        metavar="DIR",
        help="directory for demo.png and demo.json (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON summary, not the table")
    progress_flags(p)


def run_cli(args: Any) -> int:
    import sys

    from ._backends import BackendUnavailableError
    from ._usage import (
        UsageError,
        bounded_float,
        bounded_int,
        max_threads,
        probe_device,
        writable_dir,
    )

    cfg = DemoConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        base_lr=args.base_lr,
        warmup_epochs=args.warmup_epochs,
        coefficient=args.coefficient,
        use_clip=not args.no_clip,
        seed=args.seed,
        threads=args.threads,
        backend=args.backend,
        device=args.device,
        runs=("sgd", "lars") if args.no_baseline else ("sgd", "lars", "baseline"),
    )
    # every user error found here, before any training (exit 2, one line on stderr)
    bounded_int("--epochs", cfg.epochs, 1, 100_000)
    bounded_int("--batch-size", cfg.batch_size, 1, 1 << 24)
    # the default thread count is part of the seeded result, so it is accepted on any machine
    bounded_int("--threads", cfg.threads, 1, max(max_threads(), DemoConfig().threads))
    bounded_int("--seed", cfg.seed, 0, 2**63 - 2)  # the data split uses seed + 1
    bounded_float("--base-lr", cfg.base_lr)
    bounded_float("--coefficient", cfg.coefficient)
    bounded_float("--warmup-epochs", cfg.warmup_epochs, positive=False)
    device = probe_device("--device", cfg.device)
    try:
        resolve(device, cfg.backend)
    except (BackendUnavailableError, ValueError, TypeError) as exc:
        raise UsageError(f"--backend {cfg.backend!r}: {exc}") from None
    out = writable_dir("--out", args.out, files=("demo.png", "demo.json"))
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    try:
        summary = run(cfg, out, show_progress=args.progress, log=log)
    except MissingDemoDependency as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(to_json(summary))
        return 0
    print()
    print(format_table(summary))
    print()
    print(verdict(summary))
    files = summary["files"]
    print(f"plot: {files['plot']}\nJSON: {files['json']}")
    return 0
