"""One LARS + momentum-SGD step: lars_npu fused / unfused vs timm Lars, torch _foreach, NumPy.

    python benchmarks/bench_step.py [--set resnet50|bert-large|tiny] [--repeats 7]

Prints a table and writes benchmarks/results/bench_step.json. timm is optional
(`pip install --no-deps timm`: timm's own import needs torchvision, its Lars file does not).
"""

from lars_npu.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
