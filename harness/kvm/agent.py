"""KVM scenario agent: runs one scenario's steps on the target and prints one JSON record per step.

Runs on the target with the standard library only (Python 3.9+), shipped with ``uapi.py`` as one zipapp
(``harness.kvm.bundle``).  Input: a JSON scenario on stdin (or ``--scenario FILE``, or ``--scenario-fd N``)::

    {"default_timeout_s": 30, "total_timeout_s": 300, "steps": [{"op": "open_kvm"}, ...]}

Output: JSON lines ``{"name", "op", "ret", "errno", "rc", "rrc", "duration_ns", "data", "thread"/"proc", "error"}``
and a final ``{"op": "end", "ok": ..., "exit": ...}``.  Exit status: 0 all steps ran, 1 a step raised an
unexpected error, 2 malformed input (nothing was run), 3 a step outlived its deadline.
A failing ioctl is data (``errno``), not an agent error.

Why one module of this size: it is the program shipped to targets, standard library only, as few files as
possible (its schema is ``steps.py``, its ABI ``uapi.py``); every op's ioctl code is here, next to the executor.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import select
import signal
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

try:  # inside the harness package
    from . import uapi
    from .steps import COMMON_KEYS, OPS, SENTINEL_RC, SENTINEL_RRC, InputError, normalise_steps
except ImportError:  # shipped as a zipapp, or run as a script next to uapi.py (also under python -I)
    _here = os.path.dirname(os.path.abspath(__file__))
    if _here not in sys.path:
        sys.path.insert(0, _here)
    import uapi  # type: ignore[no-redef]
    from steps import COMMON_KEYS, OPS, SENTINEL_RC, SENTINEL_RRC, InputError, normalise_steps  # type: ignore

__all__ = ["COMMON_KEYS", "OPS", "SENTINEL_RC", "SENTINEL_RRC", "InputError", "main", "normalise_steps"]

EXIT_OK, EXIT_STEP_ERROR, EXIT_BAD_INPUT, EXIT_TIMEOUT = 0, 1, 2, 3
DEFAULT_STEP_TIMEOUT_S = 60.0
DEFAULT_TOTAL_TIMEOUT_S = 900.0
MIB = 1 << 20
SEGMENT = MIB  # s390 memslots must start and end on a 1 MiB boundary
PGSTE_SYSCTL = "/proc/sys/vm/allocate_pgste"
KMSG = "/dev/kmsg"
MAX_FILE_BYTES = 65536
MAX_LOG_LINES = 20
# Layout of the page a forked child shares with its parent for the PV command at its kill point.
CELL_SIZE = 4096
CELL_STATE, CELL_ERRNO, CELL_RET, CELL_STRUCT = 0, 4, 8, 16
CELL_ENTERED, CELL_RETURNED = 1, 2

class StepError(Exception):
    """A step could not be carried out (missing handle, bad value): reported in the record's ``error``."""


# --- input ----------------------------------------------------------------------------------------------


def parse_scenario(text: str) -> Dict[str, Any]:
    """Parse and validate a scenario; raise InputError naming the offending step."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise InputError("<input>", "parse", f"malformed scenario JSON: {err}") from None
    if isinstance(doc, list):
        doc = {"steps": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise InputError("<input>", "parse", "scenario must be a list of steps or an object with a 'steps' list")
    names: set = set()
    normalise_steps(doc["steps"], names, "")
    return doc


def scenario_needs_vm(steps: List[Dict[str, Any]]) -> bool:
    return any(s["op"] == "create_vm" or scenario_needs_vm(s.get("steps") or []) for s in steps)


# --- output ---------------------------------------------------------------------------------------------


class Emitter:
    """Writes one JSON record per line to a file descriptor, atomically per record."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def emit(self, record: Dict[str, Any]) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self.lock:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]


# --- deadlines ------------------------------------------------------------------------------------------


class Watchdog:
    """Ends the agent when a step outlives its deadline: reports the step as timed out, then exits 3."""

    def __init__(self, emitter: Emitter, total_timeout_s: float) -> None:
        self.emitter = emitter
        self.lock = threading.Lock()
        self.active: Dict[int, Tuple[str, str, float, Dict[str, Any]]] = {}
        self.children: set = set()
        self.total_deadline = time.monotonic() + total_timeout_s
        self.next_token = 0
        thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        thread.start()

    def enter(self, name: str, op: str, timeout_s: float, labels: Dict[str, Any]) -> int:
        with self.lock:
            self.next_token += 1
            self.active[self.next_token] = (name, op, time.monotonic() + timeout_s, labels)
            return self.next_token

    def leave(self, token: int) -> None:
        with self.lock:
            self.active.pop(token, None)

    def _watch(self) -> None:
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            with self.lock:
                late = [(n, o, d, lab) for n, o, d, lab in self.active.values() if now > d]
                if not late and now > self.total_deadline:
                    late = [("<scenario>", "scenario", self.total_deadline, {})]
            if late:
                self._expire(late[0])

    def _expire(self, entry: Tuple[str, str, float, Dict[str, Any]]) -> None:
        name, op, _, labels = entry
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        record = {"name": name, "op": op, "ret": None, "errno": None, "timed_out": True,
                  "error": f"step {name!r} ({op}) timed out: deadline passed, agent exits"}
        record.update(labels)
        self.emitter.emit(record)
        self.emitter.emit({"name": "end", "op": "end", "ok": False, "exit": EXIT_TIMEOUT,
                           "error": f"step {name!r} timed out"})
        os._exit(EXIT_TIMEOUT)


