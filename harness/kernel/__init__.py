"""Kernel trees: the default source, headers, patch series, configuration and builds."""
