"""The detector's speed and agreement, and what motion gating saves on the uplink.

    .venv/bin/python benchmarks/detect.py [--reps 30] [--threads 2] [--models-dir DIR]

Frames: the photographs bundled in scikit-image's wheel (a person, a cat, a cup, a motorcycle...).
Engines on the prepared YOLOv3-tiny (``edgecap models prepare --detector yolov3-tiny``), each with
``--threads`` threads, interleaved pass by pass (the order alternating) so that a busy machine slows
them alike:

- ``opencv_416``: OpenCV's DNN module reading the Darknet files, one frame at a time, 416x416
  input: the anchor (the issue's ~150 ms);
- ``onnx_416``: the ONNX conversion on onnxruntime, one frame at a time, 416x416 input;
- ``onnx_416_batched``: the same, 8 frames per call (latency per frame = call / 8);
- ``onnx_default``: the detector as configured by default (inputs 288 and 352, boxes of both
  suppressed together), one frame at a time.

Latency per frame is the wall time of ``Detector.detect`` (letterbox, inference, decoding,
suppression), p50 and p95 over ``--reps`` passes over the frames; frames per second from the p50.
``speedup_vs_opencv``: p50 of the anchor over each engine's. ``agreement``: boxes of ``onnx_416``
matched to ``opencv_416``'s (same class, best IoU): mean IoU and how many match at IoU >= 0.9.

Motion gating: a synthetic 60 s scene at 5 fps (still but for sensor noise; an object crosses it for
6 s) through the agent's own frame capture (``FrameCapture``, motion on, its defaults, a keyframe
each ``--keyframe-s``) into a real outbox: JPEG bytes sent per minute vs JPEG-encoding every frame.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runtime.settings import models_dir as default_models_dir  # noqa: E402

PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "horse.png")
BATCH = 8


def photos(cv2: Any) -> list[np.ndarray]:
    import skimage

    folder = Path(skimage.data.__file__).parent
    return [cv2.imread(str(folder / name)) for name in PHOTOS]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def agreement(ours: list[list[Any]], anchor: list[list[Any]]) -> dict[str, Any]:
    ious = []
    for found, reference in zip(ours, anchor, strict=True):
        for box in reference:
            same = [box.iou(b) for b in found if b.class_id == box.class_id]
            ious.append(max(same, default=0.0))
    return {
        "anchor_boxes": len(ious),
        "mean_iou": round(statistics.mean(ious), 4) if ious else None,
        "matched_at_0.9": sum(i >= 0.9 for i in ious),
        "boxes_ours": sum(len(f) for f in ours),
    }


def motion_gating(cv2: Any, keyframe_s: float, seconds: int = 60, fps: int = 5) -> dict[str, Any]:
    """The agent's own frame capture (motion on, defaults) over a synthetic scene, into a real outbox."""
    import tempfile
    import threading

    from contracts import Frame, decode
    from edge_agent.frames import FrameCapture
    from edge_agent.frames.sources import FrameReader
    from edge_agent.outbox import Outbox
    from edge_agent.settings import FrameSettings

    rng = np.random.default_rng(3)
    ys, xs = np.mgrid[0:480, 0:640]
    scene = np.stack([(xs * 0.3 + 40) % 255, (ys * 0.4 + 60) % 255, ((xs + ys) * 0.2 + 90) % 255], -1).astype(np.uint8)
    cv2.rectangle(scene, (80, 300), (260, 440), (30, 120, 200), -1)

    class Scene(FrameReader):
        """Still but for sensor noise; an object crosses it from 20 to 26 s."""

        def frames(self, stop: threading.Event) -> Any:
            for k in range(seconds * fps):
                t = k / fps
                frame = np.clip(scene.astype(np.int16) + rng.normal(0, 2, scene.shape), 0, 255).astype(np.uint8)
                if 20 <= t < 26:
                    cv2.circle(frame, (int(40 + (t - 20) / 6 * 520), 200), 40, (240, 240, 240), -1)
                yield frame, 1_700_000_000.0 + t

    every = 0
    with tempfile.TemporaryDirectory(prefix="edgecap-motion-") as tmp:
        outbox = Outbox(Path(tmp) / "outbox.sqlite3")
        settings = FrameSettings(enabled=True, motion=True, fps=fps, realtime=False, keyframe_s=keyframe_s)
        capture = FrameCapture("bench-cam", settings, outbox, reader=Scene(fps, realtime=False))
        for frame, _ in Scene(fps, realtime=False).frames(threading.Event()):
            every += len(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])[1])
        rng = np.random.default_rng(3)  # the same noise for the gated pass
        capture.run(threading.Event())
        frames = [decode(entry.payload, Frame) for entry in outbox.due(limit=100_000)]
        sent = sum(len(f.image.data) for f in frames)  # JPEG bytes, as for every frame
        outbox.close()
    return {
        "seconds": seconds,
        "fps": fps,
        "keyframe_s": keyframe_s,
        "counters": dict(capture.counters),
        "regions_per_motion_frame": round(
            sum(len(f.regions) for f in frames) / max(1, sum(bool(f.regions) for f in frames)), 2
        ),
        "bytes_per_min_gated": round(sent * 60 / seconds),
        "bytes_per_min_every_frame": round(every * 60 / seconds),
        "saving": round(every / max(sent, 1), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keyframe-s", type=float, default=30.0)
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    args = parser.parse_args()

    import cv2

    from cloud.detect import Crop, DetectSettings, create_detector

    model_dir = Path(args.models_dir).expanduser() / "yolov3-tiny"

    def detector(engine: str, size: int | None) -> Any:
        sizes = {} if size is None else {"input_sizes": [size]}  # None: the default inputs
        return create_detector(
            DetectSettings(engine=engine, model_dir=model_dir, threads=args.threads, max_batch=BATCH, **sizes)
        )

    frames = photos(cv2)
    crops = [Crop(f) for f in frames]
    engines = {
        "opencv_416": detector("opencv", 416),
        "onnx_416": detector("onnx", 416),
        "onnx_default": detector("onnx", None),
    }
    batched = detector("onnx", 416)
    for d in [*engines.values(), batched]:
        d.detect(crops[:1])  # warm up
    latency: dict[str, list[float]] = {n: [] for n in [*engines, "onnx_416_batched"]}
    found: dict[str, list[Any]] = {}
    group = (crops * BATCH)[:BATCH]
    for rep in range(args.reps):
        names = list(engines) if rep % 2 == 0 else list(reversed(engines))
        for name in names:  # an engine's frames together: another's idle threads do not spin meanwhile
            for crop in crops:
                started = time.perf_counter()
                boxes = engines[name].detect([crop])[0]
                latency[name].append(time.perf_counter() - started)
                if rep == 0:
                    found.setdefault(name, []).append(boxes)
        started = time.perf_counter()
        batched.detect(group)
        latency["onnx_416_batched"].append((time.perf_counter() - started) / BATCH)
        if rep == 0:
            print(
                f"pass 1: {', '.join(f'{n} {1000 * statistics.median(v):.0f} ms' for n, v in latency.items())}",
                flush=True,
            )
    figures = {
        n: {
            "p50_ms": round(1000 * statistics.median(v), 1),
            "p95_ms": round(1000 * percentile(v, 95), 1),
            "fps": round(1 / statistics.median(v), 1),
        }
        for n, v in latency.items()
    }
    anchor = figures["opencv_416"]["p50_ms"]
    labels = engines["onnx_default"].labels
    summary = {
        "frames": len(frames),
        "reps": args.reps,
        "threads": args.threads,
        "model_ids": {n: d.model_id for n, d in engines.items()},
        "latency": figures,
        "speedup_vs_opencv": {n: round(anchor / f["p50_ms"], 2) for n, f in figures.items()},
        "agreement_onnx_416_vs_opencv_416": agreement(found["onnx_416"], found["opencv_416"]),
        "found_onnx_default": {
            name: [(labels[b.class_id], round(b.score, 2)) for b in boxes]
            for name, boxes in zip(PHOTOS, found["onnx_default"], strict=True)
        },
        "motion_gating": motion_gating(cv2, args.keyframe_s),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
