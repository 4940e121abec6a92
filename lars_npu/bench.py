"""``lars-npu bench`` (also ``python benchmarks/bench_step.py``): one LARS + momentum-SGD step.

For a set of parameter shapes (ResNet-50: 25.6M params / 161 tensors; BERT-large: ~335M / 391;
10,000 tensors of 64 floats) it times one optimizer step (median of ``repeats`` after warm-up) of:

- lars_npu fused: ``LARS(SGD(momentum=0.9))``, one native call per step;
- lars_npu unfused: ``LARS(SGD(...), fused=False)``, native rewrite then ``SGD.step()``;
- timm ``Lars`` (its defaults) when ``import timm`` works here (timm is not a dependency);
- torch ops: lars_npu's ``torch`` backend (what non-CPU devices without a kernel run) for the
  rewrite, then torch's foreach ``SGD.step()``;
- the NumPy reference (the ``numpy`` backend).

It reports the fused step's speed-up over each, its bandwidth counted at 28 bytes per fp32
parameter (pass 1 reads w, g; pass 2 reads w, g, m and writes m, w), that bandwidth over a
STREAM-like triad measured in the same run, and the peak extra resident memory of a step.
No assertions: numbers only.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from . import LARS
from ._backends import Hyper, get_backend
from ._backends._native import native
from ._tools.bench_report import Result, Row, format_table, machine_info, to_json
from ._tools.measure import median_time, peak_extra_mb, triad_gbs
from ._tools.shapes import SETS, adapt_all, make_params
from ._usage import UsageError, bounded_int, writable_file

LR, MOMENTUM, WD, COEF, EPS = 0.1, 0.9, 5e-5, 1e-3, 1e-5
TIMM = "timm Lars"

Named = list[tuple[str, torch.nn.Parameter]]


def load_timm_lars() -> tuple[type | None, str]:
    """timm's ``Lars`` class by a normal import, or ``None`` and why not."""
    if importlib.util.find_spec("timm") is None:
        return None, "timm not installed (pip install timm)"
    try:
        import timm
        from timm.optim import Lars
    except Exception as exc:  # e.g. a torchvision that does not match this torch
        first = (str(exc).strip().splitlines() or [""])[0]
        return None, f"timm does not import here ({type(exc).__name__}: {first})"
    return Lars, f"timm {timm.__version__}"


def _methods(timm_lars: type | None, numpy_ok: bool) -> list[tuple[str, Callable[[Named], Any]]]:
    def sgd(named: Named, **kw: Any) -> torch.optim.SGD:
        return torch.optim.SGD(named, lr=LR, momentum=MOMENTUM, weight_decay=WD, **kw)

    methods: list[tuple[str, Callable[[Named], Any]]] = [
        ("lars_npu fused", lambda named: LARS(sgd(named), lars_filter=adapt_all)),
        ("lars_npu unfused", lambda named: LARS(sgd(named), lars_filter=adapt_all, fused=False)),
    ]
    if timm_lars is not None:
        methods.append(
            (
                TIMM,
                lambda named: timm_lars(
                    [p for _, p in named], lr=LR, momentum=MOMENTUM, weight_decay=WD
                ),
            )
        )
    methods.append(
        (
            "torch backend + SGD foreach",
            lambda named: LARS(
                sgd(named, foreach=True), lars_filter=adapt_all, backend="torch", fused=False
            ),
        )
    )
    if numpy_ok:
        methods.append(
            (
                "NumPy reference",
                lambda named: LARS(sgd(named), lars_filter=adapt_all, backend="numpy"),
            )
        )
    return methods


SGD_FOREACH = "torch SGD(foreach=True), no LARS"


def _baselines() -> list[tuple[str, Callable[[Named], Any]]]:
    """Rows that do less than a LARS step, as a floor: torch's own multi-tensor momentum SGD
    over the same tensors (what a LARS step adds its work to)."""
    return [
        (
            SGD_FOREACH,
            lambda named: torch.optim.SGD(
                named, lr=LR, momentum=MOMENTUM, weight_decay=WD, foreach=True
            ),
        )
    ]


