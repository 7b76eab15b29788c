/*
 * sandbox-exit.c: the C floor of `npm run bench:sandbox`: a plain KVM_RUN loop around the exit a
 * sandbox call makes, from the same privilege level (CPL 3) in the same machine (bench/sandbox.ts
 * writes the sandbox's memory image, with a guest that rings the doorbell in a loop, and its
 * kvm_sregs; this program loads both).
 *
 *   sandbox-exit <memory-image> <sregs-file> <mem-size> <exits>
 *
 * prints {"ns": <total ns of the timed exits>, "exits": n}. Each exit is checked as the host does
 * (an MMIO write of 4 bytes to the doorbell), and the loop goes straight back into the guest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define DOORBELL 0x40000000ull

static void die(const char* what) {
  fprintf(stderr, "sandbox-exit: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static size_t read_file(const char* path, void* buf, size_t max) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) die(path);
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, (char*)buf + n, max - n);
    if (r < 0) die("read");
    if (r == 0) break;
    n += (size_t)r;
  }
  close(fd);
  return n;
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: sandbox-exit <memory-image> <sregs-file> <mem-size> <exits>\n");
    return 2;
  }
  size_t mem_size = strtoull(argv[3], NULL, 0);
  long exits = strtol(argv[4], NULL, 0);
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0) die("KVM_SET_TSS_ADDR");
  uint8_t* mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) die("mmap");
  read_file(argv[1], mem, mem_size);
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uintptr_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run* run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");
  struct kvm_sregs sregs;
  if (read_file(argv[2], &sregs, sizeof sregs) != sizeof sregs) {
    fprintf(stderr, "sandbox-exit: the sregs file is not %zu bytes\n", sizeof sregs);
    return 2;
  }
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = 0x400000;
  regs.rsp = mem_size;
  regs.rflags = 0x3002;
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
  uint64_t t0 = 0;
  long done = 0;
  for (long i = -100; i < exits; i++) { /* 100 exits of warm-up */
    if (i == 0) t0 = now_ns();
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR) {
        i--;
        continue;
      }
      die("KVM_RUN");
    }
    if (run->exit_reason != KVM_EXIT_MMIO || run->mmio.phys_addr != DOORBELL || !run->mmio.is_write ||
        run->mmio.len != 4) {
      fprintf(stderr, "sandbox-exit: unexpected exit %u\n", run->exit_reason);
      return 1;
    }
    done++;
  }
  uint64_t t1 = now_ns();
  printf("{\"ns\": %llu, \"exits\": %ld}\n", (unsigned long long)(t1 - t0), exits);
  return done > 0 ? 0 : 1;
}
