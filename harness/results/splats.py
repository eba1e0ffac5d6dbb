"""Kernel splat detection in dmesg or console text: a table of report patterns and a stable fingerprint.

Each splat found carries its kind, its first line, its call trace and a fingerprint
``kind:f1|f2|f3`` made of the faulting function and the first meaningful stack frames:
addresses, ``+0x`` offsets, timestamps, module names, ``?`` (unreliable) frames, ``[inline]``
frames, compiler suffixes (``.constprop.0``, ``.cold``...) and generic reporting functions
(``dump_stack``, ``__warn``, ``report_bug``, ``kasan_report``...) are left out, so the same bug
gives the same fingerprint across runs, kernels and configurations.

Why one module of this size: most of it is the table of splat patterns and of frames a fingerprint skips.
"""

from __future__ import annotations

import logging
import re

from .. import printk
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)

MAX_BLOCK_LINES = 400
"""No splat block is longer than this (a log cut in the middle of a report ends it too)."""
FINGERPRINT_FRAMES = 3


@dataclass(frozen=True)
class Splat:
    """One kernel report found in a log."""

    kind: str
    first_line: str
    trace: tuple[str, ...]
    fingerprint: str
    text: str

    def as_property(self) -> str:
        """The value recorded in JUnit properties: ``kind: fingerprint``."""
        return f"{self.kind}: {self.fingerprint}"


@dataclass(frozen=True)
class _Pattern:
    kind: str
    regex: "re.Pattern[str]"
    framed: bool = False
    """Reports framed by ``=====`` lines (KASAN, KFENCE, KCSAN, UBSAN)."""
    chain_first: bool = False
    """Frames before ``Call Trace:`` are a lockdep dependency chain, not the trace."""
    max_header: int = 80
    """Lines to wait for a call trace before calling the report trace-less."""
    message: bool = False
    """A WARN message: part of the WARNING that follows it, which then takes this kind."""


def _p(kind: str, regex: str, **kw: object) -> _Pattern:
    return _Pattern(kind, re.compile(regex), **kw)  # type: ignore[arg-type]


_LOCKDEP_TITLES = (
    r"possible circular locking dependency detected|possible recursive locking detected|"
    r"inconsistent lock state|suspicious RCU usage|possible irq lock inversion dependency detected|"
    r"bad unlock balance detected!|lock held when returning to user space!|held lock freed!|"
    r"nested lock was not taken|lock held at task exit time!|"
    r"\S+-(?:safe|unsafe) -> \S+-(?:safe|unsafe) lock order detected"
)

# Order matters: the first pattern that matches a line decides its kind.
PATTERNS: tuple[_Pattern, ...] = (
    _p("kasan", r"^BUG: KASAN: ", framed=True),
    _p("kfence", r"^BUG: KFENCE: ", framed=True),
    _p("kcsan", r"^BUG: KCSAN: ", framed=True),
    _p("ubsan", r"^UBSAN: ", framed=True),
    _p("soft-lockup", r"^(?:(?:NMI )?watchdog: )?BUG: soft lockup"),
    _p("hard-lockup", r"^(?:NMI )?watchdog: Watchdog detected hard LOCKUP"),
    _p("stack-overflow", r"^(?:Kernel stack overflow|BUG: (?:TASK )?stack guard page was hit)"),
    _p("kmemleak", r"^(?:BUG: memory leak$|(?:kmemleak: )?unreferenced object 0x[0-9a-fA-F]+ \(size \d+\))"),
    _p("oops", r"^BUG: (?:unable to handle|kernel NULL pointer dereference|kernel paging request)"),
    _p("oops", r"^Unable to handle kernel (?:paging request|pointer dereference|NULL pointer|access)"),
    _p("gpf", r"^(?:Oops: )?general protection fault"),
    _p("kernel-bug", r"^kernel BUG at "),
    _p("oops", r"^(?:Internal error: )?Oops(?: - \w+)?: "),
    _p("lockdep", rf"^WARNING: (?:{_LOCKDEP_TITLES})", chain_first=True, max_header=300),
    _p("warning", r"^WARNING: (?:CPU: \d+ PID: \d+|at \S|\S+:\d+ at )"),
    _p("bug", r"^BUG: "),
    _p("rcu-stall", r"^(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stalls?"),
    _p("hung-task", r"^INFO: task \S.* blocked for more than \d+ seconds"),
    _p("panic", r"^Kernel panic - not syncing"),
    _p("protvirt", r"^protvirt destroy (?:leftover vm|vm fast|vm|cpu) failed", message=True),
    _p("validity-intercept", r"^(?:kvm|KVM)(?:-s390)?: .*validity intercept", message=True),
    _p("program-interrupt", r"^Unexpected program interrupt", max_header=5),
)

