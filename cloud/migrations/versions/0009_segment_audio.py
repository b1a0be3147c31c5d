"""Segment audio kept in the cloud (issue 12), so a segment can be played back.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_audio",
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("segment_id", sa.String(128), nullable=False),
        sa.Column("codec", sa.String(16), nullable=False),
        sa.Column("sample_rate", sa.BigInteger, nullable=False),
        sa.Column("channels", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary),
        sa.Column("path", sa.Text),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("stored_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "segment_id", name="pk_segment_audio"),
    )
    op.create_index("ix_segment_audio_stored_at", "segment_audio", ["stored_at"])
