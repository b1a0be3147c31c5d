"""The schema of every store made before migrations existed (one row per ``segment_id``).

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("segment_id", sa.String(128), primary_key=True),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=False),
        sa.Column("draft_text", sa.Text),
        sa.Column("draft_model_id", sa.String(200)),
        sa.Column("draft_produced_at", sa.Float),
        sa.Column("final_text", sa.Text),
        sa.Column("final_model_id", sa.String(200)),
        sa.Column("final_produced_at", sa.Float),
        sa.Column("final_source", sa.String(8)),
        sa.Column("final_version", sa.BigInteger),
        sa.Column("final_stored_at", sa.Float),
        sa.Column("final_message", sa.Text),
        sa.Column("final_published_at", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_segments_started_at", "segments", ["started_at"])
    op.create_index("ix_segments_agent_seq", "segments", ["agent_id", "seq"])
    op.create_table(
        "caption_versions",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("segment_id", sa.String(128), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("produced_at", sa.Float, nullable=False),
        sa.UniqueConstraint("segment_id", "version", name="uq_caption_versions_segment_version"),
    )
