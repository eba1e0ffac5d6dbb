"""Splat detection and fingerprints, on the corpus in tests/data/splats."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.results.splats import PATTERNS, Splat, find_splats

DATA = Path(__file__).resolve().parent.parent / "data" / "splats"

# file -> [(kind, fingerprint)] expected, in order
EXPECTED: dict[str, list[tuple[str, str]]] = {
    "real-warning-x86-kvm-tdp-mmu-syzbot.txt": [
        ("warning", "warning:kvm_tdp_mmu_invalidate_all_roots|kvm_mmu_uninit_tdp_mmu|kvm_mmu_uninit_vm"),
    ],
    "real-warning-s390-validity-intercept.txt": [
        ("validity-intercept", "validity-intercept:kvm_handle_sie_intercept|vcpu_post_run|__vcpu_run"),
    ],
    "real-warning-and-bug-journal-odebug.txt": [
        ("warning", "warning:debug_print_object|__debug_object_init|debug_object_init"),
        ("bug", "bug:start_flush_work|__flush_work|__cancel_work_timer"),
    ],
    "real-oops-x86-null-deref-smc.txt": [
        ("oops", "oops:smc_llc_add_link_cont|smc_llc_srv_rkey_exchange|smc_llc_srv_add_link"),
    ],
    "real-oops-s390-devtmpfs.txt": [
        ("oops", "oops:shmem_parse_monolithic|vfs_kern_mount|devtmpfs_init"),
    ],
    "real-oops-s390-worker-thread-panic.txt": [
        ("oops", "oops:worker_thread|kthread|__ret_from_fork"),
        ("panic", "panic:Kernel panic - not syncing: Fatal exception: panic_on_oops"),
    ],
    "real-gpf-x86-kasan-tipc-syzbot.txt": [
        ("gpf", "gpf:__tipc_sendstream|tipc_sendstream|sock_sendmsg"),
    ],
    "real-kasan-kvm-gmem-release-syzbot.txt": [("kasan", "kasan:kvm_gmem_release|__fput|task_work_run")],
    "real-kasan-kvm-gmem-release-repro.txt": [("kasan", "kasan:kvm_gmem_release|__fput|task_work_run")],
    "real-kcsan-io-uring-syzbot.txt": [("kcsan", "kcsan:io_submit_sqes|io_uring_show_fdinfo")],
    "real-ubsan-i40e.txt": [("ubsan", "ubsan:i40e_vc_process_vf_msg|i40e_service_task|process_one_work")],
    "real-lockdep-circular-ext4.txt": [("lockdep", "lockdep:ext4_map_blocks|ext4_getblk|ext4_bread")],
    "real-rcu-stall-xfs.txt": [
        ("rcu-stall", "rcu-stall:test_clear_page_writeback|end_page_writeback|iomap_finish_ioend"),
    ],
    "real-soft-lockup-kvm-tdp-mmu.txt": [
        ("soft-lockup", "soft-lockup:kvm_set_pfn_dirty|__handle_changed_spte|handle_removed_tdp_mmu_page"),
    ],
    "real-hung-task-syslog-repeated.txt": [("hung-task", "hung-task:path_openat|do_filp_open|do_sys_openat2")] * 3,
    "real-kmemleak-tracing.txt": [("kmemleak", "kmemleak:tracing_log_err|parse_atom|parse_expr")],
    "real-kernel-bug-x86-kvm-spurious-fault.txt": [
        ("kernel-bug", "kernel-bug:kvm_spurious_fault|loaded_vmcs_init|alloc_loaded_vmcs"),
    ],
    "real-panic-after-warn-syzbot.txt": [
        ("warning", "warning:kvm_inject_emulated_page_fault"),
        ("panic", "panic:nested_vmx_get_vmptr|handle_vmon|vmx_handle_exit"),
    ],
    "synthetic-protvirt-destroy-vm-run1.txt": [
        ("protvirt", "protvirt:kvm_s390_pv_deinit_vm|kvm_s390_pv_deinit_cleanup_all|kvm_arch_destroy_vm"),
    ],
    "synthetic-protvirt-destroy-vm-run2.txt": [
        ("protvirt", "protvirt:kvm_s390_pv_deinit_vm|kvm_s390_pv_deinit_cleanup_all|kvm_arch_destroy_vm"),
    ],
    "synthetic-protvirt-other-messages.txt": [
        (
            "protvirt",
            "protvirt:kvm_s390_pv_dispose_one_leftover|kvm_s390_pv_deinit_aside_vm|kvm_s390_pv_deinit_cleanup_all",
        ),
        ("protvirt", "protvirt:kvm_s390_pv_deinit_vm_fast|kvm_s390_pv_set_aside|kvm_s390_handle_pv"),
        ("protvirt", "protvirt:kvm_s390_pv_destroy_cpu|kvm_s390_cpus_from_pv|kvm_s390_handle_pv"),
    ],
    "synthetic-stack-overflow-s390.txt": [
        ("stack-overflow", "stack-overflow:kvm_s390_pv_alloc_leftover|kvm_s390_pv_destroy_recursive"),
        ("panic", "panic:Kernel panic - not syncing: Corrupt kernel stack, can't continue."),
    ],
    "synthetic-program-interrupt-guest.txt": [
        ("program-interrupt", "program-interrupt:Unexpected program interrupt: N on cpu N at X, ilen N"),
    ],
    "synthetic-lockdep-suspicious-rcu.txt": [
        ("lockdep", "lockdep:kvm_s390_pv_set_aside|kvm_s390_handle_pv|kvm_arch_vm_ioctl"),
    ],
    "synthetic-lockdep-inconsistent.txt": [
        (
            "lockdep",
            "lockdep:kvm_mmu_notifier_invalidate_range_start|__mmu_notifier_invalidate_range_start"
            "|migrate_vma_setup",
        ),
    ],
    "synthetic-kfence-and-hard-lockup.txt": [
        ("kfence", "kfence:kvm_s390_pv_get_info|kvm_s390_handle_pv|kvm_arch_vm_ioctl"),
        ("hard-lockup", "hard-lockup:kvm_zap_gfn_range|kvm_mmu_invalidate_zap_pages_in_memslot|kvm_set_memslot"),
    ],
    "synthetic-clean-boot-s390x.txt": [],
}


def load(name: str) -> str:
    return (DATA / name).read_text()


def test_corpus_files_are_all_checked_and_say_where_they_come_from() -> None:
    files = sorted(p.name for p in DATA.glob("*.txt"))
    assert files == sorted(EXPECTED)
    for name in files:
        first = load(name).splitlines()[0]
        assert first.startswith("# source: "), name
        assert name.startswith(("real-", "synthetic-")), name
        if name.startswith("synthetic-"):
            assert "synthetic" in first, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus(name: str) -> None:
    splats = find_splats(load(name))
    assert [(s.kind, s.fingerprint) for s in splats] == EXPECTED[name]


def test_corpus_covers_every_kind_in_the_table() -> None:
    kinds = {k for items in EXPECTED.values() for k, _ in items}
    assert kinds == {p.kind for p in PATTERNS}


def test_same_bug_on_two_kernels_has_one_fingerprint() -> None:
    """Different kernels, addresses, offsets, tasks, module vs built-in, symbolized vs not."""
    (a,) = find_splats(load("real-kasan-kvm-gmem-release-syzbot.txt"))
    (b,) = find_splats(load("real-kasan-kvm-gmem-release-repro.txt"))
    assert a.first_line != b.first_line
    assert a.fingerprint == b.fingerprint
    (c,) = find_splats(load("synthetic-protvirt-destroy-vm-run1.txt"))
    (d,) = find_splats(load("synthetic-protvirt-destroy-vm-run2.txt"))
    assert c.text != d.text and c.fingerprint == d.fingerprint
    hung = find_splats(load("real-hung-task-syslog-repeated.txt"))
    assert len({s.fingerprint for s in hung}) == 1 and len({s.first_line for s in hung}) == 3


def test_different_bugs_have_different_fingerprints() -> None:
    fingerprints = [fp for items in EXPECTED.values() for _, fp in items]
    distinct = set(fingerprints)
    # only the deliberate same-bug pairs and the repeated hung task collapse
    assert len(fingerprints) - len(distinct) == 1 + 1 + 2


def test_fingerprint_has_no_addresses_offsets_or_timestamps() -> None:
    for name in EXPECTED:
        for splat in find_splats(load(name)):
            fp = splat.fingerprint.split(":", 1)[1]
            if splat.kind in ("panic", "program-interrupt"):
                continue
            assert "0x" not in fp and "+" not in fp and "[" not in fp and "?" not in fp, (name, fp)


def test_clean_boot_log_has_no_splat_even_with_warning_words() -> None:
    text = load("synthetic-clean-boot-s390x.txt")
    assert "WARNING" in text and "Warning" in text and "panic=-1" in text and "BUG" in text
    assert find_splats(text) == []


def test_splat_fields() -> None:
    (splat,) = find_splats(load("real-warning-s390-validity-intercept.txt"))
    assert isinstance(splat, Splat)
    assert splat.first_line.startswith("WARNING: CPU: 0 PID: 781237 at arch/s390/kvm/intercept.c:101")
    # the WARN message line above the WARNING line is part of the block
    assert splat.text.splitlines()[0] == "kvm: unhandled validity intercept 0x1011"
    # the trace stops before "Last Breaking-Event-Address" and keeps the unreliable frame
    assert splat.trace[0].startswith("[<000003d93deb0122>] kvm_handle_sie_intercept")
    assert splat.trace[1].startswith("([<000003d93deb011e>]")
    assert splat.trace[-1].endswith("system_call+0x70/0x98")
    assert all("__warn_printk" not in line for line in splat.trace)
    assert splat.as_property() == f"validity-intercept: {splat.fingerprint}"


def test_block_ends_at_end_marker_or_first_non_trace_line() -> None:
    (warn,) = find_splats(load("synthetic-protvirt-destroy-vm-run1.txt"))
    assert warn.text.splitlines()[-1].endswith("---[ end trace 0000000000000000 ]---")
    assert warn.text.splitlines()[0].endswith("------------[ cut here ]------------")
    (stall,) = find_splats(load("real-rcu-stall-xfs.txt"))
    assert "XFS (pmem3): Unmounting Filesystem" not in stall.text
    assert stall.text.splitlines()[-1].endswith("ret_from_fork+0x1f/0x30")
    # this excerpt lost the closing "=====" line: the report ends after its trace
    text = load("real-kasan-kvm-gmem-release-syzbot.txt")
    (cut,) = find_splats(text)
    assert "Freed by task 6023:" not in cut.text
    # with its closing line, a framed report runs to it
    (kasan,) = find_splats(text + "\n" + "=" * 66 + "\nnext: unrelated line\n")
    assert "Freed by task 6023:" in kasan.text and "unrelated" not in kasan.text
    assert kasan.trace == cut.trace  # trace: the access stack only
    assert kasan.trace[-1].startswith("entry_SYSCALL_64_after_hwframe")


def test_timestamps_and_prefixes_do_not_change_the_result() -> None:
    plain = load("real-warning-x86-kvm-tdp-mmu-syzbot.txt")
    stamped = "\n".join(f"<4>[ {100 + i}.{i:06d}][  T42] {line}" for i, line in enumerate(plain.splitlines()))
    journal = "\n".join(f"Jan  1 00:00:00 host kernel: {line}" for line in plain.splitlines())
    fps = {find_splats(t)[0].fingerprint for t in (plain, stamped, journal)}
    assert len(fps) == 1


def test_question_mark_frames_are_not_in_fingerprints() -> None:
    text = (
        "WARNING: CPU: 3 PID: 1 at virt/kvm/kvm_main.c:1 kvm_destroy_vm+0x10/0x20 [kvm]\n"
        "Call Trace:\n <TASK>\n ? __warn+0x80/0x130\n ? kvm_destroy_vm+0x10/0x20 [kvm]\n ? report_bug+0x1/0x2\n"
        " ? handle_bug+0x1/0x2\n ? exc_invalid_op+0x1/0x2\n ? asm_exc_invalid_op+0x1/0x2\n"
        " ? unrelated_noise+0x1/0x2\n kvm_put_kvm+0x27/0x30 [kvm]\n kvm_vm_release+0x22/0x30 [kvm]\n"
        " __fput+0xf1/0x2b0\n </TASK>\n---[ end trace 0000000000000000 ]---\n"
    )
    (splat,) = find_splats(text)
    assert splat.fingerprint == "warning:kvm_destroy_vm|kvm_put_kvm|kvm_vm_release"


def test_message_without_warning_still_counts() -> None:
    (splat,) = find_splats("protvirt destroy cpu failed rc 107 rrc 0\n")
    assert splat.kind == "protvirt"


def test_unrelated_text_is_not_a_splat() -> None:
    text = "\n".join(
        [
            "Kernel command line: panic=-1 oops=panic",
            "kvm: protvirt is supported",
            "ACPI: ... Warning: something",
            "selftest says: WARNING: CPU: not at line start",
            "INFO: task list printed",
            "rcu: INFO: rcu_sched kthread starved for 10 jiffies",
        ]
    )
    assert find_splats(text) == []


def test_old_unwinder_with_only_question_mark_frames() -> None:
    text = (
        "[ 2779.988000] WARNING: CPU: 0 PID: 2372 at kernel/module.c:1108 module_put+0x8e/0xa0\n"
        "[ 2779.988038] Call Trace:\n"
        "[ 2779.988044]  [<ffffffff8972a1f5>] ? dump_stack+0x5c/0x77\n"
        "[ 2779.988048]  [<ffffffff89477884>] ? __warn+0xc4/0xe0\n"
        "[ 2779.988051]  [<ffffffff894fe3be>] ? module_put+0x8e/0xa0\n"
        "[ 2779.988060]  [<ffffffffc0dccb0c>] ? dvb_ca_en50221_io_release+0x4c/0x90 [dvb_core]\n"
        "[ 2779.988064]  [<ffffffff89605b0d>] ? __fput+0xcd/0x1e0\n"
        "[ 2779.988081] ---[ end trace c675cdf08c26442d ]---\n"
    )
    (splat,) = find_splats(text)
    assert splat.fingerprint == "warning:module_put|dvb_ca_en50221_io_release|__fput"


def test_decoded_stacktrace_frames() -> None:
    text = (
        "[   61.631030][  T538] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:584\n"
        "[   61.646331][  T538] Call Trace:\n"
        "[ 61.646977][ T538] dump_stack_lvl (lib/dump_stack.c:107) \n"
        "[ 61.648692][ T538] __might_resched.cold (kernel/sched/core.c:9000) \n"
        "[ 61.648700][ T538] __mutex_lock (kernel/locking/mutex.c:584) \n"
        "[ 61.648701][ T538] find_lock_task_mm (mm/oom_kill.c:145) \n"
        "[ 61.648702][ T538] oom_kill_process (mm/oom_kill.c:1000) \n"
        "[ 61.648703][ T538] out_of_memory (mm/oom_kill.c:1100) \n"
    )
    (splat,) = find_splats(text)
    assert splat.fingerprint == "bug:find_lock_task_mm|oom_kill_process|out_of_memory"
