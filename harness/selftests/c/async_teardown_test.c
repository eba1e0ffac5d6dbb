// SPDX-License-Identifier: GPL-2.0-only
/*
 * Test the asynchronous teardown of s390x protected VMs:
 * KVM_PV_ASYNC_CLEANUP_PREPARE and KVM_PV_ASYNC_CLEANUP_PERFORM.
 *
 * None of the tests needs a Secure Execution image: a protected
 * configuration is created with KVM_PV_ENABLE on a VM that has a
 * memslot and one vCPU, and is then set aside and torn down.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/sizes.h>

#include "kselftest_harness.h"
#include "kvm_util.h"

/* Ultravisor return code KVM reports for a set-aside or interrupted teardown */
#define UVC_RC_EXECUTED		1
#define ASYNC_RRC		42

/* Preset into rc/rrc to tell "left unchanged" from "set by KVM" */
#define RC_UNSET		0xdead
#define RRC_UNSET		0xbeef

#define GUEST_MEM_SIZE		(16 * SZ_1M)
#define KILL_MEM_SIZE		(256 * SZ_1M)
#define GUEST_MEM_SLOT		0

struct pv_result {
	int ret;
	int err;
	uint16_t rc;
	uint16_t rrc;
};

static struct pv_result pv_cmd(struct kvm_vm *vm, uint32_t cmd)
{
	struct kvm_pv_cmd pv = {
		.cmd = cmd,
		.rc = RC_UNSET,
		.rrc = RRC_UNSET,
	};
	struct pv_result res;

	res.ret = __vm_ioctl(vm, KVM_S390_PV_COMMAND, &pv);
	res.err = res.ret ? errno : 0;
	res.rc = pv.rc;
	res.rrc = pv.rrc;
	return res;
}

/*
 * Create a VM with one memslot of @mem_size bytes at guest address 0 and
 * one vCPU.  A non-zero @mem_limit is set before the memslot and the vCPU
 * exist, as KVM accepts it only then.
 */
static struct kvm_vm *create_vm(uint64_t mem_size, uint64_t mem_limit)
{
	struct kvm_vm *vm = vm_create_barebones();

	if (mem_limit)
		kvm_device_attr_set(vm->fd, KVM_S390_VM_MEM_CTRL,
				    KVM_S390_VM_MEM_LIMIT_SIZE, &mem_limit);
	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, 0, GUEST_MEM_SLOT,
				    mem_size / vm->page_size, 0);
	__vm_vcpu_add(vm, 0);
	return vm;
}

static struct kvm_vm *create_pv_vm(uint64_t mem_size, uint64_t mem_limit)
{
	struct kvm_vm *vm = create_vm(mem_size, mem_limit);
	struct pv_result res = pv_cmd(vm, KVM_PV_ENABLE);

	TEST_ASSERT(!res.ret, "KVM_PV_ENABLE failed: errno %d (%s), rc 0x%x rrc 0x%x",
		    res.err, strerror(res.err), res.rc, res.rrc);
	return vm;
}

#define ASSERT_PV_OK(res, what)							\
	do {									\
		if ((res).ret)							\
			TH_LOG("%s: errno %d (%s), rc 0x%x rrc 0x%x", what,	\
			       (res).err, strerror((res).err), (res).rc,	\
			       (res).rrc);					\
		ASSERT_EQ(0, (res).ret);					\
	} while (0)

#define ASSERT_PV_ERRNO(res, errnum, what)					\
	do {									\
		ASSERT_EQ(-1, (res).ret)					\
			TH_LOG("%s: expected %s, got success, rc 0x%x rrc 0x%x",\
			       what, strerror(errnum), (res).rc, (res).rrc);	\
		ASSERT_EQ(errnum, (res).err)					\
			TH_LOG("%s: expected %s, got %s", what,			\
			       strerror(errnum), strerror((res).err));		\
	} while (0)

#define ASSERT_RC_UNCHANGED(res, what)						\
	do {									\
		ASSERT_EQ(RC_UNSET, (res).rc)					\
			TH_LOG("%s: rc changed to 0x%x", what, (res).rc);	\
		ASSERT_EQ(RRC_UNSET, (res).rrc)					\
			TH_LOG("%s: rrc changed to 0x%x", what, (res).rrc);	\
	} while (0)

