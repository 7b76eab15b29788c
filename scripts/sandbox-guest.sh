#!/usr/bin/env bash
# Builds a sandbox guest (docs/sandbox.md) with the system gcc: a static x86_64 ELF linked with the
# guest SDK (guest/sdk/). The result is cached outside the clone, keyed by a hash of every input
# (the SDK, the guest's sources, Duktape's and musl's files for the Duktape guest, the recipe
# version below, the compiler version), so later runs and CI reuse it. Progress goes to stderr;
# the LAST line of stdout is the path of the ELF.
#
#   scripts/sandbox-guest.sh hello     # guest/examples/hello.c, freestanding (no libc)
#   scripts/sandbox-guest.sh duktape   # guest/duktape/duktape-guest.c + Debian's duktape.c + musl's libc.a
#   npm run -s guest:sandbox -- duktape
#
# When gcc, binutils, duktape-dev or musl-dev is missing it installs them with apt-get (as root),
# or says what to install.
#
# Environment:
#   KVMRX_SANDBOX_GUEST_CACHE  cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/kvm-rx/sandbox-guest)
#   KVMRX_SANDBOX_GUEST_FORCE  1: rebuild even when the cache has this key
#
# `--cached`: print the cached ELF's path if there is one for these inputs, else exit 3 without
# building or installing anything.
set -euo pipefail

script=$(readlink -f "${BASH_SOURCE[0]}")
root=$(cd "$(dirname "$script")/.." && pwd)
sdk=$root/guest/sdk
cache_root=${KVMRX_SANDBOX_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvm-rx/sandbox-guest}
duk_dir=/usr/share/duktape
musl_lib=/usr/lib/x86_64-linux-musl
musl_specs=$musl_lib/musl-gcc.specs

log() { echo "sandbox-guest: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage="usage: sandbox-guest.sh [--cached] hello|duktape"
cached_only=0
guest=
for arg in "$@"; do
  case $arg in
    --cached) cached_only=1 ;;
    hello | duktape) guest=$arg ;;
    *) die "unknown argument: $arg ($usage)" ;;
  esac
done
[ -n "$guest" ] || die "$usage"

# --- Tools: install what is missing when we may (root, as in CI) ---
missing_pkgs() {
  local pkgs=()
  command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
  command -v ld >/dev/null 2>&1 || pkgs+=(binutils)
  command -v sha256sum >/dev/null 2>&1 || pkgs+=(coreutils)
  if [ "$guest" = duktape ]; then
    [ -f "$duk_dir/duktape.c" ] || pkgs+=(duktape-dev)
    [ -f "$musl_lib/libc.a" ] && [ -f "$musl_specs" ] || pkgs+=(musl-dev)
  fi
  echo "${pkgs[*]}"
}
missing=$(missing_pkgs)
if [ -n "$missing" ]; then
  if [ "$cached_only" = 1 ]; then
    log "not built: missing $missing"
    exit 3
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing: $missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y -qq $missing >&2 || { apt-get update -qq >&2 && apt-get install -y -qq $missing >&2; }
    missing=$(missing_pkgs)
    [ -z "$missing" ] || die "still missing after apt-get install: $missing"
  else
    die "missing: $missing (as root: apt-get install $missing)"
  fi
fi

# --- Inputs and the cache key ---
sdk_files=("$sdk/kvmrx.h" "$sdk/kvmrx.c" "$sdk/kvmrx-malloc.c" "$sdk/kvmrx-libc.c" "$sdk/kvmrx-start.S" "$sdk/kvmrx.ld")
case $guest in
  hello) inputs=("${sdk_files[@]}" "$root/guest/examples/hello.c") ;;
  duktape)
    inputs=("${sdk_files[@]}" "$root/guest/duktape/duktape-guest.c" "$duk_dir/duktape.c" "$duk_dir/duktape.h"
      "$duk_dir/duk_config.h" "$musl_lib/libc.a" "$musl_specs")
    ;;
esac
for f in "${inputs[@]}"; do [ -f "$f" ] || die "input $f not found"; done
# The build recipe's version: bump it when a change to this script changes what gets built.
recipe=1
cc_version="$(gcc --version | head -1); $(ld --version | head -1)"
key=$({
  printf 'guest %s\nrecipe %s\ncc %s\n' "$guest" "$recipe" "$cc_version"
  for f in "${inputs[@]}"; do printf '%s %s\n' "$(basename "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"; done
} | sha256sum | cut -c1-16)
entry=$cache_root/$guest-$key
elf=$entry/$guest.elf

