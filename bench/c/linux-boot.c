/*
 * The native baseline for `npm run bench:boot`: a minimal one-vCPU KVM VMM in C that boots an ELF
 * vmlinux the way kvm-rx's bootLinux() does (same guest layout, same CPUID, same in-kernel irqchip
 * and PIT, same devices as far as the boot needs them), so the two can be timed on the same host
 * in the same run. Not part of the library.
 *
 *   cc -O2 -o linux-boot bench/c/linux-boot.c
 *   ./linux-boot [-m MiB] [-t timeout_s] [-q] VMLINUX INITRD|- "CMDLINE"
 *
 * Console bytes go to stdout, line-buffered. At the end one line goes to stderr:
 *   RESULT reason=<reset|halt|shutdown|timeout|error> exits=N io=N mmio=N emul=N wall=S sys=S user=S
 * LINUX_BOOT_THP=1 asks for transparent huge pages for guest RAM.
 * Exit status 0 on a clean reset (i8042 0xfe or triple fault), 1 otherwise.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ZERO_PAGE 0x7000
#define GDT_ADDR 0x500
#define STACK_TOP 0x8ff0
#define PML4_ADDR 0x9000
#define PDPT_ADDR 0xa000
#define PD_ADDR 0xb000
#define CMDLINE_ADDR 0x20000
#define HIGH_MEM 0x100000

static void die(const char *what) {
  fprintf(stderr, "linux-boot: %s: %s\n", what, strerror(errno));
  exit(2);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint8_t *read_file(const char *path, size_t *len) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) die(path);
  struct stat st;
  if (fstat(fd, &st) < 0) die(path);
  uint8_t *buf = malloc(st.st_size ? st.st_size : 1);
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, st.st_size - got);
    if (n <= 0) die(path);
    got += n;
  }
  close(fd);
  *len = got;
  return buf;
}

/* 16550A as far as the kernel's 8250 driver and printk need it. */
struct uart {
  uint8_t ier, lcr, mcr, scr, dll, dlm, fcr;
  int thre_pending;
};

static int uart_irq_level(const struct uart *u) { return (u->ier & 0x02) && u->thre_pending; }

static uint8_t uart_in(struct uart *u, unsigned reg) {
  int dlab = u->lcr & 0x80;
  switch (reg) {
  case 0: return dlab ? u->dll : 0;
  case 1: return dlab ? u->dlm : u->ier;
  case 2: {
    uint8_t fifo = (u->fcr & 1) ? 0xc0 : 0;
    if ((u->ier & 0x02) && u->thre_pending) {
      u->thre_pending = 0;
      return fifo | 0x02;
    }
    return fifo | 0x01;
  }
  case 3: return u->lcr;
  case 4: return u->mcr;
  case 5: return 0x60;
  case 6: return (u->mcr & 0x10) ? (uint8_t)(((u->mcr & 0x0c) << 4) | ((u->mcr & 0x03) << 4)) : 0xb0;
  default: return u->scr;
  }
}

static void uart_out(struct uart *u, unsigned reg, uint8_t v, int quiet) {
  int dlab = u->lcr & 0x80;
  switch (reg) {
  case 0:
    if (dlab) u->dll = v;
    else {
      if (!quiet) fputc(v, stdout);
      u->thre_pending = 1;
    }
    break;
  case 1:
    if (dlab) u->dlm = v;
    else {
      if ((v & 0x02) && !(u->ier & 0x02)) u->thre_pending = 1;
      u->ier = v & 0x0f;
    }
    break;
  case 2: u->fcr = v; break;
  case 3: u->lcr = v; break;
  case 4: u->mcr = v & 0x1f; break;
  case 7: u->scr = v; break;
  }
}