# --- system calls ---------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
MAP_FAILED = ctypes.c_void_p(-1).value


def map_anonymous(size: int, shared: bool = False) -> int:
    """mmap(2) anonymous read/write memory, private (or shared with forked children); raises OSError."""
    kind = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
    addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, kind | mmap.MAP_ANONYMOUS, -1, 0)
    if addr is None or addr == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return addr


def ioctl(fd: int, request: int, arg: int = 0) -> int:
    """ioctl(2) with an integer or address argument; raises OSError with errno on failure (GIL released)."""
    result = _libc.ioctl(fd, request, arg or None)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def read_meminfo() -> Dict[str, int]:
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemFree", "MemAvailable", "Cached", "AnonPages"):
                values[key] = int(rest.split()[0])
    pcp = pcp_free_kb()
    if pcp is not None:
        values["PcpFree"] = pcp
    return values


def pcp_free_kb() -> Optional[int]:
    """Free pages held in per-CPU lists (``count:`` of /proc/zoneinfo), which MemFree and MemAvailable omit."""
    try:
        with open("/proc/zoneinfo") as f:
            pages = sum(int(line.split()[1]) for line in f if line.lstrip().startswith("count:"))
    except (OSError, ValueError, IndexError):
        return None
    return pages * (os.sysconf("SC_PAGE_SIZE") // 1024)


def cgroup_memory_current() -> Dict[str, Any]:
    """This process's memory cgroup charge: cgroup v2 ``memory.current`` or v1 ``memory.usage_in_bytes``."""
    with open("/proc/self/cgroup") as f:
        entries = [ln.split(":", 2) for ln in f.read().splitlines() if ln.count(":") >= 2]
    with open("/proc/self/mounts") as f:
        mounts = [ln.split() for ln in f.read().splitlines()]
    candidates = []
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):
            for m in mounts:
                if m[2] == "cgroup" and "memory" in m[3].split(","):
                    candidates.append((path, m[1] + path.rstrip("/") + "/memory.usage_in_bytes"))
        elif controllers == "":
            for m in mounts:
                if m[2] == "cgroup2":
                    candidates.append((path, m[1] + path.rstrip("/") + "/memory.current"))
    for path, full in candidates:
        if os.path.exists(full):
            with open(full) as f:
                return {"cgroup": path, "file": full, "current": int(f.read().strip())}
    raise StepError("no memory cgroup file found (neither v2 memory.current nor v1 memory.usage_in_bytes)")


