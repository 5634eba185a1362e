#!/usr/bin/env bash
# Make (once) the Debian 13 root the Docker Engine 26 tests run their dockerd in
# (tests/e2e_docker26.rs): debootstrap minbase trixie, then docker.io, containerd, runc, s3fs
# and fuse3 from Debian 13 inside it. Kept between runs where the machine keeps it; made again
# when missing, half made, or when this script changed (the stamp is its hash).
#
#   scripts/trixie-root.sh           prints the root's path when it is ready
#
# Environment:
#   BAI_S3_TRIXIE_ROOT   where (default: /var/cache/bai-s3-test/trixie)
#   DEBIAN_MIRROR        Debian mirror (default: http://deb.debian.org/debian)
#
# The root is used only while nothing runs in it (the tests mount /proc, /sys, /dev into it for
# the time of a run and unmount them after); a run killed in the middle leaves those mounts,
# which the next run's start takes down.
set -euo pipefail
self=$(realpath "$0")
root=${BAI_S3_TRIXIE_ROOT:-/var/cache/bai-s3-test/trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=(docker.io containerd runc s3fs fuse3 ca-certificates)
marker="$root/.bai-s3-root-complete"
tmp="$root.tmp"

say() { printf 'trixie-root.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/deps.sh docker)"

. "$(dirname "$self")/unmount-below.sh"

want=$(cat "$self" <(printf '%s\n' "$mirror") | sha256sum | cut -d' ' -f1)
if [ -d "$root" ] && [ "$(cat "$marker" 2>/dev/null)" = "$want" ]; then
  echo "$root"
  exit 0
fi

in_chroot() {
  chroot "$tmp" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C \
    DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
    ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
    "$@"
}

cleanup() { unmount_below "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$SECONDS
mkdir -p "$(dirname "$root")"
unmount_below "$tmp"
rm -rf --one-file-system "$tmp"
log="$(dirname "$root")/trixie-root.log"
say "debootstrap --variant=minbase trixie from $mirror (log: $log)"
debootstrap --variant=minbase trixie "$tmp" "$mirror" >"$log" 2>&1 || {
  tail -n 30 "$log" >&2
  die "debootstrap failed"
}
# No service may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 0755 "$tmp/usr/sbin/policy-rc.d"
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
  >"$tmp/etc/apt/apt.conf.d/01-bai-s3"
mount -t proc proc "$tmp/proc"
say "installing ${packages[*]} in the root"
{
  in_chroot apt-get update -q &&
    in_chroot apt-get install -y -q "${packages[@]}" &&
    in_chroot apt-get clean
} >>"$log" 2>&1 || {
  tail -n 30 "$log" >&2
  die "apt-get install in the root failed"
}
in_chroot dockerd --version >/dev/null || die "dockerd does not run in the new root"
in_chroot s3fs --version >/dev/null || die "s3fs does not run in the new root"
umount "$tmp/proc"
rm -rf "$tmp"/var/lib/apt/lists/*
# The dockerd of the tests keeps its data here; an empty one per new root.
mkdir -p "$tmp/var/lib/docker26" "$tmp/run"

unmount_below "$root"
rm -rf --one-file-system "$root"
mv "$tmp" "$root"
echo "$want" >"$marker"
rm -f "$log"
say "root ready in $((SECONDS - t0)) s: $(du -sh "$root" | cut -f1)"
echo "$root"
