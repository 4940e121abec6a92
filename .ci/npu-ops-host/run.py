"""The operators' PrivateUse1 kernels (csrc/npu/lars_npu_ops.cpp) against their CPU kernels
(csrc/ops/ops.cpp), on CPU tensors in one process: see .ci/npu-ops-host-check. Usage:
run.py <library built by the check>. Not lars_npu's test suite: no pytest, no lars_npu import
(the library holds the operators itself)."""

from __future__ import annotations

import ctypes
import os
import sys

import torch

lib = ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW | os.RTLD_LOCAL)
launches = ctypes.c_int.in_dll(lib, "lars_host_check_launches")
core_order = ctypes.c_int.in_dll(lib, "lars_host_check_core_order")
refuse_launches = ctypes.c_int.in_dll(lib, "lars_host_check_refuse_launches")
_last_upload = lib.lars_npu_ops_last_upload
_last_upload.argtypes = [ctypes.POINTER(ctypes.c_uint64)]
_last_upload.restype = None
# pinned host memory needs an accelerator; the stand-in PrivateUse1 backend is one once named
torch.utils.rename_privateuse1_backend("npu_host_check")
ops = torch.ops.lars_npu
PRIVATEUSE1 = torch._C.DispatchKeySet(torch._C.DispatchKey.PrivateUse1)
ADAPT, MOMENTUM, FIRST = 1, 2, 4
f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16


def npu(op: str, *args):
    """The PrivateUse1 kernel of `op` on these (CPU) tensors."""
    return getattr(ops, op).default.redispatch(PRIVATEUSE1, *args)


def cpu(op: str, *args):
    return getattr(ops, op)(*args)


def flags(adapt, has_m=None, first=None) -> torch.Tensor:
    n = len(adapt)
    has_m = has_m or [False] * n
    first = first or [False] * n
    return torch.tensor(
        [ADAPT * a | MOMENTUM * m | FIRST * f for a, m, f in zip(adapt, has_m, first, strict=True)],
        dtype=torch.uint8,
    )


def table(lr, wd, mu, nesterov) -> torch.Tensor:
    return torch.tensor([lr, wd, mu, nesterov], dtype=torch.float64).T.contiguous()


