"""What a user gets from an install: the native module or a loud fallback, one OpenMP runtime,
kernels that survive fork(). Each runs in a fresh interpreter (import-time state)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lars_npu._backends._native import native

needs_native = pytest.mark.skipif(native() is None, reason="lars_npu._C is not built here")


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_missing_native_module_warns_once_at_the_first_lars_with_reason_and_cost():
    p = _run(
        """
        import sys, warnings
        sys.modules["lars_npu._C"] = None  # as if the build had failed
        import torch, lars_npu
        assert "cpu" not in lars_npu.available_backends()
        w = torch.nn.Parameter(torch.ones(3))
        with warnings.catch_warnings(record=True) as first:
            warnings.simplefilter("always")
            opt = lars_npu.LARS(torch.optim.SGD([w], lr=0.1))
        with warnings.catch_warnings(record=True) as later:
            warnings.simplefilter("always")
            lars_npu.LARS(torch.optim.SGD([w], lr=0.1))
            w.grad = torch.ones(3)
            opt.step()
        print([str(x.message) for x in first if x.category is RuntimeWarning])
        print(len([x for x in later if "native module" in str(x.message)]))
        """
    )
    assert p.returncode == 0, p.stderr
    first, later = p.stdout.strip().splitlines()
    assert "the native module is missing (lars_npu._C was not built" in first
    assert "NumPy reference, 30-100x slower" in first and "lars-npu info" in first
    assert later == "0"  # once per process


def test_info_says_what_the_missing_native_module_costs():
    p = _run(
        """
        import sys
        sys.modules["lars_npu._C"] = None
        from lars_npu import cli
        cli.main(["info"])
        """
    )
    assert p.returncode == 0, p.stderr
    assert "native module lars_npu._C: not available — lars_npu._C was not built" in p.stdout
    assert "NumPy reference, 30-100x slower than the fused C++ kernel" in p.stdout


def test_explicitly_disabled_native_module_does_not_warn():
    p = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::RuntimeWarning",
            "-c",
            "import torch, lars_npu; w = torch.nn.Parameter(torch.ones(2)); "
            "lars_npu.LARS(torch.optim.SGD([w], lr=0.1))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**__import__("os").environ, "LARS_NPU_DISABLE_NATIVE": "1"},
    )
    assert p.returncode == 0, p.stderr


@needs_native
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_openmp_runtime_in_the_process():
    """`_C` links libgomp.so.1 and torch's wheel ships its own: the loader must bind both to ONE
    copy (by soname), else two thread pools would oversubscribe the cores."""
    if not dict(native().build_info()).get("openmp"):
        pytest.skip("built without OpenMP")
    p = _run(
        """
        import torch, lars_npu
        w, g = torch.randn(1 << 20), torch.randn(1 << 20)
        lars_npu.square_sum_all(w, g)  # an OpenMP region of ours has run
        x = torch.randn(1 << 22); (x * 2).sum()  # and one of torch's
        maps = {line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}
        print(len(maps), sorted(maps))
        """
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("1 "), p.stdout


@needs_native
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_kernels_run_in_a_forked_child_after_the_parent_used_threads():
    """GNU OpenMP's pool does not survive fork(): a child's next parallel region would hang. Our
    kernels drop to one thread there (and say so once); the result is the parent's."""
    p = _run(
        """
        import os, torch, warnings, lars_npu
        torch.set_num_threads(2)
        w, g = torch.randn(1 << 20, dtype=torch.float64), torch.randn(1 << 20, dtype=torch.float64)
        want = [float(t) for t in lars_npu.square_sum_all(w, g)]  # threads used in the parent
        r, wr = os.pipe()
        pid = os.fork()
        if pid == 0:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                got = [float(t) for t in lars_npu.square_sum_all(w, g)]
            msg = any("fork()" in str(x.message) for x in seen)
            os.write(wr, repr((got, msg)).encode())
            os._exit(0)
        os.close(wr)
        _, status = os.waitpid(pid, 0)
        got, msg = eval(os.read(r, 1 << 16).decode())
        assert status == 0 and msg, (status, msg)
        assert all(abs(a - b) <= 1e-9 * abs(b) for a, b in zip(got, want)), (got, want)
        print("ok")
        """,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ok"
