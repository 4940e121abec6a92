"""torch.compile(opt.step) against the eager step: median ms of one LARS(SGD) step on the shapes
of ResNet-50 (and, with --set, the other sets), eager and compiled (inductor, CPU), in one
process, interleaved rounds. The compiled step is one torch.ops.lars_npu.fused_step_ node
(docs/operators.md); this shows what tracing costs or saves around it.

    python benchmarks/compile_step.py [--set resnet50] [--repeats 9] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lars_npu
from lars_npu import bench


def make(name: str) -> tuple[lars_npu.LARS, list[torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(0)
    params = [
        (n, torch.nn.Parameter(torch.randn(s, generator=gen) * 0.05)) for n, s in bench.SETS[name]()
    ]
    for _, p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    return lars_npu.LARS(sgd, lars_filter=lambda x: True), [p for _, p in params]


def median_ms(step, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", choices=sorted(bench.SETS))
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms per step, "
          f"median over {args.rounds} interleaved rounds")  # fmt: skip
    print(f"{'set':10s} {'tensors':>7s} {'eager':>9s} {'compiled':>9s} {'compiled/eager':>15s}")
    for name in args.set or ["resnet50"]:
        eager, _ = make(name)
        compiled, _ = make(name)
        step = torch.compile(compiled.step)
        for opt in (eager, compiled):  # first steps: buffers made, graphs compiled
            for _ in range(2):
                (step if opt is compiled else opt.step)()
        e_ms, c_ms = [], []
        for _ in range(args.rounds):
            e_ms.append(median_ms(eager.step, args.repeats))
            c_ms.append(median_ms(step, args.repeats))
        e, c = statistics.median(e_ms), statistics.median(c_ms)
        n = len(bench.SETS[name]())
        print(f"{name:10s} {n:7d} {e:9.2f} {c:9.2f} {c / e:15.2f}")


if __name__ == "__main__":
    main()
