"""Background jobs for large scene clusterings: a bounded pool, progress, never a hung request."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dinotiles.core.errors import NotFound

logger = logging.getLogger("dinotiles")


class JobNotFound(NotFound, LookupError):
    """No job with that id (404): never created, or finished long ago and dropped."""


@dataclass
class Job:
    id: str
    status: str = "queued"  # queued → running → done | failed
    result: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    done: int = 0  # items summarised so far
    total: int = 0

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.id,
            "status": self.status,
            "progress": {"done": self.done, "total": self.total},
            "result": self.result,
            "error": self.error,
        }


class Jobs:
    """Background work for large requests: 202 + a URL to poll, never a hung request.

    A bounded pool runs ``workers`` jobs at once and holds at most ``pending`` more; past that a
    new job is refused (503 + Retry-After) instead of starting threads without bound. Finished
    jobs are kept for polling (the oldest finished ones dropped past ``keep``); a running or
    queued job is never dropped.
    """

    def __init__(self, workers: int = 1, pending: int = 8, keep: int = 100) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.keep, self.pending = keep, pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dinotiles-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, work: Callable[[Callable[[int, int], None]], dict[str, Any]], total: int = 0) -> Job:
        """Queue ``work(progress)``; it reports (done, total) through ``progress`` as it goes."""
        from dinotiles.core.limits import Overloaded

        job = Job(id=uuid.uuid4().hex, total=total)
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.status in ("queued", "running"))
            if waiting >= self.pending:
                raise Overloaded(f"{waiting} scene jobs are queued or running (the limit); retry later", retry_after=30)
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.status in ("done", "failed")]
            for k in finished[: max(0, len(self._jobs) - self.keep)]:
                del self._jobs[k]

        def run() -> None:
            job.status = "running"
            try:
                job.result = work(job.progress)
                job.status = "done"
            except Exception as exc:  # reported to the poller, and logged
                logger.warning("scene job %s failed: %s", job.id, exc)
                job.error = f"{type(exc).__name__}: {exc}"
                job.status = "failed"

        self._pool.submit(run)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)
