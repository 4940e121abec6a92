"""LARS on several devices / nodes with torch.distributed: one ``lars_npu.LARS`` line per engine.

    torchrun --nproc_per_node=2 examples/distributed_lars.py              # CPU: gloo
    torchrun --nproc_per_node=8 examples/distributed_lars.py              # Ascend (torch_npu): hccl
                                                                          # CUDA: nccl
    torchrun --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 \\
             --nproc_per_node=8 examples/distributed_lars.py              # node 0 of 2 (then 1)

Modes (``--mode``, default ``all``):
  ddp    DistributedDataParallel + ``lars_npu.LARS``: nothing to change, DDP averages the
         gradients before ``step`` and every rank computes the same λ.
  fsdp2  ``torch.distributed.fsdp.fully_shard`` (DTensor parameters) + the same ``LARS`` line: it
         sees the shards and sums the norms over the ranks (one all-reduce of 2·N values a step).
  hsdp   FSDP2 on a 2-D (replicate, shard) mesh (even world sizes): the same line.
  fsdp1  ``FullyShardedDataParallel(use_orig_params=True)``, then ``mark_fsdp1(model)``, then the
         same line.
  zero   ``ZeroRedundancyOptimizer(optimizer_class=lars_npu.LARSSGD)`` on a DDP model: ZeRO
         shards whole parameters, each rank's LARS steps its share.
  flat   each rank keeps a flat shard of every parameter (and of the momentum), made with
         ``lars_npu.distributed.flat_shard``: the same line again.

All modes train the same model on the same data (each rank gets its slice of every global batch),
so every rank prints the same checksum of the full parameters, and the modes agree to fp32
rounding. Tested here with gloo on CPU; the hccl / nccl paths are the same code.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

import lars_npu
from lars_npu.distributed import flat_shard, mark_fsdp1, run_and_exit

BATCH_PER_RANK = 16


def pick_backend(requested: str) -> tuple[str, torch.device]:
    """hccl on Ascend (torch_npu), nccl on CUDA, gloo on CPU; --backend overrides."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if requested in ("auto", "hccl") and importlib.util.find_spec("torch_npu") is not None:
        try:
            import torch_npu  # noqa: F401  (registers the "npu" device and the hccl backend)

            if torch.npu.is_available():
                torch.npu.set_device(local_rank)
                return "hccl", torch.device("npu", local_rank)
        except (ImportError, OSError, RuntimeError) as exc:  # no CANN on this host
            if requested == "hccl":
                raise SystemExit(f"hccl requested but torch_npu is unusable: {exc}") from exc
    if requested in ("auto", "nccl") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return "nccl", torch.device("cuda", local_rank)
    if requested not in ("auto", "gloo"):
        raise SystemExit(f"backend {requested!r} is not available here")
    return "gloo", torch.device("cpu")


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.LayerNorm(64), nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )  # fmt: skip


def local_batch(step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of the step's global batch (the same global batch in every mode)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(BATCH_PER_RANK * world, 32, generator=gen)
    y = torch.randint(0, 10, (BATCH_PER_RANK * world,), generator=gen)
    rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
    return x[rows].to(device), y[rows].to(device)


def inner_sgd(named_params) -> torch.optim.SGD:
    return torch.optim.SGD(named_params, lr=0.2, momentum=0.9, weight_decay=5e-4)


LARS_KW = dict(coefficient=0.01, lars_filter="exclude_bias_and_norm")  # a filter by name


def global_loss(model: nn.Module, step: int, device: torch.device) -> float:
    x, y = local_batch(step, device)
    loss = nn.functional.cross_entropy(model(x), y).detach()
    dist.all_reduce(loss)
    return float(loss) / dist.get_world_size()


def train_ddp(device: torch.device, steps: int) -> tuple[float, list[torch.Tensor]]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model().to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type != "cpu" else None)
    opt = lars_npu.LARS(inner_sgd(ddp.named_parameters()), **LARS_KW)
    for step in range(steps):
        x, y = local_batch(step, device)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()  # DDP all-reduces the gradients
        opt.step()
    return global_loss(model, steps, device), [p.detach() for p in model.parameters()]


def _gather_flat(shard: torch.Tensor, full: torch.Tensor) -> None:
    """Write every rank's flat shard into ``full`` (shards may differ in size by one)."""
    world = dist.get_world_size()
    sizes = [t.numel() for t in torch.tensor_split(torch.empty(full.numel()), world)]
    padded = torch.zeros(max(sizes), dtype=shard.dtype, device=shard.device)
    padded[: shard.numel()] = shard.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    flat = torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])
    full.detach().copy_(flat.view_as(full))


