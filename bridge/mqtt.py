"""MQTT v5 clients of the bridge, built one way: automatic reconnect with backoff, logged and counted."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.metrics import Metrics
from contracts.settings import MqttSettings
from edgecap.mqttauth import apply_credentials

log = logging.getLogger(__name__)


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
        self.client = mqtt.Client(
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
