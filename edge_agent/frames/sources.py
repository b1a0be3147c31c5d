"""Where frames come from: a camera (device index), a video file or stream URL, or a folder of images.

Each reader yields ``(BGR image, capture time)`` at the configured rate until its input ends (a
file or folder) or ``stop`` is set. Files and folders stand in for a camera: frame ``k`` is stamped
``start + k / fps`` and, with ``realtime``, released only at that wall-clock time. A camera that
fails (unplugged, driver error) is reopened with backoff, counted and logged; capture never crashes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.capture.base import CaptureError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
Picture = tuple[np.ndarray, float]


def load_cv2() -> Any:
    """OpenCV, or a :class:`CaptureError` naming the extra to install."""
    try:
        import cv2
    except ImportError as exc:
        raise CaptureError("camera frames need OpenCV: pip install 'edgecap[camera]'") from exc
    return cv2


class FrameReader:
    """Base of the readers: the rate, the counters, and pacing of stand-in inputs."""

    def __init__(self, fps: float, realtime: bool) -> None:
        self.cv2 = load_cv2()
        self.period = 1.0 / fps
        self.realtime = realtime
        self.counters: Counter[str] = Counter()

    def frames(self, stop: threading.Event) -> Iterator[Picture]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _due(self, at: float, stop: threading.Event) -> bool:
        """Wait (when pacing) until wall-clock ``at``; False if ``stop`` came first."""
        if stop.is_set():
            return False
        delay = at - time.time() if self.realtime else 0.0
        return not (delay > 0 and stop.wait(delay))


class FolderReader(FrameReader):
    """The images of a folder in name order, one per frame period."""

    def __init__(self, folder: Path, fps: float, *, realtime: bool = True) -> None:
        super().__init__(fps, realtime)
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise CaptureError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        log.info("frames from %s: %d images at %.2f fps", folder, len(self.files), fps)

    def frames(self, stop: threading.Event) -> Iterator[Picture]:
        start = time.time()
        for k, path in enumerate(self.files):
            at = start + k * self.period
            if not self._due(at, stop):
                return
            image = self.cv2.imread(str(path), self.cv2.IMREAD_COLOR)
            if image is None:
                self.counters["unreadable"] += 1
                log.warning("skipped %s: not a readable image", path)
                continue
            yield image, at


class VideoReader(FrameReader):
    """Frames of a video file (or stream URL) sampled at ``fps`` of video time."""

    def __init__(self, source: str, fps: float, *, realtime: bool = True) -> None:
        super().__init__(fps, realtime)
        if "://" not in source and not Path(source).is_file():
            raise CaptureError(f"frames source {source!r} is neither a camera index, a folder nor a video file")
        self.source = source

    def frames(self, stop: threading.Event) -> Iterator[Picture]:
        cap = self.cv2.VideoCapture(self.source)
        try:
            if not cap.isOpened():
                self.counters["open_failures"] += 1
                log.error("cannot open video %s", self.source)
                return
            video_fps = cap.get(self.cv2.CAP_PROP_FPS) or 1.0 / self.period
            start, next_t, index = time.time(), 0.0, 0
            while not stop.is_set():
                if not cap.grab():
                    return  # end of the video
                video_t, index = index / video_fps, index + 1
                if video_t + 1e-9 < next_t:
                    continue
                next_t += self.period
                ok, image = cap.retrieve()
                if not ok or image is None:
                    self.counters["unreadable"] += 1
                    continue
                if not self._due(start + video_t, stop):
                    return
                yield image, start + video_t
        finally:
            cap.release()


class CameraReader(FrameReader):
    """A live camera: frames are grabbed continuously (so none is stale) and one kept per period."""

    def __init__(self, index: int, fps: float, *, retry_min_s: float = 0.5, retry_max_s: float = 10.0) -> None:
        super().__init__(fps, realtime=True)
        self.index = index
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s

    def frames(self, stop: threading.Event) -> Iterator[Picture]:
        cap = None
        try:
            while not stop.is_set():
                cap = self._open(stop)
                if cap is None:
                    return
                yield from self._read(cap, stop)
                cap.release()
                cap = None
        finally:
            if cap is not None:
                cap.release()

    def _read(self, cap: Any, stop: threading.Event) -> Iterator[Picture]:
        next_t = time.time()
        while not stop.is_set():
            if not cap.grab():
                self.counters["camera_lost"] += 1
                log.warning("camera %d stopped delivering frames; reopening", self.index)
                return
            now = time.time()
            if now < next_t:
                continue
            next_t = max(next_t + self.period, now)
            ok, image = cap.retrieve()
            if ok and image is not None:
                yield image, now
            else:
                self.counters["unreadable"] += 1

    def _open(self, stop: threading.Event) -> Any:
        delay, attempts = self.retry_min_s, 0
        while not stop.is_set():
            attempts += 1
            cap = self.cv2.VideoCapture(self.index)
            if cap.isOpened():
                if self.counters["camera_lost"]:
                    self.counters["reconnects"] += 1
                log.info("camera %d open (attempt %d)", self.index, attempts)
                return cap
            cap.release()
            self.counters["open_failures"] += 1
            log.warning("camera %d unavailable (attempt %d); retrying in %.1f s", self.index, attempts, delay)
            if stop.wait(delay):
                break
            delay = min(delay * 2, self.retry_max_s)
        return None


def open_reader(source: str, fps: float, *, realtime: bool = True) -> FrameReader:
    """The reader for ``source``: digits are a camera index, a folder is read as images, else a video."""
    if source.strip().isdigit():
        return CameraReader(int(source), fps)
    if Path(source).is_dir():
        return FolderReader(Path(source), fps, realtime=realtime)
    return VideoReader(source, fps, realtime=realtime)
