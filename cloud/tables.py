"""The caption store's tables: the schema the newest migration (:mod:`cloud.migrations`) produces.

Every row is keyed by device and segment (``agent_id``, ``segment_id``). Integers are 64-bit, ids
and model names at least as long as the contract allows (:mod:`contracts.bounds`), texts ``TEXT``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    tuple_,
)

from contracts import bounds

metadata = MetaData()

AGENT_ID_CHARS = 64  # contracts.ids.AGENT_ID_PATTERN
SEGMENT_ID_CHARS = 128  # contracts.ids.SEGMENT_ID_PATTERN
SEARCH_DOCUMENT = "to_tsvector('simple', coalesce(final_text, '') || ' ' || coalesce(draft_text, ''))"
"""A segment's searched words (:mod:`cloud.search`); PostgreSQL's index of them (migration 0010) is
on this very expression, which a query must repeat for the index to serve it. The index is made by the
migration only: SQLAlchemy's metadata cannot describe it for both databases, nor Alembic compare it."""
# the key of every row: which device, which of its segments
SegmentKey = tuple[str, str]  # (agent_id, segment_id)

segments = Table(
    "segments",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("segment_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=False),
    Column("draft_text", Text),
    Column("draft_model_id", String(bounds.MAX_NAME_CHARS)),
    Column("draft_produced_at", Float),
    Column("final_text", Text),
    Column("final_model_id", String(bounds.MAX_NAME_CHARS)),
    Column("final_produced_at", Float),
    Column("final_source", String(8)),
    Column("final_version", BigInteger),
    Column("final_stored_at", Float),
    Column("final_message", Text),  # the Final as sent on the wire (re-sent if never published)
    Column("final_published_at", Float),
    Column("updated_at", Float, nullable=False),
    Column("draft_stored_at", Float),  # the cloud's clock: the deadline counts from here
    Column("final_reason", String(20)),  # contracts.messages.FinalReason
    Column("alignment", Text),  # JSON: [{"draft", "cloud", "op"}] (cloud.provenance)
    Column("final_words", Text),  # JSON: [{"word", "model_id", "probability"}]
    Column("draft_edits", BigInteger),  # the draft's word errors against the final
    Column("final_word_count", BigInteger),
    Column("disagreement", Float),  # draft_edits / final_word_count: the draft's WER against the final
    PrimaryKeyConstraint("agent_id", "segment_id", name="pk_segments"),
    Index("ix_segments_started_at", "started_at"),
    Index("ix_segments_agent_seq", "agent_id", "seq"),
    Index("ix_segments_segment_id", "segment_id"),  # collisions across devices
    Index("ix_segments_unpublished", "final_published_at", "draft_stored_at"),  # the deadline scan
    Index("ix_segments_updated_at", "updated_at"),  # the dashboard's change feed
)

caption_versions = Table(
    "caption_versions",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("segment_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("source", String(8), nullable=False),
    Column("text", Text, nullable=False),
    Column("model_id", String(bounds.MAX_NAME_CHARS), nullable=False),
    Column("produced_at", Float, nullable=False),
    PrimaryKeyConstraint("agent_id", "segment_id", "version", name="pk_caption_versions"),
)

segment_attempts = Table(
    "segment_attempts",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("segment_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("attempts", BigInteger, nullable=False),
    Column("last_attempt_at", Float, nullable=False),
    PrimaryKeyConstraint("agent_id", "segment_id", name="pk_segment_attempts"),
)


frames = Table(
    "frames",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("frame_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("captured_at", Float, nullable=False),
    Column("width", BigInteger, nullable=False),
    Column("height", BigInteger, nullable=False),
    Column("regions", Text, nullable=False),  # JSON: [{"x", "y", "width", "height"}]; [] the whole frame
    Column("jpeg", LargeBinary),  # the image in the database, or
    Column("jpeg_path", Text),  # a file (cloud.settings.DetectSettings.images_dir)
    Column("jpeg_bytes", BigInteger, nullable=False),
    Column("model_id", String(bounds.MAX_NAME_CHARS), nullable=False),
    Column("boxes", Text, nullable=False),  # JSON: the Detections' boxes
    Column("box_count", BigInteger, nullable=False),
    Column("detected_at", Float, nullable=False),
    Column("stored_at", Float, nullable=False),
    PrimaryKeyConstraint("agent_id", "frame_id", name="pk_frames"),
    Index("ix_frames_captured_at", "captured_at"),
    Index("ix_frames_agent_captured_at", "agent_id", "captured_at"),
)

frame_labels = Table(  # which classes a frame holds, for listing frames by class
    "frame_labels",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("frame_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("label", String(bounds.MAX_NAME_CHARS), nullable=False),
    Column("best_score", Float, nullable=False),
    Column("captured_at", Float, nullable=False),
    PrimaryKeyConstraint("agent_id", "frame_id", "label", name="pk_frame_labels"),
    Index("ix_frame_labels_label_captured_at", "label", "captured_at"),
)


segment_audio = Table(  # what each segment sounded like, to play it back (audio_retention_s)
    "segment_audio",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("segment_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("codec", String(16), nullable=False),  # as the device sent it: opus, flac, pcm_s16le
    Column("sample_rate", BigInteger, nullable=False),
    Column("channels", BigInteger, nullable=False),
    Column("data", LargeBinary),  # in the database, or
    Column("path", Text),  # a file (audio_dir)
    Column("bytes", BigInteger, nullable=False),
    Column("stored_at", Float, nullable=False),
    PrimaryKeyConstraint("agent_id", "segment_id", name="pk_segment_audio"),
    Index("ix_segment_audio_stored_at", "stored_at"),
)

agent_status = Table(  # each device's latest status (its heartbeat, or its last will: offline)
    "agent_status",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("at", Float, nullable=False),  # the device's clock
    Column("online", Boolean, nullable=False),
    Column("site", String(bounds.MAX_SITE_CHARS)),
    Column("status", Text, nullable=False),  # the Status as it came (JSON)
    Column("received_at", Float, nullable=False),  # the cloud's clock: "last seen"
    PrimaryKeyConstraint("agent_id", name="pk_agent_status"),
)

agent_status_history = Table(  # a short history per device (status_history_s)
    "agent_status_history",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("at", Float, nullable=False),
    Column("online", Boolean, nullable=False),
    Column("status", Text, nullable=False),
    Column("received_at", Float, nullable=False),
    PrimaryKeyConstraint("agent_id", "at", name="pk_agent_status_history"),
    Index("ix_agent_status_history_received_at", "received_at"),
)

USERNAME_CHARS = 64
TOKEN_HASH_CHARS = 64  # hex SHA-256 of a session or API token: the token itself is never stored

dashboard_users = Table(
    "dashboard_users",
    metadata,
    Column("username", String(USERNAME_CHARS), nullable=False),
    Column("password_hash", Text, nullable=False),  # argon2id, with its parameters (PHC string)
    Column("role", String(16), nullable=False),  # admin | viewer
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("username", name="pk_dashboard_users"),
)

dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("token_hash", String(TOKEN_HASH_CHARS), nullable=False),
    Column("username", String(USERNAME_CHARS), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    PrimaryKeyConstraint("token_hash", name="pk_dashboard_sessions"),
    Index("ix_dashboard_sessions_expires_at", "expires_at"),
)

dashboard_tokens = Table(  # API tokens for scripts
    "dashboard_tokens",
    metadata,
    Column("token_hash", String(TOKEN_HASH_CHARS), nullable=False),
    Column("token_id", String(16), nullable=False),  # shown in listings, used to revoke
    Column("username", String(USERNAME_CHARS), nullable=False),
    Column("name", String(bounds.MAX_NAME_CHARS), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
    PrimaryKeyConstraint("token_hash", name="pk_dashboard_tokens"),
    Index("ix_dashboard_tokens_token_id", "token_id", unique=True),
)


JOB_NAME_CHARS = 255  # an uploaded file's name, as given

jobs = Table(  # files uploaded to the dashboard (POST /api/jobs), each cut into segments of its uploader
    "jobs",
    metadata,
    Column("job_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),  # the uploader: its segments' agent
    Column("name", String(JOB_NAME_CHARS), nullable=False),  # the file's name as given ("" if none)
    Column("kind", String(16), nullable=False),  # "audio"
    Column("format", String(64), nullable=False),  # the file's container and codec, e.g. "MP3 MPEG_LAYER_III"
    Column("bytes", BigInteger, nullable=False),
    Column("created_by", String(USERNAME_CHARS), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("origin_at", Float, nullable=False),  # capture time given to the file's first sample
    Column("duration_s", Float, nullable=False),
    Column("segment_count", BigInteger, nullable=False),
    PrimaryKeyConstraint("job_id", name="pk_jobs"),
    Index("ix_jobs_created_at", "created_at"),
)

job_segments = Table(  # the segments a job was cut into, in the file's order
    "job_segments",
    metadata,
    Column("job_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("position", BigInteger, nullable=False),  # 0, 1, ... in the file
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("segment_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("offset_s", Float, nullable=False),  # where the segment starts in the file
    Column("duration_s", Float, nullable=False),
    PrimaryKeyConstraint("job_id", "position", name="pk_job_segments"),
)


def by_key(table: Table, key: SegmentKey) -> Any:
    """The condition that selects one segment's rows of ``table``."""
    return and_(table.c.agent_id == key[0], table.c.segment_id == key[1])


def by_keys(table: Table, keys: list[SegmentKey]) -> Any:
    """The condition that selects these segments' rows of ``table``."""
    return tuple_(table.c.agent_id, table.c.segment_id).in_(keys)
