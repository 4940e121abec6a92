"""The training behind ``lars-npu demo``: its settings, scikit-learn's digits, a small CNN, and one
seeded run of momentum SGD or ``LARS(SGD)`` under a warm-up + cosine schedule."""

from __future__ import annotations

import importlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .. import LARS, exclude_bias_and_norm

DEMO_EXTRA_HINT = 'install the demo extra: pip install "lars-npu[demo]" (scikit-learn, matplotlib)'


class MissingDemoDependency(RuntimeError):
    """scikit-learn or matplotlib is not installed."""


def require(module: str) -> Any:
    """Import ``module`` or raise :class:`MissingDemoDependency` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDemoDependency(
            f"lars-npu demo needs {module.split('.')[0]} ({exc}); {DEMO_EXTRA_HINT}"
        ) from None


# -- settings ----------------------------------------------------------------------------------


@dataclass
class DemoConfig:
    """The demo's settings (the CLI's defaults are these)."""

    epochs: int = 60
    batch_size: int = 1024  # 71% of the 1,438 training images: 2 steps per epoch
    base_lr: float = 0.05  # the momentum-SGD learning rate that works at base_batch...
    base_batch: int = 32
    warmup_epochs: float = 5.0  # ...scaled linearly to batch_size, reached after the warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    coefficient: float = 0.02  # LARS trust coefficient θ (NVIDIA LARC's default with clipping)
    use_clip: bool = True  # λ/lr clipped to [0, 1]: LARS never steps further than SGD would
    seed: int = 0
    threads: int = 2
    test_fraction: float = 0.2
    backend: str = "auto"
    device: str = "cpu"
    runs: tuple[str, ...] = ("sgd", "lars", "baseline")

    @property
    def peak_lr(self) -> float:
        return self.base_lr * self.batch_size / self.base_batch

    def batch_and_lr(self, run: str) -> tuple[int, float]:
        """The batch size and peak learning rate of a run (the baseline: base_batch, base_lr)."""
        if run == "baseline":
            return self.base_batch, self.base_lr
        return self.batch_size, self.peak_lr


# -- data and model ----------------------------------------------------------------------------


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_data(seed: int, test_fraction: float) -> Data:
    """scikit-learn's 8×8 digits, split by a seeded stratified permutation, standardised with the
    training set's mean and standard deviation."""
    datasets = require("sklearn.datasets")
    bunch = datasets.load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8), 0..16
    y = torch.tensor(bunch.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    train_idx: list[torch.Tensor] = []
    test_idx: list[torch.Tensor] = []
    for c in range(10):  # stratified: the same share of every digit in the test set
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = torch.cat(train_idx).sort().values
    te = torch.cat(test_idx).sort().values
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return Data(x[tr], y[tr], x[te], y[te])


def make_model() -> nn.Sequential:
    """A small CNN for 8×8 inputs: two conv layers and two fully connected ones (no
    normalisation layers, so nothing but the optimizer keeps the layers' step sizes in check)."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),  # 4×4
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),  # 2×2
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 2 * 2, 64),
            relu3=nn.ReLU(),
            fc2=nn.Linear(64, 10),
        )
    )


# -- one training run --------------------------------------------------------------------------

RUNS: dict[str, str] = {
    "sgd": "momentum SGD",
    "lars": "LARS(momentum SGD)",
    "baseline": "SGD, small batch",
}


@dataclass
class History:
    """What one run produced (lists of plain floats, JSON-ready)."""

    run: str
    label: str
    batch_size: int
    peak_lr: float
    steps_per_epoch: int
    step_lr: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)  # the batch's loss before the step
    trust_ratios: dict[str, list[float]] = field(default_factory=dict)  # LARS: λ per step
    epoch_train_loss: list[float] = field(default_factory=list)  # whole set, end of epoch
    epoch_train_acc: list[float] = field(default_factory=list)
    epoch_test_loss: list[float] = field(default_factory=list)
    epoch_test_acc: list[float] = field(default_factory=list)
    first_nonfinite_step: int | None = None
    step_ms: list[float] = field(default_factory=list)  # forward + backward + step
    opt_step_ms: list[float] = field(default_factory=list)  # optimizer.step() alone


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Steps of the linear warm-up (at least one: the first step's lr is peak / this)."""
    return max(1, round(warmup_epochs * steps_per_epoch))


def lr_lambda(epochs: int, warmup_epochs: float, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step factor of the peak learning rate: linear warm-up over ``warmup_epochs`` (the
    first step at 1/warm-up-steps of the peak), then cosine decay to 0 at the last step."""
    total = epochs * steps_per_epoch
    warm = warmup_steps(warmup_epochs, steps_per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    return f


def make_optimizer(run: str, model: nn.Module, cfg: DemoConfig, lr: float) -> Optimizer:
    """Momentum SGD, or LARS around the same SGD. Weight decay applies to the weights, not the
    biases, in every run (LARS takes the decay over from SGD, and leaves the biases alone)."""
    named = list(model.named_parameters())
    sgd = torch.optim.SGD(
        [
            {"params": [(n, p) for n, p in named if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [(n, p) for n, p in named if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=cfg.momentum,
    )
    if run in ("sgd", "baseline"):
        return sgd
    if run == "lars":
        return LARS(
            sgd,
            coefficient=cfg.coefficient,
            use_clip=cfg.use_clip,
            lars_filter=exclude_bias_and_norm,
            backend=cfg.backend,
        )
    raise ValueError(f"unknown run {run!r}; expected one of {sorted(RUNS)}")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    out = model(x)
    loss = nn.functional.cross_entropy(out, y).item()
    acc = (out.argmax(1) == y).float().mean().item()
    return loss, acc


def train(
    run: str,
    cfg: DemoConfig,
    data: Data,
    progress: Callable[[int], None] | None = None,
) -> History:
    """One seeded training run; ``progress(1)`` is called after every step. Every run starts
    from the same initial weights and draws its batches from the same seeded permutations."""
    batch, peak_lr = cfg.batch_and_lr(run)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = make_model().to(device)
    opt = make_optimizer(run, model, cfg, peak_lr)
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg.epochs, cfg.warmup_epochs, steps_per_epoch)
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    h = History(run, RUNS[run], batch, peak_lr, steps_per_epoch)
    step = 0
    for _epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        for b in range(steps_per_epoch):
            idx = order[b * batch : (b + 1) * batch]
            lr = float(opt.param_groups[0]["lr"])
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            value = loss.item()  # waits for the device, so the timing below is complete
            t2 = time.perf_counter()
            sched.step()
            h.step_lr.append(lr)
            h.step_loss.append(value)
            h.step_ms.append((t2 - t0) * 1e3)
            h.opt_step_ms.append((t2 - t1) * 1e3)
            if isinstance(opt, LARS):
                for name, lam in opt.trust_ratios().items():
                    h.trust_ratios.setdefault(name, []).append(lam)
            if h.first_nonfinite_step is None and not math.isfinite(value):
                h.first_nonfinite_step = step
            step += 1
            if progress is not None:
                progress(1)
        model.eval()
        tr_loss, tr_acc = evaluate(model, x_train, y_train)
        te_loss, te_acc = evaluate(model, x_test, y_test)
        h.epoch_train_loss.append(tr_loss)
        h.epoch_train_acc.append(tr_acc)
        h.epoch_test_loss.append(te_loss)
        h.epoch_test_acc.append(te_acc)
    return h


@contextmanager
def seeded_runtime(threads: int, device: str = "cpu") -> Iterator[None]:
    """A fixed thread count and deterministic algorithms for the demo, restored afterwards. Off
    the CPU, an op without a deterministic kernel warns instead of raising (e.g. cuBLAS without
    CUBLAS_WORKSPACE_CONFIG): the demo's reproducibility promise is for the CPU."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=torch.device(device).type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)
