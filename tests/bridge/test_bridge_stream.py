"""The bridge's paho client (:class:`bridge.mqtt.StreamClient`) against a real mosquitto: chunked
reads deliver every packet whole and in order whatever the sizes, and burst acks acknowledge."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import wait_until

from bridge.mqtt import StreamClient
from devtools.brokers import Mosquitto

pytestmark = pytest.mark.integration


def _publish_all(port: int, topic: str, payloads: list[bytes]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{os.getpid()}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(50)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


class _Subscriber:
    """A persistent, manually acking StreamClient session on ``topic``."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.topic = topic
        self.received: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = StreamClient(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        props.ReceiveMaximum = 1000
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append(msg)

    def wait_for(self, n: int, timeout_s: float) -> list[mqtt.MQTTMessage]:
        wait_until(lambda: len(self.received) >= n, timeout_s, f"{n} messages")
        with self.lock:
            return list(self.received)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [bytes(m.payload) for m in self.received]

    def flush(self) -> None:
        """Return once the broker has read everything this client sent so far (its acks): it answers
        one connection's packets in order, so the PUBACK of a message sent now comes after."""
        self.client.publish(f"{self.topic}-flush", b"", qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_chunked_reads_keep_every_packet_whole_and_in_order(mosquitto: Mosquitto) -> None:
    # tiny packets many to a chunk, packets cut at every chunk boundary, packets larger than a chunk
    sizes = [1, 7, 300_000, 2, 65_536, 3, 600_000, 127, 128, 16_383, 16_384, 2_097_152] + [40] * 500
    payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    payloads = [p[:-4] + i.to_bytes(4, "big") if len(p) >= 4 else p for i, p in enumerate(payloads)]
    topic = f"stream/{os.getpid()}/{time.monotonic_ns()}"
    sub = _Subscriber(mosquitto.port, topic, f"stream-sub-{time.monotonic_ns()}")
    try:
        _publish_all(mosquitto.port, topic, payloads)
        got = sub.wait_for(len(payloads), 30)
        assert [bytes(m.payload) for m in got] == payloads
        sub.client.ack_many([m.mid for m in got])
        sub.flush()  # the PUBACKs leave in the network thread
    finally:
        sub.close()

    # acknowledged in one burst: the persistent session has nothing left to redeliver
    again = _Subscriber(mosquitto.port, topic, sub.client._client_id.decode())
    try:
        _publish_all(mosquitto.port, topic, [b"after"])
        wait_until(lambda: b"after" in again.payloads(), 10, "the new message")
        assert again.payloads() == [b"after"]  # a redelivery comes on connecting, before anything new
        again.client.ack_many([m.mid for m in again.received])
    finally:
        again.close()


def test_unacknowledged_messages_are_redelivered(mosquitto: Mosquitto) -> None:
    topic = f"stream/{os.getpid()}/{time.monotonic_ns()}"
    client_id = f"stream-sub-{time.monotonic_ns()}"
    sub = _Subscriber(mosquitto.port, topic, client_id)
    try:
        _publish_all(mosquitto.port, topic, [b"a", b"b", b"c"])
        got = sub.wait_for(3, 10)
        sub.client.ack_many([got[0].mid])  # only the first
        sub.flush()
    finally:
        sub.close()
    again = _Subscriber(mosquitto.port, topic, client_id)
    try:
        redelivered = again.wait_for(2, 10)
        assert [bytes(m.payload) for m in redelivered] == [b"b", b"c"]
        assert all(m.dup for m in redelivered)
        again.client.ack_many([m.mid for m in redelivered])
    finally:
        again.close()


def test_publish_decoding_matches_paho(mosquitto: Mosquitto) -> None:
    """The one-copy decoder takes plain QoS 0/1 messages; messages with properties go paho's way;
    both give what paho gives: topic, payload, QoS, retain, properties."""
    topic = f"stream/{os.getpid()}/{time.monotonic_ns()}/ünï"
    sub = _Subscriber(mosquitto.port, topic, f"stream-sub-{time.monotonic_ns()}")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        with_props = Properties(PacketTypes.PUBLISH)
        with_props.UserProperty = ("k", "v")
        with_props.MessageExpiryInterval = 600
        sent = [
            pub.publish(topic, b"plain qos1", qos=1),
            pub.publish(topic, b"plain qos0", qos=0),
            pub.publish(topic, b"", qos=1),
            pub.publish(topic, b"with properties", qos=1, properties=with_props),
        ]
        for info in sent:
            info.wait_for_publish(10)
        got = sub.wait_for(4, 10)
        assert [(m.payload, m.qos, m.topic, m.retain) for m in got] == [
            (b"plain qos1", 1, topic, False),
            (b"plain qos0", 0, topic, False),
            (b"", 1, topic, False),
            (b"with properties", 1, topic, False),
        ]
        assert all(type(m.payload) is bytes for m in got)
        assert [m.properties for m in got[:3]] == [None, None, None]
        assert got[3].properties is not None and got[3].properties.UserProperty == [("k", "v")]
        sub.client.ack_many([m.mid for m in got if m.qos])
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.close()
