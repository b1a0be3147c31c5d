"""Audio capture: streaming resampling, raw PCM on stdin, and microphones (a fake PyAudio).

pyaudio needs a sound card, so the microphone runs against :class:`FakePyAudio`, which has the
methods of ``pyaudio.PyAudio`` the microphone uses and fails the way PortAudio does when a device
is unplugged (``OSError`` from ``read`` and ``open``, and the device gone from the listing).
"""

from __future__ import annotations

import importlib.util
import io
import os
import threading
from typing import Any

import numpy as np
import pytest

from devtools import SAMPLES_DIR
from edge_agent.capture import (
    SAMPLE_RATE,
    CaptureError,
    FileSource,
    StdinSource,
    StreamResampler,
    open_source,
    resample,
)
from edge_agent.capture.convert import PcmConverter
from edge_agent.capture.microphone import PA_INT16, Microphone, list_devices, select_device
from edge_agent.settings import InputSettings

SAMPLE = SAMPLES_DIR / "sample.wav"


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum)) * rate / x.size


def pcm_of(chunks: list[tuple[bytes, float]]) -> np.ndarray:
    return np.frombuffer(b"".join(c for c, _ in chunks), dtype=np.int16)


# --- streaming resampler -------------------------------------------------------------------


@pytest.mark.parametrize("src", [44100, 48000, 8000, 22050])
def test_stream_resampler_chunked_equals_whole_signal(src: int) -> None:
    x = tone(1000, src, 1.0)
    whole = StreamResampler(src, SAMPLE_RATE)
    once = np.concatenate([whole.process(x), whole.flush()])
    chunked = StreamResampler(src, SAMPLE_RATE)
    rng = np.random.default_rng(7)
    pieces, i = [], 0
    while i < x.size:  # ragged chunks, down to a single sample
        n = int(rng.integers(1, 1500))
        pieces.append(chunked.process(x[i : i + n]))
        i += n
    pieces.append(chunked.flush())
    streamed = np.concatenate(pieces)

    assert streamed.size == once.size == SAMPLE_RATE  # 1 s in, 1 s out
    np.testing.assert_allclose(streamed, once, atol=1e-12)  # no clicks at chunk boundaries
    # and it is the band-limited signal: matches the whole-signal FFT resample away from the edges
    reference = resample(x, src, SAMPLE_RATE)
    assert np.abs(streamed[400:-400] - reference[400:-400]).max() < 1e-3
    assert abs(peak_hz(streamed, SAMPLE_RATE) - 1000) < 2
    assert np.abs(streamed[400:-400]).max() == pytest.approx(0.5, abs=0.01)


def test_stream_resampler_removes_what_16k_cannot_carry() -> None:
    x = tone(11000, 48000, 0.5)  # above 8 kHz: must not alias into the speech band
    r = StreamResampler(48000, SAMPLE_RATE)
    y = np.concatenate([r.process(x), r.flush()])
    assert np.abs(y[200:-200]).max() < 0.01


# --- stdin ---------------------------------------------------------------------------------


def stereo_8k_pcm(seconds: float) -> tuple[bytes, np.ndarray]:
    left, right = tone(440, 8000, seconds, 0.6), tone(440, 8000, seconds, 0.2)
    frames = np.stack([left, right], axis=1)
    return np.round(frames * 32767).astype("<i2").tobytes(), (left + right) / 2


def test_stdin_pipe_8k_stereo_streams_16k_mono() -> None:
    raw, mono = stereo_8k_pcm(1.0)
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as w:
            for i in range(0, len(raw), 333):  # odd sizes: frames split across writes
                w.write(raw[i : i + 333])

    thread = threading.Thread(target=writer)
    thread.start()
    with os.fdopen(read_fd, "rb") as r:
        source = StdinSource(r, rate=8000, channels=2, chunk_ms=30)
        chunks = list(source.chunks(threading.Event()))
    thread.join()

    assert all(len(c) == 480 * 2 for c, _ in chunks[:-1])  # 30 ms chunks at 16 kHz
    out = pcm_of(chunks).astype(np.float64) / 32768
    assert out.size == 16000  # 8000 frames at 8 kHz -> 16000 samples at 16 kHz
    assert abs(peak_hz(out, SAMPLE_RATE) - 440) < 2
    expected = resample(mono, 8000, SAMPLE_RATE)
    assert np.abs(out[200:-200] - expected[200:-200]).max() < 2e-3  # the mix of both channels
    times = [t for _, t in chunks]
    assert np.allclose(np.diff(times), 0.03, atol=1e-9)  # one continuous capture clock


def test_stdin_file_object_and_stop() -> None:
    raw, _ = stereo_8k_pcm(0.5)
    chunks = list(StdinSource(io.BytesIO(raw), rate=8000, channels=2).chunks(threading.Event()))
    assert pcm_of(chunks).size == 8000

    read_fd, write_fd = os.pipe()  # a writer that never writes: stop must still end the source
    stop = threading.Event()
    stop.set()
    with os.fdopen(read_fd, "rb") as r:
        assert list(StdinSource(r).chunks(stop)) == []
    os.close(write_fd)


