"""One rank of the engine checks that need their own launcher (tests/test_deepspeed.py and
tests/test_accelerate.py launch it with torchrun: ``_torchrun_worker.py ENGINE OUT``).

Each configuration builds the same small model (a LayerNorm, biases, two Linear layers), gives
``lars_npu.LARS(SGD(...))`` to the engine (DeepSpeed's client optimizer; HF accelerate's
``prepare``), and trains four steps on this rank's rows of each batch. It records the parameters
after training, or the error and whether anything changed. Results go to ``<out>.<rank>.pt``.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Any

import torch
from torch import nn

try:  # run as a script by torchrun (tests/ on sys.path), or imported as tests._torchrun_worker
    from _problem import ROWS, batch, make_net
except ImportError:
    from tests._problem import ROWS, batch, make_net

STEPS = 4


def make_opt(model: nn.Module, per_param: bool) -> Any:
    from lars_npu import LARS

    if per_param:  # one group per parameter: the case that used to be silently wrong
        params: Any = [{"params": [(n, p)]} for n, p in model.named_parameters()]
    else:
        params = model.named_parameters()
    inner = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    return LARS(inner, coefficient=0.01)


def reference() -> dict[str, torch.Tensor]:
    """One process, the whole batch: what every configuration that runs must equal."""
    model = make_net()
    opt = make_opt(model, per_param=False)
    for step in range(STEPS):
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


CONFIGS = {  # name: (ZeRO stage, one group per parameter)
    "stage0": (0, False),
    "stage1": (1, False),
    "stage2": (2, False),
    "stage2_per_param": (2, True),
}


def run(name: str, rank: int, world: int) -> dict[str, Any]:
    import deepspeed

    stage, per_param = CONFIGS[name]
    model = make_net()
    opt = make_opt(model, per_param)
    config = {
        "train_micro_batch_size_per_gpu": ROWS // world,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,  # DeepSpeed's default clips at 1.0
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        for step in range(STEPS):
            x, y = batch(step, rank, world)
            loss = nn.functional.cross_entropy(engine(x), y)
            engine.backward(loss)
            engine.step()
    except Exception as exc:
        unchanged = all(torch.equal(before[n], p.detach()) for n, p in model.named_parameters())
        return {"raised": type(exc).__name__, "message": str(exc), "unchanged": unchanged}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return {"raised": None, "params": params}


def run_accelerate(rank: int, world: int) -> dict[str, Any]:
    """HF accelerate on CPU (its multi-CPU mode is DDP): ``prepare`` wraps LARS in its
    AcceleratedOptimizer."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = make_net()
    opt = make_opt(model, per_param=False)
    model, opt = accelerator.prepare(model, opt)
    for step in range(STEPS):
        x, y = batch(step, rank, world)
        loss = nn.functional.cross_entropy(model(x), y)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
    inner = accelerator.unwrap_model(model)
    return {"raised": None, "params": {n: p.detach().clone() for n, p in inner.named_parameters()}}


def launch(engine: str, world: int, out: Any) -> list[dict[str, Any]]:
    """Run this file under torchrun with ``world`` CPU processes; every rank's results."""
    import subprocess
    from pathlib import Path

    import pytest

    from tests.conftest import free_port

    root = Path(__file__).resolve().parent.parent
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    env.pop("LARS_NPU_BACKEND", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
        "--master-addr=127.0.0.1", f"--master-port={port}", __file__, engine, str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-6000:]}")  # fmt: skip
    return [torch.load(f"{out}.{r}.pt", weights_only=False) for r in range(world)]


def main(engine: str, out: str) -> None:
    import torch.distributed as dist

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    if engine == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    results: dict[str, Any] = {}
    names = list(CONFIGS) if engine == "deepspeed" else ["accelerate"]
    for name in names:
        try:
            results[name] = run(name, rank, world) if engine == "deepspeed" else (
                run_accelerate(rank, world))  # fmt: skip
        except Exception:
            results[name] = {"raised": "setup", "message": traceback.format_exc()}
    torch.save(results, f"{out}.{rank}.pt")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    from lars_npu.distributed import run_and_exit

    # os._exit after the results file is written and the group destroyed: gloo's threads can
    # abort a normal interpreter exit (docs/distributed.md, "Exiting a gloo process")
    run_and_exit(main, sys.argv[1], sys.argv[2])
