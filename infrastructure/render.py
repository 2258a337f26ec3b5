"""Render a kustomization (the subset these manifests use) without kubectl: resources, labels, patches.

    python infrastructure/render.py infrastructure/kubernetes/overlays/gpu > gpu.yaml
`kubectl kustomize DIR` renders the same documents; this exists so the tests and `podman kube play`
work on machines with Python alone. Supported: `resources` (files, or directories with a
kustomization), `labels[].pairs` (added to metadata.labels), `patches[].path` (strategic merge:
maps merge, lists of named maps merge by name, other lists are replaced).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for the fields used here."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        merged = {item["name"]: item for item in base}
        for item in patch:
            merged[item["name"]] = merge(merged[item["name"]], item) if item["name"] in merged else item
        return list(merged.values())
    return patch


def identity(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for entry in kustomization.get("patches", []):
        for patch in yaml.safe_load_all((directory / entry["path"]).read_text()):
            target = identity(patch)
            matched = [i for i, d in enumerate(docs) if identity(d) == target]
            if not matched:
                raise SystemExit(f"patch {entry['path']} matches no resource {target}")
            for i in matched:
                docs[i] = merge(docs[i], patch)
    for label in kustomization.get("labels", []):
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label.get("pairs", {}))
    return docs


def main() -> None:
    docs = render(Path(sys.argv[1]))
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))


if __name__ == "__main__":
    main()
