"""Reconciliation with provenance and the deadline: why each final has its text, how draft and cloud
words align, where each word of the final came from, the draft's disagreement with the final, and
when the cloud stored each draft (the deadline counts from there), with the index the deadline
scan reads.

Drafts already stored get ``draft_stored_at`` from their row's ``updated_at`` (when a draft-only row
was last written: its draft), so a store that upgrades with drafts waiting gives them their
deadline too. Finals stored before have no reason and no provenance (NULL): the disagreement
figures leave them out.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("segments", sa.Column("draft_stored_at", sa.Float))
    op.add_column("segments", sa.Column("final_reason", sa.String(20)))
    op.add_column("segments", sa.Column("alignment", sa.Text))
    op.add_column("segments", sa.Column("final_words", sa.Text))
    op.add_column("segments", sa.Column("draft_edits", sa.BigInteger))
    op.add_column("segments", sa.Column("final_word_count", sa.BigInteger))
    op.add_column("segments", sa.Column("disagreement", sa.Float))
    op.execute("UPDATE segments SET draft_stored_at = updated_at WHERE draft_produced_at IS NOT NULL")
    op.create_index("ix_segments_unpublished", "segments", ["final_published_at", "draft_stored_at"])
