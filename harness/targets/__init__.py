"""Targets: the one thing tests talk to (QEMU guest, SSH host, the local machine, the reference model)."""
