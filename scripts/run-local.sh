#!/usr/bin/env bash
# `make run`: start a local SeaweedFS as the `default` backend and bai-s3 on the legacy plugin
# socket (/run/docker/plugins/bai-s3.sock), in the foreground; Ctrl-C stops both. Then, where
# dockerd runs:  docker volume create -d bai-s3 -o bucket=demo -o create-bucket=true v
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

rm -f /tmp/seaweedfs-*-"$port".sock /tmp/seaweedfs-*-$((port + 1)).sock /tmp/seaweedfs-*-$((port + 2)).sock /tmp/seaweedfs-*-$((port + 3)).sock
.venv/bin/weed server -dir="$run/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port=$((port + 1)) -volume.port=$((port + 2)) -filer.port=$((port + 3)) \
  -s3 -s3.port="$port" -s3.config="$run/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.telemetry=false -master.volumeSizeLimitMB=1024 -volume.max=100 \
  > "$run/weed.log" 2>&1 &
weed=$!
# SeaweedFS takes its time over SIGTERM; give it 10 s, then SIGKILL.
stop_weed() {
  kill "$weed" 2>/dev/null || return 0
  for _ in $(seq 1 20); do kill -0 "$weed" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$weed" 2>/dev/null; wait "$weed" 2>/dev/null
}
trap stop_weed EXIT
echo "SeaweedFS starting on http://127.0.0.1:$port (log: $run/weed.log)"
for _ in $(seq 1 120); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  kill -0 $weed 2>/dev/null || { echo "SeaweedFS died; its log:"; tail -20 "$run/weed.log"; exit 1; }
  sleep 0.5
done
echo "bai-s3 serving on /run/docker/plugins/bai-s3.sock (backends file: $run/backends.toml)"
echo "try: docker volume create -d bai-s3 -o bucket=demo -o create-bucket=true demo"
umask 022
target/release/bai-s3 serve --config "$run/backends.toml" "$@"
