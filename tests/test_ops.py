"""The native operators ``torch.ops.lars_npu.*`` (csrc/ops) as torch sees them: registration and
schemas, ``torch.library.opcheck``, meta and fake tensors, the per-tensor checks every op makes
before it writes anything (storage bounds, memory shared between tensors, internal overlap, the
negative bit, inference tensors), the fused step against the NumPy reference, and the named
errors (``TensorError``) LARS raises from them.

A call that would read or write past the end of a storage if a bounds check were missing runs in
a forked child (:func:`in_child`): such a bug then fails the test by assertion, instead of
corrupting or crashing the test process.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import re
import select
import signal
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import lars_npu
from lars_npu import LARS, reference
from lars_npu._backends import Hyper
from lars_npu._backends._native import native
from lars_npu._ops import ADAPT, FIRST, MOMENTUM, TensorError, TensorTypeError, named
from lars_npu.check import np64
from lars_npu.functional import lars_ as functional_lars_

from .conftest import needs_native

pytestmark = needs_native

OPS = ("fused_step_", "square_sums", "lars_")
EPS, COEF = 1e-5, 1e-3
# one group: lr, weight decay, momentum, nesterov
HYPER = torch.tensor([[0.1, 1e-3, 0.9, 0.0]], dtype=torch.float64)


def ops() -> Any:
    native()  # importing lars_npu._C registers the operators
    return torch.ops.lars_npu


def _u8(flags: list[int]) -> torch.Tensor:
    return torch.tensor(flags, dtype=torch.uint8)


def step(params, grads, bufs, flags=None, *, group=None, hyper=HYPER, given_sums=None,
         mixed=False, budget=0, use_clip=False, guard=False):  # fmt: skip
    """fused_step_, by default every tensor in group 0 with LARS and momentum (not first)."""
    n = len(params)
    return ops().fused_step_(
        params, grads, bufs, torch.zeros(n, dtype=torch.int64) if group is None else group,
        _u8([ADAPT | MOMENTUM] * n if flags is None else flags), hyper, EPS, COEF, use_clip,
        guard, given_sums, mixed, budget,
    )  # fmt: skip


def rewrite(weights, grads, flags=None, given_sums=None):
    """lars_ (the in-place gradient rewrite), by default adapting every tensor."""
    n = len(grads)
    return ops().lars_(
        weights, grads, torch.zeros(n, dtype=torch.int64), _u8([ADAPT] * n if flags is None
        else flags), HYPER, EPS, COEF, False, False, given_sums,
    )  # fmt: skip


def sums(weights, grads, flags=None):
    return ops().square_sums(weights, grads, _u8([ADAPT] * len(grads) if flags is None else flags))


def raw(t: torch.Tensor | None) -> Any:
    """A tensor's view and every byte of its storage (which lies in bounds whatever the view
    addresses): equal before and after a call exactly when the call wrote nothing there."""
    if t is None:
        return None
    if t.is_meta:  # no memory
        return (tuple(t.shape), "meta")
    return (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.is_neg(),
            bytes(t.untyped_storage()))  # fmt: skip


def raws(*lists: list[torch.Tensor]) -> list[Any]:
    return [raw(t) for ts in lists for t in ts]


def in_child(fn: Callable[[], Any], timeout: float = 120.0) -> Any:
    """``fn()`` run in a forked child; returns its (picklable) result. The child dying (a
    signal), hanging or raising fails the calling test by assertion, with the child's stderr:
    the test process never runs a call that might touch memory outside a storage."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork()")
    r, w = os.pipe()
    err = tempfile.TemporaryFile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12: fork() + threads
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(r)
            os.dup2(err.fileno(), 2)  # its stderr (glibc's heap checks, a crash dump): the file
            faulthandler.enable(file=err)
            torch.set_num_threads(1)  # OpenMP's pool does not survive fork()
            try:
                payload = ("ok", fn())
            except BaseException as exc:
                payload = ("raised", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(payload))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    with err, os.fdopen(r, "rb", buffering=0) as f:
        while True:
            ready, _, _ = select.select([f], [], [], max(deadline - time.monotonic(), 0.0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"the call did not return within {timeout} s")
            chunk = f.read(1 << 16)
            if not chunk:
                break
            data += chunk
        _, status = os.waitpid(pid, 0)
        err.seek(0)
        stderr = err.read().decode(errors="replace")[:1500]  # the message, the innermost frames
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        raise AssertionError(
            f"the call killed its process with {sig} (memory out of bounds?); its stderr:\n{stderr}"
        )
    assert os.WEXITSTATUS(status) == 0 and data, f"the child failed ({status}):\n{stderr}"
    kind, value = pickle.loads(data)
    if kind == "raised":
        raise AssertionError(f"unexpected error in the child: {value}")
    return value


def outcome(call: Callable[[], Any], snap: Callable[[], Any]) -> tuple[Any, ...]:
    """In a forked child: ``call()``'s error (class name, message, role, index, name, whether
    it is a ValueError/TypeError; None when it returned) and whether ``snap()`` stayed equal."""

    def run() -> tuple[Any, ...]:
        before = snap()
        try:
            call()
        except (ValueError, TypeError) as exc:
            err = (type(exc).__name__, str(exc), getattr(exc, "role", None),
                   getattr(exc, "index", None), getattr(exc, "name", None),
                   isinstance(exc, ValueError))  # fmt: skip
        else:
            err = None
        return err, snap() == before

    return in_child(run)


def shrink(t: torch.Tensor, how: str) -> None:
    """Resize ``t``'s storage to a smaller, non-zero size: one element short, or half."""
    s = t.untyped_storage()
    nbytes = s.nbytes()
    s.resize_(nbytes - t.element_size() if how == "one_short" else nbytes // 2)
    assert 0 < s.nbytes() < nbytes


def past_the_end(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A view at storage_offset 7 whose first elements are in its (shrunk) storage and whose
    last element is not: only the view's extent says it does not fit."""
    n = int(np.prod(shape))
    base = torch.randn(7 + n + 5).to(dtype)
    v = base[7 : 7 + n].view(shape)
    base.untyped_storage().resize_((7 + n - 1) * v.element_size())
    assert v.storage_offset() * v.element_size() < v.untyped_storage().nbytes()
    return v


# -- 1. registration and schemas -------------------------------------------------------------------


def test_the_three_ops_are_registered_with_cpu_and_meta_kernels():
    registered = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("lars_npu::")}
    assert {f"lars_npu::{name}" for name in OPS} <= registered
    for name in OPS:
        assert isinstance(getattr(ops(), name).default, torch._ops.OpOverload)
        for key in ("CPU", "Meta"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lars_npu::{name}", key), key
    assert lars_npu._ops.ops() is torch.ops.lars_npu


@pytest.mark.parametrize(
    ("name", "written"),
    [("fused_step_", {"params", "momentum_buffers"}), ("square_sums", set()), ("lars_", {"grads"})],
)
def test_schema_marks_exactly_the_written_lists_mutable(name, written):
    schema = getattr(ops(), name).default._schema
    mutable = {a.name for a in schema.arguments if a.alias_info and a.alias_info.is_write}
    assert mutable == written
    assert schema.is_mutable == bool(written)
    for a in schema.arguments:
        if a.name in written:
            assert str(a.type) == "List[Tensor]", (a.name, a.type)
    # each written list is its own alias set (the set sits on the element type: Tensor(a!)[])
    sets = [re.search(rf"Tensor\((\w+)!\)\[\] {a}\b", str(schema)) for a in written]
    assert all(sets) and len({m[1] for m in sets if m}) == len(written), str(schema)
    # the outputs are new tensors, none an alias of an input
    assert all(r.alias_info is None for r in schema.returns)
    want = ["w_s", "g_s"] if name == "square_sums" else ["found_inf", "lam", "w_s", "g_s"]
    assert [r.name for r in schema.returns] == want


# -- 2. torch.library.opcheck ----------------------------------------------------------------------

needs_opcheck = pytest.mark.skipif(
    not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4"
)


def sample_args(name: str, variant: str = "plain", requires_grad: bool = False) -> tuple:
    """Small CPU inputs: several dtypes and shapes (0-dim, empty), one parameter without LARS,
    groups with and without momentum/nesterov; ``strided``: non-contiguous and negative-bit
    tensors (staged by the op); ``given``: given sums of squares."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), (), (0, 2), (2, 3)]
    dtypes = [torch.float32, torch.float64, torch.float32, torch.float32, torch.bfloat16]
    n = len(shapes)

    def make(shape, dtype, scale=1.0):
        t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
        if variant == "strided" and t.dim() == 2:
            t = t.t().contiguous().t()  # transposed strides, same values
        return t

    params = [make(s, d) for s, d in zip(shapes, dtypes, strict=True)]
    grads = [make(s, d, 0.01) for s, d in zip(shapes, dtypes, strict=True)]
    if variant == "strided":
        grads[1] = (-grads[1])._neg_view()
    if requires_grad:
        params = [nn.Parameter(p) for p in params]
    flags = [ADAPT | MOMENTUM, MOMENTUM | FIRST, ADAPT, ADAPT | MOMENTUM, ADAPT]
    group = torch.tensor([0, 0, 1, 0, 1])
    hyper = torch.tensor([[0.1, 1e-3, 0.9, 1.0], [0.05, 1e-2, 0.0, 0.0]], dtype=torch.float64)
    given = torch.rand(2, n, generator=gen, dtype=torch.float64) if variant == "given" else None
    if name == "square_sums":
        return (params, grads, _u8([f & ADAPT for f in flags]))
    if name == "lars_":
        flags = [f & ADAPT for f in flags]
        return (params, grads, group, _u8(flags), hyper, EPS, COEF, False, False, given)
    bufs = [make(s, d) for s, d, f in zip(shapes, dtypes, flags, strict=True) if f & MOMENTUM]
    return (params, grads, bufs, group, _u8(flags), hyper, EPS, COEF, True, False, given)


@needs_opcheck
@pytest.mark.parametrize(
    ("name", "variant"),
    [(name, variant) for name in OPS for variant in ("plain", "strided", "given")
     if not (name == "square_sums" and variant == "given")],  # (square_sums takes no sums)
)  # fmt: skip
def test_opcheck(name, variant):
    """Every opcheck test (schema, autograd registration, fake tensors, AOT dispatch)."""
    torch.library.opcheck(getattr(ops(), name).default, sample_args(name, variant))


# What an optimizer passes are nn.Parameters (requires_grad=True), though under no_grad. With
# them, the test_aot_dispatch_dynamic check differentiates through the ops (an optimizer step
# has no derivative), so it runs apart, below; the others run here. The ops' Autograd kernel
# runs them below autograd: a whole step, no grad_fn.


@needs_opcheck
@pytest.mark.parametrize(
    "name",
    ["fused_step_", "square_sums", "lars_"],
)  # fmt: skip
def test_opcheck_with_parameters_requiring_grad(name):
    torch.library.opcheck(
        getattr(ops(), name).default,
        sample_args(name, requires_grad=True),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


@needs_opcheck
# torch 2.15's aot check itself reads .grad of non-leaf tensors and warns about it (the warning
# comes from torch's TensorBody.h, reached inside opcheck); the operators never read a .grad
@pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"
)
@pytest.mark.parametrize("name", OPS)
def test_opcheck_aot_dispatch_with_parameters_requiring_grad(name):
    torch.library.opcheck(
        getattr(ops(), name).default,
        sample_args(name, requires_grad=True),
        test_utils="test_aot_dispatch_dynamic",
    )


def test_parameters_requiring_grad_in_grad_mode_are_stepped_whole_or_refused_whole():
    """(The optimizer steps under no_grad; a direct caller may not.) A contiguous parameter the
    kernel writes in place and a transposed one it stages: either the call is refused before it
    writes anything, or it steps both as under no_grad."""

    def inputs():
        gen = torch.Generator().manual_seed(9)
        params = [nn.Parameter(torch.randn(3, generator=gen)),
                  nn.Parameter(torch.randn(3, 4, generator=gen).t())]  # fmt: skip
        grads = [torch.randn(p.shape, generator=gen) * 0.01 for p in params]
        bufs = [torch.randn(p.shape, generator=gen) for p in params]
        return params, grads, bufs

    params, grads, bufs = inputs()
    before = raws(params, grads, bufs)
    try:
        step(params, grads, bufs)
    except (RuntimeError, ValueError):
        assert raws(params, grads, bufs) == before, "refused after writing some tensors"
        return
    want = inputs()
    with torch.no_grad():
        step(*want)
    for got, ref in zip([*params, *bufs], [*want[0], *want[2]], strict=True):
        assert torch.equal(got.detach(), ref.detach())


# -- 3. meta and fake tensors ----------------------------------------------------------------------

SHAPES = [(4, 3), (5,), (), (0, 2)]


def _lists(device: str | torch.device, dtype=torch.float32):
    params = [torch.ones(s, dtype=dtype, device=device) for s in SHAPES]
    grads = [torch.ones(s, dtype=dtype, device=device) for s in SHAPES]
    flags = [ADAPT | MOMENTUM, 0, ADAPT | MOMENTUM | FIRST, ADAPT]
    bufs = [torch.zeros(s, dtype=dtype, device=device)
            for s, f in zip(SHAPES, flags, strict=True) if f & MOMENTUM]  # fmt: skip
    return params, grads, bufs, flags


def _call(name: str, params, grads, bufs, flags, ctrl_device="cpu"):
    n = len(params)
    group = torch.zeros(n, dtype=torch.int64, device=ctrl_device)
    f = _u8(flags).to(ctrl_device)
    hyper = torch.tensor(HYPER.tolist(), dtype=torch.float64, device=ctrl_device)
    if name == "fused_step_":
        return ops().fused_step_(params, grads, bufs, group, f, hyper, EPS, COEF, False, False)
    if name == "lars_":
        return ops().lars_(params, grads, group, f, hyper, EPS, COEF, False, False)
    return ops().square_sums(params, grads, f)


def _assert_outputs(name: str, out, n: int, device: torch.device) -> None:
    if name == "square_sums":
        specs = [((n,), torch.float64)] * 2
    else:
        specs = [((), torch.bool)] + [((n,), torch.float64)] * 3
    assert len(out) == len(specs)
    for o, (shape, dtype) in zip(out, specs, strict=True):
        assert (tuple(o.shape), o.dtype, o.device) == (shape, dtype, device)


@pytest.mark.parametrize("ctrl", ["cpu", "meta"])
@pytest.mark.parametrize("name", OPS)
def test_meta_tensors_give_outputs_of_the_right_shapes(name, ctrl):
    params, grads, bufs, flags = _lists("meta")
    out = _call(name, params, grads, bufs, flags, ctrl)
    _assert_outputs(name, out, len(params), torch.device("meta"))


@pytest.mark.parametrize("name", OPS)
def test_fake_cpu_tensors_give_fake_cpu_outputs(name):
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    real = _lists("cpu")
    before = raws(*real[:3])
    mode = FakeTensorMode()
    params, grads, bufs = ([mode.from_tensor(t) for t in ts] for ts in real[:3])
    with mode:
        made = _lists("cpu")  # made under the mode: fake too
        for p, g, b in [(params, grads, bufs), made[:3]]:
            out = _call(name, p, g, b, real[3])
            assert all(isinstance(o, FakeTensor) for o in out)
            _assert_outputs(name, out, len(p), torch.device("cpu"))
    assert raws(*real[:3]) == before  # the real tensors behind the fakes: untouched


# (op, role of the meta tensor, its index in the role's list, the index the error names)
META_AMONG_REAL = [
    ("fused_step_", "parameter", 1, 1),
    ("fused_step_", "gradient", 3, 3),
    ("fused_step_", "momentum_buffer", 1, 2),  # the 2nd buffer belongs to parameter 2
    ("lars_", "parameter", 1, 1),
    ("lars_", "gradient", 0, 0),
    ("square_sums", "weight", 2, 2),
    ("square_sums", "gradient", 0, 0),
]


@pytest.mark.parametrize(("name", "role", "pos", "index"), META_AMONG_REAL)
def test_a_meta_tensor_among_real_ones_is_refused_by_role_and_index(name, role, pos, index):
    params, grads, bufs, flags = _lists("cpu")
    lists = {"parameter": params, "weight": params, "gradient": grads, "momentum_buffer": bufs}
    lists[role][pos] = torch.zeros_like(lists[role][pos], device="meta")
    before = raws(params, grads, bufs)
    with pytest.raises(ValueError, match=rf"^lars_npu\[{role} {index}\]: has no memory"):
        _call(name, params, grads, bufs, flags)
    assert raws(params, grads, bufs) == before


def test_meta_buffer_beyond_what_the_flags_ask_for_is_a_count_error():
    def call():
        try:
            step([torch.ones(3)], [torch.ones(3)], [torch.zeros(3, device="meta")], [ADAPT])
        except ValueError as exc:
            return str(exc)
        return None

    msg = in_child(call)  # (it reads memory past the flags: not in this process)
    assert msg is not None and "momentum_buffers has 1 tensors, the flags ask for 0" in msg, msg


# -- 4. storage bounds -----------------------------------------------------------------------------

ROLES = ["parameter", "gradient", "momentum_buffer"]
SHRINKS = ["one_short", "half", "offset_view"]


def _op_inputs(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(3)
    shapes = [(8, 5), (3, 8), (6,)]
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [(torch.randn(s, generator=gen) * 0.01).to(dtype) for s in shapes]
    bufs = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    return params, grads, bufs


def _make_short(lists: dict[str, list[torch.Tensor]], role: str, i: int, how: str) -> None:
    t = lists[role][i]
    if how == "offset_view":
        v = past_the_end(tuple(t.shape), t.dtype)
        lists[role][i] = v
    else:
        shrink(t, how)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("how", SHRINKS)
@pytest.mark.parametrize("role", ROLES)
def test_fused_step_refuses_a_tensor_past_its_storage_and_writes_nothing(role, how, dtype):
    params, grads, bufs = _op_inputs(dtype)
    _make_short({"parameter": params, "gradient": grads, "momentum_buffer": bufs}, role, 1, how)
    err, unchanged = outcome(lambda: step(params, grads, bufs), lambda: raws(params, grads, bufs))
    assert err is not None, "not refused"
    assert err[0] == "ValueError" and err[1].startswith(f"lars_npu[{role} 1]: its storage holds")
    assert unchanged


@pytest.mark.parametrize("how", SHRINKS)
@pytest.mark.parametrize(
    ("name", "role"),
    [("lars_", "parameter"), ("lars_", "gradient"), ("square_sums", "weight"),
     ("square_sums", "gradient")],
)  # fmt: skip
def test_lars_and_square_sums_refuse_a_tensor_past_its_storage(name, role, how):
    params, grads, _ = _op_inputs(torch.float32)
    lists = {"parameter": params, "weight": params, "gradient": grads}
    _make_short(lists, role, 2, how)
    fn = rewrite if name == "lars_" else sums
    err, unchanged = outcome(lambda: fn(params, grads), lambda: raws(params, grads))
    assert err is not None, "not refused"
    assert err[0] == "ValueError" and err[1].startswith(f"lars_npu[{role} 2]: its storage holds")
    assert unchanged


# --- through the optimizer: LARS(SGD) fused (fused_step_) and unfused (lars_, then SGD) ---

NAMES = ("a.weight", "a.bias", "b.weight", "b.bias")


def model(fused: bool, momentum: float = 0.9) -> tuple[dict[str, nn.Parameter], LARS]:
    """Two linear layers after one step (momentum buffers exist), with fresh gradients."""
    torch.manual_seed(0)
    a, b = nn.Linear(5, 8), nn.Linear(8, 3)
    params = dict(zip(NAMES, (a.weight, a.bias, b.weight, b.bias), strict=True))
    sgd = torch.optim.SGD(list(params.items()), lr=0.1, momentum=momentum, weight_decay=1e-3)
    opt = LARS(sgd, fused=fused, backend="cpu")
    for t in range(2):
        gen = torch.Generator().manual_seed(100 + t)
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=gen)
        if t == 0:
            opt.step()
    return params, opt


def opt_snapshot(params: dict[str, nn.Parameter], opt: LARS) -> Any:
    """Parameters, gradients and optimizer state (every tensor's storage bytes), and the groups'
    hyper-parameters."""
    out: list[Any] = []
    for name, p in params.items():
        st = opt.state.get(p) or {}
        state = {k: raw(v) if isinstance(v, torch.Tensor) else v for k, v in st.items()}
        out.append((name, raw(p), raw(p.grad), state))
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return out, groups


def _tensor_of(params, opt, role: str, name: str) -> torch.Tensor:
    p = params[name]
    return {"parameter": p, "gradient": p.grad,
            "momentum_buffer": opt.state[p]["momentum_buffer"]}[role]  # fmt: skip


def _repoint(params, opt, role: str, name: str, t: torch.Tensor) -> None:
    p = params[name]
    if role == "parameter":
        p.data = t
    elif role == "gradient":
        p.grad = t
    else:
        opt.state[p]["momentum_buffer"] = t


@pytest.mark.parametrize("how", SHRINKS)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_lars_refuses_a_tensor_past_its_storage_by_name_and_writes_nothing(fused, role, how):
    """Fused: fused_step_'s own refusal, named. Unfused: the transaction's checks
    (lars_npu/_checks.py) refuse before lars_ runs (lars_'s own: the op tests above)."""
    params, opt = model(fused)
    t = _tensor_of(params, opt, role, "b.weight")
    if how == "offset_view":
        _repoint(params, opt, role, "b.weight", past_the_end(tuple(t.shape)))
    else:
        shrink(t, how)
    err, unchanged = outcome(opt.step, lambda: opt_snapshot(params, opt))
    assert err is not None, "not refused"
    label = {"parameter": "parameter", "gradient": "gradient of parameter",
             "momentum_buffer": "momentum_buffer of parameter"}[role]  # fmt: skip
    assert err[-1], err  # a ValueError
    assert err[1].startswith(f"{label} 'b.weight'") and "its storage holds" in err[1], err[1]
    if fused:  # the operator's refusal, named
        assert err[0] == "TensorError" and err[2:5] == (role, 2, "b.weight"), err
    assert unchanged


@pytest.mark.parametrize("how", SHRINKS)
@pytest.mark.parametrize(
    ("fn", "role"),
    [("square_sum_all", "weight"), ("square_sum_all", "gradient"), ("lars_update", "weight"),
     ("lars_update", "gradient"),
     ("functional.lars_", "weight"), ("functional.lars_", "gradient")],
)  # fmt: skip
def test_functional_api_refuses_a_tensor_past_its_storage(fn, role, how):
    """The functional API on the cpu backend reaches the operators with no check of its own."""
    gen = torch.Generator().manual_seed(4)
    w, g = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen) * 0.01
    if how == "offset_view":
        if role == "weight":
            w = past_the_end((8, 5))
        else:
            g = past_the_end((8, 5))
    else:
        shrink(w if role == "weight" else g, how)

    def call():
        if fn == "square_sum_all":
            lars_npu.square_sum_all(w, g, backend="cpu")
        elif fn == "lars_update":
            lars_npu.lars_update(w, g, 1.0, 1e-2, 1e-3, 0.1, backend="cpu")
        else:
            functional_lars_([w], [g], adapt=[True], weight_decays=[1e-3], lrs=[0.1],
                             hyper=Hyper(), backend="cpu")  # fmt: skip

    err, unchanged = outcome(call, lambda: raws([w, g]))
    assert err is not None, "not refused"
    assert err[-1] and "its storage holds" in err[1], err
    assert unchanged


# -- 5. memory shared between tensors, internal overlap, negative bit, inference tensors --------


def _vals(n: int = 12, seed: int = 5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen) for _ in range(6)]


def _shared_case(case: str):
    """(params, grads, bufs) of two tensors of 12 elements, two of them views of one storage."""
    flat = torch.randn(48)
    p0, p1, g0, g1, b0, b1 = _vals()
    g0, g1 = g0 * 0.01, g1 * 0.01
    if case == "parameter-parameter":
        p0, p1 = flat[0:12], flat[6:18]
    elif case == "parameter-parameter interleaved":  # no common element; byte ranges intersect
        p0, p1 = flat[0:24:2], flat[1:24:2]
    elif case == "parameter-same-tensor-twice":
        p0 = p1 = flat[0:12]
    elif case == "parameter-own-gradient":
        p0 = g0 = flat[0:12]
    elif case == "parameter-gradient interleaved":
        p0, g1 = flat[0:24:2], flat[1:24:2]
    elif case == "parameter-momentum_buffer":
        p0, b1 = flat[0:12], flat[11:23]
    elif case == "momentum_buffer-momentum_buffer interleaved":
        b0, b1 = flat[0:36:3], flat[1:36:3]
    elif case == "momentum_buffer-gradient":
        b0, g1 = flat[0:12], flat[4:16]
    return [p0, p1], [g0, g1], [b0, b1]


SHARED_REFUSED = {
    "parameter-parameter": r"parameter 1\]: shares memory with parameter 0; the step writes both",
    "parameter-parameter interleaved": r"parameter 1\]: shares memory with parameter 0; the step "
    r"writes both",
    "parameter-same-tensor-twice": r"parameter 1\]: shares memory with parameter 0",
    "parameter-own-gradient": r"gradient 0\]: shares memory with parameter 0; the step writes one",
    "parameter-gradient interleaved": r"gradient 1\]: shares memory with parameter 0; the step "
    r"writes one",
    "parameter-momentum_buffer": r"momentum_buffer 1\]: shares memory with parameter 0",
    "momentum_buffer-momentum_buffer interleaved": r"momentum_buffer 1\]: shares memory with "
    r"momentum_buffer 0; the step writes both",
    "momentum_buffer-gradient": r"gradient 1\]: shares memory with momentum_buffer 0; the step "
    r"writes one",
}


@pytest.mark.parametrize("case", sorted(SHARED_REFUSED))
def test_fused_step_refuses_a_written_tensor_sharing_memory_and_writes_nothing(case):
    params, grads, bufs = _shared_case(case)
    before = raws(params, grads, bufs)
    with pytest.raises(ValueError, match=r"^lars_npu\[" + SHARED_REFUSED[case]):
        step(params, grads, bufs)
    assert raws(params, grads, bufs) == before


def _same_step(lists_a, lists_b, call) -> None:
    """``call`` on two sets of tensors with the same values gives the same outputs and writes
    the same values (compared resolved: one set may hold negative-bit views)."""
    out_a, out_b = call(*lists_a), call(*lists_b)
    for x, y in zip(out_a, out_b, strict=True):
        assert torch.equal(x, y)
    for xs, ys in zip(lists_a, lists_b, strict=True):
        for x, y in zip(xs, ys, strict=True):
            assert torch.equal(x.resolve_neg(), y.resolve_neg())


@pytest.mark.parametrize("how", ["same tensor", "overlapping views", "interleaved views"])
def test_gradients_sharing_memory_are_read_as_they_are(how):
    flat = torch.randn(48) * 0.01
    g0, g1 = {"same tensor": (flat[:12], flat[:12]), "overlapping views": (flat[:12], flat[6:18]),
              "interleaved views": (flat[0:24:2], flat[1:24:2])}[how]  # fmt: skip
    p0, p1, _, _, b0, b1 = _vals()
    shared = ([p0, p1], [g0, g1], [b0, b1])
    separate = ([p0.clone(), p1.clone()], [g0.clone(), g1.clone()], [b0.clone(), b1.clone()])
    _same_step(shared, separate, step)


@pytest.mark.parametrize("role", ["parameter", "momentum_buffer"])
def test_fused_step_refuses_an_expanded_written_tensor(role):
    p, g, b = torch.randn(4, 3), torch.randn(4, 3) * 0.01, torch.randn(4, 3)
    if role == "parameter":
        p = torch.randn(1, 3).expand(4, 3)
    else:
        b = torch.randn(1, 3).expand(4, 3)
    before = raws([p, g, b])
    with pytest.raises(ValueError, match=rf"^lars_npu\[{role} 0\]: has overlapping elements"):
        step([p], [g], [b])
    assert raws([p, g, b]) == before


def test_an_expanded_gradient_is_read_as_its_values():
    p, b = torch.randn(4, 3), torch.randn(4, 3)
    g = (torch.randn(1, 3) * 0.01).expand(4, 3)
    _same_step(([p], [g], [b]), ([p.clone()], [g.contiguous()], [b.clone()]), step)


def test_lars_refuses_an_expanded_gradient_only_when_it_rewrites_it():
    w, g = torch.randn(4, 3), torch.randn(1, 3).expand(4, 3)
    with pytest.raises(ValueError, match=r"^lars_npu\[gradient 0\]: has overlapping elements"):
        rewrite([w], [g])
    # not adapted: only read (for inf/nan); an expanded weight is only read too
    rewrite([w], [g], flags=[0])
    wx = torch.randn(1, 3).expand(4, 3)
    g1 = torch.randn(4, 3)
    _same_step(([wx], [g1.clone()]), ([wx.contiguous()], [g1.clone()]), rewrite)


def test_lars_refuses_a_rewritten_gradient_sharing_memory_and_reads_shared_weights():
    flat = torch.randn(48)
    w0, w1, g0, g1, _, _ = _vals()
    with pytest.raises(ValueError, match=r"^lars_npu\[gradient 0\]: shares memory with "
                                         r"parameter 0; the step writes one"):  # fmt: skip
        rewrite([flat[:12]], [flat[:12]])
    with pytest.raises(ValueError, match=r"^lars_npu\[gradient 1\]: shares memory with "
                                         r"gradient 0; the step writes both"):  # fmt: skip
        rewrite([w0, w1], [flat[:12], flat[6:18]])
    # weights are only read: they may share memory
    shared = ([flat[:12], flat[:12]], [g0.clone(), g1.clone()])
    _same_step(shared, ([flat[:12].clone(), flat[:12].clone()], [g0.clone(), g1.clone()]), rewrite)


ROLE_SETS = [("parameter",), ("gradient",), ("momentum_buffer",),
             ("parameter", "gradient", "momentum_buffer")]  # fmt: skip


@pytest.mark.parametrize("roles", ROLE_SETS, ids="+".join)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_negative_bit_tensors_step_by_their_values(roles, dtype):
    gen = torch.Generator().manual_seed(6)
    shapes = [(4, 3), (7,), ()]
    vals = {r: [(torch.randn(s, generator=gen) * (0.01 if r == "gradient" else 1)).to(dtype)
                for s in shapes] for r in ROLES}  # fmt: skip
    memory = {r: [-v for v in vals[r]] for r in roles}  # what a negative-bit view stores
    lazy = [[memory[r][i]._neg_view() if r in roles else vals[r][i].clone()
             for i in range(len(shapes))] for r in ROLES]  # fmt: skip
    plain = [[v.clone() for v in vals[r]] for r in ROLES]
    assert all(t.is_neg() for r, ts in zip(ROLES, lazy, strict=True) if r in roles for t in ts)
    _same_step(lazy, plain, step)
    for r in roles:  # written through the view: the memory holds the negated new values
        k = ROLES.index(r)
        for mem, new in zip(memory[r], plain[k], strict=True):
            assert torch.equal(mem, -new)


@pytest.mark.parametrize("roles", [("weight",), ("gradient",), ("weight", "gradient")],
                         ids="+".join)  # fmt: skip
@pytest.mark.parametrize("name", ["lars_", "square_sums"])
def test_negative_bit_tensors_in_lars_and_square_sums(name, roles):
    gen = torch.Generator().manual_seed(7)
    w = [torch.randn(s, generator=gen) for s in [(4, 3), (5,)]]
    g = [torch.randn(s, generator=gen) * 0.01 for s in [(4, 3), (5,)]]

    def neg(ts, on):
        return [(-t)._neg_view() if on else t.clone() for t in ts]

    lazy = (neg(w, "weight" in roles), neg(g, "gradient" in roles))
    _same_step(lazy, ([t.clone() for t in w], [t.clone() for t in g]),
               rewrite if name == "lars_" else sums)  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
def test_inference_tensors_are_refused_where_written(role):
    p, g, b = torch.randn(4, 3), torch.randn(4, 3) * 0.01, torch.randn(4, 3)
    with torch.inference_mode():
        made = {"parameter": p.clone(), "gradient": g.clone(), "momentum_buffer": b.clone()}[role]
    lists = {"parameter": [p], "gradient": [g], "momentum_buffer": [b]}
    lists[role] = [made]
    args = (lists["parameter"], lists["gradient"], lists["momentum_buffer"])
    if role == "gradient":  # only read: accepted, and read as its values
        _same_step(args, ([p.clone()], [g.clone()], [b.clone()]), step)
        return
    before = raws(*args)
    with pytest.raises(ValueError, match=rf"^lars_npu\[{role} 0\]: is an inference tensor"):
        step(*args)
    assert raws(*args) == before


# -- 6. the fused step against the NumPy reference -------------------------------------------------

# tests/test_fused.py's tolerances (test_fused_kernel_matches_reference)
RTOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
PAIRS = [(torch.float32, torch.float32), (torch.float16, torch.float16),
         (torch.bfloat16, torch.bfloat16), (torch.float64, torch.float64),
         (torch.float32, torch.bfloat16), (torch.float32, torch.float16)]  # fmt: skip

shape_st = st.one_of(
    st.lists(st.integers(0, 6), max_size=3).map(tuple),
    st.integers(0, 5000).map(lambda k: (k,)),
)
tensor_st = st.fixed_dictionaries({
    "shape": shape_st,
    "pair": st.sampled_from(range(len(PAIRS))),
    "adapt": st.booleans(),
    "first": st.booleans(),
    "group": st.integers(0, 2),
    "layout": st.sampled_from(["contiguous", "transposed", "strided"]),
    "fill": st.sampled_from(["random", "random", "random", "zero weight", "zero gradient"]),
})  # fmt: skip
group_st = st.tuples(
    st.sampled_from([0.0, 0.01, 0.1, 1.0]),  # lr
    st.sampled_from([0.0, 1e-4, 5e-2]),  # weight decay
    st.sampled_from([0.0, 0.5, 0.9]),  # momentum
    st.booleans(),  # nesterov
)


def _laid_out(values: torch.Tensor, layout: str) -> torch.Tensor:
    """A copy of ``values`` in the given memory layout (the op stages the non-contiguous)."""
    if layout == "transposed" and values.dim() >= 2:
        return values.mT.clone(memory_format=torch.contiguous_format).mT
    if layout == "strided" and values.dim() >= 1:
        wide = torch.zeros(*values.shape[:-1], 2 * values.shape[-1], dtype=values.dtype)
        wide[..., ::2] = values
        return wide[..., ::2]
    return values.clone()


@given(
    tensors=st.lists(tensor_st, min_size=1, max_size=6),
    groups=st.lists(group_st, min_size=1, max_size=3),
    use_clip=st.booleans(),
    guard=st.booleans(),
    with_given=st.booleans(),
    budget=st.sampled_from([0, 64, 4096]),
    seed=st.integers(0, 2**16),
)
def test_fused_step_matches_the_reference(tensors, groups, use_clip, guard, with_given, budget,
                                          seed):  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, ng = len(tensors), len(groups)
    params, grads, bufs, flags, gidx, cases = [], [], [], [], [], []
    for spec in tensors:
        wdt, gdt = PAIRS[spec["pair"]]
        gi = spec["group"] % ng
        mu = groups[gi][2]
        w = torch.randn(spec["shape"], generator=gen, dtype=torch.float64).to(wdt)
        g = (torch.randn(spec["shape"], generator=gen, dtype=torch.float64) * 0.01).to(gdt)
        w = torch.zeros_like(w) if spec["fill"] == "zero weight" else w
        g = torch.zeros_like(g) if spec["fill"] == "zero gradient" else g
        m = torch.randn(spec["shape"], generator=gen, dtype=torch.float64).to(wdt)
        has_m = mu != 0.0  # as the optimizer does: a buffer where the group has momentum
        p_t, g_t = _laid_out(w, spec["layout"]), _laid_out(g, spec["layout"])
        params.append(p_t)
        grads.append(g_t)
        if has_m:
            bufs.append(_laid_out(m, spec["layout"]))
        flags.append(ADAPT * spec["adapt"] | MOMENTUM * has_m | FIRST * (has_m and spec["first"]))
        gidx.append(gi)
        m_in = np64(m).copy() if has_m and not spec["first"] else None
        cases.append((np64(w).copy(), np64(g).copy(), m_in, has_m))  # (copies: fp64 aliases)
    table = torch.tensor([[lr, wd, mu, float(nest)] for lr, wd, mu, nest in groups],
                         dtype=torch.float64)  # fmt: skip
    true_sums = np.array([[float(np.sum(c[0] ** 2)) for c in cases],
                          [float(np.sum(c[1] ** 2)) for c in cases]])  # fmt: skip
    given_sums = None
    if with_given:  # not this step's sums: λ must come from them
        given_sums = torch.from_numpy(true_sums * 10.0 ** rng.uniform(-1, 1, size=(2, n)))
    kept = given_sums.clone() if given_sums is not None else None

    found, lam, w_s, g_s = step(
        params, grads, bufs, flags, group=torch.tensor(gidx), hyper=table,
        given_sums=given_sums, mixed=True, budget=budget, use_clip=use_clip, guard=guard,
    )  # fmt: skip
    assert not bool(found)
    if kept is not None:
        assert torch.equal(w_s, kept[0]) and torch.equal(g_s, kept[1])
        assert torch.equal(given_sums, kept)  # read only
    hyper = dict(epsilon=EPS, coefficient=COEF, use_clip=use_clip, guard_zero_norm=guard)
    b = 0
    for i, (spec, (w, g, m_in, has_m)) in enumerate(zip(tensors, cases, strict=True)):
        lr, wd, mu, nest = groups[gidx[i]]
        adapt = bool(spec["adapt"])
        if kept is None:
            w_ref, m_ref, gp, lam_ref = reference.lars_momentum_step(
                w, g, m_in, lr=lr, weight_decay=wd, momentum=mu, nesterov=nest, lars=adapt,
                **hyper,
            )  # fmt: skip
            assert g_s[i].item() == pytest.approx(true_sums[1, i], rel=1e-12, abs=1e-300)
            if adapt:
                assert w_s[i].item() == pytest.approx(true_sums[0, i], rel=1e-12, abs=1e-300)
        else:  # λ from the given sums, then the reference's momentum step with g' as gradient
            ws_i, gs_i = kept[0, i].item(), kept[1, i].item()
            lam_ref = reference.trust_ratio(ws_i, gs_i, wd, lr, **hyper) if adapt else 1.0
            gp = lam_ref * (g + wd * w) if adapt else g
            w_ref, m_ref, _, _ = reference.lars_momentum_step(
                w, gp, m_in, lr=lr, weight_decay=0.0, momentum=mu, nesterov=nest, lars=False
            )
        assert lam[i].item() == pytest.approx(lam_ref, rel=1e-12), i
        wdt, gdt = PAIRS[spec["pair"]]
        tol = max(RTOL[gdt], RTOL[wdt])
        # tests/test_fused.py's bound (a few roundings of the storage dtype relative to the size
        # of the terms), with |g'| among the terms (given sums may make λ > 1) and, for values
        # that round to subnormals of the storage dtype, their spacing
        tiny = torch.finfo(wdt).smallest_normal * tol
        gp_mag = np.abs(gp) + np.abs(g)
        m_mag = np.abs(m_ref) if m_ref is not None else 0.0
        scale = np.abs(w) + lr * 2 * (m_mag + gp_mag)
        err = np.abs(np64(params[i]) - w_ref)
        assert np.all(err <= tol * scale + tiny), (i, float(np.max(err / (scale + tiny))))
        if has_m:
            m_scale = mu * (np.abs(m_in) if m_in is not None else 0.0) + gp_mag
            m_err = np.abs(np64(bufs[b]) - m_ref)
            assert np.all(m_err <= tol * m_scale + tiny), (i, float(np.max(m_err / m_scale)))
            b += 1


# -- 7. TensorError: the operators' refusals, named by LARS ----------------------------------------


def _named_model():
    """emb.weight, fc.weight, fc.bias, out.weight after one fused step, with fresh gradients."""
    torch.manual_seed(0)
    named_params = [("emb.weight", nn.Parameter(torch.randn(4, 3))),
                    ("fc.weight", nn.Parameter(torch.randn(8, 5))),
                    ("fc.bias", nn.Parameter(torch.randn(8))),
                    ("out.weight", nn.Parameter(torch.randn(3, 8)))]  # fmt: skip
    sgd = torch.optim.SGD(named_params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt = LARS(sgd, fused=True, backend="cpu")
    params = dict(named_params)
    for t in range(2):
        for p in params.values():
            p.grad = torch.randn_like(p)
        if t == 0:
            opt.step()
    return params, opt


def _inference_zeros(shape):
    with torch.inference_mode():
        return torch.zeros(shape)


# (mutation, class, role, op index, name, message start)
NAMED = {
    "gradient shape": (lambda P, o: setattr(P["fc.weight"].grad, "data", torch.randn(5, 8)),
                       TensorError, "gradient", 1, "fc.weight",
                       "gradient of parameter 'fc.weight' has shape (5, 8), the parameter (8, 5)"),
    "inference buffer": (lambda P, o: o.state[P["out.weight"]].update(
                             momentum_buffer=_inference_zeros((3, 8))),
                         TensorError, "momentum_buffer", 3, "out.weight",
                         "momentum_buffer of parameter 'out.weight' is an inference tensor"),
    "expanded parameter": (lambda P, o: setattr(P["fc.bias"], "data",
                                                torch.ones(1).expand(8)),
                           TensorError, "parameter", 2, "fc.bias",
                           "parameter 'fc.bias' has overlapping elements"),
    "float8 buffer": (lambda P, o: o.state[P["fc.weight"]].update(
                          momentum_buffer=torch.zeros(8, 5).to(torch.float8_e4m3fn)),
                      TensorTypeError, "momentum_buffer", 1, "fc.weight",
                      "momentum_buffer of parameter 'fc.weight' has dtype"),
    "gradient is another parameter": (lambda P, o: setattr(P["out.weight"], "grad",
                                      P["fc.weight"].detach().view(-1)[:24].view(3, 8)),
                                      TensorError, "gradient", 3, "out.weight",
                                      "LARS: parameter 'fc.weight' and gradient of parameter "
                                      "'out.weight' share memory"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(NAMED))
def test_lars_names_the_parameter_of_a_refused_tensor(case):
    mutate, cls, role, index, name, start = NAMED[case]
    params, opt = _named_model()
    mutate(params, opt)
    before = opt_snapshot(params, opt)
    with pytest.raises(cls) as exc:
        opt.step()
    err = exc.value
    assert (err.role, err.index, err.name) == (role, index, name)
    assert str(err).startswith(start), str(err)
    assert opt_snapshot(params, opt) == before


def test_the_index_is_the_operators_and_the_name_the_parameters_when_some_have_no_gradient():
    params, opt = _named_model()
    params["emb.weight"].grad = None  # the step's lists skip it: out.weight is tensor 2
    opt.state[params["out.weight"]]["momentum_buffer"] = _inference_zeros((3, 8))
    with pytest.raises(TensorError) as exc:
        opt.step()
    assert (exc.value.role, exc.value.index, exc.value.name) == ("momentum_buffer", 2, "out.weight")
    assert str(exc.value).startswith("momentum_buffer of parameter 'out.weight'")


def test_named_turns_only_per_tensor_refusals_into_tensor_errors():
    with pytest.raises(ValueError) as exc:
        step([torch.ones(3)], [torch.ones(4)], [torch.ones(3)])
    err = named(exc.value, ["w"])
    assert isinstance(err, TensorError) and isinstance(err, ValueError)
    assert (err.role, err.index, err.name) == ("gradient", 0, "w")
    unnamed = named(exc.value, None)
    assert isinstance(unnamed, TensorError) and unnamed.name is None
    assert str(unnamed).startswith("gradient 0 has shape (4,)")
    # not a per-tensor refusal (a count mismatch): left as it is
    with pytest.raises(ValueError) as exc:
        step([torch.ones(3)], [torch.ones(3)], [])
    assert str(exc.value).startswith("lars_npu: momentum_buffers has 0 tensors")
    assert named(exc.value, ["w"]) is None
    assert named(RuntimeError("lars_npu[gradient 0]: x"), ["w"]) is None


def test_functional_lars_names_the_parameter_in_the_operators_refusals():
    w, g = torch.randn(4, 3), torch.ones(1, 3).expand(4, 3)
    with pytest.raises(TensorError) as exc:
        functional_lars_([w], [g], adapt=[True], weight_decays=[0.0], lrs=[0.1], hyper=Hyper(),
                         backend="cpu", names=["fc.weight"])  # fmt: skip
    assert exc.value.name == "fc.weight"
    assert str(exc.value).startswith("gradient of parameter 'fc.weight'")


def test_a_refused_dtype_is_named_as_python_prints_it():
    w = torch.zeros(3).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"^lars_npu\[parameter 0\]: has dtype (\S+);") as exc:
        step([w], [torch.zeros(3)], [torch.zeros(3)])
    assert f"has dtype {torch.float8_e4m3fn};" in str(exc.value)
