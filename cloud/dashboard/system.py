"""``GET /api/system``: the services' throughput, consumer lag and dead letters, from their ``/metrics``.

Every service serves Prometheus metrics; the dashboard reads those named in ``metrics_targets``
(name → URL) rather than keeping counts of its own, so the page shows what Prometheus would. The
targets are scraped concurrently (httpx, ``metrics_timeout_s`` each) and read with
prometheus_client's parser. Per service the answer gives: up, or down with the reason (a target that
does not answer never fails the route); messages in and out, as totals and, from the second scrape
on, per second since the previous scrape (kept in memory per target; a counter that went down means
the service restarted, and its rate counts from zero); consumer lag per consumer group and topic;
dead letters by reason; health; and the URL, for a link to the raw ``/metrics``. Many browsers do not
multiply scrapes: one answer is reused for ``system_cache_s``.

What counts as in and out, by the names the services export:

- the bridge: in, ``edgecap_bridge_received_total`` (segments and frames from MQTT) and
  ``…_statuses_received_total``; out, ``edgecap_bridge_produced_total{topic}`` (records Kafka
  confirmed) and ``…_statuses_forwarded_total``;
- the Kafka workers (:class:`runtime.kafka.BatchWorker`): in, ``edgecap_worker_consumed_total{topic}``;
  out, ``edgecap_worker_produced_total{topic}``.

Lag is ``edgecap_worker_consumer_lag{group,topic,partition}`` summed over partitions; dead letters are
``edgecap_bridge_dead_lettered_total{reason}`` (and ``…_statuses_refused_total{reason}``) and
``edgecap_worker_dead_letters_total{reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import APIRouter
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from cloud.settings import DashboardSettings

log = logging.getLogger(__name__)

MAX_METRICS_BYTES = 4 * 1024 * 1024  # a /metrics page larger than this is refused, not parsed

# sample name → the key it counts under in in_by_topic / out_by_topic (None: its topic label)
IN_SAMPLES = {
    "edgecap_bridge_received_total": "mqtt",
    "edgecap_bridge_statuses_received_total": "mqtt_status",
    "edgecap_worker_consumed_total": None,
}
OUT_SAMPLES = {
    "edgecap_bridge_produced_total": None,
    "edgecap_bridge_statuses_forwarded_total": "edgecap.status",
    "edgecap_worker_produced_total": None,
}
DEAD_LETTER_SAMPLES = (
    "edgecap_bridge_dead_lettered_total",
    "edgecap_bridge_statuses_refused_total",
    "edgecap_worker_dead_letters_total",
)
HEALTH_SAMPLES = ("edgecap_bridge_healthy", "edgecap_worker_healthy")
LAG_SAMPLE = "edgecap_worker_consumer_lag"

SCRAPES = Counter(
    "edgecap_dashboard_scrapes_total",
    "Scrapes of the services' /metrics by GET /api/system, by target and outcome (up, down).",
    ["target", "outcome"],
)


class ScrapeFailed(Exception):
    """A target that did not give a readable /metrics page; the message is the reason shown."""


@dataclass(frozen=True)
class Reading:
    """What one scrape of one target gave, reduced to what the page shows."""

    in_by: dict[str, float]
    out_by: dict[str, float]
    dead_letters: dict[str, float]
    lag: list[dict[str, Any]]
    healthy: float | None

    @property
    def messages_in(self) -> float:
        return sum(self.in_by.values())

    @property
    def messages_out(self) -> float:
        return sum(self.out_by.values())


def read_metrics(text: str) -> Reading:
    """The page's figures from a Prometheus text exposition (ValueError if it is not one)."""
    in_by: dict[str, float] = defaultdict(float)
    out_by: dict[str, float] = defaultdict(float)
    dead: dict[str, float] = defaultdict(float)
    lag: dict[tuple[str | None, str | None, str], list[float]] = defaultdict(list)
    health: list[float] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name in IN_SAMPLES:
                in_by[IN_SAMPLES[name] or labels.get("topic", "")] += value
            elif name in OUT_SAMPLES:
                out_by[OUT_SAMPLES[name] or labels.get("topic", "")] += value
            elif name in DEAD_LETTER_SAMPLES:
                dead[labels.get("reason", "unknown")] += value
            elif name in HEALTH_SAMPLES:
                health.append(value)
            elif name == LAG_SAMPLE:
                key = (labels.get("group"), labels.get("worker"), labels.get("topic", ""))
                lag[key].append(value)
    lags = [
        {"group": group, "worker": worker, "topic": topic, "lag": sum(values), "partitions": len(values)}
        for (group, worker, topic), values in sorted(lag.items(), key=lambda kv: tuple(str(k) for k in kv[0]))
    ]
    return Reading(dict(in_by), dict(out_by), dict(dead), lags, min(health) if health else None)


