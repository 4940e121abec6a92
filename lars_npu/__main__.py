"""``python -m lars_npu``: the ``lars-npu`` command (info, check, bench, demo)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