def kmsg_chunks(path: str = KMSG) -> List[bytes]:
    """Every record /dev/kmsg still holds (one per read), without blocking at the end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # EPIPE: records were overwritten under the reader; the next read goes on
                continue
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks


def parse_kmsg(chunk: bytes) -> Optional[Tuple[int, str]]:
    """``b"4,1234,5678,-;protvirt destroy cpu failed rc 105 rrc 0"`` -> ``(1234, "protvirt destroy cpu …")``."""
    head, sep, rest = chunk.decode("utf-8", "replace").partition(";")
    fields = head.split(",")
    if not sep or len(fields) < 2 or not fields[1].isdigit():
        return None
    return int(fields[1]), rest.split("\n", 1)[0]


class PvCell:
    """A page shared with a forked child: the ``struct kvm_pv_cmd`` of its kill point and how far it got.

    The kernel copies the struct back before a task killed inside the ioctl returns to userspace, so the
    parent can read what the kernel reported even though the child never resumed.
    """

    def __init__(self, step: str) -> None:
        self.step = step
        self.addr = map_anonymous(CELL_SIZE, shared=True)

    def _u32(self, offset: int) -> ctypes.c_uint32:
        return ctypes.c_uint32.from_address(self.addr + offset)

    def struct(self) -> uapi.KvmPvCmd:
        return uapi.KvmPvCmd.from_address(self.addr + CELL_STRUCT)

    def entered(self) -> None:
        self._u32(CELL_STATE).value = CELL_ENTERED

    def returned(self, ret: Optional[int], err: Optional[int]) -> None:
        ctypes.c_int64.from_address(self.addr + CELL_RET).value = -1 if ret is None else ret
        ctypes.c_int32.from_address(self.addr + CELL_ERRNO).value = err or 0
        self._u32(CELL_STATE).value = CELL_RETURNED

    def read(self) -> Dict[str, Any]:
        state = self._u32(CELL_STATE).value
        if state < CELL_ENTERED:
            return {"step": self.step, "entered": False}
        cmd = self.struct()
        out: Dict[str, Any] = {"step": self.step, "entered": True, "returned": state == CELL_RETURNED,
                               "rc": int(cmd.rc), "rrc": int(cmd.rrc)}
        if state == CELL_RETURNED:
            err = ctypes.c_int32.from_address(self.addr + CELL_ERRNO).value
            out["errno"] = uapi.errno_name(err) if err else None
            out["ret"] = None if err else int(ctypes.c_int64.from_address(self.addr + CELL_RET).value)
        return out

    def close(self) -> None:
        _libc.munmap(self.addr, CELL_SIZE)


# --- step execution -------------------------------------------------------------------------------------


class Outcome:
    """What one step produced."""

    def __init__(self) -> None:
        self.ret: Optional[int] = None
        self.errno: Optional[str] = None
        self.rc: Optional[int] = None
        self.rrc: Optional[int] = None
        self.data: Any = None
        self.error: Optional[str] = None


class State:
    """Handles shared by every thread of one process: fds by name, memory kept alive, events, threads."""

    def __init__(self) -> None:
        self.fds: Dict[str, int] = {}
        self.kinds: Dict[str, str] = {}
        self.memory: Dict[str, List[Tuple[int, int]]] = {}  # VM handle -> its memslots' (address, length)
        self.run_maps: Dict[str, mmap.mmap] = {}
        self.events: Dict[str, threading.Event] = {}
        self.threads: Dict[str, threading.Thread] = {}
        self.records: Dict[str, Dict[str, Any]] = {}
        self.started: Dict[str, threading.Event] = {}
        self.failed = False
        self.lock = threading.Lock()

    def fd(self, name: str, kind: Optional[str] = None) -> int:
        if name not in self.fds:
            raise StepError(f"no open handle {name!r} (an earlier step failed or closed it)")
        if kind and self.kinds.get(name) != kind:
            raise StepError(f"handle {name!r} is a {self.kinds.get(name)}, not a {kind}")
        return self.fds[name]

    def add(self, name: str, fd: int, kind: str) -> None:
        """Register a new fd under ``name``; an older handle of that name is closed first."""
        if name in self.fds:
            self.release(name)
        self.fds[name] = fd
        self.kinds[name] = kind

    def release(self, name: str) -> None:
        """Close a handle, its vCPU run area and (for a VM) its memslots' memory."""
        fd = self.fds.pop(name)
        run = self.run_maps.pop(name, None)
        if run is not None:
            run.close()
        os.close(fd)
        for addr, length in self.memory.pop(name, []):
            _libc.munmap(addr, length)

    def event(self, name: str) -> threading.Event:
        with self.lock:
            return self.events.setdefault(name, threading.Event())

    def started_event(self, step: str) -> threading.Event:
        with self.lock:
            return self.started.setdefault(step, threading.Event())


