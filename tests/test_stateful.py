"""A stateful property test (hypothesis ``RuleBasedStateMachine``): steps interleaved
with every mutation a user can make between them, on the fused path, the unfused path and the
AscendC kernels on our emulation. After each step the weights and momentum buffers equal the NumPy
reference model's, or the step was refused with nothing changed.

Whether a step must be refused is decided from facts, not from the history: a gradient or a
momentum buffer whose shape is not its parameter's (a reshaped or swapped gradient, a re-pointed or
resized buffer, a parameter given a new shape), or an inner step made to raise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from torch import nn

from lars_npu import LARS, available_backends, reference

SHAPES = {"l0.weight": (4, 3), "l1.weight": (4, 3), "l2.bias": (5,)}


class LarsMachine(RuleBasedStateMachine):
    fused: bool | None = None
    backend = "auto"
    dtype = torch.float64
    tol = 1e-10

    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.params = {
            n: nn.Parameter(torch.randn(s, generator=self.gen, dtype=self.dtype))
            for n, s in SHAPES.items()
        }
        self.lr, self.mu, self.wd = 0.1, 0.9, 1e-3
        sgd = torch.optim.SGD(
            list(self.params.items()), lr=self.lr, momentum=self.mu, weight_decay=self.wd
        )
        self.opt = LARS(sgd, fused=self.fused, backend=self.backend, coefficient=0.01)
        self.w = {
            n: p.detach().to(torch.float64, copy=True).numpy() for n, p in self.params.items()
        }
        self.m: dict[str, np.ndarray | None] = dict.fromkeys(self.params)
        self.group_of = dict.fromkeys(self.params, 0)
        self.group_hyper = [[self.lr, self.mu, self.wd]]
        self.raise_inner = False

    # -- facts --
    def _buffer(self, name: str) -> torch.Tensor | None:
        return self.opt.state.get(self.params[name], {}).get("momentum_buffer")

    def misfits(self, *, stepped: bool = True, unread: bool = True) -> list[str]:
        """Parameters whose gradient or momentum buffer does not have the parameter's shape.
        With ``stepped``, only those the step reads (a parameter without a gradient is skipped);
        without ``unread``, a buffer in a group whose momentum is 0 does not count (the step does
        not read it: refusing it and accepting it are both right)."""
        bad = []
        for n, p in self.params.items():
            if stepped and p.grad is None:
                continue
            buf = self._buffer(n)
            read = unread or self.group_hyper[self.group_of[n]][1] != 0
            if (p.grad is not None and p.grad.shape != p.shape) or (
                buf is not None and buf.shape != p.shape and read
            ):
                bad.append(n)
        return bad

    # -- mutations --
    @rule()
    def fresh_grads(self) -> None:
        for p in self.params.values():
            p.grad = torch.randn(p.shape, generator=self.gen, dtype=self.dtype)

    @rule(name=st.sampled_from(sorted(SHAPES)))
    def repoint_buffer_same_values(self, name: str) -> None:
        buf = self.opt.state.get(self.params[name], {}).get("momentum_buffer")
        if buf is not None:
            buf.data = buf.detach().clone()  # new storage, same values: still the buffer

    @rule(name=st.sampled_from(sorted(SHAPES)), how=st.sampled_from(["resize", "set", "data"]))
    def corrupt_buffer(self, name: str, how: str) -> None:
        buf = self._buffer(name)
        if buf is None:
            return
        if how == "resize":
            buf.resize_(buf.numel() + 7)
        elif how == "set":
            buf.set_(torch.zeros(2, dtype=buf.dtype))
        else:
            buf.data = torch.zeros(1, dtype=buf.dtype)

    @precondition(lambda self: bool(self.misfits(stepped=False)))
    @rule()
    def repair(self) -> None:
        """Fresh gradients of the parameters' shapes; a buffer that does not fit is put back from
        the model when the model's fits, else dropped (the next step starts it again)."""
        self.fresh_grads()
        for name in self.misfits(stepped=False):
            p, m = self.params[name], self.m[name]
            if m is not None and m.shape == tuple(p.shape):
                self.opt.state[p]["momentum_buffer"] = torch.tensor(m, dtype=self.dtype)
            else:
                self.opt.state[p].pop("momentum_buffer", None)
                self.m[name] = None

    @rule(name=st.sampled_from(sorted(SHAPES)))
    def reshape_grad(self, name: str) -> None:
        g = self.params[name].grad
        if g is not None:
            # torch refuses ``p.grad = <other shape>``; the gradient's own data is not checked
            g.data = g.t().contiguous() if g.ndim == 2 else g.reshape(-1, 1)

    @rule(name=st.sampled_from(sorted(SHAPES)))
    def reshape_param(self, name: str) -> None:
        """A parameter given data of another shape (``p.data = ...``): its gradient and buffer no
        longer fit until repaired."""
        p = self.params[name]
        shape = tuple(reversed(p.shape)) if p.ndim == 2 else (p.numel() + 1,)
        p.data = torch.randn(shape, generator=self.gen, dtype=self.dtype)
        self.w[name] = p.detach().to(torch.float64, copy=True).numpy()

    @rule(a=st.sampled_from(["l0.weight", "l1.weight"]))
    def swap_grads(self, a: str) -> None:
        b = "l1.weight" if a == "l0.weight" else "l0.weight"
        pa, pb = self.params[a], self.params[b]
        if (
            pa.grad is not None
            and pb.grad is not None
            and pa.shape == pb.shape == pa.grad.shape == pb.grad.shape
        ):
            pa.grad, pb.grad = pb.grad, pa.grad

    @rule(name=st.sampled_from(sorted(SHAPES)))
    def replace_param_data(self, name: str) -> None:
        p = self.params[name]
        p.data = torch.randn(p.shape, generator=self.gen, dtype=self.dtype)
        self.w[name] = p.detach().to(torch.float64, copy=True).numpy()

    @rule()
    def checkpoint_round_trip(self) -> None:
        """A checkpoint of this optimizer loads back; one whose buffers do not fit the
        parameters (after a corruption or a reshape) is refused with nothing changed."""
        sd = self.opt.state_dict()
        if self.misfits(stepped=False) and any(
            self._buffer(n) is not None and self._buffer(n).shape != p.shape
            for n, p in self.params.items()
        ):
            self._expect_refusal(lambda: self.opt.load_state_dict(sd), (ValueError,))
        else:
            self.opt.load_state_dict(sd)

    @rule(name=st.sampled_from(sorted(SHAPES)))
    def load_misfit_checkpoint(self, name: str) -> None:
        """A checkpoint whose buffer for ``name`` has one element too many (and another lr, so a
        load would show): refused, nothing changed."""
        if self._buffer(name) is None:
            return
        sd = self.opt.state_dict()
        key = next(
            k for gi, g in enumerate(self.opt.param_groups) for k, q in
            zip(sd["param_groups"][gi]["params"], g["params"], strict=True)
            if q is self.params[name]
        )  # fmt: skip
        sd["state"][key] = {
            **sd["state"][key],
            "momentum_buffer": torch.zeros(self.params[name].numel() + 1),
        }
        sd["param_groups"] = [{**g, "lr": 0.5} for g in sd["param_groups"]]
        self._expect_refusal(lambda: self.opt.load_state_dict(sd), (ValueError,))

    @rule(lr=st.sampled_from([0.0, 0.05, 0.2]), mu=st.sampled_from([0.0, 0.5, 0.9]))
    def change_lr_momentum(self, lr: float, mu: float) -> None:
        g = self.opt.param_groups[0]
        g["lr"], g["momentum"] = lr, mu
        self.group_hyper[0][:2] = [lr, mu]

    @rule(wd=st.sampled_from([0.0, 1e-3, 0.05]))
    def change_weight_decay(self, wd: float) -> None:
        self.opt.param_groups[0]["weight_decay"] = wd
        self.group_hyper[0][2] = wd

    @precondition(lambda self: "l3.weight" not in self.params)
    @rule()
    def add_group(self) -> None:
        p = nn.Parameter(torch.randn(3, 2, generator=self.gen, dtype=self.dtype))
        self.opt.add_param_group(
            {"params": [("l3.weight", p)], "lr": 0.05, "momentum": 0.5, "weight_decay": 0.01}
        )
        self.params["l3.weight"] = p
        self.w["l3.weight"] = p.detach().to(torch.float64, copy=True).numpy()
        self.m["l3.weight"] = None
        self.group_of["l3.weight"] = len(self.group_hyper)
        self.group_hyper.append([0.05, 0.5, 0.01])

    @precondition(lambda self: self.fused is False)
    @rule()
    def make_inner_step_raise(self) -> None:
        self.raise_inner = True

    def _expect_refusal(self, fn: Callable[[], object], kinds: tuple[type, ...]) -> None:
        before = self._observe()
        lrs = [g["lr"] for g in self.opt.param_groups]
        with pytest.raises(kinds):
            fn()
        self._assert_unchanged(before)
        assert lrs == [g["lr"] for g in self.opt.param_groups]

    def _assert_unchanged(self, before: dict[str, tuple[np.ndarray | None, ...]]) -> None:
        after = self._observe()
        for n in before:
            for x, y in zip(before[n], after[n], strict=True):
                assert (x is None) == (y is None) and (
                    x is None or np.array_equal(x, y, equal_nan=True)
                ), n

    # -- the step --
    @rule()
    def fresh_grads_and_step(self) -> None:
        """The common case, so that most examples reach several real steps."""
        self.fresh_grads()
        self.step()

    @rule()
    def step(self) -> None:
        grads = {
            n: None if p.grad is None else p.grad.detach().to(torch.float64, copy=True).numpy()
            for n, p in self.params.items()
        }
        before = self._observe()
        must_refuse = bool(self.misfits(unread=False))
        may_refuse = bool(self.misfits())
        handle = None
        if self.raise_inner:

            def boom(*_: object) -> None:
                raise RuntimeError("inner step failed")

            handle = self.opt.optimizer.register_step_pre_hook(boom)
        try:
            self.opt.step()
        except (ValueError, TypeError, RuntimeError) as exc:
            assert may_refuse or self.raise_inner, f"refused a good step: {exc}"
            self._assert_unchanged(before)
            return
        finally:
            if handle is not None:
                handle.remove()
            self.raise_inner = False
        assert not must_refuse, f"a step with misfits {self.misfits()} was not refused"
        for n, g in grads.items():
            if g is None:
                continue
            lr, mu, wd = self.group_hyper[self.group_of[n]]
            w, m, _, _ = reference.lars_momentum_step(
                self.w[n], g, self.m[n] if mu != 0 else None, lr=lr, weight_decay=wd,
                momentum=mu, lars="bias" not in n, coefficient=0.01,
            )  # fmt: skip
            self.w[n] = w
            if mu != 0:
                self.m[n] = m
        self.opt.zero_grad()

    def _observe(self) -> dict[str, tuple[np.ndarray | None, ...]]:
        out = {}
        for n, p in self.params.items():
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            out[n] = (
                p.detach().to(torch.float64, copy=True).numpy(),
                None if p.grad is None else p.grad.detach().to(torch.float64, copy=True).numpy(),
                None if buf is None else buf.detach().to(torch.float64, copy=True).numpy(),
            )
        return out

    @invariant()
    def matches_the_reference(self) -> None:
        if not hasattr(self, "params"):
            return
        for n, p in self.params.items():
            np.testing.assert_allclose(
                p.detach().to(torch.float64, copy=True).numpy(),
                self.w[n],
                rtol=self.tol,
                atol=self.tol,
                err_msg=n,
            )


class FusedMachine(LarsMachine):
    fused = True


class UnfusedMachine(LarsMachine):
    fused = False


class EmuMachine(LarsMachine):
    fused = True
    backend = "emu"
    dtype = torch.float32
    tol = 2e-5


SETTINGS = settings(max_examples=100, stateful_step_count=40, deadline=None, derandomize=True)


@pytest.mark.parametrize("machine", [FusedMachine, UnfusedMachine, EmuMachine])
def test_lars_state_machine(machine):
    if machine is EmuMachine and "emu" not in available_backends():
        pytest.skip("emu backend not built")
    if machine is FusedMachine and "cpu" not in available_backends():
        pytest.skip("no native module: the fused path would run on the NumPy reference")
    case = machine.TestCase
    case.settings = SETTINGS
    case("runTest").runTest()