def twin(xs):
    """Copies with the same sizes, strides, storage offsets and bits (views stay views)."""
    out = []
    for x in xs:
        base = torch.empty(x.untyped_storage().nbytes() // x.element_size(), dtype=x.dtype)
        base.untyped_storage().copy_(x.untyped_storage())
        y = base.as_strided(x.shape, x.stride(), x.storage_offset())
        out.append(torch._neg_view(y) if x.is_neg() else y)
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(
        a.resolve_neg().contiguous().view(torch.uint8),
        b.resolve_neg().contiguous().view(torch.uint8),
    )


def close(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str) -> None:
    got, want = got.resolve_neg().double(), want.resolve_neg().double()
    if not torch.allclose(got, want, rtol=rtol, atol=rtol * 1e-3, equal_nan=True):
        sys.exit(f"FAIL {what}: npu {got.flatten()[:6].tolist()} cpu {want.flatten()[:6].tolist()}")


gen = torch.Generator().manual_seed(0)


def rnd(shape, dtype=f32, scale=1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def shaped(i: int, dtype, scale=1.0) -> torch.Tensor:
    """Tensor i of a step: contiguous, misaligned (x[1:]), transposed, several chunks, empty, one
    element, odd tail, negative bit."""
    kind = i % 8
    if kind == 1:
        return rnd((129,), dtype, scale)[1:]
    if kind == 2:
        return rnd((48, 64), dtype, scale).t()
    if kind == 7:
        return torch._neg_view(rnd((9, 11), dtype, -scale))
    return rnd([(3, 5), None, None, (40000,), (0,), (1,), (17, 33)][kind], dtype, scale)


def tol(dtypes) -> float:
    return 2e-3 if f16 in dtypes else 2e-5  # λ in fp32 on the kernels, fp64 on the CPU


def check_lars(dtypes, adapt, given=None, poison=None) -> bool:
    n = len(dtypes)
    ws = [shaped(i, d) for i, d in enumerate(dtypes)]
    gs = [shaped(i, d, 0.1) for i, d in enumerate(dtypes)]
    if poison is not None:
        gs[poison].view(-1)[0] = float("inf")

    def args(w, g):
        return (w, g, torch.arange(n), flags(adapt),
                table([0.1 + 0.01 * i for i in range(n)], [5e-4 * (i % 3) for i in range(n)],
                      [0.0] * n, [0.0] * n),
                1e-5, 1e-3, False, False, given)  # fmt: skip

    w1, g1, w2, g2 = twin(ws), twin(gs), twin(ws), twin(gs)
    v0 = [g._version for g in g2]
    want, got = cpu("lars_", *args(w1, g1)), npu("lars_", *args(w2, g2))
    if bool(want[0]) != bool(got[0]):
        sys.exit(f"FAIL lars_ found_inf: npu {bool(got[0])} cpu {bool(want[0])}")
    for k, name in ((1, "lam"), (2, "w_s"), (3, "g_s")):
        close(got[k], want[k], tol(dtypes), f"lars_ {name}")
    for i in range(n):
        close(g2[i], g1[i], tol([dtypes[i]]), f"lars_ gradient {i}")
        if not same_bits(w2[i], w1[i]):
            sys.exit(f"FAIL lars_ wrote weight {i}")
        if adapt[i] and not bool(want[0]) and g2[i]._version == v0[i]:
            sys.exit(f"FAIL lars_ did not bump gradient {i}'s version")
    return bool(want[0])


def check_fused(
    dtypes, has_m, first, nesterov, *, grad_dtypes=None, buf_dtype=None, given=None, poison=None
) -> bool:
    n = len(dtypes)
    ps = [shaped(i, d) for i, d in enumerate(dtypes)]
    gs = [shaped(i, (grad_dtypes or dtypes)[i], 0.1) for i in range(n)]
    ms = [shaped(i, buf_dtype or dtypes[i], 0.01) for i in range(n) if has_m[i]]
    if poison is not None:
        gs[poison].view(-1)[0] = float("nan")
    adapt = [i % 3 != 1 for i in range(n)]
    group = torch.tensor([i % 2 for i in range(n)])
    hyper = table([0.1, 0.05], [1e-4, 5e-4], [0.9, 0.8], [float(nesterov), 0.0])

    def args(p, g, m):
        return (p, g, m, group, flags(adapt, has_m, first), hyper, 1e-5, 1e-3, True, False,
                given, grad_dtypes is not None, 0)  # fmt: skip

    p1, g1, m1, p2, g2, m2 = twin(ps), twin(gs), twin(ms), twin(ps), twin(gs), twin(ms)
    want, got = cpu("fused_step_", *args(p1, g1, m1)), npu("fused_step_", *args(p2, g2, m2))
    skipped = bool(want[0])
    if skipped != bool(got[0]):
        sys.exit(f"FAIL fused_step_ found_inf: npu {bool(got[0])} cpu {skipped}")
    close(got[1], want[1], tol(dtypes), "fused_step_ lam")
    close(got[3], want[3], tol(dtypes), "fused_step_ g_s")
    if not skipped or given is not None:  # (the CPU kernel leaves some w_s unset when it skips)
        close(got[2], want[2], tol(dtypes), "fused_step_ w_s")
    for i in range(n):
        close(p2[i], p1[i], tol([dtypes[i]]), f"fused_step_ parameter {i}")
        if not same_bits(g2[i], g1[i]):
            sys.exit(f"FAIL fused_step_ wrote gradient {i}")
    for i in range(len(ms)):
        close(m2[i], m1[i], tol([m1[i].dtype, *dtypes]), f"fused_step_ momentum buffer {i}")
    return skipped


def last_upload() -> tuple[int, int, bool]:
    """(bytes sent, bytes zeroed, nothing known) of this thread's last operator call's upload to
    its resident device buffer (csrc/npu/lars_resident.h)."""
    out = (ctypes.c_uint64 * 4)()
    _last_upload(out)
    return out[0], out[1], bool(out[3])


def check_resident() -> None:
    """Steps of fused_step_ on the SAME tensors, each compared with the CPU operator: the
    resident buffer keeps the tables (nothing sent on a steady step), sends the per-tensor
    parameters when lr or the first-step flag change, everything again after a call that threw
    after its upload, and a re-pointed tensor's address; another operator in between takes its
    own buffer. Results agree with the CPU's at every step."""
    n = 6
    ps = [rnd((40000,)), rnd((3, 5)), rnd((17, 33)), rnd((1,)), rnd((20000,)), rnd((64,))]
    ms = [torch.zeros_like(p) for p in ps]
    gs = [torch.zeros_like(p) for p in ps]
    p1, m1, g1, p2, m2, g2 = twin(ps), twin(ms), twin(gs), twin(ps), twin(ms), twin(gs)
    group = torch.zeros(n, dtype=torch.int64)

    def step(lr: float, first: bool, refuse: bool = False) -> tuple[int, int, bool]:
        for a, b in zip(g1, g2, strict=True):
            a.copy_(rnd(a.shape, scale=0.1))
            b.copy_(a)
        hyper = table([lr], [1e-4], [0.9], [0.0])
        fl = flags([True] * n, [True] * n, [first] * n)

        def args(p, g, m):
            return (p, g, m, group, fl, hyper, 1e-5, 1e-3, False, False, None, False, 0)

        if refuse:  # the first launch throws, after the upload: nothing written
            before = [x.clone() for x in (*p2, *m2)]
            refuse_launches.value = 1
            try:
                npu("fused_step_", *args(p2, g2, m2))
            except RuntimeError as exc:
                assert "refused by run.py" in str(exc), exc
            else:
                sys.exit("FAIL a refused launch did not raise")
            assert all(same_bits(a, b) for a, b in zip(before, (*p2, *m2), strict=True))
            return last_upload()
        want, got = cpu("fused_step_", *args(p1, g1, m1)), npu("fused_step_", *args(p2, g2, m2))
        counts = last_upload()
        assert bool(want[0]) == bool(got[0]) is False
        close(got[1], want[1], 2e-5, "resident fused_step_ lam")
        for i in range(n):
            close(p2[i], p1[i], 2e-5, f"resident fused_step_ parameter {i}")
            close(m2[i], m1[i], 2e-5, f"resident fused_step_ momentum buffer {i}")
        return counts

    params_bytes = 16 * n  # {wd, lr, mu, flags} in fp32 per tensor, whole 32-byte blocks
    sent_full, zeroed, full = step(0.1, True)
    assert full and sent_full > 0 and zeroed > 0, (sent_full, zeroed, full)
    sent, _, full = step(0.1, False)  # the first-step flags flip: the parameters' region
    assert not full and 0 < sent <= params_bytes + 32, sent
    sent, _, full = step(0.1, False)  # steady: nothing but the flags zeroed on the device
    assert not full and sent == 0, sent
    sent, _, full = step(0.05, False)  # a scheduler's lr
    assert not full and 0 < sent <= params_bytes + 32, sent
    # another operator on the stream in between: its own buffer; ours is still known after it
    npu("square_sums", p2, g2, flags([True] * n))
    sent, _, full = step(0.05, False)
    assert not full and sent == 0, sent
    # a call that throws after its upload: nothing is known of the buffer any more
    step(0.05, False, refuse=True)
    sent, _, full = step(0.05, False)
    assert full and sent == sent_full, (sent, full)
    # a re-pointed parameter (another tensor, same shape): other tables, so the call takes
    # another buffer while the stream has room (everything sent), else this one (the address sent)
    first_sent = sent_full
    p1[2], p2[2] = twin([p1[2]])[0], twin([p2[2]])[0]
    sent, _, full = step(0.05, False)
    assert (full and sent == first_sent) or (not full and 0 < sent <= 512), (sent, full)
    sent, _, full = step(0.05, False)
    assert not full and sent == 0, sent


def expect(error: type, text: str, op: str, *args) -> None:
    try:
        npu(op, *args)
    except error as exc:
        if text not in str(exc):
            sys.exit(f"FAIL refusal says {exc!r}, not {text!r}")
        return
    sys.exit(f"FAIL {op} accepted what it must refuse ({text})")


def main() -> None:
    mixed = [f32, f16] * 4
    adapt = [True, False, True, True, True, True, False, True]
    sums = torch.tensor(
        [[1.0 + i for i in range(8)], [0.5 + i for i in range(8)]], dtype=torch.float64
    )
    bad_sums = sums.clone()
    bad_sums[1, 2] = float("nan")
    for order in (0, -1, 3):  # the emulated cores forward, reversed, shuffled
        core_order.value = order
        assert not check_lars([f32] * 8, adapt)
        assert not check_lars(mixed, adapt)  # two dtypes: found_inf merged across launch sets
        assert check_lars([f32] * 8, adapt, poison=1)  # inf in a gradient LARS leaves alone
        assert check_lars(mixed, adapt, poison=6)
        assert not check_lars([f32] * 8, [False] * 8)
        assert not check_lars(mixed, adapt, given=sums)
        assert check_lars([f32] * 8, adapt, given=bad_sums)
        has_m = [True, False, True, True, False, True, True, True]
        first = [False, False, True, False, False, False, True, False]
        for nesterov in (False, True):
            assert not check_fused([f32] * 8, has_m, first, nesterov)
            assert not check_fused(mixed, has_m, first, nesterov)
            assert check_fused(mixed, has_m, first, nesterov, poison=3)
        assert not check_fused(
            [f32] * 8, has_m, first, False, grad_dtypes=[f32, bf16, f16, f32, bf16, f32, f16, f32]
        )
        assert not check_fused([f32] * 8, has_m, first, False, buf_dtype=f16)
        assert not check_fused([f32] * 8, has_m, first, False, given=sums)
        assert check_fused([f32] * 8, has_m, first, False, given=bad_sums)
    # square sums, weight and gradient of different dtypes
    ws = [rnd((5, 7)), rnd((40000,), f16), rnd((64, 8), f16).t(), rnd((3,)), rnd((0,))]
    gs = [rnd((5, 7), f16), rnd((40000,), f16), rnd((8, 64)), rnd((3,), f16), rnd((0,))]
    fl = flags([True, True, True, False, True])
    want, got = cpu("square_sums", ws, gs, fl), npu("square_sums", ws, gs, fl)
    close(got[0], want[0], 2e-5, "square_sums w_s")
    close(got[1], want[1], 2e-5, "square_sums g_s")
    # no tensors
    none = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.uint8))
    hyper = table([0.1], [0.0], [0.0], [0.0])
    got = npu("lars_", [], [], *none, hyper, 1e-5, 1e-3, False, False, None)
    assert not bool(got[0]) and all(t.numel() == 0 for t in got[1:])
    # refusals, by name, before anything is written
    one = (torch.arange(1), flags([True]))
    expect(TypeError, "lars_npu[gradient 0]: has dtype torch.bfloat16", "lars_",
           [rnd((3,), bf16)], [rnd((3,), bf16)], *one, table([0.1], [0.0], [0.0], [0.0]),
           1e-5, 1e-3, False, False, None)  # fmt: skip
    expect(ValueError, "lr=1e+39 (group 0, tensor 0) is outside float32's range", "lars_",
           [rnd((3,))], [rnd((3,))], *one, table([1e39], [0.0], [0.0], [0.0]),
           1e-5, 1e-3, False, False, None)  # fmt: skip
    os.environ["LARS_NPU_BLOCK_DIM"] = "2"
    assert not check_lars([f32] * 8, adapt)
    os.environ["LARS_NPU_BLOCK_DIM"] = "two"
    expect(ValueError, "LARS_NPU_BLOCK_DIM='two'", "lars_", [rnd((3,))], [rnd((3,))], *one,
           table([0.1], [0.0], [0.0], [0.0]), 1e-5, 1e-3, False, False, None)  # fmt: skip
    del os.environ["LARS_NPU_BLOCK_DIM"]
    check_resident()
    print(
        f"PrivateUse1 kernels on the emulation match the CPU kernels "
        f"({launches.value} emulated launches; resident workspace: steady steps send nothing)"
    )


main()
