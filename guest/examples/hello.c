/*
 * hello.c: the example sandbox guest (docs/sandbox.md). Built by scripts/sandbox-guest.sh hello.
 *
 *   await sandbox.call('add', 2, 3)            // 5
 *   await sandbox.call('greet', 'you')          // 'hello, you' (and "hello, you\n" on the output)
 *   await sandbox.call('sum', Uint8Array.of(1, 2, 3)) // 6n
 *   await sandbox.call('twice', 21)             // host function 'double' called from the guest
 *   await sandbox.call('count')                 // 1, 2, 3, ...: state kept between calls
 */
#include "kvmrx.h"

void* memcpy(void* dst, const void* src, size_t n);

static int add(const kvmrx_args* a, kvmrx_result* r) {
  double x, y;
  if (kvmrx_arg_f64(a, 0, &x) || kvmrx_arg_f64(a, 1, &y)) return kvmrx_ret_error(r, "TypeError", "add(x, y) takes two numbers");
  return kvmrx_ret_f64(r, x + y);
}
KVMRX_EXPORT("add", add);

static int greet(const kvmrx_args* a, kvmrx_result* r) {
  const char* name;
  size_t len;
  static char buf[256];
  if (kvmrx_arg_str(a, 0, &name, &len)) return kvmrx_ret_error(r, "TypeError", "greet(name) takes a string");
  if (len > sizeof buf - 9) return kvmrx_ret_error(r, "RangeError", "name too long");
  memcpy(buf, "hello, ", 7);
  memcpy(buf + 7, name, len);
  buf[7 + len] = '\n';
  kvmrx_write(buf, 8 + len);
  return kvmrx_ret_str(r, buf, 7 + len);
}
KVMRX_EXPORT("greet", greet);

static int sum(const kvmrx_args* a, kvmrx_result* r) {
  const uint8_t* b;
  size_t len;
  if (kvmrx_arg_bytes(a, 0, &b, &len)) return kvmrx_ret_error(r, "TypeError", "sum(bytes) takes a Uint8Array");
  int64_t s = 0;
  for (size_t i = 0; i < len; i++) s += b[i];
  return kvmrx_ret_i64(r, s);
}
KVMRX_EXPORT("sum", sum);

static int twice(const kvmrx_args* a, kvmrx_result* r) {
  double x;
  if (kvmrx_arg_f64(a, 0, &x)) return kvmrx_ret_error(r, "TypeError", "twice(x) takes a number");
  int id = kvmrx_host_fn("double");
  if (id < 0) return kvmrx_ret_error(r, "ReferenceError", "no host function 'double'");
  kvmrx_value arg = kvmrx_v_f64(x), res;
  if (kvmrx_host_call(id, &arg, 1, &res) != KVMRX_OK) return kvmrx_ret_value(r, &res);
  return kvmrx_ret_value(r, &res);
}
KVMRX_EXPORT("twice", twice);

static int echo(const kvmrx_args* a, kvmrx_result* r) {
  if (a->count == 0) return kvmrx_ret_undefined(r);
  return kvmrx_ret_value(r, &a->v[0]);
}
KVMRX_EXPORT("echo", echo);

static int64_t counter;
static int count(const kvmrx_args* a, kvmrx_result* r) {
  (void)a;
  return kvmrx_ret_i64(r, ++counter);
}
KVMRX_EXPORT("count", count);

static int nop(const kvmrx_args* a, kvmrx_result* r) {
  (void)a;
  (void)r;
  return KVMRX_OK;
}
KVMRX_EXPORT("nop", nop);

/* Misbehaviour on purpose, for the specs: a fault, an endless loop, a give-up. */
static int crash(const kvmrx_args* a, kvmrx_result* r) {
  (void)a;
  (void)r;
  static volatile uintptr_t where = 8;
  return *(volatile int*)where; /* page 0 is not mapped: a page fault (#PF) */
}
KVMRX_EXPORT("crash", crash);

static int spin(const kvmrx_args* a, kvmrx_result* r) {
  (void)a;
  (void)r;
  for (;;) __asm__ volatile("" ::: "memory");
  return KVMRX_OK;
}
KVMRX_EXPORT("spin", spin);

static int give_up(const kvmrx_args* a, kvmrx_result* r) {
  (void)a;
  (void)r;
  kvmrx_abort("giving up on purpose");
}
KVMRX_EXPORT("abort", give_up);

/* Writes its argument's bytes over the call area's header, then returns: a hostile guest. */
static int scribble(const kvmrx_args* a, kvmrx_result* r) {
  const uint8_t* b;
  size_t len;
  kvmrx_ret_undefined(r);
  if (kvmrx_arg_bytes(a, 0, &b, &len)) return KVMRX_OK;
  if (len > 0x40) len = 0x40;
  uint8_t copy[0x40];
  memcpy(copy, b, len);
  memcpy((void*)KVMRX_AREA, copy, len);
  kvmrx_exit(KVMRX_EXIT_RETURN);
  return KVMRX_OK;
}
KVMRX_EXPORT("scribble", scribble);
