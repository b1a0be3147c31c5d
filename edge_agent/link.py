"""The agent's MQTT link: drains the outbox to the broker and handles what comes back.

Up: outbox entries in ``seq`` order (QoS 1); an entry without a receipt is resent with exponential
backoff and jitter (:class:`Backoff`), and after a reconnect everything unreceipted is resent in
``seq`` order. After a connect, and whenever receipts stop coming, the link first *probes*: it sends
only the oldest unreceipted entry (with backoff) until a receipt shows the way to the bridge is
open, then the rest. So a broker never queues a backlog for a bridge that is away, which mosquitto
may hand over out of order once the bridge returns (seen after a broker restart). A retained
status with a last will doubles as the heartbeat. Down: receipts (the only thing that deletes from
the outbox; a PUBACK does not; a segment the bridge refused is quarantined in the outbox, not
deleted, and the status is sent at once to say so), final captions, and the agent's configuration
(retained by the broker, so it comes again on every subscribe: the receiver ignores versions it
already applied).

The link's threads outlive a failing disk: an outbox call that raises (``database or disk is
full``) in the publish loop or on a receipt is logged once, counted (``outbox_errors``) and tried
again within a second or at the next resend, so uploads resume by themselves once space returns.

Authentication: user name + password (or a password file), and/or TLS with a client certificate
whose common name must be the agent's id (checked at start-up by :func:`check_identity`).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contracts import AgentConfig, DecodeError, Detections, Down, Final, Receipt, Status, Up, decode, encode, mqtt_topic
from edge_agent.health import Health
from edge_agent.outbox import Entry, Outbox
from runtime.mqttauth import apply_credentials
from runtime.service import Watchdog
from runtime.settings import MqttSettings

log = logging.getLogger(__name__)


class IdentityError(ValueError):
    """The credentials configured do not belong to this agent, or cannot be read."""


class Backoff:
    """Exponential backoff with jitter: ``base_s`` after the first send, doubling, at most ``cap_s``."""

    def __init__(self, base_s: float, cap_s: float = 300.0, jitter: float = 0.2) -> None:
        self.base_s, self.cap_s, self.jitter = base_s, max(cap_s, base_s), jitter

    def __call__(self, attempt: int) -> float:
        """Seconds to wait for a receipt after send number ``attempt`` (1 = the first send)."""
        delay = min(self.cap_s, self.base_s * 2.0 ** min(max(attempt - 1, 0), 32))
        return delay * random.uniform(1.0 - self.jitter, 1.0 + self.jitter)


def certificate_cn(cert_file: str) -> str | None:
    """The subject common name of a PEM certificate."""
    decoded = ssl._ssl._test_decode_cert(cert_file)  # type: ignore[attr-defined]  # the stdlib's PEM reader
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def check_identity(agent_id: str, settings: MqttSettings) -> None:
    """Refuse to start with credentials of another device: user name and certificate CN must be
    ``agent_id``, and every configured file must be readable."""
    if settings.username is not None and settings.username != agent_id:
        raise IdentityError(f"mqtt.username {settings.username!r} is not this agent's id {agent_id!r}")
    for name in ("ca_file", "cert_file", "key_file", "password_file"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise IdentityError(f"mqtt.{name} {str(path)!r} is not a readable file")
    if settings.cert_file is not None:
        try:
            cn = certificate_cn(str(settings.cert_file))
        except (OSError, ssl.SSLError) as exc:
            raise IdentityError(f"cannot read the client certificate {settings.cert_file}: {exc}") from exc
        if cn != agent_id:
            raise IdentityError(
                f"client certificate {settings.cert_file} is issued to CN={cn!r}, not to this agent {agent_id!r}"
            )


class MqttLink:
    """One persistent MQTT v5 session of one agent."""

    def __init__(
        self,
        agent_id: str,
        settings: MqttSettings,
        outbox: Outbox,
        *,
        on_final: Callable[[Final], object],
        on_config: Callable[[AgentConfig], object] | None = None,
        on_detections: Callable[[Detections], object] | None = None,
        config_state: Callable[[], tuple[int | None, bool]] | None = None,
        input_done: Callable[[], bool] | None = None,
        resend_after_s: float = 10.0,
        max_in_flight: int = 50,
        resend_max_s: float = 300.0,
        health: Health | None = None,
        watchdog: Watchdog | None = None,
        site: str | None = None,
    ) -> None:
        """``watchdog`` runs the publish loop (the agent's, so that its death stops the agent)."""
        check_identity(agent_id, settings)
        self.agent_id = agent_id
        self.settings = settings
        self.outbox = outbox
        self.on_final = on_final
        self.on_config = on_config
        self.on_detections = on_detections  # what the cloud found in a frame this device asked about
        self.site = site
        self.config_state = config_state  # (applied config version, muted) for the status
        self.input_done = input_done  # whether the input ended and is all captioned, for the status
        self.resend_after_s = resend_after_s
        self.max_in_flight = max_in_flight
        self.backoff = Backoff(resend_after_s, resend_max_s)
        self.health = health
        self.watchdog = watchdog or Watchdog()
        self.counters: Counter[str] = Counter()
        self.connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._probing = True  # after every connect, until a receipt arrives
        self._probe_at = 0.0
        self._probe_id: str | None = None  # the entry the current probe sent
        self._last_receipt = 0.0
        self._failing = False  # the outbox raised on the publish loop's last round (logged once)
        self._thread: threading.Thread | None = None
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.agent_id, protocol=mqtt.MQTTv5
        )
        apply_credentials(client, self.settings)
        client.will_set(mqtt_topic(self.agent_id, Up.STATUS), self._status(online=False), qos=1, retain=True)
        client.max_inflight_messages_set(self.max_in_flight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.suppress_exceptions = True  # a callback's error is logged by paho, never ends the network thread
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
        self._thread = self.watchdog.spawn("mqtt-publish", self._publish_loop)

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
            [
                (mqtt_topic(self.agent_id, Down.RECEIPTS), 1),
                (mqtt_topic(self.agent_id, Down.CAPTIONS), 1),
                (mqtt_topic(self.agent_id, Down.CONFIG), 1),
                (mqtt_topic(self.agent_id, Down.DETECTIONS), 1),
            ]
        )
        client.publish(mqtt_topic(self.agent_id, Up.STATUS), self._status(online=True), qos=1, retain=True)
        try:
            self.outbox.mark_all_unsent()  # resend everything unreceipted, in seq order
        except sqlite3.Error as exc:  # a full disk: the resend timers and the probe resend them anyway
            self.counters["outbox_errors"] += 1
            log.warning("cannot mark the outbox unsent after the connect: %s", exc)
        self._probing, self._probe_at, self._probe_id = True, 0.0, None  # the oldest alone, until its receipt
        self.connected.set()
        self._wake.set()

    def _on_connect_fail(self, _c: object, _ud: object) -> None:
        self.counters["connect_failures"] += 1
        log.debug("MQTT connection to %s:%d failed; retrying", self.settings.host, self.settings.port)

    def _on_disconnect(self, _c: object, _ud: object, _flags: object, reason: object, _p: object) -> None:
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("MQTT disconnected: %s", reason)
            self.counters["disconnects"] += 1
        self.connected.clear()

    def _on_message(self, _c: object, _ud: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg)
        except Exception:  # the outbox (a full disk), the caption files: count it, keep the link
            self.counters["downlink_errors"] += 1
            log.exception("handling a message on %s failed", msg.topic)

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
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
        elif isinstance(message, AgentConfig) and message.agent_id == self.agent_id:
            self.counters["configs"] += 1
            if self.on_config is not None:
                try:
                    self.on_config(message)
                except Exception:  # on paho's network thread: an error here must not end the link
                    self.counters["config_errors"] += 1
                    log.exception("applying config v%d failed", message.version)
        elif isinstance(message, Detections) and message.agent_id == self.agent_id:
            self.counters["detections"] += 1
            if self.on_detections is not None:
                self.on_detections(message)
        else:
            self.counters["bad_downlink"] += 1
            log.warning("unexpected %s on %s", type(message).__name__, msg.topic)

    def _on_receipt(self, receipt: Receipt) -> None:
        """Accepted segments leave the outbox; refused ones stay in it, quarantined. If the outbox
        cannot be written (a full disk), the receipt is lost: the entries are resent later and the
        bridge receipts them again (it deduplicates)."""
        self.counters["receipts"] += 1
        named = {*receipt.accepted, *(r.segment_id for r in receipt.rejected)}
        # only the probe's own receipt opens the way: one queued in our session before a broker
        # restart proves nothing, and a burst sent on it overtakes a probe the broker lost
        if self._probe_id is None or self._probe_id in named:
            self._probing = False
        self._last_receipt = time.monotonic()
        self.counters["receipted"] += len(receipt.accepted)
        self.counters["rejected"] += len(receipt.rejected)
        self._wake.set()
        try:
            removed = self.outbox.remove(receipt.accepted) if receipt.accepted else 0
            quarantined = self.outbox.quarantine(
                (r.segment_id, r.reason.value, r.detail) for r in receipt.rejected
            ) if receipt.rejected else 0
        except sqlite3.Error as exc:
            self.counters["outbox_errors"] += 1
            log.error("cannot record a receipt of %d segments in the outbox (they will be resent): %s",
                      len(named), exc)
            return
        self.counters["duplicate_receipts"] += len(receipt.accepted) - removed
        self.counters["quarantined"] += quarantined
        for rejection in receipt.rejected:
            log.error("bridge refused segment %s (%s: %s): kept in quarantine, not sent again until "
                      "`edgecap agent --resend-quarantined`", rejection.segment_id, rejection.reason.value,
                      rejection.detail)
        if quarantined:
            self.publish_status()  # the operator sees it now, not at the next heartbeat

    # --- publishing (own thread) ------------------------------------------------------------

    def _publish_loop(self) -> None:
        """Publish what is due until stopped; an outbox error (a full disk) costs one round, so
        sending resumes within a second of the disk taking writes again."""
        while not self._stop.is_set():
            try:
                self._publish_round()
            except (sqlite3.Error, OSError) as exc:
                self.counters["outbox_errors"] += 1
                if not self._failing:
                    log.error("publishing from the outbox failed (retrying every second): %s", exc)
                self._failing = True
                if not self._probing:  # one entry at a time, with backoff, until the outbox records sends
                    self._start_probing()
                self._stop.wait(1.0)
            else:
                if self._failing:
                    log.info("publishing from the outbox works again")
                self._failing = False

    def _publish_round(self) -> None:
        next_due = self.outbox.next_due_in_s() if self.connected.is_set() else None
        if self._probing:
            next_due = max(0.0, self._probe_at - time.monotonic())
        self._wake.wait(1.0 if next_due is None else min(1.0, next_due + 0.01))
        self._wake.clear()
        if not self.connected.is_set():
            return
        if self._probing:
            self._probe()
            return
        room = self.max_in_flight - self.outbox.in_flight()
        if room <= 0:
            return
        entries = self.outbox.due(room)
        silent = time.monotonic() - self._last_receipt > self.resend_after_s
        if silent and any(entry.attempts for entry in entries):  # no receipts at all: is the way open?
            log.info("no receipt for seq %d in time: probing before sending more",
                     next(e.seq for e in entries if e.attempts))
            self._start_probing()
            return
        self._publish(entries)

    def _start_probing(self) -> None:
        self._probing, self._probe_at, self._probe_id = True, 0.0, None
        self._wake.set()

    def _probe(self) -> None:
        """Send only the oldest unreceipted entry, with backoff, until a receipt proves the way to
        the bridge is open: what broker queues hold while the bridge is away cannot be reordered."""
        if time.monotonic() < self._probe_at:
            return
        entries = self.outbox.due(1, resend_after_s=0)  # the oldest entry, whatever its timer says
        if not entries:
            self._probing = False  # nothing waits: the next append goes out normally
            return
        previous = self._probe_id, self._probe_at
        # set before publishing: if the outbox cannot record the send (a full disk), the backoff holds
        self._probe_id = entries[0].segment_id
        self._probe_at = time.monotonic() + self.backoff(entries[0].attempts + 1)
        if not self._publish(entries):
            self._probe_id, self._probe_at = previous

    def _publish(self, entries: list[Entry]) -> bool:
        """Publish in seq order; True if all of them went out."""
        sent = []
        for entry in entries:
            info = self._client.publish(entry.topic, entry.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.debug("publish of seq %d deferred: rc=%s", entry.seq, info.rc)
                break
            sent.append(entry.seq)
            self.counters["resent" if entry.attempts else "published"] += 1
        if sent:
            self.outbox.mark_sent(sent, self.backoff)
            self._wake.set()
        return len(sent) == len(entries)

    def status(self, *, online: bool = True) -> Status:
        """This agent's status now: outbox, quota, quarantine, failed appends and (with a health
        object) process figures."""
        if not online:
            return Status(agent_id=self.agent_id, online=False, at=time.time(), site=self.site)
        dropped = self.outbox.counters()
        held = self.outbox.quarantine_counters()
        health = self.health
        config_version, muted = self.config_state() if self.config_state is not None else (None, False)
        return Status(
            agent_id=self.agent_id,
            online=True,
            at=time.time(),
            queue_depth=self.outbox.depth(),
            oldest_age_s=self.outbox.oldest_age_s(),
            quota_full=self.outbox.quota_full(),
            dropped_segments=dropped["dropped_audio_segments"] + dropped["refused_segments"]
            + held["dropped_quarantined"],
            quarantined=self.outbox.quarantined_count(),
            quarantined_total=held["quarantined_total"],
            append_failed=self.outbox.append_failed,
            uptime_s=health.uptime_s() if health else None,
            cpu_percent=health.cpu_percent() if health else None,
            rss_mb=health.rss_mb() if health else None,
            asr_rtf=health.asr_rtf() if health else None,
            config_version=config_version,
            muted=muted,
            input_done=self.input_done() if self.input_done is not None else False,
            site=self.site,
        )

    def _status(self, *, online: bool) -> bytes:
        return encode(self.status(online=online))

    def publish_status(self) -> None:
        if self.connected.is_set():
            self._client.publish(mqtt_topic(self.agent_id, Up.STATUS), self._status(online=True), qos=1, retain=True)

