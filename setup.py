"""Build lars_npu._C through CMake; fall back to a pure-Python install when that is impossible.

Environment:
  CMAKE_ARGS              extra arguments for the CMake configure step (e.g. -DLARS_NPU_WERROR=ON)
  LARS_NPU_CMAKE_ARGS     the same, appended after CMAKE_ARGS (kept as an alias)
  CMAKE_GENERATOR         the CMake generator (default: Ninja when ninja is on PATH)
  CMAKE_BUILD_PARALLEL_LEVEL  build jobs (default: the CPU count)
  LARS_NPU_REQUIRE_NATIVE =1 makes a failed C++ build an error instead of a warning (CI sets it)
  LARS_NPU_NO_NATIVE      =1 skips the C++ build (pure-Python install on the NumPy reference)

Without LARS_NPU_REQUIRE_NATIVE, a skipped or failed C++ build still installs the package (wheel
or editable). The reason is printed to the build log, which pip shows only with -v, and written
to lars_npu/_C_not_built.txt in the installed package, from where `lars-npu info` and the
package's fallback warning repeat it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


# Written next to the package when the C++ build is skipped or fails, so that the installed
# package can say why ``lars_npu._C`` is missing (pip shows a build's output only with -v).
# Read by lars_npu/_backends/_native.py; removed again by a build that succeeds.
REASON_FILE = "_C_not_built.txt"


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        # optional: setuptools' editable install then skips copying a module that was not built
        # (instead of failing with "can't copy ... doesn't exist"); CI's strict mode keeps it
        # mandatory
        super().__init__(name, sources=[], optional=not _env_flag("LARS_NPU_REQUIRE_NATIVE"))


def _env_flag(name: str) -> bool:
    return os.environ.get(name) == "1"


class CMakeBuild(build_ext):
    def run(self) -> None:
        # setuptools clears `inplace` while the extensions build and copies the results into the
        # source tree afterwards (editable installs, `build_ext --inplace`); what this build
        # writes or removes there must be decided before that
        self._to_source = bool(self.inplace or getattr(self, "editable_mode", False))
        super().run()

    def build_extension(self, ext: Extension) -> None:
        require = _env_flag("LARS_NPU_REQUIRE_NATIVE")
        if _env_flag("LARS_NPU_NO_NATIVE"):
            if require:
                raise RuntimeError(
                    "LARS_NPU_NO_NATIVE=1 and LARS_NPU_REQUIRE_NATIVE=1 contradict each other"
                )
            self._fall_back(ext, "the install skipped the C++ build (LARS_NPU_NO_NATIVE=1)")
            return
        try:
            self._cmake_build(ext)
        except Exception as exc:  # any toolchain failure: no compiler, no cmake, a compile error
            if require:
                raise
            details = exc.details if isinstance(exc, BuildError) else ""
            self._fall_back(ext, f"the C++ build failed: {exc}", details)
            return
        for path in self._reason_paths(ext):
            path.unlink(missing_ok=True)

    def _targets(self, ext: Extension) -> list[Path]:
        """Where the module goes: the build tree, and the source tree for editable installs."""
        built = Path(self.get_ext_fullpath(ext.name))
        paths = [built]
        if getattr(self, "_to_source", False):
            build_py = self.get_finalized_command("build_py")
            paths.append(Path(self._get_inplace_equivalent(build_py, ext)[0]))
        return paths

    def _reason_paths(self, ext: Extension) -> list[Path]:
        return [path.parent / REASON_FILE for path in self._targets(ext)]

    def _fall_back(self, ext: Extension, reason: str, details: str = "") -> None:
        # a module left by an earlier build must not be packaged (or imported, in an editable
        # install) instead of the fallback this build chose
        for path in self._targets(ext):
            path.unlink(missing_ok=True)
            (path.parent / TORCH_FILE).unlink(missing_ok=True)
            (path.parent / NPU_MARKER).unlink(missing_ok=True)
            for lib in path.parent.glob(REAL_RUNNER_LIBS):
                lib.unlink()
        # first paragraph: the reason, one line (the package repeats it); then the build's own
        # words; then what to do
        parts = [reason, details, ADVICE]
        text = "\n\n".join(part for part in parts if part) + "\n"
        for path in self._reason_paths(ext):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        print(f"\n*** lars_npu: {reason}\n*** {ADVICE}\n", file=sys.stderr)

    def _cmake_build(self, ext: Extension) -> None:
        try:
            import pybind11
        except ImportError as exc:
            raise RuntimeError(
                f"pybind11 is not installed in the build environment ({exc})"
            ) from exc
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("cmake not found")
        torch_version, torch_prefix, torch_abi = target_torch()
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / "cmake"
        cfg = "Debug" if self.debug else "Release"
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DLARS_TORCH_CMAKE_PREFIX={torch_prefix}",
            f"-DLARS_TORCH_CXX11_ABI={torch_abi}",
            f"-DLARS_TORCH_VERSION={torch_version}",
        ]
        generator = os.environ.get("CMAKE_GENERATOR", "")
        ninja = shutil.which("ninja")
        if not generator and ninja:
            generator = "Ninja"
        if generator:
            args.append(f"-G{generator}")
        if generator == "Ninja" and ninja:
            args.append(f"-DCMAKE_MAKE_PROGRAM={ninja}")
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        args += shlex.split(os.environ.get("LARS_NPU_CMAKE_ARGS", ""))
        # CMake reads CC/CXX only when it configures a fresh directory: a change must start one
        compilers = {k: os.environ.get(k, "") for k in ("CC", "CXX")}
        stamp = fresh_build_dir(build_temp, {"cmake": cmake, "args": args, "env": compilers})
        run_logged("CMake configure", [cmake, "-S", str(ROOT), "-B", str(build_temp), *args])
        stamp()  # only a configure that succeeded is reused
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        run_logged(
            "CMake build",
            [cmake, "--build", str(build_temp), "--config", cfg, "--parallel", jobs],
        )
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        built = out_dir / f"_C{suffix}"
        if not built.exists():
            raise RuntimeError(f"CMake did not produce {built}")
        # the torch the module was built against: lars_npu/_backends/_native.py refuses to load
        # the module under any other (its operators link that torch's C++ library)
        marker = out_dir / NPU_MARKER  # written by CMake when the NPU operator kernels are built
        for path in self._targets(ext):
            if path.parent.exists():
                (path.parent / TORCH_FILE).write_text(torch_version + "\n")
                if path.parent.resolve() != out_dir and marker.exists():
                    shutil.copyfile(marker, path.parent / NPU_MARKER)
                elif not marker.exists():
                    (path.parent / NPU_MARKER).unlink(missing_ok=True)
        # the real runner's libraries (cmake/LarsAscReal.cmake, -DLARS_NPU_ASC_DEVKIT=...) go
        # next to the module as well; copies left by an earlier build that made them do not
        real = {lib.name: lib for lib in out_dir.glob(REAL_RUNNER_LIBS)}
        for path in self._targets(ext):
            if not path.parent.exists() or path.parent.resolve() == out_dir:
                continue
            for old in path.parent.glob(REAL_RUNNER_LIBS):
                if old.name not in real:
                    old.unlink()
            for name, lib in real.items():  # replaced, not rewritten: a process may map it
                tmp = path.parent / (name + ".tmp")
                shutil.copy(lib, tmp)
                os.replace(tmp, path.parent / name)


ADVICE = (
    "lars_npu is installed without its C++ module lars_npu._C: CPU tensors run on the NumPy "
    "reference (`lars-npu info` and the first LARS on CPU tensors repeat the reason). To build "
    "it, install a C++17 compiler and reinstall: pip install -v --force-reinstall --no-deps . "
    "(or pip install -v -e . for an editable install)"
)


TORCH_FILE = "_C_torch_version.txt"
NPU_MARKER = "_C_needs_torch_npu.txt"  # (CMakeLists.txt; read by lars_npu/_backends/_native.py)
REAL_RUNNER_LIBS = "_asc_real*.so"  # the `real` runner (cmake/LarsAscReal.cmake; _backends/emu.py)


def target_torch() -> tuple[str, str, str]:
    """(torch.__version__, torch.utils.cmake_prefix_path, "1" if its C++ ABI is the CXX11 one
    else "0") of the torch installed in the
    environment lars_npu is being installed into: the module links its C++ library.

    pip builds in an isolated environment that hides the target's site-packages (a
    sitecustomize on PYTHONPATH removes them from sys.path), and torch must not be a build
    requirement: pip would fetch the newest torch for the build, not the one installed, and the
    module would not load under the installed one. So the interpreter is asked again without
    pip's PYTHONPATH: it sees its own site-packages, torch included."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    code = (
        "import torch, torch.utils; print(torch.__version__); "
        "print(torch.utils.cmake_prefix_path); print(int(torch.compiled_with_cxx11_abi()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 3:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(
            f"torch is not importable by {sys.executable} ({last}): install torch first "
            "(pip install torch==<version>), then lars_npu, which builds against it"
        )
    return lines[-3].strip(), lines[-2].strip(), lines[-1].strip()


