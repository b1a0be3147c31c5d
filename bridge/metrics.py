"""The bridge's Prometheus metrics, on a registry of its own, also readable as a plain dict."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_PREFIX = "edgecap_bridge_"


class Metrics:
    """Counters shared by the uplink, receipts and downlink (prometheus_client is thread-safe)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        p = _PREFIX
        self.received = Counter(
            p + "received", "Segments and frames received from agents (statuses count apart).", registry=r
        )
        self.produced = Counter(
            p + "produced", "Records of segments and frames (and their dead letters) Kafka confirmed, by topic.",
            ["topic"], registry=r,
        )  # fmt: skip
        self.acknowledged = Counter(
            p + "acknowledged", "Segments and frames acknowledged (PUBACK) once Kafka had them.", registry=r
        )
        self.receipts = Counter(p + "receipts", "Receipts published to agents.", registry=r)
        self.receipt_ids = Counter(p + "receipt_ids", "Segment ids listed in receipts.", ["kind"], registry=r)
        self.duplicates = Counter(p + "duplicates", "Segments seen again within the window.", registry=r)
        self.seq_regressions = Counter(
            p + "seq_regressions", "New segments whose seq is not above the last one seen from their agent.", registry=r
        )
        self.dead_lettered = Counter(p + "dead_lettered", "Refused inputs, by reason.", ["reason"], registry=r)
        self.delivery_failures = Counter(
            p + "delivery_failures", "Kafka deliveries that failed (each is produced again).", registry=r
        )
        self.kafka_refused = Counter(
            p + "kafka_refused",
            "Records Kafka or its client refused for good (never retried: dead-lettered), by Kafka error.",
            ["error"],
            registry=r,
        )
        self.deadletters_lost = Counter(
            p + "deadletters_lost",
            "Dead letters Kafka refused for good even without their payload (the agent's receipt still rejects).",
            registry=r,
        )
        self.retried = Counter(p + "retried", "Kafka records produced again after a failed delivery.", registry=r)
        self.producer_restarts = Counter(
            p + "producer_restarts", "Kafka producers replaced after a fatal error.", registry=r
        )
        self.intake_held = Gauge(p + "intake_held", "1 while a retry round holds the MQTT intake.", registry=r)
        self.errors = Counter(
            p + "errors",
            "Messages that hit an unexpected error in the bridge (dead-lettered as invalid if their check failed).",
            registry=r,
        )
        self.in_flight = Gauge(p + "in_flight", "MQTT messages produced but not yet confirmed.", registry=r)
        self.delivery_seconds = Histogram(
            p + "delivery_seconds",
            "Time from produce to Kafka's confirmation.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.reconnects = Counter(p + "reconnects", "MQTT reconnections, by client.", ["client"], registry=r)
        self.connected = Gauge(p + "mqtt_connected", "1 while the uplink is subscribed.", registry=r)
        self.healthy = Gauge(
            p + "healthy", "1 while every thread of the bridge runs; 0 once one died (the process exits).", registry=r
        )
        self.healthy.set(1)
        self.downlink_published = Counter(
            p + "downlink_published", "Finals (and asked-for detections) published to agents.", registry=r
        )
        self.downlink_failures = Counter(
            p + "downlink_failures", "Finals (and asked-for detections) whose publish failed.", registry=r
        )
        self.downlink_skipped = Counter(
            p + "downlink_skipped", "Detections passed over: their device did not ask for them.", registry=r
        )
        # statuses (heartbeats and last wills) take a path of their own (bridge.statuses): none of the
        # counters above counts them, so that a fleet's heartbeats never blur the segments' numbers
        self.statuses_received = Counter(
            p + "statuses_received", "Agent statuses (heartbeats and last wills) received.", registry=r
        )
        self.statuses_forwarded = Counter(
            p + "statuses_forwarded", "Statuses Kafka confirmed on edgecap.status.", registry=r
        )
        self.statuses_refused = Counter(
            p + "statuses_refused", "Statuses refused (dead-lettered, never receipted), by reason.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.statuses_connected = Gauge(
            p + "statuses_mqtt_connected", "1 while the subscription to the agents' statuses is up.", registry=r
        )
        self.statuses_lost = Counter(
            p + "statuses_lost",
            "Statuses (or their dead letters) Kafka did not take; never retried: the next heartbeat replaces one.",
            registry=r,
        )
        self.config_published = Counter(p + "config_published", "Configurations published to agents.", registry=r)
        self.config_failures = Counter(
            p + "config_failures", "Configurations whose publish failed (each is published again).", registry=r
        )
        self._server: Any = None

    def serve(self, port: int, host: str) -> None:
        """Serve ``/metrics`` on ``port`` (0 = do not serve)."""
        if port:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
            log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def snapshot(self) -> dict[str, Any]:
        """Every metric as plain numbers; labelled counters become ``{label: value}`` dicts."""
        out: dict[str, Any] = {}
        for family in self.registry.collect():
            name = family.name.removeprefix(_PREFIX)
            for sample in family.samples:
                if family.type == "histogram":
                    if sample.name.endswith("_count"):
                        out[name + "_count"] = sample.value
                    elif sample.name.endswith("_sum"):
                        out[name + "_sum"] = sample.value
                    continue
                if sample.name.endswith("_created"):
                    continue
                if sample.labels:
                    label = next(iter(sample.labels.values()))
                    out.setdefault(name, {})[label] = sample.value
                else:
                    out[name] = sample.value
        for labelled in ("produced", "dead_lettered", "reconnects", "receipt_ids", "kafka_refused", "statuses_refused"):
            out.setdefault(labelled, {})
        return out
