"""The AscendC square-sums kernel (csrc/ascendc/) on lars_npu's own host emulation of the AscendC
API (csrc/emu/): compared with the NumPy reference over shapes that hit every tiling branch, and
the emulation's refusals. This is our emulation, not CANN's simulator: passing it is no claim that
the kernel ran on Ascend hardware."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import lars_npu
from lars_npu import reference
from lars_npu._backends._ascend import step_args
from lars_npu._backends._native import native
from lars_npu.check import np64

from .conftest import needs_native, ptrs

pytestmark = needs_native

UB_910B = 192 * 1024
CHUNK = 16384


# Core orders of the emulation: forward, reverse, and seeded shuffles. Hardware runs the cores
# concurrently: every kernel must give the same bytes in each.
ORDERS = [0, -1, 1, 2, 3]


def launch(step, block_dim, ub, *, run_square_sums=True, run_update=True, order=0, auto_sync=True):
    """One step of the kernels as the backends run it: host tiling (ascend_plan of the struct
    `step`), the launch on emulated AI cores, and the read-back: (found_inf, lam, w_s, g_s).
    auto_sync=False: as built without --cce-auto-sync (dependent vector instructions need the
    kernels' own PipeBarrier<PIPE_V>)."""
    C = native()
    blob, layout = C.ascend_plan(step)
    n, nc = layout["n"], layout["num_chunks"]
    C.emu_launch(
        blob, n, nc, step.dtype, run_square_sums, run_update, block_dim, ub, False, order,
        auto_sync=auto_sync,
    )  # fmt: skip
    return C.ascend_read_back(blob, n, nc)


def run(ws, gs, dtype_code, block_dim=8, ub=UB_910B, tile=4096, chunk=CHUNK):
    """The square-sums kernel alone: (Σw², Σg²) per tensor; a None weight is absent (Σw² = 0)."""
    n = len(gs)
    adapt = [w is not None for w in ws]
    zf, z8 = np.zeros(n), np.zeros(n, dtype=np.uint8)
    present = [g if w is None else w for w, g in zip(ws, gs, strict=True)]  # never read if absent
    step = step_args(
        w=ptrs(present), g=ptrs(gs), m=ptrs([None] * n),
        numel=np.array([g.numel() for g in gs], dtype=np.int64),
        adapt=np.array(adapt, dtype=np.uint8), has_m=z8, first=z8, nesterov=z8, wd=zf, lr=zf,
        mu=zf, dtype=dtype_code, mode=0, tile_sq=tile, tile_up=2048, chunk_elems=chunk,
    )  # fmt: skip
    _, _, w_s, g_s = launch(step, block_dim, ub, run_update=False)
    return w_s, g_s


SIZES = [
    1,  # one element: no aligned body, the tail only
    7,  # less than one 32-byte block of fp32
    8,  # exactly one block of fp32
    16,  # exactly one block of fp16
    4096,  # exactly one tile
    4100,  # one tile and a tail
    16384,  # exactly one chunk
    16389,  # a chunk and a ragged chunk
    200_003,  # more chunks than cores
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("block_dim", [1, 3, 8, 40])
def test_square_sums_match_reference(dtype, block_dim):
    gen = torch.Generator().manual_seed(block_dim)
    ws = [torch.randn(n, generator=gen).to(dtype) for n in SIZES]
    gs = [(torch.randn(n, generator=gen) * 0.01).to(dtype) for n in SIZES]
    w_s, g_s = run(ws, gs, 0 if dtype == torch.float32 else 1, block_dim=block_dim)
    ref_w = [float((w.double() ** 2).sum()) for w in ws]
    ref_g = [float((g.double() ** 2).sum()) for g in gs]
    # fp32 accumulation in UB lanes: a few fp32 roundings of the sum
    np.testing.assert_allclose(w_s, ref_w, rtol=2e-6)
    np.testing.assert_allclose(g_s, ref_g, rtol=2e-6)


def test_same_bits_for_any_block_count_and_thousands_of_tiny_tensors():
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(64, generator=gen) for _ in range(3000)]
    gs = [torch.randn(64, generator=gen) for _ in range(3000)]
    results = [run(ws, gs, 0, block_dim=b) for b in (1, 7, 48)]
    for w_s, g_s in results[1:]:
        assert w_s.tobytes() == results[0][0].tobytes()
        assert g_s.tobytes() == results[0][1].tobytes()
    np.testing.assert_allclose(
        results[0][0], [float((w.double() ** 2).sum()) for w in ws], rtol=2e-6
    )


def test_absent_weights_and_empty_tensors():
    g = [torch.ones(10), torch.ones(0), torch.full((33,), 2.0)]
    w_s, g_s = run([None, None, torch.ones(33)], g, 0)
    assert list(w_s) == [0.0, 0.0, 33.0]
    assert list(g_s) == [10.0, 0.0, 132.0]


def test_tiles_that_are_not_whole_blocks_are_refused_on_the_host():
    x = [torch.ones(100)]
    # a 12-element fp32 tile is 48 bytes: DataCopy on hardware would silently move 32
    with pytest.raises(ValueError, match="multiples of 16"):
        run(x, x, 0, tile=12, chunk=96)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty_deque", "DeQue of an empty queue"),
        ("use_after_free", "after FreeTensor"),
        ("alloc_exhausted", "every buffer of the queue is in use"),
        ("misaligned_ub", "not 32-byte aligned"),
        ("gm_overrun", "beyond the GlobalTensor"),
        ("partial_block", "not a whole number of 32-byte blocks"),
        ("scalar_after_vector", "S \\(scalar\\) pipe uses a UB buffer that the V \\(vector\\)"),
        ("scalar_write_copied_out", "MTE3 \\(UB->GM\\) pipe uses a UB buffer that the S"),
        ("vector_reads_dma_without_queue", "V \\(vector\\) pipe uses a UB buffer that the MTE2"),
        ("wait_without_set", "WaitFlag of an event that was not set"),
        ("set_twice", "already set and not waited for"),
        ("set_never_waited", "SetFlag was never waited for"),
        ("vector_overwrites_copy_source", "V \\(vector\\) pipe uses a UB buffer that the MTE3"),
        ("write_after_enque", "V \\(vector\\) pipe uses a UB buffer that the MTE2"),
        ("pad_copy_veccalc", "only VECIN / VECOUT"),
        ("sqrt_of_zero", "Sqrt of a non-positive value"),
    ],
)
def test_emulation_refuses_queue_and_buffer_misuse(case, message):
    native()._testing.emu_selftest("ok")  # the same mini-kernel, used correctly, passes
    with pytest.raises(RuntimeError, match=message):
        native()._testing.emu_selftest(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        # the previous emulation wrote per-repeat partials into the work tensor and summed
        # sequentially, so both of these kernels passed on it; A2 does neither
        ("reduce_sum_work_holds_partials", "work tensor holds no partials"),
        ("reduce_sum_sequential_bits", "not a sequential sum"),
    ],
)
def test_kernels_relying_on_a_naive_reduce_sum_fail(case, message):
    """ReduceSum as on A2 (dav_c220): the work tensor is never written, and the sum is a pairwise
    tree per 64-lane repeat: a kernel that reads partials from the work tensor, or expects the
    bits of a sequential sum, gets wrong results. The "ok" case uses ReduceSum into a VECOUT
    buffer and copies it out with no sync of its own (the call orders S -> MTE3 itself), and
    reduces into a buffer MTE3 was copying out after an MTE3 -> S wait only (dst is the scalar
    unit's store on A2; the previous emulation wrote it on V and refused that right kernel)."""
    native()._testing.emu_selftest("ok")
    with pytest.raises(RuntimeError, match=message):
        native()._testing.emu_selftest(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nosync_raw", "Muls: with auto-sync off, the vector instruction reads UB that an "
         "earlier Duplicate wrote .* no PipeBarrier<PIPE_V> between them \\(RAW"),
        ("nosync_war", "Duplicate: with auto-sync off, the vector instruction overwrites UB "
         "that an earlier Muls reads .*\\(WAR"),
        ("nosync_waw", "Duplicate: with auto-sync off, the vector instruction writes UB that an "
         "earlier Duplicate wrote .*\\(WAW"),
        # a VECOUT buffer's EnQue/DeQue orders V before MTE3, not before the next vector read
        ("nosync_queue_is_not_a_barrier", "Muls: with auto-sync off, the vector instruction "
         "reads UB that an earlier Duplicate wrote"),
    ],
)  # fmt: skip
def test_with_auto_sync_off_dependent_vector_instructions_need_a_barrier(case, message):
    """As built without --cce-auto-sync (A2 overlaps consecutive vector instructions; the
    compiler's auto-sync is what inserts PipeBarrier<PIPE_V> between dependent ones): each wrong
    mini-kernel misses one barrier and is refused, naming the instruction. The "nosync_ok" case
    orders the same dependencies by a barrier, a V -> S wait, ReduceSum's own sync and a chain of
    pipe events, and leaves independent instructions (disjoint UB, two reads) unordered: it
    runs. With auto-sync on (the default) the wrong ones run, as they would with the compiler's
    barriers."""
    T = native()._testing
    T.emu_selftest("nosync_ok")
    with pytest.raises(RuntimeError, match=message):
        T.emu_selftest(case)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_the_optimizer_steps_alike_with_auto_sync_off(monkeypatch, fused):
    """LARS_NPU_EMU_AUTO_SYNC=off through the emu backend: three optimizer steps of a small model
    run, with the bits of the default (the emulated numbers do not depend on it); an unknown
    value is a clear error."""
    from torch import nn

    from lars_npu import LARS

    def train(auto_sync):
        monkeypatch.setenv("LARS_NPU_EMU_AUTO_SYNC", auto_sync)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 40), nn.Tanh(), nn.Linear(40, 3))
        opt = LARS(
            torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
            backend="emu",
            fused=fused,
        )
        for t in range(3):
            gen = torch.Generator().manual_seed(t)
            opt.zero_grad()
            model(torch.randn(16, 6, generator=gen)).square().mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(train("on"), train("off"), strict=True):
        assert torch.equal(a, b)
    monkeypatch.setenv("LARS_NPU_EMU_AUTO_SYNC", "maybe")
    with pytest.raises(ValueError, match="LARS_NPU_EMU_AUTO_SYNC='maybe': expected on or off"):
        lars_npu.square_sum_all(torch.ones(10), torch.ones(10), backend="emu")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("reduce_sum_work_is_src", "the work tensor overlaps the source"),
        ("reduce_sum_work_too_small", "the work tensor holds 8 elements, the docs ask for 16 "
         "for count 1024"),
    ],
)  # fmt: skip
def test_reduce_sum_needs_a_real_work_tensor(case, message):
    """A2 never touches ReduceSum's work tensor, the SoCs that write partials there do: lars_npu's
    rule is a work tensor of the documented size (one float per 64-lane repeat, whole blocks),
    apart from the source. The kernels at 159679a passed the source."""
    native()._testing.emu_selftest("ok")
    with pytest.raises(RuntimeError, match=message):
        native()._testing.emu_selftest(case)


