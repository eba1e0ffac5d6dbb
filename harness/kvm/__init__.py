"""KVM ioctl scenarios: ABI (``uapi``), target agent, capability probe, reference model, scenarios and runner."""
