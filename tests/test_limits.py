"""The limits and the URL guard as units: no weights, no imagery, no servers (the fast tier)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dinotiles.core.limits import bbox_area_m2, parse_bbox
from dinotiles.core.sources import SourceForbidden, SourceNotFound, SourcePolicy, SourceUnreadable, check_url

EARTH_M2 = 510_065_621_724_000.0  # WGS84 ellipsoid surface

URLISH = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}{port}/{path}",
        st.sampled_from(["http", "HTTP", "https", "s3", "file", "ftp", "gopher", "", "hTtP"]),
        st.text(alphabet="abc.:[]@%0123456789-", max_size=20),
        st.sampled_from(["", ":", ":80", ":99999", ":abc", ":-1"]),
        st.text(max_size=30),
    ),
)


def test_bbox_area_is_right_for_whole_world_polar_and_antimeridian() -> None:
    assert bbox_area_m2((-180, -90, 180, 90)) == pytest.approx(EARTH_M2, rel=1e-3)
    assert bbox_area_m2((-180, 0, 180, 90)) == pytest.approx(EARTH_M2 / 2, rel=1e-3)
    # crossing ±180: 170°E → 170°W is 20° wide, the same as 0° → 20°
    assert bbox_area_m2((170, -1, -170, 1)) == pytest.approx(bbox_area_m2((0, -1, 20, 1)), rel=1e-9)
    one_deg = bbox_area_m2((0, 0, 1, 1))
    assert one_deg == pytest.approx(12_308_778_361, rel=5e-3)  # a 1° cell at the equator
    assert parse_bbox("170,-1,-170,1") == (170, -1, -170, 1)


def test_buckets_and_hosts_are_kept_apart() -> None:
    settings = SourcePolicy(allowed_hosts=("mybucket", "127.0.0.1:8765"), allowed_buckets=("oin-hotosm",))
    with pytest.raises(SourceForbidden):
        check_url("s3://mybucket/x.tif", settings)
    with pytest.raises(SourceUnreadable):
        check_url("s3://127.0.0.1:8765/x.tif", settings)
    assert check_url("s3://oin-hotosm/x.tif", settings) == "s3://oin-hotosm/x.tif"


@hsettings(max_examples=300, deadline=None)
@given(url=URLISH)
def test_fuzz_url_guard_only_raises_its_own_errors(url: str) -> None:
    settings = SourcePolicy(allowed_hosts=("127.0.0.1",), local_roots=(Path("/nonexistent-root"),))
    try:
        out = check_url(url, settings)
    except (SourceForbidden, SourceNotFound, SourceUnreadable):
        return
    assert isinstance(out, str) and out.startswith(("http://", "https://", "s3://"))


def test_background_jobs_are_bounded_and_never_evicted_while_running() -> None:
    from dinotiles.core.limits import Overloaded
    from dinotiles.stac.jobs import Jobs

    release = threading.Event()
    jobs = Jobs(workers=1, pending=2, keep=1)
    first = jobs.submit(lambda progress: (release.wait(10), {"ok": 1})[1])
    second = jobs.submit(lambda progress: {"ok": 2})
    with pytest.raises(Overloaded) as refused:
        jobs.submit(lambda progress: {"ok": 3})
    assert refused.value.retry_after >= 1
    assert jobs.get(first.id) is first and jobs.get(second.id) is second  # keep=1, yet nothing running is dropped
    release.set()
    for _ in range(100):
        if second.status == "done":
            break
        time.sleep(0.05)
    assert first.result == {"ok": 1} and second.result == {"ok": 2}
