"""The private torch APIs lars_npu relies on (all in lars_npu._compat) still exist on this torch
in the shape used: a torch that changed one fails here, by name, instead of lars_npu quietly
taking a slower or plainer fallback."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import lars_npu
from lars_npu import _compat


@pytest.mark.parametrize("feature", sorted(_compat.features()))
def test_the_private_api_is_there(feature):
    assert _compat.features()[feature], f"torch {torch.__version__} changed {feature}"


def test_no_private_torch_api_outside_the_compat_module():
    """Private torch names (torch._x, ._private methods of torch objects) appear only in
    lars_npu/_compat.py."""
    import re
    from pathlib import Path

    root = Path(lars_npu.__file__).parent
    pattern = re.compile(
        r"torch\._(?!_)|\._(values|indices|foreach_\w+|debug_\w+|optimizer_\w+|patch_step_function)\b"
        r"|__wrapped__|sys\._getframe|fsdp\._flat_param|_fsdp_flattened|\._handle\b"
        r"|_use_orig_params|\.(_params|_shapes)\b|_reduce_scatter_base|ProcessGroupGloo\._"
    )
    offenders = []
    for f in sorted(root.rglob("*.py")):
        if f.name == "_compat.py":
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                offenders.append(f"{f.relative_to(root)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_step_without_global_hooks_runs_the_instance_hooks_only():
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    p = nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    sgd = torch.optim.SGD([p], lr=0.5)
    seen: list[str] = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: seen.append("global pre")),
        register_optimizer_step_post_hook(lambda o, a, k: seen.append("global post")),
        sgd.register_step_pre_hook(lambda o, a, k: seen.append("pre")),
        sgd.register_step_post_hook(lambda o, a, k: seen.append("post")),
    ]
    try:
        _compat.step_without_global_hooks(sgd)
    finally:
        for h in handles:
            h.remove()
    assert seen == ["pre", "post"]
    assert torch.equal(p.detach(), torch.full((2,), 0.5))


def test_lars_signature_is_visible():
    """help(), IDEs and tools that read signatures see MindSpore's parameters and defaults."""
    sig = inspect.signature(lars_npu.LARS)
    assert list(sig.parameters)[:5] == [
        "optimizer", "epsilon", "coefficient", "use_clip", "lars_filter",
    ]  # fmt: skip
    assert sig.parameters["coefficient"].default == 0.001
    assert "process_group" in inspect.signature(lars_npu.ShardedLARS).parameters


def test_below_the_torch_floor_lars_refuses_naming_the_minimum(monkeypatch):
    from lars_npu import optim

    monkeypatch.setattr(
        optim, "torch_floor_error", lambda: "lars_npu needs torch >= 2.6, and this is torch 2.5.1"
    )
    sgd = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(RuntimeError, match=r"torch >= 2\.6.*2\.5\.1"):
        lars_npu.LARS(sgd, lars_filter="exclude_bias_and_norm")


def test_a_sharded_lars_warns_of_a_torch_that_mis_scales_fsdp2_gradients(monkeypatch, one_rank):
    """Where this torch would hand FSDP2's optimizer wrong gradients (lars_npu._upstream), a
    sharded LARS says so at construction, on every rank, rather than train on them quietly."""
    from lars_npu.distributed import engine, flat_shard

    seen: list[list[str]] = []

    def defects(params: list[torch.Tensor]) -> list[str]:
        seen.append([type(p).__name__ for p in params])
        return ["gloo's reduce_scatter_tensor ignores ReduceOp.AVG (simulated)"]

    monkeypatch.setattr(engine, "dtensor_defects", defects)
    p = flat_shard(nn.Parameter(torch.ones(4)))
    sgd = torch.optim.SGD([("w", p)], lr=0.1)
    with pytest.warns(RuntimeWarning, match=r"LARS: gloo's reduce_scatter_tensor ignores"):
        opt = lars_npu.LARS(sgd, lars_filter="exclude_bias_and_norm")
    assert seen == [["Parameter"]] and opt._engine is not None
