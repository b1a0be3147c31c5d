"""The dashboard: its JSON API over a real SQLite store, and its page rendered by a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from support import PASSWORD, dashboard_user, wait_until

from cloud.dashboard import create_app
from cloud.rule import reconcile
from cloud.settings import DashboardSettings
from cloud.store import Store
from contracts import CloudTranscript, Draft, Transcript, new_segment_id
from devtools.brokers import free_port, wait_for_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
T0 = time.time() - 60

DRAFT_ONLY = "please bring a warm coat"
DRAFT_OF_FINAL = "the old farmer walk slowly"
FINAL = "The old farmer walked slowly."


def draft(store: Store, sid: str, seq: int, text: str, agent: str = "pi-7") -> None:
    store.upsert_draft(
        Draft(agent_id=agent, segment_id=sid, seq=seq, started_at=T0 + seq * 5, ended_at=T0 + seq * 5 + 3,
              draft=Transcript(text=text, model_id="whisper-tiny.en-int8-onnx", produced_at=T0 + seq * 5 + 3.2))
    )  # fmt: skip


def final(store: Store, sid: str, seq: int, text: str, agent: str = "pi-7") -> None:
    transcript = Transcript(text=text, model_id="whisper-tiny.en-hf", produced_at=T0 + seq * 5 + 4)
    cloud = CloudTranscript(agent_id=agent, segment_id=sid, seq=seq, started_at=T0 + seq * 5,
                            ended_at=T0 + seq * 5 + 3, transcript=transcript, worker="w1")  # fmt: skip
    store.record_final(cloud, reconcile)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'captions.db'}")
    finished, pending = new_segment_id(), new_segment_id()
    draft(s, finished, 0, DRAFT_OF_FINAL)
    draft(s, pending, 1, DRAFT_ONLY)
    final(s, finished, 0, FINAL)
    s.ids = {"final": finished, "draft": pending}  # type: ignore[attr-defined]
    yield s
    s.close()


def test_api(store: Store) -> None:
    _, token = dashboard_user(store, "viewer")
    client = TestClient(create_app(DashboardSettings(), store=store), headers=token)
    segments = client.get("/api/segments").json()
    assert [s["segment_id"] for s in segments] == [store.ids["draft"], store.ids["final"]]  # newest first
    pending, finished = segments
    assert pending["final"] is None and pending["draft"]["text"] == DRAFT_ONLY
    assert set(pending) == {"segment_id", "agent_id", "site", "seq", "started_at", "ended_at", "draft", "final"}
    assert pending["site"] is None  # no status from pi-7 yet: no site known
    assert finished["draft"] == {
        "text": DRAFT_OF_FINAL,
        "model_id": "whisper-tiny.en-int8-onnx",
        "produced_at": pytest.approx(T0 + 3.2),
    }
    assert finished["final"]["text"] == FINAL
    assert (finished["final"]["source"], finished["final"]["version"]) == ("cloud", 2)
    assert set(finished["final"]) == {"text", "model_id", "source", "version", "produced_at", "stored_at", "reason"}
    assert finished["final"]["reason"] == "cloud"

    assert [s["seq"] for s in client.get("/api/segments", params={"limit": 1}).json()] == [1]
    assert client.get("/api/segments", params={"agent_id": "nobody"}).json() == []
    assert client.get("/api/segments", params={"limit": 0}).status_code == 422
    assert client.get("/api/stats").json() == {"segments": 2, "drafts": 2, "finals": 1}
    (disagreement,) = client.get("/api/disagreement").json()  # the draft "walk" against the final's "walked"
    assert (disagreement["agent_id"], disagreement["edge_model_id"], disagreement["segments"]) == (
        "pi-7", "whisper-tiny.en-int8-onnx", 1
    )  # fmt: skip
    assert (disagreement["edits"], disagreement["final_words"], disagreement["reasons"]) == (1, 5, {"cloud": 1})
    assert disagreement["wer"] == pytest.approx(0.2)
    assert client.get("/api/disagreement", params={"agent_id": "pi-8"}).json() == []

    one = client.get(f"/api/segments/pi-7/{store.ids['final']}").json()
    assert (one["agent_id"], one["segment_id"], one["final"]["text"]) == ("pi-7", store.ids["final"], FINAL)
    assert [(v["version"], v["source"], v["text"]) for v in one["versions"]] == [
        (1, "edge", DRAFT_OF_FINAL),
        (2, "cloud", FINAL),
    ]
    assert client.get(f"/api/segments/pi-8/{store.ids['final']}").status_code == 404  # ids are per device
    assert client.get("/healthz").json() == {"status": "ok"}

    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/live.js" in page.text and "/static/vendor/htmx.min.js" in page.text
    for asset in ("live.js", "style.css", "vendor/htmx.min.js"):
        assert client.get(f"/static/{asset}").status_code == 200
    for outside in ("../app.py", "..%2Fapp.py", "vendor/htmx.LICENSE", "nothing.js"):
        assert client.get(f"/static/{outside}").status_code == 404


@pytest.fixture
def served(store: Store) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(DashboardSettings(), store=store), host="127.0.0.1", port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port, 10)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)


def test_page_renders_drafts_and_finals_in_chromium(store: Store, served: str, tmp_path: Path) -> None:
    """The real page in Debian's Chromium, driven by Playwright (no browser of its own): log in,
    then the captions as the page renders them."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (Debian package chromium)")
    user, _ = dashboard_user(store, "viewer")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(served)  # not logged in: the login page
            assert page.url.endswith("/login")
            page.fill("input[name=username]", user)
            page.fill("input[name=password]", "not the password")
            page.click("button[type=submit]")
            page.wait_for_selector("#error:has-text('wrong user name or password')")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("tr[data-state=final]")
            page.wait_for_selector("#stat-finals:has-text('1')")
            page.wait_for_selector("#live:has-text('live')")
            dom = page.content()
            page.screenshot(path=str(tmp_path / "captions.png"))
            assert page.text_content("#user") == f"{user} · viewer"
            # live, without a reload: a new draft appears, then its final replaces it in place
            sid = new_segment_id()
            draft(store, sid, 2, "the live draf")
            row = f'tr[data-segment-id="{sid}"]'
            page.wait_for_selector(f"{row}[data-state=draft]")
            final(store, sid, 2, "The live draft.")
            page.wait_for_selector(f"{row}[data-state=final]")
            assert "The live draft." in (page.text_content(row) or "")
        finally:
            browser.close()
    assert DRAFT_ONLY in dom and DRAFT_OF_FINAL in dom
    assert "walked" in dom and "farmer" in dom  # the final, its changed words marked
    assert "<mark>walked</mark>" in dom
    rows = {(agent, sid): state for agent, sid, state in re.findall(
        r'<tr data-agent-id="([^"]+)" data-segment-id="([^"]+)"[^>]*data-state="(\w+)"', dom)}  # fmt: skip
    assert rows == {("pi-7", store.ids["final"]): "final", ("pi-7", store.ids["draft"]): "draft"}
    assert dom.index(store.ids["draft"]) < dom.index(store.ids["final"])  # newest first


