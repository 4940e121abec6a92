"""lars_npu._upstream: what it says about the running torch, and what it would say about older
and defective ones (simulated by taking the feature away or by standing in for the gloo test).
The multi-process side (FSDP2 on gloo, where the gradient itself shows the defect) runs in
tests/test_distributed.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lars_npu import _upstream

gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


@pytest.fixture
def fresh_probe():
    """Forget the cached gloo test before and after (a test may stand in for its parts)."""
    _upstream.gloo_reduce_scatter_averages.cache_clear()
    yield
    _upstream.gloo_reduce_scatter_averages.cache_clear()


def test_release_reads_the_leading_numbers():
    assert _upstream._release("2.8.0+cu128") == (2, 8, 0)
    assert _upstream._release("2.10.0a0+git1234") == (2, 10, 0)
    assert _upstream._release("2.9") >= _upstream.GLOO_AVG_FIXED > _upstream._release("2.8.9")
    assert _upstream._release("nightly") == ()


# -- the floor: torch 2.6 ---------------------------------------------------------------------


def test_this_torch_is_above_the_floor():
    assert _upstream.torch_floor_error() is None


def test_a_torch_whose_optimizers_take_no_names_is_below_the_floor(monkeypatch):
    """torch 2.5's add_param_group refused a (name, parameter) pair with a TypeError."""

    def add_param_group(self, param_group):
        for p in param_group["params"]:
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is "
                    + type(p).__name__
                )
        self.param_groups.append(param_group)

    monkeypatch.setattr(torch.optim.Optimizer, "add_param_group", add_param_group)
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    msg = _upstream.torch_floor_error()
    assert msg is not None
    assert "torch >= 2.6" in msg and "torch 2.5.1" in msg and "named_parameters()" in msg


def test_names_that_are_taken_but_dropped_are_below_the_floor_too(monkeypatch):
    def add_param_group(self, param_group):
        self.param_groups.append({"params": [p for _, p in param_group["params"]]})

    monkeypatch.setattr(torch.optim.Optimizer, "add_param_group", add_param_group)
    assert _upstream.torch_floor_error() is not None


def test_the_floor_check_does_not_load_dynamo():
    """Cheap enough for import time: torch's own add_param_group without its decorator."""
    import subprocess
    import sys

    code = (
        "import sys; from lars_npu import _upstream; assert _upstream.torch_floor_error() is None; "
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out


# -- FSDP2 on CPU: torch.cpu.Stream.record_event ------------------------------------------------


def test_cpu_fsdp2_stream_gap_follows_the_feature(monkeypatch):
    real = _upstream.cpu_fsdp2_stream_gap()
    assert (real is None) == hasattr(torch.cpu.Stream, "record_event")
    monkeypatch.delattr(torch.cpu.Stream, "record_event", raising=False)
    msg = _upstream.cpu_fsdp2_stream_gap()
    assert msg is not None and "record_event" in msg and "torch >= 2.7" in msg


# -- gloo's reduce-scatter with AVG -------------------------------------------------------------


@gloo
def test_the_gloo_test_agrees_with_the_measured_versions(fresh_probe):
    """Measured on 2.6.0, 2.7.1 and 2.8.0 (the sum) and 2.9.0, 2.13.0, 2.15.0 (the average):
    the direct test on this torch must give the answer of its version. A torch where they
    differ is news (a backport, or a regression): look before changing either."""
    got = _upstream.gloo_reduce_scatter_averages()
    assert got is not None, "the in-process gloo test could not run here"
    assert got == (_upstream._release(torch.__version__) >= _upstream.GLOO_AVG_FIXED)


@gloo
def test_the_gloo_test_touches_no_group_of_the_caller(fresh_probe, one_rank):
    before = dist.get_world_size()
    assert _upstream.gloo_reduce_scatter_averages() is not None
    assert dist.get_world_size() == before == 1
    dist.barrier()  # the caller's group still works


@gloo
def test_a_gloo_test_that_cannot_run_answers_unknown(fresh_probe, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no loopback here")

    monkeypatch.setattr(dist, "ProcessGroupGloo", type("Broken", (), {"_Options": broken}))
    assert _upstream.gloo_reduce_scatter_averages() is None


def test_gloo_avg_defect_follows_the_gloo_test(monkeypatch):
    monkeypatch.setattr(_upstream, "gloo_reduce_scatter_averages", lambda: True)
    assert _upstream.gloo_avg_defect() is None
    monkeypatch.setattr(_upstream, "gloo_reduce_scatter_averages", lambda: False)
    msg = _upstream.gloo_avg_defect()
    assert msg is not None and "N times the mean" in msg and "pytorch/pytorch#162338" in msg
    # the test could not run: the version decides
    monkeypatch.setattr(_upstream, "gloo_reduce_scatter_averages", lambda: None)
    monkeypatch.setattr(torch, "__version__", "2.7.1")
    assert _upstream.gloo_avg_defect() is not None
    monkeypatch.setattr(torch, "__version__", "2.10.0")
    assert _upstream.gloo_avg_defect() is None


def _as_group_of(monkeypatch, world: int, backend: str) -> None:
    """Make the default group look like ``world`` ranks of ``backend`` to _upstream."""
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: world)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)