int main(int argc, char **argv) {
  unsigned long mem_mib = 256;
  double timeout_s = 600;
  int quiet = 0, opt;
  while ((opt = getopt(argc, argv, "m:t:q")) != -1) {
    if (opt == 'm') mem_mib = strtoul(optarg, 0, 0);
    else if (opt == 't') timeout_s = atof(optarg);
    else if (opt == 'q') quiet = 1;
    else return 2;
  }
  if (argc - optind != 3) {
    fprintf(stderr, "usage: linux-boot [-m MiB] [-t s] [-q] VMLINUX INITRD|- CMDLINE\n");
    return 2;
  }
  const char *kpath = argv[optind], *ipath = argv[optind + 1], *cmdline = argv[optind + 2];
  size_t mem_size = mem_mib << 20;
  double t0 = now();
  setvbuf(stdout, NULL, _IOLBF, 0); /* console lines reach the reader as the guest prints them */

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0) die("KVM_SET_TSS_ADDR");
  uint64_t idmap = 0xfffbc000;
  if (ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) die("KVM_SET_IDENTITY_MAP_ADDR");
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  struct kvm_pit_config pit = {.flags = 0};
  if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");

  uint8_t *ram = mmap(0, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (ram == MAP_FAILED) die("mmap");
  if (getenv("LINUX_BOOT_THP") && madvise(ram, mem_size, MADV_HUGEPAGE) < 0) die("madvise");
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uint64_t)ram};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

  /* ELF vmlinux: PT_LOAD segments at their physical addresses. */
  size_t klen;
  uint8_t *k = read_file(kpath, &klen);
  Elf64_Ehdr *eh = (Elf64_Ehdr *)k;
  if (klen < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64) {
    fprintf(stderr, "linux-boot: %s is not an ELF64 vmlinux\n", kpath);
    return 2;
  }
  uint64_t kernel_end = 0;
  for (int i = 0; i < eh->e_phnum; i++) {
    Elf64_Phdr *ph = (Elf64_Phdr *)(k + eh->e_phoff + (size_t)i * eh->e_phentsize);
    if (ph->p_type != PT_LOAD) continue;
    if (ph->p_paddr + ph->p_memsz > mem_size || ph->p_offset + ph->p_filesz > klen) {
      fprintf(stderr, "linux-boot: segment %d does not fit\n", i);
      return 2;
    }
    memcpy(ram + ph->p_paddr, k + ph->p_offset, ph->p_filesz);
    if (ph->p_paddr + ph->p_memsz > kernel_end) kernel_end = ph->p_paddr + ph->p_memsz;
  }
  uint64_t entry = eh->e_entry;

  /* initrd: page-aligned at the top of RAM. */
  uint64_t initrd_addr = 0, initrd_len = 0;
  if (strcmp(ipath, "-") != 0) {
    size_t ilen;
    uint8_t *ib = read_file(ipath, &ilen);
    initrd_addr = (mem_size - ilen) & ~0xfffUL;
    if (initrd_addr < kernel_end) {
      fprintf(stderr, "linux-boot: initrd does not fit\n");
      return 2;
    }
    memcpy(ram + initrd_addr, ib, ilen);
    initrd_len = ilen;
    free(ib);
  }
  free(k);

  /* Zero page with a synthetic setup header, the command line and the e820 map. */
  uint8_t *zp = ram + ZERO_PAGE;
  memset(zp, 0, 4096);
  *(uint16_t *)(zp + 0x1fe) = 0xaa55;
  memcpy(zp + 0x202, "HdrS", 4);
  *(uint16_t *)(zp + 0x206) = 0x020f;
  zp[0x210] = 0xff;
  zp[0x211] = 0x01 | 0x80;
  *(uint16_t *)(zp + 0x224) = 0xfe00;
  *(uint32_t *)(zp + 0x228) = CMDLINE_ADDR;
  *(uint32_t *)(zp + 0x218) = (uint32_t)initrd_addr;
  *(uint32_t *)(zp + 0x21c) = (uint32_t)initrd_len;
  *(uint32_t *)(zp + 0x230) = 0x200000;
  *(uint32_t *)(zp + 0x238) = 2047;
  strncpy((char *)ram + CMDLINE_ADDR, cmdline, 2047);
  struct e820 { uint64_t addr, size; uint32_t type; } __attribute__((packed)) map[3] = {
      {0, 0x9fc00, 1}, {0x9fc00, HIGH_MEM - 0x9fc00, 2}, {HIGH_MEM, mem_size - HIGH_MEM, 1}};
  zp[0x1e8] = 3;
  memcpy(zp + 0x2d0, map, sizeof map);

  /* GDT: null, null, code64 (0x10), data (0x18), TSS (0x20). */
  uint64_t gdt[] = {0, 0, 0x00af9b000000ffffULL, 0x00cf93000000ffffULL, 0x00808b0000000067ULL};
  memcpy(ram + GDT_ADDR, gdt, sizeof gdt);
  /* Identity map of 0–4 GiB with 2 MiB pages. */
  uint64_t *pml4 = (uint64_t *)(ram + PML4_ADDR), *pdpt = (uint64_t *)(ram + PDPT_ADDR);
  uint64_t *pd = (uint64_t *)(ram + PD_ADDR);
  pml4[0] = PDPT_ADDR | 3;
  for (int i = 0; i < 4; i++) pdpt[i] = (PD_ADDR + i * 0x1000) | 3;
  for (uint64_t i = 0; i < 2048; i++) pd[i] = (i << 21) | 0x83;

  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run *run = mmap(0, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");

  int nent = 256;
  struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + nent * sizeof(struct kvm_cpuid_entry2));
  cpuid->nent = nent;
  if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
  for (unsigned i = 0; i < cpuid->nent; i++) {
    struct kvm_cpuid_entry2 *e = &cpuid->entries[i];
    if (e->function == 1) e->ebx &= 0x00ffffff;
    if (e->function == 0xb) e->edx = 0;
  }
  if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");

  struct kvm_lapic_state lapic;
  if (ioctl(vcpu, KVM_GET_LAPIC, &lapic) < 0) die("KVM_GET_LAPIC");
  uint32_t *lvt0 = (uint32_t *)(lapic.regs + 0x350), *lvt1 = (uint32_t *)(lapic.regs + 0x360);
  *lvt0 = (*lvt0 & ~0x700u) | 0x700;
  *lvt1 = (*lvt1 & ~0x700u) | 0x400;
  if (ioctl(vcpu, KVM_SET_LAPIC, &lapic) < 0) die("KVM_SET_LAPIC");

  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
  struct kvm_segment code = {.base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 0xb, .present = 1,
                             .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1};
  struct kvm_segment data = code;
  data.selector = 0x18;
  data.type = 0x3;
  data.db = 1;
  data.l = 0;
  sregs.cs = code;
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
  sregs.tr = (struct kvm_segment){.base = 0, .limit = 0x67, .selector = 0x20, .type = 0xb, .present = 1, .s = 0};
  sregs.gdt.base = GDT_ADDR;
  sregs.gdt.limit = sizeof gdt - 1;
  sregs.cr0 = 0x80000033;
  sregs.cr3 = PML4_ADDR;
  sregs.cr4 = 0x20;
  sregs.efer = 0x500;
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  struct kvm_fpu fpu = {.fcw = 0x37f, .mxcsr = 0x1f80};
  if (ioctl(vcpu, KVM_SET_FPU, &fpu) < 0) die("KVM_SET_FPU");
  struct kvm_regs regs = {.rip = entry, .rsi = ZERO_PAGE, .rsp = STACK_TOP, .rbp = STACK_TOP, .rflags = 2};
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
  if (!quiet) fprintf(stderr, "linux-boot: ready in %.0f ms, entry 0x%lx\n", (now() - t0) * 1e3, (unsigned long)entry);

  struct uart uart = {0};
  int irq4 = 0;
  unsigned long exits = 0, io = 0, mmio = 0, emul = 0;
  const char *reason = "timeout";
  int status = 1;
  double deadline = t0 + timeout_s;
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      reason = "error";
      perror("KVM_RUN");
      break;
    }
    exits++;
    if ((exits & 1023) == 0 && now() > deadline) break;
    if (run->exit_reason == KVM_EXIT_IO) {
      io++;
      uint8_t *data = (uint8_t *)run + run->io.data_offset;
      unsigned port = run->io.port;
      for (unsigned n = 0; n < run->io.count; n++, data += run->io.size) {
        if (port >= 0x3f8 && port <= 0x3ff) {
          if (run->io.direction == KVM_EXIT_IO_OUT) uart_out(&uart, port - 0x3f8, data[0], quiet);
          else data[0] = uart_in(&uart, port - 0x3f8);
          int level = uart_irq_level(&uart);
          if (level != irq4) {
            struct kvm_irq_level irq = {.irq = 4, .level = (uint32_t)level};
            if (ioctl(vm, KVM_IRQ_LINE, &irq) < 0) die("KVM_IRQ_LINE");
            irq4 = level;
          }
        } else if (port == 0x64 && run->io.direction == KVM_EXIT_IO_OUT && data[0] == 0xfe) {
          reason = "reset";
          status = 0;
          goto out;
        } else if (run->io.direction == KVM_EXIT_IO_IN) {
          memset(data, port == 0x64 || port == 0x60 ? 0 : 0xff, run->io.size);
        }
      }
    } else if (run->exit_reason == KVM_EXIT_MMIO) {
      mmio++;
      if (!run->mmio.is_write) memset(run->mmio.data, 0xff, sizeof run->mmio.data);
    } else if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR &&
               run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION) {
      emul++;
      uint8_t *insn = run->emulation_failure.insn_bytes;
      if (!(run->emulation_failure.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) ||
          run->emulation_failure.insn_size == 0) {
        reason = "error";
        fprintf(stderr, "linux-boot: emulation failure without instruction bytes\n");
        break;
      }
      if (ioctl(vcpu, KVM_GET_REGS, &regs) < 0) die("KVM_GET_REGS");
      if (insn[0] == 0xcc) {
        regs.rip += 1;
        if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
        struct kvm_vcpu_events ev;
        if (ioctl(vcpu, KVM_GET_VCPU_EVENTS, &ev) < 0) die("KVM_GET_VCPU_EVENTS");
        ev.exception.injected = 1;
        ev.exception.nr = 3;
        ev.exception.has_error_code = 0;
        if (ioctl(vcpu, KVM_SET_VCPU_EVENTS, &ev) < 0) die("KVM_SET_VCPU_EVENTS");
      } else if (insn[0] == 0x9b) {
        regs.rip += 1;
        if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
      } else if (insn[0] == 0x0f && insn[1] == 0x01 && (insn[2] == 0xca || insn[2] == 0xcb)) {
        regs.rip += 3;
        if (insn[2] == 0xca) regs.rflags &= ~(1ULL << 18);
        else regs.rflags |= 1ULL << 18;
        if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
      } else {
        reason = "error";
        fprintf(stderr, "linux-boot: emulation failure at rip 0x%llx: %02x %02x %02x\n", regs.rip, insn[0], insn[1],
                insn[2]);
        break;
      }
    } else if (run->exit_reason == KVM_EXIT_HLT) {
      reason = "halt";
      break;
    } else if (run->exit_reason == KVM_EXIT_SHUTDOWN) {
      reason = "shutdown";
      status = 0;
      break;
    } else if (run->exit_reason == KVM_EXIT_SYSTEM_EVENT) {
      reason = "reset";
      status = 0;
      break;
    } else if (run->exit_reason == KVM_EXIT_IRQ_WINDOW_OPEN || run->exit_reason == KVM_EXIT_INTR) {
      continue;
    } else {
      reason = "error";
      fprintf(stderr, "linux-boot: unexpected exit reason %u\n", run->exit_reason);
      break;
    }
  }
out:
  fflush(stdout);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  fprintf(stderr, "RESULT reason=%s exits=%lu io=%lu mmio=%lu emul=%lu wall=%.2f sys=%.2f user=%.2f\n", reason, exits,
          io, mmio, emul, now() - t0, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6,
          ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6);
  return status;
}
