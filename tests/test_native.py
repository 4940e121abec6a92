"""The C++ kernels directly: determinism across thread counts, exact dtype conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lars_npu._backends import Hyper
from lars_npu._backends._native import constants, native
from lars_npu.functional import lars_

from .conftest import needs_native

pytestmark = needs_native


def meta(ts):
    return (
        np.array([t.numel() for t in ts], dtype=np.int64),
        np.array([constants().dtype_codes[t.dtype] for t in ts], dtype=np.int64),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_square_sums_same_bits_for_any_thread_count(dtype):
    gen = torch.Generator().manual_seed(0)
    ts = [torch.randn(n, generator=gen).to(dtype) for n in (3_000_001, 70_000, 5, 16384 * 7 + 1)]
    flags = torch.ones(len(ts), dtype=torch.uint8)
    old = torch.get_num_threads()
    results = []
    try:
        for nt in (1, 2, 3, 4):
            torch.set_num_threads(nt)
            results.append(torch.ops.lars_npu.square_sums(ts, ts, flags))
    finally:
        torch.set_num_threads(old)
    for w_s, g_s in results[1:]:
        assert torch.equal(w_s, results[0][0]) and torch.equal(g_s, results[0][1])
    ref = [float((t.double() ** 2).sum()) for t in ts]
    np.testing.assert_allclose(results[0][0].numpy(), ref, rtol=1e-12)


def test_optimizer_step_same_bits_with_1_and_2_threads():
    old = torch.get_num_threads()
    outs = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            gen = torch.Generator().manual_seed(1)
            ws = [torch.randn(n, generator=gen) for n in (1 << 20, 1000, 77)]
            gs = [torch.randn(n, generator=gen) for n in (1 << 20, 1000, 77)]
            lars_(
                ws,
                gs,
                adapt=[True, True, False],
                weight_decays=[1e-4] * 3,
                lrs=[0.1] * 3,
                hyper=Hyper(),
                backend="cpu",
            )
            outs.append(gs)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs, strict=False):
        assert torch.equal(a, b)


def rewrite(g: torch.Tensor, lam: float) -> torch.Tensor:
    """out = lam * (g + 0 * w) through the kernel (w = 0)."""
    w = torch.zeros_like(g)
    out = torch.empty_like(g)
    code = constants().dtype_codes[g.dtype]
    native()._testing.rewrite(w.data_ptr(), g.data_ptr(), out.data_ptr(), g.numel(), code, lam, 0.0)
    return out


def all_16bit(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lam", [1.0, 0.5, 3.0, 0.1, 1e-3])
def test_16bit_conversions_match_torch_bit_for_bit(dtype, lam):
    """Every 16-bit pattern through load → fp32 math → round-to-nearest-even store, against
    torch's own casts (which round to nearest even): identical bits, nan for nan."""
    g = all_16bit(dtype)
    got = rewrite(g, lam)
    expect = ((g.float() + 0.0 * torch.zeros_like(g).float()) * np.float32(lam)).to(dtype)
    nan = torch.isnan(expect)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int16), expect[~nan].view(torch.int16))


def test_bad_arguments_raise_not_crash():
    """The operators' per-step arrays are checked before anything is read through them."""
    ts = [torch.zeros(4), torch.zeros(4)]
    bufs = [torch.zeros(4), torch.zeros(4)]
    table = torch.tensor([[0.1, 0.0, 0.9, 0.0]], dtype=torch.float64)
    group = torch.zeros(2, dtype=torch.int64)
    flags = torch.tensor([3, 3], dtype=torch.uint8)
    step = torch.ops.lars_npu.fused_step_
    h = (1e-5, 1e-3, False, False)
    with pytest.raises(ValueError, match="flags must be"):
        step(ts, ts, bufs, group, flags[:1], table, *h)
    with pytest.raises(ValueError, match="flags must be"):
        step(ts, ts, bufs, group, flags.int(), table, *h)
    with pytest.raises(ValueError, match=r"group\[1\] = 5 is not a row of hyper"):
        step(ts, ts, bufs, torch.tensor([0, 5]), flags, table, *h)
    with pytest.raises(ValueError, match="hyper must be"):
        step(ts, ts, bufs, group, flags, table[:, :3], *h)
    with pytest.raises(ValueError, match="momentum_buffers has 1 tensors"):
        step(ts, ts, bufs[:1], group, flags, table, *h)
    with pytest.raises(ValueError, match="grads has 1 tensors"):
        step(ts, ts[:1], bufs, group, flags, table, *h)
    with pytest.raises(ValueError, match="given_sums must be"):
        step(ts, ts, bufs, group, flags, table, *h, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="weights has 1 tensors"):
        torch.ops.lars_npu.square_sums(ts[:1], ts, flags)
    with pytest.raises(ValueError, match="unsupported dtype code"):
        native()._testing.rewrite(1, 1, 1, 0, 9, 1.0, 0.0)


def test_trust_ratio_matches_reference_formula():
    from lars_npu import reference

    C = native()
    for args in [
        (1.49, 0.86, 0.0, 1.0),
        (4.0, 9.0, 0.1, 0.5),
        (0.0, 1.0, 0.0, 0.1),
        (1.0, 0.0, 1e-3, 0.0),
        (2.0, 3.0, 1e-4, 0.0),
    ]:
        for clip in (False, True):
            for guard in (False, True):
                got = C.trust_ratio(*args, 1e-5, 1e-3, clip, guard)
                ref = reference.trust_ratio(*args, use_clip=clip, guard_zero_norm=guard)
                assert got == pytest.approx(ref, rel=1e-15, abs=0)


def test_shared_constants_are_defined_once_in_cpp_and_read_from_build_info():
    """One definition of each shared constant: the chunk size, dtype codes and AscendC tiling
    live in the C++ headers; Python reads them from _C.build_info() (no copies in lars_npu's
    sources)."""
    from pathlib import Path

    import lars_npu
    from lars_npu._backends import _ascend

    b = dict(native().build_info())
    k = constants()
    assert k.chunk == b["chunk_elements"] == 16384
    assert k.dtype_codes == {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2,
                             torch.float64: 3}  # fmt: skip
    assert (k.tile_square_sums, k.tile_update, k.flag_slots, k.gm_align) == (4096, 2048, 256, 32)
    assert _ascend.kernel_codes() == {torch.float32: 0, torch.float16: 1}
    for f in Path(lars_npu.__file__).parent.rglob("*.py"):
        text = f.read_text()
        for literal in ("16384", "= 4096", "= 2048"):
            assert literal not in text, f"{f.name} holds a copy of a C++ constant ({literal})"