class Executor:
    """Runs steps in one thread of one process, emitting a record per step."""

    def __init__(self, state: State, emitter: Emitter, watchdog: Optional[Watchdog],
                 labels: Dict[str, Any], default_timeout_s: float) -> None:
        self.state = state
        self.emitter = emitter
        self.watchdog = watchdog
        self.labels = labels
        self.default_timeout_s = default_timeout_s
        self.quiet = 0  # inside a loop: inner steps (and their forks' children) print no records
        self.kill_cell: Optional[PvCell] = None  # in a forked child: the PV step the parent will kill in

    @property
    def failed(self) -> bool:
        return self.state.failed

    def run_steps(self, steps: List[Dict[str, Any]], notify: Optional[Callable[[str], None]] = None) -> None:
        for step in steps:
            if notify is not None:
                notify(step["name"])
            self.run_step(step)

    def run_step(self, step: Dict[str, Any], emit: bool = True) -> Dict[str, Any]:
        name, op = step["name"], step["op"]
        timeout = float(step.get("timeout_s") or self.default_timeout_s)
        token = self.watchdog.enter(name, op, timeout, self.labels) if self.watchdog else None
        self.state.started_event(name).set()
        out = Outcome()
        start = time.monotonic_ns()
        try:
            getattr(self, "op_" + op)(step, out)
        except OSError as err:
            out.errno = uapi.errno_name(err.errno)
            if out.errno is None:
                out.error = f"{type(err).__name__}: {err}"
        except StepError as err:
            out.error = str(err)
        except Exception as err:  # noqa: BLE001 - reported in the record, the agent goes on
            out.error = f"unexpected {type(err).__name__}: {err}"
            self.state.failed = True
        duration = time.monotonic_ns() - start
        if token is not None and self.watchdog is not None:
            self.watchdog.leave(token)
        record: Dict[str, Any] = {"name": name, "op": op, "ret": out.ret, "errno": out.errno,
                                  "duration_ns": duration}
        for key in ("rc", "rrc", "data", "error"):
            value = getattr(out, key)
            if value is not None:
                record[key] = value
        record.update(self.labels)
        with self.state.lock:
            self.state.records[name] = record
        if emit:
            self.emitter.emit(record)
        return record

    # --- KVM ---
    def op_open_kvm(self, step: Dict[str, Any], out: Outcome) -> None:
        out.ret = os.open(step["path"], os.O_RDWR | os.O_CLOEXEC)
        self.state.add(step["as"], out.ret, "kvm")

    def op_api_version(self, step: Dict[str, Any], out: Outcome) -> None:
        out.ret = ioctl(self.state.fd(step["kvm"], "kvm"), uapi.KVM_GET_API_VERSION)

    def op_vcpu_mmap_size(self, step: Dict[str, Any], out: Outcome) -> None:
        out.ret = ioctl(self.state.fd(step["kvm"], "kvm"), uapi.KVM_GET_VCPU_MMAP_SIZE)

    def op_check_extension(self, step: Dict[str, Any], out: Outcome) -> None:
        out.ret = ioctl(self.state.fd(step["on"]), uapi.KVM_CHECK_EXTENSION, int(step["cap"]))

    def op_create_vm(self, step: Dict[str, Any], out: Outcome) -> None:
        out.ret = ioctl(self.state.fd(step["kvm"], "kvm"), uapi.KVM_CREATE_VM, int(step["type"]))
        self.state.add(step["as"], out.ret, "vm")

    def _device_attr(self, fd: int, request: int, group: int, attr: int, value: Optional[ctypes.c_uint64]) -> int:
        dattr = uapi.KvmDeviceAttr(flags=0, group=group, attr=attr,
                                   addr=ctypes.addressof(value) if value is not None else 0)
        return ioctl(fd, request, ctypes.addressof(dattr))

    def op_set_mem_limit(self, step: Dict[str, Any], out: Outcome) -> None:
        value = ctypes.c_uint64(int(step["bytes"]))
        out.ret = self._device_attr(self.state.fd(step["vm"], "vm"), uapi.KVM_SET_DEVICE_ATTR,
                                    uapi.KVM_S390_VM_MEM_CTRL, uapi.KVM_S390_VM_MEM_LIMIT_SIZE, value)

    def op_get_mem_limit(self, step: Dict[str, Any], out: Outcome) -> None:
        value = ctypes.c_uint64(0)
        out.ret = self._device_attr(self.state.fd(step["vm"], "vm"), uapi.KVM_GET_DEVICE_ATTR,
                                    uapi.KVM_S390_VM_MEM_CTRL, uapi.KVM_S390_VM_MEM_LIMIT_SIZE, value)
        out.data = value.value

    def op_has_device_attr(self, step: Dict[str, Any], out: Outcome) -> None:
        out.ret = self._device_attr(self.state.fd(step["on"]), uapi.KVM_HAS_DEVICE_ATTR,
                                    int(step["group"]), int(step["attr"]), None)

    def op_add_memslot(self, step: Dict[str, Any], out: Outcome) -> None:
        size = int(step["size_mb"]) * MIB
        if size <= 0:
            raise StepError("size_mb must be positive")
        vm_fd = self.state.fd(step["vm"], "vm")
        base = map_anonymous(size + SEGMENT)
        self.state.memory.setdefault(step["vm"], []).append((base, size + SEGMENT))
        aligned = (base + SEGMENT - 1) & ~(SEGMENT - 1)
        touch = min(int(step["touch_mb"]) * MIB, size)
        if touch:
            ctypes.memset(aligned, 0x5A, touch)
        region = uapi.KvmUserspaceMemoryRegion(slot=int(step["slot"]), flags=int(step["flags"]),
                                               guest_phys_addr=int(step["gpa"]), memory_size=size,
                                               userspace_addr=aligned)
        out.ret = ioctl(vm_fd, uapi.KVM_SET_USER_MEMORY_REGION, ctypes.addressof(region))
        out.data = {"size": size, "touched": touch}

    def op_create_vcpu(self, step: Dict[str, Any], out: Outcome) -> None:
        vcpu_id = int(step["id"])
        out.ret = ioctl(self.state.fd(step["vm"], "vm"), uapi.KVM_CREATE_VCPU, vcpu_id)
        self.state.add(step["as"] or f"vcpu{vcpu_id}", out.ret, "vcpu")

    def op_run_vcpu(self, step: Dict[str, Any], out: Outcome) -> None:
        name = step["vcpu"]
        fd = self.state.fd(name, "vcpu")
        run = self.state.run_maps.get(name)
        if run is None:
            size = ioctl(self.state.fd("kvm", "kvm"), uapi.KVM_GET_VCPU_MMAP_SIZE)
            run = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.state.run_maps[name] = run
        out.ret = ioctl(fd, uapi.KVM_RUN)
        offset = uapi.KVM_RUN_EXIT_REASON_OFFSET
        out.data = {"exit_reason": int.from_bytes(run[offset:offset + 4], sys.byteorder)}

    def _pv(self, fd: int, request: int, step: Dict[str, Any], out: Outcome) -> None:
        cell = self.kill_cell if self.kill_cell is not None and self.kill_cell.step == step["name"] else None
        cmd = cell.struct() if cell is not None else uapi.KvmPvCmd()
        cmd.cmd, cmd.rc, cmd.rrc = int(step["cmd"]), int(step["rc"]), int(step["rrc"])
        cmd.data, cmd.flags = int(step["data"]), int(step["flags"])
        if cell is not None:
            cell.entered()
        err: Optional[int] = None
        try:
            out.ret = ioctl(fd, request, ctypes.addressof(cmd))
        except OSError as exc:
            err = exc.errno
            raise
        finally:
            out.rc, out.rrc = cmd.rc, cmd.rrc
            if cell is not None:
                cell.returned(out.ret, err)

    def op_pv(self, step: Dict[str, Any], out: Outcome) -> None:
        self._pv(self.state.fd(step["vm"], "vm"), uapi.KVM_S390_PV_COMMAND, step, out)

    def op_pv_cpu(self, step: Dict[str, Any], out: Outcome) -> None:
        self._pv(self.state.fd(step["vcpu"], "vcpu"), uapi.KVM_S390_PV_CPU_COMMAND, step, out)

    def op_pv_protected(self, step: Dict[str, Any], out: Outcome) -> None:
        """Is the VM protected?  SET_SEC_PARMS with data 0: EFAULT when it is, EINVAL when not; no side effect."""
        probe = dict(step, cmd=int(uapi.PvCmd.KVM_PV_SET_SEC_PARMS), data=0, flags=0)
        try:
            self._pv(self.state.fd(step["vm"], "vm"), uapi.KVM_S390_PV_COMMAND, probe, out)
        except OSError as err:
            out.data = {"protected": {errno.EFAULT: True, errno.EINVAL: False}.get(err.errno)}
            raise
        out.data = {"protected": None}  # success is not a possible answer to a NULL parameter block

    def op_close(self, step: Dict[str, Any], out: Outcome) -> None:
        name = step["handle"]
        self.state.fd(name)
        self.state.release(name)
        out.ret = 0

    # --- host observations ---
    def op_read_file(self, step: Dict[str, Any], out: Outcome) -> None:
        with open(step["path"], "rb") as f:
            out.data = f.read(MAX_FILE_BYTES).decode("utf-8", "replace").strip()
        out.ret = 0

    def op_kernel_log(self, step: Dict[str, Any], out: Outcome) -> None:
        """Without ``since``: a mark (the last /dev/kmsg sequence number).  With it: lines matching ``match``
        printed after that mark (``counts``), and before it (``earlier``: a WARN_ONCE fires once per boot)."""
        records = [r for r in (parse_kmsg(c) for c in kmsg_chunks()) if r is not None]
        last = records[-1][0] if records else -1
        since = step["since"]
        if since is None:
            out.data = {"seq": last}
            out.ret = 0
            return
        mark_record = self.state.records.get(since)
        mark_data = (mark_record or {}).get("data")
        if not isinstance(mark_data, dict) or "seq" not in mark_data:
            raise StepError(f"since {since!r} is not an earlier kernel_log mark")
        mark = int(mark_data["seq"])
        patterns = [str(p) for p in step["match"]]
        counts = {p: 0 for p in patterns}
        earlier = {p: 0 for p in patterns}
        lines: List[str] = []
        for seq, text in records:
            hits = [p for p in patterns if p in text]
            for pattern in hits:
                (counts if seq > mark else earlier)[pattern] += 1
            if hits and seq > mark and len(lines) < MAX_LOG_LINES:
                lines.append(text)
        complete = not records or records[0][0] <= mark + 1
        out.data = {"counts": counts, "earlier": earlier, "lines": lines, "since_seq": mark, "last_seq": last,
                    "complete": complete}
        out.ret = 0

    def op_meminfo(self, step: Dict[str, Any], out: Outcome) -> None:
        out.data = read_meminfo()
        out.ret = 0

    def op_cgroup_memory(self, step: Dict[str, Any], out: Outcome) -> None:
        out.data = cgroup_memory_current()
        out.ret = 0

    def op_mem_settle(self, step: Dict[str, Any], out: Outcome) -> None:
        base_record = self.state.records.get(step["baseline"])
        if not base_record or not isinstance(base_record.get("data"), dict):
            raise StepError(f"baseline {step['baseline']!r} is not an earlier meminfo step")
        key = step["field"]
        baseline = int(base_record["data"][key])
        tolerance = int(step["tolerance_mb"]) * 1024
        deadline = time.monotonic() + float(step["settle_s"])
        start = time.monotonic()
        while True:
            current = read_meminfo()[key]
            if current >= baseline - tolerance or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        out.data = {"field": key, "baseline_kb": baseline, "final_kb": current, "tolerance_kb": tolerance,
                    "settled": current >= baseline - tolerance,
                    "waited_ms": int((time.monotonic() - start) * 1000)}
        out.ret = 0

    def op_mem_watch(self, step: Dict[str, Any], out: Outcome) -> None:
        """Sample MemAvailable (and the cgroup's charge) until both are back near earlier baselines.

        With ``gain_mb``, MemAvailable must exceed the ``baseline`` reading by that much (a reading taken while
        the memory was in use), so other processes' drift before it does not count.  Free pages in per-CPU
        lists (``PcpFree``) count on both sides: Linux 6.7+ keeps much freed memory there for a while."""
        base_record = self.state.records.get(step["baseline"])
        if not base_record or not isinstance(base_record.get("data"), dict):
            raise StepError(f"baseline {step['baseline']!r} is not an earlier meminfo step")
        pcp = "PcpFree" in base_record["data"]  # free pages in per-CPU lists count as back, on both sides
        baseline = (int(base_record["data"]["MemAvailable"]) + int(base_record["data"].get("PcpFree", 0))
                    + int(step["gain_mb"] or 0) * 1024)
        cg_name = step["cgroup_baseline"]
        cg_base: Optional[int] = None
        if cg_name is not None:
            cg_record = self.state.records.get(cg_name) or {}
            if not isinstance(cg_record.get("data"), dict) or "current" not in cg_record["data"]:
                raise StepError(f"cgroup_baseline {cg_name!r} is not an earlier cgroup_memory step")
            cg_base = int(cg_record["data"]["current"])
        tolerance = int(step["tolerance_mb"]) * MIB
        start = time.monotonic()
        deadline = start + float(step["settle_s"])
        samples: List[List[Any]] = []
        mem_back: Optional[int] = None
        cg_back: Optional[int] = None
        while True:
            ms = int((time.monotonic() - start) * 1000)
            now = read_meminfo()
            avail = now["MemAvailable"] + (now.get("PcpFree", 0) if pcp else 0)
            charge = cgroup_memory_current()["current"] if cg_base is not None else None
            if len(samples) < 600:
                samples.append([ms, avail, charge])
            if mem_back is None and avail * 1024 >= baseline * 1024 - tolerance:
                mem_back = ms
            if cg_back is None and charge is not None and cg_base is not None and charge <= cg_base + tolerance:
                cg_back = ms
            if (mem_back is not None and (cg_base is None or cg_back is not None)) or time.monotonic() >= deadline:
                break
            time.sleep(float(step["interval_ms"]) / 1000.0)
        out.data = {"target_kb": baseline, "cgroup_baseline": cg_base, "tolerance_kb": tolerance // 1024,
                    "mem_back_ms": mem_back, "cgroup_back_ms": cg_back, "samples": samples}
        out.ret = 0

    def op_sleep(self, step: Dict[str, Any], out: Outcome) -> None:
        time.sleep(float(step["ms"]) / 1000.0)
        out.ret = 0

    # --- concurrency ---
    def op_set_event(self, step: Dict[str, Any], out: Outcome) -> None:
        self.state.event(step["event"]).set()
        out.ret = 0

    def op_wait_event(self, step: Dict[str, Any], out: Outcome) -> None:
        self.state.event(step["event"]).wait()
        out.ret = 0

    def op_wait_step(self, step: Dict[str, Any], out: Outcome) -> None:
        self.state.started_event(step["step"]).wait()
        out.ret = 0

    def op_thread(self, step: Dict[str, Any], out: Outcome) -> None:
        label = step["as"]
        child = Executor(self.state, self.emitter, self.watchdog, dict(self.labels, thread=label),
                         self.default_timeout_s)
        thread = threading.Thread(target=child.run_steps, args=(step["steps"],), name=label, daemon=True)
        self.state.threads[label] = thread
        thread.start()
        out.ret = 0

    def op_join(self, step: Dict[str, Any], out: Outcome) -> None:
        thread = self.state.threads.get(step["thread"])
        if thread is None:
            raise StepError(f"no thread {step['thread']!r} was started")
        thread.join()
        out.ret = 0

    def op_loop(self, step: Dict[str, Any], out: Outcome) -> None:
        count = step["count"]
        iterations = 0
        failures: List[Dict[str, Any]] = []
        failed = 0
        self.quiet += 1
        try:
            while count is None or iterations < int(count):
                for inner in step["steps"]:
                    record = self.run_step(inner, emit=False)
                    if record.get("errno") or record.get("error"):
                        failed += 1
                        if len(failures) < 5:
                            failures.append({"iteration": iterations, "step": inner["name"],
                                             "errno": record.get("errno"), "error": record.get("error")})
                iterations += 1
        finally:
            self.quiet -= 1
        out.data = {"iterations": iterations, "failed": failed, "failures": failures}
        out.ret = 0

    def op_fork(self, step: Dict[str, Any], out: Outcome) -> None:
        out.data = fork_steps(self, step)
        out.ret = 0


