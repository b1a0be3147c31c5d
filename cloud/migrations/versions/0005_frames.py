"""Frames and what the detector found in them (issue 11): one row per frame, its classes apart.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "frames",
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("frame_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("captured_at", sa.Float, nullable=False),
        sa.Column("width", sa.BigInteger, nullable=False),
        sa.Column("height", sa.BigInteger, nullable=False),
        sa.Column("regions", sa.Text, nullable=False),
        sa.Column("jpeg", sa.LargeBinary),
        sa.Column("jpeg_path", sa.Text),
        sa.Column("jpeg_bytes", sa.BigInteger, nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("boxes", sa.Text, nullable=False),
        sa.Column("box_count", sa.BigInteger, nullable=False),
        sa.Column("detected_at", sa.Float, nullable=False),
        sa.Column("stored_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "frame_id", name="pk_frames"),
    )
    op.create_index("ix_frames_captured_at", "frames", ["captured_at"])
    op.create_index("ix_frames_agent_captured_at", "frames", ["agent_id", "captured_at"])
    op.create_table(
        "frame_labels",
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("frame_id", sa.String(128), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("best_score", sa.Float, nullable=False),
        sa.Column("captured_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "frame_id", "label", name="pk_frame_labels"),
    )
    op.create_index("ix_frame_labels_label_captured_at", "frame_labels", ["label", "captured_at"])
