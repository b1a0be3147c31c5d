"""Audio capture: 16 kHz mono PCM16 chunks stamped with the wall-clock time of their first sample.

Sources: a recording (:class:`FileSource`), raw PCM on stdin (:class:`StdinSource`) and a
microphone (:class:`~edge_agent.capture.microphone.Microphone`, needs the ``mic`` extra);
:func:`open_source` builds the one the settings name.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, BinaryIO

from edge_agent.capture.base import SAMPLE_RATE, AudioSource, CaptureError
from edge_agent.capture.files import FileSource, load_audio
from edge_agent.capture.resample import StreamResampler, resample
from edge_agent.capture.stdin import StdinSource

if TYPE_CHECKING:
    from edge_agent.capture.microphone import PyAudioFactory
    from edge_agent.settings import InputSettings

__all__ = [
    "SAMPLE_RATE",
    "AudioSource",
    "CaptureError",
    "FileSource",
    "StdinSource",
    "StreamResampler",
    "load_audio",
    "open_source",
    "resample",
]


def open_source(
    settings: InputSettings, *, stdin: BinaryIO | None = None, pyaudio_factory: PyAudioFactory | None = None
) -> AudioSource:
    """The audio source ``settings`` describe; :class:`CaptureError` if it cannot be opened.

    ``input.source`` unset means the file when ``input.file`` is set, else the microphone.
    """
    kind = settings.source or ("file" if settings.file is not None else "mic")
    if kind == "file":
        if settings.file is None:
            raise CaptureError("input.source is 'file' but input.file is not set")
        return FileSource(settings.file, realtime=settings.realtime, chunk_ms=settings.chunk_ms)
    if kind == "stdin":
        return StdinSource(
            stdin if stdin is not None else sys.stdin.buffer,
            rate=settings.stdin_rate,
            channels=settings.stdin_channels,
            chunk_ms=settings.chunk_ms,
        )
    from edge_agent.capture.microphone import Microphone

    return Microphone(settings.device, chunk_ms=settings.chunk_ms, pyaudio_factory=pyaudio_factory)
