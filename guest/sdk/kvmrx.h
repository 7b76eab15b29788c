/*
 * kvmrx.h: the guest side of kvm-rx's sandbox ABI (docs/sandbox.md).
 *
 * A sandbox guest is a static x86_64 ELF linked with kvmrx.ld at KVMRX_IMAGE_BASE. The host puts it
 * in 64-bit long mode at CPL 3 (IOPL 3) on an identity map and enters it at _start (kvmrx-start.S)
 * with RSP at the top of guest RAM. The guest talks to the host through the call area at
 * KVMRX_AREA and one exit per event: a 4-byte write of a KVMRX_EXIT_* code to the doorbell,
 * KVMRX_DOORBELL, a guest-physical address no RAM backs, so that KVM hands it to the host as an
 * MMIO exit. (Port I/O from CPL 3 would need IOPL 3 or the TSS I/O bitmap, which the PVM hosts
 * kvm-rx is developed on ignore: their guest user code always runs with IOPL 0.)
 *
 *   - boot: _start -> kvmrx_init() (optional, yours) -> READY exit (the export names are in OUT)
 *   - a call: the host writes the function index and the arguments (IN) and resumes the guest; the
 *     SDK decodes them, runs your export, writes its result at OUT[0] and makes a RETURN exit,
 *     where the guest waits for the next call
 *   - during a call: kvmrx_host_call() (HOSTCALL exit), kvmrx_write() (OUTPUT exit)
 *
 * The constants and the layout below are the ABI: src/vmm/sandbox/abi.ts has the same numbers, and
 * spec/vmm/sandbox-abi.spec.ts checks that the two agree.
 */
#ifndef KVMRX_H
#define KVMRX_H

#include <stddef.h>
#include <stdint.h>

#define KVMRX_ABI_VERSION 1u
#define KVMRX_MAGIC 0x5852564bu /* "KVRX" */

/* Guest-physical (= virtual) layout. Below KVMRX_AREA: the host's ring-0 structures (supervisor
 * pages the guest cannot touch) and the thread block. */
#define KVMRX_TLS 0x10000ul         /* one user page; FS.base points here; qword 0 = its address */
#define KVMRX_AREA 0x200000ul       /* the call area: header page, IN, OUT */
#define KVMRX_IN 0x201000ul         /* host -> guest: call arguments */
#define KVMRX_IN_SIZE 0xff000ul     /* 1020 KiB */
#define KVMRX_OUT 0x300000ul        /* guest -> host: results, host-call arguments/results, output */
#define KVMRX_OUT_SIZE 0x100000ul   /* 1 MiB */
#define KVMRX_IMAGE_BASE 0x400000ul /* where kvmrx.ld links the image */
#define KVMRX_STACK_SIZE 0x200000ul /* the top 2 MiB of guest RAM are the stack */
#define KVMRX_DOORBELL 0x40000000ul /* 1 GiB: above the largest guest RAM; writes exit (MMIO) */

/* Exits: a 4-byte write of one of these to KVMRX_DOORBELL. */
#define KVMRX_FAULT_PORT 0xe1 /* `out` of the host's ring-0 exception handlers only */
#define KVMRX_EXIT_READY 1u    /* boot done; OUT holds the export names */
#define KVMRX_EXIT_RETURN 2u   /* a call returned; OUT[0..] holds its result, status says ok/error */
#define KVMRX_EXIT_HOSTCALL 3u /* call host function `hostfn`; its arguments at OUT[out_off..] */
#define KVMRX_EXIT_OUTPUT 4u   /* out_len bytes of output at OUT[out_off..] */
#define KVMRX_EXIT_ABORT 5u    /* the guest gives up; a message (STRING value) at OUT[out_off..] */

#define KVMRX_OP_CALL 1u

#define KVMRX_OK 0u
#define KVMRX_ERROR 1u

/* Value tags. A value in IN or OUT is { u32 tag; u32 len; payload[len]; } padded with zeros to a
 * multiple of 8 bytes; STRING, JSON and BYTES payloads are followed by at least one NUL byte. */
