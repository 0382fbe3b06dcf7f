"""Micro-batching: concurrent requests' images into one `Detector.predict_batch` call, on one worker
thread behind a bounded queue.

Dimensions: B images in a batch (B <= max_batch), N jobs waiting in the queue (N <= queue_size).

A batch is split by padded input shape (`padded_shape`) before it runs: the head's GroupNorm sees the
zero padding, so an image batched with a larger one gets other detections (up to hundreds of pixels
on a random-weights model) than alone. Grouped this way, a response does not depend on what other
clients sent at the same time: it equals the image predicted alone within float rounding (batched
convolutions round differently, ~1e-4 px, ~1e-6 in scores on this CPU).

Collection: the worker blocks for a first job, takes whatever else is queued already (up to
max_batch), then waits at most max_wait_s for more; max_wait_s = 0 never waits, so a lone client
pays nothing and a loaded server still batches what piled up during the previous batch.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

from PIL import Image

from fcosdet.deploy.predictor import Detector
from fcosdet.deploy.results import Results
from fcosdet.model.points import SIZE_DIVISOR

PredictBatch = Callable[[list[Image.Image]], list[Results]]


def padded_shape(detector: Detector, width: int, height: int) -> tuple[int, int]:
    """(Hp, Wp): the network input an image of this size gets alone (resized, padded to SIZE_DIVISOR)."""
    h, w = detector.transform.resized_size(height, width)
    return -(-h // SIZE_DIVISOR) * SIZE_DIVISOR, -(-w // SIZE_DIVISOR) * SIZE_DIVISOR


def group_by(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices grouped by equal key, groups in the order of their first member: [a, b, a] -> [[0, 2], [1]]."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())


class QueueFull(Exception):
    """The queue holds queue_size jobs already: the caller answers 503 with Retry-After."""


@dataclass
class _Job:
    image: Image.Image
    key: Hashable  # padded_shape: jobs batch together only with equal keys
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """submit(image) -> Future[Results]; one worker thread runs `predict` on batches of up to
    `max_batch` images. `on_batch(b)` is called with each batch's size (metrics)."""

    def __init__(self, *, predict: PredictBatch, key_of: Callable[[Image.Image], Hashable], max_batch: int,
                 max_wait_s: float, queue_size: int, on_batch: Callable[[int], None] = lambda b: None) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch {max_batch} and queue_size {queue_size} must be >= 1, max_wait_s "
                             f"{max_wait_s} >= 0")
        self._predict, self._key_of, self._on_batch = predict, key_of, on_batch
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """N: jobs waiting (not counting the batch running)."""
        return self._queue.qsize()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fcosdet-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)  # blocks while full: the worker drains it
            self._thread.join()
            self._thread = None

    def submit(self, image: Image.Image) -> Future:
        job = _Job(image=image, key=self._key_of(image))
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull() from None
        return job.future

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and up to max_batch - 1 more; True when the stop sentinel came."""
        jobs, deadline = [first], time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            jobs, stopping = self._collect(first)
            for group in group_by([job.key for job in jobs]):
                self._run_group([jobs[i] for i in group])

    def _run_group(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # a timed-out request cancelled
        if not jobs:
            return
        self._on_batch(len(jobs))
        try:
            results = self._predict([job.image for job in jobs])
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request (a 500), the worker lives on
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)