# Kinds that belong to the report already open (an "Oops:" line after "BUG: unable to handle").
_ABSORBS = {
    "oops": {"oops", "gpf", "kernel-bug", "bug", "stack-overflow", "kasan", "warning"},
    "gpf": {"oops", "kasan"},
}

# ---------------------------------------------------------------------------------------------
# Line shapes

_PREFIX_RE = re.compile(
    r"^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ kernel: ?|kernel: ?)?"
    + printk.PREFIX.pattern[1:]
)
_CUT_HERE_RE = re.compile(r"^-+\[ cut here \]-+\s*$")
_FRAMING_RE = re.compile(r"^={20,}\s*$")
_END_MARK_RE = re.compile(r"^-+\[ end (?:trace|Kernel panic)")
_TRACE_HEADER_RE = re.compile(r"^\s*(?:Call [Tt]race:|backtrace(?: \(crc [0-9a-fA-F]+\))?:)\s*$")
_LAST_BREAK_RE = re.compile(r"^\s*Last Breaking-Event-Address:")
_FRAME_RE = re.compile(
    r"^\s*(?P<paren>\()?(?:\[<(?:0x)?[0-9a-fA-F]+>\]\s*)?(?P<q>\?\s+)?(?::\w+:)?"
    r"(?P<func>[A-Za-z_.$][\w.$]*)\+0x[0-9a-fA-F]+(?:/0x[0-9a-fA-F]+)?"
)
_INLINE_FRAME_RE = re.compile(
    r"^\s*(?:\[<(?:0x)?[0-9a-fA-F]+>\]\s*)?(?P<func>[A-Za-z_][\w.]*) \S+:\d+ \[inline\]\s*$"
)
_DECODED_FRAME_RE = re.compile(r"^\s*(?P<q>\?\s+)?(?P<func>[A-Za-z_][\w.]*) \((?:\S+:\d+\s*)+\)\s*$")
_RAW_FRAME_RE = re.compile(r"^\s*\(?\[<(?:0x)?[0-9a-fA-F]+>\]")
_TRACE_AUX_RE = re.compile(
    r"^\s*(?:</?(?:TASK|IRQ|NMI|SOFTIRQ|EOI)>|(?:RIP|Code|RSP|RAX|RBX|RCX|RDX|RSI|RDI|RBP|R\d+|FS|GS|CS"
    r"|CR\d|DR\d|PKRU|EIP|EAX|EBX|ECX|EDX|ESI|EDI|EBP|ESP|DS|ORIG_RAX|pc|lr|sp|x\d+)\s*:"
    r"|Modules linked in:|irq event stamp:|hardirqs last|softirqs last|Last Breaking-Event-Address:"
    r"|Kernel Offset:|INFO: lockdep is turned off|---\[ end)"
)

_FAULT_RES = (
    re.compile(r"^WARNING: .*?\bat \S+:\d+ (?P<f>[A-Za-z_][\w.]*)\+0x"),
    re.compile(r"^WARNING: \S+:\d+ at (?P<f>[A-Za-z_][\w.]*)\+0x"),
    re.compile(r"^\s*RIP: (?:\w{4}:)?(?:\[<[0-9a-fA-F]+>\]\s*)?(?P<f>[A-Za-z_][\w.]*)\+0x"),
    re.compile(r"^\s*Krnl PSW : .*\((?P<f>[A-Za-z_][\w.]*)\+0x"),
    re.compile(r"^\s*(?:pc|EIP) ?: (?P<f>[A-Za-z_][\w.]*)\+0x"),
    re.compile(r"^BUG: K(?:ASAN|FENCE): .*? in (?P<f>[A-Za-z_][\w.]*)\+0x"),
)
_KCSAN_TITLE_RE = re.compile(r"^BUG: KCSAN: [\w-]+ in (?P<a>[A-Za-z_][\w.]*)(?: / (?P<b>[A-Za-z_][\w.]*))?")
_SUFFIX_RE = re.compile(r"(?:\.(?:constprop|isra|part|cold|lto_priv|llvm|localalias)(?:\.\d+)?)+$")

