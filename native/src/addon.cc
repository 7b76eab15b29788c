// kvm-rx native addon: system calls only (open, close, ioctl, mmap, eventfd, poll, signals).
// No policy lives here: every decision is made in TypeScript. Failed syscalls throw the
// KvmError class that JavaScript hands to init(). No mutable statics: per-environment state
// lives in the Addon instance, so the addon is safe in worker threads.
#include <napi.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <sched.h>

#include <map>
#include <set>
#include <string>

#include "abi.h"

// <linux/kvm.h> compiled as C++: Debian 12's 6.1 headers declare flexible arrays with a macro that
// gives them size 1 in C++, so redefine it as C sees it. Only struct kvm_run and KVM_RUN are used
// here; spec/abi.spec.ts compares this file's view (cxxAbi) with the C table.
#include <linux/stddef.h>
#undef __DECLARE_FLEX_ARRAY
#define __DECLARE_FLEX_ARRAY(TYPE, NAME) TYPE NAME[0]
#include "kvm_compat.h"

static_assert(KVM_SET_SIGNAL_MASK == 0x4004ae8b, "kvm.h compiled as C++ gives C's request numbers");
static_assert(KVM_GET_MSRS == 0xc008ae88, "kvm.h compiled as C++ gives C's request numbers");

namespace {

// The vCPU kick signal. Its handler is empty: the signal exists only to make KVM_RUN return EINTR.
int KickSignalNumber() { return SIGRTMIN + 4; }

extern "C" void KickHandler(int) {}

class Addon;

struct Watcher {
  uv_poll_t handle;
  Napi::FunctionReference callback;
  Addon* addon;
  bool closing = false;
};

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports) {
    DefineAddon(exports, {
        InstanceMethod("setErrorClass", &Addon::SetErrorClass),
        InstanceMethod("abi", &Addon::Abi),
        InstanceMethod("pageSize", &Addon::PageSize),
        InstanceMethod("open", &Addon::Open),
        InstanceMethod("close", &Addon::Close),
        InstanceMethod("dup", &Addon::Dup),
        InstanceMethod("getFdFlags", &Addon::GetFdFlags),
        InstanceMethod("ioctl", &Addon::Ioctl),
        InstanceMethod("mmap", &Addon::Mmap),
        InstanceMethod("munmap", &Addon::Munmap),
        InstanceMethod("madvise", &Addon::Madvise),
        InstanceMethod("view", &Addon::View),
        InstanceMethod("detach", &Addon::Detach),
        InstanceMethod("addressOf", &Addon::AddressOf),
        InstanceMethod("eventfd", &Addon::EventFd),
        InstanceMethod("read", &Addon::Read),
        InstanceMethod("write", &Addon::Write),
        InstanceMethod("watchReadable", &Addon::WatchReadable),
        InstanceMethod("kickSignal", &Addon::KickSignal),
        InstanceMethod("threadSelf", &Addon::ThreadSelf),
        InstanceMethod("kick", &Addon::Kick),
        InstanceMethod("runFast", &Addon::RunFast),
        InstanceMethod("runFastLayout", &Addon::RunFastLayout),
        InstanceMethod("cxxAbi", &Addon::CxxAbi),
        InstanceMethod("setAffinity", &Addon::SetAffinity),
    });
    env.AddCleanupHook([this]() {
      CloseAllWatchers();
      UnmapAtExit();
    });
  }

  void Forget(Watcher* w) { watchers_.erase(w); }

 private:
  Napi::FunctionReference kvmError_;
  std::set<Watcher*> watchers_;
  // Mappings made with { unmapAtExit: true } and not unmapped yet: unmapped when this thread's
  // environment is torn down (a worker that ends without closing its objects). No JavaScript runs
  // then, so no view can reach them.
  std::map<uintptr_t, size_t> unmapAtExit_;

  void UnmapAtExit() {
    for (const auto& m : unmapAtExit_) munmap(reinterpret_cast<void*>(m.first), m.second);
    unmapAtExit_.clear();
  }

  // Throws `new KvmError(errno, syscall, { request, path })`, or a plain Error before init().
  void ThrowErrno(Napi::Env env, int err, const char* syscall, const char* request = nullptr,
                  const char* path = nullptr) {
    if (kvmError_.IsEmpty()) {
      std::string msg = std::string(syscall) + ": " + strerror(err);
      napi_throw_error(env, nullptr, msg.c_str());  // may fail while the env terminates: ignored
      return;
    }
    // Raw napi calls only: node-addon-api's helpers abort the process when a call fails, which
    // happens while a worker terminates.
    napi_value opts, errnoValue, syscallValue, v;
    if (napi_create_object(env, &opts) != napi_ok) return;
    if (request != nullptr && napi_create_string_utf8(env, request, NAPI_AUTO_LENGTH, &v) == napi_ok) {
      napi_set_named_property(env, opts, "request", v);
    }
    if (path != nullptr && napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &v) == napi_ok) {
      napi_set_named_property(env, opts, "path", v);
    }
    if (napi_create_int32(env, err, &errnoValue) != napi_ok) return;
    if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscallValue) != napi_ok) return;
    napi_value args[3] = {errnoValue, syscallValue, opts};
    napi_value e;
    // While a worker terminates (process exit), constructing or throwing can fail; the thread is
    // going away, so the failure is ignored instead of aborting the process.
    if (napi_new_instance(env, kvmError_.Value(), 3, args, &e) != napi_ok) return;
    napi_throw(env, e);
  }

  static void ThrowType(Napi::Env env, const char* msg) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  }

  static bool GetInt(const Napi::CallbackInfo& info, size_t i, int64_t* out) {
    if (info[i].IsNumber()) {
      *out = info[i].As<Napi::Number>().Int64Value();
      return true;
    }
    if (info[i].IsBigInt()) {
      bool lossless = true;
      *out = info[i].As<Napi::BigInt>().Int64Value(&lossless);
      return true;
    }
    ThrowType(info.Env(), "expected an integer argument");
    return false;
  }

  static bool GetU64(const Napi::CallbackInfo& info, size_t i, uint64_t* out) {
    if (info[i].IsBigInt()) {
      bool lossless = true;
      *out = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
      return true;
    }
    if (info[i].IsNumber()) {
      *out = static_cast<uint64_t>(info[i].As<Napi::Number>().Int64Value());
      return true;
    }
    ThrowType(info.Env(), "expected a bigint argument");
    return false;
  }

  // Pointer and length of a TypedArray, DataView or Buffer argument.
  static bool GetBytes(const Napi::CallbackInfo& info, size_t i, void** data, size_t* len) {
    napi_env env = info.Env();
    napi_value v = info[i];
    bool is = false;
    napi_is_typedarray(env, v, &is);
    if (is) {
      napi_typedarray_type type;
      size_t length;
      napi_value ab;
      size_t offset;
      napi_get_typedarray_info(env, v, &type, &length, data, &ab, &offset);
      size_t elem = 1;
      switch (type) {
        case napi_int16_array: case napi_uint16_array: elem = 2; break;
        case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
        case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
        default: elem = 1;
      }
      *len = length * elem;
      return true;
    }
    napi_is_dataview(env, v, &is);
    if (is) {
      napi_value ab;
      size_t offset;
      napi_get_dataview_info(env, v, len, data, &ab, &offset);
      return true;
    }
    ThrowType(info.Env(), "expected an ArrayBufferView argument");
    return false;
  }

  Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
    if (!info[0].IsFunction()) {
      ThrowType(info.Env(), "init(KvmError) expects the error class");
      return info.Env().Undefined();
    }
    kvmError_ = Napi::Persistent(info[0].As<Napi::Function>());
    return info.Env().Undefined();
  }

  Napi::Value Abi(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    const char* kinds[] = {"ioctls", "sizes", "offsets", "constants"};
    Napi::Object groups[4];
    for (int k = 0; k < 4; k++) {
      groups[k] = Napi::Object::New(env);
      out.Set(kinds[k], groups[k]);
    }
    size_t count = 0;
    const kvmrx_abi_entry* table = kvmrx_abi_table(&count);
    for (size_t i = 0; i < count; i++) {
      const kvmrx_abi_entry& e = table[i];
      napi_value v;
      if (e.value <= 0x1fffffffffffffULL) {
        v = Napi::Number::New(env, static_cast<double>(e.value));
      } else {
        v = Napi::BigInt::New(env, static_cast<uint64_t>(e.value));
      }
      groups[e.kind].Set(e.name, v);
    }
    return out;
  }

  Napi::Value PageSize(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(sysconf(_SC_PAGESIZE)));
  }

  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) {
      ThrowType(env, "open(path, flags): path must be a string");
      return env.Undefined();
    }
    std::string path = info[0].As<Napi::String>().Utf8Value();
    int64_t flags;
    if (!GetInt(info, 1, &flags)) return env.Undefined();
    int fd = open(path.c_str(), static_cast<int>(flags));
    if (fd < 0) {
      ThrowErrno(env, errno, "open", nullptr, path.c_str());
      return env.Undefined();
    }
    return Napi::Number::New(env, fd);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t fd;
    if (!GetInt(info, 0, &fd)) return env.Undefined();
    if (close(static_cast<int>(fd)) < 0 && errno != EINTR) ThrowErrno(env, errno, "close");
    return env.Undefined();
  }

  Napi::Value Dup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t fd;
    if (!GetInt(info, 0, &fd)) return env.Undefined();
    int r = fcntl(static_cast<int>(fd), F_DUPFD_CLOEXEC, 0);
    if (r < 0) {
      ThrowErrno(env, errno, "dup");
      return env.Undefined();
    }
    return Napi::Number::New(env, r);
  }

  Napi::Value GetFdFlags(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t fd;
    if (!GetInt(info, 0, &fd)) return env.Undefined();
    int r = fcntl(static_cast<int>(fd), F_GETFD);
    if (r < 0) {
      ThrowErrno(env, errno, "fcntl");
      return env.Undefined();
    }
    return Napi::Number::New(env, r);
  }

  Napi::Value Ioctl(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t fd, request;
    if (!GetInt(info, 0, &fd) || !GetInt(info, 1, &request)) return env.Undefined();
    unsigned long req = static_cast<unsigned long>(static_cast<uint32_t>(request));
    int r;
    if (info.Length() < 3 || info[2].IsUndefined()) {
      r = ioctl(static_cast<int>(fd), req, 0);
    } else if (info[2].IsNumber() || info[2].IsBigInt()) {
      uint64_t arg;
      if (!GetU64(info, 2, &arg)) return env.Undefined();
      r = ioctl(static_cast<int>(fd), req, static_cast<unsigned long>(arg));
    } else {
      void* data;
      size_t len;
      if (!GetBytes(info, 2, &data, &len)) return env.Undefined();
      r = ioctl(static_cast<int>(fd), req, data);
    }
    if (r < 0) {
      int err = errno;
      const char* name = kvmrx_ioctl_name(req);
      char hex[24];
      if (name == nullptr) {
        snprintf(hex, sizeof hex, "0x%lx", req);
        name = hex;
      }
      ThrowErrno(env, err, "ioctl", name);
      return env.Undefined();
    }
    return Napi::Number::New(env, r);
  }

  Napi::Value Mmap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t length, fd, offset;
    if (!GetInt(info, 0, &length)) return env.Undefined();
    if (!info[1].IsObject()) {
      ThrowType(env, "mmap: flags must be an object");
      return env.Undefined();
    }
    if (!GetInt(info, 2, &fd) || !GetInt(info, 3, &offset)) return env.Undefined();
    Napi::Object f = info[1].As<Napi::Object>();
    int flags = f.Get("shared").ToBoolean() ? MAP_SHARED : MAP_PRIVATE;
    if (f.Get("anonymous").ToBoolean()) flags |= MAP_ANONYMOUS;
    if (f.Get("noreserve").ToBoolean()) flags |= MAP_NORESERVE;
    if (f.Get("hugetlb").ToBoolean()) flags |= MAP_HUGETLB;
    if (f.Get("populate").ToBoolean()) flags |= MAP_POPULATE;
    void* at = nullptr;
    Napi::Value fixed = f.Get("fixed");
    if (!fixed.IsUndefined()) {
      bool lossless = false;
      uint64_t a = fixed.IsBigInt() ? fixed.As<Napi::BigInt>().Uint64Value(&lossless) : 0;
      if (!lossless || a == 0) {
        ThrowType(env, "mmap: flags.fixed must be a non-zero u64 bigint");
        return env.Undefined();
      }
      at = reinterpret_cast<void*>(static_cast<uintptr_t>(a));
      flags |= MAP_FIXED;
    }
    void* p = mmap(at, static_cast<size_t>(length), PROT_READ | PROT_WRITE, flags,
                   static_cast<int>(fd), static_cast<off_t>(offset));
    if (p == MAP_FAILED) {
      ThrowErrno(env, errno, "mmap");
      return env.Undefined();
    }
    if (f.Get("unmapAtExit").ToBoolean()) unmapAtExit_[reinterpret_cast<uintptr_t>(p)] = static_cast<size_t>(length);
    return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
  }

  Napi::Value Munmap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t addr;
    int64_t length;
    if (!GetU64(info, 0, &addr) || !GetInt(info, 1, &length)) return env.Undefined();
    if (munmap(reinterpret_cast<void*>(static_cast<uintptr_t>(addr)), static_cast<size_t>(length)) < 0) {
      ThrowErrno(env, errno, "munmap");
      return env.Undefined();
    }
    unmapAtExit_.erase(static_cast<uintptr_t>(addr));
    return env.Undefined();
  }

  Napi::Value Madvise(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t addr;
    int64_t length, advice;
    if (!GetU64(info, 0, &addr) || !GetInt(info, 1, &length) || !GetInt(info, 2, &advice)) {
      return env.Undefined();
    }
    if (madvise(reinterpret_cast<void*>(static_cast<uintptr_t>(addr)), static_cast<size_t>(length),
                static_cast<int>(advice)) < 0) {
      ThrowErrno(env, errno, "madvise");
    }
    return env.Undefined();
  }

  Napi::Value View(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t addr;
    int64_t length;
    if (!GetU64(info, 0, &addr) || !GetInt(info, 1, &length)) return env.Undefined();
    napi_value ab;
    // The mapping belongs to its JavaScript owner, which detaches every view before munmap;
    // the finalizer therefore has nothing to free.
    napi_status s = napi_create_external_arraybuffer(
        env, reinterpret_cast<void*>(static_cast<uintptr_t>(addr)), static_cast<size_t>(length),
        [](napi_env, void*, void*) {}, nullptr, &ab);
    if (s != napi_ok) {
      napi_throw_error(env, nullptr, "napi_create_external_arraybuffer failed");
      return env.Undefined();
    }
    return Napi::Value(env, ab);
  }

  Napi::Value Detach(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsArrayBuffer()) {
      ThrowType(env, "detach expects an ArrayBuffer");
      return env.Undefined();
    }
    napi_status s = napi_detach_arraybuffer(env, info[0]);
    if (s != napi_ok) {
      napi_throw_error(env, nullptr, "napi_detach_arraybuffer failed");
    }
    return env.Undefined();
  }

  Napi::Value AddressOf(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    void* data;
    size_t len;
    if (!GetBytes(info, 0, &data, &len)) return env.Undefined();
    return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(data)));
  }

  Napi::Value EventFd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t initval, flags;
    if (!GetInt(info, 0, &initval) || !GetInt(info, 1, &flags)) return env.Undefined();
    int fd = eventfd(static_cast<unsigned>(initval), static_cast<int>(flags) | EFD_CLOEXEC);
    if (fd < 0) {
      ThrowErrno(env, errno, "eventfd");
      return env.Undefined();
    }
    return Napi::Number::New(env, fd);
  }

  Napi::Value Read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t fd;
    void* data;
    size_t len;
    if (!GetInt(info, 0, &fd) || !GetBytes(info, 1, &data, &len)) return env.Undefined();
    ssize_t r;
    do {
      r = read(static_cast<int>(fd), data, len);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      ThrowErrno(env, errno, "read");
      return env.Undefined();
    }
    return Napi::Number::New(env, static_cast<double>(r));
  }

  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t fd;
    void* data;
    size_t len;
    if (!GetInt(info, 0, &fd) || !GetBytes(info, 1, &data, &len)) return env.Undefined();
    ssize_t r;
    do {
      r = write(static_cast<int>(fd), data, len);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      ThrowErrno(env, errno, "write");
      return env.Undefined();
    }
    return Napi::Number::New(env, static_cast<double>(r));
  }

  static void OnPollClosed(uv_handle_t* h) {
    Watcher* w = static_cast<Watcher*>(h->data);
    delete w;
  }

  static void StopWatcher(Watcher* w) {
    if (w->closing) return;
    w->closing = true;
    w->addon->Forget(w);
    uv_poll_stop(&w->handle);
    uv_close(reinterpret_cast<uv_handle_t*>(&w->handle), OnPollClosed);
  }

  void CloseAllWatchers() {
    std::set<Watcher*> copy = watchers_;
    for (Watcher* w : copy) {
      w->callback.Reset();
      StopWatcher(w);
    }
  }

  static void OnPoll(uv_poll_t* h, int status, int events) {
    Watcher* w = static_cast<Watcher*>(h->data);
    if (w->closing || w->callback.IsEmpty()) return;
    Napi::Env env = w->callback.Env();
    Napi::HandleScope scope(env);
    w->callback.MakeCallback(env.Global(), {Napi::Number::New(env, status)});
  }

  Napi::Value WatchReadable(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t fd;
    if (!GetInt(info, 0, &fd)) return env.Undefined();
    if (!info[1].IsFunction()) {
      ThrowType(env, "watchReadable(fd, callback): callback must be a function");
      return env.Undefined();
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      napi_throw_error(env, nullptr, "no event loop");
      return env.Undefined();
    }
    Watcher* w = new Watcher();
    w->addon = this;
    int r = uv_poll_init(loop, &w->handle, static_cast<int>(fd));
    if (r < 0) {
      delete w;
      ThrowErrno(env, -r, "poll");
      return env.Undefined();
    }
    w->handle.data = w;
    w->callback = Napi::Persistent(info[1].As<Napi::Function>());
    r = uv_poll_start(&w->handle, UV_READABLE, OnPoll);
    if (r < 0) {
      w->callback.Reset();
      w->closing = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&w->handle), OnPollClosed);
      ThrowErrno(env, -r, "poll");
      return env.Undefined();
    }
    watchers_.insert(w);
    // The returned stop function owns a raw pointer that stays valid until the handle closes;
    // `closing` makes a second call (or a call after cleanup) a no-op.
    Napi::Function stop = Napi::Function::New(
        env,
        [](const Napi::CallbackInfo& ci) -> Napi::Value {
          Watcher* self = static_cast<Watcher*>(ci.Data());
          Addon* addon = self->addon;
          if (addon->watchers_.count(self) == 0) return ci.Env().Undefined();
          self->callback.Reset();
          StopWatcher(self);
          return ci.Env().Undefined();
        },
        "stop", w);
    return stop;
  }

  Napi::Value KickSignal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int sig = KickSignalNumber();
    struct sigaction current;
    if (sigaction(sig, nullptr, &current) < 0) {
      ThrowErrno(env, errno, "sigaction");
      return env.Undefined();
    }
    if (current.sa_handler != KickHandler) {
      struct sigaction sa;
      memset(&sa, 0, sizeof sa);
      sa.sa_handler = KickHandler;
      sigemptyset(&sa.sa_mask);
      sa.sa_flags = 0;  // no SA_RESTART: an interrupted KVM_RUN must return EINTR
      if (sigaction(sig, &sa, nullptr) < 0) {
        ThrowErrno(env, errno, "sigaction");
        return env.Undefined();
      }
    }
    return Napi::Number::New(env, sig);
  }

  Napi::Value ThreadSelf(const Napi::CallbackInfo& info) {
    return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(pthread_self()));
  }

  // The slots of runFast's `layout` argument, in order. runFastLayout() returns their names so the
  // JavaScript side (src/runtime/protocol.ts) can assert that it builds the array in this order.
  enum { L_RECORDS, L_RECORD_BYTES, L_W_WRITE, L_W_READ, L_W_EXITS, L_KIND, L_WHERE, L_SIZE, L_LEN, L_KINDIDX,
         L_PORT, L_COUNT, L_DATA, L_DATA_MAX, L_REC_POSTED_IO, L_WHERE_POSTED, L_IOOUT_INDEX, L_COUNT_ };

  Napi::Value RunFastLayout(const Napi::CallbackInfo& info) {
    static const char* const kNames[L_COUNT_] = {
        "records",   "recordBytes", "ringWrite",  "ringRead",  "exitCount",      "kind",
        "handledBy", "size",        "dataLength", "exitKind",  "port",           "count",
        "data",      "dataMax",     "postedIo",   "handledByPosted", "ioOutKindIndex"};
    Napi::Array names = Napi::Array::New(info.Env(), L_COUNT_);
    for (uint32_t i = 0; i < L_COUNT_; i++) names.Set(i, Napi::String::New(info.Env(), kNames[i]));
    return names;
  }

  // runFast(fd, runAddress, portBitmap, ringBytes, ctl, layout, maxBatch) -> n * 2 + pending
  //
  // The native fast path of a vCPU's run loop: calls KVM_RUN until an exit needs JavaScript.
  // An OUT to a port whose bit is set in `portBitmap` (8192 bytes, one bit per port) is appended
  // to the shared ring as a posted-write record and the vCPU re-enters the guest at once. Returns
  // after a slow exit (left in kvm_run; `pending` = 1) or after `maxBatch` fast exits (pending = 0),
  // so the caller can wake the reader once per batch. The ring layout comes from the caller
  // (`layout`, an Int32Array), so this code holds no copy of it. KVM_RUN errors throw KvmError.
  Napi::Value RunFast(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t fd, maxBatch;
    uint64_t runAddr;
    void *bitmapData, *ringData, *ctlData, *layoutData;
    size_t bitmapLen, ringLen, ctlLen, layoutLen;
    if (!GetInt(info, 0, &fd) || !GetU64(info, 1, &runAddr) || !GetBytes(info, 2, &bitmapData, &bitmapLen) ||
        !GetBytes(info, 3, &ringData, &ringLen) || !GetBytes(info, 4, &ctlData, &ctlLen) ||
        !GetBytes(info, 5, &layoutData, &layoutLen) || !GetInt(info, 6, &maxBatch)) {
      return env.Undefined();
    }
    if (bitmapLen < 8192 || layoutLen < L_COUNT_ * sizeof(int32_t)) {
      ThrowType(env, "runFast: bad bitmap or layout");
      return env.Undefined();
    }
    const int32_t* L = static_cast<const int32_t*>(layoutData);
    const uint8_t* bitmap = static_cast<const uint8_t*>(bitmapData);
    uint8_t* ring = static_cast<uint8_t*>(ringData);
    int32_t* ctl = static_cast<int32_t*>(ctlData);
    const size_t records = static_cast<size_t>(L[L_RECORDS]);
    const size_t recBytes = static_cast<size_t>(L[L_RECORD_BYTES]);
    if (records * recBytes > ringLen || static_cast<size_t>(L[L_W_EXITS]) * 4 >= ctlLen) {
      ThrowType(env, "runFast: ring or control block too small for the layout");
      return env.Undefined();
    }
    struct kvm_run* run = reinterpret_cast<struct kvm_run*>(static_cast<uintptr_t>(runAddr));
    uint8_t* runBytes = reinterpret_cast<uint8_t*>(run);
    int64_t n = 0;
    for (;;) {
      if (ioctl(static_cast<int>(fd), KVM_RUN, 0) < 0) {
        int err = errno;
        if (n > 0 && err == EINTR) return Napi::Number::New(env, static_cast<double>(n * 2));
        ThrowErrno(env, err, "ioctl", "KVM_RUN");
        return env.Undefined();
      }
      bool fast = false;
      if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT &&
          (bitmap[run->io.port >> 3] & (1u << (run->io.port & 7))) != 0) {
        size_t len = static_cast<size_t>(run->io.size) * run->io.count;
        int32_t w = __atomic_load_n(&ctl[L[L_W_WRITE]], __ATOMIC_SEQ_CST);
        int32_t r = __atomic_load_n(&ctl[L[L_W_READ]], __ATOMIC_SEQ_CST);
        if (len <= static_cast<size_t>(L[L_DATA_MAX]) && static_cast<size_t>(w - r) < records) {
          uint8_t* rec = ring + (static_cast<size_t>(w) % records) * recBytes;
          memset(rec, 0, recBytes);
          rec[L[L_KIND]] = static_cast<uint8_t>(L[L_REC_POSTED_IO]);
          rec[L[L_WHERE]] = static_cast<uint8_t>(L[L_WHERE_POSTED]);
          rec[L[L_SIZE]] = run->io.size;
          rec[L[L_LEN]] = static_cast<uint8_t>(len);
          uint32_t kindIndex = static_cast<uint32_t>(L[L_IOOUT_INDEX]);
          memcpy(rec + L[L_KINDIDX], &kindIndex, 4);
          memcpy(rec + L[L_PORT], &run->io.port, 2);
          memcpy(rec + L[L_COUNT], &run->io.count, 4);
          memcpy(rec + L[L_DATA], runBytes + run->io.data_offset, len);
          __atomic_store_n(&ctl[L[L_W_WRITE]], w + 1, __ATOMIC_SEQ_CST);
          __atomic_add_fetch(&ctl[L[L_W_EXITS]], 1, __ATOMIC_SEQ_CST);
          fast = true;
        }
      }
      if (!fast) return Napi::Number::New(env, static_cast<double>(n * 2 + 1));
      if (++n >= maxBatch) return Napi::Number::New(env, static_cast<double>(n * 2));
    }
  }

  // The struct kvm_run layout as this C++ file sees it (checked against the C table by a spec).
  Napi::Value CxxAbi(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("KVM_RUN", static_cast<double>(KVM_RUN));
    o.Set("kvm_run", static_cast<double>(sizeof(struct kvm_run)));
    o.Set("kvm_run.exit_reason", static_cast<double>(offsetof(struct kvm_run, exit_reason)));
    o.Set("kvm_run.immediate_exit", static_cast<double>(offsetof(struct kvm_run, immediate_exit)));
    o.Set("kvm_run.io.direction", static_cast<double>(offsetof(struct kvm_run, io.direction)));
    o.Set("kvm_run.io.size", static_cast<double>(offsetof(struct kvm_run, io.size)));
    o.Set("kvm_run.io.port", static_cast<double>(offsetof(struct kvm_run, io.port)));
    o.Set("kvm_run.io.count", static_cast<double>(offsetof(struct kvm_run, io.count)));
    o.Set("kvm_run.io.data_offset", static_cast<double>(offsetof(struct kvm_run, io.data_offset)));
    return o;
  }

  // setAffinity(cpu): pins the calling thread to one CPU (for benchmarks); -1 allows every CPU.
  Napi::Value SetAffinity(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t cpu;
    if (!GetInt(info, 0, &cpu)) return env.Undefined();
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpu < 0) {
      long n = sysconf(_SC_NPROCESSORS_ONLN);
      for (long i = 0; i < n && i < CPU_SETSIZE; i++) CPU_SET(i, &set);
    } else {
      CPU_SET(static_cast<int>(cpu), &set);
    }
    if (sched_setaffinity(0, sizeof set, &set) < 0) ThrowErrno(env, errno, "sched_setaffinity");
    return env.Undefined();
  }

  Napi::Value Kick(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t thread, run;
    if (!GetU64(info, 0, &thread) || !GetU64(info, 1, &run)) return env.Undefined();
    // run == 0: only the signal (for a thread blocked in another syscall, or no kvm_run mapped).
    if (run != 0) {
      uint8_t* ie = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(run)) + kvmrx_immediate_exit_offset();
      __atomic_store_n(ie, 1, __ATOMIC_SEQ_CST);
    }
    int r = pthread_kill(static_cast<pthread_t>(thread), KickSignalNumber());
    if (r != 0) ThrowErrno(env, r, "pthread_kill");
    return env.Undefined();
  }
};

}  // namespace

NODE_API_ADDON(Addon)
