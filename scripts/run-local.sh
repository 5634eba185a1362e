#!/usr/bin/env bash
# `make run`: start a local SeaweedFS as the `default` backend and bai-s3 on the legacy plugin
# socket (/run/docker/plugins/bai-s3.sock), in the foreground; Ctrl-C, SIGTERM or SIGHUP stops
# both. Then, where dockerd runs:  docker volume create -d bai-s3 -o bucket=demo -o create-bucket=true v
#
# A SeaweedFS an earlier run could not stop (that run was killed with SIGKILL) is stopped at the
# start: .run/weed.pid names it, and the kernel's exe link of that pid must be this checkout's
# weed binary (never a process found by its name).
#
# Local data, keys and logs live in .run/ (not in git). Ports: S3 on $BAI_S3_DEMO_PORT (8333).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${BAI_S3_DEMO_PORT:-8333}
run=$PWD/.run
mkdir -p "$run/weed" && chmod 700 "$run"

if [ ! -s "$run/keys" ]; then
  umask 077
  printf '%s %s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$run/keys"
fi
read -r ak sk < "$run/keys"
umask 077
cat > "$run/s3.json" <<JSON
{"identities":[{"name":"admin","credentials":[{"accessKey":"$ak","secretKey":"$sk"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
cat > "$run/backends.toml" <<TOML
[backends.default]
endpoint = "http://127.0.0.1:$port"
region = "us-east-1"
access-key = "$ak"
secret-key = "$sk"
path-style = true
TOML

weed_bin=$(realpath .venv/bin/weed)
pidfile=$run/weed.pid
# SeaweedFS takes its time over SIGTERM; give it 10 s, then SIGKILL.
stop_pid() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 20); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$1" 2>/dev/null || true
}
if [ -s "$pidfile" ]; then
  old=$(cat "$pidfile")
  if [[ "$old" =~ ^[0-9]+$ ]] && [ "$(readlink "/proc/$old/exe" 2>/dev/null)" = "$weed_bin" ]; then
    echo "stopping the SeaweedFS (pid $old) an earlier run left running"
    stop_pid "$old"
  fi
  rm -f "$pidfile"
fi

rm -f /tmp/seaweedfs-*-"$port".sock /tmp/seaweedfs-*-$((port + 1)).sock /tmp/seaweedfs-*-$((port + 2)).sock /tmp/seaweedfs-*-$((port + 3)).sock
"$weed_bin" server -dir="$run/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port=$((port + 1)) -volume.port=$((port + 2)) -filer.port=$((port + 3)) \
  -s3 -s3.port="$port" -s3.config="$run/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.telemetry=false -master.volumeSizeLimitMB=1024 -volume.max=100 \
  > "$run/weed.log" 2>&1 &
weed=$!
echo "$weed" > "$pidfile"
daemon=
# On any way out: the daemon first (its SIGTERM is its clean stop), then SeaweedFS.
stop_all() {
  if [ -n "$daemon" ]; then
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
  fi
  stop_pid "$weed"
  wait "$weed" 2>/dev/null || true
  rm -f "$pidfile"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
echo "SeaweedFS starting on http://127.0.0.1:$port (log: $run/weed.log)"
for _ in $(seq 1 120); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  kill -0 $weed 2>/dev/null || { echo "SeaweedFS died; its log:"; tail -20 "$run/weed.log"; exit 1; }
  sleep 0.5
done
echo "bai-s3 serving on /run/docker/plugins/bai-s3.sock (backends file: $run/backends.toml)"
echo "try: docker volume create -d bai-s3 -o bucket=demo -o create-bucket=true demo"
umask 022
# In the background, so that a signal to this script runs its trap at once (bash runs traps only
# between commands, and `wait` is one it leaves when a signal comes).
target/release/bai-s3 serve --config "$run/backends.toml" "$@" &
daemon=$!
wait "$daemon"
