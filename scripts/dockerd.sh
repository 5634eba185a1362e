#!/usr/bin/env bash
# Start dockerd in the background when /var/run/docker.sock does not answer, and wait until it
# does. The machines we run on have no init system to do it for us.
set -euo pipefail
if docker version >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd is not installed (scripts/deps.sh docker)" >&2; exit 1; }
mkdir -p /var/log
setsid dockerd >/var/log/bai-s3-dockerd.log 2>&1 < /dev/null &
for _ in $(seq 1 120); do
  docker version >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "dockerd.sh: dockerd did not answer within 60 s; its log:" >&2
tail -n 30 /var/log/bai-s3-dockerd.log >&2
exit 1
