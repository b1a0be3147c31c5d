"""The agent's MQTT link: drains the outbox to the broker and handles what comes back.

Up: outbox entries in ``seq`` order (QoS 1), resent when no receipt arrives in time or after a
reconnect; a retained status with a last will. Down: receipts (the only thing that deletes from
the outbox; a PUBACK does not) and final captions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contracts import DecodeError, Down, Final, Receipt, Status, Up, decode, encode, mqtt_topic
from contracts.settings import MqttSettings
from edge_agent.outbox import Outbox

log = logging.getLogger(__name__)


class MqttLink:
    """One persistent MQTT v5 session of one agent."""

    def __init__(
        self,
        agent_id: str,
        settings: MqttSettings,
        outbox: Outbox,
        *,
        on_final: Callable[[Final], object],
        resend_after_s: float = 10.0,
        max_in_flight: int = 50,
    ) -> None:
        self.agent_id = agent_id
        self.settings = settings
        self.outbox = outbox
        self.on_final = on_final
        self.resend_after_s = resend_after_s
        self.max_in_flight = max_in_flight
        self.counters: Counter[str] = Counter()
        self.connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.agent_id, protocol=mqtt.MQTTv5
        )
        s = self.settings
        if s.username is not None:
            client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        client.will_set(mqtt_topic(self.agent_id, Up.STATUS), self._status(online=False), qos=1, retain=True)
        client.max_inflight_messages_set(self.max_in_flight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        self._client.connect_async(
            self.settings.host, self.settings.port, self.settings.keepalive_s,
            clean_start=False, properties=props,
        )
        self._client.loop_start()
        self._thread = threading.Thread(target=self._publish_loop, name="mqtt-publish", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(5)
        if self.connected.is_set():
            info = self._client.publish(
                mqtt_topic(self.agent_id, Up.STATUS), self._status(online=False), qos=1, retain=True
            )
            info.wait_for_publish(2)
        self._client.disconnect()
        self._client.loop_stop()

    def notify(self) -> None:
        """Something was appended to the outbox: publish it now."""
        self._wake.set()

    # --- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _ud: object, _flags: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT connect refused: %s", reason)
            return
        log.info("connected to MQTT %s:%d as %s", self.settings.host, self.settings.port, self.agent_id)
        self.counters["connects"] += 1
        client.subscribe(
            [(mqtt_topic(self.agent_id, Down.RECEIPTS), 1), (mqtt_topic(self.agent_id, Down.CAPTIONS), 1)]
        )
        client.publish(mqtt_topic(self.agent_id, Up.STATUS), self._status(online=True), qos=1, retain=True)
        self.outbox.mark_all_unsent()  # resend everything unreceipted, in seq order
        self.connected.set()
        self._wake.set()

    def _on_disconnect(self, _c: object, _ud: object, _flags: object, reason: object, _p: object) -> None:
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("MQTT disconnected: %s", reason)
            self.counters["disconnects"] += 1
        self.connected.clear()

    def _on_message(self, _c: object, _ud: object, msg: mqtt.MQTTMessage) -> None:
        try:
            message = decode(bytes(msg.payload))
        except DecodeError as exc:
            self.counters["bad_downlink"] += 1
            log.warning("ignoring bad message on %s: %s", msg.topic, exc)
            return
        if isinstance(message, Receipt) and message.agent_id == self.agent_id:
            self._on_receipt(message)
        elif isinstance(message, Final) and message.agent_id == self.agent_id:
            self.counters["finals"] += 1
            self.on_final(message)
        else:
            self.counters["bad_downlink"] += 1
            log.warning("unexpected %s on %s", type(message).__name__, msg.topic)

    def _on_receipt(self, receipt: Receipt) -> None:
        for rejection in receipt.rejected:
            log.error("bridge rejected segment %s: %s %s", rejection.segment_id, rejection.reason, rejection.detail)
        self.counters["receipted"] += len(receipt.accepted)
        self.counters["rejected"] += len(receipt.rejected)
        removed = self.outbox.remove([*receipt.accepted, *(r.segment_id for r in receipt.rejected)])
        self.counters["duplicate_receipts"] += len(receipt.accepted) + len(receipt.rejected) - removed
        self._wake.set()

    # --- publishing (own thread) ------------------------------------------------------------

    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self.connected.is_set():
                continue
            room = self.max_in_flight - self.outbox.in_flight(self.resend_after_s)
            if room <= 0:
                continue
            entries = self.outbox.due(room, self.resend_after_s)
            sent = []
            for entry in entries:
                info = self._client.publish(entry.topic, entry.payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    log.debug("publish of seq %d deferred: rc=%s", entry.seq, info.rc)
                    break
                sent.append(entry.seq)
                self.counters["resent" if entry.attempts else "published"] += 1
            if sent:
                self.outbox.mark_sent(sent)
                self._wake.set()

    def _status(self, *, online: bool) -> bytes:
        return encode(
            Status(
                agent_id=self.agent_id,
                online=online,
                at=time.time(),
                queue_depth=self.outbox.depth() if online else 0,
                oldest_age_s=self.outbox.oldest_age_s() if online else 0.0,
            )
        )

    def publish_status(self) -> None:
        if self.connected.is_set():
            self._client.publish(mqtt_topic(self.agent_id, Up.STATUS), self._status(online=True), qos=1, retain=True)

