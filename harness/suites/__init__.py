"""Test suites the plugin ships; run them against any target with ``kvmh test --target T``."""
