"""``lars-npu`` / ``python -m lars_npu``: info, check, bench and demo.

- ``info``: versions (lars_npu, python, torch, torch_npu, CANN), backends and why a missing one is
  missing, the native module's build options, thread count.
- ``check``: every available backend (and the fused step) against the NumPy reference.
- ``bench``: the optimizer-step benchmark (:mod:`lars_npu.bench`).
- ``demo``: large-batch training of a small CNN with momentum SGD vs LARS (:mod:`lars_npu.demo`).

With no subcommand it prints ``info`` and runs a quick ``check`` of every available backend.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import __version__
from ._backends import BackendUnavailableError, all_backends, available_backends, resolve
from ._backends._native import (
    FALLBACK_COST,
    native,
    native_error,
    torch_npu,
    torch_npu_error,
)
from ._usage import (
    UsageError,
    bounded_float,
    bounded_int,
    max_threads,
    probe_device,
    writable_dir,
)
from .check import Row, jobs, rows_as_dicts, run_check, summarize_rows

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}

# Where a CANN toolkit says its version (relative to its root), newest layout first.
_CANN_ROOT_VARS = ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_CANN_PACKAGE_PATH")
_CANN_DEFAULT_ROOT = "/usr/local/Ascend/ascend-toolkit/latest"
_CANN_VERSION_FILES = (
    "*-linux/ascend_toolkit_install.info",
    "compiler/version.info",
    "runtime/version.info",
    "version.info",
)


def cann_version() -> tuple[str | None, str]:
    """The installed CANN toolkit's version and where it was read, or (None, why not).

    Looks at ``$ASCEND_TOOLKIT_HOME``, ``$ASCEND_HOME_PATH``, ``$ASCEND_CANN_PACKAGE_PATH`` and
    the default install path, for the ``version=`` line of the toolkit's info files."""
    roots = [os.environ[v] for v in _CANN_ROOT_VARS if os.environ.get(v)]
    roots.append(_CANN_DEFAULT_ROOT)
    for root in dict.fromkeys(roots):
        base = Path(root)
        if not base.is_dir():
            continue
        for pattern in _CANN_VERSION_FILES:
            for f in sorted(base.glob(pattern)):
                try:
                    text = f.read_text(errors="replace")
                except OSError:
                    continue
                m = re.search(r"^\s*version\s*=\s*(\S+)", text, re.IGNORECASE | re.MULTILINE)
                if m:
                    return m.group(1), str(f)
        return None, f"no version file under {base}"
    return None, "no CANN toolkit found (set ASCEND_TOOLKIT_HOME or source CANN's set_env.sh)"


# -- info --------------------------------------------------------------------------------------


