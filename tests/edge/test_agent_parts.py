"""Agent pieces without a network: settings, captions, capture."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from support import REPO

from devtools import SAMPLES_DIR
from edge_agent.capture import FileSource, load_audio, resample
from edge_agent.settings import AgentSettings
from runtime.settings import ConfigError

SAMPLE = SAMPLES_DIR / "sample.wav"


def test_settings_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('agent_id = "pi-7"\n[mqtt]\nport = 1999\n[vad]\naggressiveness = 3\n')
    s = AgentSettings.load(cfg)
    assert (s.agent_id, s.mqtt.port, s.vad.aggressiveness) == ("pi-7", 1999, 3)
    monkeypatch.setenv("EDGECAP_AGENT_MQTT__PORT", "2001")
    assert AgentSettings.load(cfg).mqtt.port == 2001  # environment beats the file


@pytest.mark.parametrize(
    "text",
    ['nonsense = 1\n', '[vad]\naggressiveness = 9\n', 'agent_id = "a/b"\n', '[mqtt]\nusername = "other"\n'],
)
def test_bad_settings_are_refused_with_a_reason(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="AgentSettings"):
        AgentSettings.load(cfg)


def test_check_config_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('agent_id = "pi-9"\n')
    ok = subprocess.run([sys.executable, "-m", "edge_agent", "--config", str(cfg), "--check-config"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["agent_id"] == "pi-9"
    cfg.write_text("bogus = true\n")
    bad = subprocess.run([sys.executable, "-m", "edge_agent", "--config", str(cfg), "--check-config"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "bogus" in bad.stderr


def test_load_audio_converts_rate_and_channels(tmp_path: Path) -> None:
    sf = pytest.importorskip("soundfile")
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "st.flac", np.stack([tone, tone], axis=1), 44100)
    pcm = load_audio(tmp_path / "st.flac")
    assert pcm.dtype == np.int16 and abs(pcm.size - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float32)))
    assert abs(int(np.argmax(spectrum)) * 16000 / pcm.size - 440) < 3
    assert resample(np.ones(10, np.float32), 16000, 16000).size == 10


def test_bad_audio_file_is_a_clear_error(tmp_path: Path) -> None:
    from edge_agent.capture import CaptureError

    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really")
    with pytest.raises(CaptureError, match="cannot read"):
        load_audio(junk)


def test_file_source_chunks_cover_the_file_with_capture_times() -> None:
    src = FileSource(SAMPLE, realtime=False, chunk_ms=30)
    chunks = list(src.chunks(threading.Event()))
    total = sum(len(pcm) for pcm, _ in chunks) // 2
    assert total == src.samples.size
    times = [t for _, t in chunks]
    assert all(b - a == pytest.approx(0.03, abs=1e-6) for a, b in zip(times, times[1:], strict=False))


def test_edge_install_stays_small() -> None:
    """The device needs no torch or transformers: not in the extra, and not imported by the agent."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())
    edge = " ".join(extras["project"]["optional-dependencies"]["edge"]).lower()
    assert "torch" not in edge and "transformers" not in edge
    code = (
        "import sys, edge_agent.agent, edge_agent.__main__; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'sqlalchemy')); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.models
def test_the_agent_commits_opus_by_default_and_the_quota_counts_its_bytes(tmp_path: Path, models_dir: Path) -> None:
    """Issue 9 §6: the real agent on the bundled recording, with no network, stores every segment
    with Ogg Opus audio (its sample count on the wire, so nobody decodes to know its length), and the
    outbox's quota counts the encoded bytes, not the PCM16 it came from."""
    import sqlite3

    from contracts import Segment, decode
    from devtools.brokers import free_port
    from edge_agent.agent import Agent
    from runtime.audiocodec import decode_audio

    settings = AgentSettings.model_validate({
        "agent_id": "pi-opus",
        "mqtt": {"host": "127.0.0.1", "port": free_port()},  # nothing listens: the outbox keeps it all
        "input": {"source": "file", "file": str(SAMPLE), "realtime": False},
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
        "captions": {"dir": str(tmp_path / "captions"), "terminal": False},
    })
    assert settings.audio_codec == "opus"
    agent = Agent(settings)
    try:
        agent.start()
        assert agent.input_done.wait(120), "the recording was not captioned"
    finally:
        agent.stop()
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        rows = db.execute("SELECT audio_bytes, payload FROM outbox ORDER BY seq").fetchall()
    assert len(rows) == agent.captioned >= 3
    for audio_bytes, payload in rows:
        audio = decode(payload, Segment).audio
        assert (audio.codec, audio.sample_rate, audio.channels) == ("opus", 16000, 1)
        assert audio.data[:4] == b"OggS" and audio_bytes == len(audio.data)
        assert audio_bytes < audio.frames * 2 / 8, "Opus is under 1/8 of PCM16"
        assert decode_audio(audio).shape == (audio.frames, 1)


@pytest.mark.parametrize("codec", ["flac", "pcm_s16le"])
def test_the_audio_codec_setting(tmp_path: Path, codec: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'audio_codec = "{codec}"\n')
    assert AgentSettings.load(cfg).audio_codec == codec
    cfg.write_text('audio_codec = "mp3"\n')
    with pytest.raises(ConfigError, match="audio_codec"):
        AgentSettings.load(cfg)
