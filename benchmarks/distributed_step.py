"""One optimizer step at the same model size: DDP + LARS (every rank steps the full tensors) vs
sharded LARS (every rank steps its shards and joins one all-reduce of 2·N sums), on CPU with gloo.
Two sharded layouts: FSDP2's (DTensor parameters and gradients, Shard(0), made with
``distribute_tensor`` as ``fully_shard`` makes them) and marked flat shards. After the all-reduce
the sharded step is one fused operator call with the global sums
(``torch.ops.lars_npu.fused_step_(..., given_sums=...)``); the ``fused=False`` row is the rewrite
then the inner SGD's step, which it replaces. Prints a table of median ms per ``opt.step()``,
collectives per step and all-reduced bytes.

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


def _params(name: str, layout: str) -> list[tuple[str, torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(0)
    mesh = None
    if layout == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    out = []
    for n, s in bench.SETS[name]():
        p = torch.nn.Parameter(torch.randn(s, generator=gen) * 0.05)
        g = torch.randn(s, generator=gen) * 1e-3
        if layout == "flat":
            p, g = flat_shard(p), flat_shard(g)
        elif layout == "fsdp2":
            from torch.distributed.tensor import Shard, distribute_tensor

            p = torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)]))
            g = distribute_tensor(g, mesh, [Shard(0)])
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


def step_ms(
    name: str, layout: str, repeats: int, fused: bool | None = None
) -> tuple[float, dict[str, int]]:
    params = _params(name, layout)
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt = lars_npu.LARS(sgd, lars_filter=bench.adapt_all, fused=fused)  # shards: sharded step
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
    # fused=False: the rewrite of the local gradients, then the inner SGD's step (what the
    # sharded step did before the fused given-sums operator)
    for name in args.set or ["resnet50", "bert-large"]:
        n = len(bench.SETS[name]())
        for label, layout, fused in (("DDP + LARS (full tensors)", "full", None),
                                     ("FSDP2 LARS (DTensor shards)", "fsdp2", None),
                                     ("FSDP2 LARS, fused=False", "fsdp2", False),
                                     ("sharded LARS (flat shards)", "flat", None)):  # fmt: skip
            ms, counts = step_ms(name, layout, args.repeats, fused)
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
