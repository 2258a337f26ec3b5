#!/usr/bin/env bash
# Build-free check of the cpu image: run it read-only with a mounted COG, wait for health, fetch the
# viewer and a real cluster tile, check the process is not root, then stop it. `make image-test` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/dinotiles:cpu}
PORT=${PORT:-18000}
NAME=dinotiles-image-test-$$
eval "$(../shared/tools/oci.sh env)"

oam=$(ls ../shared/data/oam/*.tif 2>/dev/null | head -n 1 || true)
if [ -n "$oam" ]; then data=$(cd "$(dirname "$oam")" && pwd); cog=/data/$(basename "$oam")
else data=$(pwd)/.dinotiles/data; cog=/data/test_tiled.tif; fi

cleanup() { podman rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
podman run -d --name "$NAME" --read-only --tmpfs /cache:rw,size=512m,mode=1777 --tmpfs /tmp:rw,size=64m \
  -v "$data":/data:ro -p "127.0.0.1:$PORT:8000" "$IMAGE" >/dev/null
.venv/bin/python infrastructure/check_server.py "http://127.0.0.1:$PORT" "$cog"
uid=$(podman exec "$NAME" id -u)
[ "$uid" != "0" ] || { echo "image-test: the server runs as root" >&2; exit 1; }
echo "user: uid $uid (not root)"
podman exec "$NAME" python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
  || { echo "image-test: torch is in the runtime image" >&2; exit 1; }
echo "runtime: no torch"
podman healthcheck run "$NAME" && echo "HEALTHCHECK: healthy"
podman stop -t 10 "$NAME" >/dev/null
echo "image-test: passed"
