"""DeepSpeed: ``lars_npu.LARS`` as DeepSpeed's client optimizer, on CPU with gloo,
launched with torchrun at world sizes 2 and 4 (tests/_torchrun_worker.py).

- ZeRO stage 0 (plain data parallel) equals one process on the whole batch;
- ZeRO stages 1 and 2 step the client optimizer on flat fp32 partitions (slices of several
  layers): LARS refuses them at the first step, before any write, naming DeepSpeed and the
  recipe; also with one param group per parameter, where λ used to come silently from each
  rank's slice.

Skipped where DeepSpeed is not installed (CI installs it: it is in the ``test`` extra).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests import _torchrun_worker as worker

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is not installed (DS_BUILD_OPS=0 pip install deepspeed)",
)


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list:
    return worker.launch("deepspeed", request.param, tmp_path_factory.mktemp("ds") / "res")


def _assert_no_setup_error(res: dict) -> None:
    assert res["raised"] != "setup", res["message"]


def test_stage0_equals_one_process(ranks):
    want = worker.reference()
    for r, res in enumerate(ranks):
        x = res["stage0"]
        _assert_no_setup_error(x)
        assert x["raised"] is None, f"rank {r}: {x}"
        for n, w in want.items():
            torch.testing.assert_close(x["params"][n], w, rtol=1e-5, atol=1e-6, msg=f"rank {r} {n}")


@pytest.mark.parametrize("name", ["stage1", "stage2", "stage2_per_param"])
def test_stages_1_and_2_are_refused_before_any_write(ranks, name):
    for r, res in enumerate(ranks):
        x = res[name]
        _assert_no_setup_error(x)
        assert x["raised"] == "ValueError", f"rank {r}: {x}"
        assert "DeepSpeed ZeRO stage 1/2" in x["message"], x["message"]
        assert "stage 0" in x["message"], x["message"]
        assert x["unchanged"], f"rank {r}: {name} changed the model before refusing"
