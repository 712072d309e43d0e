"""Benchmarks behind `tcam-ray bench KIND`; each yields one dict per case (DESIGN.md's JSON form)."""
