"""MQTT v5 clients of the bridge, built one way: automatic reconnect with backoff, logged and counted."""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.metrics import Metrics
from runtime.mqttauth import apply_credentials
from runtime.settings import MqttSettings

log = logging.getLogger(__name__)

_RECV_BYTES = 256 * 1024
_U16 = struct.Struct("!H")


class StreamClient(mqtt.Client):
    """paho's client reading the socket in large chunks, and acknowledging in bursts.

    paho reads every packet with three ``recv`` calls or more (the command byte, each byte of the
    remaining length, the body) and waits in ``select`` before each packet, which costs more CPU
    than everything else the bridge does with a small message. This client

    - serves those reads from one buffer filled by a single large ``recv``, and keeps reading
      packets while the buffer holds any (``select`` cannot see bytes already taken from the
      socket, so ``loop_read`` must drain them before paho waits again);
    - sends a burst of PUBACKs as one write with one wake-up of the network thread
      (:meth:`ack_many`), where ``ack`` costs a wake-up and a write per message;
    - decodes a QoS 0/1 PUBLISH without properties (what agents send) with one copy of its body
      (:meth:`_handle_publish`): paho's decoder copies the whole packet once per header field, three
      to four copies of a 160 KiB segment. Such a message's ``properties`` is None.

    It overrides paho internals (``_sock_recv``, ``_sock_close``, ``_handle_publish``, ``_in_packet``,
    ``_packet_queue``), so the
    ``bridge`` extra pins paho below its next minor version; the bridge's integration tests run
    every path through it against a real broker.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = memoryview(b"")

    def _sock_recv(self, bufsize: int) -> bytes | memoryview:  # type: ignore[override]
        # paho only indexes, measures and appends what it reads: a view saves copying it out
        if not self._rbuf:
            chunk = super()._sock_recv(max(bufsize, _RECV_BYTES))
            if len(chunk) <= bufsize:
                return chunk  # also b"" (connection closed): paho handles it
            self._rbuf = memoryview(chunk)
        taken, self._rbuf = self._rbuf[:bufsize], self._rbuf[bufsize:]
        return taken

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._rbuf and self._sock is not None:
            rc = super().loop_read(max_packets)
        return rc

    def _sock_close(self) -> None:
        self._rbuf = memoryview(b"")  # bytes of a lost connection never reach the next one
        super()._sock_close()

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        header: int = self._in_packet["command"]
        packet: bytearray = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        if len(packet) < 2 or qos == 2 or self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        pos = 2 + _U16.unpack_from(packet, 0)[0]
        mid = _U16.unpack_from(packet, pos)[0] if qos and len(packet) >= pos + 2 else 0
        pos += 2 if qos else 0
        if len(packet) <= pos or packet[pos] != 0:  # properties (or a malformed packet): paho's way
            return super()._handle_publish()
        message = mqtt.MQTTMessage(mid, bytes(packet[2 : pos - (2 if qos else 0)]))
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.payload = bytes(memoryview(packet)[pos + 1 :])
        message.timestamp = mqtt.time_func()
        self._easy_log(
            mqtt.MQTT_LOG_DEBUG, "Received PUBLISH (d%d, q%d, r%d, m%d), %r, ...  (%d bytes)",
            message.dup, qos, message.retain, mid, message._topic, len(message.payload),
        )
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge QoS 1 messages (manual acks), in this order, in one write."""
        if mids:
            packet = b"".join(struct.pack("!BBH", mqtt.PUBACK, 2, mid) for mid in mids)
            self._packet_queue(mqtt.PUBACK, packet, 0, 0)


class MqttConnection:
    """One paho client running its own network thread (``loop_start``), reconnecting on its own.

    ``on_connected(client)`` runs in paho's network thread after every successful CONNACK (to
    (re)subscribe), ``on_disconnected()`` after every loss. ``connected`` is set while it is up.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        metrics: Metrics,
        *,
        persistent: bool,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        reconnect_s: tuple[int, int] = (1, 30),
        on_connected: Callable[[mqtt.Client], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.metrics = metrics
        self.persistent = persistent
        self.connected = threading.Event()
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._connects = 0
        self.client = StreamClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        apply_credentials(self.client, settings)  # the bridge's own account (and TLS), never a device's
        self.client.suppress_exceptions = True  # a callback's error is logged, never ends the loop
        self.client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        self.client.reconnect_delay_set(*reconnect_s)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self._properties = Properties(PacketTypes.CONNECT)
        if persistent:
            self._properties.SessionExpiryInterval = settings.session_expiry_s
        if receive_maximum is not None:
            self._properties.ReceiveMaximum = receive_maximum

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        self.client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=not self.persistent,
            properties=self._properties,
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect (a persistent session stays on the broker) and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    def _connected(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning(
                "mqtt %s: connection refused by %s:%d: %s",
                self.client_id,
                self.settings.host,
                self.settings.port,
                reason,
            )
            return
        self._connects += 1
        if self._connects > 1:
            self.metrics.reconnects.labels(self.client_id).inc()
        log.info(
            "mqtt %s: connected to %s:%d (session present: %s)",
            self.client_id,
            self.settings.host,
            self.settings.port,
            flags.session_present,
        )
        if self._on_connected is not None:
            self._on_connected(client)
        self.connected.set()

    def _disconnected(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        if self._on_disconnected is not None:
            self._on_disconnected()
        if reason.is_failure:
            log.warning("mqtt %s: connection lost (%s); reconnecting with backoff", self.client_id, reason)
        else:
            log.info("mqtt %s: disconnected", self.client_id)


class Subscription:
    """A persistent, manually acknowledged subscription to ``filters`` (QoS 1) on a connection of its
    own: subscribed again after every reconnect, ``subscribed`` set (and ``gauge`` 1) while the
    broker has granted it. The segments' uplink and the statuses' each run one."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        filters: list[str],
        metrics: Metrics,
        gauge: Any,
        on_message: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None],
        *,
        receive_maximum: int | None = None,
        reconnect_s: tuple[int, int] = (1, 30),
    ) -> None:
        self.filters = filters
        self.gauge = gauge
        self.subscribed = threading.Event()
        self.connection = MqttConnection(
            settings,
            client_id,
            metrics,
            persistent=True,  # what arrives while the bridge is away waits in the session
            manual_ack=True,  # acknowledged by the owner once handled, not before
            receive_maximum=receive_maximum,
            reconnect_s=reconnect_s,
            on_connected=self._subscribe,
            on_disconnected=self._unsubscribed,
        )
        self.connection.client.on_message = on_message
        self.connection.client.on_subscribe = self._subscribed

    def start(self) -> None:
        self.connection.start()

    def stop(self) -> None:
        self.connection.stop()
        self._unsubscribed()

    def ack(self, mids: list[int]) -> None:
        self.connection.client.ack_many(mids)

    # --- paho network thread -------------------------------------------------------------

    def _subscribe(self, client: mqtt.Client) -> None:
        client.subscribe([(f, 1) for f in self.filters])

    def _subscribed(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            log.error("subscription to %s refused: %s", self.filters, reasons)
            return
        log.info("subscribed to %s", self.filters)
        self.subscribed.set()
        self.gauge.set(1)

    def _unsubscribed(self) -> None:
        self.subscribed.clear()
        self.gauge.set(0)
