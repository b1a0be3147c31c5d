"""Every MQTT and Kafka topic name, defined once."""

from __future__ import annotations

from enum import StrEnum

MQTT_PREFIX = "edgecap/v1/agents"


class Up(StrEnum):
    """Device → cloud MQTT channels."""

    SEGMENTS = "segments"  # each segment carries its edge draft: there is no separate drafts channel
    FRAMES = "frames"
    STATUS = "status"


class Down(StrEnum):
    """Cloud → device MQTT channels."""

    RECEIPTS = "receipts"
    CAPTIONS = "captions"
    CONFIG = "config"
    DETECTIONS = "detections"  # what the detector found in a frame, for a device that asked (Frame.summary)


def mqtt_topic(agent_id: str, channel: Up | Down) -> str:
    """The MQTT topic of one agent's channel, e.g. ``edgecap/v1/agents/pi-7/segments``."""
    return f"{MQTT_PREFIX}/{agent_id}/{channel.value}"


def mqtt_filter(channel: Up | Down) -> str:
    """A subscription filter matching ``channel`` of every agent."""
    return f"{MQTT_PREFIX}/+/{channel.value}"


def shared_filter(group: str, channel: Up | Down) -> str:
    """An MQTT v5 shared subscription so that replicas in ``group`` split the load."""
    return f"$share/{group}/{mqtt_filter(channel)}"


def parse_mqtt_topic(topic: str) -> tuple[str, str]:
    """Split an agent topic into ``(agent_id, channel)``; raises ValueError if it is not one."""
    prefix = MQTT_PREFIX + "/"
    if not topic.startswith(prefix):
        raise ValueError(f"not an edgecap agent topic: {topic!r}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"not an edgecap agent topic: {topic!r}")
    return parts[0], parts[1]


class Kafka(StrEnum):
    """Kafka topics; every record is keyed by ``agent_id`` so one agent's records stay in order."""

    SEGMENTS = "edgecap.segments"
    DRAFTS = "edgecap.drafts"
    FRAMES = "edgecap.frames"
    TRANSCRIPTS = "edgecap.transcripts"
    FINALS = "edgecap.finals"
    DETECTIONS = "edgecap.detections"
    STATUS = "edgecap.status"
    CONFIG = "edgecap.config"
    DEADLETTER = "edgecap.deadletter"