#define KVMRX_T_UNDEFINED 0u
#define KVMRX_T_NULL 1u
#define KVMRX_T_BOOL 2u   /* payload: 1 byte, 0 or 1 (len 1) */
#define KVMRX_T_F64 3u    /* payload: an IEEE double (len 8): a JS number */
#define KVMRX_T_I64 4u    /* payload: a signed 64-bit integer (len 8): a JS bigint */
#define KVMRX_T_STRING 5u /* payload: UTF-8 */
#define KVMRX_T_BYTES 6u  /* payload: raw bytes: a Uint8Array */
#define KVMRX_T_JSON 7u   /* payload: UTF-8 JSON text: any other JSON value */
#define KVMRX_T_ERROR 8u  /* payload: u32 name_len, name, message (UTF-8): an error */

#define KVMRX_MAX_ARGS 64u
#define KVMRX_MAX_HOST_FNS 64u

/* The header page at KVMRX_AREA. Who writes a field is given in brackets. */
struct kvmrx_area {
  uint32_t magic;    /* 0x00 [host] KVMRX_MAGIC */
  uint32_t abi;      /* 0x04 [host] KVMRX_ABI_VERSION */
  uint64_t mem_size; /* 0x08 [host] bytes of guest RAM (from 0) */
  uint32_t op;       /* 0x10 [host] KVMRX_OP_CALL when a call starts */
  uint32_t func;     /* 0x14 [host] the export's index (its place in the READY list) */
  uint32_t argc;     /* 0x18 [host] arguments in IN */
  uint32_t in_len;   /* 0x1c [host] bytes of IN used */
  uint32_t status;   /* 0x20 [guest] RETURN: KVMRX_OK/KVMRX_ERROR; [host] after a HOSTCALL */
  uint32_t out_len;  /* 0x24 [guest] bytes at OUT[out_off..]; [host] after a HOSTCALL */
  uint32_t out_off;  /* 0x28 [guest] where HOSTCALL/OUTPUT/ABORT data starts in OUT (8-aligned) */
  uint32_t hostfn;   /* 0x2c [guest] HOSTCALL: the host function's id */
  uint32_t out_count; /* 0x30 [guest] values at OUT[out_off..] (HOSTCALL args, READY names) */
  uint32_t reserved0; /* 0x34 */
  double now_ms;      /* 0x38 [host] wall clock (ms since the epoch) when the call started */
  uint8_t reserved[0x800 - 0x40];
  /* 0x800 [host, at boot] the host functions: u32 count, then per function
   * { u32 len; char name[len]; } padded to 4 bytes. Their ids are their places in this list. */
  uint8_t host_fns[0x800];
};

/* A value: an argument, a result, a host-call argument or result. Pointers point into IN or OUT
 * (or your own memory for values you build). */
typedef struct kvmrx_value {
  uint32_t tag;
  uint32_t len; /* payload bytes of STRING, BYTES, JSON and ERROR */
  union {
    const void* ptr; /* STRING, BYTES, JSON, ERROR */
    int64_t i64;
    double f64;
    int b;
  } u;
} kvmrx_value;

typedef struct kvmrx_args {
  uint32_t count;
  const kvmrx_value* v;
} kvmrx_args;

/* Where an export puts its result (through the kvmrx_ret_* functions). Opaque. */
typedef struct kvmrx_result {
  uint32_t len;    /* bytes written at OUT[0..] */
  uint32_t status; /* KVMRX_OK or KVMRX_ERROR */
} kvmrx_result;

/* An export returns KVMRX_OK or KVMRX_ERROR (what kvmrx_ret_error returns). Without a kvmrx_ret_*
 * call the result is `undefined`. */
typedef int (*kvmrx_fn)(const kvmrx_args* args, kvmrx_result* result);

struct kvmrx_export {
  const char* name;
  kvmrx_fn fn;
};

