"""The dashboard's live change feed reads segments by ``updated_at``: an index for it.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_segments_updated_at", "segments", ["updated_at"])
