"""Benchmarks as pytest items: selected only with ``-m pv_bench`` or ``-m pv_qemu``."""
