"""Raw PCM16 (little-endian, interleaved) on standard input, e.g. ``arecord -f S16_LE -r 48000 -c 2 |``.

The stream is converted as it arrives (16 kHz mono, fixed chunks); nothing waits for its end.
"""

from __future__ import annotations

import io
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from edge_agent.capture.base import AudioSource
from edge_agent.capture.convert import PcmConverter

log = logging.getLogger(__name__)

_POLL_S = 0.2


class StdinSource(AudioSource):
    """PCM16 at ``rate`` Hz with ``channels`` interleaved channels from a binary stream (stdin by default)."""

    def __init__(
        self, stream: BinaryIO | None = None, *, rate: int = 16000, channels: int = 1, chunk_ms: int = 30
    ) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.rate, self.channels = rate, channels
        self.block_bytes = max(2 * channels, rate * chunk_ms // 1000 * 2 * channels)
        self._converter = PcmConverter(rate, channels, chunk_ms)
        self.bytes_read = 0
        log.info("input stdin: PCM16 %d Hz, %d channel(s)", rate, channels)

    def chunks(self, stop: threading.Event) -> Iterator[tuple[bytes, float]]:
        """Yield audio as it arrives until the stream ends (EOF) or ``stop`` is set."""
        read = self._reader()
        while not stop.is_set():
            data = read()
            if data is None:  # nothing yet; look at stop again
                continue
            if not data:
                break
            self.bytes_read += len(data)
            yield from self._converter.feed(data, time.time())
        yield from self._converter.flush()
        log.info("stdin: %d bytes read, %s", self.bytes_read, "stopped" if stop.is_set() else "end of stream")

    def _reader(self) -> Callable[[], bytes | None]:
        """A function returning the next bytes: ``b""`` at the end, ``None`` when nothing arrived yet."""
        try:
            fd = self.stream.fileno()
        except (OSError, AttributeError, io.UnsupportedOperation):
            return lambda: self.stream.read(self.block_bytes)

        def poll_read() -> bytes | None:  # a pipe or terminal: wait in small steps so stop is seen
            ready, _, _ = select.select([fd], [], [], _POLL_S)
            return os.read(fd, self.block_bytes) if ready else None

        return poll_read
