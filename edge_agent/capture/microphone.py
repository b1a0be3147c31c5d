"""Microphones through pyaudio (PortAudio): listing, selection, 16 kHz mono, and surviving unplugging.

The device is opened at 16 kHz mono PCM16 when it can do that, else at its native rate (mono, or
stereo mixed down) with a streaming resampler. When the device disappears (a read or an open
raises ``OSError``, as PortAudio does for a lost USB device), the stream is closed and reopened
with exponential backoff, forever, until it comes back or the agent stops; losses, failed opens
and reconnects are counted and logged. PortAudio enumerates devices only when it starts, so each
attempt starts a fresh ``PyAudio`` instance.

pyaudio is imported only here and only when a microphone is used (``pip install 'edgecap[mic]'``).
Anything with the same methods can stand in for ``pyaudio.PyAudio`` (``pyaudio_factory``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.capture.base import SAMPLE_RATE, AudioSource, CaptureError
from edge_agent.capture.convert import PcmConverter

log = logging.getLogger(__name__)

PA_INT16 = 8  # pyaudio.paInt16 (PortAudio's paInt16 sample format)


class InputStream(Protocol):
    """The part of ``pyaudio.Stream`` used here."""

    def read(self, num_frames: int, exception_on_overflow: bool = True) -> bytes: ...
    def stop_stream(self) -> None: ...
    def close(self) -> None: ...


class PyAudioApi(Protocol):
    """The part of ``pyaudio.PyAudio`` used here."""

    def get_device_count(self) -> int: ...
    def get_device_info_by_index(self, device_index: int) -> dict[str, Any]: ...
    def get_default_input_device_info(self) -> dict[str, Any]: ...
    def is_format_supported(self, rate: float, input_device: int | None = ..., input_channels: int | None = ...,
                            input_format: int | None = ...) -> bool: ...
    def open(self, *args: Any, **kwargs: Any) -> InputStream: ...
    def terminate(self) -> None: ...


PyAudioFactory = Callable[[], PyAudioApi]


@dataclass(frozen=True)
class DeviceInfo:
    """An audio input device as PortAudio lists it."""

    index: int
    name: str
    max_input_channels: int
    default_rate: int


def load_pyaudio() -> PyAudioFactory:
    """``pyaudio.PyAudio``, or a :class:`CaptureError` naming the extra to install."""
    try:
        import pyaudio
    except ImportError as exc:
        raise CaptureError(
            "microphone capture needs pyaudio (and PortAudio): pip install 'edgecap[mic]'"
        ) from exc
    return pyaudio.PyAudio  # type: ignore[no-any-return]


def _input_devices(pa: PyAudioApi) -> list[DeviceInfo]:
    devices = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            devices.append(
                DeviceInfo(int(info.get("index", i)), str(info["name"]), int(info["maxInputChannels"]),
                           int(info["defaultSampleRate"]))
            )
    return devices


def list_devices(factory: PyAudioFactory | None = None) -> list[DeviceInfo]:
    """Every input device (index, name, channels, default rate)."""
    pa = (factory or load_pyaudio())()
    try:
        return _input_devices(pa)
    finally:
        pa.terminate()


def select_device(pa: PyAudioApi, device: str | int | None) -> DeviceInfo:
    """The device chosen by an index (``2``, ``"2"``), a case-insensitive name substring, or ``None``
    (the system's default input); :class:`CaptureError` saying what exists when none matches."""
    devices = _input_devices(pa)
    if not devices:
        raise CaptureError("no audio input device found")
    if device is None:
        try:
            default = int(pa.get_default_input_device_info()["index"])
        except OSError:  # pyaudio raises IOError when there is no default input
            return devices[0]
        return next((d for d in devices if d.index == default), devices[0])
    if isinstance(device, int) or device.strip().isdigit():
        index = int(device)
        found = [d for d in devices if d.index == index]
    else:
        found = [d for d in devices if device.lower() in d.name.lower()]
    if not found:
        names = ", ".join(f"{d.index}: {d.name}" for d in devices)
        raise CaptureError(f"no input device matches {device!r}; inputs are {names}")
    if len(found) > 1:
        log.info("%d inputs match %r; using %d: %s", len(found), device, found[0].index, found[0].name)
    return found[0]


class Microphone(AudioSource):
    """Live audio from one input device, converted to 16 kHz mono PCM16 chunks."""

    def __init__(
        self,
        device: str | int | None = None,
        *,
        chunk_ms: int = 30,
        pyaudio_factory: PyAudioFactory | None = None,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        self.device = device
        self.chunk_ms = chunk_ms
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self._factory = pyaudio_factory or load_pyaudio()
        self.counters: Counter[str] = Counter()
        self.opened: DeviceInfo | None = None
        self.format: tuple[int, int] | None = None  # (rate, channels) of the open stream
        self._pa: PyAudioApi | None = None
        self._stream: InputStream | None = None
        self._lock = threading.Lock()

    def chunks(self, stop: threading.Event) -> Iterator[tuple[bytes, float]]:
        """Yield audio until ``stop``; a lost device is reopened (with backoff) and audio resumes."""
        converter: PcmConverter | None = None
        try:
            while not stop.is_set():
                if self._stream is None:
                    if not self._connect(stop):
                        break
                    assert self.format is not None
                    converter = PcmConverter(*self.format, self.chunk_ms)
                assert self._stream is not None and self.format is not None and converter is not None
                try:
                    data = self._stream.read(self.format[0] * self.chunk_ms // 1000, exception_on_overflow=False)
                except OSError as exc:
                    self.counters["device_lost"] += 1
                    log.warning("microphone %s lost: %s; reopening", self._name(), exc)
                    self.close()
                    yield from converter.flush()
                    continue
                self.counters["reads"] += 1
                yield from converter.feed(data, time.time())
            if converter is not None:
                yield from converter.flush()
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            stream, pa = self._stream, self._pa
            self._stream = self._pa = None
        for action in (getattr(stream, "stop_stream", None), getattr(stream, "close", None),
                       getattr(pa, "terminate", None)):
            if action is None:
                continue
            try:
                action()
            except (OSError, RuntimeError) as exc:  # a vanished device may refuse even to close
                log.debug("closing the microphone: %s", exc)

    def _connect(self, stop: threading.Event) -> bool:
        """Open the device, retrying with backoff until it works (True) or ``stop`` is set (False)."""
        delay = self.retry_min_s
        was_open = self.counters["device_lost"] > 0
        attempts = 0
        while not stop.is_set():
            attempts += 1
            try:
                self._open()
            except (OSError, ValueError, CaptureError) as exc:
                self.counters["open_failures"] += 1
                self.close()
                log.warning("microphone %r unavailable (attempt %d): %s; retrying in %.1f s",
                            self.device, attempts, exc, delay)
                if stop.wait(delay):
                    return False
                delay = min(delay * 2, self.retry_max_s)
                continue
            if was_open:
                self.counters["reconnects"] += 1
                log.info("microphone %s back after %d attempt(s)", self._name(), attempts)
            return True
        return False

    def _open(self) -> None:
        pa = self._factory()
        with self._lock:
            self._pa = pa
        device = select_device(pa, self.device)
        for rate, channels in self._candidates(device):
            try:
                pa.is_format_supported(rate, input_device=device.index, input_channels=channels, input_format=PA_INT16)
            except ValueError:
                continue
            stream = pa.open(format=PA_INT16, channels=channels, rate=rate, input=True,
                             input_device_index=device.index, frames_per_buffer=rate * self.chunk_ms // 1000)
            with self._lock:
                self._stream = stream
            self.opened, self.format = device, (rate, channels)
            log.info("microphone %d (%s) open: %d Hz, %d channel(s)%s", device.index, device.name, rate, channels,
                     "" if rate == SAMPLE_RATE else f", resampled to {SAMPLE_RATE} Hz")
            return
        raise CaptureError(
            f"input {device.name!r} offers PCM16 neither at {SAMPLE_RATE} Hz nor at {device.default_rate} Hz"
        )

    @staticmethod
    def _candidates(device: DeviceInfo) -> list[tuple[int, int]]:
        options = [(SAMPLE_RATE, 1), (device.default_rate, 1), (device.default_rate, min(2, device.max_input_channels))]
        return list(dict.fromkeys(options))

    def _name(self) -> str:
        return f"{self.opened.index} ({self.opened.name})" if self.opened else repr(self.device)
