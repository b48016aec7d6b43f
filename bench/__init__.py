"""Benchmarks: our code next to the public tool it competes with, ratios out. `make bench` runs them all."""
