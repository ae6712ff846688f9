#!/usr/bin/env bash
# The offline base builder: a Debian bookworm root filesystem with Python 3.11, pip, pytest, venv and
# git, as a tarball ready for `docker import` (minicoder/sandbox/images.py imports it and builds
# envs/base/Dockerfile on top; it also caches the tarball, keyed by this file's hash).
#
# Why debootstrap: with no image registry reachable there is no `FROM python:3.11-slim`, but the
# Debian mirror that apt uses is; bookworm's python3 is 3.11. `--variant=minbase` keeps it small.
#
# Usage: build_rootfs.sh OUT.tar [MIRROR]   (root, Linux; about a minute on 2 cores)
#   MIRROR defaults to http://deb.debian.org/debian; images.py passes the one in the apt sources.
set -euo pipefail

SUITE=bookworm
PACKAGES=python3,python3-pip,python3-pytest,python3-venv,python-is-python3,git,ca-certificates

out=${1:?usage: build_rootfs.sh OUT.tar [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
[ "$(uname -s)" = Linux ] || { echo "build_rootfs.sh: needs Linux (debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build_rootfs.sh: needs root (debootstrap, chroot)" >&2; exit 1; }

if ! command -v debootstrap >/dev/null 2>&1; then
  echo "[rootfs] installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends debootstrap debian-archive-keyring >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends debootstrap debian-archive-keyring >/dev/null; }
fi

mkdir -p "$(dirname "$out")"
root="$out.rootfs.$$"
cleanup() {
  # debootstrap can leave /proc (and friends) mounted in the target when it fails half-way.
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$root/$m" 2>/dev/null; then umount -l "$root/$m" || true; fi
  done
  rm -rf "$root" "$out.tmp.$$" "$root.log"
}
trap cleanup EXIT

echo "[rootfs] debootstrap $SUITE ($PACKAGES) from $mirror"
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >"$root.log" 2>&1; then
  tail -n 30 "$root.log" >&2
  [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
  rm -f "$root.log"
  echo "build_rootfs.sh: debootstrap failed (mirror $mirror)" >&2
  exit 1
fi
rm -f "$root.log"
echo "[rootfs] debootstrap done in ${SECONDS}s"

echo "[rootfs] trimming (apt caches and lists, docs, man pages, locales)"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
       "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
# Later `apt-get install`s in task images skip the same files.
mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/minicoder-excludes" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
CFG
# The engine provides these per container; the host's copies must not leak into the image.
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"
# Smoke test inside the rootfs before spending time on the tarball.
chroot "$root" python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
chroot "$root" python3 -m pytest --version >/dev/null
chroot "$root" git --version >/dev/null

echo "[rootfs] writing $out"
tar --numeric-owner --xattrs -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$out.tmp.$$" .
mv -f "$out.tmp.$$" "$out"
echo "[rootfs] done: $(du -h "$out" | cut -f1)"
