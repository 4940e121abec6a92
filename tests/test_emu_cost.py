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
    assert "| model step with latency |" in out and "per V→S round trip" in out
    assert bench.main(["--set", "tiny", "--backend", "emu", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["launches"] == 3 and row["params"] == 640_000
    assert len(row["latency_by_launch"]) == 3 and row["latency_seconds"] > row["model_seconds"]


# -- latency: what stalls the scalar unit, which issues everything (issue 22)

# tensors of 10 chunks and a ragged tail, one of less than a block, one of 5 chunks: on 4 cores,
# every core takes several chunks of several tensors
SHAPES = [10 * CHUNK + 5, 7, 5 * CHUNK - 3, 1000]


def test_pass_1_never_waits_for_the_vector_unit():
    """The square-sums kernel sums each chunk's lanes on the vector unit (pairwise Adds, then one
    WholeReduceSum), with no ReduceSum: no V -> S round trip on any core, and each core's DMA
    pipe is filled once, by its first load, however many chunks it takes (at 159679a: two round
    trips per chunk, each draining the pipe; the next chunk's loads waited for them). The λ
    kernel makes two per adapted tensor (its sums, their square roots), the update kernel one
    (the cores' flags)."""
    C = native()
    cost = emu.step_cost("t", SHAPES, cores=4)
    assert cost.vs_round_trips_by_launch[0] == 0
    assert cost.pipe_fills_by_launch[0] == 1
    assert cost.vs_round_trips_by_launch[1:] == (2, 1)  # one tensor per core in the λ launch
    # and on every core, not just the busiest: the raw counters
    step = step_args(
        w=np.full(4, torch.zeros(1).data_ptr()), g=np.full(4, torch.zeros(1).data_ptr()),
        m=np.zeros(4, np.int64), numel=np.array([1, 1, 1, 1]), adapt=np.ones(4),
        has_m=np.zeros(4), first=np.zeros(4), nesterov=np.zeros(4), wd=np.zeros(4),
        lr=np.full(4, 0.1), mu=np.zeros(4),
    )  # fmt: skip
    blob, layout = C.ascend_plan(step)
    counts = C.emu_launch(blob, 4, layout["num_chunks"], 0, True, False, 3, 192 * 1024, False,
                          0, True)  # fmt: skip
    f = C.emu_counter_fields.index
    assert (counts[0, :, f("vs_round_trips")] == 0).all()
    assert (counts[0, :, f("v_barriers")] > 0).all()  # its dependent vector instructions


def test_the_lambda_kernel_reduces_only_the_lanes_that_carry_data():
    """A tensor of one chunk has one 8-lane block of Σw² and one of Σg²: the λ kernel's vector
    instructions go over a few dozen elements for it (at 159679a: 2 x 2,048 lanes zeroed and 2 x
    2,048 reduced, whatever the chunk count)."""
    C = native()
    w = torch.zeros(CHUNK)
    step = step_args(
        w=np.array([w.data_ptr()]), g=np.array([w.data_ptr()]), m=np.zeros(1, np.int64),
        numel=np.array([CHUNK]), adapt=np.ones(1), has_m=np.zeros(1), first=np.zeros(1),
        nesterov=np.zeros(1), wd=np.zeros(1), lr=np.full(1, 0.1), mu=np.zeros(1),
    )  # fmt: skip
    blob, _ = C.ascend_plan(step)
    counts = C.emu_launch(blob, 1, 1, 0, True, True, 1, 192 * 1024, False, 0, True)
    assert counts[1, 0, C.emu_counter_fields.index("vector_elems")] <= 64


@pytest.mark.parametrize(
    ("constant", "counter"),
    [
        ("DMA_LATENCY_S", "pipe_fills_by_launch"),
        ("SCALAR_GM_READ_S", "exposed_gm_reads_by_launch"),
        ("VS_ROUND_TRIP_CYCLES", "vs_round_trips_by_launch"),
        ("LAUNCH_HEAD_S", None),
    ],
)
def test_the_latency_model_charges_each_input_as_stated(monkeypatch, constant, counter):
    """Each latency input, alone and made huge (a second), adds itself once per counted event on
    the core that has most of them, per launch (the launch head: once per launch): the model's
    arithmetic, not a timing."""
    for name in ("DMA_LATENCY_S", "SCALAR_GM_READ_S", "VS_ROUND_TRIP_CYCLES", "LAUNCH_HEAD_S"):
        monkeypatch.setattr(emu, name, 0)
    monkeypatch.setattr(emu, constant, emu.CLOCK_HZ if constant == "VS_ROUND_TRIP_CYCLES" else 1.0)
    cost = emu.step_cost("t", SHAPES, cores=4)
    events = sum(getattr(cost, counter)) if counter else cost.launches
    assert events > 0
    # what is left is max(streaming, vector work): microseconds here
    assert cost.latency_seconds == pytest.approx(events, abs=1e-3)
    assert cost.latency_seconds >= events + cost.model_seconds - 1e-12


def test_the_workspace_upload_is_counted_and_steady_steps_send_no_bytes():
    """Issue 22: the model counts the workspace's host-to-device traffic. Before the resident
    workspace every step copied all of it; now a first step sends the tables and the per-step
    part (never the results region, which the kernels write), and a steady step of the same model
    sends nothing and zeroes the cores' flags on the device."""
    from lars_npu._backends._native import constants

    sizes = [1, 7, 5000, CHUNK + 3, 3 * CHUNK]
    cost = emu.step_cost("t", sizes, cores=8)
    k = constants()
    assert 0 < cost.upload_first_bytes < cost.workspace_bytes
    assert cost.upload_steady_bytes == 0
    assert cost.upload_steady_zeroed == k.flag_slots * 32  # a 32-byte flag block per slot
    assert cost.upload_whole_seconds == pytest.approx(
        emu.H2D_OP_S + cost.workspace_bytes / emu.H2D_BYTES_PER_S
    )
    assert cost.upload_steady_seconds == pytest.approx(emu.H2D_OP_S)  # the one zeroing
    table = emu.format_costs([cost])
    assert f"{cost.workspace_bytes:,} B | {cost.upload_first_bytes:,} B | 0 B" in table
