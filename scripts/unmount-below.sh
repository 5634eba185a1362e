# Sourced by plugin/build.sh and scripts/trixie-root.sh, which both build a root folder with
# debootstrap and chroot and must take down what is mounted in it before removing it.

# Unmount everything mounted at or below $1 (deepest first), so that nothing (/proc, or a /dev
# a killed debootstrap left behind) stays mounted and `rm -rf` never walks into a host
# file system or a FUSE mount.
unmount_below() {
  local dir mnt
  [ -e "$1" ] || return 0
  dir=$(realpath "$1")
  # /proc/self/mounts escapes spaces as \040; our paths have none, and a mismatch only skips.
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts |
    sort -r | while read -r mnt; do
      umount "$mnt" 2>/dev/null || umount -l "$mnt"
    done
}
