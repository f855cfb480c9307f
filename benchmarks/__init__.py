"""Benchmark scripts of pyro_snf (measurements, not tests)."""
