"""edgecap contracts: the one definition of wire messages, topics and ids shared by every process."""

from contracts.errors import DecodeError, Reason
from contracts.ids import new_segment_id
from contracts.messages import (
    Audio,
    CloudTranscript,
    DeadLetter,
    Draft,
    Final,
    Frame,
    Image,
    Receipt,
    Rejection,
    Segment,
    Status,
    Transcript,
    TranscriptSegment,
    Word,
    decode,
    encode,
    json_schema,
)
from contracts.topics import Down, Kafka, Up, mqtt_filter, mqtt_topic, parse_mqtt_topic, shared_filter

__all__ = [
    "Audio",
    "CloudTranscript",
    "DeadLetter",
    "DecodeError",
    "Down",
    "Draft",
    "Final",
    "Frame",
    "Image",
    "Kafka",
    "Reason",
    "Receipt",
    "Rejection",
    "Segment",
    "Status",
    "Transcript",
    "TranscriptSegment",
    "Up",
    "Word",
    "decode",
    "encode",
    "json_schema",
    "mqtt_filter",
    "mqtt_topic",
    "new_segment_id",
    "parse_mqtt_topic",
    "shared_filter",
]
