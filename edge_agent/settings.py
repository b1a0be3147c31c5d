"""The agent's one settings object (env prefix ``EDGECAP_AGENT_``, nested groups joined by ``__``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from contracts.settings import Group, MqttSettings, ServiceSettings


class InputSettings(Group):
    """Where audio comes from."""

    file: Path | None = Field(None, description="A WAV/FLAC recording to caption instead of a microphone.")
    realtime: bool = Field(True, description="Play the file at real-time pace, as if it were a microphone.")
    chunk_ms: int = Field(30, ge=10, le=1000, description="Capture chunk length in milliseconds.")


class VadSettings(Group):
    """How speech is cut into segments."""

    engine: str = Field("webrtc", description="VAD engine: webrtc.")
    aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode: 0 keeps most audio, 3 cuts most.")
    pre_roll_ms: int = Field(300, ge=0, le=2000, description="Audio kept before the detected onset.")
    hangover_ms: int = Field(600, ge=0, le=5000, description="Silence tolerated inside one segment.")
    min_speech_ms: int = Field(250, ge=0, description="Shorter segments are dropped (counted).")
    max_segment_s: float = Field(28.0, gt=1, le=30, description="Longer speech is cut (Whisper's window is 30 s).")


class AsrSettings(Group):
    """The on-device captioning model."""

    engine: str = Field("onnx", description="ASR engine: onnx (int8 Whisper in ONNX Runtime).")
    model_dir: Path = Field(
        Path("~/.cache/edgecap/models/tiny.en/onnx-int8").expanduser(),
        description="Directory made by `edgecap models prepare` (…/<model>/onnx-int8).",
    )
    threads: int = Field(2, ge=1, le=64, description="Inference threads.")
    language: str | None = Field(None, description="Language code for multilingual models (None: detect).")


class OutboxSettings(Group):
    """The durable queue between capture and the network."""

    path: Path = Field(Path("edgecap-outbox.sqlite3"), description="SQLite file of the outbox.")
    resend_after_s: float = Field(10.0, gt=0, description="Resend a message when no receipt came this long.")
    max_in_flight: int = Field(50, ge=1, le=1000, description="Messages published but not yet receipted.")


class CaptionSettings(Group):
    """Where local captions go."""

    dir: Path = Field(Path("captions"), description="Directory for captions.srt and captions.jsonl.")
    terminal: bool = Field(True, description="Print each caption to stdout as it appears.")


class AgentSettings(ServiceSettings):
    """Settings of ``edgecap agent``."""

    model_config = SettingsConfigDict(env_prefix="EDGECAP_AGENT_", extra="forbid", env_nested_delimiter="__")

    agent_id: str = Field(
        "agent-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="This device's identity."
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="MQTT broker.")
    input: InputSettings = Field(default_factory=InputSettings, description="Audio input.")
    vad: VadSettings = Field(default_factory=VadSettings, description="Segmentation.")
    asr: AsrSettings = Field(default_factory=AsrSettings, description="Local captions model.")
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="Durable outbox.")
    captions: CaptionSettings = Field(default_factory=CaptionSettings, description="Local caption outputs.")
    heartbeat_s: float = Field(10.0, gt=0, description="Status heartbeat interval.")

    @model_validator(mode="after")
    def _identity(self) -> AgentSettings:
        if self.mqtt.username is not None and self.mqtt.username != self.agent_id:
            raise ValueError(f"mqtt.username {self.mqtt.username!r} must equal agent_id {self.agent_id!r}")
        return self
