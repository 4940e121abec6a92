"""HF accelerate (a row of the engine table in docs/distributed.md): its multi-CPU mode is DDP,
with LARS wrapped in accelerate's AcceleratedOptimizer by ``accelerator.prepare``; launched with
torchrun at world sizes 2 and 4, it must equal one process on the whole batch. Skipped where
accelerate is not installed (CI installs it: it is in the ``test`` extra)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests import _torchrun_worker as worker

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="accelerate is not installed"
)


@pytest.mark.parametrize("world", [2, 4])
def test_accelerate_multi_cpu_equals_one_process(world, tmp_path):
    want = worker.reference()
    for r, res in enumerate(worker.launch("accelerate", world, tmp_path / "res")):
        x = res["accelerate"]
        assert x["raised"] is None, f"rank {r}: {x.get('message')}"
        for n, w in want.items():
            torch.testing.assert_close(x["params"][n], w, rtol=1e-5, atol=1e-6, msg=f"rank {r} {n}")
