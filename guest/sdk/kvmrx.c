/*
 * kvmrx.c: the guest side of the sandbox ABI: boot, the call loop, values, host calls, output.
 * Freestanding: uses no libc function (kvmrx-libc.c or musl provides memcpy and friends).
 */
#include "kvmrx.h"

extern const struct kvmrx_export __kvmrx_exports_start[];
extern const struct kvmrx_export __kvmrx_exports_end[];
extern char __kvmrx_image_end[];
extern void (*__init_array_start[])(void);
extern void (*__init_array_end[])(void);

void* memcpy(void* dst, const void* src, size_t n);
void* memmove(void* dst, const void* src, size_t n);
size_t strlen(const char* s);

__attribute__((weak)) void kvmrx_init(void) {}

#define AREA KVMRX_AREA_PTR
#define OUT ((uint8_t*)KVMRX_OUT)
#define IN ((const uint8_t*)KVMRX_IN)

static kvmrx_value args_v[KVMRX_MAX_ARGS];
/* Where output and host-call data go in OUT: after the result written so far. */
static uint32_t out_free;

static uint32_t align8(uint32_t n) { return (n + 7u) & ~7u; }

/* Writes one value at OUT[at..]; returns the offset after it, or 0 when it does not fit. */
static uint32_t put_value(uint32_t at, uint32_t tag, const void* payload, uint32_t len) {
  uint32_t need = 8u + len + 1u;
  if (at > KVMRX_OUT_SIZE || len > KVMRX_OUT_SIZE || need > KVMRX_OUT_SIZE - at) return 0;
  uint8_t* p = OUT + at;
  ((uint32_t*)p)[0] = tag;
  ((uint32_t*)p)[1] = len;
  if (len) memmove(p + 8, payload, len);
  uint32_t end = align8(at + need);
  for (uint32_t i = at + 8 + len; i < end; i++) OUT[i] = 0;
  return end;
}

static uint32_t put_parts(uint32_t at, uint32_t tag, const void* a, uint32_t alen, const void* b, uint32_t blen) {
  uint32_t len = alen + blen;
  if (len < alen || 8u + len + 1u > KVMRX_OUT_SIZE - at) return 0;
  uint8_t* p = OUT + at;
  ((uint32_t*)p)[0] = tag;
  ((uint32_t*)p)[1] = len;
  memmove(p + 8, a, alen);
  memmove(p + 8 + alen, b, blen);
  uint32_t end = align8(at + 8 + len + 1);
  for (uint32_t i = at + 8 + len; i < end; i++) OUT[i] = 0;
  return end;
}

static uint32_t put(uint32_t at, const kvmrx_value* v) {
  switch (v->tag) {
    case KVMRX_T_UNDEFINED:
    case KVMRX_T_NULL:
      return put_value(at, v->tag, 0, 0);
    case KVMRX_T_BOOL: {
      uint8_t b = v->u.b ? 1 : 0;
      return put_value(at, v->tag, &b, 1);
    }
    case KVMRX_T_F64:
    case KVMRX_T_I64:
      return put_value(at, v->tag, &v->u, 8);
    default:
      return put_value(at, v->tag, v->u.ptr, v->len);
  }
}

/* Reads the value at buf[at..size): fills *v and returns the offset after it, 0 if malformed. */
static uint32_t get_value(const uint8_t* buf, uint32_t size, uint32_t at, kvmrx_value* v) {
  if (at > size || size - at < 8) return 0;
  uint32_t tag = ((const uint32_t*)(buf + at))[0];
  uint32_t len = ((const uint32_t*)(buf + at))[1];
  if (len > size - at - 8) return 0;
  const uint8_t* p = buf + at + 8;
  v->tag = tag;
  v->len = len;
  switch (tag) {
    case KVMRX_T_UNDEFINED:
    case KVMRX_T_NULL:
      v->u.i64 = 0;
      break;
    case KVMRX_T_BOOL:
      if (len != 1) return 0;
      v->u.b = p[0] != 0;
      break;
    case KVMRX_T_F64:
    case KVMRX_T_I64:
      if (len != 8) return 0;
      memcpy(&v->u, p, 8);
      break;
    case KVMRX_T_STRING:
    case KVMRX_T_BYTES:
    case KVMRX_T_JSON:
    case KVMRX_T_ERROR:
      v->u.ptr = p;
      break;
    default:
      return 0;
  }
  uint32_t end = at + 8 + len + ((tag >= KVMRX_T_STRING) ? 1u : 0u);
  end = align8(end);
  return end > size ? size : end;
}