@dataclass(frozen=True)
class _Previous:
    at: float  # time.monotonic() of the scrape
    messages_in: float
    messages_out: float


def per_second(now: float, before: float, seconds: float) -> float:
    """A counter's rate between two scrapes; a counter that went down restarted from zero."""
    grown = now - before if now >= before else now
    return grown / seconds if seconds > 0 else 0.0


class SystemView:
    """Scrapes the targets, keeps each one's previous reading for rates, and caches the answer."""

    def __init__(self, targets: dict[str, str], timeout_s: float, cache_s: float) -> None:
        self.targets = dict(targets)
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._previous: dict[str, _Previous] = {}
        self._down: dict[str, str] = {}  # target → the reason it was down at its last scrape
        self._answer: dict[str, Any] | None = None
        self._answered_at = 0.0
        self._lock = asyncio.Lock()

    async def answer(self) -> dict[str, Any]:
        """The services' figures: the cached answer while it is fresh, else a new scrape of all."""
        async with self._lock:  # concurrent requests wait for one scrape instead of making their own
            if self._answer is not None and time.monotonic() - self._answered_at < self.cache_s:
                return self._answer
            async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
                services = await asyncio.gather(*(self._service(client, n, u) for n, u in self.targets.items()))
            self._answer = {"scraped_at": time.time(), "cache_s": self.cache_s, "services": services}
            self._answered_at = time.monotonic()
            return self._answer

    async def _service(self, client: httpx.AsyncClient, name: str, url: str) -> dict[str, Any]:
        base: dict[str, Any] = {"name": name, "url": url}
        try:
            reading = await self._scrape(client, url)
        except ScrapeFailed as exc:
            SCRAPES.labels(name, "down").inc()
            reason = str(exc)
            if self._down.get(name) != reason:  # logged when it changes, not on every scrape
                log.warning("metrics target %s (%s) is down: %s", name, url, reason)
            self._down[name] = reason
            self._previous.pop(name, None)  # its rates start afresh when it is back
            return base | {"up": False, "error": reason}
        SCRAPES.labels(name, "up").inc()
        if self._down.pop(name, None) is not None:
            log.info("metrics target %s (%s) is up again", name, url)
        now = time.monotonic()
        before = self._previous.get(name)
        self._previous[name] = _Previous(now, reading.messages_in, reading.messages_out)
        rates: dict[str, Any] = {"in_per_s": None, "out_per_s": None, "rate_over_s": None}
        if before is not None:
            seconds = now - before.at
            rates = {
                "in_per_s": round(per_second(reading.messages_in, before.messages_in, seconds), 3),
                "out_per_s": round(per_second(reading.messages_out, before.messages_out, seconds), 3),
                "rate_over_s": round(seconds, 3),
            }
        return base | {
            "up": True,
            "error": None,
            "healthy": reading.healthy,
            "messages_in": reading.messages_in,
            "messages_out": reading.messages_out,
            **rates,
            "in_by_topic": reading.in_by,
            "out_by_topic": reading.out_by,
            "dead_letters": reading.dead_letters,
            "dead_letters_total": sum(reading.dead_letters.values()),
            "consumer_lag": reading.lag,
            "lag_total": sum(entry["lag"] for entry in reading.lag),
        }

    async def _scrape(self, client: httpx.AsyncClient, url: str) -> Reading:
        """The target's page, read; :class:`ScrapeFailed` with the reason otherwise."""
        try:
            async with client.stream("GET", url, headers={"Accept": "text/plain"}) as response:
                if response.status_code != 200:
                    raise ScrapeFailed(f"HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_METRICS_BYTES:
                        raise ScrapeFailed(f"the page is over {MAX_METRICS_BYTES} bytes")
        except httpx.TimeoutException:
            raise ScrapeFailed(f"no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ScrapeFailed(f"{type(exc).__name__}: {exc}") from None
        try:
            return read_metrics(body.decode("utf-8", "replace"))
        except ValueError as exc:
            raise ScrapeFailed(f"not Prometheus metrics: {str(exc)[:200]}") from None


def system_router(settings: DashboardSettings) -> APIRouter:
    """The ``GET /api/system`` route over ``settings.metrics_targets`` (behind the app's login)."""
    router = APIRouter()
    view = SystemView(settings.metrics_targets, settings.metrics_timeout_s, settings.system_cache_s)

    @router.get("/api/system")
    async def system() -> dict[str, Any]:
        """Each service's throughput (messages in and out, totals and per second), consumer lag per
        group and topic, dead letters by reason, health, and its ``/metrics`` URL; a service that
        does not answer is listed down with the reason."""
        return await view.answer()

    return router
