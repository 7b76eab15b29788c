/* The kernel ABI table: ioctl numbers, struct sizes, field offsets and constants, taken from
 * <linux/kvm.h> by the C compiler (abi.c is compiled as C, so flexible arrays have size 0). */
#ifndef KVM_RX_ABI_H
#define KVM_RX_ABI_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum kvmrx_abi_kind { KVMRX_IOCTL = 0, KVMRX_SIZE = 1, KVMRX_OFFSET = 2, KVMRX_CONST = 3 };

struct kvmrx_abi_entry {
  int kind;
  const char *name;
  unsigned long long value;
};

/* The whole table; *count receives its length. */
const struct kvmrx_abi_entry *kvmrx_abi_table(size_t *count);
/* The name of an ioctl request number, or NULL. */
const char *kvmrx_ioctl_name(unsigned long request);
/* offsetof(struct kvm_run, immediate_exit). */
size_t kvmrx_immediate_exit_offset(void);

#ifdef __cplusplus
}
#endif

#endif
