"""What decoding and encoding cost next to the model in `fcosdet predict VIDEO`, and whether
`Detector.stream` keeps its memory constant (issue 22). Prints one JSON object.

time (a generated video of moving shapes, --size H W, --frames N; one Detector; sides alternating
repeat by repeat, each figure the median over --repeats, in ms per frame):
    decode    VideoReader: PyAV decode + conversion to (H, W, 3) RGB arrays
    model     Detector.predict_batch on the decoded frames, --batch-size at a time (resize,
              normalise, network, decoding + NMS)
    encode    draw the detections (Results.draw) + libx264 encode (VideoWriter) + the JSON line
    pipeline  predict_video end to end: decode and encode threads around the model
share = (decode + encode) / model (the target: <= 0.15); overhead = pipeline / model - 1 (what the
threads do not hide). cpu_share: the same ratio of process CPU time (all threads), which a busy
machine disturbs less than wall time.

memory (a second, small video, --memory-frames frames of 128 x 128, through Detector.stream with
a tiny random model: what is measured is the pipeline, not the network): the process RSS after
--warmup frames and its highest value sampled every 100 frames after that.

    python benchmarks/video_pipeline.py [--model runs/demo/last.pt | --preset fcos_r18_cpu]
        [--size 480 640] [--frames 120] [--repeats 3] [--memory-frames 3000] [--out FILE]

Without --model: --preset's network with random weights (the speed does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report_json import emit  # noqa: E402

from fcosdet.config import Config  # noqa: E402
from fcosdet.data.synthetic import SYNTHETIC_CLASSES  # noqa: E402
from fcosdet.data.synthetic_video import write_moving_shapes  # noqa: E402
from fcosdet.deploy.predictor import Detector  # noqa: E402
from fcosdet.deploy.video import (  # noqa: E402
    FrameResult,
    VideoReader,
    VideoWriter,
    batched,
    browser_codec,
    draw_frame,
    predict_video,
)
from fcosdet.io.model_file import ModelFile  # noqa: E402
from fcosdet.model.build import build_model  # noqa: E402
from fcosdet.presets import preset  # noqa: E402


def random_model_file(cfg: Config, path: Path) -> Path:
    """A model file of `cfg`'s network with random weights, for the shapes' classes."""
    cfg.model.num_classes = len(SYNTHETIC_CLASSES)
    cfg.model.backbone_weights = None
    torch.manual_seed(0)
    model = build_model(cfg.model)
    return ModelFile(model=model.state_dict(), config=cfg.to_dict(), class_names=list(SYNTHETIC_CLASSES)).save(path)


def rss_mb() -> float:
    """This process's resident memory (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def time_sides(video: Path, det: Detector, *, batch_size: int, repeats: int, out_dir: Path) -> dict[str, Any]:
    """ms per frame of each side, the sides alternating within each repeat."""
    with VideoReader(str(video)) as reader:
        frames = list(reader)
    results = [r for batch in batched(frames, batch_size) for r in det.predict_batch([f.image for f in batch])]
    encoder, suffix, _ = browser_codec()
    h, w = frames[0].image.shape[:2]

    def decode() -> None:
        with VideoReader(str(video)) as reader:
            for _ in reader:
                pass

    def model() -> None:
        for batch in batched(frames, batch_size):
            det.predict_batch([f.image for f in batch])

    def encode() -> None:
        with VideoWriter(out_dir / f"encode{suffix}", fps=30, width=w, height=h, codec=encoder) as writer:
            for f, r in zip(frames, results):
                fr = FrameResult(source=str(video), index=f.index, time=f.time, image=f.image, results=r)
                writer.write(draw_frame(fr))
                json.dumps(fr.to_record())

    def pipeline() -> None:
        predict_video(det, str(video), out_dir=out_dir, batch_size=batch_size, show_progress=False)

    sides: dict[str, Callable[[], None]] = {"decode": decode, "model": model, "encode": encode, "pipeline": pipeline}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}  # process CPU time, all threads
    for name, fn in sides.items():  # one warm-up each
        fn()
    for _ in range(repeats):
        for name, fn in sides.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    ms = {name: 1000 * statistics.median(values) / len(frames) for name, values in seconds.items()}
    cpu_ms = {name: 1000 * statistics.median(values) / len(frames) for name, values in cpu.items()}
    return {"ms_per_frame": {k: round(v, 3) for k, v in ms.items()},
            "share": round((ms["decode"] + ms["encode"]) / ms["model"], 4),
            "overhead": round(ms["pipeline"] / ms["model"] - 1, 4), "frames": len(frames),
            "cpu_ms_per_frame": {k: round(v, 3) for k, v in cpu_ms.items()},
            "cpu_share": round((cpu_ms["decode"] + cpu_ms["encode"]) / cpu_ms["model"], 4),
            "runs_ms_per_frame": {k: [round(1000 * s / len(frames), 3) for s in v] for k, v in seconds.items()}}


def memory(det: Detector, video: Path, *, warmup: int, batch_size: int) -> dict[str, Any]:
    """RSS over a long Detector.stream: after `warmup` frames, and the highest sample after that."""
    start, samples, count = None, [], 0
    for frame in det.stream(video, batch_size=batch_size, track=True):
        count += 1
        if count == warmup:
            start = rss_mb()
        elif count > warmup and count % 100 == 0:
            samples.append(rss_mb())
        del frame
    end = rss_mb()
    peak = max(samples + [end])
    return {"frames": count, "warmup_frames": warmup, "rss_mb_after_warmup": round(start, 1),
            "rss_mb_peak_after": round(peak, 1), "rss_mb_end": round(end, 1), "growth_mb": round(peak - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a model file (default: --preset with random weights)")
    ap.add_argument("--preset", default="fcos_r18_cpu")
    ap.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-frames", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or random_model_file(preset(args.preset), tmp / "model.pt")
        det = Detector.from_file(model)
        video = tmp / "shapes.mp4"
        write_moving_shapes(video, num_frames=args.frames, image_size=tuple(args.size), num_objects=4)
        report: dict[str, Any] = {
            "benchmark": "video_pipeline", "model": str(args.model) if args.model else f"{args.preset} (random weights)",
            "model_scale": list(det.config.data.scale), "video": {"size_hw": list(args.size), "frames": args.frames,
                                                                  "codec_out": browser_codec()[2]},
            "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or
            platform.machine(), "time": time_sides(video, det, batch_size=args.batch_size, repeats=args.repeats,
                                                   out_dir=tmp / "out")}
        if args.memory_frames:
            small = tmp / "small.mp4"
            write_moving_shapes(small, num_frames=args.memory_frames, image_size=(128, 128))
            tiny = preset("demo")
            tiny.model.depth, tiny.model.fpn_channels, tiny.model.feat_channels, tiny.model.stacked_convs = 10, 32, 32, 1
            tiny.data.scale = (128, 128)
            tiny_det = Detector.from_file(random_model_file(tiny, tmp / "tiny.pt"))
            report["memory"] = {"video_size_hw": [128, 128], "model": "demo preset at depth 10 / 32 channels, random",
                                "tracking": True, **memory(tiny_det, small, warmup=args.warmup,
                                                           batch_size=args.batch_size)}
    emit(report, args.out)


if __name__ == "__main__":
    main()
