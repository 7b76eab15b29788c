/*
 * duktape-guest.c: JavaScript inside a sandbox: Debian's Duktape (/usr/share/duktape/duktape.c,
 * built unchanged) as a kvm-rx sandbox guest. Built by scripts/sandbox-guest.sh duktape.
 *
 *   await sandbox.call('eval', '6*7')          // 42: the script's value, as JSON
 *   await sandbox.call('eval', 'throw new TypeError("no")') // rejects: GuestError TypeError "no"
 *   await sandbox.call('call', 'f', 1, 2)      // calls the global function f(1, 2); JSON in and out
 *
 * In the script: print(...) and console.log(...) write a line to the host's output callback;
 * host(name, ...args) calls a host function (arguments and result as JSON). The heap is made in
 * kvmrx_init (before the ready point) and kept between calls; allocations come from the guest's
 * RAM (kvmrx-malloc.c), so a script that allocates without end gets a RangeError (out of memory).
 */
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "duktape.h"
#include "kvmrx.h"

static duk_context* ctx;

/* --- what Duktape needs from an OS ------------------------------------------------------------ */

/* Date.now(): the host's clock when the call started (no clock source inside the VM). */
int gettimeofday(struct timeval* tv, void* tz) {
  (void)tz;
  double ms = kvmrx_now_ms();
  tv->tv_sec = (time_t)(ms / 1000);
  tv->tv_usec = (suseconds_t)((ms - (double)tv->tv_sec * 1000) * 1000);
  return 0;
}
struct tm* localtime_r(const time_t* t, struct tm* out) { return gmtime_r(t, out); } /* UTC only */
time_t mktime(struct tm* tm) { return timegm(tm); }
char* strptime(const char* s, const char* f, struct tm* tm) {
  (void)s;
  (void)f;
  (void)tm;
  return NULL;
}
size_t strftime(char* s, size_t n, const char* f, const struct tm* tm) {
  (void)f;
  (void)tm;
  if (n > 0) s[0] = 0;
  return 0;
}
void abort(void) { kvmrx_abort("abort() called"); }

static void fatal(void* udata, const char* msg) {
  (void)udata;
  kvmrx_abort(msg != NULL ? msg : "Duktape fatal error");
}

/* --- script globals -------------------------------------------------------------------------- */

static duk_ret_t js_print(duk_context* c) {
  /* One line, one OUTPUT exit: the arguments as strings, joined by spaces, and a newline. */
  duk_idx_t n = duk_get_top(c);
  for (duk_idx_t i = 0; i < n; i++) duk_safe_to_string(c, i);
  duk_push_string(c, " ");
  duk_insert(c, 0);
  duk_join(c, n);
  duk_push_string(c, "\n");
  duk_concat(c, 2);
  duk_size_t len;
  const char* s = duk_get_lstring(c, -1, &len);
  kvmrx_write(s, len);
  return 0;
}

/* host(name, ...args): one HOSTCALL exit; the arguments go as one JSON array. */
static duk_ret_t js_host(duk_context* c) {
  duk_idx_t n = duk_get_top(c);
  const char* name = duk_require_string(c, 0);
  int id = kvmrx_host_fn(name);
  if (id < 0) return duk_error(c, DUK_ERR_REFERENCE_ERROR, "no host function '%s'", name);
  duk_idx_t arr = duk_push_array(c);
  for (duk_idx_t i = 1; i < n; i++) {
    duk_dup(c, i);
    duk_put_prop_index(c, arr, (duk_uarridx_t)(i - 1));
  }
  duk_size_t len;
  duk_json_encode(c, arr);
  const char* json = duk_get_lstring(c, arr, &len);
  kvmrx_value arg = kvmrx_v_json(json, len), res;
  int status = kvmrx_host_call(id, &arg, 1, &res);
  if (status != KVMRX_OK) {
    const char *en, *em;
    size_t enl, eml;
    kvmrx_error_parts(&res, &en, &enl, &em, &eml);
    duk_push_error_object(c, DUK_ERR_ERROR, "%.*s", (int)eml, em);
    duk_push_lstring(c, en, enl);
    duk_put_prop_string(c, -2, "name");
    return duk_throw(c);
  }
  switch (res.tag) {
    case KVMRX_T_UNDEFINED: duk_push_undefined(c); break;
    case KVMRX_T_NULL: duk_push_null(c); break;
    case KVMRX_T_BOOL: duk_push_boolean(c, res.u.b); break;
    case KVMRX_T_F64: duk_push_number(c, res.u.f64); break;
    case KVMRX_T_I64: duk_push_number(c, (double)res.u.i64); break;
    case KVMRX_T_STRING: duk_push_lstring(c, (const char*)res.u.ptr, res.len); break;
    case KVMRX_T_JSON:
      duk_push_lstring(c, (const char*)res.u.ptr, res.len);
      duk_json_decode(c, -1);
      break;
    case KVMRX_T_BYTES: {
      void* p = duk_push_fixed_buffer(c, res.len);
      memcpy(p, res.u.ptr, res.len);
      duk_push_buffer_object(c, -1, 0, res.len, DUK_BUFOBJ_UINT8ARRAY);
      duk_remove(c, -2);
      break;
    }
    default: duk_push_undefined(c);
  }
  return 1;
}

