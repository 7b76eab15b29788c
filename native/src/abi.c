/* The kernel ABI table. Compiled as C on purpose: Debian 12's <linux/kvm.h> declares flexible
 * arrays with __DECLARE_FLEX_ARRAY, which gives them size 1 in C++ and so wrong _IOW/_IOWR
 * request numbers (KVM_SET_CPUID2, KVM_GET_MSRS, KVM_SET_SIGNAL_MASK, ...). In C they are 0. */
#include "abi.h"

#include <stddef.h>

#include "kvm_compat.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <linux/if.h>
#include <linux/if_tun.h>

/* TAP interfaces (src/wrappers/tap.ts): the ifreq TUNSETIFF takes. */
_Static_assert(sizeof(struct ifreq) == 40, "if.h ABI: struct ifreq");
_Static_assert(IFNAMSIZ == 16, "if.h ABI: IFNAMSIZ");

_Static_assert(KVM_SET_SIGNAL_MASK == 0x4004ae8b, "kvm.h ABI: KVM_SET_SIGNAL_MASK");
_Static_assert(KVM_GET_MSRS == 0xc008ae88, "kvm.h ABI: KVM_GET_MSRS");
_Static_assert(KVM_SET_CPUID2 == 0x4008ae90, "kvm.h ABI: KVM_SET_CPUID2");
_Static_assert(sizeof(struct kvm_regs) == 144, "kvm.h ABI: kvm_regs");
_Static_assert(sizeof(struct kvm_sregs) == 312, "kvm.h ABI: kvm_sregs");
_Static_assert(sizeof(struct kvm_userspace_memory_region2) == 160, "compat ABI: kvm_userspace_memory_region2");
_Static_assert(sizeof(struct kvm_create_guest_memfd) == 64, "compat ABI: kvm_create_guest_memfd");
_Static_assert(sizeof(struct kvm_memory_attributes) == 32, "compat ABI: kvm_memory_attributes");

#define IOCTL(n) {KVMRX_IOCTL, #n, (unsigned long long)(n)},
#define CONST(n) {KVMRX_CONST, #n, (unsigned long long)(n)},
#define SIZE(s) {KVMRX_SIZE, #s, sizeof(struct s)},
#define OFF(s, f) {KVMRX_OFFSET, #s "." #f, offsetof(struct s, f)},

static const struct kvmrx_abi_entry table[] = {
#include "abi_gen.inc"
};

const struct kvmrx_abi_entry *kvmrx_abi_table(size_t *count) {
  *count = sizeof table / sizeof table[0];
  return table;
}

const char *kvmrx_ioctl_name(unsigned long request) {
  size_t i;
  for (i = 0; i < sizeof table / sizeof table[0]; i++) {
    if (table[i].kind == KVMRX_IOCTL && table[i].value == (unsigned long long)request) return table[i].name;
  }
  return NULL;
}

size_t kvmrx_immediate_exit_offset(void) { return offsetof(struct kvm_run, immediate_exit); }