def test_export_parses_as_srt_and_webvtt(store: Store, tmp_path: Path) -> None:
    """The captions as files, read back with independent parsers (srt, webvtt-py)."""
    import srt
    import webvtt

    _, token = dashboard_user(store, "viewer")
    client = TestClient(create_app(DashboardSettings(), store=store), headers=token)
    answer = client.get("/api/export", params={"format": "srt", "agent_id": "pi-7"})
    assert answer.status_code == 200 and 'filename="edgecap-pi-7.srt"' in answer.headers["content-disposition"]
    cues = list(srt.parse(answer.text))
    assert [c.content for c in cues] == [FINAL, DRAFT_ONLY]  # oldest first; the final where there is one
    assert [c.start.total_seconds() for c in cues] == [0.0, 5.0] and cues[0].end.total_seconds() == 3.0
    vtt_file = tmp_path / "captions.vtt"
    vtt_file.write_text(client.get("/api/export", params={"format": "vtt"}).text)
    parsed = webvtt.read(str(vtt_file))
    assert [(c.identifier, c.text, c.start) for c in parsed] == [
        (store.ids["final"], FINAL, "00:00:00.000"), (store.ids["draft"], DRAFT_ONLY, "00:00:05.000")
    ]  # fmt: skip
    assert client.get("/api/export", params={"format": "txt"}).text == f"{FINAL}\n{DRAFT_ONLY}\n"
    rows = client.get("/api/export", params={"format": "json"}).json()
    assert [r["segment_id"] for r in rows] == [store.ids["final"], store.ids["draft"]]
    assert client.get("/api/export", params={"format": "txt", "since": T0 + 1}).text == f"{DRAFT_ONLY}\n"
    assert client.get("/api/export", params={"format": "srt", "agent_id": "nobody"}).text == ""
    assert client.get("/api/export", params={"format": "docx"}).status_code == 422


def test_the_live_feed_resumes_where_it_left_off(store: Store, served: str) -> None:
    """Server-sent events over a real server: every segment's states in order; a client that went
    away and comes back with its last event id gets what changed meanwhile (nothing missed)."""
    import httpx
    from httpx_sse import connect_sse

    _, token = dashboard_user(store, "viewer")

    Events = list[dict[str, Any]]

    def read(client: httpx.Client, want: Callable[[Events], bool], **headers: str) -> tuple[Events, str]:
        events: Events = []
        last = ""
        with connect_sse(client, "GET", "/api/events", params={"since": 0}, headers=token | headers) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for sse in source.iter_sse():
                if sse.event != "segment":
                    continue
                events.append(json.loads(sse.data))
                last = sse.id
                if want(events):
                    break
        return events, last

    def states(events: Events) -> set[tuple[str, int]]:
        return {(e["segment_id"], e["final"]["version"] if e["final"] else 1) for e in events}

    with httpx.Client(base_url=served, timeout=20) as client:
        first, last = read(client, lambda e: len(states(e)) >= 2)
        assert states(first) == {(store.ids["final"], 2), (store.ids["draft"], 1)}
        away = new_segment_id()  # while the client is away: a new draft, and the pending one's final
        draft(store, away, 2, "while you were away")
        final(store, store.ids["draft"], 1, "Please bring a warm coat.")
        wanted = {(away, 1), (store.ids["draft"], 2)}
        again, _ = read(client, lambda e: wanted <= states(e), **{"Last-Event-ID": last})
        assert wanted <= states(again)
        assert client.get("/api/events", timeout=5).status_code == 401  # no token: the door