def run_set(
    name: str,
    repeats: int,
    triad: float,
    timm: tuple[type | None, str],
    numpy_reference: bool = True,
    progress: Callable[[str], None] = print,
) -> list[Row]:
    shapes = SETS[name]()
    n_params = sum(math.prod(s) for _, s in shapes)
    rows: list[Row] = []
    fused_ms = None
    for method, build in _methods(timm[0], numpy_reference) + _baselines():
        progress(f"  {name}: {method} ...")
        opt = build(make_params(shapes))
        t = median_time(opt.step, repeats)
        mem = peak_extra_mb(opt.step)
        ms = t * 1e3
        fused_ms = ms if method == "lars_npu fused" else fused_ms
        gbs = 28 * n_params / t / 1e9
        speedup = None if fused_ms is None else ms / fused_ms
        note = timm[1] if method == TIMM else ""
        if method == SGD_FOREACH:
            note = "plain SGD, a floor: not a LARS step"
        rows.append(
            Row(name, len(shapes), n_params, method, ms, speedup, gbs, gbs / triad, mem, note)
        )
        del opt
        gc.collect()
    if timm[0] is None:
        rows.append(Row(name, len(shapes), n_params, TIMM, None, None, None, None, None, timm[1]))
    return rows


def run_bf16_row(name: str, repeats: int, triad: float) -> Row | None:
    """The fused kernel with bf16 gradients and fp32 parameters/momentum (called directly: torch
    itself keeps .grad in the parameter's dtype). 24 bytes per parameter counted."""
    if native() is None:
        return None
    from ._fused import FusedCall

    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) * 0.05 for _, s in SETS[name]()]
    grads = [(torch.randn(p.shape, generator=gen) * 1e-3).bfloat16() for p in params]
    bufs: list[torch.Tensor | None] = [torch.zeros_like(p) for p in params]
    n = len(params)
    call = FusedCall(
        params=params,
        grads=grads,
        bufs=bufs,
        first=np.zeros(n, np.uint8),
        adapt=np.ones(n, np.uint8),  # every tensor adapted, as in the other rows
        has_m=np.ones(n, np.uint8),
        wd=np.full(n, WD),
        lr=np.full(n, LR),
        mu=np.full(n, MOMENTUM),
        nesterov=np.zeros(n, np.uint8),
        hyper=Hyper(EPS, COEF),
        mixed_grad_dtypes=True,
    )
    backend = get_backend("cpu")
    t = median_time(lambda: backend.fused_sgd_(call), repeats)
    mem = peak_extra_mb(lambda: backend.fused_sgd_(call))
    n_params = sum(p.numel() for p in params)
    gbs = 24 * n_params / t / 1e9
    method = "lars_npu fused, bf16 grad / fp32 param"
    note = "24 B/param counted"
    return Row(name, n, n_params, method, t * 1e3, None, gbs, gbs / triad, mem, note)


class Progress:
    """The benchmark's progress on stderr: a tqdm bar on a terminal (each message starts the
    next of ``total`` units), plain lines otherwise (logs, pipes, tests)."""

    def __init__(self, total: int, show: bool | None = None) -> None:
        from tqdm.auto import tqdm

        disable = None if show is None else not show
        self.bar = tqdm(total=total, unit="row", file=sys.stderr, disable=disable, leave=False)
        self.started = False

    def __call__(self, message: str) -> None:
        if self.bar.disable:
            print(message, file=sys.stderr, flush=True)
            return
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_description(message.strip().rstrip(" ."))

    def close(self) -> None:
        if self.started and not self.bar.disable:
            self.bar.update(1)
        self.bar.close()


def count_steps(sets: list[str], numpy_reference: bool, timm: bool) -> int:
    """How many progress messages :func:`run` sends: the triad, then every row it measures."""
    per_set = 4 + timm + numpy_reference  # fused, unfused, torch backend, SGD (+ timm, NumPy)
    bf16 = native() is not None
    return 1 + sum(per_set + (bf16 and name != "tiny") for name in sets)


def run(
    sets: list[str],
    repeats: int = 7,
    numpy_reference: bool = True,
    progress: Callable[[str], None] = print,
    timm: tuple[type | None, str] | None = None,
) -> Result:
    """All sets in this process (the triad is measured first, in the same process)."""
    timm = load_timm_lars() if timm is None else timm
    progress(f"triad ({torch.get_num_threads()} threads) ...")
    triad = triad_gbs(repeats)
    res = Result(machine_info(), triad)
    for name in sets:
        res.rows += run_set(name, repeats, triad, timm, numpy_reference, progress)
        if name != "tiny" and native() is not None:
            progress(f"  {name}: lars_npu fused, bf16 grad / fp32 param ...")
            row = run_bf16_row(name, repeats, triad)
            if row is not None:
                res.rows.append(row)
    return res


