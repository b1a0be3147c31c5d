"""What every audio source gives the agent: 16 kHz mono PCM16 chunks stamped with capture times."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator

SAMPLE_RATE = 16000


class CaptureError(RuntimeError):
    """The input cannot be read as audio (or cannot be opened at all); the message says why."""


class AudioSource(ABC):
    """A source of 16 kHz mono PCM16 audio.

    :meth:`chunks` yields ``(pcm16 bytes, capture time of the first sample)``, the time in seconds
    since the Unix epoch, until the input ends or ``stop`` is set. Chunks are ``chunk_ms`` long
    except, possibly, the last one before the end of the input or a gap in it.
    """

    @abstractmethod
    def chunks(self, stop: threading.Event) -> Iterator[tuple[bytes, float]]:
        """Yield audio until the input ends or ``stop`` is set."""

    def close(self) -> None:  # noqa: B027 - optional hook; most sources release everything in chunks()
        """Release the input (a device, a pipe); safe to call more than once."""
