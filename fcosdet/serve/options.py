"""Per-request options of `POST /predict` (`score_thr`, `classes`, `max_det`), applied to the
model's Results after the batch ran, so requests with different options share one batch.

Exact, not approximate: raising the score threshold after NMS and max_per_img gives what the model
would give at that threshold (a box is only suppressed by a higher-scoring one, and max_per_img keeps
the highest scores; see `OnnxBackend`), so a threshold below the model's own cannot be served;
`classes` drops the other classes' detections (as `Detector.predict(classes=...)` does); `max_det`
keeps the highest scores of what is left.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from fcosdet.deploy.predictor import Detector
from fcosdet.deploy.results import Results
from fcosdet.errors import UserError
from fcosdet.serve.limits import Refused

OPTIONS = ("score_thr", "classes", "max_det")


@dataclass(frozen=True, kw_only=True)
class Options:
    score_thr: float | None = None  # keep scores > this (None: the model's test.score_thr)
    labels: tuple[int, ...] | None = None  # keep these classes (None: all)
    max_det: int | None = None  # keep this many highest scores (None: all the model returns)


def _number(text: str, name: str, kind: type) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise Refused(400, f"query parameter {name}={text!r} is not {'an integer' if kind is int else 'a number'}") \
            from None


def parse_options(query: Mapping[str, Sequence[str]], detector: Detector) -> Options:
    """Query parameters ({name: [values]}) -> Options; Refused(400) naming the bad parameter."""
    unknown = sorted(set(query) - set(OPTIONS))
    if unknown:
        raise Refused(400, f"unknown query parameter {', '.join(unknown)}; /predict takes {', '.join(OPTIONS)}")
    model_thr = float(detector.config.test.score_thr)
    score_thr = labels = max_det = None
    if query.get("score_thr"):
        score_thr = float(_number(query["score_thr"][-1], "score_thr", float))
        if not model_thr <= score_thr <= 1.0:
            raise Refused(400, f"score_thr={score_thr:g} is outside [{model_thr:g}, 1]: this server's model returns "
                               f"scores from {model_thr:g} (restart it with --score-thr {score_thr:g} for lower)")
    if query.get("classes"):
        names = [name.strip() for value in query["classes"] for name in value.split(",") if name.strip()]
        try:
            labels = tuple(detector.labels_of(names))
        except UserError as exc:
            raise Refused(400, str(exc)) from None
    if query.get("max_det"):
        max_det = int(_number(query["max_det"][-1], "max_det", int))
        if max_det < 0:
            raise Refused(400, f"max_det={max_det} is negative: give the number of detections to keep")
    return Options(score_thr=score_thr, labels=labels, max_det=max_det)


def apply_options(results: Results, options: Options) -> Results:
    """The detections the options keep, highest score first."""
    if options.score_thr is not None:
        results = results.select(results.scores > options.score_thr)  # (D,) strictly above, as the post-processor
    if options.labels is not None:
        results = results.only(options.labels)
    if options.max_det is not None and len(results) > options.max_det:
        order = torch.argsort(results.scores, descending=True, stable=True)  # (D,)
        results = results.select(order[:options.max_det])
    return results
