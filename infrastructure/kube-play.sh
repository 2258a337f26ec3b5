#!/usr/bin/env bash
# `podman kube play` of the base manifests (server + Redis), then a real tile through them, then down.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18001}
eval "$(../shared/tools/oci.sh env)"
podman build -q --format docker -t localhost/dinotiles-redis:latest infrastructure/redis >/dev/null
oam=$(ls ../shared/data/oam/*.tif 2>/dev/null | head -n 1 || true)
if [ -n "$oam" ]; then data=$(cd "$(dirname "$oam")" && pwd); cog=/data/$(basename "$oam")
else data=$(pwd)/.dinotiles/data; cog=/data/test_tiled.tif; fi
spec=$(mktemp --suffix=.yaml)
.venv/bin/python infrastructure/kube_play.py "$data" "$PORT" >"$spec"
cleanup() { podman kube down "$spec" >/dev/null 2>&1 || true; rm -f "$spec"; }
trap cleanup EXIT
podman kube play --replace "$spec" >/dev/null
.venv/bin/python infrastructure/check_server.py "http://127.0.0.1:$PORT" "$cog"
.venv/bin/python - "http://127.0.0.1:$PORT" <<'PY'
import sys, httpx
shared = httpx.get(sys.argv[1] + "/healthz", timeout=10).json()["shared_cache"]
assert shared and shared["up"] and shared["errors"] == 0 and shared["misses"] > 0, shared
print(f"redis sidecar: used ({shared})")
PY
echo "kube-play: passed"
