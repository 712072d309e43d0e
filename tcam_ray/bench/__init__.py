"""Benchmarks behind `tcam-ray bench KIND`; each yields one dict per case (bench.common.record)."""
