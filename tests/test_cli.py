"""`python -m lars_npu` / `lars-npu`: info and check, in-process."""

from __future__ import annotations

import json

import pytest

from lars_npu import cli
from lars_npu._backends import numpy_

from .conftest import ALL_BACKENDS


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["torch"] and set(d["backends"]) >= {"numpy", "torch"}
    assert d["torch_npu"] is None and d["torch_npu_reason"]


def test_default_command_prints_backends_and_passes(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in ALL_BACKENDS:
        assert f"  {name:<6} available" in out
        assert f"  {name:<6} " in out.split("summary")[1]
    assert "0 failed" in out and "FAIL" not in out


def test_check_json_holds_real_numbers(capsys):
    assert cli.main(["check", "--quick", "--dtype", "float32", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["failed"] == 0 and len(d["rows"]) > 50
    assert {r["backend"] for r in d["rows"]} == set(ALL_BACKENDS)
    assert any(r["max_abs"] > 0 for r in d["rows"])


def test_check_fails_when_a_backend_is_wrong(monkeypatch, capsys):
    orig = numpy_.NumpyBackend.lars_update

    def faulty(self, *args, **kwargs):
        return orig(self, *args, **kwargs) * 1.001  # 0.1% off: must be caught

    monkeypatch.setattr(numpy_.NumpyBackend, "lars_update", faulty)
    assert cli.main(["check", "--quick", "--backend", "numpy", "--dtype", "float32"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "lars_update" in out


def test_check_unknown_backend_exit_2(capsys):
    assert cli.main(["check", "--backend", "npu"]) == 2


def test_help_reads(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "check" in capsys.readouterr().out
