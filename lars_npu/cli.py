"""``lars-npu`` / ``python -m lars_npu``: info and check (bench and demo arrive with their issues).

With no subcommand it prints ``info`` and runs a quick ``check`` of every available backend.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from typing import Any

import torch

from . import __version__
from ._backends import all_backends, available_backends
from ._backends._native import native, torch_npu, torch_npu_error
from .check import Row, rows_as_dicts, run_check

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def info_dict() -> dict[str, Any]:
    C = native()
    backends = {}
    for name, b in all_backends().items():
        ok, why = b.available()
        backends[name] = {"available": ok, "reason": why}
    npu = torch_npu()
    return {
        "lars_npu": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_npu": getattr(npu, "__version__", None) if npu else None,
        "torch_npu_reason": "" if npu else torch_npu_error(),
        "backends": backends,
        "native_build": dict(C.build_info()) if C else None,
        "torch_threads": torch.get_num_threads(),
    }


def print_info(d: dict[str, Any]) -> None:
    print(f"lars_npu {d['lars_npu']}  (python {d['python']}, torch {d['torch']})")
    print(f"torch_npu: {d['torch_npu'] or 'not available — ' + d['torch_npu_reason']}")
    if d["native_build"]:
        nb = d["native_build"]
        print(
            f"native module lars_npu._C: {nb.get('compiler')}, OpenMP={nb.get('openmp')}, "
            f"build={nb.get('build_type')}, CANN={nb.get('cann')}"
        )
    print(f"threads (torch.get_num_threads): {d['torch_threads']}")
    print("backends:")
    for name, b in d["backends"].items():
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        print(f"  {name:<6} {state}")


def print_rows(rows: list[Row], verbose: bool) -> None:
    shown = rows if verbose else [r for r in rows if not r.ok]
    if shown:
        print(
            f"{'backend':<7} {'op':<15} {'case':<48} {'max_abs':>9} {'max_rel':>9} "
            f"{'rtol':>8}  result"
        )
        for r in shown:
            print(
                f"{r.backend:<7} {r.op:<15} {r.case:<48} {r.max_abs:9.2e} {r.max_rel:9.2e} "
                f"{r.rtol:8.1e}  {'pass' if r.ok else 'FAIL'}"
            )
    by_backend: dict[str, list[int]] = {}
    for r in rows:
        s = by_backend.setdefault(r.backend, [0, 0])
        s[0 if r.ok else 1] += 1
    print("summary vs the NumPy reference:")
    for name, (ok, bad) in by_backend.items():
        print(f"  {name:<6} {ok} passed, {bad} failed")


def cmd_info(args: argparse.Namespace) -> int:
    d = info_dict()
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print_info(d)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    names = args.backend or available_backends()
    unknown = [n for n in names if n not in available_backends()]
    if unknown:
        print(
            f"error: backend(s) not available here: {unknown}; available: {available_backends()}",
            file=sys.stderr,
        )
        return 2
    dtypes = [DTYPES[d] for d in args.dtype] if args.dtype else None
    rows = run_check(names, quick=args.quick, dtypes=dtypes)
    failed = sum(not r.ok for r in rows)
    if args.json:
        print(json.dumps({"rows": rows_as_dicts(rows), "failed": failed}, indent=2))
    else:
        print_rows(rows, args.verbose)
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    argv = [x for s in (args.set or []) for x in ("--set", s)]
    argv += ["--repeats", str(args.repeats), "--json", args.json_out]
    if args.no_numpy:
        argv.append("--no-numpy")
    return bench.main(argv)


def cmd_default(args: argparse.Namespace) -> int:
    print_info(info_dict())
    print()
    print(
        "quick check of every available backend against the NumPy reference "
        "(lars-npu check --verbose for every row):"
    )
    rows = run_check(available_backends(), quick=True)
    print_rows(rows, verbose=False)
    return 1 if any(not r.ok for r in rows) else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lars-npu",
        description="LARS for PyTorch (MindSpore nn.LARS semantics): backends and checks.",
    )
    p.add_argument("--version", action="version", version=f"lars_npu {__version__}")
    sub = p.add_subparsers(dest="command")
    pi = sub.add_parser("info", help="versions, backends and why a missing one is missing")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.set_defaults(func=cmd_info)
    pc = sub.add_parser(
        "check",
        help="compare every available backend with the NumPy reference; exit 1 on a failure",
    )
    pc.add_argument("--backend", action="append", help="only this backend (repeatable)")
    pc.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="only this dtype")
    pc.add_argument("--quick", action="store_true", help="fewer shapes")
    pc.add_argument("--json", action="store_true", help="print JSON")
    pc.add_argument("--verbose", "-v", action="store_true", help="print every row")
    pc.set_defaults(func=cmd_check)
    pb = sub.add_parser(
        "bench", help="time one LARS + momentum-SGD step against timm, torch _foreach, NumPy"
    )
    pb.add_argument(
        "--set",
        action="append",
        choices=["resnet50", "bert-large", "tiny"],
        help="shape set (repeatable; default: all three)",
    )
    pb.add_argument("--repeats", type=int, default=7, help="timed steps per method (median)")
    pb.add_argument("--no-numpy", action="store_true", help="skip the NumPy reference column")
    pb.add_argument(
        "--json",
        dest="json_out",
        default="benchmarks/results/bench_step.json",
        help="where to write the JSON results",
    )
    pb.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "func", None) is None:
        return cmd_default(args)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
