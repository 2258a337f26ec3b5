"""Settings from the environment: one validated object, one place that says what every knob is.

Every field is a ``DINOTILES_<FIELD>`` variable (the README's table lists them). A bad value is
refused when the object is made, so ``dinotiles serve`` stops at start-up with one line, not at
the first request. The core never reads this object: the server turns it into the core's small
policies (``source_policy()``, ``request_limits()``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dinotiles.core.errors import DinotilesError
from dinotiles.core.limits import RequestLimits
from dinotiles.core.sources import SourcePolicy

if TYPE_CHECKING:
    from dinotiles.core.bundle import Bundle
    from dinotiles.core.engine import ClusterEngine

DEFAULT_ALLOWED_HOSTS = ("oin-hotosm.s3.amazonaws.com", "oin-hotosm-temp.s3.amazonaws.com")
DEFAULT_ALLOWED_BUCKETS = ("oin-hotosm", "oin-hotosm-temp")


def demo_dir() -> Path:
    """Where `dinotiles demo` builds and caches: DINOTILES_DEMO_DIR, else ./.dinotiles (read when asked)."""
    return Path(os.environ.get("DINOTILES_DEMO_DIR") or Path.cwd() / ".dinotiles")


class SettingsError(DinotilesError, ValueError):
    """A DINOTILES_* variable holds a value the server cannot use (the CLI exits 2 with this line)."""


Names = Annotated[tuple[str, ...], NoDecode]
Paths = Annotated[tuple[Path, ...], NoDecode]
Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Settings(BaseSettings):
    """Server settings; every field maps to one DINOTILES_<FIELD> variable."""

    model_config = SettingsConfigDict(env_prefix="DINOTILES_", frozen=True, extra="ignore")

    bundle: Path = Field(default_factory=lambda: demo_dir() / "bundle")
    local_roots: Paths = Field(default_factory=lambda: (demo_dir() / "data",))
    allowed_hosts: Names = DEFAULT_ALLOWED_HOSTS  # http(s) hosts ("host" or "host:port")
    allowed_buckets: Names = DEFAULT_ALLOWED_BUCKETS  # s3:// bucket names, never hosts
    cache_bytes: Annotated[int, Field(ge=0)] = 256 * 1024 * 1024  # final cluster IDs per block (L1)
    feature_cache_bytes: Annotated[int, Field(ge=0)] = 128 * 1024 * 1024  # window features (float16) for blending
    blend: bool = True  # match band patches on features blended across the windows that see them
    max_windows: PositiveInt = 36  # inference windows one tile may need, with its ring (sets minzoom)
    max_request_windows: PositiveInt = 121  # inference windows any other request may need
    max_stats_area_m2: Positive = 500_000.0
    max_scene_patches: PositiveInt = 100_000_000  # 0.25 m patches in one source (10k x 10k = a 35 km square)
    max_output_size: PositiveInt = 2048  # pixels per side of any image a route returns
    max_read_pixels: PositiveInt = 100_000_000  # source pixels one read may touch (at the overview GDAL uses)
    request_timeout: Positive = 60.0  # seconds a request may run before 504
    tile_timeout: Positive = 30.0  # seconds a tile may take before 504 (never more than request_timeout)
    http_timeout: Positive = 10.0  # seconds a remote read may stall (GDAL_HTTP_TIMEOUT)
    http_connect_timeout: Positive = 5.0  # seconds to connect to a remote host
    revalidate_seconds: Annotated[float, Field(ge=0)] = 60.0  # a remote COG's ETag/Last-Modified recheck
    gdal_cache_mb: PositiveInt = 64  # GDAL's block cache (its default is 5 % of RAM, held for good)
    max_queue: PositiveInt = 64  # windows admitted to the inference queue; past it new work gets 503
    batch_size: PositiveInt = 8  # windows per encoder run, gathered across requests (1 = no batching)
    batch_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 2.0  # how long a partial batch waits for more
    encoder: Literal["auto", "onnx", "torch"] = (
        "auto"  # auto: ORT on its GPU provider, else torch on CUDA, else ORT CPU
    )
    encoder_threads: Annotated[int, Field(ge=0)] = 0  # ONNX Runtime threads (0: one per core)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # fp16/bf16 on GPUs (IDs cached apart from fp32)
    max_url_length: PositiveInt = 8192  # request target (path + query) length; longer gets 414
    max_body_bytes: PositiveInt = 1_048_576  # request body; larger gets 413
    jobs: PositiveInt = 1  # scene-clustering jobs run at once
    max_pending_jobs: PositiveInt = 8  # queued or running jobs; past it 503
    cors_origins: Names = ("*",)  # origins web maps may load tiles from ("*" = any, as TiTiler)
    redis_url: str | None = None  # redis://host:6379/0: the window cache shared by replicas (unset: in-process only)
    redis_ttl_seconds: PositiveInt = 7 * 24 * 3600  # how long a shared window lives (Redis evicts LRU when full)
    providers: Names = ()  # ONNX Runtime execution providers, in order (default: TensorRT, CUDA, CPU if present)
    results: Names = ()  # `dinotiles batch` outputs served under /collections: directories or s3:// prefixes
    results_refresh_seconds: Positive = 60.0  # how often those locations are listed again
    max_mosaic_items: PositiveInt = 64  # result items one collection tile may read (more: 400, zoom in)
    max_collection_stats_area_m2: Positive = 2.5e8  # a collection's statistics bbox (precomputed: no inference)
    stac_url: str = "https://api.imagery.hotosm.org/stac"
    stac_timeout: Positive = 20.0
    scenes_sync_max: PositiveInt = 8

    @field_validator("allowed_hosts", "allowed_buckets", mode="before")
    @classmethod
    def _lower_names(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(h.strip().lower() for h in value.split(",") if h.strip())
        return value

    @field_validator("providers", "cors_origins", "results", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(h.strip() for h in value.split(",") if h.strip())
        return value

    @field_validator("local_roots", mode="before")
    @classmethod
    def _paths(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(Path(p) for p in value.split(":") if p)
        return value

    @classmethod
    def from_env(cls) -> Settings:
        """Read DINOTILES_* variables; a bad one raises SettingsError naming the variable."""
        try:
            return cls()
        except ValidationError as exc:
            first = exc.errors()[0]
            name = "DINOTILES_" + str(first["loc"][0]).upper() if first.get("loc") else "a DINOTILES_ variable"
            raise SettingsError(f"{name}: {first['msg']} (got {first.get('input')!r})") from None

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed, validated like the original."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def source_policy(self) -> SourcePolicy:
        return SourcePolicy(
            local_roots=self.local_roots,
            allowed_hosts=self.allowed_hosts,
            allowed_buckets=self.allowed_buckets,
            http_timeout=self.http_timeout,
            http_connect_timeout=self.http_connect_timeout,
            revalidate_seconds=self.revalidate_seconds,
            gdal_cache_mb=self.gdal_cache_mb,
            max_output_size=self.max_output_size,
            max_read_pixels=self.max_read_pixels,
            max_scene_patches=self.max_scene_patches,
        )

    def request_limits(self) -> RequestLimits:
        return RequestLimits(self.max_windows, self.max_request_windows, self.max_stats_area_m2)

    def open_engine(self, bundle: Bundle) -> ClusterEngine:
        """The encoder these settings choose, behind one inference queue and the L1/L2 window caches."""
        from dinotiles.backends import open_encoder
        from dinotiles.core.cache import ByteLRU
        from dinotiles.core.engine import ClusterEngine
        from dinotiles.core.inference import InferenceQueue
        from dinotiles.core.shared_cache import SharedCache

        encoder = open_encoder(
            bundle, self.encoder, self.precision, self.providers, self.batch_size, self.encoder_threads
        )
        shared = SharedCache(self.redis_url, self.redis_ttl_seconds) if self.redis_url else None
        queue = InferenceQueue(encoder, self.max_queue, self.batch_size, self.batch_wait_ms)
        features = ByteLRU(self.feature_cache_bytes)
        return ClusterEngine(bundle, encoder, ByteLRU(self.cache_bytes), queue, shared, self.blend, features)
