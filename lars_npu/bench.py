"""Benchmark of one LARS + momentum-SGD step (``python benchmarks/bench_step.py``).

For a set of parameter shapes (ResNet-50: 25.6M params / 161 tensors; BERT-large: ~335M / 391;
10,000 tensors of 64 floats) it times one optimizer step (median of ``repeats`` after warm-up) of:

- lars_npu fused: ``LARS(SGD(momentum=0.9))``, one native call per step;
- lars_npu unfused: ``LARS(SGD(...), fused=False)``, native rewrite then ``SGD.step()``;
- timm ``Lars`` (its defaults, foreach on), when timm is installed (benchmark-only extra);
- a torch ``_foreach`` LARS (:class:`ForeachLars`, written here as the best torch-ops peer);
- the NumPy reference (the ``numpy`` backend's fused step).

It reports the fused step's speed-up over each, its bandwidth counted at 28 bytes per fp32
parameter (pass 1 reads w, g; pass 2 reads w, g, m and writes m, w), that bandwidth over a
STREAM-like triad (``a = b + s·c``, 12 bytes per fp32 element) measured in the same run, and the
peak extra resident memory of a step (Linux VmHWM after a reset). No assertions: numbers only.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import LARS
from ._backends import Hyper, get_backend
from ._backends._native import native
from ._usage import UsageError, bounded_int, writable_file

# -- parameter shapes --------------------------------------------------------------------------


def resnet50_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """ResNet-50 (He et al. 2016) parameter shapes: 161 tensors, 25,557,032 parameters."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("conv1.weight", (64, 3, 7, 7))]
    shapes += [("bn1.weight", (64,)), ("bn1.bias", (64,))]
    cin = 64
    for li, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        for b in range(blocks):
            pre = f"layer{li + 1}.{b}"
            cout = width * 4
            shapes.append((f"{pre}.conv1.weight", (width, cin, 1, 1)))
            shapes += [(f"{pre}.bn1.weight", (width,)), (f"{pre}.bn1.bias", (width,))]
            shapes.append((f"{pre}.conv2.weight", (width, width, 3, 3)))
            shapes += [(f"{pre}.bn2.weight", (width,)), (f"{pre}.bn2.bias", (width,))]
            shapes.append((f"{pre}.conv3.weight", (cout, width, 1, 1)))
            shapes += [(f"{pre}.bn3.weight", (cout,)), (f"{pre}.bn3.bias", (cout,))]
            if b == 0:
                shapes.append((f"{pre}.downsample.0.weight", (cout, cin, 1, 1)))
                shapes += [
                    (f"{pre}.downsample.1.weight", (cout,)),
                    (f"{pre}.downsample.1.bias", (cout,)),
                ]
            cin = cout
    shapes += [("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]
    return shapes


def bert_large_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """BERT-large (Devlin et al. 2019): 24 layers, hidden 1024, 391 tensors, ~335M parameters."""
    h, inter = 1024, 4096
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("embeddings.word_embeddings.weight", (30522, h)),
        ("embeddings.position_embeddings.weight", (512, h)),
        ("embeddings.token_type_embeddings.weight", (2, h)),
        ("embeddings.LayerNorm.weight", (h,)),
        ("embeddings.LayerNorm.bias", (h,)),
    ]
    for i in range(24):
        pre = f"encoder.layer.{i}"
        for m in ("query", "key", "value"):
            shapes += [
                (f"{pre}.attention.self.{m}.weight", (h, h)),
                (f"{pre}.attention.self.{m}.bias", (h,)),
            ]
        shapes += [
            (f"{pre}.attention.output.dense.weight", (h, h)),
            (f"{pre}.attention.output.dense.bias", (h,)),
            (f"{pre}.attention.output.LayerNorm.weight", (h,)),
            (f"{pre}.attention.output.LayerNorm.bias", (h,)),
            (f"{pre}.intermediate.dense.weight", (inter, h)),
            (f"{pre}.intermediate.dense.bias", (inter,)),
            (f"{pre}.output.dense.weight", (h, inter)),
            (f"{pre}.output.dense.bias", (h,)),
            (f"{pre}.output.LayerNorm.weight", (h,)),
            (f"{pre}.output.LayerNorm.bias", (h,)),
        ]
    shapes += [("pooler.dense.weight", (h, h)), ("pooler.dense.bias", (h,))]
    return shapes


def tiny_shapes() -> list[tuple[str, tuple[int, ...]]]:
    return [(f"t{i}.weight", (64,)) for i in range(10_000)]


SETS: dict[str, Callable[[], list[tuple[str, tuple[int, ...]]]]] = {
    "resnet50": resnet50_shapes,
    "bert-large": bert_large_shapes,
    "tiny": tiny_shapes,
}

LR, MOMENTUM, WD, COEF, EPS = 0.1, 0.9, 5e-5, 1e-3, 1e-5


def adapt_all(info: object) -> bool:
    """The benchmark's filter: adapt every tensor, as timm Lars and the _foreach peer do (so all
    methods do the same work)."""
    return True


# -- peers -------------------------------------------------------------------------------------


class ForeachLars(torch.optim.Optimizer):
    """LARS + momentum SGD in torch ``_foreach`` ops (the fastest torch-ops formulation we know):
    norms with ``_foreach_norm``, λ for all tensors at once, then fused-by-op list updates."""

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float,
        weight_decay: float,
        coefficient: float = COEF,
        epsilon: float = EPS,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                weight_decay=weight_decay,
                coefficient=coefficient,
                epsilon=epsilon,
            ),
        )

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            gs = [p.grad for p in ps]
            wd, mu, lr = group["weight_decay"], group["momentum"], group["lr"]
            w_n = torch.stack(torch._foreach_norm(ps))
            g_n = torch.stack(torch._foreach_norm(gs))
            lam = group["coefficient"] * w_n / (g_n + wd * w_n + group["epsilon"])
            d = torch._foreach_add(gs, ps, alpha=wd)
            torch._foreach_mul_(d, list(lam.unbind()))
            bufs = [self.state[p].get("momentum_buffer") for p in ps]
            if all(b is not None for b in bufs):
                torch._foreach_mul_(bufs, mu)
                torch._foreach_add_(bufs, d)
            else:
                bufs = [x.clone() for x in d]
                for p, b in zip(ps, bufs, strict=True):
                    self.state[p]["momentum_buffer"] = b
            torch._foreach_add_(ps, bufs, alpha=-lr)


