#!/usr/bin/env bash
# Start dockerd in the background when /var/run/docker.sock does not answer, and wait until it
# does. The machines we run on have no init system to do it for us.
# dockerd accepts on its socket before it serves: `docker version` then hangs, so every probe
# is bounded. A start can be slow for a reason outside bai-s3: dockerd retries a volume whose
# plugin is gone for about 15 s, one volume after another, before it serves (see README).
set -euo pipefail
wait_s=${BAI_S3_DOCKERD_WAIT:-240}
answers() { timeout 5 docker version >/dev/null 2>&1; }
if answers; then exit 0; fi
command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd is not installed (scripts/deps.sh docker)" >&2; exit 1; }
mkdir -p /var/log
# Started even when a dockerd process seems to be there: one that has just exited can linger
# as a zombie (no init reaps it here), and a second live one fails on its pid file, harmlessly.
# dockerd outlives this script: it must not inherit descriptors beyond stdio (a caller's flock
# on a lock file would be held until dockerd ends).
for fd in /proc/$$/fd/*; do
  fd=${fd##*/}
  [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
done
setsid dockerd >/var/log/bai-s3-dockerd.log 2>&1 < /dev/null &
deadline=$((SECONDS + wait_s))
while [ "$SECONDS" -lt "$deadline" ]; do
  answers && exit 0
  sleep 0.5
done
echo "dockerd.sh: dockerd did not answer within ${wait_s} s; its log:" >&2
tail -n 30 /var/log/bai-s3-dockerd.log >&2
exit 1