def train_flat(device: torch.device, steps: int) -> tuple[float, list[torch.Tensor]]:
    """ZeRO-style: a full replica computes; the optimizer holds only this rank's flat shards."""
    model = make_model().to(device)
    shards = {n: flat_shard(p) for n, p in model.named_parameters()}
    opt = lars_npu.LARS(inner_sgd(list(shards.items())), **LARS_KW)  # becomes ShardedLARS
    world = dist.get_world_size()
    for step in range(steps):
        x, y = local_batch(step, device)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            dist.all_reduce(p.grad)  # (a real ZeRO-2 would reduce-scatter)
            shards[n].grad = flat_shard(p.grad / world)
        opt.step()  # one all-reduce of 2·N square sums, then LARS + SGD on the shards
        for n, p in model.named_parameters():
            _gather_flat(shards[n], p)
    return global_loss(model, steps, device), [p.detach() for p in model.parameters()]


def train_fsdp2(
    device: torch.device, steps: int, mesh_shape: tuple[int, ...] | None = None
) -> tuple[float, list[torch.Tensor]] | None:
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        return None
    shape = mesh_shape or (dist.get_world_size(),)
    names = ("replicate", "shard") if len(shape) == 2 else ("shard",)
    mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
    model = make_model().to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = lars_npu.LARS(inner_sgd(model.named_parameters()), **LARS_KW)  # DTensors: sharded
    for step in range(steps):
        x, y = local_batch(step, device)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # FSDP reduce-scatters gradients
        opt.step()
    full = [p.full_tensor().detach() for p in model.parameters()]  # before a forward unshards
    return global_loss(model, steps, device), full


def train_hsdp(device: torch.device, steps: int) -> tuple[float, list[torch.Tensor]] | None:
    world = dist.get_world_size()
    if world % 2:
        return None
    return train_fsdp2(device, steps, (2, world // 2))  # (replicate, shard)


def train_fsdp1(device: torch.device, steps: int) -> tuple[float, list[torch.Tensor]]:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = make_model().to(device)
    fsdp = FSDP(model, use_orig_params=True, device_id=device)
    mark_fsdp1(fsdp)  # records each parameter's full shape on its flat slice
    opt = lars_npu.LARS(inner_sgd(fsdp.named_parameters()), **LARS_KW)
    for step in range(steps):
        x, y = local_batch(step, device)
        opt.zero_grad()
        nn.functional.cross_entropy(fsdp(x), y).backward()
        opt.step()
    with FSDP.summon_full_params(fsdp):
        full = [p.detach().clone() for p in model.parameters()]
    return global_loss(fsdp, steps, device), full


def train_zero(device: torch.device, steps: int) -> tuple[float, list[torch.Tensor]]:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model().to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type != "cpu" else None)
    opt = ZeroRedundancyOptimizer(
        ddp.parameters(), optimizer_class=lars_npu.LARSSGD, lr=0.2, momentum=0.9,
        weight_decay=5e-4, **LARS_KW,
    )  # fmt: skip
    for step in range(steps):
        x, y = local_batch(step, device)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()  # each rank's LARSSGD steps its share, then ZeRO broadcasts it
    return global_loss(model, steps, device), [p.detach() for p in model.parameters()]


MODES: dict[str, Callable[[torch.device, int], tuple[float, list[torch.Tensor]] | None]] = {
    "ddp": train_ddp,
    "fsdp2": train_fsdp2,
    "hsdp": train_hsdp,
    "fsdp1": train_fsdp1,
    "zero": train_zero,
    "flat": train_flat,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=[*MODES, "all"], default="all")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--backend", choices=["auto", "hccl", "nccl", "gloo"], default="auto")
    args = ap.parse_args()

    backend, device = pick_backend(args.backend)
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get(
            "LOCAL_WORLD_SIZE", "1"))))  # fmt: skip
    if rank == 0:
        print(f"{world} ranks, backend {backend}, device type {device.type}")
    params: dict[str, list[torch.Tensor]] = {}
    for name in MODES if args.mode == "all" else [args.mode]:
        out = MODES[name](device, args.steps)
        if out is None:
            if rank == 0:
                print(f"{name}: not available in this torch")
            continue
        loss, ps = out
        params[name] = ps
        checksum = sum(float(p.double().abs().sum()) for p in ps)
        print(f"[rank {rank}/{world}] {name:5s} loss {loss:.6f}  |params| checksum {checksum:.6f}")
    dist.barrier()
    if rank == 0 and len(params) > 1:
        first, *rest = params
        for name in rest:
            diff = max(
                float((a.cpu() - b.cpu()).abs().max())
                for a, b in zip(params[first], params[name], strict=True)
            )
            print(f"max |{name} - {first}| over all parameters: {diff:.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    # Not `main()`: gloo's worker threads outlive destroy_process_group(), and one that releases a
    # tensor while Python tears the interpreter down aborts the process after all the work
    # ("terminate called without an active exception", exit -6, a few runs in a hundred on a
    # busy machine; pytorch/pytorch#190489). run_and_exit(main) runs main, then does what a
    # normal exit does before that teardown (joins threads, runs atexit, flushes stdout/stderr)
    # and ends with os._exit: 0, or main's traceback and 1 if it raised. docs/distributed.md,
    # "Exiting a gloo process", has the same for your own script.
    run_and_exit(main)
