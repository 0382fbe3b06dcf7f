"""Track ids across video frames: supervision's ByteTrack (MIT licence) over `Results`, and the
IDF1 / id-switch measures that check it against ground truth.

    tracker = Tracker(frame_rate=15.0)      # the video's fps / --vid-stride
    r = tracker.update(results)             # the same detections, with r.track_ids (D,): -1 where no track

ByteTrack (Zhang et al. 2022) matches high-score detections to the Kalman-predicted tracks by
IoU, then the low-score ones to the tracks left over, and keeps a lost track `lost_buffer`
frames at 30 fps (scaled by frame_rate / 30), so the frame rate must be the rate of the frames
it sees. Matching ignores the class, so the tracker sees one box per object: of detections of
different classes on the same spot (IoU >= DUPLICATE_IOU; NMS is per class) only the best
scoring one, the others get -1. Detections are never dropped or moved: the tracker only labels them.

supervision 0.30 is the last line that ships ByteTrack (deprecated there in favour of the
`trackers` package, which needs OpenCV); its deprecation notice is silenced here.

Dimensions: D detections of a frame, G ground-truth boxes, T frames.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou, nms

from fcosdet.deploy.results import Results

TRACK_THR = 0.25  # ByteTrack's track_activation_threshold: detections above it (+0.1) start tracks
LOST_BUFFER = 30  # frames at 30 fps a lost track is kept
MATCH_THR = 0.8  # the highest 1 - IoU of a match
DUPLICATE_IOU = 0.7  # boxes of other classes overlapping a better one this much are one object: not tracked


def _byte_track(**kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*OpenCV.*")  # supervision's numpy fallback is enough here
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*ByteTrack.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import supervision as sv

        return sv.ByteTrack(**kwargs), sv


class Tracker:
    """One video's tracks: `update` each frame's Results in order."""

    def __init__(self, *, frame_rate: float, track_thr: float = TRACK_THR, lost_buffer: int = LOST_BUFFER,
                 match_thr: float = MATCH_THR) -> None:
        self.frame_rate = float(frame_rate)
        self.byte_track, self._sv = _byte_track(track_activation_threshold=track_thr, lost_track_buffer=lost_buffer,
                                                minimum_matching_threshold=match_thr, frame_rate=self.frame_rate)

    def update(self, results: Results) -> Results:
        """`results` (one frame) with track_ids (D,) int64: each detection's track, -1 for none."""
        d = len(results)
        keep = nms(results.boxes.float(), results.scores.float(), DUPLICATE_IOU).numpy()  # (K,) one per object
        detections = self._sv.Detections(xyxy=results.boxes.numpy().astype(np.float32).reshape(d, 4)[keep],
                                          confidence=results.scores.numpy().astype(np.float32)[keep],
                                          class_id=results.labels.numpy().astype(int)[keep],
                                          data={"index": keep})
        tracked = self.byte_track.update_with_detections(detections)  # the tracked subset, with tracker_id
        ids = torch.full((d,), -1, dtype=torch.int64)  # (D,)
        if len(tracked):
            ids[torch.as_tensor(tracked.data["index"], dtype=torch.int64)] = torch.as_tensor(
                tracked.tracker_id, dtype=torch.int64)
        return Results(boxes=results.boxes, scores=results.scores, labels=results.labels, names=results.names,
                       category_ids=results.category_ids, orig_size=results.orig_size, path=results.path,
                       track_ids=ids)


# ----------------------------------------------------------------------------- measures


def id_measures(truth: Sequence[tuple[Sequence[int], np.ndarray]], predicted: Sequence[tuple[Sequence[int], np.ndarray]],
                *, iou_thr: float = 0.5) -> dict[str, float]:
    """IDF1 (Ristani et al. 2016) and identity switches (CLEAR MOT) of a tracker's output.

    `truth` / `predicted`: per frame (T of each, aligned) the ids (G,) / (D,) and boxes (G, 4) /
    (D, 4) x1y1x2y2. A truth and a predicted box correspond when their IoU >= iou_thr.
    IDF1 = 2 IDTP / (2 IDTP + IDFP + IDFN), IDTP the corresponding (truth, predicted) boxes under
    the one-to-one pairing of truth ids to predicted ids (Hungarian, over whole trajectories) that
    has the most of them; IDFP, IDFN the predicted, truth boxes left out.
    An id switch: a truth object matched in a frame (one-to-one by IoU in that frame) to a
    predicted id other than the one it was last matched to.
    Returns {"idf1", "idtp", "idfp", "idfn", "id_switches", "frames", "truth_boxes", "predicted_boxes"}."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truth frames but {len(predicted)} predicted frames")
    pair_frames: dict[tuple[int, int], int] = defaultdict(int)  # (truth id, predicted id) -> frames matched
    last: dict[int, int] = {}
    switches, n_truth, n_pred = 0, 0, 0
    for (t_ids, t_boxes), (p_ids, p_boxes) in zip(truth, predicted):
        t_ids, p_ids = list(t_ids), list(p_ids)
        n_truth, n_pred = n_truth + len(t_ids), n_pred + len(p_ids)
        iou = _iou(np.asarray(t_boxes, np.float64), np.asarray(p_boxes, np.float64))  # (G, D)
        for gi, pj in zip(*np.nonzero(iou >= iou_thr)):
            pair_frames[t_ids[gi], p_ids[pj]] += 1
        for gi, pj in _frame_matches(iou, iou_thr):
            tid, pid = t_ids[gi], p_ids[pj]
            switches += tid in last and last[tid] != pid
            last[tid] = pid
    idtp = _best_identity_pairing(pair_frames)
    idfp, idfn = n_pred - idtp, n_truth - idtp
    denom = 2 * idtp + idfp + idfn
    return {"idf1": 2 * idtp / denom if denom else 1.0, "idtp": idtp, "idfp": idfp, "idfn": idfn,
            "id_switches": switches, "frames": len(truth), "truth_boxes": n_truth, "predicted_boxes": n_pred}


def _iou(t_boxes: np.ndarray, p_boxes: np.ndarray) -> np.ndarray:
    """(G, D) IoU of a frame's truth and predicted boxes."""
    return box_iou(torch.from_numpy(t_boxes.reshape(-1, 4)), torch.from_numpy(p_boxes.reshape(-1, 4))).numpy()


def _frame_matches(iou: np.ndarray, iou_thr: float) -> list[tuple[int, int]]:
    """One-to-one (truth, predicted) index pairs of a frame with IoU >= iou_thr, maximising the IoU sum."""
    if iou.size == 0:
        return []
    rows, cols = linear_sum_assignment(-np.where(iou >= iou_thr, iou, 0.0))
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= iou_thr]


def _best_identity_pairing(pair_frames: dict[tuple[int, int], int]) -> int:
    """The most frames a one-to-one pairing of truth ids to predicted ids agrees on (IDTP)."""
    if not pair_frames:
        return 0
    t_index = {t: i for i, t in enumerate(sorted({t for t, _ in pair_frames}))}
    p_index = {p: j for j, p in enumerate(sorted({p for _, p in pair_frames}))}
    counts = np.zeros((len(t_index), len(p_index)), np.int64)  # (truth ids, predicted ids)
    for (t, p), n in pair_frames.items():
        counts[t_index[t], p_index[p]] = n
    rows, cols = linear_sum_assignment(-counts)
    return int(counts[rows, cols].sum())