def run_isolated(
    sets: list[str],
    repeats: int = 7,
    numpy_reference: bool = True,
    progress: Callable[[str], None] = print,
) -> Result:
    """Each set in a fresh process (its own triad too), so that the heap left by one set (10,000
    small tensors allocated among BERT-sized holes run ~2x slower) does not skew the next."""
    import subprocess

    merged: Result | None = None
    for name in sets:
        progress(f"{name} (own process) ...")
        cmd = [sys.executable, "-m", "lars_npu.bench", "--child", "--set", name]
        cmd += ["--repeats", str(repeats)] + ([] if numpy_reference else ["--no-numpy"])
        # the child's stderr is ours: its progress bar (on a terminal) or lines show as it runs
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        d = json.loads(out)
        rows = [Row(**r) for r in d["rows"]]
        for r in rows:
            r.note = (r.note + f" triad {d['triad_gbs']:.1f}").strip()
        if merged is None:
            merged = Result(d["machine"], d["triad_gbs"], rows)
        else:
            merged.rows += rows
    assert merged is not None
    return merged


def emu_cost_view(sets: list[str], *, as_json: bool = False) -> int:
    """`--backend emu`: one fused fp32 step per set on the AscendC emulation, and the cost model
    its counters imply (a model, not a measurement: see lars_npu._backends.emu.step_cost)."""
    from ._backends import emu

    C = native()
    if C is None or not hasattr(C, "emu_launch"):
        print("lars-npu bench: error: the AscendC emulation is not built", file=sys.stderr)
        return 2
    costs = [
        emu.step_cost(name, [math.prod(s) for _, s in SETS[name]()]) for name in dict.fromkeys(sets)
    ]
    if as_json:
        print(json.dumps([{**asdict(c), "bytes_per_param": c.bytes_per_param} for c in costs]))
    else:
        print(emu.format_costs(costs))
    return 0


HELP = "time one LARS + momentum-SGD step against timm, torch ops, NumPy"
DESCRIPTION = (
    "Time one optimizer step (median of --repeats) of lars_npu fused/unfused, timm Lars (if it "
    "imports here), torch ops (lars_npu's torch backend + SGD foreach) and the NumPy reference, "
    "on the parameter shapes of ResNet-50, BERT-large and 10,000 tiny tensors; bandwidth vs a "
    "STREAM-like triad. Prints a table (--json: the JSON instead); writes the JSON to a file "
    "only with --out."
)


def add_arguments(p: Any) -> None:
    """``lars-npu bench`` / ``python benchmarks/bench_step.py``: one definition of the options."""
    import argparse

    p.add_argument(
        "--set",
        action="append",
        choices=list(SETS),
        help="shape set (repeatable; default: resnet50, bert-large and tiny)",
    )
    p.add_argument("--repeats", type=int, default=7, help="timed steps per method (median)")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy reference column")
    p.add_argument(
        "--same-process", action="store_true", help="all sets in this process (default: one each)"
    )
    p.add_argument(
        "--backend",
        choices=["emu"],
        help="emu: no timing; per step, the NPU cost model from the AscendC emulation's counters "
        "(launches, GM bytes/param, scalar GM reads/core, model time at 1.6 TB/s) — a model, "
        "not a hardware measurement",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--out", metavar="PATH", help="also write the JSON results to PATH")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def run_cli(args: Any) -> int:
    """Run ``lars-npu bench`` with parsed arguments (see :func:`add_arguments`)."""
    if args.backend == "emu":
        return emu_cost_view(args.set or ["resnet50", "bert-large"], as_json=args.json)
    try:  # user errors before any timing: one line on stderr, exit status 2
        bounded_int("--repeats", args.repeats, 1, 10_000)
        out = writable_file("--out", args.out) if args.out and not args.child else None
    except UsageError as exc:
        print(f"lars-npu bench: error: {exc}", file=sys.stderr)
        return 2
    sets = list(dict.fromkeys(args.set or ["resnet50", "bert-large", "tiny"]))
    numpy_reference = not args.no_numpy
    if args.child or args.same_process or len(sets) == 1:
        timm = load_timm_lars()
        bar = Progress(count_steps(sets, numpy_reference, timm[0] is not None))
        try:
            res = run(sets, args.repeats, numpy_reference, progress=bar, timm=timm)
        finally:
            bar.close()
        if args.child:
            print(json.dumps(to_json(res)))
            return 0
    else:  # one process per set, each with its own bar; here, one line per set
        lines = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
        res = run_isolated(sets, args.repeats, numpy_reference, progress=lines)
    data = json.dumps(to_json(res), indent=2)
    print(data if args.json else format_table(res))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(data)
        print(f"\nJSON: {out}", file=sys.stderr if args.json else sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=DESCRIPTION, allow_abbrev=False)
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