# Frames that say how a report was printed, not where the bug is.
_GENERIC = frozenset(
    """
    dump_stack dump_stack_lvl __dump_stack show_stack show_trace_log_lvl show_regs __show_regs
    dump_backtrace panic vpanic __warn __warn_printk warn_slowpath_fmt warn_slowpath_null
    warn_slowpath_common report_bug handle_bug fixup_bug do_error_trap do_trap do_invalid_op
    exc_invalid_op asm_exc_invalid_op invalid_op do_int3 exc_int3 check_panic_on_warn die __die
    oops_end die_addr page_fault_oops kernelmode_fixup_or_oops no_context __bad_area_nosemaphore
    bad_area_nosemaphore do_user_addr_fault do_kern_addr_fault exc_page_fault asm_exc_page_fault
    do_general_protection exc_general_protection asm_exc_general_protection
    monitor_event_exception __do_pgm_check pgm_check_handler do_report_trap do_no_context
    do_low_address do_fault_error do_exception do_dat_exception do_protection_exception
    handle_fault_error
    kasan_report __kasan_report print_report print_address_description kasan_check_range
    check_region_inline check_memory_region kfence_report_error kfence_handle_page_fault
    ubsan_epilogue ubsan_prologue handle_overflow
    __might_resched __might_sleep ___might_sleep __might_fault might_fault
    print_circular_bug check_noncircular check_prev_add check_prevs_add validate_chain
    __lock_acquire lock_acquire lock_release __lock_release lock_acquired mark_lock
    mark_lock_irq mark_usage print_usage_bug valid_state lockdep_rcu_suspicious
    rcu_dump_cpu_stacks print_cpu_stall check_cpu_stall rcu_pending rcu_sched_clock_irq
    update_process_times tick_sched_handle tick_sched_timer tick_nohz_handler __hrtimer_run_queues
    hrtimer_interrupt __sysvec_apic_timer_interrupt sysvec_apic_timer_interrupt
    asm_sysvec_apic_timer_interrupt asm_call_on_stack asm_call_irq_on_stack
    nmi_cpu_backtrace nmi_trigger_cpumask_backtrace arch_trigger_cpumask_backtrace
    trigger_single_cpu_backtrace lapic_can_unplug_cpu watchdog_timer_fn watchdog_overflow_callback
    do_ext_irq ext_int_handler do_irq_async
    __schedule schedule schedule_timeout schedule_preempt_disabled io_schedule context_switch
    __switch_to __switch_to_asm schedule_hrtimeout_range __wait_for_common wait_for_completion
    rwsem_down_write_slowpath rwsem_down_read_slowpath rwsem_down_write_failed
    call_rwsem_down_write_failed queued_spin_lock_slowpath queued_read_lock_slowpath
    queued_write_lock_slowpath native_queued_spin_lock_slowpath do_raw_spin_lock
    kmemleak_alloc kmemleak_alloc_recursive kmalloc_trace kmalloc_trace_noprof
    """.split()
)
_GENERIC_PREFIX_RE = re.compile(
    r"^(?:__asan_|__kasan_|kasan_|__kfence_|kcsan_|__tsan_|__ubsan_handle_|__sanitizer_"
    r"|(?:__)?(?:raw_)?_?(?:raw_)?(?:spin|read|write)_(?:un)?lock|_raw_|__raw_"
    r"|(?:__)?mutex_(?:un)?lock|down_(?:read|write)|up_(?:read|write)"
    r"|(?:__)?(?:kmalloc|kzalloc|kmem_cache_alloc|__kmem_cache_alloc|slab_alloc|slab_post_alloc_hook"
    r"|___slab_alloc|__slab_alloc|kvmalloc))"
)