def load_timm_lars() -> tuple[type | None, str]:
    """timm's ``Lars`` class, loaded from its own file so that timm's package import (which
    needs torchvision) is not required. Install with ``pip install --no-deps timm``."""
    try:
        dist = importlib.metadata.distribution("timm")
    except importlib.metadata.PackageNotFoundError:
        return None, "timm not installed (pip install --no-deps timm)"
    base = Path(str(dist.locate_file("timm/optim")))
    if not (base / "lars.py").exists():
        return None, f"timm {dist.version} has no optim/lars.py"
    pkg = types.ModuleType("_lars_npu_timm_optim")
    pkg.__path__ = [str(base)]  # type: ignore[attr-defined]
    sys.modules[pkg.__name__] = pkg
    spec = importlib.util.spec_from_file_location(f"{pkg.__name__}.lars", base / "lars.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:  # a timm layout we do not know
        return None, f"timm {dist.version}: {exc}"
    return mod.Lars, f"timm {dist.version}"


# -- measurement helpers -----------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _exact_rss() -> None:
    """Make freed memory leave the process at once (glibc: a fixed mmap threshold of 128 KiB and
    a trim), so that resident memory tracks live allocations and the peak is the true peak."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, no dynamic raising
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_extra_mb(fn: Callable[[], None]) -> float | None:
    """Peak resident memory during fn() above the resident memory before it, in MB."""
    gc.collect()
    _exact_rss()
    if not _reset_peak():
        return None
    before = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(0.0, (peak - before) / 1024)


def median_time(fn: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def triad_gbs(repeats: int, elements: int = 1 << 25) -> float:
    """STREAM-like triad a = b + s·c on fp32 (12 bytes per element counted), torch threads."""
    a = torch.empty(elements)
    b = torch.rand(elements)
    c = torch.rand(elements)
    t = median_time(lambda: torch.add(b, c, alpha=3.0, out=a), repeats)
    return 12 * elements / t / 1e9


def make_params(
    shapes: list[tuple[str, tuple[int, ...]]], seed: int = 0
) -> list[tuple[str, torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.05)
        p.grad = torch.randn(shape, generator=gen) * 1e-3
        out.append((name, p))
    return out


# -- the benchmark -----------------------------------------------------------------------------


@dataclass
class Row:
    set: str
    tensors: int
    params: int
    method: str
    ms: float | None
    speedup_of_fused: float | None
    gbs_28: float | None
    of_triad: float | None
    peak_extra_mb: float | None
    note: str = ""


@dataclass
class Result:
    machine: dict[str, Any]
    triad_gbs: float
    rows: list[Row] = field(default_factory=list)


def _methods(
    timm_lars: type | None, numpy_ok: bool
) -> list[tuple[str, Callable[[list[tuple[str, torch.nn.Parameter]]], Any]]]:
    def sgd(named):
        return torch.optim.SGD(named, lr=LR, momentum=MOMENTUM, weight_decay=WD)

    methods: list[tuple[str, Callable[[list[tuple[str, torch.nn.Parameter]]], Any]]] = [
        ("lars_npu fused", lambda named: LARS(sgd(named), lars_filter=adapt_all)),
        (
            "lars_npu unfused",
            lambda named: LARS(sgd(named), lars_filter=adapt_all, fused=False),
        ),
    ]
    if timm_lars is not None:
        methods.append(
            (
                "timm Lars",
                lambda named: timm_lars(
                    [p for _, p in named], lr=LR, momentum=MOMENTUM, weight_decay=WD
                ),
            )
        )
    methods.append(
        (
            "torch _foreach LARS",
            lambda named: ForeachLars(
                [p for _, p in named], lr=LR, momentum=MOMENTUM, weight_decay=WD
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


def run_set(
    name: str,
    repeats: int,
    triad: float,
    timm_lars: type | None,
    timm_note: str,
    numpy_reference: bool = True,
    progress: Callable[[str], None] = print,
) -> list[Row]:
    shapes = SETS[name]()
    n_params = sum(math.prod(s) for _, s in shapes)
    rows: list[Row] = []
    fused_ms = None
    for method, build in _methods(timm_lars, numpy_reference):
        progress(f"  {name}: {method} ...")
        named = make_params(shapes)
        opt = build(named)
        t = median_time(opt.step, repeats)
        mem = peak_extra_mb(opt.step)
        ms = t * 1e3
        if method == "lars_npu fused":
            fused_ms = ms
        gbs = 28 * n_params / t / 1e9
        rows.append(
            Row(
                name,
                len(shapes),
                n_params,
                method,
                ms,
                None if fused_ms is None else ms / fused_ms,
                gbs,
                gbs / triad,
                mem,
                timm_note if method == "timm Lars" else "",
            )
        )
        del opt, named
        gc.collect()
    if timm_lars is None:
        rows.append(
            Row(name, len(shapes), n_params, "timm Lars", None, None, None, None, None, timm_note)
        )
    return rows


def run_bf16_row(name: str, repeats: int, triad: float) -> Row | None:
    """The fused kernel with bf16 gradients and fp32 parameters/momentum (called directly: torch
    itself keeps .grad in the parameter's dtype). 24 bytes per parameter counted."""
    if native() is None:
        return None
    from ._fused import FusedCall

    shapes = SETS[name]()
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) * 0.05 for _, s in shapes]
    grads = [(torch.randn(s, generator=gen) * 1e-3).bfloat16() for _, s in shapes]
    bufs = [torch.zeros_like(p) for p in params]
    n = len(params)
    adapt = np.ones(len(params), dtype=np.uint8)  # every tensor adapted, as in the other rows
    call = FusedCall(
        params=params,
        grads=grads,
        bufs=bufs,
        first=np.zeros(n, np.uint8),
        adapt=adapt,
        has_m=np.ones(n, np.uint8),
        wd=np.where(adapt, WD, 0.0),
        lr=np.full(n, LR),
        mu=np.full(n, MOMENTUM),
        nesterov=np.zeros(n, np.uint8),
        hyper=Hyper(EPS, COEF),
        cache={},
        mixed_grad_dtypes=True,
    )
    backend = get_backend("cpu")
    t = median_time(lambda: backend.fused_sgd_(call), repeats)
    mem = peak_extra_mb(lambda: backend.fused_sgd_(call))
    n_params = sum(p.numel() for p in params)
    gbs = 24 * n_params / t / 1e9
    return Row(
        name,
        n,
        n_params,
        "lars_npu fused, bf16 grad / fp32 param",
        t * 1e3,
        None,
        gbs,
        gbs / triad,
        mem,
        "24 B/param counted",
    )


