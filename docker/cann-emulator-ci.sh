#!/usr/bin/env bash
# "CANN emulator CI": for teams that have a CANN toolkit (e.g. inside docker/Dockerfile.ascend's
# base image) but no NPU. Builds lars_npu's AscendC kernels with CANN's own RUN_MODE=cpu
# (tikicpulib, the CPU debug library) or RUN_MODE=sim (CANN's simulator), then runs the emu
# test-suite with LARS_NPU_EMU_RUNNER=cann, so the kernels CANN compiled are compared with the
# NumPy reference over every tiling branch, instead of lars_npu's own emulation.
#
#   bash docker/cann-emulator-ci.sh cpu Ascend910B1
#   bash docker/cann-emulator-ci.sh sim Ascend910B1
#
# Needs: CANN's set_env.sh sourced (or ASCEND_CANN_PACKAGE_PATH set), Python >= 3.10, g++.
# Not run by lars_npu's own CI, which has no CANN.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_MODE="${1:-cpu}"
SOC_VERSION="${2:-${SOC_VERSION:-Ascend910B1}}"
case "$RUN_MODE" in
  cpu|sim) ;;
  *) echo "usage: $0 cpu|sim [SOC_VERSION]" >&2; exit 2 ;;
esac
if [[ -z "${ASCEND_CANN_PACKAGE_PATH:-}${ASCEND_HOME_PATH:-}${ASCEND_TOOLKIT_HOME:-}" ]]; then
  if [[ -f /usr/local/Ascend/ascend-toolkit/set_env.sh ]]; then
    # shellcheck disable=SC1091
    source /usr/local/Ascend/ascend-toolkit/set_env.sh
  else
    echo "no CANN toolkit: source its set_env.sh or set ASCEND_CANN_PACKAGE_PATH" >&2
    exit 2
  fi
fi
if [[ "$RUN_MODE" == "sim" ]]; then
  # CANN's simulator libraries for the SoC (camodel) instead of the driver's runtime
  cann_root="${ASCEND_CANN_PACKAGE_PATH:-${ASCEND_HOME_PATH:-${ASCEND_TOOLKIT_HOME:-}}}"
  export LD_LIBRARY_PATH="${cann_root}/tools/simulator/${SOC_VERSION}/lib:${LD_LIBRARY_PATH:-}"
fi

rm -rf .venv-cann
python3 -m venv .venv-cann
# shellcheck disable=SC1091
. .venv-cann/bin/activate
pip install torch==2.13.0
LARS_NPU_REQUIRE_NATIVE=1 \
LARS_NPU_CMAKE_ARGS="-DLARS_NPU_CANN=ON -DRUN_MODE=${RUN_MODE} -DSOC_VERSION=${SOC_VERSION}" \
  pip install -e ".[test]"
python -c "import lars_npu._C as C; i = C.build_info(); assert i['cann_host_runner'], i; print(i)"

# The kernel tests that go through the emu backend, now run by CANN's build of the kernels.
# (test_emu_kernels.py's direct tests and self-tests are about lars_npu's own emulation.)
LARS_NPU_EMU_RUNNER=cann python -m pytest -q tests/test_emu_backend.py tests/test_ascend_host.py
LARS_NPU_EMU_RUNNER=cann LARS_NPU_BACKEND=emu lars-npu check --backend emu