def test_converter_reanchors_capture_times_after_a_gap() -> None:
    conv = PcmConverter(16000, 1, 30)
    block = np.zeros(480, dtype="<i2").tobytes()
    first = conv.feed(block, 100.03)
    late = conv.feed(block, 105.0)  # arrived 5 s after its nominal time: the input paused
    assert first == [(block, pytest.approx(100.0))]
    assert late[-1][1] == pytest.approx(104.97) and conv.gaps == 1


# --- microphone (fake PyAudio) -------------------------------------------------------------


class FakeWorld:
    """The sound hardware the fake PyAudio instances see; a device can be unplugged for a while."""

    def __init__(self, devices: list[dict[str, Any]], freq: float = 1000.0) -> None:
        self.devices = devices
        self.freq = freq
        self.reads = 0
        self.lose_after_reads: int | None = None  # unplug the opened device after this many reads
        self.absent_for_opens = 0  # it stays unplugged for this many PyAudio instances
        self.unplugged: str | None = None
        self.instances = 0
        self.opened: list[tuple[int, int]] = []  # (rate, channels) of every open

    def visible(self) -> list[dict[str, Any]]:
        return [d for d in self.devices if d["name"] != self.unplugged]


class FakeStream:
    def __init__(self, world: FakeWorld, device: dict[str, Any], rate: int, channels: int) -> None:
        self.world, self.device, self.rate, self.channels = world, device, rate, channels
        self.position = 0
        self.closed = False

    def read(self, num_frames: int, exception_on_overflow: bool = True) -> bytes:
        world = self.world
        if self.closed or world.unplugged == self.device["name"]:
            raise OSError(-9999, "Unanticipated host error")
        world.reads += 1
        if world.lose_after_reads is not None and world.reads > world.lose_after_reads:
            world.lose_after_reads = None
            world.unplugged = self.device["name"]
            raise OSError(-9999, "Unanticipated host error")
        t = (self.position + np.arange(num_frames)) / self.rate
        self.position += num_frames
        wave = 0.5 * np.sin(2 * np.pi * world.freq * t)
        return np.round(np.repeat(wave[:, None], self.channels, axis=1) * 32767).astype("<i2").tobytes()

    def stop_stream(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakePyAudio:
    """``pyaudio.PyAudio``'s interface over a :class:`FakeWorld`; devices are enumerated at creation."""

    def __init__(self, world: FakeWorld) -> None:
        self.world = world
        world.instances += 1
        if world.unplugged is not None:
            if world.absent_for_opens <= 0:
                world.unplugged = None  # plugged back in
            world.absent_for_opens -= 1
        self.devices = [dict(d, index=i) for i, d in enumerate(world.visible())]

    def get_device_count(self) -> int:
        return len(self.devices)

    def get_device_info_by_index(self, device_index: int) -> dict[str, Any]:
        if not 0 <= device_index < len(self.devices):
            raise OSError(-9996, "Invalid device")
        d = self.devices[device_index]
        return {"index": d["index"], "name": d["name"], "maxInputChannels": d["channels"], "maxOutputChannels": 0,
                "defaultSampleRate": float(d["rate"]), "hostApi": 0}

    def get_default_input_device_info(self) -> dict[str, Any]:
        inputs = [d for d in self.devices if d["channels"] > 0]
        if not inputs:
            raise OSError(-9996, "No Default Input Device Available")
        return self.get_device_info_by_index(inputs[-1]["index"])

    def is_format_supported(self, rate: float, input_device: int | None = None, input_channels: int | None = None,
                            input_format: int | None = None) -> bool:
        d = self.devices[input_device or 0]
        if int(rate) not in d.get("rates", (d["rate"],)) or (input_channels or 1) > d["channels"]:
            raise ValueError("Invalid sample rate", -9997)
        assert input_format == PA_INT16
        return True

    def open(self, *, format: int, channels: int, rate: int, input: bool, input_device_index: int,
             frames_per_buffer: int) -> FakeStream:
        d = self.devices[input_device_index]
        if self.world.unplugged == d["name"]:
            raise OSError(-9996, "Invalid input device (no default output device)")
        self.world.opened.append((rate, channels))
        return FakeStream(self.world, d, rate, channels)

    def terminate(self) -> None:
        pass


def make_world(**kw: Any) -> FakeWorld:
    return FakeWorld(
        [
            {"name": "HDA Intel PCH: HDMI 0", "rate": 44100, "channels": 0},
            {"name": "USB Audio Device: Mic (hw:2,0)", "rate": 48000, "channels": 1},
            {"name": "Blue Yeti Stereo", "rate": 44100, "channels": 2},
            {"name": "Pi HAT 16k", "rate": 48000, "rates": (16000, 48000), "channels": 1},
        ],
        **kw,
    )


def take(mic: Microphone, seconds: float, until: Any = None) -> list[tuple[bytes, float]]:
    stop = threading.Event()
    out: list[tuple[bytes, float]] = []
    for chunk in mic.chunks(stop):
        out.append(chunk)
        if sum(len(c) for c, _ in out) >= seconds * SAMPLE_RATE * 2 and (until is None or until()):
            stop.set()
    return out


def test_list_and_select_devices() -> None:
    world = make_world()
    devices = list_devices(lambda: FakePyAudio(world))
    assert [d.name for d in devices] == ["USB Audio Device: Mic (hw:2,0)", "Blue Yeti Stereo", "Pi HAT 16k"]
    assert devices[0].index == 1 and devices[0].default_rate == 48000  # outputs are not listed
    pa = FakePyAudio(world)
    assert select_device(pa, "yeti").index == 2  # name substring, any case
    assert select_device(pa, 1).name.startswith("USB") and select_device(pa, "3").name == "Pi HAT 16k"
    assert select_device(pa, None).name == "Pi HAT 16k"  # the system default
    with pytest.raises(CaptureError, match="no input device matches 'webcam'; inputs are 1: USB"):
        select_device(pa, "webcam")
    with pytest.raises(CaptureError, match="matches 0"):
        select_device(pa, 0)  # an output-only device


@pytest.mark.parametrize(
    ("device", "opened"),
    [("Pi HAT", (16000, 1)), ("USB Audio", (48000, 1)), ("Yeti", (44100, 1))],
)
def test_microphone_gives_16k_mono_whatever_the_device_rate(device: str, opened: tuple[int, int]) -> None:
    world = make_world(freq=1000.0)
    mic = Microphone(device, chunk_ms=30, pyaudio_factory=lambda: FakePyAudio(world))
    chunks = take(mic, 1.0)
    assert world.opened == [opened] and mic.format == opened
    assert all(len(c) == 960 for c, _ in chunks[:-1])
    pcm = pcm_of(chunks).astype(np.float64) / 32768
    assert abs(peak_hz(pcm[:16000], SAMPLE_RATE) - 1000) < 2  # the tone survives resampling
    assert np.abs(pcm[400:16000]).max() == pytest.approx(0.5, abs=0.01)


def test_microphone_recovers_when_the_device_returns() -> None:
    world = make_world(freq=440.0)
    world.lose_after_reads = 20  # unplugged after 20 reads of 30 ms ...
    world.absent_for_opens = 3  # ... and missing for the next three attempts to open it
    mic = Microphone("USB", chunk_ms=30, pyaudio_factory=lambda: FakePyAudio(world), retry_min_s=0.001,
                     retry_max_s=0.01)
    chunks = take(mic, 2.0, until=lambda: mic.counters["reconnects"] >= 1)

    assert mic.counters["device_lost"] == 1 and mic.counters["reconnects"] == 1
    assert mic.counters["open_failures"] == 3  # counted and retried, never raised
    assert world.opened == [(48000, 1), (48000, 1)]
    pcm = pcm_of(chunks).astype(np.float64) / 32768
    before = 20 * 1440 // 3  # everything the device gave before it vanished came out (flushed)
    assert pcm.size > before + SAMPLE_RATE
    after = pcm[before + 400 :]
    assert abs(peak_hz(after, SAMPLE_RATE) - 440) < 2  # audio continues after the reconnect
    assert np.abs(after).max() == pytest.approx(0.5, abs=0.01)


def test_microphone_without_pyaudio_names_the_extra() -> None:
    if importlib.util.find_spec("pyaudio") is not None:
        pytest.skip("pyaudio is installed here")
    with pytest.raises(CaptureError, match=r"edgecap\[mic\]"):
        Microphone("USB")
    with pytest.raises(CaptureError, match=r"edgecap\[mic\]"):
        open_source(InputSettings(source="mic"))


# --- choosing a source ---------------------------------------------------------------------


def test_open_source_follows_the_settings() -> None:
    assert isinstance(open_source(InputSettings(file=SAMPLE, realtime=False)), FileSource)
    raw, _ = stereo_8k_pcm(0.1)
    src = open_source(InputSettings(source="stdin", stdin_rate=8000, stdin_channels=2), stdin=io.BytesIO(raw))
    assert isinstance(src, StdinSource) and (src.rate, src.channels) == (8000, 2)
    world = make_world()
    mic = open_source(InputSettings(device="yeti"), pyaudio_factory=lambda: FakePyAudio(world))
    assert isinstance(mic, Microphone) and mic.device == "yeti"  # no file: the microphone
    with pytest.raises(CaptureError, match="input.file is not set"):
        open_source(InputSettings(source="file"))
