"""Admin actions on the fleet: ``POST /api/agents/{agent_id}/config`` sends settings to a running agent.

The JSON body sets any of ``muted``, ``heartbeat_s``, ``vad_aggressiveness``, ``log_level``; the
route builds and sends the configuration exactly as ``edgecap config set`` does
(:mod:`cloud.agent_config`: the same checks, the same version rule, the same producer), so the
bridge and the agent cannot tell them apart. It answers 202 with the configuration once Kafka
confirmed it (the agent applies it when the bridge hands it over: its status then reports the
version), 422 with the reason for settings that make no valid configuration, 503 when the dashboard
has no Kafka settings or Kafka did not confirm in time, and 403 to viewers. Every change is logged
with the admin who made it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from cloud.agent_config import ConfigNotSent, ConfigRefused, new_config, send_config
from cloud.dashboard.access import Caller, admin
from cloud.settings import DashboardSettings
from contracts import encode

log = logging.getLogger(__name__)

CONFIG_TIMEOUT_S = 10.0  # how long a request waits for Kafka's confirmation (as the command's default)

CONFIGS = Counter(
    "edgecap_dashboard_agent_configs_total",
    "Configurations asked of POST /api/agents/{agent_id}/config, by outcome (sent, refused, not_sent).",
    ["outcome"],
)


def fleet_router(settings: DashboardSettings) -> APIRouter:
    """The fleet's admin routes (behind the app's login; each admin-only)."""
    router = APIRouter()

    @router.post("/api/agents/{agent_id}/config", status_code=202, response_model=None)
    async def set_config(
        agent_id: str,
        request: Request,
        caller: Caller = Depends(admin),  # noqa: B008 - viewers do not change agents
    ) -> dict[str, Any] | JSONResponse:
        """Send settings to one agent (admins only): a JSON object with any of ``muted``,
        ``heartbeat_s``, ``vad_aggressiveness``, ``log_level``; unset ones stay as they are."""
        who = caller.user.username
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _refused(agent_id, who, "send a JSON object with any of muted, heartbeat_s, "
                            "vad_aggressiveness, log_level")  # fmt: skip
        try:
            config = new_config(agent_id, body)
        except ConfigRefused as exc:
            return _refused(agent_id, who, exc.detail)
        if settings.kafka is None:
            CONFIGS.labels("not_sent").inc()
            log.warning("config for %s from %s not sent: the dashboard has no Kafka settings", agent_id, who)
            return JSONResponse({"detail": "sending configurations needs Kafka: set the dashboard's kafka settings"},
                                status_code=503)  # fmt: skip
        try:
            await run_in_threadpool(send_config, settings.kafka, config, CONFIG_TIMEOUT_S)
        except ConfigNotSent as exc:
            CONFIGS.labels("not_sent").inc()
            log.error("config for %s from %s not sent: %s", agent_id, who, exc)
            return JSONResponse({"detail": f"{exc}: try again"}, status_code=503)
        CONFIGS.labels("sent").inc()
        log.info("config v%d for %s sent by %s: %s", config.version, agent_id, who, config.settings())
        return {"config": json.loads(encode(config))}

    return router


def _refused(agent_id: str, who: str, detail: str) -> JSONResponse:
    CONFIGS.labels("refused").inc()
    log.warning("config for %r from %s refused: %s", agent_id, who, detail)
    return JSONResponse({"detail": detail}, status_code=422)
