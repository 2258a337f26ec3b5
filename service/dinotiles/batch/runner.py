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
from collections.abc import Iterator
from contextlib import contextmanager
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


BAND_ROWS = 16  # block rows per task (1.5 km): big scenes spread over workers; a band re-encodes 2 rows


def _open(engine: Any, policy: Any, spec: SourceSpec) -> Any:
    """The source as `render` opens it: a path the operator named as is; anything from a STAC API
    (or any URL) through the URL guard."""
    from dinotiles.core.limits import RequestLimits
    from dinotiles.core.reader import cluster_reader
    from dinotiles.core.sources import Source, resolve_source

    local = spec.item is None and not spec.href.startswith(("http://", "https://", "s3://"))
    source = Source.local(str(Path(spec.href).resolve())) if local else resolve_source(spec.href, policy)
    return cluster_reader(engine, policy, RequestLimits())(source)


def plan_source(
    engine: Any, policy: Any, spec: SourceSpec, band_rows: int = BAND_ROWS
) -> tuple[list[tuple[int, int]], str]:
    """The source's bands of block rows, [i0, i1), each one task, and the source's version (every
    band and the publish step check they read that version: a file replaced mid-run is a retry)."""
    with _open(engine, policy, spec) as src:
        rows = src.view.grid.window_rows
        key = src.view.key
    return [(i0, min(rows, i0 + band_rows)) for i0 in range(0, rows, band_rows)], key


def _check_version(spec: SourceSpec, src: Any, key: str | None) -> None:
    if key is not None and src.view.key != key:
        raise RuntimeError(f"{spec.id}: the source changed while it was being rendered")


def render_band(engine: Any, policy: Any, spec: SourceSpec, i0: int, i1: int, key: str | None = None) -> Any:
    """Cluster IDs of block rows [i0, i1): patch rows [i0 × core, i1 × core) clipped to the scene."""
    from dinotiles.core.render import band_ids

    with _open(engine, policy, spec) as src:
        _check_version(spec, src, key)
        return band_ids(engine, src.view, i0, i1)


def publish_source(
    engine: Any,
    policy: Any,
    spec: SourceSpec,
    out: str,
    prints: dict[str, Any],
    bands: list[Any],
    started: float,
    key: str | None = None,
) -> dict[str, Any]:
    """The bands joined into the scene's COGs and STAC item, written in a scratch folder, then
    published (item.json last)."""
    import json
    import tempfile

    import numpy as np
    from rasterio.warp import transform_bounds

    from dinotiles.core.colors import colorize
    from dinotiles.core.encoder import NODATA
    from dinotiles.core.render import write_cog

    output = open_output(out)
    ids = np.concatenate(bands, axis=0)
    with tempfile.TemporaryDirectory(prefix="dinotiles-batch-") as tmp, _open(engine, policy, spec) as src:
        view = src.view
        _check_version(spec, src, key)
        if ids.shape != (view.grid.rows, view.grid.cols):
            shape = (view.grid.rows, view.grid.cols)
            raise RuntimeError(f"{spec.id}: the bands make {ids.shape}, the scene is {shape}")
        part = Path(tmp) / spec.id
        part.mkdir()
        rgb, alpha = colorize(ids[None], engine.bundle.codebook.colors)
        write_cog(part / "clusters.tif", np.concatenate([rgb, alpha[None]]), view, None)
        write_cog(part / "cluster_ids.tif", ids[None], view, NODATA, resampling="mode")
        bounds = transform_bounds(view.grid.crs, "EPSG:4326", *view.grid.data_bounds(), densify_pts=21)
        item = result_item(spec, bounds, engine.bundle, prints, view.key)
        (part / "item.json").write_text(json.dumps(item, indent=1) + "\n")
        output.publish(spec.id, part)
    return {"id": spec.id, "patches": int((ids != NODATA).sum()), "seconds": time.time() - started}


def _worker_env() -> dict[str, str]:
    keep = ("DINOTILES_", "AWS_", "GDAL_", "CPL_")
    return {k: v for k, v in os.environ.items() if k.startswith(keep)}