def machine_info() -> dict[str, Any]:
    C = native()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "llc_bytes": int(C.last_level_cache_bytes()) if C else None,
        "native": dict(C.build_info()) if C else None,
    }


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


def count_steps(sets: list[str], numpy_reference: bool) -> int:
    """How many progress messages :func:`run` sends: the triad, then every row it measures."""
    timm = load_timm_lars()[0] is not None
    per_set = 3 + timm + numpy_reference  # fused, unfused, _foreach (+ timm, NumPy)
    bf16 = native() is not None
    return 1 + sum(per_set + (bf16 and name != "tiny") for name in sets)


def run(
    sets: list[str],
    repeats: int = 7,
    numpy_reference: bool = True,
    progress: Callable[[str], None] = print,
) -> Result:
    """All sets in this process (the triad is measured first, in the same process)."""
    timm_lars, timm_note = load_timm_lars()
    progress(f"triad ({torch.get_num_threads()} threads) ...")
    triad = triad_gbs(repeats)
    res = Result(machine_info(), triad)
    for name in sets:
        res.rows += run_set(name, repeats, triad, timm_lars, timm_note, numpy_reference, progress)
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
        cmd = [
            sys.executable,
            "-m",
            "lars_npu.bench",
            "--child",
            "--set",
            name,
            "--repeats",
            str(repeats),
        ] + (["--no-numpy"] if not numpy_reference else [])
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


