"""Small stand-ins shared by tests: a kernel-like tree whose selftest build runs in a second."""

from __future__ import annotations

import textwrap
from pathlib import Path


def fake_kernel_tree(root: Path, makefile: str = "", kvm_extra: str = "") -> Path:
    """A minimal kernel tree whose kvm selftest Makefile 'builds' programs with ``$(CC)``.

    Its top Makefile can ``headers_install`` (just ``linux/kvm.h``), as the real build asks.
    """
    tree = root / "linux"
    for d in ("arch/s390", "include/uapi/linux", "scripts", "tools/include", "tools/build", "tools/lib",
              "tools/testing/selftests/kvm/s390x", "tools/testing/selftests/rseq", "tools/testing/selftests/net"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "Makefile").write_text(textwrap.dedent("""\
        headers_install:
        \tmkdir -p $(O)/usr/include/linux
        \tcp include/uapi/linux/kvm.h $(O)/usr/include/linux/kvm.h
        """))
    (tree / "Kconfig").write_text("# kconfig\n")
    (tree / "include/uapi/linux/kvm.h").write_text("#define KVM_CAP_S390_PROTECTED_ASYNC_DISABLE 224\n")
    (tree / "scripts/subarch.include").write_text("SUBARCH := x86\n")
    (tree / "tools/include/x.h").write_text("/* x */\n")
    (tree / "tools/testing/selftests/lib.mk").write_text("# lib.mk\n")
    (tree / "tools/testing/selftests/net/big.c").write_text("/* not needed by kvm */\n")
    kvm = tree / "tools/testing/selftests/kvm"
    (kvm / "settings").write_text("timeout=7\n")
    (kvm / "s390x/memop.c").write_text("int main(void) { return 0; }\n")
    (kvm / "kvm_create_max_vcpus.c").write_text("int main(void) { return 0; }\n")
    (kvm / "Makefile").write_text(makefile or textwrap.dedent("""\
        ARCH_DIR := s390x
        TEST_GEN_PROGS_s390x = s390x/memop
        TEST_GEN_PROGS_s390x += kvm_create_max_vcpus
        TEST_GEN_PROGS += $(TEST_GEN_PROGS_$(ARCH_DIR))
        TEST_GEN_PROGS := $(patsubst %,$(OUTPUT)/%,$(TEST_GEN_PROGS))
        all: $(TEST_GEN_PROGS)
        $(OUTPUT)/%: %.c
        \tmkdir -p $(dir $@)
        \t$(CC) $(KHDR_INCLUDES) -o $@ $<
        """) + kvm_extra)
    return tree
