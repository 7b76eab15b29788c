#!/usr/bin/env bash
# Downloads Debian's cloud kernel and busybox-static, extracts the uncompressed vmlinux from the
# bzImage's LZ4 payload (kvm-rx's own decoder: no lz4 tool needed), and builds an uncompressed
# initramfs. Output: .guest/ (git-ignored).
#   npm run guest:fetch            (set GUEST_DIR to put it elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=${GUEST_DIR:-$root/.guest}
mkdir -p "$dir"
cd "$dir"

newest_kernel() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' | awk '{print $1}' | sort -V | tail -1
}

download() {
  local kpkg=$1
  apt-get download "$kpkg" busybox-static
}

if [ -f vmlinux ] && [ -f initramfs.cpio ] && [ -z "${FORCE:-}" ]; then
  echo "guest already prepared in $dir (FORCE=1 to redo)"; exit 0
fi

# Stale package lists name an older kernel (on this machine: 6.1.0-50 instead of the 6.1.0-56 the
# shared notes measured), so refresh them first where we may.
if [ "$(id -u)" = 0 ]; then apt-get update -qq || echo "apt-get update failed; using the package lists as they are" >&2; fi
kpkg=$(newest_kernel || true)
if [ -z "$kpkg" ] || ! download "$kpkg"; then
  echo "download failed; running apt-get update and retrying" >&2
  apt-get update -qq
  kpkg=$(newest_kernel)
  [ -n "$kpkg" ] || { echo "no linux-image-6.1.0-*-cloud-amd64-unsigned package found" >&2; exit 1; }
  download "$kpkg"
fi
echo "kernel package: $kpkg"

rm -rf kpkg bbpkg && mkdir kpkg bbpkg
dpkg-deb -x "$(ls -t "${kpkg}"_*.deb | head -1)" kpkg
dpkg-deb -x "$(ls -t busybox-static_*.deb | head -1)" bbpkg
cp kpkg/boot/vmlinuz-* bzImage

tsnode() { (cd "$root" && npx --no-install ts-node --transpile-only "$@"); }
# The bzImage's payload is LZ4 (Debian's cloud kernel); kvm-rx's own decoder extracts the vmlinux
# (and checks it against the size trailer the kernel build appends).
tsnode scripts/guest-prepare.ts vmlinux "$dir/bzImage" "$dir/vmlinux"
head -c 4 vmlinux | od -An -tx1 | grep -q '7f 45 4c 46' || { echo "the extracted vmlinux is not an ELF file" >&2; exit 1; }
tsnode scripts/guest-prepare.ts initramfs "$dir/bbpkg/bin/busybox" "$dir/initramfs.cpio"
echo "$kpkg" > kernel-package
ls -l "$dir/vmlinux" "$dir/bzImage" "$dir/initramfs.cpio"