mkdir -p "$cache_root"
exec 9>"$cache_root/.$guest-$key.lock"
if ! flock -n 9; then
  log "another build of $guest-$key is running; waiting for it"
  flock 9
fi
if [ -f "$elf" ] && [ "${KVMRX_SANDBOX_GUEST_FORCE:-}" != 1 ]; then
  log "cached: $elf"
  echo "$elf"
  exit 0
fi
if [ "$cached_only" = 1 ]; then
  log "not built yet for these inputs ($entry): run scripts/sandbox-guest.sh $guest"
  exit 3
fi

# --- Build in a temporary directory; publish with one rename ---
work=$(mktemp -d "${TMPDIR:-/tmp}/kvmrx-sandbox-guest.XXXXXX")
stage=$(mktemp -d "$cache_root/.stage-$guest-$key.XXXXXX")
cleanup() { rm -rf "$work" "$stage"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# Code for CPL 3 without an OS: no PIC, no stack protector (no canary set-up), no CET, no unwind
# tables; the SDK's loops must not become calls to memset/memcpy.
common=(-O2 -fno-pic -fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables -fcf-protection=none
  -fno-tree-loop-distribute-patterns -Wall -Wextra "-I$sdk")
freestanding=(-std=gnu11 -ffreestanding -fno-builtin "${common[@]}")
start=$(date +%s)
log "building $guest-$key in $work"
gcc -c "$sdk/kvmrx-start.S" -o "$work/start.o"
gcc "${freestanding[@]}" -c "$sdk/kvmrx.c" -o "$work/kvmrx.o"
gcc "${freestanding[@]}" -c "$sdk/kvmrx-malloc.c" -o "$work/malloc.o"
libgcc=$(gcc -print-libgcc-file-name)
case $guest in
  hello)
    gcc "${freestanding[@]}" -c "$sdk/kvmrx-libc.c" -o "$work/libc.o"
    gcc "${freestanding[@]}" -c "$root/guest/examples/hello.c" -o "$work/guest.o"
    objs=("$work/start.o" "$work/guest.o" "$work/kvmrx.o" "$work/malloc.o" "$work/libc.o" "$libgcc")
    ;;
  duktape)
    musl=(-specs="$musl_specs" -std=gnu99 "${common[@]}" "-I$duk_dir")
    log "compiling duktape.c (unchanged, from duktape-dev; ~15-60 s)"
    gcc "${musl[@]}" -w -c "$duk_dir/duktape.c" -o "$work/duktape.o"
    gcc "${musl[@]}" -c "$root/guest/duktape/duktape-guest.c" -o "$work/guest.o"
    objs=("$work/start.o" "$work/guest.o" "$work/kvmrx.o" "$work/malloc.o" "$work/duktape.o" "$musl_lib/libc.a" "$libgcc")
    ;;
esac
ld -static -nostdlib -no-pie -T "$sdk/kvmrx.ld" -o "$stage/$guest.elf" "${objs[@]}" -Map "$stage/$guest.map"
# A guest cannot make system calls (there is no OS; on PVM hosts SYSCALL faults): report any that
# the C library linked in, so that they are known to be unreachable.
syscalls=$(objdump -d "$stage/$guest.elf" | grep -cE '\ssyscall\s*$' || true)
end=$(date +%s)
cat >"$stage/build-info" <<EOF
key=$key
guest=$guest
recipe=$recipe
cc=$cc_version
syscall_instructions=$syscalls
build_seconds=$((end - start))
built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
elf_bytes=$(stat -c %s "$stage/$guest.elf")
EOF
if [ -e "$entry" ]; then
  old=$(mktemp -d "$cache_root/.old-$guest-$key.XXXXXX")
  mv -T "$entry" "$old/entry"
  mv -T "$stage" "$entry"
  rm -rf "$old"
else
  mv -T "$stage" "$entry"
fi
log "built $guest in $((end - start)) s: $(stat -c %s "$elf") bytes ($syscalls syscall instructions linked in, never reached)"
echo "$elf"
