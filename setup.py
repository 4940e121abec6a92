"""Build lars_npu._C through CMake; fall back to a pure-Python install when that is impossible.

Environment:
  CMAKE_ARGS              extra arguments for the CMake configure step (e.g. -DLARS_NPU_WERROR=ON)
  LARS_NPU_CMAKE_ARGS     the same, appended after CMAKE_ARGS (kept as an alias)
  CMAKE_GENERATOR         the CMake generator (default: Ninja when ninja is on PATH)
  CMAKE_BUILD_PARALLEL_LEVEL  build jobs (default: the CPU count)
  LARS_NPU_REQUIRE_NATIVE =1 makes a failed C++ build an error instead of a warning (CI sets it)
  LARS_NPU_NO_NATIVE      =1 skips the C++ build (pure-Python install on the NumPy reference)
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


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if os.environ.get("LARS_NPU_NO_NATIVE") == "1":
            self._drop_stale(ext)
            self._warn("LARS_NPU_NO_NATIVE=1: skipping the C++ build")
            return
        try:
            self._cmake_build(ext)
        except Exception as exc:  # any toolchain failure: no compiler, no cmake, a compile error
            if os.environ.get("LARS_NPU_REQUIRE_NATIVE") == "1":
                raise
            self._drop_stale(ext)
            self._warn(
                f"the C++ extension could not be built ({exc}); lars_npu is installed without "
                "it and runs on the NumPy reference (`lars-npu info` shows this)"
            )

    def _drop_stale(self, ext: Extension) -> None:
        # a module left in the build tree by an earlier build must not be packaged instead
        stale = Path(self.get_ext_fullpath(ext.name))
        if stale.exists():
            stale.unlink()

    def _warn(self, msg: str) -> None:
        print(f"\n*** lars_npu: {msg}\n", file=sys.stderr)

    def _cmake_build(self, ext: Extension) -> None:
        import pybind11

        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("cmake not found")
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / "cmake"
        cfg = "Debug" if self.debug else "Release"
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
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
        stamp = fresh_build_dir(build_temp, {"cmake": cmake, "args": args})
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_temp), *args], check=True)
        stamp()  # only a configure that succeeded is reused
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        subprocess.run(
            [cmake, "--build", str(build_temp), "--config", cfg, "--parallel", jobs], check=True
        )
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        built = out_dir / f"_C{suffix}"
        if not built.exists():
            raise RuntimeError(f"CMake did not produce {built}")


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
