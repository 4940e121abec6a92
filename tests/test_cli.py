"""`python -m lars_npu` / `lars-npu`: info, check and bench, in-process (the demo has its own file,
test_demo.py)."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import textwrap

import pytest
import torch

from lars_npu import bench, cli, info
from lars_npu._backends import _REGISTRY, numpy_
from lars_npu.check import cases

from .conftest import ALL_BACKENDS


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["torch"] == torch.__version__ and set(d["backends"]) >= {"numpy", "torch"}
    # torch_npu is reported with a reason exactly when it is missing
    assert (d["torch_npu"] is None) == bool(d["torch_npu_reason"])
    assert d["backends"]["npu"]["available"] == ("npu" in ALL_BACKENDS)
    assert d["torch_threads"] == torch.get_num_threads() >= 1
    assert "cann" in d and d["cann_source"]  # a version, or why there is none
    for b in d["backends"].values():
        assert b["available"] or b["reason"]  # a missing backend always says why


def test_info_text_names_versions_threads_and_build(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out
    assert "CANN toolkit:" in out and "threads (torch.get_num_threads): " in out
    assert "native module lars_npu._C:" in out
    for name in ALL_BACKENDS:
        assert f"  {name:<6} available" in out


def test_info_reads_the_cann_version(tmp_path, monkeypatch, capsys):
    f = tmp_path / "x86_64-linux" / "ascend_toolkit_install.info"
    f.parent.mkdir()
    f.write_text("package_name=Ascend-cann-toolkit\nversion=8.0.RC3\ninnerversion=V100R001\n")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(tmp_path))
    assert info.cann_version() == ("8.0.RC3", str(f))
    assert cli.main(["info"]) == 0
    assert "CANN toolkit: 8.0.RC3" in capsys.readouterr().out


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
    assert d["failed"] == 0 and d["passed"] == len(d["rows"]) > 50
    assert {r["backend"] for r in d["rows"]} == set(ALL_BACKENDS)
    ops = {r["op"] for r in d["rows"]}
    assert ops == {"square_sum_all", "lars_update", "lars_ (multi)", "fused step"}
    assert any(r["max_abs"] > 0 for r in d["rows"])
    # every row is judged at its tolerance: max_rel is what rtol bounds
    assert all(r["max_rel"] <= r["rtol"] for r in d["rows"])
    # zero-norm edge cases, with and without guard_zero_norm, and the clip / lr 0 / wd 0 rows
    labels = [r["case"] for r in d["rows"] if r["op"] == "fused step"]
    for needle in ("zero_weight", "zero_grad", "guard", "clip", "wd=0 ", "lr=0 "):
        assert any(needle in c for c in labels), needle
    summary = {(g["backend"], g["op"]) for g in d["summary"]}
    assert ("cpu" if "cpu" in ALL_BACKENDS else "numpy", "fused step") in summary


def test_check_table_shows_errors_and_tolerance(capsys):
    assert cli.main(["check", "--quick", "--backend", "numpy", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "max abs err" in out and "rtol" in out
    row = next(line for line in out.splitlines() if line.startswith("numpy   fused step"))
    fields = row.split()
    assert fields[3] == "float16" and int(fields[4]) == sum(1 for _ in cases(True, [torch.float16]))
    assert float(fields[7]) == 2e-3 and fields[8] == "pass"


def test_check_covers_zero_norm_edge_cases():
    edges = {(c.edge, c.guard_zero_norm) for c in cases(quick=True)}
    assert {("zero_weight", False), ("zero_weight", True), ("zero_grad", False)} <= edges


def test_check_fails_when_a_backend_is_wrong(monkeypatch, capsys):
    orig = numpy_.NumpyBackend.lars_update

    def faulty(self, *args, **kwargs):
        return orig(self, *args, **kwargs) * 1.001  # 0.1% off: must be caught

    monkeypatch.setattr(numpy_.NumpyBackend, "lars_update", faulty)
    assert cli.main(["check", "--quick", "--backend", "numpy", "--dtype", "float32"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "lars_update" in out


def test_check_fails_when_the_fused_step_is_wrong(monkeypatch, capsys):
    orig = numpy_.NumpyBackend.fused_sgd_

    def faulty(self, call):
        res = orig(self, call)
        for p in call.params:
            p.mul_(1.0001)  # the weight update 0.01% off
        return res

    monkeypatch.setattr(numpy_.NumpyBackend, "fused_sgd_", faulty)
    rc = cli.main(["check", "--quick", "--backend", "numpy", "--dtype", "float64", "--json"])
    assert rc == 1
    rows = json.loads(capsys.readouterr().out)["rows"]
    bad = {r["op"] for r in rows if not r["ok"]}
    assert bad == {"fused step"}  # the other three ops never call the fused step


class FaultyBackend(numpy_.NumpyBackend):
    """A backend that gets Σg² wrong for tensors of more than one element."""

    name = "faulty"

    def square_sum_all(self, weight, gradient):
        ws, gs = super().square_sum_all(weight, gradient)
        return ws, gs * (1.5 if gradient.numel() > 1 else 1.0)


def test_check_fails_for_an_injected_faulty_backend(monkeypatch, capsys):
    monkeypatch.setitem(_REGISTRY, "faulty", FaultyBackend())
    rc = cli.main(["check", "--quick", "--backend", "faulty", "--dtype", "float32"])
    assert rc == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("faulty  square_sum_all  float32"))
    assert "FAIL" in line
    summary = out.split("summary vs the NumPy reference:")[1]
    assert "faulty" in summary and " 0 failed" not in summary


class UnavailableBackend(numpy_.NumpyBackend):
    name = "ghost"

    def available(self):
        return False, "needs hardware this machine does not have"


def test_check_unknown_backend_exit_2(capsys):
    assert cli.main(["check", "--backend", "nonesuch"]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_check_unavailable_backend_exit_2_says_why(monkeypatch, capsys):
    monkeypatch.setitem(_REGISTRY, "ghost", UnavailableBackend())
    assert cli.main(["check", "--backend", "ghost"]) == 2
    err = capsys.readouterr().err
    assert "'ghost' is not available here: needs hardware" in err


def test_check_npu_backend_exit_2_when_not_available(capsys):
    if "npu" in ALL_BACKENDS:
        pytest.skip("an NPU is available here")
    assert cli.main(["check", "--backend", "npu"]) == 2
    assert "npu" in capsys.readouterr().err


def test_bench_through_the_cli_prints_json(monkeypatch, capsys):
    monkeypatch.setitem(bench.SETS, "mini", lambda: [("a.weight", (32, 16)), ("a.bias", (32,))])
    triad = bench.triad_gbs
    monkeypatch.setattr(bench, "triad_gbs", lambda repeats: triad(repeats, elements=1 << 16))
    rc = cli.main(["bench", "--set", "mini", "--repeats", "1", "--no-numpy", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in d["rows"]}
    assert rows["lars_npu fused"]["ms"] > 0 and rows["lars_npu fused"]["params"] == 32 * 17
    assert "NumPy reference" not in rows


def test_python_dash_m_runs_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lars_npu", "--version"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("lars_npu", run_name="__main__")
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("lars_npu ")


def test_help_reads(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("info", "check", "bench", "demo"):
        assert f"    {command} " in out
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--epochs" in out and "--batch-size" in out and "--out" in out


def test_info_and_check_work_without_the_demo_extra(tmp_path):
    """`import lars_npu`, info and check must not need scikit-learn or matplotlib; the demo then
    fails with exit status 2 and says how to install them."""
    code = textwrap.dedent(
        f"""
        import sys
        for m in ("sklearn", "sklearn.datasets", "matplotlib", "matplotlib.pyplot"):
            sys.modules[m] = None  # any import of them raises ImportError
        from lars_npu import cli
        assert cli.main(["info"]) == 0
        assert cli.main(["check", "--quick", "--backend", "numpy", "--dtype", "float32"]) == 0
        rc = cli.main(["demo", "--epochs", "1", "--out", {str(tmp_path / "d")!r}])
        print("demo rc", rc)
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert p.returncode == 0, p.stderr
    assert "demo rc 2" in p.stdout
    assert 'pip install "lars-npu[demo]"' in p.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--coefficient", "0"), ("--base-lr", "-1"), ("--warmup-epochs", "-1"), ("--base-lr", "nan")],
)
def test_demo_refuses_bad_hyper_parameters_before_training(capsys, tmp_path, flag, value):
    assert cli.main(["demo", "--epochs", "1", "--out", str(tmp_path), flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and not any(tmp_path.iterdir())  # nothing trained, nothing written


# -- user errors: one line on stderr, exit status 2, before any work ---------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Training or benchmarking would be a failure: every check must come first."""

    def refuse(*a, **k):
        raise AssertionError("work started before the command line was checked")

    from lars_npu import demo

    monkeypatch.setattr(demo, "run", refuse)
    monkeypatch.setattr(bench, "run", refuse)
    monkeypatch.setattr(bench, "run_isolated", refuse)


def _file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("keep me")
    return f


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (lambda t: ["demo", "--threads", "100000"], "--threads must be between 1 and"),
        (lambda t: ["demo", "--threads", "0"], "--threads must be between 1 and"),
        (lambda t: ["demo", "--epochs", "0"], "--epochs must be between 1 and"),
        (lambda t: ["demo", "--batch-size", "-3"], "--batch-size must be between 1 and"),
        (lambda t: ["demo", "--seed", "-1"], "--seed must be between 0 and"),
        (lambda t: ["demo", "--device", "meta"], "--device 'meta' cannot run here"),
        (lambda t: ["demo", "--device", "nodevice"], "--device 'nodevice' cannot run here"),
        (lambda t: ["demo", "--backend", "nope"], "--backend 'nope': unknown lars_npu backend"),
        (lambda t: ["demo", "--out", str(_file(t))], "exists and is not a directory"),
        (lambda t: ["demo", "--out", str(_file(t) / "sub")], "is not a directory"),
        (lambda t: ["bench", "--repeats", "0"], "--repeats must be between 1 and"),
        (lambda t: ["bench", "--out", str(t)], "is a directory, not a file"),
        (lambda t: ["bench", "--out", str(_file(t) / "x.json")], "is not a directory"),
    ],
)
def test_user_errors_are_one_line_exit_2_before_any_work(no_work, tmp_path, capsys, argv, says):
    args = argv(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the probe left no trace
    if (tmp_path / "a-file").exists():
        assert (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_demo_on_a_device_torch_was_not_built_for_is_refused(no_work, capsys):
    assert cli.main(["demo", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device 'cuda' cannot run here" in err and len(err.strip().splitlines()) == 1


def test_demo_out_and_bench_json_probes_leave_no_trace(no_work, tmp_path):
    from lars_npu._usage import writable_dir, writable_file

    assert writable_dir("--out", tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert writable_file("--json", tmp_path / "c" / "r.json") == tmp_path / "c" / "r.json"
    assert not any(tmp_path.iterdir())
    (tmp_path / "r.json").write_text("old")
    writable_file("--json", tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text() == "old"  # checked, not truncated


def test_bench_writes_its_json_where_the_probe_removed_the_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(bench.SETS, "mini", lambda: [("a.weight", (32, 16)), ("a.bias", (32,))])
    triad = bench.triad_gbs
    monkeypatch.setattr(bench, "triad_gbs", lambda repeats: triad(repeats, elements=1 << 16))
    out = tmp_path / "new" / "r.json"
    argv = ["bench", "--set", "mini", "--repeats", "1", "--no-numpy", "--out", str(out)]
    assert cli.main(argv) == 0
    assert json.loads(out.read_text())["rows"]


def test_bench_writes_no_file_without_out_and_json_prints_json(monkeypatch, tmp_path, capsys):
    """--json prints JSON on every subcommand; only --out writes a file."""
    monkeypatch.setitem(bench.SETS, "mini", lambda: [("a.weight", (32, 16)), ("a.bias", (32,))])
    triad = bench.triad_gbs
    monkeypatch.setattr(bench, "triad_gbs", lambda repeats: triad(repeats, elements=1 << 16))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--set", "mini", "--repeats", "1", "--no-numpy"]) == 0
    assert "lars_npu fused" in capsys.readouterr().out
    assert list(tmp_path.rglob("*")) == []  # nothing written anywhere under the cwd
    assert cli.main(["bench", "--set", "mini", "--repeats", "1", "--no-numpy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"]
    assert list(tmp_path.rglob("*")) == []


def test_every_subcommand_module_owns_its_options():
    """One definition of each subcommand's options (bench's used to be defined twice
    and turned back into argv)."""
    import argparse

    from lars_npu import demo
    from lars_npu._tools import check_cli

    for mod in (info, check_cli, bench, demo):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        assert callable(mod.run_cli) and mod.HELP and mod.DESCRIPTION
        assert "--json" in p.format_help(), mod.__name__


@pytest.mark.parametrize(
    ("argv", "usage", "says"),
    [
        (["info", "--jsn"], "usage: lars-npu info ", "--jsn (did you mean --json?)"),
        (["demo", "--epoch", "2"], "usage: lars-npu demo ", "--epoch 2 (did you mean --epochs?)"),
        (["bench", "--jsno"], "usage: lars-npu bench ", "--jsno (did you mean --json?)"),
        (["check", "--quik"], "usage: lars-npu check ", "--quik (did you mean --quick?)"),
        (["info", "--js"], "usage: lars-npu info ", "--js (did you mean --json?)"),  # no prefixes
        (["info", "extra"], "usage: lars-npu info ", "unrecognized arguments: extra"),
        (["--jsn", "info"], "usage: lars-npu [-h]", "unrecognized arguments: --jsn"),
    ],
)
def test_an_unknown_option_is_its_subcommands_error(no_work, capsys, argv, usage, says):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(usage), captured.err
    prog = usage.removeprefix("usage: ").split(" [")[0].strip()
    assert f"\n{prog}: error: " in captured.err
    assert says in captured.err


def test_demo_on_an_npu_without_torch_npu_says_what_is_missing(no_work, capsys):
    from lars_npu._backends._native import torch_npu

    if torch_npu() is not None:
        pytest.skip("torch_npu imports here")
    for device in ("npu", "npu:0"):
        assert cli.main(["demo", "--device", device]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert f"--device {device!r}: torch_npu unavailable (" in err
        assert "CANN" in err and "torch_npu (the release for your torch" in err
        assert "docs/ascend.md" in err
        assert "Expected one of" not in err  # not torch's list of device types


def test_import_lars_npu_loads_no_command_module():
    """The commands' modules (and what they load) stay out of `import lars_npu`."""
    code = "import json, sys, lars_npu; print(json.dumps(sorted(sys.modules)))"
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(p.stdout)
    for name in ("cli", "demo", "bench", "check", "info", "_usage", "_tools"):
        assert not [m for m in loaded if m.split(".")[:2] == ["lars_npu", name]], loaded
    assert "matplotlib" not in loaded and "sklearn" not in loaded
