"""The fleet as Prometheus metrics, one series per device, read from the store at each scrape.

The bridge counts statuses as they pass; only the store knows each device's latest state (its
heartbeat, or its last will). The dashboard's ``/metrics`` therefore carries, per device (labels
``agent_id`` and ``site``): whether it is online (0 after its last will), how long since the cloud
last heard from it, its outbox queue and the age of its oldest unsent segment, and whether its
quota is full or it is muted. Alerts can then name the device: one that went offline, one that
claims to be online but has been silent (its last will was lost: the bridge does not retry
statuses), one whose backlog grows. One store read per scrape; a fleet of a few thousand devices is
a few thousand series per metric, which Prometheus takes in its stride.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from cloud.store import Store

log = logging.getLogger(__name__)

LABELS = ["agent_id", "site"]

# name, help, how to read it from the latest status (with last_seen added)
SERIES: tuple[tuple[str, str, Any], ...] = (
    ("edgecap_fleet_device_online", "1 while the device's latest status says online; 0 after its last will.",
     lambda a, now: 1.0 if a["online"] else 0.0),
    ("edgecap_fleet_device_last_seen_seconds", "Seconds since the cloud last received a status from the device.",
     lambda a, now: max(0.0, now - a["last_seen"])),
    ("edgecap_fleet_device_queue_depth", "Segments waiting in the device's outbox (its latest status).",
     lambda a, now: float(a["queue_depth"])),
    ("edgecap_fleet_device_oldest_unsent_seconds", "Age of the oldest segment the device has not sent yet.",
     lambda a, now: float(a["oldest_age_s"])),
    ("edgecap_fleet_device_quota_full", "1 while the device's outbox quota is reached.",
     lambda a, now: 1.0 if a["quota_full"] else 0.0),
    ("edgecap_fleet_device_muted", "1 while a remote configuration mutes the device's capture.",
     lambda a, now: 1.0 if a["muted"] else 0.0),
)  # fmt: skip


class FleetCollector(Collector):
    """Reads every device's latest status at each scrape (a custom collector: nothing is kept here)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterator[Metric]:
        """The families without reading the store (what the registry checks names against)."""
        for name, doc, _ in SERIES:
            yield GaugeMetricFamily(name, doc, labels=LABELS)

    def collect(self) -> Iterator[Metric]:
        try:
            agents = self.store.agents()
        except SQLAlchemyError as exc:  # the scrape goes on without the fleet; /healthz says why
            log.warning("fleet metrics: the store did not answer: %s", exc)
            return
        now = time.time()
        for name, doc, read in SERIES:
            family = GaugeMetricFamily(name, doc, labels=LABELS)
            for agent in agents:
                family.add_metric([agent["agent_id"], agent["site"] or ""], read(agent, now))
            yield family