int kvmrx_arg_f64(const kvmrx_args* a, unsigned i, double* out) {
  if (i >= a->count) return -1;
  if (a->v[i].tag == KVMRX_T_F64) *out = a->v[i].u.f64;
  else if (a->v[i].tag == KVMRX_T_I64) *out = (double)a->v[i].u.i64;
  else return -1;
  return 0;
}

int kvmrx_arg_i64(const kvmrx_args* a, unsigned i, int64_t* out) {
  if (i >= a->count) return -1;
  if (a->v[i].tag == KVMRX_T_I64) {
    *out = a->v[i].u.i64;
    return 0;
  }
  if (a->v[i].tag == KVMRX_T_F64) {
    double d = a->v[i].u.f64;
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0) || (double)(int64_t)d != d) return -1;
    *out = (int64_t)d;
    return 0;
  }
  return -1;
}

int kvmrx_arg_str(const kvmrx_args* a, unsigned i, const char** s, size_t* len) {
  if (i >= a->count || (a->v[i].tag != KVMRX_T_STRING && a->v[i].tag != KVMRX_T_JSON)) return -1;
  *s = (const char*)a->v[i].u.ptr;
  *len = a->v[i].len;
  return 0;
}

int kvmrx_arg_bytes(const kvmrx_args* a, unsigned i, const uint8_t** b, size_t* len) {
  if (i >= a->count || a->v[i].tag != KVMRX_T_BYTES) return -1;
  *b = (const uint8_t*)a->v[i].u.ptr;
  *len = a->v[i].len;
  return 0;
}

static int ret(kvmrx_result* r, uint32_t tag, const void* p, size_t len, uint32_t status) {
  uint32_t end = len > KVMRX_OUT_SIZE ? 0 : put_value(0, tag, p, (uint32_t)len);
  if (end == 0) {
    static const char msg[] = "the result does not fit in the call area";
    static const uint32_t name_len = 10;
    end = put_parts(0, KVMRX_T_ERROR, &name_len, 4, "RangeError" "the result does not fit in the call area",
                    name_len + sizeof msg - 1);
    status = KVMRX_ERROR;
  }
  r->len = end;
  r->status = status;
  out_free = end;
  return (int)status;
}

int kvmrx_ret_undefined(kvmrx_result* r) { return ret(r, KVMRX_T_UNDEFINED, 0, 0, KVMRX_OK); }
int kvmrx_ret_null(kvmrx_result* r) { return ret(r, KVMRX_T_NULL, 0, 0, KVMRX_OK); }
int kvmrx_ret_bool(kvmrx_result* r, int v) {
  uint8_t b = v ? 1 : 0;
  return ret(r, KVMRX_T_BOOL, &b, 1, KVMRX_OK);
}
int kvmrx_ret_f64(kvmrx_result* r, double v) { return ret(r, KVMRX_T_F64, &v, 8, KVMRX_OK); }
int kvmrx_ret_i64(kvmrx_result* r, int64_t v) { return ret(r, KVMRX_T_I64, &v, 8, KVMRX_OK); }
int kvmrx_ret_str(kvmrx_result* r, const char* s, size_t len) { return ret(r, KVMRX_T_STRING, s, len, KVMRX_OK); }
int kvmrx_ret_json(kvmrx_result* r, const char* j, size_t len) { return ret(r, KVMRX_T_JSON, j, len, KVMRX_OK); }
int kvmrx_ret_bytes(kvmrx_result* r, const void* b, size_t len) { return ret(r, KVMRX_T_BYTES, b, len, KVMRX_OK); }
int kvmrx_ret_value(kvmrx_result* r, const kvmrx_value* v) {
  uint32_t end = put(0, v);
  if (end == 0) return ret(r, KVMRX_T_STRING, 0, (size_t)KVMRX_OUT_SIZE + 1, KVMRX_OK);
  r->len = end;
  r->status = v->tag == KVMRX_T_ERROR ? KVMRX_ERROR : KVMRX_OK;
  out_free = end;
  return (int)r->status;
}