def test_vendored_scripts_are_the_pinned_release() -> None:
    """The pages load htmx from the package (no CDN), the very file of the pinned npm release."""
    import hashlib

    vendor = Path(__file__).resolve().parents[2] / "cloud" / "dashboard" / "static" / "vendor"
    pinned = json.loads((vendor / "vendor.json").read_text())["htmx.org"]
    assert hashlib.sha256((vendor / pinned["file"]).read_bytes()).hexdigest() == pinned["sha256"]
    assert f"htmx.org@{pinned['version']}" in pinned["from"] and (vendor / "htmx.LICENSE").is_file()
    templates = Path(__file__).resolve().parents[2] / "cloud" / "dashboard" / "templates"
    for page in templates.glob("*.html"):  # nothing from another site
        assert not re.search(r'(src|href)="(https?:)?//', page.read_text()), page.name


class CountingStore(Store):
    """The real store, counting its change-feed reads."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.feed_reads = 0

    def changed_since(self, *args: Any, **kwargs: Any) -> list[tuple[float, Any]]:
        self.feed_reads += 1
        return super().changed_since(*args, **kwargs)


def test_every_live_stream_shares_one_reader_of_the_store(tmp_path: Path) -> None:
    """Streams open at once take their events from one reader: the store is read once per poll
    however many browsers watch, plus once per stream as it starts (its catch-up)."""
    import httpx
    from httpx_sse import connect_sse

    store = CountingStore(f"sqlite:///{tmp_path / 'captions.db'}")
    _, token = dashboard_user(store, "viewer")
    app = create_app(DashboardSettings(events_poll_s=0.05), store=store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    threading.Thread(target=server.run, daemon=True).start()
    wait_for_port(port, 10)
    streams, opened, got = 4, threading.Barrier(5, timeout=30), [[] for _ in range(4)]
    wanted = new_segment_id()

    def watch(events: list[str]) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            with connect_sse(client, "GET", "/api/events", headers=token) as source:
                opened.wait()
                for sse in source.iter_sse():
                    if sse.event == "segment":
                        events.append(json.loads(sse.data)["segment_id"])
                        if wanted in events:
                            return

    try:
        watchers = [threading.Thread(target=watch, args=(got[i],), daemon=True) for i in range(streams)]
        for w in watchers:
            w.start()
        opened.wait()  # every stream is open
        wait_until(lambda: app.state.feed.streams == streams, 20, "every stream to start")
        draft(store, wanted, 0, "one for all")
        for w in watchers:
            w.join(30)
        assert all(wanted in events for events in got), got
        assert app.state.feed.reads >= 1
        # one catch-up each, and the shared reads (one of which may be under way as we look)
        assert 0 <= store.feed_reads - (app.state.feed.reads + streams) <= 1, (store.feed_reads, app.state.feed.reads)
    finally:
        server.should_exit = True
        store.close()



def test_metrics_carry_each_device_of_the_fleet(store: Store) -> None:
    """The dashboard's /metrics: one series per device from the store (online, last seen, backlog),
    read with Prometheus's own parser; behind the login like every route."""
    from prometheus_client.parser import text_string_to_metric_families

    from contracts import Status

    now = time.time()
    store.record_status(Status(agent_id="pi-kitchen", online=True, at=now, site="home", queue_depth=3,
                               oldest_age_s=42.0, quota_full=True))  # fmt: skip
    store.record_status(Status(agent_id="pi-shed", online=False, at=now, site="garden", muted=True))  # last will
    _, token = dashboard_user(store, "viewer")
    client = TestClient(create_app(DashboardSettings(), store=store))
    assert client.get("/metrics").status_code == 401
    page = client.get("/metrics", headers=token)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    series = {(s.name, s.labels.get("agent_id"), s.labels.get("site")): s.value
              for family in text_string_to_metric_families(page.text) for s in family.samples}  # fmt: skip
    assert series[("edgecap_fleet_device_online", "pi-kitchen", "home")] == 1.0
    assert series[("edgecap_fleet_device_online", "pi-shed", "garden")] == 0.0
    assert series[("edgecap_fleet_device_queue_depth", "pi-kitchen", "home")] == 3.0
    assert series[("edgecap_fleet_device_oldest_unsent_seconds", "pi-kitchen", "home")] == 42.0
    assert series[("edgecap_fleet_device_quota_full", "pi-kitchen", "home")] == 1.0
    assert series[("edgecap_fleet_device_muted", "pi-shed", "garden")] == 1.0
    assert 0 <= series[("edgecap_fleet_device_last_seen_seconds", "pi-shed", "garden")] < 60
