"""The base manifests as one local Pod for `podman kube play`: the server and Redis, as the cluster runs them.

    python infrastructure/kube_play.py DATA_DIR PORT > pod.yaml && podman kube play pod.yaml
Takes the rendered base (`render.py`), keeps each container's image, args, probes, resources and
security context, inlines the ConfigMap, and joins the two Deployments into one Pod (Redis on
localhost, as a sidecar: podman has no Service DNS) with the server's port published and DATA_DIR
mounted at /data. Images are the local builds (`make image`, `infrastructure/redis/Dockerfile`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from render import render

BASE = Path(__file__).parent / "kubernetes" / "base"


def pod(data_dir: str, port: int) -> dict[str, Any]:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(BASE)}
    server_spec = docs[("Deployment", "dinotiles")]["spec"]["template"]["spec"]
    redis_spec = docs[("Deployment", "dinotiles-redis")]["spec"]["template"]["spec"]
    config = dict(docs[("ConfigMap", "dinotiles")]["data"])
    config["DINOTILES_REDIS_URL"] = "redis://127.0.0.1:6379/0"  # the sidecar
    server = dict(server_spec["containers"][0])
    server.pop("envFrom", None)
    server["env"] = [{"name": k, "value": str(v)} for k, v in config.items()]
    server["ports"] = [{"name": "http", "containerPort": 8000, "hostPort": port, "hostIP": "127.0.0.1"}]
    server["volumeMounts"] = [*server["volumeMounts"], {"name": "data", "mountPath": "/data", "readOnly": True}]
    redis = dict(redis_spec["containers"][0])
    redis["image"] = "localhost/dinotiles-redis:latest"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dinotiles-play", "labels": {"app.kubernetes.io/part-of": "dinotiles"}},
        "spec": {
            "securityContext": server_spec["securityContext"],
            "containers": [server, redis],
            "volumes": [*server_spec["volumes"], {"name": "data", "hostPath": {"path": data_dir, "type": "Directory"}}],
        },
    }


if __name__ == "__main__":
    sys.stdout.write(yaml.safe_dump(pod(sys.argv[1], int(sys.argv[2])), sort_keys=False))
