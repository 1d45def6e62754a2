"""Benchmarks over tests/lab.py (run by `make bench`, not collected by pytest)."""
