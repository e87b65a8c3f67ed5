"""cim benchmarks: ``python -m bench SCENARIO``."""
