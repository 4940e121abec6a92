"""One LARS + momentum-SGD step: lars_npu fused / unfused vs timm Lars, torch ops, NumPy.

    python benchmarks/bench_step.py [--set resnet50|bert-large|tiny] [--repeats 7] [--out PATH]

The same as `lars-npu bench` (lars_npu/bench.py): prints a table; writes the JSON only with
--out. The timm row is timed when `import timm` works in this environment (timm is not a
dependency of lars_npu: install it, with a torchvision that matches torch, to compare).
"""

from lars_npu.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
