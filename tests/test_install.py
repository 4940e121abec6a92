"""What a user gets from an install: the native module or a loud fallback, one OpenMP runtime,
kernels that survive fork(). Each runs in a fresh interpreter (import-time state)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

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


# -- installing without the C++ module -------------------------------------------------------
# Each test installs a copy of this checkout into a fresh virtual environment that sees this
# environment's packages (torch, setuptools, pybind11, cmake) through a .pth file, with
# `pip --no-build-isolation --no-deps --no-index`: offline, a few seconds per install.

ROOT = Path(__file__).resolve().parent.parent
_PATH = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
SOURCES = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "CMakeLists.txt")


def _copy_checkout(dest: Path) -> Path:
    dest.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, dest / name)
    for tree in ("cmake", "csrc"):
        shutil.copytree(ROOT / tree, dest / tree)
    shutil.copytree(
        ROOT / "lars_npu",
        dest / "lars_npu",
        ignore=shutil.ignore_patterns("__pycache__", "_C.*", "_C_not_built.txt"),
    )
    return dest


class _Venv:
    def __init__(self, root: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=60
        )
        self.python = str(root / "bin" / "python")
        purelib = subprocess.run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        # this environment's packages, after the new environment's own (a plain path entry:
        # .pth files in there, such as this checkout's own editable install, are not run)
        outer = [p for p in site.getsitepackages() if Path(p).is_dir()]
        Path(purelib, "outer_env.pth").write_text("\n".join(outer) + "\n")
        self.cwd = root
        env = {k: v for k, v in os.environ.items() if not k.startswith("LARS_NPU_")}
        env.pop("PYTHONPATH", None)
        env["PATH"] = os.pathsep.join([str(root / "bin"), _PATH])
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        self.env = env

    def pip(self, command: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        flags = ["--no-build-isolation", "--no-deps", "--no-index"]
        return subprocess.run(
            [self.python, "-m", "pip", command, *flags, *args],
            capture_output=True, text=True, timeout=300, check=False, cwd=self.cwd,
            env={**self.env, **env},
        )  # fmt: skip

    def run(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, "-c", textwrap.dedent(code)],
            capture_output=True, text=True, timeout=120, check=False, cwd=self.cwd, env=self.env,
        )  # fmt: skip


_CHECK_FALLBACK = """
    import warnings, torch, lars_npu
    from lars_npu._backends._native import native_error
    assert lars_npu.__file__.startswith({src!r}), lars_npu.__file__
    assert "cpu" not in lars_npu.available_backends(), lars_npu.available_backends()
    w = torch.nn.Parameter(torch.ones(3))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        lars_npu.LARS(torch.optim.SGD([("w", w)], lr=0.1))
    print(native_error())
    print([str(x.message) for x in seen if "native module" in str(x.message)])
"""

needs_build_tools = pytest.mark.skipif(
    shutil.which("cmake", path=_PATH) is None or importlib.util.find_spec("pybind11") is None,
    reason="needs cmake and pybind11 in this environment (the test extra has them)",
)


def _setuptools_release() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(x) for x in version("setuptools").split(".")[:2] if x.isdigit())


# These installs run without build isolation (no network), on this environment's setuptools;
# pyproject.toml's license field needs the setuptools its [build-system] asks for (pip's usual,
# isolated build installs that one). Old torch venvs (2.6, 2.8) come with an older setuptools.
needs_build_setuptools = pytest.mark.skipif(
    _setuptools_release() < (77,),
    reason="needs setuptools >= 77 in this environment (pyproject.toml's [build-system])",
)


@needs_build_setuptools
def test_editable_install_with_the_native_build_skipped_succeeds_and_says_why(tmp_path):
    src = _copy_checkout(tmp_path / "src")
    venv = _Venv(tmp_path / "venv")
    p = venv.pip("install", "-e", str(src), LARS_NPU_NO_NATIVE="1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert not list((src / "lars_npu").glob("_C.*"))
    r = venv.run(_CHECK_FALLBACK.format(src=str(src)))
    assert r.returncode == 0, r.stderr
    reason, warned = r.stdout.strip().splitlines()
    assert (
        reason
        == "lars_npu._C was not built: the install skipped the C++ build (LARS_NPU_NO_NATIVE=1)"
    )
    assert "LARS_NPU_NO_NATIVE=1" in warned and "NumPy reference" in warned


@needs_build_tools
@needs_build_setuptools
def test_editable_install_without_a_compiler_succeeds_and_names_the_compiler(tmp_path):
    src = _copy_checkout(tmp_path / "src")
    venv = _Venv(tmp_path / "venv")
    p = venv.pip("install", "-e", str(src), CXX="/nonexistent/g++")
    assert p.returncode == 0, p.stdout + p.stderr
    r = venv.run(_CHECK_FALLBACK.format(src=str(src)))
    assert r.returncode == 0, r.stderr
    reason, warned = r.stdout.strip().splitlines()
    assert reason.startswith("lars_npu._C was not built: the C++ build failed: CMake configure")
    assert "/nonexistent/g++" in reason and "/nonexistent/g++" in warned
    # the whole story, for someone who looks: the build's own words and what to do
    text = (src / "lars_npu" / "_C_not_built.txt").read_text()
    assert "CMake Error" in text and "pip install -v" in text


@needs_build_tools
@needs_build_setuptools
def test_a_failed_native_build_is_an_error_when_it_is_required(tmp_path):
    src = _copy_checkout(tmp_path / "src")
    venv = _Venv(tmp_path / "venv")
    p = venv.pip("install", "-e", str(src), CXX="/nonexistent/g++", LARS_NPU_REQUIRE_NATIVE="1")
    assert p.returncode != 0
    assert "/nonexistent/g++" in p.stdout + p.stderr
    p = venv.pip("install", str(src), LARS_NPU_NO_NATIVE="1", LARS_NPU_REQUIRE_NATIVE="1")
    assert p.returncode != 0 and "contradict" in p.stdout + p.stderr


@needs_build_setuptools
def test_a_wheel_without_the_native_module_carries_the_reason_the_license_and_py_typed(tmp_path):
    src = _copy_checkout(tmp_path / "src")
    venv = _Venv(tmp_path / "venv")
    p = venv.pip("wheel", "-w", str(tmp_path / "w"), str(src), LARS_NPU_NO_NATIVE="1")
    assert p.returncode == 0, p.stdout + p.stderr
    (wheel,) = (tmp_path / "w").glob("lars_npu-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lars_npu/py.typed" in names and "lars_npu/_C_not_built.txt" in names
    assert not [n for n in names if n.startswith("lars_npu/_C.")]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