def _strip_prefix(line: str) -> str:
    line = line.replace("\r", "").rstrip()
    m = _PREFIX_RE.match(line)
    if m and m.end():
        rest = line[m.end():]
        if m.group("ts") and rest.startswith(" "):
            rest = rest[1:]
        return rest
    return line


def _normalize_func(func: str) -> str:
    return _SUFFIX_RE.sub("", func.strip(". "))


def _is_generic(func: str) -> bool:
    return func in _GENERIC or bool(_GENERIC_PREFIX_RE.match(func))


@dataclass(frozen=True)
class _Frame:
    func: str
    reliable: bool
    inline: bool


def _parse_frame(line: str) -> Optional[_Frame]:
    m = _INLINE_FRAME_RE.match(line)
    if m:
        return _Frame(_normalize_func(m.group("func")), True, True)
    m = _FRAME_RE.match(line)
    if m:
        return _Frame(_normalize_func(m.group("func")), not (m.group("paren") or m.group("q")), False)
    m = _DECODED_FRAME_RE.match(line)
    if m:
        return _Frame(_normalize_func(m.group("func")), not m.group("q"), False)
    return None


def _is_trace_line(line: str) -> bool:
    return bool(_parse_frame(line) or _TRACE_AUX_RE.match(line) or _RAW_FRAME_RE.match(line))


def _match_start(line: str) -> Optional[_Pattern]:
    for pat in PATTERNS:
        if pat.regex.match(line):
            return pat
    return None


# ---------------------------------------------------------------------------------------------
# Finding blocks


def find_splats(text: str) -> list[Splat]:
    """Every kernel splat in ``text`` (dmesg, console or journal output), in order of appearance."""
    raw = text.splitlines()
    lines = [_strip_prefix(r) for r in raw]
    starts: dict[int, _Pattern] = {}
    for i, line in enumerate(lines):
        pat = _match_start(line)
        if pat is not None:
            starts[i] = pat
    # A WARN message line followed by its WARNING line is part of that WARNING.
    for i, pat in list(starts.items()):
        if pat.message and any(starts.get(k, _NONE).kind == "warning" for k in range(i + 1, i + 4)):
            del starts[i]

    splats: list[Splat] = []
    last_end = 0
    i = 0
    while i < len(lines):
        pat = starts.get(i)
        if pat is None or i < last_end:
            i += 1
            continue
        begin = _block_begin(lines, i, pat, last_end)
        end = _block_end(lines, i, pat, starts)
        splats.append(_make_splat(lines[begin:end], raw[begin:end], i - begin, pat))
        last_end = end
        i = max(end, i + 1)
    return splats


_NONE = _Pattern("", re.compile("$^"))


def _block_begin(lines: list[str], i: int, pat: _Pattern, floor: int) -> int:
    """Where the report really starts: a ``cut here`` marker, WARN message or ``=====`` line above."""
    low = max(floor, i - 5)
    for k in range(i - 1, low - 1, -1):
        if _CUT_HERE_RE.match(lines[k]):
            return k
        other = _match_start(lines[k])
        if other is not None and not other.message:
            break
    begin = i
    for k in range(i - 1, low - 1, -1):
        other = _match_start(lines[k])
        if (other is not None and other.message) or _FRAMING_RE.match(lines[k]):
            begin = k
            continue
        break
    return begin


def _absorbed(open_kind: str, new: _Pattern) -> bool:
    if new.kind == open_kind and new.kind not in ("kmemleak", "panic", "hung-task"):
        return True
    if open_kind == "kmemleak" and new.kind == "kmemleak":
        return False
    return open_kind in _ABSORBS.get(new.kind, set())


