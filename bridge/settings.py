"""The bridge's one settings object (``EDGECAP_BRIDGE_…`` environment variables or a TOML file)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from contracts.bounds import MAX_RECEIPT_IDS
from contracts.messages import DEFAULT_MAX_BYTES
from runtime.kafka import KAFKA_MAX_RECORD_BYTES
from runtime.settings import KafkaSettings, MqttSettings, ServiceSettings


class BridgeSettings(ServiceSettings):
    """Everything the bridge needs; built once in ``main`` and passed down."""

    model_config = SettingsConfigDict(env_prefix="EDGECAP_BRIDGE_", extra="forbid", env_nested_delimiter="__")

    mqtt: MqttSettings = Field(
        default_factory=lambda: MqttSettings.model_validate({}), description="MQTT broker connection."
    )
    kafka: KafkaSettings = Field(
        default_factory=lambda: KafkaSettings.model_validate({"client_id": "edgecap-bridge"}),
        description="Kafka connection.",
    )
    client_id: str = Field(
        "edgecap-bridge-0", min_length=1, description="MQTT client id of the uplink (persistent) session."
    )
    shared_group: str = Field(
        "edgecap-bridge", min_length=1, description="MQTT v5 shared-subscription group of bridge replicas."
    )
    max_message_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1024, description="Largest accepted MQTT payload.")
    kafka_max_record_bytes: int = Field(
        KAFKA_MAX_RECORD_BYTES,
        ge=16 * 1024,
        le=1_000_000_000,
        description=(
            "Largest Kafka record the bridge produces: the broker's (or topic's) message.max.bytes, Apache "
            "Kafka's default unless set. A segment or frame whose record would be larger is refused as "
            "too_large; the producer's own message.max.bytes is set to it too."
        ),
    )
    allowed_sample_rates: list[int] = Field(
        default_factory=lambda: [16000], min_length=1, description="Sample rates accepted in segments."
    )
    max_audio_s: float = Field(30.0, gt=0, description="Longest accepted segment audio, in seconds.")
    max_frame_side: int = Field(4096, ge=16, le=8192, description="Largest accepted frame width or height, in pixels.")
    max_frame_bytes: int = Field(
        3 * 1024 * 1024, ge=1024, description="Largest accepted JPEG in a frame, in bytes (before base64)."
    )
    max_status_bytes: int = Field(
        4096,
        ge=1024,
        le=16_000,  # with its key and framing, a status record always fits the smallest kafka_max_record_bytes
        description="Largest accepted agent status (heartbeat or last will), in bytes; a larger one is refused.",
    )
    max_in_flight: int = Field(
        500, ge=1, le=65535, description="Messages produced to Kafka but not yet confirmed, at most."
    )
    receipt_interval_ms: int = Field(20, ge=1, description="How long a receipt batch may wait before it is sent.")
    receipt_max_ids: int = Field(
        100, ge=1, le=MAX_RECEIPT_IDS, description="A receipt is sent at once when it lists this many ids."
    )
    dedup_window: int = Field(10_000, ge=1, description="How many recent segment ids are remembered for duplicates.")
    deadletter_payload_bytes: int = Field(
        64 * 1024,
        ge=0,
        description=(
            "Refused payloads are truncated to this many bytes in dead letters (to fewer where the dead letter "
            "would exceed kafka_max_record_bytes)."
        ),
    )
    linger_ms: int = Field(5, ge=0, description="Producer batching delay (librdkafka linger.ms).")
    compression: str = Field("lz4", description="Producer compression codec (none, gzip, snappy, lz4, zstd).")
    kafka_requests_in_flight: int = Field(
        1,
        ge=1,
        le=5,
        description=(
            "Produce requests in flight per Kafka connection. 1 (default) keeps every agent's order even "
            "against a broker that loses an earlier batch and takes a later one; Apache Kafka's idempotence "
            "already guarantees that, so up to 5 is safe there and a little faster."
        ),
    )
    delivery_timeout_ms: int = Field(
        60_000, ge=1000, description="How long Kafka may take to confirm a record before it counts as failed."
    )
    retry_backoff_min_ms: int = Field(
        500, ge=1, description="Wait before producing failed records again (doubles each round up to the maximum)."
    )
    retry_backoff_max_ms: int = Field(10_000, ge=1, description="Longest wait between retry rounds.")
    downlink: bool = Field(True, description="Carry finals from Kafka down to the agents.")
    downlink_group: str = Field("edgecap-bridge-downlink", description="Kafka consumer group of the downlink.")
    topic_partitions: int = Field(
        6, ge=1, le=1000, description="Partitions of the downlink's topics when the bridge creates them (missing)."
    )
    downlink_session_timeout_ms: int = Field(
        6000, ge=1000, description="Kafka consumer session timeout of the downlink."
    )
    downlink_publish_timeout_s: float = Field(
        10.0, gt=0, description="How long a caption publish may wait for the broker's acknowledgement."
    )
    reconnect_min_s: int = Field(1, ge=1, description="First MQTT reconnect delay (doubles up to the maximum).")
    reconnect_max_s: int = Field(30, ge=1, description="Longest MQTT reconnect delay.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 = off.")
    metrics_host: str = Field("0.0.0.0", description="Address the metrics endpoint listens on.")