FREE_TENSOR_KERNEL = """
#include "kernel_operator.h"
void kernel() {
  AscendC::TPipe pipe;
  AscendC::TQue<AscendC::TPosition::VECIN, 2> que;
  pipe.InitBuffer(que, 2, 32);
  %s
}
"""


@pytest.mark.parametrize(
    ("body", "compiles"),
    [
        ("AscendC::LocalTensor<float> t = que.AllocTensor<float>(); que.FreeTensor(t);", True),
        # wrong: the real FreeTensor(LocalTensor<T>&) takes neither a const tensor...
        (
            "const AscendC::LocalTensor<float> t = que.AllocTensor<float>(); que.FreeTensor(t);",
            False,
        ),
        # ...nor a temporary
        ("que.FreeTensor(que.AllocTensor<float>());", False),
    ],
    ids=["lvalue", "const", "temporary"],
)
def test_free_tensor_takes_a_non_const_reference_as_the_real_api(tmp_path, body, compiles):
    """A kernel the real AscendC headers reject must not compile against the emulation either."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "k.cpp"
    src.write_text(FREE_TENSOR_KERNEL % body)
    emu = Path(__file__).resolve().parents[1] / "csrc" / "emu"
    res = subprocess.run(
        [cxx, "-std=c++17", "-fsyntax-only", f"-I{emu}", str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (res.returncode == 0) == compiles, res.stderr[-2000:]
    if not compiles:
        assert "FreeTensor" in res.stderr


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("gm_read_without_dcci", "without a DataCacheCleanAndInvalid first"),
        ("gm_read_after_dma_without_dcci", "written by DMA in this launch after the last"),
        ("single_line_dcci_elsewhere", "without a DataCacheCleanAndInvalid first"),
    ],
)
def test_scalar_reads_of_global_memory_need_data_cache_maintenance(case, message):
    """A scalar GetValue of global memory goes through the core's data cache: the host's tables,
    an earlier launch's partials and this launch's DMA writes need a DataCacheCleanAndInvalid
    first (the "ok" case reads after one, whole cache and single line). The previous emulation
    had no such rule: all three wrong kernels ran on it."""
    native()._testing.emu_selftest("ok")
    with pytest.raises(RuntimeError, match=message):
        native()._testing.emu_selftest(case)


def test_atlas_a2_reserves_the_top_8_kib_of_unified_buffer():
    """On 2201, TPipe gets 184 KiB of the 192 (TMP_UB_OFFSET): 184 KiB in all is accepted,
    185 KiB refused (the previous emulation gave a kernel all 192)."""
    native()._testing.emu_selftest("ub_184k")
    with pytest.raises(RuntimeError, match=r"a kernel may use 188416 .*top 8 KiB are reserved"):
        native()._testing.emu_selftest("ub_185k")


def test_dma_from_a_misaligned_global_address_is_refused():
    native()._testing.emu_selftest("ok")
    with pytest.raises(RuntimeError, match="global memory address not 32-byte aligned"):
        native()._testing.emu_selftest("misaligned_gm")


def test_odd_offset_views_are_refused_by_the_host_plan():
    """The kernels need each tensor's base 32-byte aligned; a view from element 1 is refused,
    naming the tensor and its role, before anything runs (the backends stage such views)."""
    base = torch.randn(101)
    ok, odd = base[:100], base[1:]
    assert ok.data_ptr() % 32 == 0 and odd.data_ptr() % 32 == 4
    for ws, gs, role in ([ok, ok], [ok, odd], "gradient"), ([ok, odd], [ok, ok], "weight"):
        with pytest.raises(ValueError, match=f"tensor 1: the {role}'s data address is not 32"):
            run(ws, gs, 0)


def test_a_kernel_that_depends_on_another_cores_progress_gives_different_results():
    """The deliberately wrong kernel (core b reads what core b - 1 wrote in the same launch)
    looks right in forward order only; the core orders expose it."""
    results = {tuple(native().emu_cross_core_probe(8, order)) for order in ORDERS}
    assert (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0) in results  # forward
    assert len(results) > 1


def every_path_step(dtype, mode, block_dim, *, order=0, auto_sync=True, nesterov=False):
    """One step over SIZES (one element, less than a block, whole blocks and tiles, tails, more
    chunks than cores) that takes every path of the kernels: adapted or not, momentum buffer or
    none, first step or not; the bytes of everything it wrote and read back."""
    gen = torch.Generator().manual_seed(5)
    k = len(SIZES)
    ws = [torch.randn(n, generator=gen).to(dtype) for n in SIZES]
    gs = [(torch.randn(n, generator=gen) * 0.01).to(dtype) for n in SIZES]
    ms = [(torch.randn(n, generator=gen) * 0.01).to(dtype) if i % 3 else None
          for i, n in enumerate(SIZES)]  # fmt: skip
    step = step_args(
        w=ptrs(ws), g=ptrs(gs), m=ptrs(ms), numel=np.array(SIZES, dtype=np.int64),
        adapt=np.array([i % 4 != 3 for i in range(k)], dtype=np.uint8),
        has_m=np.array([m is not None for m in ms]), first=np.array([i % 2 for i in range(k)]),
        nesterov=np.full(k, nesterov, dtype=np.uint8), wd=np.full(k, 1e-3), lr=np.full(k, 0.1),
        mu=np.full(k, 0.9), dtype=0 if dtype == torch.float32 else 1, mode=mode,
        tile_sq=4096, tile_up=2048, chunk_elems=CHUNK,
    )  # fmt: skip
    found, lam, w_s, g_s = launch(step, block_dim, UB_910B, order=order, auto_sync=auto_sync)
    assert not found
    tensors = ws + gs + [m for m in ms if m is not None]
    return (
        b"".join(t.numpy().tobytes() for t in tensors)
        + lam.tobytes()
        + w_s.tobytes()
        + g_s.tobytes()
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("mode", [0, 1], ids=["rewrite", "fused"])
@pytest.mark.parametrize("block_dim", [3, 40])
def test_kernels_give_the_same_bytes_in_every_core_order(dtype, mode, block_dim):
    outs = [every_path_step(dtype, mode, block_dim, order=order) for order in ORDERS]
    assert all(o == outs[0] for o in outs[1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("mode", [0, 1], ids=["rewrite", "fused"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
def test_kernels_need_no_auto_sync(dtype, mode, nesterov):
    """Built without --cce-auto-sync, nothing orders two dependent vector instructions but the
    kernels' own PipeBarrier<PIPE_V>: with auto-sync off the emulation refuses any vector
    instruction that depends on an earlier one without one (RAW, WAR, WAW on UB). Every path of
    the three kernels runs so, on 3 and 40 cores, in every core order, with the bytes of the
    auto-sync run (the emulated numbers do not depend on it)."""
    for block_dim in (3, 40):
        expected = every_path_step(dtype, mode, block_dim, nesterov=nesterov)
        for order in ORDERS:
            got = every_path_step(dtype, mode, block_dim, order=order, auto_sync=False,
                                  nesterov=nesterov)  # fmt: skip
            assert got == expected


def test_block_count_is_at_most_the_workspaces_flag_slots():
    x = [torch.ones(100)]
    run(x, x, 0, block_dim=256)
    with pytest.raises(ValueError, match="block_dim: at most 256"):
        run(x, x, 0, block_dim=257)


def test_lambda_of_a_tensor_with_hundreds_of_chunks():
    """The λ kernel adds a tensor's chunk blocks 256 at a time: a tensor of 600 chunks (three UB
    tiles of blocks) gets the reference λ, with the same bits on 1, 7 and 48 cores (and with
    auto-sync off: its barriers order the adds and the folds)."""
    gen = torch.Generator().manual_seed(9)
    w = torch.randn(600 * 16, generator=gen)
    g = torch.randn(600 * 16, generator=gen) * 0.01
    lams = []
    for block_dim in (1, 7, 48):
        out = g.clone()
        step = step_args(
            w=ptrs([w]), g=ptrs([out]), m=ptrs([None]), numel=np.array([w.numel()]),
            adapt=np.ones(1), has_m=np.zeros(1), first=np.zeros(1), nesterov=np.zeros(1),
            wd=np.full(1, 1e-3), lr=np.full(1, 0.1), mu=np.zeros(1), mode=0, tile_up=16,
            chunk_elems=16,
        )  # fmt: skip
        found, lam, _, _ = launch(step, block_dim, UB_910B, auto_sync=False)
        assert not found
        lams.append(lam[0])
    wn, gn = w.double().numpy(), g.double().numpy()
    ref = reference.trust_ratio((wn * wn).sum(), (gn * gn).sum(), 1e-3, 0.1)
    assert lams[0] == pytest.approx(ref, rel=1e-5)
    assert lams[0] == lams[1] == lams[2]


def test_emulation_refuses_unified_buffer_overflow():
    x = [torch.ones(100)]
    with pytest.raises(RuntimeError, match="Unified Buffer overflow"):
        run(x, x, 0, ub=16 * 1024, tile=4096)


# -- the update kernel: LARSUpdate rewrite (mode 0) and the fused momentum-SGD step (mode 1)


def step(
    ws,
    gs,
    ms,
    *,
    adapt,
    first,
    nesterov,
    wd,
    lr,
    mu,
    mode,
    dtype_code,
    block_dim=8,
    use_clip=False,
    guard=False,
    tile=2048,
):
    n = len(gs)
    step = step_args(
        w=ptrs(ws), g=ptrs(gs), m=ptrs(ms), numel=np.array([g.numel() for g in gs]),
        adapt=np.array(adapt, dtype=np.uint8), has_m=np.array([m is not None for m in ms]),
        first=np.array(first, dtype=np.uint8), nesterov=np.array([nesterov] * n, dtype=np.uint8),
        wd=np.array(wd), lr=np.array(lr), mu=np.array(mu), use_clip=use_clip,
        guard_zero_norm=guard, dtype=dtype_code, mode=mode, tile_sq=4096, tile_up=tile,
        chunk_elems=CHUNK,
    )  # fmt: skip
    found, lam, _, _ = launch(step, block_dim, UB_910B)
    return found, lam


RTOL = {torch.float32: 2e-5, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("block_dim", [1, 3, 40])
@pytest.mark.parametrize("use_clip", [False, True])
def test_update_kernel_rewrite_matches_reference(dtype, block_dim, use_clip):
    gen = torch.Generator().manual_seed(7)
    ws = [torch.randn(n, generator=gen).to(dtype) for n in SIZES]
    gs = [(torch.randn(n, generator=gen) * 0.01).to(dtype) for n in SIZES]
    adapt = [i % 4 != 3 for i in range(len(SIZES))]
    wd = [1e-3] * len(SIZES)
    lr = [0.1] * len(SIZES)
    refs = []
    for w, g, a in zip(ws, gs, adapt, strict=True):
        wn, gn = np64(w), np64(g)
        if a:
            ref = reference.lars_update(
                wn, gn, (wn * wn).sum(), (gn * gn).sum(), 1e-3, 0.1, use_clip=use_clip
            )
        else:
            ref = gn
        refs.append(np.asarray(ref))
    g_out = [g.clone() for g in gs]
    found, _ = step(
        ws,
        g_out,
        [None] * len(SIZES),
        adapt=adapt,
        first=[False] * len(SIZES),
        nesterov=False,
        wd=wd,
        lr=lr,
        mu=[0.0] * len(SIZES),
        mode=0,
        dtype_code=0 if dtype == torch.float32 else 1,
        block_dim=block_dim,
        use_clip=use_clip,
    )
    assert not found
    for g, ref, w, g0 in zip(g_out, refs, ws, gs, strict=True):
        scale = np.abs(np64(g0)) * 0.2 + 1e-3 * np.abs(np64(w)) * 0.2 + np.abs(ref)
        assert np.all(np.abs(np64(g) - ref) <= RTOL[dtype] * scale + 1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("block_dim", [1, 8])
def test_update_kernel_fused_step_matches_reference(dtype, nesterov, block_dim):
    gen = torch.Generator().manual_seed(11)
    k = len(SIZES)
    ws = [torch.randn(n, generator=gen).to(dtype) for n in SIZES]
    gs = [(torch.randn(n, generator=gen) * 0.01).to(dtype) for n in SIZES]
    ms = [
        (torch.randn(n, generator=gen) * 0.01).to(dtype) if i % 3 else None
        for i, n in enumerate(SIZES)
    ]
    first = [i % 2 == 0 for i in range(k)]
    adapt = [i % 4 != 3 for i in range(k)]
    lr = [0.05 * (i + 1) for i in range(k)]
    mu = [0.9 if m is not None else 0.0 for m in ms]
    refs = [
        reference.lars_momentum_step(
            np64(ws[i]),
            np64(gs[i]),
            None if (ms[i] is None or first[i]) else np64(ms[i]),
            lr=lr[i],
            weight_decay=1e-3,
            momentum=mu[i],
            nesterov=nesterov,
            lars=adapt[i],
        )
        for i in range(k)
    ]
    w_old = [np64(w) for w in ws]
    found, lam = step(
        ws,
        gs,
        ms,
        adapt=adapt,
        first=first,
        nesterov=nesterov,
        wd=[1e-3] * k,
        lr=lr,
        mu=mu,
        mode=1,
        dtype_code=0 if dtype == torch.float32 else 1,
        block_dim=block_dim,
    )
    assert not found
    for i in range(k):
        w_ref, m_ref, _, lam_ref = refs[i]
        if adapt[i]:
            assert lam[i] == pytest.approx(lam_ref, rel=1e-5)
        m_mag = np.abs(m_ref) if m_ref is not None else 0.0
        scale = np.abs(w_old[i]) + lr[i] * 2 * (m_mag + np.abs(np64(gs[i])) + 1e-3)
        assert np.all(np.abs(np64(ws[i]) - w_ref) <= RTOL[dtype] * scale), i
        if ms[i] is not None:
            np.testing.assert_allclose(np64(ms[i]), m_ref, rtol=RTOL[dtype], atol=1e-6)


def test_update_kernel_writes_nothing_on_non_finite_gradient():
    ws = [torch.randn(5000), torch.randn(300)]
    gs = [torch.randn(5000), torch.randn(300)]
    ms = [torch.randn(5000), None]
    gs[1][7] = float("nan")
    before = [t.clone() for t in ws + gs + ms[:1]]
    found, lam = step(
        ws,
        gs,
        ms,
        adapt=[True, True],
        first=[False, False],
        nesterov=False,
        wd=[0.0, 0.0],
        lr=[0.1, 0.1],
        mu=[0.9, 0.0],
        mode=1,
        dtype_code=0,
    )
    assert found and np.isnan(lam).all()
    for a, b in zip(before, ws + gs + ms[:1], strict=True):
        assert torch.equal(a, b) or torch.allclose(a, b, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("n", [1, 13, 16, 4099])
def test_ragged_tails_write_exactly_their_elements(dtype, n):
    """Tensors that are views into one buffer, with sentinels right after each: the ragged tail
    goes through DataCopyPad and must not write a single element past the tensor."""
    code = 0 if dtype == torch.float32 else 1
    buf_w = torch.full((n + 64,), 7.0, dtype=dtype)
    buf_g = torch.full((n + 64,), 7.0, dtype=dtype)
    buf_m = torch.full((n + 64,), 7.0, dtype=dtype)
    w, g, m = buf_w[:n], buf_g[:n], buf_m[:n]
    gen = torch.Generator().manual_seed(n)
    w.copy_(torch.randn(n, generator=gen).to(dtype))
    g.copy_(torch.randn(n, generator=gen).to(dtype))
    m.copy_(torch.randn(n, generator=gen).to(dtype))
    w0, g0, m0 = w.clone(), g.clone(), m.clone()
    found, _ = step(
        [w], [g], [m], adapt=[True], first=[False], nesterov=False, wd=[1e-4], lr=[0.1],
        mu=[0.9], mode=1, dtype_code=code,
    )  # fmt: skip
    assert not found
    for buf in (buf_w, buf_g, buf_m):
        assert torch.equal(buf[n:], torch.full((64,), 7.0, dtype=dtype))
    # the step ran (m <- 0.9 m + g' moves every element; w may move less than an fp16 ulp)
    assert (m != m0).all() and torch.equal(g, g0)
    if dtype == torch.float32:
        assert (w != w0).all()


# -- tile sizes at the edge of the Unified Buffer: the kernels' own UB formula (lars_tiling.h)

UB_BUDGET = 184 * 1024  # Atlas A2: 192 KiB less the top 8 KiB of API scratch
# The largest tiles, worked out by hand from the kernels' Init (32-byte blocks):
#   square sums: 2 input tiles in the storage type + the fp32 accumulator (+ an fp32 work tile for
#     fp16) + 96 B
#   update: 3 x 2 input + 2 output tiles in the storage type (+ 3 fp32 work tiles for fp16)
#     + 8 KiB of flags + 32 B + ReduceSum's 128-byte work tensor
MAX_TILES = {
    ("square_sums", 0): 15680,  # 12 B/element: (188416 - 96) / 12 = 15693.3 -> 15680
    ("square_sums", 1): 15680,  # 12 B/element (2 x 2 + 4 + 4)
    ("update", 0): 5616,  # 32 B/element: (188416 - 8352) / 32 = 5627.0 -> 5616
    ("update", 1): 6416,  # 28 B/element: 6430.9 -> 6416
}


@pytest.mark.parametrize("kernel", ["square_sums", "update"])
@pytest.mark.parametrize("code", [0, 1], ids=["fp32", "fp16"])
def test_the_ub_formula_bounds_the_tile_exactly(kernel, code):
    T = native()._testing
    top = T.ascend_max_tile(kernel, code)
    assert top == MAX_TILES[kernel, code]
    assert T.ascend_ub_budget == UB_BUDGET
    assert T.ascend_ub_bytes(kernel, top, code) <= UB_BUDGET
    assert T.ascend_ub_bytes(kernel, top + 16, code) > UB_BUDGET


def edge_step(ws, gs, ms, *, code, mode, tile_sq, tile_up):
    k = len(gs)
    return step_args(
        w=ptrs(ws), g=ptrs(gs), m=ptrs(ms), numel=np.array([g.numel() for g in gs]),
        adapt=np.ones(k, dtype=np.uint8), has_m=np.array([m is not None for m in ms]),
        first=np.zeros(k, dtype=np.uint8), nesterov=np.zeros(k, dtype=np.uint8),
        wd=np.full(k, 1e-3), lr=np.full(k, 0.1), mu=np.full(k, 0.9), dtype=code, mode=mode,
        tile_sq=tile_sq, tile_up=tile_up, chunk_elems=CHUNK,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("mode", [0, 1], ids=["rewrite", "fused"])
def test_the_largest_legal_tiles_run_and_the_next_ones_are_refused(dtype, mode):
    """At the largest tiles of the formula, both kernels run on the emulation (which refuses UB
    beyond 184 KiB on its own; auto-sync off: the kernels' own barriers) and match the
    reference, and the emulation's count of the UB each core's TPipe took is the formula's, byte
    for byte; one multiple of 16 more is refused by the host plan before anything runs, naming
    the field and the maximum."""
    C = native()
    T = C._testing
    code = 0 if dtype == torch.float32 else 1
    top_sq, top_up = T.ascend_max_tile("square_sums", code), T.ascend_max_tile("update", code)
    gen = torch.Generator().manual_seed(code * 2 + mode)
    sizes = [2 * top_up + 5, 3 * top_sq // 2 + 3, 40]  # whole tiles and ragged tails of both
    ws = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    gs = [(torch.randn(n, generator=gen) * 0.01).to(dtype) for n in sizes]
    ms = [(torch.randn(n, generator=gen) * 0.01).to(dtype) for n in sizes]
    refs = []
    for w, g, m in zip(ws, gs, ms, strict=True):
        if mode == 0:
            wn, gn = np64(w), np64(g)
            refs.append(reference.lars_update(wn, gn, (wn * wn).sum(), (gn * gn).sum(), 1e-3, 0.1))
        else:
            refs.append(
                reference.lars_momentum_step(
                    np64(w), np64(g), np64(m), lr=0.1, weight_decay=1e-3, momentum=0.9
                )
            )
    w_old, g_old = [np64(w) for w in ws], [np64(g) for g in gs]
    step = edge_step(ws, gs, ms, code=code, mode=mode, tile_sq=top_sq, tile_up=top_up)
    blob, layout = C.ascend_plan(step)
    counts = C.emu_launch(
        blob, layout["n"], layout["num_chunks"], code, True, True, 3, UB_910B, False, 0, True,
        auto_sync=False,
    )  # fmt: skip
    ub = counts[:, :, C.emu_counter_fields.index("ub_bytes")]
    assert (ub[0] == T.ascend_ub_bytes("square_sums", top_sq, code)).all()
    assert (ub[1] == T.ascend_ub_bytes("lambda", 0, code)).all()
    assert (ub[2] == T.ascend_ub_bytes("update", top_up, code)).all()
    assert ub.max() <= UB_BUDGET
    found, _, _, _ = C.ascend_read_back(blob, layout["n"], layout["num_chunks"])
    assert not found
    for i in range(len(sizes)):
        if mode == 0:
            scale = np.abs(g_old[i]) * 0.2 + 1e-3 * np.abs(w_old[i]) * 0.2 + np.abs(refs[i])
            assert np.all(np.abs(np64(gs[i]) - refs[i]) <= RTOL[dtype] * scale + 1e-7), i
        else:
            w_ref, m_ref, _, _ = refs[i]
            scale = np.abs(w_old[i]) + 0.2 * (np.abs(m_ref) + np.abs(g_old[i]) + 1e-3)
            assert np.all(np.abs(np64(ws[i]) - w_ref) <= RTOL[dtype] * scale), i
            np.testing.assert_allclose(np64(ms[i]), m_ref, rtol=RTOL[dtype], atol=1e-6)
    name = "fp32" if code == 0 else "fp16"
    for field, top in (("tile_sq", top_sq), ("tile_up", top_up)):
        bad = edge_step(ws, gs, ms, code=code, mode=mode, tile_sq=top_sq, tile_up=top_up)
        setattr(bad, field, top + 16)
        with pytest.raises(ValueError, match=f"{field} = {top + 16}: .* at most {top} elements "
                           f"for {name}"):  # fmt: skip
            C.ascend_plan(bad)
