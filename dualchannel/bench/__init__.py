"""Benchmark suites behind ``dualchannel bench``."""
