"""Settings from the environment: one place that says what every knob is."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ALLOWED_HOSTS = (
    "oin-hotosm.s3.amazonaws.com",
    "oin-hotosm-temp.s3.amazonaws.com",
    "oin-hotosm",
    "oin-hotosm-temp",
)
DEMO_DIR = Path(os.environ.get("DINOTILES_DEMO_DIR", Path.cwd() / ".dinotiles"))


def _ints(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    """Server settings; every field maps to one DINOTILES_* variable (README lists them)."""

    bundle: Path = DEMO_DIR / "bundle"
    local_roots: tuple[Path, ...] = (DEMO_DIR / "data",)
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    cache_bytes: int = 256 * 1024 * 1024
    max_windows: int = 25
    max_stats_area_m2: float = 500_000.0
    providers: tuple[str, ...] = ()
    stac_url: str = "https://api.imagery.hotosm.org/stac"
    stac_timeout: float = 20.0
    scenes_sync_max: int = 8

    @classmethod
    def from_env(cls) -> Settings:
        """Read DINOTILES_* variables; unset ones keep the defaults above."""
        env = os.environ
        roots = env.get("DINOTILES_LOCAL_ROOTS")
        hosts = env.get("DINOTILES_ALLOWED_HOSTS")
        providers = env.get("DINOTILES_PROVIDERS")
        return cls(
            bundle=Path(env.get("DINOTILES_BUNDLE", str(cls.bundle))),
            local_roots=tuple(Path(p) for p in roots.split(":") if p) if roots else cls.local_roots,
            allowed_hosts=tuple(h.strip().lower() for h in hosts.split(",") if h.strip())
            if hosts is not None
            else cls.allowed_hosts,
            cache_bytes=_ints("DINOTILES_CACHE_BYTES", cls.cache_bytes),
            max_windows=_ints("DINOTILES_MAX_WINDOWS", cls.max_windows),
            max_stats_area_m2=float(_ints("DINOTILES_MAX_STATS_AREA_M2", int(cls.max_stats_area_m2))),
            providers=tuple(p for p in (providers or "").split(",") if p),
            stac_url=env.get("DINOTILES_STAC_URL", cls.stac_url),
            stac_timeout=float(env.get("DINOTILES_STAC_TIMEOUT", cls.stac_timeout)),
            scenes_sync_max=_ints("DINOTILES_SCENES_SYNC_MAX", cls.scenes_sync_max),
        )