def info_dict() -> dict[str, Any]:
    C = native()
    backends = {}
    for name, b in all_backends().items():
        ok, why = b.available()
        backends[name] = {"available": ok, "reason": why}
    npu = torch_npu()
    cann, cann_where = cann_version()
    return {
        "lars_npu": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_npu": getattr(npu, "__version__", None) if npu else None,
        "torch_npu_reason": "" if npu else torch_npu_error(),
        "cann": cann,
        "cann_source": cann_where,
        "backends": backends,
        "native_build": dict(C.build_info()) if C else None,
        "native_reason": "" if C else native_error(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def print_info(d: dict[str, Any]) -> None:
    print(f"lars_npu {d['lars_npu']}  (python {d['python']}, torch {d['torch']})")
    print(f"torch_npu: {d['torch_npu'] or 'not available — ' + d['torch_npu_reason']}")
    if d["cann"]:
        print(f"CANN toolkit: {d['cann']}  ({d['cann_source']})")
    else:
        print(f"CANN toolkit: not found — {d['cann_source']}")
    nb = d["native_build"]
    if nb:
        print(
            f"native module lars_npu._C: {nb.get('compiler')}, OpenMP={nb.get('openmp')}, "
            f"build={nb.get('build_type')}, CANN={nb.get('cann')}"
        )
        shown = {"compiler", "openmp", "build_type", "cann"}
        rest = ", ".join(f"{k}={v}" for k, v in nb.items() if k not in shown)
        if rest:
            print(f"  build options: {rest}")
    else:
        print(f"native module lars_npu._C: not available — {d['native_reason']}")
        print(f"  {FALLBACK_COST}")
    print(f"threads (torch.get_num_threads): {d['torch_threads']} of {d['cpu_count']} CPUs")
    print("backends:")
    for name, b in d["backends"].items():
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        print(f"  {name:<6} {state}")


def cmd_info(args: argparse.Namespace) -> int:
    d = info_dict()
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print_info(d)
    return 0


# -- check -------------------------------------------------------------------------------------


def print_rows(rows: list[Row], verbose: bool) -> None:
    """A summary table (one line per backend × op × dtype: cases, worst errors, tolerance,
    result), then every failing row (every row with ``verbose``)."""
    groups = summarize_rows(rows)
    print(
        f"{'backend':<8}{'op':<16}{'dtype':<10}{'rows':>5}{'max abs err':>13}{'max rel err':>13}"
        f"{'rtol':>9}  result"
    )
    for g in groups:
        result = "pass" if g.failed == 0 else f"FAIL ({g.failed} of {g.rows})"
        print(
            f"{g.backend:<8}{g.op:<16}{g.dtype:<10}{g.rows:>5}{g.max_abs:>13.2e}"
            f"{g.max_rel:>13.2e}{g.rtol:>9.1e}  {result}"
        )
    shown = rows if verbose else [r for r in rows if not r.ok]
    if shown:
        print()
        print("every row:" if verbose else "failing rows:")
        print(
            f"{'backend':<8}{'op':<16}{'case':<50}{'max_abs':>10}{'max_rel':>10}{'rtol':>9}  result"
        )
        for r in shown:
            print(
                f"{r.backend:<8}{r.op:<16}{r.case:<50}{r.max_abs:>10.2e}{r.max_rel:>10.2e}"
                f"{r.rtol:>9.1e}  {'pass' if r.ok else 'FAIL'}"
            )
    print(
        "(rel err = |got - ref| / the size of the terms, e.g. λ·(|g| + wd·|w|): the quantity "
        "rtol bounds, so a row passes when rel err <= rtol)"
    )
    by_backend: dict[str, list[int]] = {}
    for r in rows:
        s = by_backend.setdefault(r.backend, [0, 0])
        s[0 if r.ok else 1] += 1
    print()
    print("summary vs the NumPy reference:")
    for name, (ok, bad) in by_backend.items():
        print(f"  {name:<6} {ok} passed, {bad} failed")


def _check_with_progress(
    names: list[str], quick: bool, dtypes: list[torch.dtype] | None, show: bool | None = None
) -> list[Row]:
    from tqdm.auto import tqdm

    todo = jobs(names, quick, dtypes)
    disable = None if show is None else not show  # None: only on a terminal
    with tqdm(
        total=len(todo), desc="check", unit="case", leave=False, file=sys.stderr, disable=disable
    ) as bar:
        return run_check(names, quick=quick, dtypes=dtypes, progress=bar.update)


def _backends_or_exit(requested: list[str] | None) -> list[str] | None:
    """The backends to check, or None after printing why one cannot be (unknown/unavailable)."""
    if not requested:
        return available_backends()
    known = all_backends()
    unknown = [n for n in requested if n not in known]
    if unknown:
        print(
            f"error: unknown backend(s) {unknown}; known: {sorted(known)}; available here: "
            f"{available_backends()}",
            file=sys.stderr,
        )
        return None
    missing = [n for n in requested if not known[n].available()[0]]
    if missing:
        for n in missing:
            print(
                f"error: backend {n!r} is not available here: {known[n].available()[1]}",
                file=sys.stderr,
            )
        print(f"available here: {available_backends()} (see lars-npu info)", file=sys.stderr)
        return None
    return list(dict.fromkeys(requested))


def cmd_check(args: argparse.Namespace) -> int:
    names = _backends_or_exit(args.backend)
    if names is None:
        return 2
    dtypes = [DTYPES[d] for d in args.dtype] if args.dtype else None
    rows = _check_with_progress(names, args.quick, dtypes, show=args.progress)
    failed = sum(not r.ok for r in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "backends": names,
                    "failed": failed,
                    "passed": len(rows) - failed,
                    "summary": rows_as_dicts(summarize_rows(rows)),
                    "rows": rows_as_dicts(rows),
                },
                indent=2,
            )
        )
    else:
        print_rows(rows, args.verbose)
    return 1 if failed else 0