@contextmanager
def ray_cluster(address: str | None, workers: int | None) -> Iterator[None]:
    """Ray at ``address`` (or RAY_ADDRESS), else a local one with ``workers`` CPUs, shut down after."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    init: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False}
    init["runtime_env"] = {"env_vars": _worker_env()}
    if address:
        init["address"] = address
    else:
        init["num_cpus"] = workers or os.cpu_count() or 1
    ray.init(**init)
    try:
        yield
    finally:
        if not address:
            ray.shutdown()


ACTORS_PER_GPU = 4  # each actor reads its windows in one thread: several share a GPU to keep it fed


def actor_resources() -> tuple[dict[str, float], int]:
    """What each encoder actor asks Ray for, and how many the cluster holds: a quarter GPU and a CPU
    each where there are GPUs (the model is small; reading the COGs is what takes the time), else a CPU."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:  # never more actors than CPUs to place them on (they would wait for ever)
        return {"num_gpus": 1 / ACTORS_PER_GPU, "num_cpus": 1}, min(gpus * ACTORS_PER_GPU, cpus)
    return {"num_cpus": 1}, cpus


def scene_vectors(hrefs: list[str], feature: str, address: str | None, workers: int | None) -> list[Any]:
    """One summary vector per source (``scenes cluster --ray``), computed by actors in parallel, in order."""
    import ray
    from ray.util import ActorPool

    with ray_cluster(address, workers):
        per_worker, default = actor_resources()
        n = max(1, min(len(hrefs), workers or default))
        summarizer = ray.remote(Renderer).options(max_restarts=2, max_task_retries=2, **per_worker)  # type: ignore[attr-defined]
        pool = ActorPool([summarizer.remote("") for _ in range(n)])
        bar = tqdm(total=len(hrefs), desc="scenes", unit="item")
        vectors = []
        for vector in pool.map(lambda actor, href: actor.vector.remote(href, feature), hrefs):
            vectors.append(vector)
            bar.update(1)
        bar.close()
        return vectors


def run(
    specs: list[SourceSpec],
    out: str,
    collection_id: str = "dinotiles-results",
    address: str | None = None,
    workers: int | None = None,
    retries: int = 1,
    progress: bool = True,
    band_rows: int = BAND_ROWS,
) -> Summary:
    """Render every spec not already done into ``out``; write collection.json; return the summary."""
    from dinotiles.core.bundle import load_bundle
    from dinotiles.core.engine import fingerprint_for
    from dinotiles.server.settings import Settings

    settings = Settings.from_env()
    bundle = load_bundle(settings.bundle)
    tag = "" if settings.precision == "fp32" else f"-{settings.precision}"  # the encoders' cache_tag
    prints = fingerprints(bundle, fingerprint_for(bundle, tag, settings.blend))
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
        with ray_cluster(address, workers):
            _schedule(todo, out, prints, summary, workers, retries, progress, band_rows)
    summary.seconds = time.perf_counter() - started
    write_collection(output, collection_id, bundle, prints)
    return summary


@dataclass
class _Scene:
    """One source in flight: its bands' IDs as they come, and its attempts so far."""

    spec: SourceSpec
    started: float
    attempt: int = 0
    bands: dict[int, Any] = field(default_factory=dict)
    expected: int = 0
    key: str | None = None  # the source's version the plan saw
    failed: bool = False


