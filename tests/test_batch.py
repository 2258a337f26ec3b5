"""`dinotiles batch` on a real local Ray (2 CPUs): same pixels as `render`, a valid STAC collection, resumable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dinotiles.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, bundle, http_server: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DINOTILES_BUNDLE", str(bundle.root))  # Ray workers get DINOTILES_* from the driver
    monkeypatch.setenv("DINOTILES_ALLOWED_HOSTS", http_server.removeprefix("http://"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_batch_equals_render_validates_and_resumes(env, sample: Path, rasters, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from stac_pydantic import Collection, Item

    second = str(shutil.copy(sample, tmp_path / "second.tif"))
    out = tmp_path / "out"
    # one block row per task: each scene is split over both workers, then joined
    sources = [str(sample), second, str(rasters["corrupt"])]
    code = main(["batch", *sources, "--out", str(out), "--workers", "2", "--band-rows", "1"])
    assert code == 1  # some failed: listed, exit 1
    err = capsys.readouterr()
    # the corrupt file is retried, then reported; the others are done
    assert "failed corrupt" in err.err and "2 done, 0 skipped" in err.out and "1 failed" in err.out
    # pixel for pixel what `dinotiles render` writes
    assert main(["render", str(sample), str(tmp_path / "render.tif")]) == 0
    assert np.array_equal(read(out / sample.stem / "cluster_ids.tif"), read(tmp_path / "render_ids.tif"))
    assert np.array_equal(read(out / sample.stem / "clusters.tif"), read(tmp_path / "render.tif"))
    with rasterio.open(out / sample.stem / "cluster_ids.tif") as ds:
        assert ds.nodata == 65535 and (ds.overviews(1) or max(ds.shape) <= 64)
    item = json.loads((out / sample.stem / "item.json").read_text())
    Item.model_validate(item)
    collection = json.loads((out / "collection.json").read_text())
    Collection.model_validate(collection)
    assert sorted(link["href"] for link in collection["links"]) == ["./second/item.json", f"./{sample.stem}/item.json"]
    classes = item["assets"]["cluster_ids"]["classification:classes"]
    assert len(classes) == 512 and classes[5]["value"] == 5 and len(classes[5]["color_hint"]) == 6
    assert item["properties"]["dinotiles:k"] == 512 and item["links"][0]["rel"] == "derived_from"
    stamp = (out / sample.stem / "cluster_ids.tif").stat().st_mtime_ns
    # a rerun skips what is done (same fingerprints) and tries the failed one again
    main(["batch", str(sample), second, "--out", str(out), "--workers", "2"])
    assert "0 done, 2 skipped" in capsys.readouterr().out
    assert (out / sample.stem / "cluster_ids.tif").stat().st_mtime_ns == stamp


def test_batch_over_a_stac_search(env, stac_api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DINOTILES_STAC_URL", stac_api)
    out = tmp_path / "stac-out"
    main(["batch", "--collections", "aerial", "--out", str(out), "--workers", "2"])
    captured = capsys.readouterr()
    assert "3 done" in captured.out and "skipping no-raster" in captured.err
    for name in ("scene-0", "scene-1", "scene-2"):
        item = json.loads((out / name / "item.json").read_text())
        assert item["links"][0]["href"] == f"{stac_api}/collections/aerial/items/{name}"
    ids = [read(out / n / "cluster_ids.tif") for n in ("scene-0", "scene-1")]
    assert np.array_equal(*ids)  # the same image behind both items: the same clusters
    assert main(["batch", "--collections", "nope", "--out", str(out)]) == 2


def test_a_killed_ray_worker_is_survived(env, sample: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal
    import threading
    import time

    sources = [str(shutil.copy(sample, tmp_path / f"copy{i}.tif")) for i in range(3)]
    out = tmp_path / "out"
    codes: list[int] = []
    run = threading.Thread(target=lambda: codes.append(main(["batch", *sources, "--out", str(out), "--workers", "2"])))
    run.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and run.is_alive():
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                title = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::Renderer.band" in title:  # Ray names a worker by the task it runs
                os.kill(int(proc.name), signal.SIGKILL)  # it dies in the middle of rendering a scene
                killed = int(proc.name)
                break
        time.sleep(0.05)
    run.join(300)
    assert killed is not None, "no Ray worker was seen rendering"
    assert codes == [0], capsys.readouterr()
    assert "3 done, 0 skipped" in capsys.readouterr().out
    assert all((out / f"copy{i}" / "item.json").exists() for i in range(3))


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """moto's S3 server on 127.0.0.1 (a real HTTP S3 API), with an empty bucket."""
    import subprocess
    import sys

    import boto3

    from tests.conftest import free_port, wait_for

    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    try:
        wait_for(endpoint + "/moto-api/")
        client = boto3.client("s3")
        client.create_bucket(Bucket="results")
        yield client
    finally:
        proc.terminate()
        proc.wait(10)


def test_batch_writes_to_s3_and_resumes_there(env, s3, sample: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from stac_pydantic import Collection, Item

    assert main(["batch", str(sample), "--out", "s3://results/run1", "--workers", "1"]) == 0
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="results")["Contents"])
    stem = sample.stem
    assert keys == sorted(
        ["run1/collection.json", *(f"run1/{stem}/{f}" for f in ("clusters.tif", "cluster_ids.tif", "item.json"))]
    )
    item = json.loads(s3.get_object(Bucket="results", Key=f"run1/{stem}/item.json")["Body"].read())
    Item.model_validate(item)
    Collection.model_validate(json.loads(s3.get_object(Bucket="results", Key="run1/collection.json")["Body"].read()))
    body = s3.get_object(Bucket="results", Key=f"run1/{stem}/cluster_ids.tif")["Body"].read()
    with rasterio.MemoryFile(body) as mem, mem.open() as ds:
        assert ds.dtypes[0] == "uint16" and ds.nodata == 65535
    capsys.readouterr()
    assert main(["batch", str(sample), "--out", "s3://results/run1", "--workers", "1"]) == 0
    assert "0 done, 1 skipped" in capsys.readouterr().out


def test_results_on_s3_are_served(env, s3, sample: Path, app_settings, bundle, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """DINOTILES_RESULTS=s3://bucket/folder-of-collections: listed with boto3, COGs read by GDAL over S3."""
    import io

    from fastapi.testclient import TestClient

    from dinotiles.server.app import create_app

    assert (
        main(["batch", str(sample), "--out", "s3://results/runs/demo", "--workers", "1", "--collection-id", "demo"])
        == 0
    )
    endpoint = __import__("os").environ["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_S3_ENDPOINT", endpoint.removeprefix("http://"))  # GDAL's names for a non-AWS S3
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
    with TestClient(create_app(app_settings.replace(results=("s3://results/runs",)), bundle)) as client:
        assert [c["id"] for c in client.get("/collections").json()["collections"]] == ["demo"]
        tj = client.get("/collections/demo/WebMercatorQuad/tilejson.json").json()
        w, s, e, n = tj["bounds"]
        import morecantile

        t = morecantile.tms.get("WebMercatorQuad").tile((w + e) / 2, (s + n) / 2, 12)
        r = client.get(f"/collections/demo/tiles/WebMercatorQuad/12/{t.x}/{t.y}.npy")
        assert r.status_code == 200, r.text
        assert (np.load(io.BytesIO(r.content)) != 65535).any()
        assert client.app.state.engine.windows_encoded == 0


def test_results_are_served_at_every_zoom_and_reused(
    env, http_server, stac_api: str, monkeypatch, app_settings, bundle, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """`dinotiles batch` over a STAC search → /collections/{id} tiles at z12, z15, z19 equal the items'
    IDs resampled; an on-the-fly tile of a covered source reads them (no window encoded) and equals
    the tile the engine encodes."""
    import io

    import morecantile
    from fastapi.testclient import TestClient
    from rio_tiler.io import Reader

    from dinotiles.server.app import create_app

    monkeypatch.setenv("DINOTILES_STAC_URL", stac_api)
    out = tmp_path / "results"
    assert (
        main(
            [
                "batch",
                "--collections",
                "aerial",
                "--out",
                str(out),
                "--workers",
                "2",
                "--collection-id",
                "aerial-clusters",
            ]
        )
        == 0
    )
    capsys.readouterr()
    settings = app_settings.replace(
        results=(str(tmp_path),), allowed_hosts=(*app_settings.allowed_hosts, http_server.removeprefix("http://"))
    )
    tms = morecantile.tms.get("WebMercatorQuad")
    (out / "scenes.json").write_text(json.dumps({"k": 1, "items": []}))  # as `scenes cluster --results` leaves it
    with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as client:
        listed = client.get("/collections").json()["collections"]
        assert [c["id"] for c in listed] == ["aerial-clusters"] and listed[0]["items"] == 3
        assert client.get("/collections/aerial-clusters").json()["scenes"] == {"k": 1, "items": []}
        tj = client.get("/collections/aerial-clusters/WebMercatorQuad/tilejson.json").json()
        assert tj["minzoom"] == 0 and tj["maxzoom"] >= 19 and "/collections/aerial-clusters/tiles/" in tj["tiles"][0]
        w, s, e, n = tj["bounds"]
        ids_cog = out / "scene-0" / "cluster_ids.tif"
        for z in (12, 15, 19):
            t = tms.tile((w + e) / 2, (s + n) / 2, z)
            r = client.get(f"/collections/aerial-clusters/tiles/WebMercatorQuad/{z}/{t.x}/{t.y}.npy")
            assert r.status_code == 200, r.text
            got = np.load(io.BytesIO(r.content))
            with Reader(str(ids_cog)) as src:
                want = src.tile(t.x, t.y, z, resampling_method="nearest", reproject_method="nearest").array.filled(
                    65535
                )
            assert np.array_equal(got.reshape(want.shape), want), z
            assert (got != 65535).any(), z
            png = client.get(
                f"/collections/aerial-clusters/tiles/WebMercatorQuad/{z}/{t.x}/{t.y}.png", params={"groups": 8}
            )
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        # statistics over the collection from precomputed IDs: no inference, and the items named
        before = client.app.state.engine.windows_encoded
        stats = client.get("/collections/aerial-clusters/statistics", params={"bbox": f"{w},{s},{e},{n}"}).json()
        assert stats["valid_patches"] > 0 and sorted(stats["items"]) == ["scene-0", "scene-1", "scene-2"]
        point = client.get(f"/collections/aerial-clusters/point/{(w + e) / 2},{(s + n) / 2}").json()
        assert point["item"] in ("scene-0", "scene-1", "scene-2") and point["cluster"] is not None
        assert client.get("/collections/nope/WebMercatorQuad/tilejson.json").status_code == 404
        far = client.get("/collections/aerial-clusters/tiles/WebMercatorQuad/12/0/0.png")
        assert far.status_code == 404 and "detail" in far.json()
        # the on-the-fly route for a source the batch covered: read, not encoded
        href = json.loads((out / "scene-0" / "item.json").read_text())["properties"]["dinotiles:source"].split("#")[0]
        t = tms.tile((w + e) / 2, (s + n) / 2, 19)
        reused = client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.npy", params={"url": href})
        assert reused.status_code == 200, reused.text
        assert client.app.state.engine.windows_encoded == before == 0
    with TestClient(create_app(settings.replace(results=()), bundle)) as fresh:
        encoded = fresh.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.npy", params={"url": href})
        assert fresh.app.state.engine.windows_encoded > 0
    assert np.array_equal(np.load(io.BytesIO(reused.content)), np.load(io.BytesIO(encoded.content)))


def test_scene_clustering_on_ray_equals_the_local_run(env, stac_api: str, monkeypatch, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`scenes cluster --ray`: item summaries computed by Ray actors, the clustering on the driver; the
    answer is the one the single-process run gives."""
    monkeypatch.setenv("DINOTILES_STAC_URL", stac_api)
    local, remote = tmp_path / "local.json", tmp_path / "ray.json"
    assert main(["scenes", "cluster", "--collections", "aerial", "--out", str(local)]) == 0
    args = ["scenes", "cluster", "--collections", "aerial", "--ray", "--workers", "2", "--out", str(remote)]
    assert main([*args, "--results", str(tmp_path / "batch-out")]) == 0
    assert json.loads((tmp_path / "batch-out" / "scenes.json").read_text()) == json.loads(remote.read_text())
    capsys.readouterr()
    a, b = json.loads(local.read_text()), json.loads(remote.read_text())
    assert len(a["items"]) == 3 and [s["id"] for s in a["skipped"]] == ["no-raster"]
    # the same items, clusters and representatives (probabilities to float noise: other ORT threads)
    assert [(i["id"], i["cluster"]) for i in a["items"]] == [(i["id"], i["cluster"]) for i in b["items"]]
    assert a["k"] == b["k"] and a["skipped"] == b["skipped"]
    # the three items are one image: any of a cluster's members may represent it (ties break on noise)
    members = {str(i["cluster"]): set() for i in b["items"]}
    for i in b["items"]:
        members[str(i["cluster"])].add(i["id"])
    assert set(b["representatives"]) == set(a["representatives"])
    assert all(name in members[c] for c, name in b["representatives"].items())
    assert np.allclose([i["probability"] for i in a["items"]], [i["probability"] for i in b["items"]], atol=1e-3)
