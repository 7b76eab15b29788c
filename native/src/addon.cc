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

#include <set>
#include <string>

#include "abi.h"

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
    });
    env.AddCleanupHook([this]() { CloseAllWatchers(); });
  }

  void Forget(Watcher* w) { watchers_.erase(w); }

 private:
  Napi::FunctionReference kvmError_;
  std::set<Watcher*> watchers_;

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
    void* p = mmap(nullptr, static_cast<size_t>(length), PROT_READ | PROT_WRITE, flags,
                   static_cast<int>(fd), static_cast<off_t>(offset));
    if (p == MAP_FAILED) {
      ThrowErrno(env, errno, "mmap");
      return env.Undefined();
    }
    return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
  }

  Napi::Value Munmap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t addr;
    int64_t length;
    if (!GetU64(info, 0, &addr) || !GetInt(info, 1, &length)) return env.Undefined();
    if (munmap(reinterpret_cast<void*>(static_cast<uintptr_t>(addr)), static_cast<size_t>(length)) < 0) {
      ThrowErrno(env, errno, "munmap");
    }
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

  Napi::Value Kick(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t thread, run;
    if (!GetU64(info, 0, &thread) || !GetU64(info, 1, &run)) return env.Undefined();
    uint8_t* ie = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(run)) + kvmrx_immediate_exit_offset();
    __atomic_store_n(ie, 1, __ATOMIC_SEQ_CST);
    int r = pthread_kill(static_cast<pthread_t>(thread), KickSignalNumber());
    if (r != 0) ThrowErrno(env, r, "pthread_kill");
    return env.Undefined();
  }
};

}  // namespace

NODE_API_ADDON(Addon)
