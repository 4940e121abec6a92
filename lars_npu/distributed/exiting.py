"""End a process that used torch.distributed without racing the interpreter's teardown
(docs/distributed.md, "Exiting a gloo process").

gloo's worker threads outlive ``destroy_process_group()`` (torch keeps the process groups
referenced). When one of them drops a finished collective's tensor, it takes the GIL to release the
tensor's Python object; if the main thread is finalizing the interpreter by then, CPython before
3.14 ends that thread with ``pthread_exit``, whose unwinding reaches a ``noexcept`` C++ destructor
and calls ``std::terminate``: "terminate called without an active exception", SIGABRT (exit -6),
after all the work is done. Upstream: pytorch/pytorch#190489 (the abort at exit, open), and
python/cpython#87135 (CPython 3.14 hangs such threads instead of exiting them).

A rank's process does not need that teardown: :func:`run_and_exit` does what a normal exit does
before it (joins the non-daemon threads, runs the ``atexit`` callbacks, flushes the output) and
then ends the process with ``os._exit``, so the teardown, and the race, never happen.
"""

from __future__ import annotations

import atexit
import ctypes
import multiprocessing
import multiprocessing.util
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["run_and_exit"]


def run_and_exit(main: Callable[..., object], *args: Any, **kwargs: Any) -> NoReturn:
    """Run ``main(*args, **kwargs)``, then end the process with ``os._exit``; never returns.

    The exit code is what the interpreter would have given: 0 if ``main`` returns, the code of a
    ``SystemExit`` it raises (``None``: 0; a message: printed to stderr, 1), 130 for
    ``KeyboardInterrupt``, and 1 for any other exception, whose traceback is printed to stderr
    first (through ``sys.excepthook``). A failing rank is never turned into a success.

    Before ``os._exit`` it does what a normal exit does before the interpreter's teardown: it joins
    the non-daemon threads, runs the ``atexit`` callbacks (``logging`` flushes its handlers there)
    and flushes the output (``sys.stdout``, ``sys.stderr``, C stdio). In a ``multiprocessing``
    child it runs what ``multiprocessing`` runs when a target returns (the process's finalizers)
    instead of the ``atexit`` callbacks, which a forked child would have inherited from its
    parent. Everything else ``main`` must hand over itself before it returns: close the files it
    writes (``torch.save`` does), call ``queue.close(); queue.join_thread()`` on a
    ``multiprocessing`` queue it put results in, and end with ``dist.destroy_process_group()``
    after the last collective (a barrier first if a peer may still need this rank). Call it from
    the main thread, as the last thing a rank does: ``if __name__ == "__main__":
    run_and_exit(main)``, or as the body of a ``multiprocessing`` / ``torch.multiprocessing``
    target.
    """
    try:
        main(*args, **kwargs)
        code = 0
    except SystemExit as exc:
        code = _system_exit_code(exc)
    except KeyboardInterrupt:
        _print_exception()
        code = 130
    except BaseException:
        _print_exception()
        code = 1
    _finish_and_exit(code)


def _system_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code if -(2**31) <= exc.code < 2**31 else 1  # os._exit takes a C int
    try:
        print(exc.code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _print_exception() -> None:
    try:
        sys.excepthook(*sys.exc_info())
    except BaseException:  # a broken hook must not hide the exit code
        pass


def _finish_and_exit(code: int) -> NoReturn:
    try:
        me, main_thread = threading.current_thread(), threading.main_thread()
        for t in threading.enumerate():
            if t is not me and t is not main_thread and not t.daemon:
                t.join()
        if multiprocessing.parent_process() is not None:
            # a multiprocessing child: what multiprocessing does when its target returns (the
            # process's finalizers, e.g. its queues' feeder threads joined); no atexit callbacks,
            # which a forked child would have inherited from its parent
            finish = getattr(multiprocessing.util, "_exit_function", None)
        else:
            finish = getattr(atexit, "_run_exitfuncs", None)  # CPython's, since 3.0
        if finish is not None:
            finish()  # errors in callbacks are printed there, as at a normal exit
    except BaseException:
        _print_exception()
        code = code or 1
    finally:
        _flush_output()
        os._exit(code)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    try:  # C stdio buffers (native libraries' printf), which exit() would flush
        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass
