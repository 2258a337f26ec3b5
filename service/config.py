"""Settings from the environment: one place that says what every knob is."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_ALLOWED_HOSTS = (
    "oin-hotosm.s3.amazonaws.com",
    "oin-hotosm-temp.s3.amazonaws.com",
)
DEFAULT_ALLOWED_BUCKETS = ("oin-hotosm", "oin-hotosm-temp")
DEMO_DIR = Path(os.environ.get("DINOTILES_DEMO_DIR", Path.cwd() / ".dinotiles"))


class SettingsError(ValueError):
    """A DINOTILES_* variable holds a value the server cannot use (the CLI exits 2 with this line)."""


def _number(name: str, raw: str, kind: type) -> float | int:
    try:
        value = kind(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {raw!r}") from exc
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value


def _names(raw: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in raw.split(",") if h.strip())


@dataclass(frozen=True)
class Settings:
    """Server settings; every field maps to one DINOTILES_<FIELD> variable (README lists them)."""

    bundle: Path = DEMO_DIR / "bundle"
    local_roots: tuple[Path, ...] = (DEMO_DIR / "data",)
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS  # http(s) hosts ("host" or "host:port")
    allowed_buckets: tuple[str, ...] = DEFAULT_ALLOWED_BUCKETS  # s3:// bucket names, never hosts
    cache_bytes: int = 256 * 1024 * 1024
    max_windows: int = 25  # inference windows one tile may need (sets minzoom)
    max_request_windows: int = 100  # inference windows any other request (statistics, point) may need
    max_stats_area_m2: float = 500_000.0
    max_scene_patches: int = 100_000_000  # 0.25 m patches in one source (10k x 10k = a 35 km square)
    max_output_size: int = 2048  # pixels per side of any image a route returns
    max_read_pixels: int = 100_000_000  # source pixels one read may touch (at the overview GDAL uses)
    request_timeout: float = 60.0  # seconds a request may run before 504
    http_timeout: float = 10.0  # seconds a remote read may stall (GDAL_HTTP_TIMEOUT)
    http_connect_timeout: float = 5.0  # seconds to connect to a remote host
    revalidate_seconds: float = 60.0  # a remote COG's ETag/Last-Modified is rechecked this often
    max_queue: int = 64  # windows waiting for the encoder; past it new work gets 503
    max_url_length: int = 8192  # request target (path + query) length; longer gets 414
    max_body_bytes: int = 1_048_576  # request body (POST statistics, scene searches); larger gets 413
    providers: tuple[str, ...] = ()
    stac_url: str = "https://api.imagery.hotosm.org/stac"
    stac_timeout: float = 20.0
    scenes_sync_max: int = 8

    @classmethod
    def from_env(cls) -> Settings:
        """Read DINOTILES_* variables; unset ones keep the defaults above; bad ones raise SettingsError."""
        env = os.environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"DINOTILES_{f.name.upper()}")
            if raw is None:
                continue
            name = f"DINOTILES_{f.name.upper()}"
            default = getattr(cls, f.name)
            if f.name == "local_roots":
                values[f.name] = tuple(Path(p) for p in raw.split(":") if p)
            elif f.name in ("allowed_hosts", "allowed_buckets"):
                values[f.name] = _names(raw)
            elif f.name == "providers":
                values[f.name] = tuple(p for p in raw.split(",") if p)
            elif isinstance(default, bool):
                values[f.name] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                values[f.name] = _number(name, raw, int)
            elif isinstance(default, float):
                values[f.name] = float(_number(name, raw, float))
            elif isinstance(default, Path):
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]
