#!/usr/bin/env bash
# Build the bai-s3 managed Docker plugin without pulling any image:
#
#   build/rootfs-base/   cached Debian bookworm (minbase) + s3fs, fuse3, ca-certificates, tini
#   build/plugin/        config.json + rootfs/ (the cache + target/release/bai-s3)
#
# then `docker plugin create <name> build/plugin`. Run as root from anywhere (the Makefile calls
# it as `plugin/build.sh` after `cargo build --release`).
#
# Environment:
#   BAI_S3_PLUGIN_NAME   plugin name (default: bai-s3); an existing plugin of that name is
#                        replaced (disabled with -f first when it is enabled)
#   BAI_S3_BINARY        binary to put in the plugin (default: target/release/bai-s3)
#   BAI_S3_PLUGIN_VERSION  version written into the plugin's description (default: the
#                        binary's own, e.g. 0.1.0), so that `docker plugin inspect` tells two
#                        builds apart after `docker plugin upgrade`; 1-64 of A-Z a-z 0-9 . _ + -
#   DEBIAN_MIRROR        Debian mirror (default: http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR  (default: http://deb.debian.org/debian-security)
#   BAI_S3_REBUILD_BASE=1  rebuild the cached base rootfs even when it is up to date
#
# The base rootfs is rebuilt only when it is missing or when this script (or the mirrors)
# changed since it was made (stamp: build/rootfs-base.stamp).
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."

name=${BAI_S3_PLUGIN_NAME:-bai-s3}
binary=${BAI_S3_BINARY:-target/release/bai-s3}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=bookworm
packages=(s3fs fuse3 ca-certificates tini)

base=build/rootfs-base
stamp=build/rootfs-base.stamp
tmp=build/rootfs-base.tmp
out=build/plugin