void kvmrx_init(void) {
  ctx = duk_create_heap(NULL, NULL, NULL, NULL, fatal);
  if (ctx == NULL) kvmrx_abort("duk_create_heap failed");
  duk_push_c_function(ctx, js_print, DUK_VARARGS);
  duk_put_global_string(ctx, "print");
  duk_push_c_function(ctx, js_host, DUK_VARARGS);
  duk_put_global_string(ctx, "host");
  duk_peval_string_noresult(ctx, "var console = { log: print, error: print, warn: print, info: print };");
}

/* --- results ---------------------------------------------------------------------------------- */

static duk_ret_t encode_top(duk_context* c, void* udata) {
  (void)udata;
  duk_json_encode(c, -1);
  return 1;
}

/* The error on top of the stack -> kvmrx_ret_error(name, message). */
static int ret_js_error(kvmrx_result* r) {
  char name[64], message[4096];
  if (duk_is_error(ctx, -1)) {
    duk_get_prop_string(ctx, -1, "name");
    snprintf(name, sizeof name, "%s", duk_safe_to_string(ctx, -1));
    duk_pop(ctx);
    duk_get_prop_string(ctx, -1, "message");
    snprintf(message, sizeof message, "%s", duk_safe_to_string(ctx, -1));
    duk_pop(ctx);
  } else { /* throw 42, throw "x": no name */
    snprintf(name, sizeof name, "%s", "Error");
    snprintf(message, sizeof message, "%s", duk_safe_to_string(ctx, -1));
  }
  duk_pop(ctx);
  return kvmrx_ret_error(r, name, message);
}

/* The value on top of the stack -> JSON (undefined when JSON has no text for it). */
static int ret_js_value(kvmrx_result* r) {
  if (duk_safe_call(ctx, encode_top, NULL, 1, 1) != DUK_EXEC_SUCCESS) return ret_js_error(r);
  int status;
  if (duk_is_string(ctx, -1)) {
    duk_size_t len;
    const char* s = duk_get_lstring(ctx, -1, &len);
    status = kvmrx_ret_json(r, s, len);
  } else {
    status = kvmrx_ret_undefined(r);
  }
  duk_pop(ctx);
  return status;
}

static int js_eval(const kvmrx_args* a, kvmrx_result* r) {
  const char* src;
  size_t len;
  if (kvmrx_arg_str(a, 0, &src, &len)) return kvmrx_ret_error(r, "TypeError", "eval(source) takes a string");
  if (duk_peval_lstring(ctx, src, len) != 0) return ret_js_error(r);
  return ret_js_value(r);
}
KVMRX_EXPORT("eval", js_eval);

static void push_arg(const kvmrx_value* v) {
  switch (v->tag) {
    case KVMRX_T_NULL: duk_push_null(ctx); break;
    case KVMRX_T_BOOL: duk_push_boolean(ctx, v->u.b); break;
    case KVMRX_T_F64: duk_push_number(ctx, v->u.f64); break;
    case KVMRX_T_I64: duk_push_number(ctx, (double)v->u.i64); break;
    case KVMRX_T_STRING: duk_push_lstring(ctx, (const char*)v->u.ptr, v->len); break;
    case KVMRX_T_JSON:
      duk_push_lstring(ctx, (const char*)v->u.ptr, v->len);
      duk_json_decode(ctx, -1);
      break;
    case KVMRX_T_BYTES: {
      void* p = duk_push_fixed_buffer(ctx, v->len);
      memcpy(p, v->u.ptr, v->len);
      duk_push_buffer_object(ctx, -1, 0, v->len, DUK_BUFOBJ_UINT8ARRAY);
      duk_remove(ctx, -2);
      break;
    }
    default: duk_push_undefined(ctx);
  }
}

static duk_ret_t call_global(duk_context* c, void* udata) {
  const kvmrx_args* a = udata;
  const char* name;
  size_t len;
  kvmrx_arg_str(a, 0, &name, &len);
  duk_push_global_object(c);
  duk_get_prop_lstring(c, -1, name, len);
  if (!duk_is_function(c, -1)) return duk_error(c, DUK_ERR_TYPE_ERROR, "%.*s is not a function", (int)len, name);
  for (uint32_t i = 1; i < a->count; i++) push_arg(&a->v[i]);
  duk_call(c, (duk_idx_t)(a->count - 1));
  return 1;
}

static int js_call(const kvmrx_args* a, kvmrx_result* r) {
  const char* name;
  size_t len;
  if (kvmrx_arg_str(a, 0, &name, &len)) return kvmrx_ret_error(r, "TypeError", "call(name, ...args) takes a function name");
  if (duk_safe_call(ctx, call_global, (void*)a, 0, 1) != DUK_EXEC_SUCCESS) return ret_js_error(r);
  return ret_js_value(r);
}
KVMRX_EXPORT("call", js_call);

static int js_nop(const kvmrx_args* a, kvmrx_result* r) {
  (void)a;
  (void)r;
  return KVMRX_OK;
}
KVMRX_EXPORT("nop", js_nop);
