"""Helpers that the tests and the benchmarks share: real services on free loopback ports."""
