"""The PV state machine of the reference model: ``KVM_S390_PV_COMMAND`` and what a VM's teardown does.

This is the part to read line by line against ``async-destroy-spec.md`` and ``arch/s390/kvm/pv.c``: ENABLE,
DISABLE, PREPARE, PERFORM, the SET_SEC_PARMS protection probe, a PERFORM cut short by a fatal signal,
the destroy paths of ``kvm_arch_destroy_vm`` and the ``protvirt destroy … failed`` WARN_ONCE sites.
It is a mixin of the model's run (``model._Run``), whose scheduler and generic KVM ops live in ``model.py``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from . import uapi
from .matchers import ANY, OneOf
from .caps import ASYNC_TEARDOWN_SINCE
from .model_state import (PV_INFO_SINCE, SMALL_VM_PIN, TWO_GIB, UNKNOWN, Proc, Result, Vm, WarnSite, clone_proc,
                          fail, ok)
from .warns import MAY, MUST_NOT, WARN_SITES


class PvSemantics:
    """KVM_S390_PV_COMMAND and protected-VM teardown (needs the state of ``model._Run``)."""

    def _warn_site(self, key: str, verdict: str = MUST_NOT) -> None:
        """The current step reaches the WARN_ONCE ``key`` (an Ultravisor destroy call that must not fail)."""
        function, message = WARN_SITES[key]
        self.warn_log.append(WarnSite(self.current, function, message, verdict))

    def _killed_pv(self, proc: Proc, step: Dict[str, Any], labels: Dict[str, Any]) -> None:
        """A PV command cut short by SIGKILL: what the kernel copied back stays observable.

        The step's own record appears only if the ioctl returned to userspace before the kill (then it is
        the completed result).  The agent keeps the ``struct kvm_pv_cmd`` of the ``kill_at`` step in memory
        shared with the fork's parent, which reads it once the child is gone (``kill_pv`` in the fork's
        record): the kernel's copy-back happens before the dying task returns to userspace.  PERFORM cut
        short by the fatal signal (``kvm_s390_pv_deinit_aside_vm``) returns 0 with rc=1 rrc=42 and queues
        the set-aside VM on ``need_cleanup``, where ``kvm_arch_destroy_vm`` finishes it.
        """
        name = step["name"]
        rc_in, rrc_in = int(step["rc"]), int(step["rrc"])
        vm = self._vm(proc, step["vm"])
        perform = int(step["cmd"]) == uapi.PvCmd.KVM_PV_ASYNC_CLEANUP_PERFORM
        interruptible = perform and vm is not None and vm.set_aside is not None and bool(self._async_enabled())
        if interruptible:
            completed = type(self)(self.caps, self.order).op_pv(clone_proc(proc), step)  # type: ignore[call-arg]
        else:
            completed = self.op_pv(proc, step)
        self._record(step, completed, labels, optional=True)
        alternatives: List[Dict[str, Any]] = [{"step": name, "entered": False},
                                              {"step": name, "entered": True, "rc": rc_in, "rrc": rrc_in}]
        if completed.rc is not None:
            alternatives.append({"step": name, "entered": True, "rc": completed.rc, "rrc": completed.rrc})
        sim = {"step": name, "entered": True, "returned": False,
               "rc": rc_in if completed.rc in (None, ANY) else completed.rc,
               "rrc": rrc_in if completed.rrc in (None, ANY) else completed.rrc}
        if interruptible:
            assert vm is not None and vm.set_aside is not None
            interrupted = {"step": name, "entered": True, "returned": False,
                           "rc": uapi.UVC_RC_EXECUTED, "rrc": uapi.SET_ASIDE_RRC}
            alternatives.append(interrupted)
            sim = dict(interrupted)
            self.events.append(f"fatal signal in PERFORM: {vm.set_aside} queued on need_cleanup, "
                               "PERFORM returns 0 with rc=1 rrc=42")
            vm.need_cleanup.append(vm.set_aside)
            vm.set_aside = None
        unique = list({repr(a): a for a in alternatives}.values())
        self.kill_pv = (OneOf(*unique), sim)

    # helpers
    def _maybe_destroy(self, vm: Vm, by_exit: bool = False) -> None:
        """``kvm_arch_destroy_vm`` once the last fd is gone; on process exit the mm goes first.

        At exit the PV mmu notifier (``kvm_s390_pv_mmu_notifier_release``) destroys the vCPUs and, with
        destroy-fast, the current configuration; ``kvm_s390_pv_deinit_cleanup_all`` does the rest.
        """
        if vm.destroyed or vm.fd_open or any(v.fd_open for v in vm.vcpus.values()):
            return
        vm.destroyed = True
        self._destroy_cpus(vm)
        if vm.protected:
            self._warn_site("fast" if by_exit and self.caps.destroy_fast is not False else "vm")
        self._leftover_sites(([vm.set_aside] if vm.set_aside else []) + vm.need_cleanup)
        configs = ([vm.config()] if vm.protected else []) + ([vm.set_aside] if vm.set_aside else []) + vm.need_cleanup
        self.events.append(f"kvm_arch_destroy_vm({vm.label}): destroys vCPUs, then "
                           + (", ".join(configs) if configs else "no protected configuration"))
        vm.protected = False
        vm.set_aside = None
        vm.need_cleanup = []

    def _destroy_cpus(self, vm: Vm) -> None:
        """``kvm_s390_cpus_from_pv`` / vCPU teardown: destroys every protected vCPU."""
        if any(v.protected for v in vm.vcpus.values()):
            self._warn_site("cpu")
        for vcpu in vm.vcpus.values():
            vcpu.protected = False

    def _leftover_sites(self, leftovers: List[str]) -> None:
        """``kvm_s390_pv_dispose_one_leftover`` calls the Ultravisor only for a VM not destroyed fast."""
        if leftovers and self.caps.destroy_fast is not True:
            self._warn_site("leftover")

    def op_pv_cpu(self, proc: Proc, step: Dict[str, Any]) -> Result:
        if self._handle(proc, step["vcpu"], "vcpu") is None:
            return self._no_handle(step["vcpu"])
        if not self.s390:
            return fail("ENOTTY", rc=step["rc"], rrc=step["rrc"])
        return UNKNOWN

    def op_pv(self, proc: Proc, step: Dict[str, Any]) -> Result:
        vm = self._vm(proc, step["vm"])
        if vm is None:
            return self._no_handle(step["vm"])
        rc_in, rrc_in = int(step["rc"]), int(step["rrc"])

        def unchanged(errno: str) -> Result:
            return fail(errno, rc=rc_in, rrc=rrc_in)

        if not self.s390:
            return unchanged("ENOTTY")  # no such VM ioctl elsewhere
        pvh = self.caps.prot_virt_host
        if pvh is None:
            return UNKNOWN
        if not pvh:
            return unchanged("EINVAL")  # early failure: not a PV host
        if int(step["flags"]):
            return unchanged("EINVAL")  # early failure: flags != 0
        cmd = int(step["cmd"])
        known = self._known_pv_cmd(cmd)
        if known is None:
            return UNKNOWN
        if not known:
            return unchanged("ENOTTY")
        if cmd == uapi.PvCmd.KVM_PV_ENABLE:
            return self._pv_enable(vm, unchanged)
        if cmd == uapi.PvCmd.KVM_PV_DISABLE:
            return self._pv_disable(vm, unchanged)
        if cmd == uapi.PvCmd.KVM_PV_ASYNC_CLEANUP_PREPARE:
            return self._pv_prepare(vm, unchanged)
        if cmd == uapi.PvCmd.KVM_PV_ASYNC_CLEANUP_PERFORM:
            return self._pv_perform(vm, unchanged, rc_in, rrc_in)
        if cmd == uapi.PvCmd.KVM_PV_INFO:
            return UNKNOWN
        if not vm.protected:
            return unchanged("EINVAL")  # SET_SEC_PARMS..DUMP all need a protected VM
        if cmd == uapi.PvCmd.KVM_PV_SET_SEC_PARMS and int(step["data"]) == 0:
            return unchanged("EFAULT")  # copy_from_user of the parameters from address 0
        return UNKNOWN

    def op_pv_protected(self, proc: Proc, step: Dict[str, Any]) -> Result:
        """SET_SEC_PARMS with ``data = 0``: EINVAL on a VM that is not protected, EFAULT on one that is.

        ``kvm_s390_handle_pv`` checks ``kvm_s390_pv_is_protected`` first, then copies the parameters from
        the NULL pointer; neither path calls the Ultravisor, so rc/rrc come back as passed.
        """
        probe = dict(step, cmd=int(uapi.PvCmd.KVM_PV_SET_SEC_PARMS), flags=0, data=0)
        result = self.op_pv(proc, probe)
        if result is UNKNOWN or result.error is not None:
            return result
        protected = {"EFAULT": True, "EINVAL": False}.get(result.errno)
        return Result(ret=result.ret, errno=result.errno, rc=result.rc, rrc=result.rrc,
                      data={"protected": protected})

    def op_kernel_log(self, proc: Proc, step: Dict[str, Any]) -> Result:
        """A mark in the kernel log, or the WARNs printed since a mark: none the model says must not fire."""
        since = step.get("since")
        if since is None:
            self.marks[step["name"]] = len(self.warn_log)
            return ok(0, data=ANY, sim={"seq": 0})
        if since not in self.marks:
            return Result(ret=None, errno=None, error=ANY)
        reached = self.warn_log[self.marks[since]:]
        counts: Dict[str, Any] = {}
        for message in step["match"]:
            may = any(site.message == message and site.verdict == MAY for site in reached)
            counts[message] = ANY if may else 0
        sim = {"counts": {m: 0 for m in step["match"]}, "lines": [], "earlier": {m: 0 for m in step["match"]},
               "source": "model"}
        return ok(0, data={"counts": counts}, sim=sim)

    def _known_pv_cmd(self, cmd: int) -> Optional[bool]:
        if cmd in (uapi.PvCmd.KVM_PV_ASYNC_CLEANUP_PREPARE, uapi.PvCmd.KVM_PV_ASYNC_CLEANUP_PERFORM):
            return self._version_at_least(ASYNC_TEARDOWN_SINCE)
        if cmd in (uapi.PvCmd.KVM_PV_INFO, uapi.PvCmd.KVM_PV_DUMP):
            return True if self._version_at_least(PV_INFO_SINCE) else None
        return 0 <= cmd <= uapi.PvCmd.KVM_PV_UNSHARE_ALL

    def _pv_enable(self, vm: Vm, unchanged: Any) -> Result:
        if vm.protected:
            return unchanged("EINVAL")
        if not vm.memslots:
            # Create Secure Configuration with a zero guest length: the Ultravisor refuses, rc/rrc are its own;
            # if its rc asks for a destroy, kvm_s390_pv_init_vm calls kvm_s390_pv_deinit_vm.
            self._warn_site("vm", MAY)
            return fail("EIO", rc=ANY, rrc=ANY)
        vm.protected = True
        vm.generation += 1
        for vcpu in vm.vcpus.values():
            vcpu.protected = True
        self.events.append(f"ENABLE: {vm.config()} created")
        return Result(ret=0, rc=uapi.UVC_RC_EXECUTED, rrc=ANY)

    def _pv_disable(self, vm: Vm, unchanged: Any) -> Result:
        if not vm.protected:
            return unchanged("EINVAL")
        leftovers = ([vm.set_aside] if vm.set_aside else []) + vm.need_cleanup
        self.events.append("DISABLE: destroys " + ", ".join([vm.config()] + leftovers))
        self._destroy_cpus(vm)
        self._warn_site("vm")
        self._leftover_sites(leftovers)
        vm.protected = False
        vm.set_aside = None
        vm.need_cleanup = []
        return Result(ret=0, rc=uapi.UVC_RC_EXECUTED, rrc=ANY)

    def _pv_prepare(self, vm: Vm, unchanged: Any) -> Result:
        enabled = self._async_enabled()
        if enabled is None:
            return UNKNOWN
        if not vm.protected or not enabled:
            return unchanged("EINVAL")
        self._destroy_cpus(vm)  # kvm_s390_cpus_from_pv runs before the set-aside checks
        if vm.set_aside is not None:
            self.events.append(f"PREPARE refused: {vm.set_aside} is still set aside")
            return unchanged("EINVAL")
        if vm.mem_limit is not None and vm.mem_limit <= TWO_GIB:
            self.events.append(f"PREPARE refused: memory limit {vm.mem_limit} <= 2 GiB (segment-table ASCE)")
            refused = unchanged("EINVAL")
            refused.pin = dict(SMALL_VM_PIN)
            return refused
        if self.caps.destroy_fast is not False:
            self._warn_site("fast")  # kvm_s390_pv_deinit_vm_fast in kvm_s390_pv_set_aside
        vm.set_aside = vm.config()
        vm.protected = False
        self.events.append(f"PREPARE: {vm.set_aside} set aside, lower 2 GiB destroyed")
        return Result(ret=0, rc=uapi.UVC_RC_EXECUTED, rrc=uapi.SET_ASIDE_RRC)

    def _pv_perform(self, vm: Vm, unchanged: Any, rc_in: int, rrc_in: int) -> Result:
        enabled = self._async_enabled()
        if enabled is None:
            return UNKNOWN
        if not enabled:
            return unchanged("EINVAL")
        if vm.set_aside is None:
            return unchanged("EINVAL")
        self.events.append(f"PERFORM: {vm.set_aside} destroyed")
        self._leftover_sites([vm.set_aside])
        vm.set_aside = None
        fast = self.caps.destroy_fast
        if fast is None:
            return Result(ret=0, rc=ANY, rrc=ANY)
        if fast:
            return Result(ret=0, rc=rc_in, rrc=rrc_in)  # destroyed fast in PREPARE: no Ultravisor call now
        return Result(ret=0, rc=uapi.UVC_RC_EXECUTED, rrc=ANY)
