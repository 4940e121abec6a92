"""``lars-npu check``: the command around :mod:`lars_npu.check` (options, progress, the table)."""

from __future__ import annotations

import json
import sys
from typing import Any

import torch

from .._backends import all_backends, available_backends
from ..check import Row, jobs, rows_as_dicts, run_check, summarize_rows

HELP = "compare every available backend with the NumPy reference; exit 1 on a failure"
DESCRIPTION = (
    "Compare square_sum_all, lars_update, the multi-tensor rewrite and the fused LARS + "
    "momentum-SGD step of each backend with the NumPy reference, over shapes × dtypes × "
    "hyper-parameters (use_clip, weight decay, lr 0, guard_zero_norm) and zero-norm edge cases. "
    "Exit status: 0 all pass, 1 a row failed, 2 a backend cannot run here."
)
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def add_arguments(p: Any) -> None:
    from .._usage import progress_flags

    p.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        help=f"only this backend (repeatable; known: {', '.join(all_backends())})",
    )
    p.add_argument("--dtype", action="append", choices=list(DTYPES), help="only this dtype")
    p.add_argument(
        "--quick", action="store_true", help="fewer shapes (no tensors above 561 elements)"
    )
    p.add_argument("--json", action="store_true", help="print JSON (summary and every row)")
    p.add_argument("--verbose", "-v", action="store_true", help="print every row")
    progress_flags(p)


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


def with_progress(
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


def run_cli(args: Any) -> int:
    names = _backends_or_exit(args.backend)
    if names is None:
        return 2
    dtypes = [DTYPES[d] for d in args.dtype] if args.dtype else None
    rows = with_progress(names, args.quick, dtypes, show=args.progress)
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