int kvmrx_ret_error(kvmrx_result* r, const char* name, const char* message) {
  uint32_t nlen = (uint32_t)strlen(name);
  uint32_t mlen = (uint32_t)strlen(message);
  if (nlen > 256) nlen = 256;
  if (mlen > 65536) mlen = 65536;
  uint8_t head[4 + 256];
  memcpy(head, &nlen, 4);
  memcpy(head + 4, name, nlen);
  uint32_t end = put_parts(0, KVMRX_T_ERROR, head, 4 + nlen, message, mlen);
  r->len = end;
  r->status = KVMRX_ERROR;
  out_free = end;
  return KVMRX_ERROR;
}

void kvmrx_error_parts(const kvmrx_value* e, const char** name, size_t* nlen, const char** msg, size_t* mlen) {
  const uint8_t* p = (const uint8_t*)e->u.ptr;
  uint32_t n = 0;
  if (e->tag == KVMRX_T_ERROR && e->len >= 4) memcpy(&n, p, 4);
  if (e->tag != KVMRX_T_ERROR || e->len < 4 || n > e->len - 4) {
    *name = "Error";
    *nlen = 5;
    *msg = "";
    *mlen = 0;
    return;
  }
  *name = (const char*)p + 4;
  *nlen = n;
  *msg = (const char*)p + 4 + n;
  *mlen = e->len - 4 - n;
}

kvmrx_value kvmrx_v_f64(double v) {
  kvmrx_value x = {KVMRX_T_F64, 8, {0}};
  x.u.f64 = v;
  return x;
}
kvmrx_value kvmrx_v_i64(int64_t v) {
  kvmrx_value x = {KVMRX_T_I64, 8, {0}};
  x.u.i64 = v;
  return x;
}
static kvmrx_value vp(uint32_t tag, const void* p, size_t len) {
  kvmrx_value x = {tag, (uint32_t)len, {0}};
  x.u.ptr = p;
  return x;
}
kvmrx_value kvmrx_v_str(const char* s, size_t len) { return vp(KVMRX_T_STRING, s, len); }
kvmrx_value kvmrx_v_json(const char* j, size_t len) { return vp(KVMRX_T_JSON, j, len); }
kvmrx_value kvmrx_v_bytes(const void* b, size_t len) { return vp(KVMRX_T_BYTES, b, len); }

int kvmrx_host_fn(const char* name) {
  const volatile uint8_t* t = AREA->host_fns;
  uint32_t count = *(const volatile uint32_t*)t;
  size_t nlen = strlen(name);
  uint32_t at = 4;
  for (uint32_t id = 0; id < count && id < KVMRX_MAX_HOST_FNS; id++) {
    if (at + 4 > sizeof AREA->host_fns) break;
    uint32_t len = *(const volatile uint32_t*)(t + at);
    if (len > sizeof AREA->host_fns - at - 4) break;
    if (len == nlen) {
      uint32_t i = 0;
      while (i < len && t[at + 4 + i] == (uint8_t)name[i]) i++;
      if (i == len) return (int)id;
    }
    at += (4 + len + 3) & ~3u;
  }
  return -1;
}

static int host_error(kvmrx_value* result, const char* msg) {
  static const uint32_t nlen = 5;
  static uint8_t buf[128];
  uint32_t mlen = (uint32_t)strlen(msg);
  if (mlen > sizeof buf - 9) mlen = sizeof buf - 9;
  memcpy(buf, &nlen, 4);
  memcpy(buf + 4, "Error", 5);
  memcpy(buf + 9, msg, mlen);
  *result = vp(KVMRX_T_ERROR, buf, 9 + mlen);
  return KVMRX_ERROR;
}

int kvmrx_host_call(int id, const kvmrx_value* args, unsigned argc, kvmrx_value* result) {
  uint32_t start = align8(out_free);
  uint32_t at = start;
  for (unsigned i = 0; i < argc; i++) {
    at = put(at, &args[i]);
    if (at == 0) return host_error(result, "the host call's arguments do not fit in the call area");
  }
  AREA->hostfn = (uint32_t)id;
  AREA->out_off = start;
  AREA->out_len = at - start;
  AREA->out_count = argc;
  kvmrx_exit(KVMRX_EXIT_HOSTCALL);
  /* The host answered at OUT[out_off..out_off+out_len): one value, and the status. */
  uint32_t off = AREA->out_off, len = AREA->out_len, status = AREA->status;
  if (off > KVMRX_OUT_SIZE || len > KVMRX_OUT_SIZE - off ||
      get_value(OUT + off, len, 0, result) == 0)
    return host_error(result, "the host's answer is malformed");
  return status == KVMRX_OK && result->tag != KVMRX_T_ERROR ? KVMRX_OK : KVMRX_ERROR;
}