def fork_steps(parent: Executor, step: Dict[str, Any]) -> Dict[str, Any]:
    """Run ``step["steps"]`` in a forked child; SIGKILL it ``kill_after_ms`` after it begins ``kill_at``.

    When ``kill_at`` is a PV command, its ``struct kvm_pv_cmd`` lives in a page shared with the child, and
    the result reports what the kernel copied back into it (``kill_pv``), even if the child never resumed.
    """
    label = step["as"]
    target = next((s for s in step["steps"] if s["name"] == step["kill_at"]), None)
    cell = PvCell(target["name"]) if target is not None and target["op"] == "pv" else None
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: no watchdog, no stdout; records and progress go through the pipe
        code = 0
        try:
            os.close(read_fd)
            for fd in list(parent.state.fds.values()):
                try:
                    os.close(fd)
                except OSError:
                    pass
            emitter = Emitter(write_fd)
            child = Executor(State(), emitter, None, dict(parent.labels, proc=label), parent.default_timeout_s)
            child.kill_cell = cell
            child.run_steps(step["steps"], notify=lambda name: emitter.emit({"op": "begin", "name": name}))
            code = 1 if child.failed else 0
        except BaseException:  # noqa: BLE001 - the child must never return into the parent's code
            code = 70
        os._exit(code)
    os.close(write_fd)
    if parent.watchdog is not None:
        parent.watchdog.children.add(pid)
    begun: List[str] = []
    finished: List[str] = []
    killed_in: Optional[str] = None
    kill_time: Optional[float] = None
    buffer = b""
    eof = False
    while not eof:
        if kill_time is not None and killed_in is None and time.monotonic() >= kill_time:
            killed_in = _unfinished(begun, finished) or "<between steps>"
            os.kill(pid, signal.SIGKILL)
        wait = 0.2 if kill_time is None or killed_in is not None else max(0.0, kill_time - time.monotonic())
        ready, _, _ = select.select([read_fd], [], [], wait)
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            eof = True
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            record = json.loads(line)
            if record.get("op") == "begin":
                begun.append(record["name"])
                if record["name"] == step["kill_at"] and kill_time is None:
                    kill_time = time.monotonic() + float(step["kill_after_ms"]) / 1000.0
                continue
            finished.append(record["name"])
            if not parent.quiet:
                parent.emitter.emit(record)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if parent.watchdog is not None:
        parent.watchdog.children.discard(pid)
    result: Dict[str, Any] = {"pid": pid, "killed": killed_in is not None, "killed_in": killed_in,
                              "steps_done": len(finished)}
    if os.WIFSIGNALED(status):
        result["signal"] = os.WTERMSIG(status)
    else:
        result["exit_status"] = os.WEXITSTATUS(status)
    if step["kill_at"] is not None and kill_time is None:
        result["kill_missed"] = f"child never began step {step['kill_at']!r}"
    if cell is not None:
        result["kill_pv"] = cell.read()
        cell.close()
    return result


