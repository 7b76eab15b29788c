/*
 * kvm-bench.c: the C baselines of `npm run bench` (bench/run.ts builds this with gcc into a temp
 * directory and spawns it once per repetition, in the same run as the TypeScript cases).
 *
 *   kvm-bench loop <guest-hex> <cpu>   run the guest given as hex bytes (real mode, at GPA 0) and
 *                                      print {"ns": <ns between the two marker exits>, "exits": n}
 *   kvm-bench cold <cycles> <cpu>      create VM + memory + vCPU, run a `hlt` guest, destroy, `cycles`
 *                                      times; print {"ns": <total>, "cycles": n}
 *   kvm-bench kick <kicks> <cpu> <cpu2> a thread spins in `jmp $` inside KVM_RUN; the main thread
 *                                      kicks it (immediate_exit + pthread_kill); print the per-kick
 *                                      latencies {"ns": [..]} (kick -> KVM_RUN returned EINTR)
 *
 * The loop handles exits exactly like the TypeScript handlers of the same case:
 *   OUT 0x10   reads the byte the guest wrote (adds it to a checksum)
 *   IN  0x11   answers a counter byte
 *   IN  0x12   start marker: takes the start time, answers 0
 *   IN  0x13   end marker: takes the end time, answers 0
 *   HLT        ends the run
 * cpu < 0 leaves the affinity alone (the child inherits its parent's).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE 0x1000

static void die(const char* what) {
  fprintf(stderr, "kvm-bench: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
}

struct vm {
  int vm, vcpu;
  uint8_t* mem;
  struct kvm_run* run;
  size_t run_size;
};

/* The same steps as the TypeScript cold start: VM, one page of guest memory at GPA 0, vCPU 0,
 * kvm_run mapping, real mode (cs base 0), rip 0. */
