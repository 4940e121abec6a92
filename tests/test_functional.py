"""The public functional API, the registry and its errors, and the pure-Python fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import lars_npu
from lars_npu import BackendUnavailableError
from lars_npu._backends import resolve

from .conftest import BACKENDS


def test_public_names():
    for name in [
        "LARS",
        "square_sum_all",
        "lars_update",
        "available_backends",
        "default_lars_filter",
        "exclude_bias_and_norm",
        "reference",
    ]:
        assert hasattr(lars_npu, name)
    for name in ["square_sum_all", "lars_update", "lars_momentum_step"]:
        assert callable(getattr(lars_npu.reference, name))
    assert set(BACKENDS) >= {"numpy", "torch"}


def test_default_choice_by_device():
    b = resolve(torch.device("cpu"))
    assert b.name == ("cpu" if "cpu" in BACKENDS else "numpy")
    assert resolve(torch.device("meta")).name == "torch"


def test_env_var_is_read_at_call_time(monkeypatch):
    w, g = torch.randn(10), torch.randn(10)
    monkeypatch.setenv("LARS_NPU_BACKEND", "numpy")
    assert resolve(torch.device("cpu")).name == "numpy"
    lars_npu.square_sum_all(w, g)
    monkeypatch.setenv("LARS_NPU_BACKEND", "tpu")
    with pytest.raises(ValueError, match="LARS_NPU_BACKEND=tpu"):
        lars_npu.square_sum_all(w, g)
    if "npu" not in lars_npu.available_backends():  # known, but not built here
        monkeypatch.setenv("LARS_NPU_BACKEND", "npu")
        with pytest.raises(BackendUnavailableError, match="LARS_NPU_BACKEND=npu"):
            lars_npu.square_sum_all(w, g)
    monkeypatch.setenv("LARS_NPU_BACKEND", "torch")
    assert resolve(torch.device("cpu")).name == "torch"
    # an explicit backend= wins over the environment
    assert resolve(torch.device("cpu"), "numpy").name == "numpy"


def test_cpu_backend_refuses_other_devices():
    if "cpu" not in BACKENDS:
        pytest.skip("no native module")
    with pytest.raises(BackendUnavailableError, match="cannot run tensors on device meta"):
        resolve(torch.device("meta"), "cpu")


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda w, g: lars_npu.square_sum_all(w, g[:3]), ValueError, "shape"),
        (lambda w, g: lars_npu.square_sum_all(w, g.double()), TypeError, "dtype"),
        (lambda w, g: lars_npu.square_sum_all(w, [1.0]), TypeError, "gradient"),
        (lambda w, g: lars_npu.square_sum_all(w.int(), g.int()), TypeError, "dtype"),
        (lambda w, g: lars_npu.lars_update(w, g, -1.0, 1.0, 0.0, 0.1), ValueError, "norm_weight"),
        (
            lambda w, g: lars_npu.lars_update(w, g, 1.0, float("nan"), 0.0, 0.1),
            ValueError,
            "norm_gradient",
        ),
        (lambda w, g: lars_npu.lars_update(w, g, 1.0, 1.0, -1e-4, 0.1), ValueError, "weight_decay"),
        (lambda w, g: lars_npu.lars_update(w, g, 1.0, 1.0, 0.0, -0.1), ValueError, "learning_rate"),
        (
            lambda w, g: lars_npu.lars_update(w, g, 1.0, 1.0, 0.0, 0.1, epsilon=0.0),
            ValueError,
            "epsilon",
        ),
        (
            lambda w, g: lars_npu.lars_update(w, g, 1.0, 1.0, 0.0, 0.1, use_clip="no"),
            TypeError,
            "use_clip",
        ),
        (lambda w, g: lars_npu.lars_update(w, g, 1.0, 1.0, True, 0.1), TypeError, "weight_decay"),
        (lambda w, g: lars_npu.square_sum_all(w, g, backend="nope"), ValueError, "nope"),
        (lambda w, g: lars_npu.square_sum_all(w, g.to("meta")), ValueError, "meta"),
        (
            lambda w, g: lars_npu.lars_update(w, g.to("meta"), 1.0, 1.0, 0.0, 0.1),
            ValueError,
            "device|meta",
        ),
    ],
)
def test_validation_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call(torch.randn(5), torch.randn(5))


def test_tensor_scalars_are_accepted():
    w, g = torch.randn(5), torch.randn(5)
    w_s, g_s = lars_npu.square_sum_all(w, g)
    out = lars_npu.lars_update(w, g, w_s, g_s, torch.tensor(1e-4), torch.tensor(0.1))
    assert out.shape == (5,)


def test_sparse_input_refused():
    w = torch.randn(4, 3)
    g = torch.randn(4, 3).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        lars_npu.square_sum_all(w, g)


def test_fallback_without_native_module():
    """With the extension unavailable, lars_npu imports, says so, and runs on NumPy."""
    code = (
        "import torch, lars_npu\n"
        "from lars_npu._backends import resolve, all_backends\n"
        "print(lars_npu.available_backends())\n"
        "print(resolve(torch.device('cpu')).name)\n"
        "print(all_backends()['cpu'].available()[1])\n"
        "m = torch.nn.Linear(3, 2)\n"
        "o = lars_npu.LARS(torch.optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9))\n"
        "m(torch.randn(4, 3)).sum().backward(); o.step(); print('stepped')\n"
    )
    env = dict(os.environ, LARS_NPU_DISABLE_NATIVE="1")
    env.pop("LARS_NPU_BACKEND", None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    assert out[0] == "['numpy', 'torch']"
    assert out[1] == "numpy"
    assert "LARS_NPU_DISABLE_NATIVE" in out[2]
    assert out[3] == "stepped"
