"""The AscendC square-sums kernel (csrc/ascendc/) on lars_npu's own host emulation of the AscendC
API (csrc/emu/): compared with the NumPy reference over shapes that hit every tiling branch, and
the emulation's refusals. This is our emulation, not CANN's simulator: passing it is no claim that
the kernel ran on Ascend hardware."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lars_npu._backends._native import native

pytestmark = pytest.mark.skipif(native() is None, reason="lars_npu._C is not built")

UB_910B = 192 * 1024
CHUNK = 16384


def run(ws, gs, dtype_code, block_dim=8, ub=UB_910B, tile=4096, chunk=CHUNK):
    C = native()
    return C.emu_square_sums(
        np.array([0 if w is None else w.data_ptr() for w in ws], dtype=np.int64),
        np.array([g.data_ptr() for g in gs], dtype=np.int64),
        np.array([g.numel() for g in gs], dtype=np.int64),
        dtype_code,
        block_dim,
        ub,
        tile,
        chunk,
    )


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


def test_emulation_refuses_misaligned_datacopy():
    x = [torch.ones(100)]
    # a 12-element fp32 tile is 48 bytes: not a whole number of 32-byte blocks
    with pytest.raises(RuntimeError, match="32-byte blocks"):
        run(x, x, 0, tile=12, chunk=96)


def test_emulation_refuses_unified_buffer_overflow():
    x = [torch.ones(100)]
    with pytest.raises(RuntimeError, match="Unified Buffer overflow"):
        run(x, x, 0, ub=16 * 1024, tile=4096)
