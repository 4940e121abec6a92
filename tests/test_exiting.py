"""lars_npu.distributed.run_and_exit: a rank ends with os._exit, skipping the interpreter
teardown that gloo's threads can abort, yet exits as a normal exit would: the right code, the
traceback of a failure, output flushed, atexit callbacks run, non-daemon threads joined, and a
multiprocessing queue's results delivered."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from lars_npu.distributed import run_and_exit

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = """
import atexit, ctypes, sys, threading, time
from lars_npu.distributed import run_and_exit
atexit.register(lambda: print("atexit ran"))
def late():
    time.sleep(0.2)
    print("thread joined")
"""


def _run(body: str) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    # stdout is a pipe, so print() is block-buffered: it only shows up if the exit flushes it
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_a_main_that_returns_exits_0_after_a_normal_exits_work():
    proc = _run("""
        def main(a, b=0):
            threading.Thread(target=late).start()
            print("result", a + b, end="")  # no newline: still buffered at the exit
            sys.stdout.flush()
            ctypes.CDLL(None).printf(b" from C")  # C stdio's buffer: flushed too
            sys.stderr.write("to stderr")
        run_and_exit(main, 1, b=2)
        print("not reached")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("result 3 from C")
    assert "thread joined" in proc.stdout and "atexit ran" in proc.stdout
    assert "not reached" not in proc.stdout and proc.stderr == "to stderr"


def test_an_exception_gives_its_traceback_and_exit_code_1():
    proc = _run("""
        def main():
            print("partial output", end="")
            raise ValueError("rank failed")
        run_and_exit(main)
    """)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: rank failed" in proc.stderr
    assert proc.stdout.startswith("partial output") and "atexit ran" in proc.stdout


@pytest.mark.parametrize(
    ("raised", "code", "stderr"),
    [("SystemExit(3)", 3, ""), ("SystemExit()", 0, ""), ("SystemExit('bad args')", 1, "bad args\n"),
     ("KeyboardInterrupt()", 130, "KeyboardInterrupt")],
)  # fmt: skip
def test_system_exit_and_interrupts_keep_the_interpreters_exit_codes(raised, code, stderr):
    proc = _run(f"""
        def main():
            raise {raised}
        run_and_exit(main)
    """)
    assert proc.returncode == code, proc.stderr
    assert stderr in proc.stderr and (stderr or proc.stderr == "")
    assert "atexit ran" in proc.stdout


def _queue_target(results: object, fail: bool) -> None:
    def main() -> None:
        results.put(("payload", "x" * 200_000))  # more than a pipe holds: the feeder must run
        results.close()
        results.join_thread()
        if fail:
            raise RuntimeError("after reporting")

    run_and_exit(main)


@pytest.mark.parametrize("fail", [False, True])
def test_a_spawned_worker_hands_over_its_queue_and_keeps_its_exit_code(fail):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    p = ctx.Process(target=_queue_target, args=(results, fail))
    p.start()
    try:
        tag, data = results.get(timeout=120)
    finally:
        p.join(120)
    assert (tag, len(data)) == ("payload", 200_000)
    assert p.exitcode == (1 if fail else 0)


def test_a_forked_worker_runs_none_of_its_parents_atexit_callbacks():
    """A forked child inherits its parent's atexit callbacks (temporary directories' clean-up
    among them); multiprocessing's own fork children never run them, neither does run_and_exit."""
    proc = _run("""
        import multiprocessing as mp
        def child():
            run_and_exit(print, "child ran")
        if __name__ == "__main__":
            p = mp.get_context("fork").Process(target=child)
            p.start()
            p.join()
            print("child exit code", p.exitcode)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("atexit ran") == 1  # the parent's own exit
    assert "child ran" in proc.stdout and "child exit code 0" in proc.stdout