/* PREPARE sets the protected VM aside (rc 1, rrc 42), PERFORM tears it down. */
TEST(prepare_perform)
{
	struct kvm_vm *vm = create_pv_vm(GUEST_MEM_SIZE, 0);
	struct pv_result res;

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PREPARE);
	ASSERT_PV_OK(res, "PREPARE");
	EXPECT_EQ(UVC_RC_EXECUTED, res.rc);
	EXPECT_EQ(ASYNC_RRC, res.rrc);

	/* The VM continues as a non-protected one: DISABLE has nothing to do */
	res = pv_cmd(vm, KVM_PV_DISABLE);
	ASSERT_PV_ERRNO(res, EINVAL, "DISABLE after PREPARE");

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PERFORM);
	ASSERT_PV_OK(res, "PERFORM");

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PERFORM);
	ASSERT_PV_ERRNO(res, EINVAL, "second PERFORM");
	ASSERT_RC_UNCHANGED(res, "second PERFORM");

	kvm_vm_free(vm);
}

/*
 * A second PREPARE fails: right away because the VM is no longer
 * protected, and after a new KVM_PV_ENABLE because one protected VM is
 * already set aside.  DISABLE then tears down both.
 */
TEST(prepare_twice)
{
	struct kvm_vm *vm = create_pv_vm(GUEST_MEM_SIZE, 0);
	struct pv_result res;

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PREPARE);
	ASSERT_PV_OK(res, "first PREPARE");

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PREPARE);
	ASSERT_PV_ERRNO(res, EINVAL, "PREPARE on a non-protected VM");
	ASSERT_RC_UNCHANGED(res, "PREPARE on a non-protected VM");

	res = pv_cmd(vm, KVM_PV_ENABLE);
	ASSERT_PV_OK(res, "ENABLE while a VM is set aside");

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PREPARE);
	ASSERT_PV_ERRNO(res, EINVAL, "PREPARE with a VM already set aside");

	res = pv_cmd(vm, KVM_PV_DISABLE);
	ASSERT_PV_OK(res, "DISABLE after the refused PREPARE");

	/* DISABLE took the set-aside VM as well */
	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PERFORM);
	ASSERT_PV_ERRNO(res, EINVAL, "PERFORM after DISABLE");
	ASSERT_RC_UNCHANGED(res, "PERFORM after DISABLE");

	kvm_vm_free(vm);
}

/* PERFORM with nothing set aside fails and leaves rc/rrc alone. */
TEST(perform_without_prepare)
{
	struct kvm_vm *vm = create_vm(GUEST_MEM_SIZE, 0);
	struct pv_result res;

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PERFORM);
	ASSERT_PV_ERRNO(res, EINVAL, "PERFORM on a non-protected VM");
	ASSERT_RC_UNCHANGED(res, "PERFORM on a non-protected VM");

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PREPARE);
	ASSERT_PV_ERRNO(res, EINVAL, "PREPARE on a non-protected VM");
	ASSERT_RC_UNCHANGED(res, "PREPARE on a non-protected VM");

	res = pv_cmd(vm, KVM_PV_ENABLE);
	ASSERT_PV_OK(res, "ENABLE");

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PERFORM);
	ASSERT_PV_ERRNO(res, EINVAL, "PERFORM on a protected VM");
	ASSERT_RC_UNCHANGED(res, "PERFORM on a protected VM");

	res = pv_cmd(vm, KVM_PV_DISABLE);
	ASSERT_PV_OK(res, "DISABLE");

	kvm_vm_free(vm);
}

/*
 * A VM whose memory limit is at most 2 GiB uses a segment-table ASCE,
 * which cannot be replaced: PREPARE must refuse, and DISABLE still works.
 */
TEST(small_vm)
{
	struct kvm_vm *vm = create_pv_vm(GUEST_MEM_SIZE, SZ_2G);
	struct pv_result res;

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PREPARE);
	ASSERT_PV_ERRNO(res, EINVAL, "PREPARE with a 2 GiB memory limit");

	res = pv_cmd(vm, KVM_PV_DISABLE);
	ASSERT_PV_OK(res, "DISABLE after the refused PREPARE");

	kvm_vm_free(vm);
}

