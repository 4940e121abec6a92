"""One optimizer step at the same model size: DDP + LARS (every rank steps the full tensors) vs
sharded LARS (every rank steps its flat shards and joins one all-reduce of 2·N sums), on CPU with
gloo. Prints a table of median ms per ``opt.step()``, collectives per step and all-reduced bytes.

    torchrun --nproc_per_node=2 benchmarks/distributed_step.py [--set resnet50] [--repeats 9]

Only the optimizer step is timed (gradients are given): the backward's own collectives (DDP's
all-reduce, FSDP's reduce-scatter) are the engines' and the same with any optimizer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

import lars_npu
from lars_npu import bench
from lars_npu.distributed import flat_shard, run_and_exit


def _params(name: str, shard: bool) -> list[tuple[str, torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for n, s in bench.SETS[name]():
        p = torch.nn.Parameter(torch.randn(s, generator=gen) * 0.05)
        g = torch.randn(s, generator=gen) * 1e-3
        if shard:
            p, g = flat_shard(p), flat_shard(g)
        p.grad = g
        out.append((n, p))
    return out


def _count_collectives() -> tuple[dict[str, int], object]:
    counts: dict[str, int] = {}
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        counts["all_reduce"] = counts.get("all_reduce", 0) + 1
        counts["bytes"] = counts.get("bytes", 0) + tensor.numel() * tensor.element_size()
        return real(tensor, *args, **kwargs)

    dist.all_reduce = counting  # type: ignore[assignment]
    return counts, real


def step_ms(name: str, shard: bool, repeats: int) -> tuple[float, dict[str, int]]:
    params = _params(name, shard)
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt = lars_npu.LARS(sgd, lars_filter=bench.adapt_all)  # flat shards: ShardedLARS
    opt.step()
    opt.step()
    counts, real = _count_collectives()
    times = []
    try:
        for _ in range(repeats):
            dist.barrier()
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
    finally:
        dist.all_reduce = real  # type: ignore[assignment]
    per_step = {k: v // repeats for k, v in counts.items()}
    return statistics.median(times) * 1e3, per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", choices=sorted(bench.SETS))
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    rows = []
    for name in args.set or ["resnet50", "bert-large"]:
        n = len(bench.SETS[name]())
        for label, shard in (("DDP + LARS (full tensors)", False),
                             ("sharded LARS (flat shards)", True)):  # fmt: skip
            ms, counts = step_ms(name, shard, args.repeats)
            t = torch.tensor([ms])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the slowest rank's median
            rows.append((name, n, label, float(t), counts.get("all_reduce", 0),
                         counts.get("bytes", 0)))  # fmt: skip
    if rank == 0:
        print(f"{world} ranks (gloo, 1 thread each), median of {args.repeats} steps, slowest rank")
        print(f"{'set':10s} {'tensors':>7s}  {'mode':28s} {'ms/step':>9s} {'all-reduces':>11s} "
              f"{'bytes':>8s}")  # fmt: skip
        for name, n, label, ms, calls, nbytes in rows:
            print(f"{name:10s} {n:7d}  {label:28s} {ms:9.2f} {calls:11d} {nbytes:8d}")
    dist.destroy_process_group()


if __name__ == "__main__":
    run_and_exit(main)  # os._exit at the end: docs/distributed.md, "Exiting a gloo process"