say() { printf 'plugin/build.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot and docker plugin create need it)"
for tool in debootstrap chroot docker mount umount; do
  command -v "$tool" >/dev/null || die "'$tool' not found (scripts/deps.sh docker installs what is needed)"
done
[ -f "$binary" ] || die "$binary does not exist: run 'cargo build --release' (or 'make plugin') first"
docker version >/dev/null 2>&1 || die "the Docker daemon does not answer (scripts/dockerd.sh starts one)"

. scripts/unmount-below.sh

remove_tree() {
  unmount_below "$1"
  rm -rf --one-file-system "$1"
}

cleanup() { unmount_below "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

in_chroot() {
  # A clean environment: the host's CA-bundle variables and locale point at files the chroot
  # does not have. Proxies pass through for machines that need one.
  chroot "$tmp" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C \
    DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
    ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
    "$@"
}

build_base() {
  local t0=$SECONDS
  remove_tree "$tmp"
  mkdir -p build

  say "debootstrap --variant=minbase $suite from $mirror (about a minute)"
  # Only the base system here: with --include=s3fs, debootstrap resolves `fuse | fuse3` to the
  # old fuse package and its configuration fails in debootstrap's second stage. apt does it
  # right below, in the finished system.
  debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"build/debootstrap.log" 2>&1 || {
    tail -n 30 build/debootstrap.log >&2
    die "debootstrap failed (full log: build/debootstrap.log)"
  }
  rm -f build/debootstrap.log
  say "debootstrap took $((SECONDS - t0)) s"

  cat >"$tmp/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
EOF
  # No service may start inside the chroot.
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
  chmod 0755 "$tmp/usr/sbin/policy-rc.d"
  # Keep documentation, manuals and translations out of the rootfs (licences stay).
  cat >"$tmp/etc/dpkg/dpkg.cfg.d/01-bai-s3-slim" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
EOF
  cat >"$tmp/etc/apt/apt.conf.d/01-bai-s3" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Dpkg::Use-Pty "false";
EOF

  # Maintainer scripts want /proc; /dev already holds the device nodes debootstrap made.
  mount -t proc proc "$tmp/proc"
  local t1=$SECONDS
  say "installing ${packages[*]} in the chroot"
  {
    in_chroot apt-get update -q &&
      in_chroot apt-get dist-upgrade -y -q &&
      in_chroot apt-get install -y -q "${packages[@]}" &&
      # s3fs reads /etc/mime.types (package media-types, kept); its dependency mime-support
      # also pulls mailcap and, through it, perl (~50 MB) that nothing here runs. This
      # appliance rootfs never runs apt again, so drop them despite the declared dependency.
      in_chroot dpkg --purge --force-depends mime-support mailcap perl perl-modules-5.36 \
        libperl5.36 libgdbm-compat4 libgdbm6 &&
      in_chroot apt-get clean
  } >build/apt.log 2>&1 || {
    tail -n 30 build/apt.log >&2
    die "installing packages in the chroot failed (full log: build/apt.log)"
  }
  rm -f build/apt.log
  # Prove the tools run in the new root before keeping it.
  in_chroot s3fs --version >/dev/null || die "s3fs does not run in the new rootfs"
  in_chroot tini --version >/dev/null || die "tini does not run in the new rootfs"
  umount "$tmp/proc"
  say "packages took $((SECONDS - t1)) s"

  # Slim: package lists, caches, logs, documentation, manuals, translations.
  rm -f "$tmp/usr/sbin/policy-rc.d"
  rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/* "$tmp"/var/cache/debconf/*-old \
    "$tmp"/var/lib/dpkg/*-old "$tmp"/var/log/* "$tmp"/tmp/* "$tmp"/root/.cache \
    "$tmp"/usr/share/man/* "$tmp"/usr/share/info/* "$tmp"/usr/share/locale/* \
    "$tmp"/usr/share/lintian
  find "$tmp/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$tmp/usr/share/doc" -mindepth 1 -type d -empty -delete
  # Docker binds the host's files over these (host network); do not ship this machine's.
  : >"$tmp/etc/resolv.conf"
  : >"$tmp/etc/hostname"
  : >"$tmp/etc/hosts"
  rm -f "$tmp/etc/machine-id"

  cleanup
  remove_tree "$base"
  mv "$tmp" "$base"
  echo "$want_stamp" >"$stamp"
  say "base rootfs ready in $((SECONDS - t0)) s: $(du -sh "$base" | cut -f1)"
}

# A run killed in the middle may have left a half-made base, maybe with /proc mounted in it.
remove_tree "$tmp"

want_stamp=$(cat "$self" <(printf '%s\n' "$suite" "$mirror" "$security_mirror") | sha256sum | cut -d' ' -f1)
if [ ! -d "$base" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ] || [ "${BAI_S3_REBUILD_BASE:-0}" = 1 ]; then
  build_base
else
  say "using the cached base rootfs $base (remove it or set BAI_S3_REBUILD_BASE=1 to rebuild)"
fi

# Assemble build/plugin from the cache and the binary.
remove_tree "$out"
mkdir -p "$out"
cp -a "$base" "$out/rootfs"
install -m 0755 "$binary" "$out/rootfs/usr/bin/bai-s3"
# The binary must run with the rootfs' own libraries.
chroot "$out/rootfs" /usr/bin/bai-s3 --version >/dev/null ||
  die "$binary does not run inside the plugin rootfs (missing libraries?)"
version=${BAI_S3_PLUGIN_VERSION:-$(chroot "$out/rootfs" /usr/bin/bai-s3 --version | awk '{print $2}')}
[[ "$version" =~ ^[A-Za-z0-9._+-]{1,64}$ ]] ||
  die "BAI_S3_PLUGIN_VERSION '$version': use 1-64 of A-Z a-z 0-9 . _ + -"
# The socket folder, the state and config mount points, the propagatedMount.
# The propagatedMount is 0755 (dockerd makes it so); the 0700 folder around it is what lets the
# daemon's start-up check see that only root can reach the mounted volumes.
install -d -m 0700 "$out/rootfs/var/lib/bai-s3"
install -d -m 0755 "$out/rootfs/run/docker/plugins" "$out/rootfs/var/lib/bai-s3/volumes"
install -d -m 0700 "$out/rootfs/state" "$out/rootfs/etc/bai-s3"
sed 's/"description": "bai-s3: /"description": "bai-s3 '"$version"': /' plugin/config.json >"$out/config.json"
grep -q "\"description\": \"bai-s3 $version: " "$out/config.json" ||
  die "could not write the version into the description of plugin/config.json"

# The host side of the plugin's bind mounts must exist when the plugin is enabled.
for d in /var/lib/bai-s3-plugin /etc/bai-s3; do [ -d "$d" ] || install -d -m 0700 "$d"; done

# Replace a plugin of the same name.
if docker plugin inspect "$name" >/dev/null 2>&1; then
  if [ "$(docker plugin inspect -f '{{.Enabled}}' "$name")" = true ]; then
    say "disabling the enabled plugin $name (-f: its mounts are unmounted)"
    docker plugin disable -f "$name" >/dev/null
  fi
  say "removing the existing plugin $name"
  docker plugin rm "$name" >/dev/null
fi
docker plugin create "$name" "$out" >/dev/null

say "rootfs size: $(du -sh "$out/rootfs" | cut -f1) ($(du -sh --apparent-size "$out/rootfs" | cut -f1) apparent)"
say "created plugin $name, version $version (disabled). Next:"
say "  install -m 0600 plugin/backends.toml.example /etc/bai-s3/backends.toml  # then edit it"
say "  docker plugin enable $name"
