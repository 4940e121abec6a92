"""Median time of one LARS(SGD) step on the fused and the unfused path, per shape set: the cost of
the per-step checks (README "The fused step"). Run it from two checkouts in turn to compare them
in one session: `PYTHONPATH=. python benchmarks/step_paths.py [--set resnet50] [--repeats 9]`."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lars_npu
from lars_npu import bench


def step_ms(name: str, fused: bool, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    params = [
        (n, torch.nn.Parameter(torch.randn(s, generator=gen) * 0.05)) for n, s in bench.SETS[name]()
    ]
    for _, p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt = lars_npu.LARS(sgd, fused=fused, lars_filter=lambda x: True)
    opt.step()
    opt.step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", choices=sorted(bench.SETS))
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    print(f"threads={torch.get_num_threads()}  lars_npu={lars_npu.__file__}")
    print(f"{'set':<11} {'fused ms':>9} {'unfused ms':>11}")
    for name in args.set or ["resnet50", "bert-large", "tiny"]:
        f = step_ms(name, True, args.repeats)
        u = step_ms(name, False, args.repeats)
        print(f"{name:<11} {f:>9.2f} {u:>11.2f}")


if __name__ == "__main__":
    main()
