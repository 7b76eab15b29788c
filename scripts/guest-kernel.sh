#!/usr/bin/env bash
# Builds kvm-rx's guest kernel: Debian's linux-source-6.1, `make tinyconfig`, the fragment
# guest/kernel/kvm-rx.config merged on top (merge_config.sh, then olddefconfig), and checks that
# every option of the fragment survived. The result is cached outside the clone, keyed by a hash
# of (fragment, kernel source tarball, the recipe version below, compiler version), so later runs and CI reuse
# it. Progress goes to stderr; the LAST line of stdout is the path of the bzImage (the vmlinux
# with its symbol table, the .config and the build log are next to it). See docs/guest-kernel.md.
#
#   npm run guest:kernel
#
# Environment:
#   KVMRX_GUEST_KERNEL_CACHE  cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/kvm-rx/guest-kernel)
#   KVMRX_LINUX_SOURCE        kernel source tarball (default /usr/src/linux-source-6.1.tar.xz)
#   KVMRX_GUEST_KERNEL_FORCE  1: rebuild even when the cache has this key (the entry is replaced)
#   TMPDIR                    where the source is unpacked and built (~1.5 GB while building)
#
# `--cached`: print the cached image's path if there is one for these inputs, else exit 3 without
# building or installing anything (how the specs find the kernel).
set -euo pipefail