class BuildError(RuntimeError):
    """A failed CMake step: the message is one line; ``details`` holds the output that says why."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


def run_logged(what: str, cmd: list[str]) -> None:
    """Run ``cmd`` with its output passed through (pip shows it with -v); on failure raise a
    :class:`BuildError` that says why in the build's own words (the CMake or compiler error), not
    only the exit status, so that the recorded reason is useful without the log."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip())
    if proc.wait() != 0:
        summary, details = why(lines)
        raise BuildError(f"{what} exited with status {proc.returncode}: {summary}", details)


def why(lines: list[str], limit: int = 15) -> tuple[str, str]:
    """(one line, a few lines) saying why a CMake step failed: the message of the first CMake
    error, else the first compiler errors, else the last lines of the output."""
    text = [line for line in lines if line.strip()]
    for i, line in enumerate(text):
        if line.startswith("CMake Error"):
            message = []
            for follow in text[i + 1 :]:
                if not follow.startswith(" ") or follow.strip().startswith("Call Stack"):
                    break
                message.append(follow.strip())
            return " ".join(message) or line.strip(), "\n".join(text[i : i + limit])
    errors = [line.strip() for line in text if "error:" in line]
    if errors:
        return errors[0], "\n".join(errors[:limit])
    tail = text[-limit:]
    return (tail[-1].strip() if tail else "no output"), "\n".join(tail)


STAMP = "lars_npu_configure.json"


def fresh_build_dir(build_temp: Path, key: dict[str, object]) -> Callable[[], None]:
    """Empty ``build_temp`` unless it was configured by this very toolchain and arguments.

    pip builds in a throw-away environment (``/tmp/pip-build-env-*``) whose cmake and ninja are
    gone by the next ``pip install .``, while the CMake cache in the source tree still names them:
    reusing it makes configure fail and the install silently lose ``_C``. So the cache is kept
    only while every path it was configured with is the same.
    """
    stamp = build_temp / STAMP
    text = json.dumps(key, sort_keys=True)
    try:
        same = stamp.read_text() == text
    except OSError:
        same = False
    if not same and build_temp.exists():
        shutil.rmtree(build_temp)
    build_temp.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    return lambda: stamp.write_text(text)


setup(ext_modules=[CMakeExtension("lars_npu._C")], cmdclass={"build_ext": CMakeBuild})