/* Just above 2 GiB the ASCE is a region-third table and PREPARE works. */
TEST(limit_above_2g)
{
	struct kvm_vm *vm = create_pv_vm(GUEST_MEM_SIZE, SZ_2G + SZ_1M);
	struct pv_result res;

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PREPARE);
	ASSERT_PV_OK(res, "PREPARE with a 2 GiB + 1 MiB memory limit");

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PERFORM);
	ASSERT_PV_OK(res, "PERFORM");

	kvm_vm_free(vm);
}

/*
 * Child: set a protected VM aside, tell the parent, run PERFORM, report
 * its result and wait to be killed.
 */
static void __noreturn perform_child(int fd)
{
	struct kvm_vm *vm = create_pv_vm(KILL_MEM_SIZE, 0);
	struct pv_result res;
	char ready = 'r';

	/* Populate the page tables so that PERFORM has more to walk */
	memset(addr_gpa2hva(vm, 0), 0x5a, KILL_MEM_SIZE);

	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PREPARE);
	TEST_ASSERT(!res.ret, "PREPARE failed: errno %d, rc 0x%x rrc 0x%x",
		    res.err, res.rc, res.rrc);

	TEST_ASSERT(write(fd, &ready, 1) == 1, "write to parent failed");
	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PERFORM);
	TEST_ASSERT(write(fd, &res, sizeof(res)) == sizeof(res),
		    "write to parent failed");
	for (;;)
		pause();
}

/*
 * A fatal signal during PERFORM must not leave the process hanging: KVM
 * stops, queues the rest of the teardown for the VM's destruction and
 * reports success.  Whether the signal lands before, during or after
 * PERFORM depends on timing; each case must end with the child dead and
 * the host able to run the next protected VM.
 */
TEST(sigkill_during_perform)
{
	static const unsigned int delays_us[] = { 0, 50, 200, 1000, 5000 };
	struct kvm_vm *vm;
	struct pv_result res;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(delays_us); i++) {
		int fds[2], status;
		ssize_t got;
		char ready;
		pid_t pid;

		ASSERT_EQ(0, pipe(fds));
		pid = fork();
		ASSERT_GE(pid, 0);
		if (!pid) {
			close(fds[0]);
			perform_child(fds[1]);
		}
		close(fds[1]);

		got = read(fds[0], &ready, 1);
		if (got != 1) {
			waitpid(pid, &status, 0);
			ASSERT_EQ(1, got)
				TH_LOG("child failed before PERFORM (status 0x%x)", status);
		}
		usleep(delays_us[i]);
		ASSERT_EQ(0, kill(pid, SIGKILL));
		ASSERT_EQ(pid, waitpid(pid, &status, 0));
		ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
			TH_LOG("child did not die from SIGKILL (status 0x%x)", status);

		got = read(fds[0], &res, sizeof(res));
		if (got == sizeof(res)) {
			TH_LOG("delay %u us: PERFORM returned %d before the signal, rc 0x%x rrc 0x%x",
			       delays_us[i], res.ret, res.rc, res.rrc);
			ASSERT_PV_OK(res, "PERFORM before the signal");
		} else {
			TH_LOG("delay %u us: child killed in PERFORM", delays_us[i]);
		}
		close(fds[0]);
	}

	/* Leftovers of the killed children do not disturb a new protected VM */
	vm = create_pv_vm(GUEST_MEM_SIZE, 0);
	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PREPARE);
	ASSERT_PV_OK(res, "PREPARE after the killed children");
	res = pv_cmd(vm, KVM_PV_ASYNC_CLEANUP_PERFORM);
	ASSERT_PV_OK(res, "PERFORM after the killed children");
	kvm_vm_free(vm);
}

int main(int argc, char *argv[])
{
	__TEST_REQUIRE(kvm_has_cap(KVM_CAP_S390_PROTECTED),
		       "KVM_CAP_S390_PROTECTED not available: needs a Secure Execution host booted with prot_virt=1");
	__TEST_REQUIRE(kvm_has_cap(KVM_CAP_S390_PROTECTED_ASYNC_DISABLE),
		       "KVM_CAP_S390_PROTECTED_ASYNC_DISABLE not available: kvm.async_destroy=0 or kernel older than 6.2");

	return test_harness_run(argc, argv);
}
