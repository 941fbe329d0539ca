"""Test models shared by the tests, the labs and the benchmarks (never import tests/ from them)."""
