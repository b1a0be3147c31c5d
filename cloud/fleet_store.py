"""The fleet in the store: each device's latest status and a short history of them.

Statuses come from ``edgecap.status`` (the bridge forwards each agent's heartbeat and its last will,
``online = false``). The latest is the one with the newest device time (``at``): a status that arrives
late (a redelivered record, a replica's backlog) never replaces a newer one, and the cloud's time of
arrival (``received_at``) is when the device was last seen. Every status also goes into the history,
once per (agent, ``at``), trimmed by age (:meth:`FleetRecords.trim_status_history`).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, delete, select

from cloud.tables import agent_status, agent_status_history
from contracts import Status, decode, encode


class FleetRecords:
    """The fleet half of :class:`cloud.store.Store` (a mixin: it uses the store's engines)."""

    engine: Engine
    _reader: Engine
    _insert: Any

    def record_status(self, status: Status) -> bool:
        """Keep ``status`` in the history and, if it is the device's newest, as its latest; whether it was."""
        now, raw = time.time(), encode(status).decode("utf-8")
        row = {"agent_id": status.agent_id, "at": status.at, "online": status.online, "status": raw, "received_at": now}
        latest = self._insert(agent_status).values(**row, site=status.site)
        latest = latest.on_conflict_do_update(
            index_elements=[agent_status.c.agent_id],
            set_={"at": status.at, "online": status.online, "site": status.site, "status": raw, "received_at": now},
            where=agent_status.c.at < status.at,
        )
        with self.engine.begin() as conn:
            conn.execute(self._insert(agent_status_history).values(**row).on_conflict_do_nothing())
            return conn.execute(latest.returning(agent_status.c.agent_id)).first() is not None

    def agents(self, site: str | None = None) -> list[dict[str, Any]]:
        """Every device's latest status, by site and id, each with when it was last seen."""
        query = select(agent_status).order_by(agent_status.c.site, agent_status.c.agent_id)
        if site is not None:
            query = query.where(agent_status.c.site == site)
        with self._reader.connect() as conn:
            return [_latest(r) for r in conn.execute(query)]

    def agent(self, agent_id: str, history: int = 100) -> dict[str, Any] | None:
        """One device's latest status and its newest ``history`` statuses (newest first)."""
        with self._reader.connect() as conn:
            found = conn.execute(select(agent_status).where(agent_status.c.agent_id == agent_id)).first()
            if found is None:
                return None
            past = conn.execute(
                select(agent_status_history.c.status, agent_status_history.c.received_at)
                .where(agent_status_history.c.agent_id == agent_id)
                .order_by(agent_status_history.c.at.desc())
                .limit(history)
            ).all()
        out = _latest(found)
        out["history"] = [decode(r.status.encode(), Status).model_dump() | {"received_at": r.received_at} for r in past]
        return out

    def trim_status_history(self, received_before: float) -> int:
        """Delete history older than ``received_before`` (the latest statuses stay); how many."""
        with self.engine.begin() as conn:
            query = delete(agent_status_history).where(agent_status_history.c.received_at < received_before)
            return int(conn.execute(query).rowcount or 0)


def _latest(row: Any) -> dict[str, Any]:
    status = decode(row.status.encode(), Status)
    return status.model_dump() | {"last_seen": row.received_at}