/* KVMRX_EXPORT("add", add): makes `add` callable as sandbox.call('add', ...). */
#define KVMRX_EXPORT(name, fn)                                                                         \
  static const struct kvmrx_export kvmrx_export_##fn __attribute__((used, section(".kvmrx_exports"), \
                                                                     aligned(16))) = {name, fn}

/* Optional: runs once before the READY exit (set up your state here: what the host snapshots). */
void kvmrx_init(void);

/* Arguments: 0 on success, -1 when there is no such argument or it has another type. */
int kvmrx_arg_f64(const kvmrx_args* args, unsigned i, double* out);    /* F64, I64 */
int kvmrx_arg_i64(const kvmrx_args* args, unsigned i, int64_t* out);   /* I64, integral F64 */
int kvmrx_arg_str(const kvmrx_args* args, unsigned i, const char** s, size_t* len); /* STRING, JSON */
int kvmrx_arg_bytes(const kvmrx_args* args, unsigned i, const uint8_t** b, size_t* len);

/* Results (the last call wins; each copies its payload into OUT at once). */
int kvmrx_ret_undefined(kvmrx_result* r);
int kvmrx_ret_null(kvmrx_result* r);
int kvmrx_ret_bool(kvmrx_result* r, int v);
int kvmrx_ret_f64(kvmrx_result* r, double v);
int kvmrx_ret_i64(kvmrx_result* r, int64_t v);
int kvmrx_ret_str(kvmrx_result* r, const char* s, size_t len);
int kvmrx_ret_json(kvmrx_result* r, const char* json, size_t len);
int kvmrx_ret_bytes(kvmrx_result* r, const void* b, size_t len);
int kvmrx_ret_value(kvmrx_result* r, const kvmrx_value* v);
/* Returns KVMRX_ERROR: `return kvmrx_ret_error(r, "TypeError", "expected a number");` The host
 * rejects the call with a GuestError carrying `name` and `message`. */
int kvmrx_ret_error(kvmrx_result* r, const char* name, const char* message);

/* Values for host calls. */
kvmrx_value kvmrx_v_f64(double v);
kvmrx_value kvmrx_v_i64(int64_t v);
kvmrx_value kvmrx_v_str(const char* s, size_t len);
kvmrx_value kvmrx_v_json(const char* json, size_t len);
kvmrx_value kvmrx_v_bytes(const void* b, size_t len);

/* The id of the host function `name` (registered with the Sandbox), or -1. */
int kvmrx_host_fn(const char* name);
/* Calls host function `id` (one HOSTCALL exit). Returns KVMRX_OK with its result in *result, or
 * KVMRX_ERROR with an ERROR value (the host function threw, or there is no such id). A result's
 * payload lives in OUT: copy what you keep before the next host call, output or kvmrx_ret_*. */
int kvmrx_host_call(int id, const kvmrx_value* args, unsigned argc, kvmrx_value* result);
/* The name and message of an ERROR value (pointers into its payload; not NUL-terminated). */
void kvmrx_error_parts(const kvmrx_value* err, const char** name, size_t* name_len, const char** msg,
                       size_t* msg_len);

/* Output to the host's output callback (one OUTPUT exit per 1 MiB chunk). */
void kvmrx_write(const void* data, size_t len);
void kvmrx_puts(const char* s); /* kvmrx_write(s, strlen(s)) */

/* Stops the guest for good: the host rejects the current call (or the boot) with `message`. */
__attribute__((noreturn)) void kvmrx_abort(const char* message);

/* The host's wall clock when the current call started (ms since the epoch). */
double kvmrx_now_ms(void);

/* The free RAM between the image's end and the stack: what kvmrx-malloc.c hands out. */
void kvmrx_heap_bounds(uintptr_t* start, uintptr_t* end);

/* The exit itself (inline): one `mov` of the code to the doorbell. */
static inline void kvmrx_exit(uint32_t code) {
  __asm__ volatile("movl %0, (%1)" : : "r"(code), "r"(KVMRX_DOORBELL) : "memory");
}

#define KVMRX_AREA_PTR ((volatile struct kvmrx_area*)KVMRX_AREA)

#endif