script=$(readlink -f "${BASH_SOURCE[0]}")
root=$(cd "$(dirname "$script")/.." && pwd)
fragment=$root/guest/kernel/kvm-rx.config
tarball=${KVMRX_LINUX_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
cache_root=${KVMRX_GUEST_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvm-rx/guest-kernel}

log() { echo "guest-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ -f "$fragment" ] || die "config fragment $fragment not found"
cached_only=0
if [ "${1:-}" = --cached ]; then cached_only=1; elif [ $# -gt 0 ]; then die "unknown argument: $1 (usage: guest-kernel.sh [--cached])"; fi

# --- Build tools and the kernel source: install what is missing when we may (root, as in CI) ---
have_libelf() { echo '#include <gelf.h>' | gcc -E -x c - >/dev/null 2>&1; }
missing_pkgs() {
  local pkgs=()
  command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
  command -v make >/dev/null 2>&1 || pkgs+=(make)
  command -v bison >/dev/null 2>&1 || pkgs+=(bison)
  command -v flex >/dev/null 2>&1 || pkgs+=(flex)
  command -v bc >/dev/null 2>&1 || pkgs+=(bc)
  command -v xz >/dev/null 2>&1 || pkgs+=(xz-utils)
  command -v sha256sum >/dev/null 2>&1 || pkgs+=(coreutils)
  if command -v gcc >/dev/null 2>&1 && ! have_libelf; then pkgs+=(libelf-dev); fi
  command -v gcc >/dev/null 2>&1 || pkgs+=(libelf-dev)
  if [ -z "${KVMRX_LINUX_SOURCE:-}" ] && [ ! -f "$tarball" ]; then pkgs+=(linux-source-6.1); fi
  echo "${pkgs[*]}"
}
missing=$(missing_pkgs)
if [ -n "$missing" ] && [ "$cached_only" = 1 ]; then
  [ -f "$tarball" ] || { log "not built: $tarball is missing"; exit 3; }
  missing=
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y -qq $missing >&2
    missing=$(missing_pkgs)
    [ -z "$missing" ] || die "still missing after apt-get install: $missing"
  else
    die "missing: $missing (as root: apt-get install $missing)"
  fi
fi
[ -f "$tarball" ] || die "kernel source $tarball not found"

# --- Cache key ---
sha() { sha256sum "$1" | cut -d' ' -f1; }
log "hashing the inputs (source tarball $tarball)"
frag_sha=$(sha "$fragment")
src_sha=$(sha "$tarball")
# The build recipe's version: bump it when a change to this script changes what gets built (the
# configuration or make steps), so that comments and messages do not invalidate the cache.
recipe=1
cc_version=$(gcc --version | head -1)
key=$(printf 'fragment %s\nsource %s\nrecipe %s\ncc %s\n' "$frag_sha" "$src_sha" "$recipe" "$cc_version" |
  sha256sum | cut -c1-16)
entry=$cache_root/$key

complete() { [ -f "$1/bzImage" ] && [ -f "$1/vmlinux" ] && [ -f "$1/build-info" ]; }

mkdir -p "$cache_root"
# One build per key at a time: a second run waits for the first and then reuses its result.
exec 9>"$cache_root/.$key.lock"
if ! flock -n 9; then
  log "another build of $key is running; waiting for it"
  flock 9
fi

if [ "$cached_only" = 1 ] && ! complete "$entry"; then
  log "not built yet for these inputs ($entry): run npm run guest:kernel"
  exit 3
fi
if complete "$entry" && [ "${KVMRX_GUEST_KERNEL_FORCE:-}" != 1 ]; then
  log "cached: $entry ($(sed -n 's/^source_version=//p' "$entry/build-info"), built $(sed -n 's/^built_at=//p' "$entry/build-info"))"
  echo "$entry/bzImage"
  exit 0
fi

# --- Build in a temporary directory; publish with one rename ---
work=$(mktemp -d "${TMPDIR:-/tmp}/kvmrx-guest-kernel.XXXXXX")
stage=$(mktemp -d "$cache_root/.stage-$key.XXXXXX")
cleanup() { rm -rf "$work" "$stage"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

src_version=$(dpkg-query -W -f='${Package} ${Version}' linux-source-6.1 2>/dev/null || true)
[ -n "$src_version" ] && [ "$tarball" = /usr/src/linux-source-6.1.tar.xz ] || src_version="$(basename "$tarball") sha256 $src_sha"
jobs=$(nproc)
start=$(date +%s)

log "building $key in $work ($src_version, make -j$jobs)"
log "unpacking the source"
mkdir "$work/src"
tar -xf "$tarball" -C "$work/src" --strip-components=1
cd "$work/src"
kver=$(make -s kernelversion)

log "configuring Linux $kver: tinyconfig + $(basename "$fragment")"
{
  make tinyconfig
  scripts/kconfig/merge_config.sh -m .config "$fragment"
  make olddefconfig
} >"$work/config.log" 2>&1 || { tail -30 "$work/config.log" >&2; die "configuration failed"; }

# Every option the fragment sets must be in the final .config as written; every option it
# turns off must not be set.
lost=()
while IFS= read -r line; do
  case $line in
    CONFIG_*=*)
      grep -qxF -- "$line" .config ||
        lost+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo 'absent'))")
      ;;
    "# CONFIG_"*" is not set")
      sym=${line#\# }
      sym=${sym%% *}
      if grep -q "^$sym=" .config; then lost+=("$line (got: $(grep "^$sym=" .config))"); fi
      ;;
  esac
done <"$fragment"
if [ "${#lost[@]}" -gt 0 ]; then
  log "options of $(basename "$fragment") that olddefconfig did not keep:"
  printf '  %s\n' "${lost[@]}" >&2
  die "${#lost[@]} option(s) lost; fix the fragment (a dependency is missing or another option selects it)"
fi
log "all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set$)' "$fragment") options of the fragment survived olddefconfig"

log "compiling (make -j$jobs bzImage; full log in the cache entry's build.log)"
set +e
make -j"$jobs" bzImage 2>&1 | tee "$work/build.log" |
  awk '{ n++ } n % 250 == 0 { printf "guest-kernel:   ... %d build steps\n", n > "/dev/stderr"; fflush("/dev/stderr") }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
  grep -E 'error|Error' "$work/build.log" | tail -20 >&2 || true
  tail -20 "$work/build.log" >&2
  die "make failed (exit $rc)"
fi
end=$(date +%s)

cp arch/x86/boot/bzImage vmlinux System.map "$stage/"
cp .config "$stage/config"
cp "$work/config.log" "$work/build.log" "$stage/"
cat >"$stage/build-info" <<EOF
key=$key
kernel_version=$kver
source_version=$src_version
source_sha256=$src_sha
fragment_sha256=$frag_sha
recipe=$recipe
cc=$cc_version
jobs=$jobs
build_seconds=$((end - start))
built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
bzImage_bytes=$(stat -c %s "$stage/bzImage")
vmlinux_bytes=$(stat -c %s "$stage/vmlinux")
EOF

# rename(2) of a directory is atomic: readers see no entry or a complete one.
if [ -e "$entry" ]; then
  old=$(mktemp -d "$cache_root/.old-$key.XXXXXX")
  mv -T "$entry" "$old/entry"
  mv -T "$stage" "$entry"
  rm -rf "$old"
else
  mv -T "$stage" "$entry"
fi
log "built Linux $kver in $((end - start)) s: bzImage $(stat -c %s "$entry/bzImage") B, vmlinux $(stat -c %s "$entry/vmlinux") B"
echo "$entry/bzImage"
