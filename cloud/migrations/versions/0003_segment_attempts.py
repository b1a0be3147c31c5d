"""How often the transcription workers took each segment in hand, kept across their restarts.

A segment that kills the worker process (a poison input) is then recognised by its count and
dead-lettered after ``max_attempts`` (:mod:`cloud.transcribe`), instead of killing every restart.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_attempts",
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("segment_id", sa.String(128), nullable=False),
        sa.Column("attempts", sa.BigInteger, nullable=False),
        sa.Column("last_attempt_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "segment_id", name="pk_segment_attempts"),
    )
