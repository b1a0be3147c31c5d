"""Full-text search over captions (issue 12): on PostgreSQL a GIN index on the words of each
segment's final and draft (the ``simple`` configuration: no stemming, any language); SQLite
searches without an index (small deployments).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SEARCH_DOCUMENT = "to_tsvector('simple', coalesce(final_text, '') || ' ' || coalesce(draft_text, ''))"
"""The searched text of a segment; :mod:`cloud.search` queries this very expression, so the index is used."""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE INDEX ix_segments_search ON segments USING gin ({SEARCH_DOCUMENT})")