# -- bench -------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    argv = [x for s in (args.set or []) for x in ("--set", s)]
    argv += ["--repeats", str(args.repeats), "--json", args.json_out]
    if args.no_numpy:
        argv.append("--no-numpy")
    if args.same_process:
        argv.append("--same-process")
    if args.backend:
        argv += ["--backend", args.backend]
    return bench.main(argv)


# -- demo --------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    cfg = demo.DemoConfig(
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
    bounded_int("--threads", cfg.threads, 1, max(max_threads(), demo.DemoConfig().threads))
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
        summary = demo.run(cfg, out, show_progress=args.progress, log=log)
    except demo.MissingDemoDependency as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(demo.to_json(summary))
        return 0
    print()
    print(demo.format_table(summary))
    print()
    print(demo.verdict(summary))
    files = summary["files"]
    print(f"plot: {files['plot']}\nJSON: {files['json']}")
    return 0


# -- the parser --------------------------------------------------------------------------------


def cmd_default(args: argparse.Namespace) -> int:
    print_info(info_dict())
    print()
    print(
        "quick check of every available backend against the NumPy reference "
        "(lars-npu check --verbose for every row):"
    )
    rows = _check_with_progress(available_backends(), quick=True, dtypes=None)
    print_rows(rows, verbose=False)
    return 1 if any(not r.ok for r in rows) else 0


