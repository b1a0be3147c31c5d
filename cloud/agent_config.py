"""Configuration sent to running agents: built and checked here, produced to ``edgecap.config``.

Two callers share it, so that both send the same thing the same way: the operator command
``edgecap config set`` and the dashboard's ``POST /api/agents/{agent_id}/config``. A configuration
is one :class:`~contracts.AgentConfig`, keyed by its agent id (one agent's configurations stay in
order), produced idempotently with ``acks=all``; a caller hears back only once Kafka confirmed it.
The bridge publishes it retained on the agent's ``config`` topic, and the agent applies it only if
its ``version`` is greater than the last one it applied. The version is therefore the time in
microseconds (:func:`new_version`): it grows across operators, dashboards and restarts without any
shared counter; within one process it also grows when two are made in the same microsecond.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import ValidationError

from contracts import AgentConfig, Kafka, encode
from contracts.messages import CONFIG_SETTINGS
from runtime.kafka import producer_config
from runtime.settings import KafkaSettings

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigNotSent(RuntimeError):
    """Kafka did not confirm the configuration (refused, or not within the timeout)."""


class ConfigRefused(ValueError):
    """Settings that make no valid configuration; ``detail`` says which and why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


_version_lock = threading.Lock()
_last_version = 0


def new_version() -> int:
    """A configuration version: the time in microseconds, above any this process made before."""
    global _last_version
    with _version_lock:
        _last_version = max(time.time_ns() // 1000, _last_version + 1)
        return _last_version


def new_config(agent_id: str, changes: Mapping[str, Any], version: int | None = None) -> AgentConfig:
    """The configuration that sets ``changes`` (any of ``muted``, ``heartbeat_s``,
    ``vad_aggressiveness``, ``log_level``; None leaves a setting as it is) on ``agent_id``, with
    ``version`` or else :func:`new_version`. :class:`ConfigRefused` for unknown settings, nothing
    to set, or values out of range (the reasons of every field at once)."""
    unknown = sorted(set(changes) - set(CONFIG_SETTINGS))
    if unknown:
        raise ConfigRefused(f"unknown settings: {', '.join(unknown)} (known: {', '.join(CONFIG_SETTINGS)})")
    settings = {name: value for name, value in changes.items() if value is not None}
    if not settings:
        raise ConfigRefused(f"nothing to set: give any of {', '.join(CONFIG_SETTINGS)}")
    try:
        return AgentConfig(
            agent_id=agent_id,
            version=version if version is not None else new_version(),
            issued_at=time.time(),
            **settings,
        )
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigRefused(f"invalid configuration: {reasons}") from exc


def send_config(kafka: KafkaSettings, config: AgentConfig, timeout_s: float = 10) -> None:
    """Produce ``config`` to ``edgecap.config`` keyed by its agent id; raise :class:`ConfigNotSent`
    unless Kafka confirmed it (``acks=all``, idempotent) within ``timeout_s``. A timeout does not
    prove it was not written: sending again with a newer version is always safe."""
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    try:
        producer = Producer(
            producer_config(
                kafka,
                **{
                    "logger": logging.getLogger("cloud.kafka.producer"),
                    "linger.ms": 0,
                    "delivery.timeout.ms": max(1000, int(timeout_s * 1000)),  # then it fails, not lingers
                },
            )
        )
        producer.produce(
            Kafka.CONFIG.value, key=config.agent_id.encode("utf-8"), value=encode(config), on_delivery=on_delivery
        )
    except KafkaException as exc:  # a bad librdkafka property, say
        raise ConfigNotSent(f"cannot produce config v{config.version} for {config.agent_id}: {exc}") from exc
    left = producer.flush(timeout_s)
    if errors:
        raise ConfigNotSent(f"Kafka refused config v{config.version} for {config.agent_id}: {errors[0]}")
    if left:
        raise ConfigNotSent(
            f"config v{config.version} for {config.agent_id} not confirmed by Kafka "
            f"({kafka.bootstrap_servers}) within {timeout_s:g} s"
        )
    log.debug("config v%d for %s confirmed by Kafka", config.version, config.agent_id)
