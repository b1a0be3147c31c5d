"""The wire codecs of segment audio (issue 9 §6), on real speech: PCM16 and FLAC come back exact,
Opus close to the original, and everything that is not the declared audio is refused by type."""

from __future__ import annotations

import numpy as np
import pytest
from support import REPO

import contracts as c
from cloud.audio import to_float32
from runtime import audiocodec as ac

sf = pytest.importorskip("soundfile")

SAMPLE = REPO / "devtools" / "samples" / "sample.wav"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The bundled recording: real speech, 16 kHz mono int16."""
    samples, rate = sf.read(SAMPLE, dtype="int16")
    assert rate == 16000 and samples.ndim == 1
    return samples


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = ref - decoded.astype(np.float64)
    return float(10 * np.log10((ref**2).sum() / (noise**2).sum()))


@pytest.mark.parametrize("codec", ["pcm_s16le", "flac"])
def test_lossless_codecs_round_trip_exactly(speech: np.ndarray, codec: c.AudioCodec) -> None:
    audio = ac.to_audio(speech.tobytes(), 16000, 1, codec)
    assert audio.codec == codec and audio.samples == speech.size
    assert audio.duration_s == pytest.approx(speech.size / 16000)
    decoded = ac.decode_audio(audio)
    assert decoded.dtype == np.int16 and decoded.shape == (speech.size, 1)
    assert np.array_equal(decoded[:, 0], speech)
    if codec == "flac":
        assert audio.data[:4] == b"fLaC" and len(audio.data) < 0.6 * speech.nbytes


def test_opus_is_small_and_close_to_the_speech(speech: np.ndarray) -> None:
    audio = ac.to_audio(speech.tobytes(), 16000, 1, "opus")
    assert audio.data[:4] == b"OggS"
    seconds = speech.size / 16000
    assert len(audio.data) / seconds < 5_000, "about 25 kbit/s, 1/10 of PCM16 at most"
    decoded = ac.decode_audio(audio)[:, 0]
    assert decoded.shape == speech.shape  # Ogg Opus keeps the exact length (pre-skip, granule position)
    assert np.corrcoef(decoded, speech)[0, 1] > 0.99
    assert snr_db(speech, decoded) > 12


def test_the_message_survives_the_wire_and_the_cloud_reads_it(speech: np.ndarray) -> None:
    """Encoded, sent as JSON, decoded by the contract and turned into Whisper's input by the cloud."""
    for codec in ("opus", "flac", "pcm_s16le"):
        audio = ac.to_audio(speech.tobytes(), 16000, 1, codec)
        wire = c.encode(c.Segment(agent_id="pi-1", segment_id="s-1", seq=1, started_at=1.0, ended_at=2.0, audio=audio))
        received = c.decode(wire, c.Segment).audio
        assert received == audio
        floats = to_float32(received)
        assert floats.dtype == np.float32 and floats.size == speech.size
        assert np.corrcoef(floats, speech)[0, 1] > 0.99


@pytest.mark.parametrize("codec", ["opus", "flac"])
def test_stereo_and_other_rates(speech: np.ndarray, codec: c.AudioCodec) -> None:
    stereo = np.stack([speech, speech // 2], axis=1)
    audio = ac.to_audio(stereo.tobytes(), 48000, 2, codec)
    decoded = ac.decode_audio(audio)
    assert decoded.shape == stereo.shape
    if codec == "flac":
        assert np.array_equal(decoded, stereo)
    assert to_float32(audio).size == round(speech.size / 3)  # mono at 16 kHz


def test_opus_refuses_rates_it_cannot_encode(speech: np.ndarray) -> None:
    with pytest.raises(ac.UnsupportedAudio, match="44100 Hz.*8, 12, 16, 24, 48 kHz"):
        ac.encode(speech.tobytes(), 44100, 1, "opus")
    assert len(ac.encode(speech[:4410].tobytes(), 44100, 1, "flac")) > 0  # FLAC takes any rate
    with pytest.raises(ValueError, match="opus has no sample rate 44100"):
        c.Audio(codec="opus", sample_rate=44100, samples=1, data=b"x")


def test_no_audio_is_no_bytes() -> None:
    for codec in ("opus", "flac", "pcm_s16le"):
        audio = ac.to_audio(b"", 16000, 1, codec)
        assert audio.data == b"" and audio.samples == 0 and ac.decode_audio(audio).shape == (0, 1)


def corruptions(data: bytes) -> dict[str, bytes]:
    middle = len(data) // 2
    return {
        "truncated": data[:middle],
        "bytes flipped": data[:200] + bytes(b ^ 0xFF for b in data[200:600]) + data[600:],
        "not audio": b"hello, world" * 10,
        "empty": b"",
    }


@pytest.mark.parametrize("codec", ["opus", "flac"])
def test_corrupt_payloads_raise_a_typed_error(speech: np.ndarray, codec: c.AudioCodec) -> None:
    data = ac.encode(speech.tobytes(), 16000, 1, codec)
    for name, bad in corruptions(data).items():
        with pytest.raises(ac.CorruptAudio):
            ac.decode(bad, codec, 16000, 1, speech.size)
            pytest.fail(f"{name} {codec} decoded")


def test_audio_that_is_not_what_its_message_declares_is_refused(speech: np.ndarray) -> None:
    pcm = speech.tobytes()
    opus, flac = ac.encode(pcm, 16000, 1, "opus"), ac.encode(pcm, 16000, 1, "flac")
    n = speech.size
    cases = {
        "flac declared opus": (flac, "opus", 16000, 1, n),
        "opus declared flac": (opus, "flac", 16000, 1, n),
        "another rate": (opus, "opus", 48000, 1, n),
        "another channel count": (flac, "flac", 16000, 2, n),
        "fewer samples than declared (a longer limit check passed with a lie)": (opus, "opus", 16000, 1, n + 1),
        "more samples than declared": (flac, "flac", 16000, 1, n // 10),
        "pcm of another length": (pcm, "pcm_s16le", 16000, 1, n - 1),
    }
    for name, (data, codec, rate, channels, samples) in cases.items():
        with pytest.raises(ac.CorruptAudio):
            ac.decode(data, codec, rate, channels, samples)  # type: ignore[arg-type]
            pytest.fail(name)
    # and through the contract: a segment whose samples lie decodes as a message, not as audio
    lie = c.Audio(codec="opus", sample_rate=16000, samples=16000, data=opus)
    assert lie.duration_s == 1.0
    with pytest.raises(ac.AudioCodecError, match="declared"):
        to_float32(lie)


def test_soundfile_loads_only_when_compressed_audio_is_coded() -> None:
    """The bridge never looks inside audio: importing the codec module (or the contracts) and coding
    PCM16 loads no soundfile (libsndfile)."""
    import subprocess
    import sys

    code = (
        "import sys, runtime.audiocodec as ac, bridge.validation; "
        "ac.decode(ac.encode(b'\\x00\\x00', 16000, 1, 'pcm_s16le'), 'pcm_s16le', 16000, 1); "
        "sys.exit('soundfile' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
