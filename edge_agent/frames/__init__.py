"""Camera frames: a camera, a video file or a folder of images → motion → JPEG (+ regions) → outbox.

OpenCV is imported only when frames are enabled (``pip install 'edgecap[camera]'``).
"""

from edge_agent.frames.capture import MAX_JPEG_BYTES, FrameCapture, encode_jpeg, sent_size
from edge_agent.frames.motion import Motion, MotionDetector
from edge_agent.frames.regions import to_regions
from edge_agent.frames.sources import CameraReader, FolderReader, FrameReader, VideoReader, load_cv2, open_reader

__all__ = [
    "MAX_JPEG_BYTES",
    "CameraReader",
    "FolderReader",
    "FrameCapture",
    "FrameReader",
    "Motion",
    "MotionDetector",
    "VideoReader",
    "encode_jpeg",
    "load_cv2",
    "open_reader",
    "sent_size",
    "to_regions",
]
