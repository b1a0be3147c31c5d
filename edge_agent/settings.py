"""The agent's one settings object (env prefix ``EDGECAP_AGENT_``, nested groups joined by ``__``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from contracts import AudioCodec
from edge_agent.quota import FullPolicy, Quota
from runtime.settings import Group, MqttSettings, ServiceSettings, models_dir


class InputSettings(Group):
    """Where audio comes from."""

    source: Literal["file", "mic", "stdin"] | None = Field(
        None, description="Audio input: file, mic or stdin (unset: the file if one is given, else the microphone)."
    )
    file: Path | None = Field(None, description="A WAV/FLAC recording to caption instead of a microphone.")
    realtime: bool = Field(True, description="Play the file at real-time pace, as if it were a microphone.")
    chunk_ms: int = Field(30, ge=10, le=1000, description="Capture chunk length in milliseconds.")
    device: str | int | None = Field(
        None, description="Microphone: an input index or a name substring (unset: the system's default input)."
    )
    stdin_rate: int = Field(16000, ge=8000, le=192000, description="Sample rate of raw PCM16 on stdin.")
    stdin_channels: int = Field(1, ge=1, le=8, description="Interleaved channels of raw PCM16 on stdin.")


class FrameSettings(Group):
    """Camera frames, sent through the outbox on the frames topic."""

    enabled: bool = Field(False, description="Capture frames at all.")
    source: str = Field("0", description="A camera index (0), a video file or URL, or a folder of images.")
    fps: float = Field(1.0, gt=0, le=60, description="Frames taken per second (of video time for files).")
    realtime: bool = Field(True, description="Pace files and folders at fps, as if they were a camera.")
    motion: bool = Field(
        False, description="Send only frames where something moved, with the regions that moved (plus keyframes)."
    )
    motion_threshold: float = Field(
        0.002, gt=0, le=1, description="Fraction of the frame's pixels that must change for a frame to have motion."
    )
    motion_pixel_delta: int = Field(25, ge=1, le=255, description="Grey-level change that marks a pixel changed.")
    motion_min_area: float = Field(
        0.0005, ge=0, le=1, description="Moving blobs with fewer changed pixels (fraction of the frame) are ignored."
    )
    motion_background_s: float = Field(
        10.0, ge=0, le=3600,
        description="Time constant of the background motion is measured against (0: the previous frame only).",
    )
    motion_masks: list[tuple[float, float, float, float]] = Field(
        default_factory=list,
        description="Rectangles where motion is ignored (a clock, a tree): [x, y, width, height] fractions 0-1.",
    )
    region_margin: float = Field(
        0.1, ge=0, le=2, description="Padding around each motion region, a fraction of its size on each side."
    )
    region_min_px: int = Field(
        32, ge=1, le=4096, description="Motion regions smaller than this (pixels a side, sent image) grow to it."
    )
    keyframe_s: float | None = Field(
        300.0, gt=0, description="With motion: send a whole frame when none was sent this long (unset: never)."
    )
    summary: bool = Field(
        False, description="Ask the cloud to send each frame's detections back (logged; counted `detections`)."
    )
    jpeg_quality: int = Field(80, ge=1, le=100, description="JPEG quality of sent frames.")
    max_width: int | None = Field(1280, ge=16, description="Wider frames are scaled down to this width (unset: never).")

    @field_validator("motion_masks")
    @classmethod
    def _masks_inside(cls, masks: list[tuple[float, float, float, float]]) -> list[tuple[float, float, float, float]]:
        for k, (x, y, w, h) in enumerate(masks):
            if not (0 <= x < 1 and 0 <= y < 1 and w > 0 and h > 0 and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9):
                raise ValueError(f"motion_masks[{k}] = {[x, y, w, h]}: [x, y, width, height] must be fractions of "
                                 "the frame, inside it (0 <= x, y < 1; width, height > 0; x + width, y + height <= 1)")
        return masks


class VadSettings(Group):
    """How speech is cut into segments."""

    engine: str = Field("webrtc", description="VAD engine plugin (its type_key): webrtc or silero (ONNX).")
    aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode: 0 keeps most audio, 3 cuts most.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Silero: speech probability that starts speech.")
    model_path: Path = Field(
        default_factory=lambda: models_dir() / "vad" / "silero_vad.onnx",
        description="Silero: the ONNX file `edgecap models prepare` puts in <models_dir>/vad/.",
    )
    pre_roll_ms: int = Field(300, ge=0, le=2000, description="Audio kept before the detected onset.")
    hangover_ms: int = Field(600, ge=0, le=5000, description="Silence tolerated inside one segment.")
    pause_ms: int = Field(90, ge=0, le=2000, description="Silence that shows an early draft (0: only at the end).")
    early_window_s: float | None = Field(
        10.0, ge=5, le=30, description="Encoder window of the early draft (s); unset: the full 30 s window."
    )
    min_speech_ms: int = Field(250, ge=0, description="Shorter segments are dropped (counted).")
    max_segment_s: float = Field(28.0, gt=1, le=30, description="Longer speech is cut (Whisper's window is 30 s).")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, engine: str) -> str:
        from edge_agent.vad import ENGINES  # here: loading the settings loads no engine module

        return ENGINES.check(engine)

    @model_validator(mode="after")
    def _pause_within_hangover(self) -> VadSettings:
        if self.pause_ms >= self.hangover_ms:
            raise ValueError(f"vad.pause_ms ({self.pause_ms}) must be below vad.hangover_ms ({self.hangover_ms})")
        return self


class AsrSettings(Group):
    """The on-device captioning model."""

    engine: str = Field("onnx", description="ASR engine plugin (its type_key): onnx (int8 Whisper in ONNX Runtime).")
    model_dir: Path = Field(
        default_factory=lambda: models_dir() / "tiny.en" / "onnx-int8",
        description="Directory made by `edgecap models prepare` (<models_dir>/<model>/onnx-int8).",
    )
    threads: int = Field(2, ge=1, le=64, description="Inference threads.")
    language: str | None = Field(None, description="Language code for multilingual models (None: detect).")
    window_s: float = Field(
        20.0,
        ge=5,
        le=30,
        description="Encoder window (s) for committed drafts; audio longer than it widens it; 30 = Whisper's own.",
    )

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, engine: str) -> str:
        from edge_agent.asr import ENGINES  # here: loading the settings loads no engine module

        return ENGINES.check(engine)


class OutboxSettings(Group):
    """The durable queue between capture and the network."""

    path: Path = Field(Path("edgecap-outbox.sqlite3"), description="SQLite file of the outbox.")
    resend_after_s: float = Field(10.0, gt=0, description="Resend when no receipt came this long (then it doubles).")
    resend_max_s: float = Field(300.0, gt=0, description="Longest wait between resends of one message (backoff cap).")
    max_in_flight: int = Field(50, ge=1, le=1000, description="Messages published but not yet receipted.")
    max_bytes: int = Field(1024**3, ge=1024, description="Quota: most bytes of messages the outbox holds.")
    full_policy: FullPolicy = Field(
        FullPolicy.DROP_OLDEST_AUDIO,
        description="When full: drop_oldest_audio (keep every segment and draft) or refuse_new_audio.",
    )
    min_free_disk_mb: float = Field(200.0, ge=0, description="Quota: also keep this much of the disk free.")

    def quota(self) -> Quota:
        return Quota(max_bytes=self.max_bytes, policy=self.full_policy, min_free_disk_mb=self.min_free_disk_mb)


class CaptionSettings(Group):
    """Where local captions go."""

    dir: Path = Field(Path("captions"), description="Directory for captions.srt, .vtt, .jsonl and .events.jsonl.")
    terminal: bool = Field(True, description="Show captions on stdout: a live view on a TTY, plain lines elsewhere.")
    live_lines: int = Field(8, ge=1, le=100, description="Captions kept on screen by the live terminal view.")
    write_interval_s: float = Field(
        0.5, ge=0, le=60, description="Changes within this long of the last file rewrite are written together."
    )


class AgentSettings(ServiceSettings):
    """Settings of ``edgecap agent``."""

    model_config = SettingsConfigDict(env_prefix="EDGECAP_AGENT_", extra="forbid", env_nested_delimiter="__")

    agent_id: str = Field(
        "agent-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="This device's identity."
    )
    site: str | None = Field(
        None, min_length=1, max_length=64, description="Where this device is (a site name): in its status."
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="MQTT broker.")
    input: InputSettings = Field(default_factory=InputSettings, description="Audio input.")
    frames: FrameSettings = Field(default_factory=FrameSettings, description="Camera frames.")
    vad: VadSettings = Field(default_factory=VadSettings, description="Segmentation.")
    asr: AsrSettings = Field(default_factory=AsrSettings, description="Local captions model.")
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="Durable outbox.")
    captions: CaptionSettings = Field(default_factory=CaptionSettings, description="Local caption outputs.")
    heartbeat_s: float = Field(10.0, gt=0, description="Status heartbeat interval.")
    audio_codec: AudioCodec = Field(
        "opus",
        description="Codec of uploaded audio: opus (Ogg Opus, ~1/10 of PCM16), flac (lossless, ~1/2) or pcm_s16le.",
    )

    @model_validator(mode="after")
    def _identity(self) -> AgentSettings:
        if self.mqtt.username is not None and self.mqtt.username != self.agent_id:
            raise ValueError(f"mqtt.username {self.mqtt.username!r} must equal agent_id {self.agent_id!r}")
        return self
