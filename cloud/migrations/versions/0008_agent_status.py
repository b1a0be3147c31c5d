"""The fleet (issue 12): each device's latest status and a short history, from ``edgecap.status``.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_status",
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("site", sa.String(64)),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("agent_id", name="pk_agent_status"),
    )
    op.create_table(
        "agent_status_history",
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "at", name="pk_agent_status_history"),
    )
    op.create_index("ix_agent_status_history_received_at", "agent_status_history", ["received_at"])