@gloo
def test_fsdp2_gloo_defect_needs_gloo_several_ranks_and_a_summing_gloo(monkeypatch, one_rank):
    monkeypatch.setattr(_upstream, "gloo_reduce_scatter_averages", lambda: False)
    assert _upstream.fsdp2_gloo_defect() is None  # the real group: one rank, AVG == SUM
    _as_group_of(monkeypatch, 4, "gloo")
    msg = _upstream.fsdp2_gloo_defect()
    assert msg is not None
    for needle in ("ReduceOp.AVG", "4 ranks", "4x the mean", "pytorch/pytorch#162338", "2.9"):
        assert needle in msg, (needle, msg)
    assert "set_force_sum_reduction_for_comms(True)" in msg
    # CPU tensors of a mixed group go through gloo; CUDA tensors through nccl
    _as_group_of(monkeypatch, 4, "cpu:gloo,cuda:nccl")
    assert _upstream.fsdp2_gloo_defect(device="cpu") == msg
    assert _upstream.fsdp2_gloo_defect(device="cuda") is None
    _as_group_of(monkeypatch, 4, "nccl")
    assert _upstream.fsdp2_gloo_defect() is None
    # a gloo that averages
    _as_group_of(monkeypatch, 4, "gloo")
    monkeypatch.setattr(_upstream, "gloo_reduce_scatter_averages", lambda: True)
    assert _upstream.fsdp2_gloo_defect() is None


@gloo
@pytest.mark.parametrize(("version", "defect"), [("2.8.0+cu128", True), ("2.9.0", False)])
def test_fsdp2_gloo_defect_falls_back_to_the_version(monkeypatch, one_rank, version, defect):
    monkeypatch.setattr(_upstream, "gloo_reduce_scatter_averages", lambda: None)
    monkeypatch.setattr(torch, "__version__", version)
    _as_group_of(monkeypatch, 2, "gloo")
    assert (_upstream.fsdp2_gloo_defect() is not None) == defect


def test_fsdp2_gloo_defect_without_a_process_group():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    assert _upstream.fsdp2_gloo_defect() is None


@gloo
def test_dtensor_defects_asks_about_the_sharded_dimensions_only(monkeypatch, one_rank):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    sharded = torch.nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
    replicated = torch.nn.Parameter(distribute_tensor(torch.ones(3), mesh, [Replicate()]))
    plain = torch.nn.Parameter(torch.ones(2))
    asked = []

    def defect(group, device):
        asked.append((group, torch.device(device).type))
        return "gloo sums"

    monkeypatch.setattr(_upstream, "fsdp2_gloo_defect", defect)
    monkeypatch.setattr(_upstream, "cpu_fsdp2_stream_gap", lambda: "no record_event")
    got = _upstream.dtensor_defects([plain, replicated, sharded, sharded])
    assert got == ["no record_event", "gloo sums"]  # each once
    assert asked == [(mesh.get_group(0), "cpu")]  # the Shard dimension's group, once
    assert _upstream.dtensor_defects([plain]) == []


@gloo
def test_dtensor_defects_on_this_torch_with_one_rank(one_rank):
    """One rank: no reduction can be off; what is left is the CPU stream gap, if any."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    p = torch.nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
    gap = _upstream.cpu_fsdp2_stream_gap()
    assert _upstream.dtensor_defects([p]) == ([] if gap is None else [gap])
