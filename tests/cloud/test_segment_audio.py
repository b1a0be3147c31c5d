"""Segment audio kept for playback: in the database or on disk, once, playable, with byte ranges."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient
from support import dashboard_user, make_segment

from cloud.dashboard import create_app
from cloud.settings import DashboardSettings
from cloud.store import Store
from runtime.audiocodec import to_audio


@pytest.mark.parametrize("on_disk", [False, True])
def test_audio_is_kept_once_and_given_back_playable(tmp_path: Path, on_disk: bool) -> None:
    store = Store("sqlite://")
    folder = tmp_path / "audio" if on_disk else None
    pcm = make_segment("pi-1", 0, seconds=0.5)
    assert store.store_audio(pcm, folder) and not store.store_audio(pcm, folder)  # the first copy only
    media, wav = store.segment_audio((pcm.agent_id, pcm.segment_id))  # type: ignore[misc]
    assert media == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 16000 and samples.tobytes() == pcm.audio.data  # raw PCM wrapped, not changed
    signal = (np.sin(np.arange(8000) / 5) * 8000).astype(np.int16)
    opus = make_segment("pi-1", 1).model_copy(update={"audio": to_audio(signal.tobytes(), 16000, 1, "opus")})
    assert store.store_audio(opus, folder)
    media, ogg = store.segment_audio((opus.agent_id, opus.segment_id))  # type: ignore[misc]
    assert media == "audio/ogg" and ogg == opus.audio.data and ogg[:4] == b"OggS"  # as the device sent it
    if folder is not None:
        assert (folder / "pi-1" / f"{opus.segment_id}.ogg").read_bytes() == ogg
    assert store.segment_audio(("pi-1", "nope")) is None
    assert store.purge_audio(time.time() + 1) == 2 and store.segment_audio((pcm.agent_id, pcm.segment_id)) is None
    assert folder is None or not any(folder.rglob("*.ogg"))


def test_the_audio_route_serves_byte_ranges(tmp_path: Path) -> None:
    store = Store("sqlite://")
    segment = make_segment("pi-1", 0, seconds=0.5)
    store.store_audio(segment)
    _, viewer = dashboard_user(store, "viewer")
    client = TestClient(create_app(DashboardSettings(store_url="sqlite://"), store), headers=viewer)
    url = f"/api/segments/pi-1/{segment.segment_id}/audio"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    size = len(whole.content)
    part = client.get(url, headers={"Range": "bytes=10-19"})
    assert (part.status_code, part.content, part.headers["content-range"]) == (
        206, whole.content[10:20], f"bytes 10-19/{size}"
    )  # fmt: skip
    assert client.get(url, headers={"Range": "bytes=-4"}).content == whole.content[-4:]
    assert client.get(url, headers={"Range": f"bytes={size - 2}-"}).content == whole.content[-2:]
    for bad in (f"bytes={size}-", "bytes=5-2", "bytes=-", "items=0-1"):
        refused = client.get(url, headers={"Range": bad})
        assert refused.status_code == 416 and refused.headers["content-range"] == f"bytes */{size}", bad
    assert client.get("/api/segments/pi-1/nope/audio").status_code == 404