def _unfinished(begun: List[str], finished: List[str]) -> Optional[str]:
    pending = [name for name in begun if name not in finished]
    return pending[-1] if pending else None


# --- setup ----------------------------------------------------------------------------------------------


def pgste_setup(needs_vm: bool, restore: Optional[str] = None) -> Dict[str, Any]:
    """On s390x, make sure this process's mm has PGSTEs (needed by KVM_CREATE_VM before the gmap rewrite).

    ``vm.allocate_pgste`` is host-wide, and it only matters when a process's mm is created (at exec; forked
    children inherit it).  So the agent sets it, re-executes itself (``"pgste": "reexec"``, the old value in
    ``"previous"``), and the re-executed agent (``restore`` = the old value) puts it back at once.
    """
    info: Dict[str, Any] = {"arch": platform.machine()}
    if restore is not None:
        info["pgste"] = restore_pgste(restore)
        return info
    if platform.machine() != "s390x" or not needs_vm or not os.path.exists(PGSTE_SYSCTL):
        info["pgste"] = "not needed"
        return info
    with open(PGSTE_SYSCTL) as f:
        value = f.read().strip()
    if value == "1":
        info["pgste"] = "vm.allocate_pgste=1"
        return info
    try:
        with open(PGSTE_SYSCTL, "w") as f:
            f.write("1\n")
    except OSError as err:
        info["pgste"] = f"vm.allocate_pgste={value} and cannot set it: {err.strerror}"
        return info
    info["pgste"] = "reexec"
    info["previous"] = value
    return info