static void vm_create(int kvm, struct vm* v, const uint8_t* code, size_t len) {
  v->vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (v->vm < 0) die("KVM_CREATE_VM");
  v->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (v->mem == MAP_FAILED) die("mmap");
  memcpy(v->mem, code, len);
  struct kvm_userspace_memory_region region = {
      .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)v->mem};
  if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
  v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
  if (v->vcpu < 0) die("KVM_CREATE_VCPU");
  int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
  v->run_size = (size_t)size;
  v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
  if (v->run == MAP_FAILED) die("mmap kvm_run");
  struct kvm_sregs sregs;
  if (ioctl(v->vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  if (ioctl(v->vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = 0;
  regs.rflags = 2;
  if (ioctl(v->vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
}

static void vm_destroy(struct vm* v) {
  munmap(v->run, v->run_size);
  close(v->vcpu);
  close(v->vm);
  munmap(v->mem, MEM_SIZE);
}

static size_t parse_hex(const char* hex, uint8_t* out, size_t max) {
  size_t n = strlen(hex) / 2;
  if (n > max) n = max;
  for (size_t i = 0; i < n; i++) {
    unsigned b;
    if (sscanf(hex + 2 * i, "%2x", &b) != 1) {
      fprintf(stderr, "kvm-bench: bad hex\n");
      exit(2);
    }
    out[i] = (uint8_t)b;
  }
  return n;
}

static int loop(int kvm, const char* hex) {
  uint8_t code[MEM_SIZE];
  size_t len = parse_hex(hex, code, sizeof code);
  struct vm v;
  vm_create(kvm, &v, code, len);
  uint8_t* run_bytes = (uint8_t*)v.run;
  uint64_t t0 = 0, t1 = 0, exits = 0;
  unsigned sum = 0, counter = 0;
  for (;;) {
    if (ioctl(v.vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR) continue;
      die("KVM_RUN");
    }
    exits++;
    struct kvm_run* r = v.run;
    if (r->exit_reason == KVM_EXIT_IO) {
      uint8_t* data = run_bytes + r->io.data_offset;
      if (r->io.direction == KVM_EXIT_IO_OUT && r->io.port == 0x10) {
        sum += data[0];
      } else if (r->io.direction == KVM_EXIT_IO_IN && r->io.port == 0x11) {
        data[0] = (uint8_t)(counter++ & 0xff);
      } else if (r->io.direction == KVM_EXIT_IO_IN && r->io.port == 0x12) {
        t0 = now_ns();
        data[0] = 0;
      } else if (r->io.direction == KVM_EXIT_IO_IN && r->io.port == 0x13) {
        t1 = now_ns();
        data[0] = 0;
      } else {
        fprintf(stderr, "kvm-bench: unexpected port 0x%x\n", r->io.port);
        return 1;
      }
    } else if (r->exit_reason == KVM_EXIT_HLT) {
      break;
    } else {
      fprintf(stderr, "kvm-bench: unexpected exit %u\n", r->exit_reason);
      return 1;
    }
  }
  vm_destroy(&v);
  printf("{\"ns\": %llu, \"exits\": %llu, \"checksum\": %u}\n", (unsigned long long)(t1 - t0),
         (unsigned long long)exits, sum);
  return 0;
}

static int cold(int kvm, int cycles) {
  static const uint8_t hlt[] = {0xf4};
  uint64_t t0 = now_ns();
  for (int i = 0; i < cycles; i++) {
    struct vm v;
    vm_create(kvm, &v, hlt, sizeof hlt);
    if (ioctl(v.vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (v.run->exit_reason != KVM_EXIT_HLT) {
      fprintf(stderr, "kvm-bench: cold: exit %u, not HLT\n", v.run->exit_reason);
      return 1;
    }
    vm_destroy(&v);
  }
  printf("{\"ns\": %llu, \"cycles\": %d}\n", (unsigned long long)(now_ns() - t0), cycles);
  return 0;
}

/* Kick: a second thread spins in the guest (`jmp $`), the main thread kicks it. */
static struct vm kick_vm;
static volatile int kick_ready, kick_cpu2;
static volatile uint64_t kick_returned;
static pthread_t kick_thread;
static void on_kick(int sig) { (void)sig; }

static void* kick_worker(void* arg) {
  int rounds = *(int*)arg;
  pin(kick_cpu2);
  for (int i = 0; i < rounds; i++) {
    __atomic_store_n(&kick_ready, i + 1, __ATOMIC_SEQ_CST);
    int r = ioctl(kick_vm.vcpu, KVM_RUN, 0);
    uint64_t t = now_ns();
    if (r >= 0 || errno != EINTR) {
      fprintf(stderr, "kvm-bench: kick: KVM_RUN returned %d (errno %d), not EINTR\n", r, errno);
      exit(1);
    }
    __atomic_store_n(&kick_vm.run->immediate_exit, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&kick_returned, t, __ATOMIC_SEQ_CST);
  }
  return NULL;
}

static int kick(int kvm, int rounds) {
  static const uint8_t spin[] = {0xeb, 0xfe}; /* jmp $ */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_kick;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGRTMIN + 3, &sa, NULL) < 0) die("sigaction");
  vm_create(kvm, &kick_vm, spin, sizeof spin);
  if (pthread_create(&kick_thread, NULL, kick_worker, &rounds) != 0) die("pthread_create");
  printf("{\"ns\": [");
  for (int i = 0; i < rounds; i++) {
    while (__atomic_load_n(&kick_ready, __ATOMIC_SEQ_CST) != i + 1) usleep(100);
    usleep(2000); /* let it enter the guest */
    __atomic_store_n(&kick_returned, 0, __ATOMIC_SEQ_CST);
    uint64_t t0 = now_ns();
    __atomic_store_n(&kick_vm.run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    if (pthread_kill(kick_thread, SIGRTMIN + 3) != 0) die("pthread_kill");
    uint64_t t;
    while ((t = __atomic_load_n(&kick_returned, __ATOMIC_SEQ_CST)) == 0) usleep(50);
    printf("%s%llu", i ? ", " : "", (unsigned long long)(t - t0));
  }
  printf("]}\n");
  pthread_join(kick_thread, NULL);
  vm_destroy(&kick_vm);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: kvm-bench loop <guest-hex> <cpu> | cold <cycles> <cpu> | kick <kicks> <cpu> <cpu2>\n");
    return 2;
  }
  pin(atoi(argv[3]));
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("open /dev/kvm");
  if (strcmp(argv[1], "loop") == 0) return loop(kvm, argv[2]);
  if (strcmp(argv[1], "cold") == 0) return cold(kvm, atoi(argv[2]));
  if (strcmp(argv[1], "kick") == 0) {
    kick_cpu2 = argc > 4 ? atoi(argv[4]) : -1;
    return kick(kvm, atoi(argv[2]));
  }
  fprintf(stderr, "kvm-bench: unknown mode %s\n", argv[1]);
  return 2;
}
