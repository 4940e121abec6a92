"""Loop the multi-process entry points under CPU load and count aborts at exit.

Not part of CI (it takes tens of minutes): a tool to run by hand after touching how a rank ends.
gloo's worker threads can outlive ``destroy_process_group()`` and abort a process while the
interpreter finalizes ("terminate called without an active exception", exit -6); on a busy
machine that happens in a few percent of runs, so only a loop under load shows it
(docs/distributed.md, "Exiting a gloo process").

    python .ci/exit_loop.py                        # every --mode of the example, 30 runs each
    python .ci/exit_loop.py --modes zero --runs 50
    python .ci/exit_loop.py --runs 10 --pytest tests/test_examples.py tests/test_deepspeed.py
    python .ci/exit_loop.py --root /tmp/old-checkout --modes zero   # another checkout's code

Two busy-loop processes (``--spinners``) load the CPU for the whole loop. A run fails if its exit
code is not 0; runs that print "terminate called" (the abort's mark) are counted separately.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MODES = ["ddp", "fsdp2", "hsdp", "fsdp1", "zero", "flat"]
ABORT_MARK = "terminate called"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _example_cmd(root: Path, mode: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
        str(root / "examples" / "distributed_lars.py"), "--mode", mode, "--steps", "4",
    ]  # fmt: skip


def _run(cmd: list[str], root: Path) -> tuple[int, str]:
    """Run ``cmd`` in its own session; on any interruption, kill that whole session."""
    env = {k: v for k, v in os.environ.items() if k != "LARS_NPU_BACKEND"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=900)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, out


def _loop(label: str, make_cmd: list[str] | None, mode: str, root: Path, runs: int) -> list[int]:
    failed = aborted = 0
    for i in range(runs):
        cmd = make_cmd if make_cmd is not None else _example_cmd(root, mode)
        t0 = time.monotonic()
        code, out = _run(cmd, root)
        n_abort = out.count(ABORT_MARK)
        failed += code != 0
        aborted += n_abort > 0
        status = "ok" if code == 0 else f"FAILED rc={code}"
        if make_cmd is not None and code == 0:  # pytest: its summary line
            status += f" ({(out.strip().splitlines() or [''])[-1]})"
        print(f"{label} run {i + 1}/{runs}: {status}, {n_abort} '{ABORT_MARK}' lines, "
              f"{time.monotonic() - t0:.1f}s", flush=True)  # fmt: skip
        if code != 0:
            print("    " + "\n    ".join(out.strip().splitlines()[-15:]), flush=True)
    return [failed, aborted]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated example modes")
    ap.add_argument("--spinners", type=int, default=2, help="busy-loop processes to start")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--pytest", nargs="+", metavar="ARG", help="loop `pytest -q -x ARG...`")
    args = ap.parse_args()
    root = args.root.resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below

    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.spinners)
    ]
    results: dict[str, list[int]] = {}
    try:
        if args.pytest:
            cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                   *args.pytest]  # fmt: skip
            results["pytest"] = _loop("pytest", cmd, "", root, args.runs)
        else:
            for mode in args.modes.split(","):
                results[mode] = _loop(mode, None, mode, root, args.runs)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    print(f"\n{root}: {args.runs} runs each, {args.spinners} busy-loop processes")
    print(f"{'target':8s} {'failed':>6s} {'aborted':>7s}")
    for label, (failed, aborted) in results.items():
        print(f"{label:8s} {failed:6d} {aborted:7d}")
    sys.exit(1 if any(f or a for f, a in results.values()) else 0)


if __name__ == "__main__":
    main()
