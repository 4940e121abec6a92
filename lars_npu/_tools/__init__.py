"""The parts of ``lars-npu bench`` and ``lars-npu demo`` that are not their command lines: shape
sets and measurements (bench), the training runs and their report (demo). Nothing here is
imported by ``import lars_npu``."""