def _block_end(lines: list[str], i: int, pat: _Pattern, starts: dict[int, _Pattern]) -> int:
    limit = min(len(lines), i + MAX_BLOCK_LINES)
    if pat.framed:
        for j in range(i + 1, limit):
            if _FRAMING_RE.match(lines[j]):
                return j + 1
            other = starts.get(j)
            if other is not None and not _absorbed(pat.kind, other):
                break
    seen_trace = False
    j = i + 1
    while j < limit:
        line = lines[j]
        if _END_MARK_RE.match(line):
            return j + 1
        other = starts.get(j)
        if other is not None and (seen_trace or not _absorbed(pat.kind, other)):
            return j
        if pat.kind == "kmemleak" and line.startswith("BUG: memory leak"):
            return j
        if seen_trace:
            if not _is_trace_line(line):
                return j
        elif _TRACE_HEADER_RE.match(line):
            seen_trace = True
        elif not pat.chain_first and _parse_frame(line) is not None:
            seen_trace = True
        elif j - i >= pat.max_header:
            return _traceless_end(lines, i, j)
        j += 1
    return j


def _traceless_end(lines: list[str], i: int, j: int) -> int:
    for k in range(i + 1, j):
        if not lines[k].strip():
            return k
    return i + 1


# ---------------------------------------------------------------------------------------------
# Trace and fingerprint


def _trace(block: list[str], pat: _Pattern) -> list[str]:
    header = next((k for k, line in enumerate(block) if _TRACE_HEADER_RE.match(line)), None)
    out: list[str] = []
    if header is not None:
        for line in block[header + 1:]:
            if _LAST_BREAK_RE.match(line) or _END_MARK_RE.match(line):
                break
            if _parse_frame(line) is not None:
                out.append(line.strip())
            elif not (_TRACE_AUX_RE.match(line) or _RAW_FRAME_RE.match(line)):
                break
        return out
    if pat.chain_first:
        return out
    for line in block[1:]:
        if _LAST_BREAK_RE.match(line):
            break
        if _parse_frame(line) is not None:
            out.append(line.strip())
    return out


def _fault_function(block: list[str]) -> Optional[str]:
    for line in block:
        if _parse_frame(line) is not None or _TRACE_HEADER_RE.match(line):
            return None
        for rx in _FAULT_RES:
            m = rx.match(line)
            if m:
                return _normalize_func(m.group("f"))
    return None


def _normalized_title(line: str) -> str:
    text = re.sub(r"0x[0-9a-fA-F]+|[0-9a-fA-F]{8,}", "X", line)
    text = re.sub(r"\d+", "N", text)
    return re.sub(r"\s+", " ", text).strip()


def fingerprint(kind: str, block: list[str], trace: list[str]) -> str:
    """``kind:f1|f2|f3`` from the faulting function and the first meaningful reliable frames."""
    if kind == "kcsan":
        m = _KCSAN_TITLE_RE.match(block[0]) if block else None
        if m:
            names = sorted({_normalize_func(n) for n in m.groups() if n})
            return f"{kind}:{'|'.join(names)}"
    funcs: list[str] = []
    fault = _fault_function(block)
    if fault and not _is_generic(fault):
        funcs.append(fault)
    frames = [f for f in (_parse_frame(line) for line in trace) if f is not None]
    # Old unwinders mark every frame "?"; only then are "?" frames used at all.
    use_unreliable = not any(f.reliable for f in frames)
    for frame in frames:
        if (not frame.reliable and not use_unreliable) or frame.inline or _is_generic(frame.func):
            continue
        if frame.func in funcs:
            continue
        funcs.append(frame.func)
        if len(funcs) >= FINGERPRINT_FRAMES:
            break
    if not funcs:
        return f"{kind}:{_normalized_title(block[0]) if block else ''}"
    return f"{kind}:{'|'.join(funcs[:FINGERPRINT_FRAMES])}"


def _make_splat(block: list[str], raw_block: list[str], first: int, pat: _Pattern) -> Splat:
    kind = pat.kind
    if kind == "warning":
        window = block[: first + 4]
        for line in window:
            other = _match_start(line)
            if other is not None and other.message:
                kind = other.kind
                break
    core = block[first:]
    trace = _trace(core, pat)
    fp = fingerprint(kind, core, trace)
    log.debug("splat %s: %s", kind, fp)
    return Splat(
        kind=kind,
        first_line=block[first].strip(),
        trace=tuple(trace),
        fingerprint=fp,
        text="\n".join(raw_block),
    )