def _progress_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_const",
        const=True,
        default=None,
        help="always show progress bars (default: only on a terminal)",
    )
    g.add_argument(
        "--no-progress", dest="progress", action="store_const", const=False, help="never"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lars-npu",
        description=(
            "LARS for PyTorch with MindSpore nn.LARS semantics: prove it is right on this "
            "machine (check), measure it (bench), see what it is for (demo). "
            "With no command: info, then a quick check."
        ),
        epilog="Run 'lars-npu COMMAND --help' for a command's options.",
    )
    p.add_argument("--version", action="version", version=f"lars_npu {__version__}")
    sub = p.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    pi = sub.add_parser(
        "info",
        help="versions, backends and why a missing one is missing, build options",
        description="Versions (lars_npu, python, torch, torch_npu, CANN), every backend and "
        "why a missing one is missing, the native module's build options, thread count.",
    )
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.set_defaults(func=cmd_info)

    pc = sub.add_parser(
        "check",
        help="compare every available backend with the NumPy reference; exit 1 on a failure",
        description="Compare square_sum_all, lars_update, the multi-tensor rewrite and the fused "
        "LARS + momentum-SGD step of each backend with the NumPy reference, over shapes × "
        "dtypes × hyper-parameters (use_clip, weight decay, lr 0, guard_zero_norm) and zero-norm "
        "edge cases. Exit status: 0 all pass, 1 a row failed, 2 a backend cannot run here.",
    )
    pc.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        help=f"only this backend (repeatable; known: {', '.join(all_backends())})",
    )
    pc.add_argument("--dtype", action="append", choices=list(DTYPES), help="only this dtype")
    pc.add_argument(
        "--quick", action="store_true", help="fewer shapes (no tensors above 561 elements)"
    )
    pc.add_argument("--json", action="store_true", help="print JSON (summary and every row)")
    pc.add_argument("--verbose", "-v", action="store_true", help="print every row")
    _progress_flags(pc)
    pc.set_defaults(func=cmd_check)

    pb = sub.add_parser(
        "bench",
        help="time one LARS + momentum-SGD step against timm, torch _foreach, NumPy",
        description="Time one optimizer step (median of --repeats) of lars_npu fused/unfused, "
        "timm Lars (if installed), a torch _foreach LARS and the NumPy reference, on the "
        "parameter shapes of ResNet-50, BERT-large and 10,000 tiny tensors; bandwidth vs a "
        "STREAM-like triad.",
    )
    from .bench import SETS

    pb.add_argument(
        "--set",
        action="append",
        choices=list(SETS),
        help="shape set (repeatable; default: resnet50, bert-large and tiny)",
    )
    pb.add_argument("--repeats", type=int, default=7, help="timed steps per method (median)")
    pb.add_argument("--no-numpy", action="store_true", help="skip the NumPy reference column")
    pb.add_argument(
        "--same-process", action="store_true", help="all sets in this process (default: one each)"
    )
    pb.add_argument(
        "--backend",
        choices=["emu"],
        help="emu: no timing; per step, the NPU cost model from the AscendC emulation's counters "
        "(launches, GM bytes/param, scalar GM reads/core, model time at 1.6 TB/s) — a model, "
        "not a hardware measurement",
    )
    pb.add_argument(
        "--json",
        dest="json_out",
        metavar="PATH",
        nargs="?",
        const="-",
        default="benchmarks/results/bench_step.json",
        help="where to write the JSON results ('-' or no PATH: print JSON instead of the table; "
        "default: %(default)s)",
    )
    pb.set_defaults(func=cmd_bench)

    from .demo import DemoConfig

    d = DemoConfig()
    pd = sub.add_parser(
        "demo",
        help="train a small CNN at large batch: momentum SGD vs LARS(SGD), with plots",
        description="Train a small CNN on scikit-learn's bundled handwritten digits (no "
        "download) at a large batch with momentum SGD and with LARS(SGD), under the same "
        "linearly scaled learning rate and warm-up, plus small-batch SGD as a baseline; print "
        "a table, write a PNG plot (curves and LARS's per-layer trust ratios) and a JSON "
        "summary. Seeded: the same command gives the same numbers. Needs the demo extra: "
        'pip install "lars-npu[demo]".',
    )
    pd.add_argument(
        "--epochs", type=int, metavar="N", default=d.epochs, help="default: %(default)s"
    )
    pd.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        default=d.batch_size,
        help="large batch (default: %(default)s)",
    )
    pd.add_argument(
        "--base-lr",
        type=float,
        metavar="LR",
        default=d.base_lr,
        help=f"SGD lr at batch {d.base_batch}, scaled by batch/{d.base_batch} "
        "(default: %(default)s)",
    )
    pd.add_argument(
        "--warmup-epochs",
        type=float,
        metavar="E",
        default=d.warmup_epochs,
        help="default: %(default)s",
    )
    pd.add_argument(
        "--coefficient",
        type=float,
        metavar="θ",
        default=d.coefficient,
        help="LARS θ (default: %(default)s)",
    )
    pd.add_argument("--no-clip", action="store_true", help="LARS without use_clip")
    pd.add_argument(
        "--no-baseline", action="store_true", help=f"skip the batch-{d.base_batch} SGD run"
    )
    pd.add_argument("--seed", type=int, metavar="S", default=d.seed, help="default: %(default)s")
    pd.add_argument(
        "--threads",
        type=int,
        metavar="T",
        default=d.threads,
        help="torch threads (default: %(default)s)",
    )
    pd.add_argument(
        "--backend",
        metavar="NAME",
        default=d.backend,
        help="LARS backend (default: %(default)s: the fastest)",
    )
    pd.add_argument(
        "--device", metavar="D", default=d.device, help="torch device (default: %(default)s)"
    )
    pd.add_argument(
        "--out",
        default="lars-npu-demo",
        metavar="DIR",
        help="directory for demo.png and demo.json (default: %(default)s)",
    )
    pd.add_argument("--json", action="store_true", help="print the JSON summary, not the table")
    _progress_flags(pd)
    pd.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "func", None) is None:
            return cmd_default(args)
        return int(args.func(args))
    except UsageError as exc:
        print(f"lars-npu: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lars-npu check -v | head`: the reader left before the end
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush is quiet
        return 1  # the output was cut short: do not claim success


if __name__ == "__main__":
    raise SystemExit(main())