def format_table(res: Result) -> str:
    llc = res.machine.get("llc_bytes")
    llc_txt = f"{llc / 2**20:.0f} MiB" if llc else "unknown"
    head = (
        f"threads={res.machine['threads']}  LLC={llc_txt}  "
        f"triad={res.triad_gbs:.1f} GB/s (a = b + s*c, fp32, 12 B/elem; with one process per"
        f" set, each row's note gives its own process's triad, used for /triad)\n"
    )
    cols = (
        f"{'set':<11}{'method':<40}{'ms/step':>10}{'fused x':>9}{'GB/s@28B':>10}"
        f"{'/triad':>8}{'peak+MB':>9}  note"
    )
    lines = [head, cols, "-" * len(cols)]

    def f(v: float | None, fmt: str) -> str:
        width = int(fmt.split(".")[0])
        return format(v, fmt) if v is not None else "-".rjust(width)

    for r in res.rows:
        lines.append(
            f"{r.set:<11}{r.method:<40}{f(r.ms, '10.2f')}{f(r.speedup_of_fused, '9.2f')}"
            f"{f(r.gbs_28, '10.2f')}{f(r.of_triad, '8.2f')}{f(r.peak_extra_mb, '9.1f')}"
            f"  {r.note}"
        )
    return "\n".join(lines)


def to_json(res: Result) -> dict[str, Any]:
    return {
        "machine": res.machine,
        "triad_gbs": res.triad_gbs,
        "rows": [asdict(r) for r in res.rows],
    }


def emu_cost_view(sets: list[str], *, as_json: bool = False) -> int:
    """`--backend emu`: one fused fp32 step per set on the AscendC emulation, and the cost model
    its counters imply (a model, not a measurement: see lars_npu._backends.emu.step_cost)."""
    from ._backends import emu

    C = native()
    if C is None or not hasattr(C, "emu_launch"):
        print("lars-npu bench: error: the AscendC emulation is not built", file=sys.stderr)
        return 2
    costs = []
    for name in dict.fromkeys(sets):
        numels = [int(np.prod(shape)) for _, shape in SETS[name]()]
        costs.append(emu.step_cost(name, numels))
    if as_json:
        print(json.dumps([{**asdict(c), "bytes_per_param": c.bytes_per_param} for c in costs]))
    else:
        print(emu.format_costs(costs))
    return 0


HELP = "time one LARS + momentum-SGD step against timm, torch _foreach, NumPy"
DESCRIPTION = (
    "Time one optimizer step (median of --repeats) of lars_npu fused/unfused, timm Lars (if "
    "installed), a torch _foreach LARS and the NumPy reference, on the parameter shapes of "
    "ResNet-50, BERT-large and 10,000 tiny tensors; bandwidth vs a STREAM-like triad. Prints a "
    "table (--json: the JSON instead); writes the JSON to a file only with --out."
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
        bar = Progress(count_steps(sets, numpy_reference))
        try:
            res = run(sets, args.repeats, numpy_reference, progress=bar)
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

    ap = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
