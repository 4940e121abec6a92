"""The emulation's counters and the NPU cost model built on them (`lars-npu bench --backend
emu`). Counted on lars_npu's own AscendC emulation: a model, never a hardware measurement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lars_npu import bench
from lars_npu._backends import emu
from lars_npu._backends._ascend import step_args
from lars_npu._backends._native import native

from .conftest import ALL_BACKENDS

pytestmark = pytest.mark.skipif("emu" not in ALL_BACKENDS, reason="no AscendC emulation built")

CHUNK = 16384


def overhead(chunks: int, cores: int, tensors: int) -> int:
    """Bytes beyond the elements' own in a step: the square-sums kernel writes a Σw² and a Σg²
    block per chunk (64 B) and a flag per core (32 B); the λ kernel reads each chunk's blocks once
    (64 B) and writes a λ block per tensor (32 B); each core of the update kernel reads every
    core's flag (32 B each)."""
    return 64 * chunks + 32 * cores + 64 * chunks + 32 * tensors + 32 * cores * cores


@pytest.mark.parametrize("first", [False, True])
def test_dma_bytes_are_exactly_the_two_pass_traffic(first):
    """Pass 1 reads w and g (8 B/param); pass 2 reads w, g and m (no m on a buffer's first step)
    and writes m and w: 28 B/param (24 on a first step), plus O(chunks + tensors + cores²)."""
    n = 3 * CHUNK
    cost = emu.step_cost("t", [n], cores=4, first=first)
    assert cost.launches == 3  # square sums, λ, update
    assert cost.dma_bytes == (24 if first else 28) * n + overhead(3, 4, 1)
    assert cost.excess_bytes == (-4 * n if first else 0) + overhead(3, 4, 1)


def test_ragged_tensors_count_their_exact_bytes():
    """A ragged tail moves exactly its elements (DataCopyPad): 28 bytes per parameter."""
    sizes = [1, 7, 5000, CHUNK + 3]
    cost = emu.step_cost("t", sizes, cores=8)  # 5 chunks
    assert cost.dma_bytes - 28 * sum(sizes) == overhead(5, 8, 4)


def test_model_time_is_the_busiest_cores_bytes_at_its_bandwidth_share():
    """One chunk: one core does all the work while the others idle, so the model charges its
    bytes at 1/cores of the bandwidth (not the whole chip's)."""
    cost = emu.step_cost("t", [CHUNK], cores=48)
    # core 0: pass 1 8 B/param + its blocks and flag; λ: the tensor's blocks and its λ; pass 2
    # 20 B/param + the 48 flags
    busiest = (8 * CHUNK + 64 + 32) + (64 + 32) + (20 * CHUNK + 48 * 32)
    assert cost.model_seconds == pytest.approx(busiest / (emu.HBM_BYTES_PER_S / 48))
    spread = emu.step_cost("t", [CHUNK] * 48, cores=48)
    assert spread.model_seconds == pytest.approx(spread.dma_bytes / emu.HBM_BYTES_PER_S)


def test_counters_do_not_depend_on_the_core_order():
    C = native()
    w, g = torch.randn(40000), torch.randn(40000)
    totals = []
    for order in (0, -1, 3):
        step = step_args(
            w=np.array([w.data_ptr()]), g=np.array([g.data_ptr()]), m=np.zeros(1, np.int64),
            numel=np.array([40000]), adapt=np.ones(1), has_m=np.zeros(1), first=np.zeros(1),
            nesterov=np.zeros(1), wd=np.zeros(1), lr=np.full(1, 0.1), mu=np.zeros(1),
        )  # fmt: skip
        blob, layout = C.ascend_plan(step)
        counts = C.emu_launch(blob, 1, layout["num_chunks"], 0, True, False, 5, 192 * 1024,
                              False, order, True)  # fmt: skip
        assert counts.shape == (1, 5, len(C.emu_counter_fields))
        totals.append(counts.sum(axis=1).tolist())
    assert totals[0] == totals[1] == totals[2]
    f = C.emu_counter_fields.index("gm_to_ub_bytes")
    assert totals[0][0][f] == 2 * 4 * 40000  # w and g, once


def test_bench_cost_view_prints_the_model_table(capsys):
    assert bench.main(["--set", "tiny", "--backend", "emu"]) == 0
    out = capsys.readouterr().out
    assert "| tiny | 10,000 | 640,000 | 3 |" in out
    assert "not a hardware measurement" in out
    assert bench.main(["--set", "tiny", "--backend", "emu", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["launches"] == 3 and row["params"] == 640_000
