"""Kconfig fragments the harness merges into kernel configs (package data, read with importlib.resources)."""