def restore_pgste(previous: str) -> str:
    """Put ``vm.allocate_pgste`` back to ``previous``; say what this process has and what was restored."""
    try:
        with open(PGSTE_SYSCTL, "w") as f:
            f.write(previous + "\n")
    except OSError as err:
        return (f"vm.allocate_pgste=1 for this process (set by the agent); "
                f"restoring {previous} failed: {err.strerror}")
    return f"vm.allocate_pgste=1 for this process (set by the agent, host value restored to {previous})"


def handoff_args(text: str) -> List[str]:
    """Arguments handing the scenario to the re-executed agent: an inherited memfd, else a private file.

    Not the environment: execve refuses a single string above 128 KiB (E2BIG).
    """
    data = text.encode()
    create = getattr(os, "memfd_create", None)
    if create is not None:
        try:
            fd = create("kvmh-agent-scenario", 0)  # no MFD_CLOEXEC: it survives the exec
        except OSError:
            fd = -1
        if fd >= 0:
            _write_all(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
            os.set_inheritable(fd, True)
            return ["--scenario-fd", str(fd)]
    directory = tempfile.mkdtemp(prefix="kvmh-agent-")  # mode 0700
    path = os.path.join(directory, "scenario.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    return ["--scenario-file", path]


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def agent_facts() -> Dict[str, Any]:
    uname = os.uname()
    return {"release": uname.release, "machine": uname.machine, "python": platform.python_version(),
            "pid": os.getpid(), "kvm": os.path.exists("/dev/kvm")}


def parse_args(argv: List[str]) -> Dict[str, str]:
    """``--scenario FILE``, ``--scenario-fd N``, ``--scenario-file PATH`` (removed once read), ``--pgste-restore V``."""
    known = ("--scenario", "--scenario-fd", "--scenario-file", "--pgste-restore")
    args: Dict[str, str] = {}
    i = 0
    while i < len(argv):
        if argv[i] not in known or i + 1 >= len(argv):
            raise ValueError(f"unknown or incomplete argument {argv[i]!r} (known: {', '.join(known)})")
        args[argv[i]] = argv[i + 1]
        i += 2
    return args


def read_input(args: Dict[str, str]) -> str:
    if "--scenario-fd" in args:
        with os.fdopen(int(args["--scenario-fd"]), "rb") as f:
            return f.read().decode()
    if "--scenario-file" in args:
        path = args["--scenario-file"]
        try:
            with open(path, "rb") as f:
                return f.read().decode()
        finally:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
    if "--scenario" in args:
        with open(args["--scenario"]) as f:
            return f.read()
    return sys.stdin.read()


def reexec(text: str, previous: str) -> str:
    """Re-execute the agent (its new mm gets PGSTEs); returns only on failure, with the sysctl restored."""
    argv = [sys.executable, sys.argv[0]] + handoff_args(text) + ["--pgste-restore", previous]
    sys.stdout.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError as err:
        restored = restore_pgste(previous)
        return f"re-executing with vm.allocate_pgste=1 failed: {err.strerror} ({restored})"
    return "unreachable"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    emitter = Emitter(sys.stdout.fileno())
    try:
        args = parse_args(argv)
        text = read_input(args)
        doc = parse_scenario(text)
        uapi.check_ioc_arch(platform.machine())
    except InputError as err:
        emitter.emit({"name": err.step, "op": err.op, "ret": None, "errno": None, "error": str(err)})
        emitter.emit({"name": "end", "op": "end", "ok": False, "exit": EXIT_BAD_INPUT, "error": str(err)})
        return EXIT_BAD_INPUT
    except (OSError, ValueError) as err:
        emitter.emit({"name": "end", "op": "end", "ok": False, "exit": EXIT_BAD_INPUT, "error": str(err)})
        return EXIT_BAD_INPUT
    setup = pgste_setup(scenario_needs_vm(doc["steps"]), args.get("--pgste-restore"))
    if setup["pgste"] == "reexec":
        error = reexec(text, setup["previous"])
        emitter.emit({"name": "end", "op": "end", "ok": False, "exit": EXIT_STEP_ERROR, "error": error})
        return EXIT_STEP_ERROR
    facts = agent_facts()
    facts.update(setup)
    emitter.emit({"name": "agent", "op": "agent", "ret": 0, "errno": None, "data": facts})
    watchdog = Watchdog(emitter, float(doc.get("total_timeout_s") or DEFAULT_TOTAL_TIMEOUT_S))
    executor = Executor(State(), emitter, watchdog, {}, float(doc.get("default_timeout_s") or DEFAULT_STEP_TIMEOUT_S))
    executor.run_steps(doc["steps"])
    for thread in list(executor.state.threads.values()):
        token = watchdog.enter(f"join {thread.name}", "join", executor.default_timeout_s, {})
        thread.join()
        watchdog.leave(token)
    code = EXIT_STEP_ERROR if executor.failed else EXIT_OK
    emitter.emit({"name": "end", "op": "end", "ok": code == EXIT_OK, "exit": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
