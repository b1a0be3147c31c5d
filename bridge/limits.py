"""What fits in one Kafka record, which delivery errors can never succeed, and dead letters that fit.

Apache Kafka refuses a record batch larger than the broker's (or topic's) ``message.max.bytes``,
1,048,588 bytes unless set; librdkafka refuses at ``produce()`` a record whose key and value, with
36 bytes of record framing, exceed its own ``message.max.bytes``. The bridge counts the 61-byte
header of a batch that would carry the record alone as well, so a record it lets through fits both
(compression only makes the batch smaller).

A delivery error is either transient (the broker is away, a leader moves, a request timed out: the
bridge retries it, in order, until Kafka confirms) or permanent: the same record would be refused
again however often it is produced (too large, not authorized, invalid). A permanent one is
dead-lettered with its reason and the agent learns it from its receipt, instead of holding every
agent's records behind it forever. An error not known to be permanent is treated as transient:
retrying a record that cannot succeed stalls the flow, but giving up on one that could loses it.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from contracts import Reason, encode
from runtime.kafka import dead_letter

RECORD_FRAMING_BYTES = 36
"""librdkafka's upper bound on a v2 record's own framing (length, attributes, deltas, lengths)."""
BATCH_HEADER_BYTES = 61
"""The header of a v2 record batch, which the broker counts against its limit."""

_PERMANENT: dict[int, Reason] = {
    KafkaError.MSG_SIZE_TOO_LARGE: Reason.TOO_LARGE,  # the client's check at produce() or the broker's
    KafkaError.INVALID_MSG_SIZE: Reason.TOO_LARGE,
    KafkaError.RECORD_LIST_TOO_LARGE: Reason.TOO_LARGE,  # larger than a log segment
    KafkaError.TOPIC_AUTHORIZATION_FAILED: Reason.KAFKA_REFUSED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: Reason.KAFKA_REFUSED,  # idempotent writes not granted
    KafkaError.INVALID_RECORD: Reason.KAFKA_REFUSED,
    KafkaError.INVALID_MSG: Reason.KAFKA_REFUSED,
    KafkaError.INVALID_TIMESTAMP: Reason.KAFKA_REFUSED,  # the record keeps its timestamp when resent
    KafkaError.TOPIC_EXCEPTION: Reason.KAFKA_REFUSED,  # an invalid topic name
    KafkaError.POLICY_VIOLATION: Reason.KAFKA_REFUSED,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT: Reason.KAFKA_REFUSED,
    KafkaError.UNSUPPORTED_COMPRESSION_TYPE: Reason.KAFKA_REFUSED,
    KafkaError.INVALID_REQUIRED_ACKS: Reason.KAFKA_REFUSED,
}


def record_bytes(key: str | None, value: bytes) -> int:
    """What a record of ``key`` and ``value`` counts against the limit, sent alone in a batch."""
    return BATCH_HEADER_BYTES + RECORD_FRAMING_BYTES + (len(key.encode()) if key else 0) + len(value)


def permanent_reason(err: KafkaError) -> Reason | None:
    """The refusal reason of a delivery error that can never succeed; None for one worth retrying
    (every error not known to be permanent, and any that librdkafka itself calls retriable)."""
    if err.retriable():
        return None
    return _PERMANENT.get(err.code())


def fitted_dead_letter(
    payload: bytes, source: str, agent_id: str | None, reason: Reason, detail: str, keep: int, limit: int
) -> bytes:
    """The encoded dead letter of ``payload`` (at most ``keep`` bytes of it), cut further so that its
    record, keyed by ``agent_id``, fits ``limit``: a dead letter is never itself too large."""
    while True:
        letter = encode(dead_letter(payload, source, agent_id, reason, detail, keep))
        over = record_bytes(agent_id, letter) - limit
        if over <= 0:
            return letter
        if keep == 0:  # texts are bounded by the contract (a few kB), the limit is at least 16 KiB
            raise ValueError(f"a dead letter without payload is {over} bytes over the limit of {limit}")
        keep = max(0, min(keep, len(payload)) - (over * 3 // 4 + 4))  # the payload is base64 in the letter
