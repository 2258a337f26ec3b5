"""`dinotiles batch`: render many sources on Ray, each through the same engine as `render`.

Why actors: the encoder (and its ONNX session) is loaded once per worker and reused for every source
that worker renders; a worker that dies is restarted by Ray and its task retried (``max_restarts``,
``max_task_retries``), and a source that fails for its own reasons (a bad file, a host down) is
retried once, then reported, without stopping the others. Settings travel to the workers as
``DINOTILES_*`` variables (``runtime_env``), so a remote cluster renders with the driver's settings.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dinotiles.batch.outputs import open_output
from dinotiles.batch.results import SourceSpec, fingerprints, result_item, write_collection
from dinotiles.core.errors import DinotilesError


@dataclass
class Summary:
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def patches(self) -> int:
        return sum(int(d["patches"]) for d in self.done)

    def line(self) -> str:
        rate = self.patches / self.seconds if self.seconds else 0.0
        return (
            f"{len(self.done)} done, {len(self.skipped)} skipped (already there), {len(self.failed)} failed; "
            f"{self.patches} patches in {self.seconds:.1f} s ({rate:.0f} patches/s)"
        )


def render_source(engine: Any, policy: Any, spec: SourceSpec, out: str, prints: dict[str, Any]) -> dict[str, Any]:
    """One source → its results, rendered in a local scratch folder, then published (item.json last)."""
    import json
    import tempfile

    import numpy as np
    from rasterio.warp import transform_bounds

    from dinotiles.core.colors import colorize
    from dinotiles.core.encoder import NODATA
    from dinotiles.core.limits import RequestLimits
    from dinotiles.core.reader import cluster_reader
    from dinotiles.core.render import scene_ids, write_cog
    from dinotiles.core.sources import Source, resolve_source

    started = time.perf_counter()
    local = spec.item is None and not spec.href.startswith(("http://", "https://", "s3://"))
    # a path the operator named is opened as `render` does; anything from a STAC API passes the URL guard
    source = Source.local(str(Path(spec.href).resolve())) if local else resolve_source(spec.href, policy)
    reader = cluster_reader(engine, policy, RequestLimits())
    output = open_output(out)
    with tempfile.TemporaryDirectory(prefix="dinotiles-batch-") as tmp:
        part = Path(tmp) / spec.id
        part.mkdir()
        with reader(source) as src:
            view = src.view
            ids = scene_ids(engine, view, progress=False)
            rgb, alpha = colorize(ids[None], engine.bundle.codebook.colors)
            write_cog(part / "clusters.tif", np.concatenate([rgb, alpha[None]]), view, None)
            write_cog(part / "cluster_ids.tif", ids[None], view, NODATA, resampling="mode")
            bounds = transform_bounds(view.grid.crs, "EPSG:4326", *view.grid.bounds(), densify_pts=21)
        item = result_item(spec, bounds, engine.bundle, prints)
        (part / "item.json").write_text(json.dumps(item, indent=1) + "\n")
        output.publish(spec.id, part)
    return {"id": spec.id, "patches": int((ids != NODATA).sum()), "seconds": time.perf_counter() - started}


def _worker_env() -> dict[str, str]:
    keep = ("DINOTILES_", "AWS_", "GDAL_", "CPL_")
    return {k: v for k, v in os.environ.items() if k.startswith(keep)}


def run(
    specs: list[SourceSpec],
    out: str,
    collection_id: str = "dinotiles-results",
    address: str | None = None,
    workers: int | None = None,
    retries: int = 1,
    progress: bool = True,
) -> Summary:
    """Render every spec not already done into ``out``; write collection.json; return the summary."""
    import ray

    from dinotiles.core.bundle import load_bundle
    from dinotiles.server.settings import Settings

    settings = Settings.from_env()
    bundle = load_bundle(settings.bundle)
    tag = "" if settings.precision == "fp32" else f"-{settings.precision}"
    prints = fingerprints(bundle, bundle.fingerprint + tag)
    output = open_output(out)
    summary = Summary()
    todo = []
    for spec in specs:
        if output.is_done(spec.id, prints):
            summary.skipped.append(spec.id)
        else:
            todo.append(spec)
    started = time.perf_counter()
    if todo:
        address = address or os.environ.get("RAY_ADDRESS")
        init: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False}
        init["runtime_env"] = {"env_vars": _worker_env()}
        if address:
            init["address"] = address
        else:
            init["num_cpus"] = workers or os.cpu_count() or 1
        ray.init(**init)
        try:
            _schedule(todo, out, prints, summary, workers, retries, progress)
        finally:
            if not address:
                ray.shutdown()
    summary.seconds = time.perf_counter() - started
    write_collection(output, collection_id, bundle, prints)
    return summary


def _schedule(
    todo: list[SourceSpec],
    out: str,
    prints: dict[str, Any],
    summary: Summary,
    workers: int | None,
    retries: int,
    progress: bool,
) -> None:
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    gpus = int(ray.cluster_resources().get("GPU", 0))
    per_worker = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    n = min(len(todo), workers or (gpus or int(ray.cluster_resources().get("CPU", 1))))
    renderer = ray.remote(Renderer).options(max_restarts=2, max_task_retries=2, **per_worker)  # type: ignore[attr-defined]
    actors = [renderer.remote(out) for _ in range(n)]
    queue: deque[tuple[SourceSpec, int]] = deque((s, 0) for s in todo)
    pending: dict[Any, tuple[SourceSpec, int, int]] = {}
    idle = list(range(n))
    bar = tqdm(total=len(todo), desc="batch", unit="item", disable=not progress)
    while queue or pending:
        while queue and idle:
            a = idle.pop()
            spec, attempt = queue.popleft()
            pending[actors[a].render.remote(spec, prints)] = (spec, attempt, a)  # type: ignore[attr-defined]
        ready, _ = ray.wait(list(pending), num_returns=1)
        spec, attempt, a = pending.pop(ready[0])
        idle.append(a)
        try:
            summary.done.append(ray.get(ready[0]))
            bar.update(1)
            continue
        except RayActorError:  # the worker is gone for good: a fresh one takes its place
            actors[a] = renderer.remote(out)
            error = "the Ray worker died"
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            error = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if attempt < retries:
            queue.append((spec, attempt + 1))
        else:
            summary.failed.append({"id": spec.id, "error": error})
            bar.update(1)
    bar.close()


class Renderer:
    """A Ray actor: one engine (encoder, caches) for every source this worker renders."""

    def __init__(self, out: str) -> None:
        import ray

        from dinotiles.core.bundle import load_bundle
        from dinotiles.server.settings import Settings

        settings = Settings.from_env()
        if not settings.encoder_threads:  # each actor keeps to the CPUs Ray gave it (two on 2 cores: 1 each)
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
            settings = settings.replace(encoder_threads=max(1, int(cpus)))
        self.engine = settings.open_engine(load_bundle(settings.bundle))
        self.policy = settings.source_policy()
        self.out = out

    def render(self, spec: SourceSpec, prints: dict[str, Any]) -> dict[str, Any]:
        try:
            return render_source(self.engine, self.policy, spec, self.out, prints)
        except DinotilesError as exc:
            raise RuntimeError(f"{spec.id}: {exc}") from None
