"""Workflows: one module per job of the CLI (bisect, repro, ...), built on the layers below."""
