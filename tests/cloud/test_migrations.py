"""The store's schema goes through alembic: a store made by the previous schema upgrades in place,
on SQLite and on a real PostgreSQL, keeping every row; a new store has exactly the tables of
``cloud.store``; services that start together migrate once."""

from __future__ import annotations

import threading
import time

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    insert,
    inspect,
    select,
)

from cloud.rule import reconcile
from cloud.store import Store, metadata
from contracts import CloudTranscript, Transcript

# The schema of every store before migrations, as its code made it (create_all), with the integer
# columns of the first stores (INTEGER: 32-bit on PostgreSQL), which the upgrade must widen.
OLD = MetaData()
old_segments = Table(
    "segments",
    OLD,
    Column("segment_id", String(128), primary_key=True),
    Column("agent_id", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=False),
    Column("draft_text", Text),
    Column("draft_model_id", String(200)),
    Column("draft_produced_at", Float),
    Column("final_text", Text),
    Column("final_model_id", String(200)),
    Column("final_produced_at", Float),
    Column("final_source", String(8)),
    Column("final_version", Integer),
    Column("final_stored_at", Float),
    Column("final_message", Text),
    Column("final_published_at", Float),
    Column("updated_at", Float, nullable=False),
    Index("ix_segments_started_at", "started_at"),
    Index("ix_segments_agent_seq", "agent_id", "seq"),
)
old_versions = Table(
    "caption_versions",
    OLD,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("segment_id", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("source", String(8), nullable=False),
    Column("text", Text, nullable=False),
    Column("model_id", String(200), nullable=False),
    Column("produced_at", Float, nullable=False),
    UniqueConstraint("segment_id", "version", name="uq_caption_versions_segment_version"),
)


def head_revision() -> str:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "cloud:migrations")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def schema_differences(store: Store) -> list[object]:
    """What the migrated schema lacks or has beyond ``cloud.tables``; Alembic cannot compare an index
    on an expression (the search index: ``tests/cloud/test_search.py`` checks it is there)."""

    def compared(_obj: object, name: str | None, *_: object) -> bool:
        return name != "ix_segments_search"

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": compared})
        return list(compare_metadata(context, metadata))


def make_old_store(url: str) -> None:
    """A store as the previous code left it: one draft-only segment, one with its final."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    OLD.create_all(engine)
    now = time.time()
    row = {"started_at": now - 5, "ended_at": now - 3, "updated_at": now}
    with engine.begin() as conn:
        for values in (
                {**row, "segment_id": "old-draft", "agent_id": "pi-1", "seq": 1, "draft_text": "turn left",
                 "draft_model_id": "edge-model", "draft_produced_at": now - 2},
                {**row, "segment_id": "old-final", "agent_id": "pi-2", "seq": 7, "draft_text": "hello wrld",
                 "draft_model_id": "edge-model", "draft_produced_at": now - 2, "final_text": "Hello world.",
                 "final_model_id": "cloud-model", "final_produced_at": now - 1, "final_source": "cloud",
                 "final_version": 2, "final_stored_at": now, "final_message": None, "final_published_at": now},
        ):  # fmt: skip
            conn.execute(insert(old_segments).values(**values))  # rows of different columns: one by one
        conn.execute(
            insert(old_versions),
            [
                {"segment_id": "old-draft", "version": 1, "source": "edge", "text": "turn left",
                 "model_id": "edge-model", "produced_at": now - 2},
                {"segment_id": "old-final", "version": 1, "source": "edge", "text": "hello wrld",
                 "model_id": "edge-model", "produced_at": now - 2},
                {"segment_id": "old-final", "version": 2, "source": "cloud", "text": "Hello world.",
                 "model_id": "cloud-model", "produced_at": now - 1},
            ],
        )  # fmt: skip
    engine.dispose()


def test_a_store_of_the_previous_schema_upgrades_in_place(store_url: str) -> None:
    make_old_store(store_url)
    store = Store(store_url)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head_revision()
            assert "segment_attempts" in inspect(conn).get_table_names()
        assert schema_differences(store) == []

        draft_only = store.get(("pi-1", "old-draft"))
        assert draft_only is not None and draft_only["draft"] is not None and draft_only["final"] is None
        assert draft_only["draft"]["text"] == "turn left"
        done = store.get(("pi-2", "old-final"))
        assert done is not None and done["final"] is not None and done["final"]["text"] == "Hello world."
        assert [(v["agent_id"], v["version"], v["text"]) for v in store.versions(("pi-2", "old-final"))] == [
            ("pi-2", 1, "hello wrld"),
            ("pi-2", 2, "Hello world."),
        ]
        assert store.get(("pi-2", "old-draft")) is None  # keyed by device now
        assert store.counts() == {"segments": 2, "drafts": 2, "finals": 1}

        # the old draft-only segment gets its final; a sequence number past 32 bits now fits
        cloud = Transcript(text="Turn left.", model_id="cloud-model", produced_at=time.time())
        header = {k: draft_only[k] for k in ("agent_id", "segment_id", "seq", "started_at", "ended_at")}  # type: ignore[literal-required]
        final = store.record_final(CloudTranscript(**header, transcript=cloud, worker="w"), reconcile)
        assert final is not None and final.text == "Turn left."
        big = CloudTranscript(**{**header, "segment_id": "new-one", "seq": 2**40}, transcript=cloud, worker="w")
        assert store.record_final(big, reconcile) is not None
        with store.engine.connect() as conn:
            seqs = sorted(conn.execute(select(metadata.tables["segments"].c.seq)).scalars())
        assert seqs == [1, 7, 2**40]
    finally:
        store.close()

    reopened = Store(store_url)  # a second start finds nothing to do
    assert reopened.counts() == {"segments": 3, "drafts": 2, "finals": 3}
    reopened.close()


def test_a_new_store_has_exactly_the_tables_of_the_code(store_url: str) -> None:
    store = Store(store_url)
    try:
        assert schema_differences(store) == []
        assert store.take_attempts([("pi-1", "s")]) == {("pi-1", "s"): 1}
    finally:
        store.close()


def test_services_that_start_together_migrate_once(store_url: str) -> None:
    stores: list[Store] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_store() -> None:
        start.wait()
        try:
            stores.append(Store(store_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == [] and len(stores) == 4
        assert schema_differences(stores[0]) == []
    finally:
        for s in stores:
            s.close()


def test_drafts_waiting_in_an_upgraded_store_get_their_deadline(store_url: str) -> None:
    """0004: drafts stored before it get ``draft_stored_at`` from their row, so the deadline scan
    finds them; finals stored before it have no reason and are left out of the disagreement."""
    make_old_store(store_url)
    store = Store(store_url)
    try:
        (late,) = store.claim_overdue(time.time() + 1)
        assert (late.agent_id, late.segment_id, late.text) == ("pi-1", "old-draft", "turn left")
        assert late.reason == "deadline"
        old = store.get(("pi-2", "old-final"))
        assert old is not None and old["final"] is not None and old["final"]["reason"] is None
        made = store.reconciliation(("pi-2", "old-final"))
        assert made is not None and made["alignment"] is None and made["disagreement"] is None
        assert store.disagreement() == []
    finally:
        store.close()
