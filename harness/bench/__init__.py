"""Benchmarks: teardown latency against guest size, memory return, reboot, and the harness's own figures.

Each benchmark module measures one thing and returns a :class:`harness.bench.output.BenchReport`; the
``kvmh bench`` commands write it as JSON (every sample), a terminal table and, with matplotlib
installed (``pip install kvm-harness[bench]``), a PNG plot.
"""
