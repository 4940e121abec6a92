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
The training is :mod:`lars_npu._tools.digits`, the report :mod:`lars_npu._tools.demo_report`.

Needs the ``demo`` extra (scikit-learn, matplotlib): ``pip install "lars-npu[demo]"``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import torch

from . import __version__
from ._backends import resolve
from ._tools.demo_report import (
    describe_schedule,
    fmt,
    format_table,
    history_json,
    plot,
    plot_title,
    summarize,
    to_json,
    verdict,
)
from ._tools.digits import (
    RUNS,
    DemoConfig,
    History,
    MissingDemoDependency,
    load_digits_data,
    lr_lambda,
    require,
    seeded_runtime,
    train,
)

__all__ = ["DemoConfig", "format_table", "load_digits_data", "lr_lambda", "run", "verdict"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def run(
    cfg: DemoConfig,
    out_dir: Path | None,
    *,
    show_progress: bool | None = None,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """Train every run in ``cfg.runs``; write ``demo.json`` and ``demo.png`` into ``out_dir``
    (when given) and return the summary that ``demo.json`` holds.

    Messages go to ``log`` (default: stdout), each flushed as it is written. ``show_progress``:
    True: a progress bar per run on stderr; False: one plain line per run instead, written when
    the run starts and finished when it ends; None: bars when stderr is a terminal, else lines."""
    require("sklearn.datasets")  # missing: fail before training, not after it
    require("matplotlib")
    from tqdm.auto import tqdm

    for r in cfg.runs:
        if r not in RUNS:
            raise ValueError(f"unknown run {r!r}; expected some of {list(RUNS)}")
    out = sys.stdout if log is None else log

    def say(text: str, end: str = "\n") -> None:
        print(text, end=end, file=out, flush=True)

    bars = sys.stderr.isatty() if show_progress is None else show_progress
    data = load_digits_data(cfg.seed, cfg.test_fraction)
    device = torch.device(cfg.device)
    backend = resolve(device, cfg.backend).name
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    schedule = describe_schedule(cfg, steps_per_epoch)
    say(
        f"digits (scikit-learn): {n} training / {len(data.y_test)} test images, 8×8; "
        f"{_plural(cfg.epochs, 'epoch')} on {device}, {_plural(cfg.threads, 'thread')}; "
        f"LARS backend: {backend}\n"
        f"batch {cfg.batch_size} ({steps_per_epoch} steps/epoch), {schedule}; momentum "
        f"{cfg.momentum:g}, weight decay {cfg.weight_decay:g}; LARS θ={cfg.coefficient:g}"
        f"{', use_clip' if cfg.use_clip else ''}"
    )
    histories: list[History] = []
    with seeded_runtime(cfg.threads, cfg.device):
        for i, r in enumerate(cfg.runs, start=1):
            batch, lr = cfg.batch_and_lr(r)
            steps = cfg.epochs * math.ceil(n / batch)
            if not bars:
                head = f"run {i}/{len(cfg.runs)}: {RUNS[r]}, batch {batch}, {steps} steps ... "
                say(head, end="")
            t0 = time.perf_counter()
            desc = f"{RUNS[r]} (batch {batch}, lr {lr:g})"
            with tqdm(total=steps, desc=desc, unit="step", disable=not bars, leave=False) as bar:
                h = train(r, cfg, data, progress=bar.update)
            histories.append(h)
            s = summarize(h)
            result = (
                f"test accuracy {s['final_test_acc']:.4f}, test loss {fmt(s['final_test_loss'])}"
            )
            if bars:
                say(f"  {h.label:<19} batch {batch:>4}, lr {s['peak_lr']:<5g}: {result}")
            else:
                say(f"done in {time.perf_counter() - t0:.1f} s: {result}")
    summary: dict[str, Any] = {
        "lars_npu": __version__,
        "torch": torch.__version__,
        "backend": backend,
        "settings": {**asdict(cfg), "peak_lr": cfg.peak_lr, "runs": list(cfg.runs)},
        "schedule": schedule,
        "data": {"source": "sklearn.datasets.load_digits", "train": n, "test": len(data.y_test)},
        "results": {h.run: summarize(h) for h in histories},
        "history": {h.run: history_json(h) for h in histories},
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / "demo.png"
        plot(histories, cfg, plot_title(cfg, schedule, backend), png)
        path = out_dir / "demo.json"
        summary["files"] = {"plot": str(png), "json": str(path)}
        path.write_text(to_json(summary) + "\n")
    return summary


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
    progress_flags(p, off="no bars: one plain line per run")


def run_cli(args: Any) -> int:
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
    try:
        summary = run(cfg, out, show_progress=args.progress, log=sys.stderr if args.json else None)
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
