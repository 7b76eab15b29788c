/*
 * Definitions from Linux >= 6.8 uapi that Debian 12's 6.1 <linux/kvm.h> lacks.
 * Each block is used only when the installed header does not define it, so a
 * newer header always wins. Layouts are asserted in abi.c (sizes) and checked
 * against the TypeScript codecs by spec/abi.spec.ts.
 */
#ifndef KVM_RX_KVM_COMPAT_H
#define KVM_RX_KVM_COMPAT_H

#include <linux/kvm.h>

#ifndef KVM_CAP_USER_MEMORY2
#define KVM_CAP_USER_MEMORY2 231
#define KVM_CAP_MEMORY_FAULT_INFO 232
#define KVM_CAP_MEMORY_ATTRIBUTES 233
#define KVM_CAP_GUEST_MEMFD 234
#define KVM_CAP_VM_TYPES 235

struct kvm_userspace_memory_region2 {
  __u32 slot;
  __u32 flags;
  __u64 guest_phys_addr;
  __u64 memory_size;
  __u64 userspace_addr;
  __u64 guest_memfd_offset;
  __u32 guest_memfd;
  __u32 pad1;
  __u64 pad2[14];
};
#define KVM_SET_USER_MEMORY_REGION2 _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)
#define KVM_MEM_GUEST_MEMFD (1UL << 2)

struct kvm_memory_attributes {
  __u64 address;
  __u64 size;
  __u64 attributes;
  __u64 flags;
};
#define KVM_SET_MEMORY_ATTRIBUTES _IOW(KVMIO, 0xd2, struct kvm_memory_attributes)
#define KVM_MEMORY_ATTRIBUTE_PRIVATE (1ULL << 3)

struct kvm_create_guest_memfd {
  __u64 size;
  __u64 flags;
  __u64 reserved[6];
};
#define KVM_CREATE_GUEST_MEMFD _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)
#endif

#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39
#define KVM_MEMORY_EXIT_FLAG_PRIVATE (1ULL << 3)
/* The union member kvm_run.memory_fault {flags, gpa, size} sits at the start of the exit union. */
#endif

#ifndef KVM_EXIT_TDX
#define KVM_EXIT_TDX 40
#endif

#endif
