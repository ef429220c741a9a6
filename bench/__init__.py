"""Kiln's benchmarks: every scenario beside a raw baseline measured in the same run."""
