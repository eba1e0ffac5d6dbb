/* Print the KVM ABI as the kernel's uapi headers define it, one "name=value" per line.
 * Compiled against out-of-tree uapi headers (make headers_install) and compared with harness/kvm/uapi.py.
 * Keys: sizeof.<struct>, offsetof.<struct>.<field>, and plain macro or enumerator names. */
#include <stddef.h>
#include <stdio.h>
#include <linux/kvm.h>

/* asm/kvm.h defines KVM_S390_NO_MEM_LIMIT as U64_MAX, which no uapi header defines: users must. */
#ifndef U64_MAX
#define U64_MAX (~0ULL)
#endif

#define NUM(n) printf("%s=%llu\n", #n, (unsigned long long)(n))
#define SIZE(s) printf("sizeof.%s=%zu\n", #s, sizeof(struct s))
#define OFF(s, f) printf("offsetof.%s.%s=%zu\n", #s, #f, offsetof(struct s, f))

int main(void)
{
	NUM(KVMIO);
	NUM(KVM_API_VERSION);

	SIZE(kvm_userspace_memory_region);
	OFF(kvm_userspace_memory_region, slot);
	OFF(kvm_userspace_memory_region, flags);
	OFF(kvm_userspace_memory_region, guest_phys_addr);
	OFF(kvm_userspace_memory_region, memory_size);
	OFF(kvm_userspace_memory_region, userspace_addr);

	SIZE(kvm_device_attr);
	OFF(kvm_device_attr, flags);
	OFF(kvm_device_attr, group);
	OFF(kvm_device_attr, attr);
	OFF(kvm_device_attr, addr);

	OFF(kvm_run, exit_reason);

	NUM(KVM_GET_API_VERSION);
	NUM(KVM_CREATE_VM);
	NUM(KVM_CHECK_EXTENSION);
	NUM(KVM_GET_VCPU_MMAP_SIZE);
	NUM(KVM_CREATE_VCPU);
	NUM(KVM_SET_USER_MEMORY_REGION);
	NUM(KVM_RUN);
	NUM(KVM_SET_DEVICE_ATTR);
	NUM(KVM_GET_DEVICE_ATTR);
	NUM(KVM_HAS_DEVICE_ATTR);

	NUM(KVM_CAP_USER_MEMORY);
	NUM(KVM_CAP_NR_VCPUS);
	NUM(KVM_CAP_NR_MEMSLOTS);
	NUM(KVM_CAP_MAX_VCPUS);
	NUM(KVM_CAP_S390_PROTECTED);
	NUM(KVM_CAP_S390_PROTECTED_DUMP);
	NUM(KVM_CAP_S390_PROTECTED_ASYNC_DISABLE);

#ifdef __s390x__
	/* struct kvm_pv_cmd and enum pv_cmd_id live in asm/kvm.h since 6.10, included by linux/kvm.h */
	SIZE(kvm_pv_cmd);
	OFF(kvm_pv_cmd, cmd);
	OFF(kvm_pv_cmd, rc);
	OFF(kvm_pv_cmd, rrc);
	OFF(kvm_pv_cmd, data);
	OFF(kvm_pv_cmd, flags);
	OFF(kvm_pv_cmd, reserved);

	NUM(KVM_S390_PV_COMMAND);
	NUM(KVM_S390_PV_CPU_COMMAND);

	NUM(KVM_S390_VM_MEM_CTRL);
	NUM(KVM_S390_VM_MEM_LIMIT_SIZE);
	NUM(KVM_S390_NO_MEM_LIMIT);

	NUM(KVM_PV_ENABLE);
	NUM(KVM_PV_DISABLE);
	NUM(KVM_PV_SET_SEC_PARMS);
	NUM(KVM_PV_UNPACK);
	NUM(KVM_PV_VERIFY);
	NUM(KVM_PV_PREP_RESET);
	NUM(KVM_PV_UNSHARE_ALL);
	NUM(KVM_PV_INFO);
	NUM(KVM_PV_DUMP);
	NUM(KVM_PV_ASYNC_CLEANUP_PREPARE);
	NUM(KVM_PV_ASYNC_CLEANUP_PERFORM);
#endif
	return 0;
}