def _schedule(
    todo: list[SourceSpec],
    out: str,
    prints: dict[str, Any],
    summary: Summary,
    workers: int | None,
    retries: int,
    progress: bool,
    band_rows: int = BAND_ROWS,
) -> None:
    """Tasks on a pool of actors: plan a scene (its bands), render each band anywhere, join and
    publish the scene. A task that fails is tried again (a dead worker is replaced first); a scene
    whose task still fails after ``retries`` is reported and the others go on."""
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    per_worker, default = actor_resources()
    n = max(1, workers or default)
    renderer = ray.remote(Renderer).options(max_restarts=2, max_task_retries=2, **per_worker)  # type: ignore[attr-defined]
    actors = [renderer.remote(out) for _ in range(n)]
    scenes = {spec.id: _Scene(spec, time.time()) for spec in todo}  # wall clock: compared on other hosts
    # (kind, scene id, band index or -1, band) — bands go first so that a started scene finishes
    queue: deque[tuple[str, str, int, tuple[int, int]]] = deque(("plan", s.id, -1, (0, 0)) for s in todo)
    pending: dict[Any, tuple[str, str, int, tuple[int, int], int]] = {}
    idle = list(range(n))
    bar = tqdm(total=len(todo), desc="batch", unit="item", disable=not progress)
    while queue or pending:
        while queue and idle:
            a = idle.pop()
            kind, sid, k, band = task = queue.popleft()
            scene = scenes[sid]
            if scene.failed:
                idle.append(a)
                continue
            actor = actors[a]
            if kind == "plan":
                ref = actor.plan.remote(scene.spec, band_rows)  # type: ignore[attr-defined]
            elif kind == "band":
                ref = actor.band.remote(scene.spec, *band, scene.key)  # type: ignore[attr-defined]
            else:
                parts = [scene.bands[i] for i in range(scene.expected)]
                ref = actor.publish.remote(scene.spec, prints, scene.started, scene.key, *parts)  # type: ignore[attr-defined]
            pending[ref] = (*task, a)
        if not pending:  # what was queued belonged to scenes that have failed
            continue
        ready, _ = ray.wait(list(pending), num_returns=1)
        kind, sid, k, band, a = pending.pop(ready[0])
        idle.append(a)
        scene = scenes[sid]
        try:
            result = ray.get(ready[0])
        except RayActorError:  # the worker is gone for good: a fresh one takes its place
            actors[a] = renderer.remote(out)
            error = "the Ray worker died"
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            error = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        except RayError as exc:  # lost objects, out of memory, …: this task, not the whole run
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        else:
            if scene.failed:
                continue
            if kind == "plan":
                planned, scene.key = result
                scene.expected = len(planned)
                queue.extendleft(reversed([("band", sid, i, b) for i, b in enumerate(planned)]))
            elif kind == "band":
                scene.bands[k] = result
                if len(scene.bands) == scene.expected:
                    queue.appendleft(("publish", sid, -1, (0, 0)))
            else:
                summary.done.append(result)
                scene.bands.clear()
                bar.update(1)
            continue
        if scene.failed:
            continue
        if scene.attempt < retries:
            scene.attempt += 1
            queue.append((kind, sid, k, band))
        else:
            scene.failed = True
            scene.bands.clear()
            queue = deque(t for t in queue if t[1] != sid)  # its other tasks are not run
            summary.failed.append({"id": sid, "error": error})
            bar.update(1)
    bar.close()


class Renderer:
    """A Ray actor: one engine (encoder, caches) for every source this worker renders or summarises."""

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

    def vector(self, href: str, feature: str) -> Any:
        """The scene summary of one source (asset hrefs come from a STAC API: guarded like any URL)."""
        from dinotiles.core.limits import RequestLimits
        from dinotiles.core.reader import cluster_reader
        from dinotiles.core.sources import resolve_source
        from dinotiles.stac.summary import item_feature

        reader = cluster_reader(self.engine, self.policy, RequestLimits())
        with _plain_errors(SourceSpec(href, href)), reader(resolve_source(href, self.policy)) as src:
            return item_feature(self.engine, src.view, feature)

    def plan(self, spec: SourceSpec, band_rows: int) -> tuple[list[tuple[int, int]], str]:
        with _plain_errors(spec):
            return plan_source(self.engine, self.policy, spec, band_rows)

    def band(self, spec: SourceSpec, i0: int, i1: int, key: str | None) -> Any:
        with _plain_errors(spec):
            return render_band(self.engine, self.policy, spec, i0, i1, key)

    def publish(
        self, spec: SourceSpec, prints: dict[str, Any], started: float, key: str | None, *bands: Any
    ) -> dict[str, Any]:
        with _plain_errors(spec):
            return publish_source(self.engine, self.policy, spec, self.out, prints, list(bands), started, key)


@contextmanager
def _plain_errors(spec: SourceSpec) -> Iterator[None]:
    """Our errors reach the driver as one line naming the item (no traceback of ours to unpickle)."""
    try:
        yield
    except DinotilesError as exc:
        raise RuntimeError(f"{spec.id}: {exc}") from None
