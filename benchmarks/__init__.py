"""Throughput and latency benchmarks writing JSON results."""
