"""Scope every row by device: segments and caption versions keyed by (``agent_id``, ``segment_id``).

Two devices may choose the same ``segment_id``; before this revision they shared one row (the second
device's final carried the first one's draft). The tables are rebuilt with composite primary keys and
the rows copied (a caption version takes the ``agent_id`` of its segment row). Rebuilding, not
altering, also widens the integer columns of a PostgreSQL store made before they were ``BIGINT``.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SEGMENT_COLUMNS = [
    "agent_id", "segment_id", "seq", "started_at", "ended_at",
    "draft_text", "draft_model_id", "draft_produced_at",
    "final_text", "final_model_id", "final_produced_at", "final_source", "final_version",
    "final_stored_at", "final_message", "final_published_at", "updated_at",
]  # fmt: skip
VERSION_COLUMNS = ["segment_id", "version", "source", "text", "model_id", "produced_at"]


def upgrade() -> None:
    op.drop_index("ix_segments_started_at", table_name="segments")
    op.drop_index("ix_segments_agent_seq", table_name="segments")
    op.rename_table("segments", "segments_0001")
    op.rename_table("caption_versions", "caption_versions_0001")

    segments = op.create_table(
        "segments",
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("segment_id", sa.String(128), nullable=False),
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
        sa.PrimaryKeyConstraint("agent_id", "segment_id", name="pk_segments"),
    )
    op.create_index("ix_segments_started_at", "segments", ["started_at"])
    op.create_index("ix_segments_agent_seq", "segments", ["agent_id", "seq"])
    op.create_index("ix_segments_segment_id", "segments", ["segment_id"])
    versions = op.create_table(
        "caption_versions",
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("segment_id", sa.String(128), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("produced_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "segment_id", "version", name="pk_caption_versions"),
    )

    old_segments = sa.table("segments_0001", *(sa.column(c) for c in SEGMENT_COLUMNS))
    old_versions = sa.table("caption_versions_0001", *(sa.column(c) for c in VERSION_COLUMNS))
    op.execute(
        segments.insert().from_select(SEGMENT_COLUMNS, sa.select(*(old_segments.c[c] for c in SEGMENT_COLUMNS)))
    )
    op.execute(
        versions.insert().from_select(
            ["agent_id", *VERSION_COLUMNS],
            sa.select(old_segments.c.agent_id, *(old_versions.c[c] for c in VERSION_COLUMNS)).join(
                old_segments, old_segments.c.segment_id == old_versions.c.segment_id
            ),
        )
    )
    op.drop_table("caption_versions_0001")
    op.drop_table("segments_0001")
