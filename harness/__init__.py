"""kvm-harness: validate s390 KVM asynchronous teardown patch series on QEMU, SSH hosts and the local machine."""

__version__ = "0.1.0"