void kvmrx_write(const void* data, size_t len) {
  const uint8_t* p = (const uint8_t*)data;
  while (len > 0) {
    uint32_t start = align8(out_free);
    uint32_t room = start < KVMRX_OUT_SIZE ? KVMRX_OUT_SIZE - start : 0;
    if (room == 0) return;
    uint32_t n = len < room ? (uint32_t)len : room;
    memmove(OUT + start, p, n);
    AREA->out_off = start;
    AREA->out_len = n;
    kvmrx_exit(KVMRX_EXIT_OUTPUT);
    p += n;
    len -= n;
  }
}

void kvmrx_puts(const char* s) { kvmrx_write(s, strlen(s)); }

void kvmrx_abort(const char* message) {
  uint32_t start = align8(out_free);
  uint32_t mlen = (uint32_t)strlen(message);
  if (mlen > 4096) mlen = 4096;
  uint32_t end = put_value(start, KVMRX_T_STRING, message, mlen);
  AREA->out_off = start;
  AREA->out_len = end ? end - start : 0;
  for (;;) kvmrx_exit(KVMRX_EXIT_ABORT);
}

double kvmrx_now_ms(void) { return AREA->now_ms; }

void kvmrx_heap_bounds(uintptr_t* start, uintptr_t* end) {
  uintptr_t s = ((uintptr_t)__kvmrx_image_end + 0xfff) & ~(uintptr_t)0xfff;
  uintptr_t top = (uintptr_t)AREA->mem_size;
  uintptr_t e = top > KVMRX_STACK_SIZE ? top - KVMRX_STACK_SIZE : 0;
  *start = s;
  *end = e > s ? e : s;
}

static void ready(void) {
  uint32_t at = 0, n = 0;
  for (const struct kvmrx_export* e = __kvmrx_exports_start; e < __kvmrx_exports_end; e++, n++) {
    at = put_value(at, KVMRX_T_STRING, e->name, (uint32_t)strlen(e->name));
    if (at == 0) kvmrx_abort("the export names do not fit in the call area");
  }
  AREA->out_off = 0;
  AREA->out_len = at;
  AREA->out_count = n;
  kvmrx_exit(KVMRX_EXIT_READY);
}

static void dispatch(void) {
  kvmrx_result r = {0, KVMRX_OK};
  out_free = 0;
  uint32_t nexp = (uint32_t)(__kvmrx_exports_end - __kvmrx_exports_start);
  uint32_t func = AREA->func, argc = AREA->argc, in_len = AREA->in_len;
  if (AREA->op != KVMRX_OP_CALL || func >= nexp) {
    kvmrx_ret_error(&r, "Error", "bad call: no such function");
  } else if (argc > KVMRX_MAX_ARGS || in_len > KVMRX_IN_SIZE) {
    kvmrx_ret_error(&r, "RangeError", "bad call: too many arguments");
  } else {
    uint32_t at = 0;
    for (uint32_t i = 0; i < argc; i++) {
      at = get_value(IN, in_len, at, &args_v[i]);
      if (at == 0) {
        kvmrx_ret_error(&r, "Error", "bad call: malformed arguments");
        goto done;
      }
    }
    kvmrx_args a = {argc, args_v};
    int status = __kvmrx_exports_start[func].fn(&a, &r);
    if (r.len == 0) {
      kvmrx_ret_undefined(&r);
      if (status != KVMRX_OK) kvmrx_ret_error(&r, "Error", "the function failed");
    }
  }
done:
  AREA->status = r.status;
  AREA->out_off = 0;
  AREA->out_len = r.len;
  AREA->out_count = 1;
}

__attribute__((noreturn)) void kvmrx_start(void) {
  for (void (**f)(void) = __init_array_start; f < __init_array_end; f++) (*f)();
  kvmrx_init();
  ready();
  for (;;) {
    dispatch();
    kvmrx_exit(KVMRX_EXIT_RETURN);
  }
}
