"""KVM ioctl scenarios for s390 asynchronous teardown of protected guests, and generic VM lifecycles.

Modules: ``uapi`` (the KVM ABI in ctypes, shipped to targets), ``abi_check`` (uapi vs. kernel headers),
``agent`` (stdlib-only step runner on the target), ``bundle`` (agent + uapi as one zipapp), ``caps`` and
``probe`` (what a target offers, skip reasons), ``model`` (expected results), ``scenarios`` (the step
lists), ``compare`` (side-by-side deviations), ``runner`` (run agent step lists and scenarios on a Target).
"""
