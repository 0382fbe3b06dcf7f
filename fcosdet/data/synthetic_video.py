"""A video of the demo's shapes moving on known paths, with ground-truth boxes and ids, to test
video prediction and tracking (`fcosdet.data.synthetic` draws the shapes, its backgrounds and
colours; PyAV writes the frames through `fcosdet.deploy.video.VideoWriter`).

Each object keeps its class, colour and outline (one polygon drawn by the shapes generator) and
moves in its own horizontal lane, so objects never overlap: x bounces between the frame's
edges at a constant speed, y swings by a few pixels around the lane's centre, and the shape
turns by up to +-20 degrees. The background is fixed; every frame gets fresh sensor noise.
Boxes are measured from each frame's rasterised mask, so they are tight to the drawn pixels.

    truth = write_moving_shapes("shapes.mp4", num_frames=120)   # MovingShapes
    truth.boxes[t], truth.ids[t], truth.labels[t]               # frame t: (G, 4) x1y1x2y2, (G,), (G,)

Dimensions: T frames, G objects (the same G in every frame), H x W a frame.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from fcosdet.data.synthetic import (
    SYNTHETIC_CLASSES,
    _background,
    _luma,
    _rasterize,
    _shape_colour,
    _unit_polygon,
)

SPEED_RANGE = (1.0, 2.5)  # pixels per frame along x
SWING = 4.0  # pixels of vertical swing around the lane's centre


@dataclass(frozen=True)
class _Mover:
    label: int
    polygon: np.ndarray  # (V, 2) unit outline, circumradius about 1
    size: float  # extent in pixels
    colour: np.ndarray  # (3,) float RGB in [0, 1]
    x0: float  # starting centre x
    speed: float  # pixels per frame (signed)
    lane_y: float  # lane centre y
    phase: float  # of the vertical swing and the turn


@dataclass
class MovingShapes:
    """Ground truth of a generated video: per frame the boxes (G, 4) x1y1x2y2, ids (G,) (1..G)
    and labels (G,) in [0, C)."""
    boxes: list[np.ndarray]
    ids: list[np.ndarray]
    labels: list[np.ndarray]
    fps: Fraction
    size: tuple[int, int]  # (H, W)

    def save(self, path: str | Path) -> Path:
        """The truth as JSON: {"fps", "size", "class_names", "frames": [{"frame", "ids", "labels", "boxes"}]}."""
        frames = [{"frame": t, "ids": i.tolist(), "labels": lab.tolist(), "boxes": b.round(2).tolist()}
                  for t, (b, i, lab) in enumerate(zip(self.boxes, self.ids, self.labels))]
        path = Path(path)
        path.write_text(json.dumps({"fps": str(self.fps), "size": list(self.size), "class_names": SYNTHETIC_CLASSES,
                                    "frames": frames}))
        return path


def _movers(rng: np.random.Generator, num_objects: int, image_hw: tuple[int, int]) -> list[_Mover]:
    h, w = image_hw
    lane = h / num_objects
    labels = rng.permutation(len(SYNTHETIC_CLASSES))[:num_objects] if num_objects <= len(SYNTHETIC_CLASSES) \
        else rng.integers(len(SYNTHETIC_CLASSES), size=num_objects)
    movers = []
    for k, label in enumerate(labels.tolist()):
        size = float(min(lane - 2 * SWING - 6, w / 4) * rng.uniform(0.75, 1.0))
        speed = float(rng.uniform(*SPEED_RANGE) * rng.choice([-1.0, 1.0]))
        movers.append(_Mover(label=label, polygon=_unit_polygon(label, rng), size=size, colour=np.zeros(3),
                             x0=float(rng.uniform(size, w - size)), speed=speed, lane_y=(k + 0.5) * lane,
                             phase=float(rng.uniform(0, 2 * np.pi))))
    return movers


def _bounce(x: float, low: float, high: float) -> float:
    """x folded into [low, high] as a ball bouncing between two walls."""
    span = high - low
    u = (x - low) % (2 * span)
    return low + (u if u <= span else 2 * span - u)


def _outline(m: _Mover, t: int, width: int) -> np.ndarray:
    """The mover's polygon (V, 2) in frame t."""
    theta = np.deg2rad(20.0 * np.sin(0.05 * t + m.phase))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = m.polygon @ rot.T * (m.size / 2)  # (V, 2) around the origin
    half = np.abs(pts).max(0)
    cx = _bounce(m.x0 + m.speed * t, half[0] + 1, width - 1 - half[0])
    cy = m.lane_y + SWING * np.sin(0.11 * t + m.phase)
    return pts + np.array([cx, cy])


def moving_shapes_frames(*, num_frames: int, image_size: tuple[int, int] = (192, 192), num_objects: int = 3,
                         seed: int = 0):
    """Yields (image (H, W, 3) uint8, boxes (G, 4), ids (G,), labels (G,)) for each of num_frames frames."""
    rng = np.random.default_rng([seed, 7])
    image_hw = (int(image_size[0]), int(image_size[1]))
    dark = bool(rng.random() < 0.5)
    background = _background(rng, *image_hw, dark)  # (H, W, 3) float32
    bg_luma = _luma(background[::4, ::4].reshape(-1, 3).mean(0))
    movers = [_Mover(**{**m.__dict__, "colour": _shape_colour(rng, m.label, bg_luma, dark, [])})
              for m in _movers(rng, num_objects, image_hw)]
    ids = np.arange(1, len(movers) + 1, dtype=np.int64)  # (G,)
    labels = np.array([m.label for m in movers], np.int64)  # (G,)
    for t in range(num_frames):
        image = background.copy()
        boxes = []
        for m in movers:
            mask, region, box = _rasterize(_outline(m, t, image_hw[1]), image_hw)
            image[region][mask] = m.colour
            boxes.append(box)
        image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(0.05)
        pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        yield pixels, np.array(boxes, np.float32).reshape(-1, 4), ids, labels


def write_moving_shapes(path: str | Path, *, num_frames: int = 120, image_size: tuple[int, int] = (192, 192),
                        num_objects: int = 3, fps: int | Fraction = 30, seed: int = 0,
                        codec: str | None = None) -> MovingShapes:
    """Writes the video (codec: `browser_codec()`'s by default, e.g. "libx264") and returns its truth."""
    from fcosdet.deploy.video import VideoWriter

    truth = MovingShapes(boxes=[], ids=[], labels=[], fps=Fraction(fps), size=(int(image_size[0]), int(image_size[1])))
    with VideoWriter(path, fps=Fraction(fps), width=truth.size[1], height=truth.size[0], codec=codec) as writer:
        for pixels, boxes, ids, labels in moving_shapes_frames(num_frames=num_frames, image_size=image_size,
                                                               num_objects=num_objects, seed=seed):
            writer.write(pixels)
            truth.boxes.append(boxes)
            truth.ids.append(ids)
            truth.labels.append(labels)
    return truth
