"""Every view of the dashboard in Debian's Chromium (Playwright, no browser of its own): a real server
on a free port, a real Kafka and detection worker behind the uploads and the agents' configuration,
and a store written through the reconciler's own write path. Screenshots of each view, at a desktop
and a phone width, go to ``$EDGECAP_SCREENSHOTS`` (``make screenshots``: the README's pictures) or
the test's temporary folder."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from photos import load
from prometheus_client import start_http_server
from support import PASSWORD, dashboard_user, unique, wait_until

from cloud.dashboard import create_app
from cloud.detect.worker import DetectWorker
from cloud.rule import reconcile
from cloud.settings import DashboardSettings, DetectSettings, WorkerSettings
from cloud.store import Store
from contracts import (
    CloudTranscript,
    Draft,
    Kafka,
    Segment,
    Status,
    Transcript,
    TranscriptSegment,
    Word,
    decode,
    new_segment_id,
)
from devtools.brokers import Tansu, free_port, wait_for_port
from runtime.audiocodec import to_audio
from runtime.settings import KafkaSettings

pytest.importorskip("skimage")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

# what the kitchen said: (draft, final, the final's words with their start and end in the segment)
SPOKEN = [
    ("turn the oven of", "Turn the oven off.", [("Turn", 0.2, 0.5), ("the", 0.5, 0.7), ("oven", 0.7, 1.2),
                                                 ("off.", 1.2, 1.6)]),
    ("is the kettle boiling", None, []),
    ("centrifuge spinning at four thousand", "The centrifuge is spinning at four thousand.",
     [("The", 0.1, 0.3), ("centrifuge", 0.3, 1.0), ("is", 1.0, 1.1), ("spinning", 1.1, 1.6), ("at", 1.6, 1.7),
      ("four", 1.7, 2.0), ("thousand.", 2.0, 2.6)]),
]  # fmt: skip


@dataclass
class Site:
    """The running dashboard and what the test put behind it."""

    url: str
    store: Store
    kafka: KafkaSettings
    segments: dict[str, tuple[str, str]]  # name -> (agent, segment id)
    shots: Path


def tone(seconds: float, rate: int = 16000) -> bytes:
    """A 220 Hz tone with a slow swell: something to play (the words' times are the test's own)."""
    n = int(seconds * rate)
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 220 * i / rate) * (0.5 + 0.5 * math.sin(i / rate))))
        for i in range(n)
    )


def fill(store: Store) -> dict[str, tuple[str, str]]:
    now = time.time()
    store.record_status(Status(agent_id="pi-kitchen", online=True, at=now, site="home", queue_depth=2,
                               oldest_age_s=4, asr_rtf=0.31, cpu_percent=38, rss_mb=212, uptime_s=5400))  # fmt: skip
    store.record_status(Status(agent_id="pi-lab", online=True, at=now, site="lab", asr_rtf=0.28, muted=True))
    store.record_status(Status(agent_id="pi-garage", online=False, at=now - 600, site="home"))  # its last will
    made = {}
    speakers = ("pi-kitchen", "pi-kitchen", "pi-lab")
    for seq, (agent, (draft_text, final_text, words)) in enumerate(zip(speakers, SPOKEN, strict=True)):
        sid = new_segment_id()
        start = now - 40 + seq * 12
        header = {"agent_id": agent, "segment_id": sid, "seq": seq + 1, "started_at": start, "ended_at": start + 3}
        edge = Transcript(text=draft_text, model_id="whisper-tiny.en-int8-onnx", produced_at=start + 3.3)
        store.upsert_draft(Draft(**header, draft=edge))
        audio = to_audio(tone(3.0), 16000, 1, "opus")
        store.store_audio(Segment(**header, audio=audio, draft=edge))
        if final_text:
            timed = [Word(word=f" {w}", start=a, end=b, probability=0.9) for w, a, b in words]
            spans = [TranscriptSegment(start=0, end=3, text=final_text, words=timed)]
            cloud = Transcript(text=final_text, model_id="whisper-large-v3", produced_at=start + 4.1, segments=spans)
            store.record_final(CloudTranscript(**header, transcript=cloud, worker="gpu-0"), reconcile)
        made[("oven", "kettle", "centrifuge")[seq]] = (agent, sid)
    return made


@pytest.fixture
def site(kafka: Tansu, models_dir: Path, tmp_path: Path) -> Iterator[Site]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (Debian package chromium)")
    if not (models_dir / "yolov3-tiny" / "onnx" / "model.json").is_file():
        pytest.skip("no detector prepared: edgecap models prepare --detector yolov3-tiny")
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    bus = KafkaSettings(bootstrap_servers=kafka.bootstrap)
    worker = DetectWorker(WorkerSettings(kafka=bus, group=unique("detect"), session_timeout_ms=3000,
                                         detect=DetectSettings(model_dir=models_dir / "yolov3-tiny", threads=1)),
                          store=store)  # fmt: skip
    stop = threading.Event()
    detecting = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    detecting.start()
    # the System view reads real /metrics: this process's (the detection worker's counters) and one
    # target where nothing listens
    exporter, exporting = start_http_server(free_port(), addr="127.0.0.1")
    targets = {"detect": f"http://127.0.0.1:{exporter.server_port}/metrics",
               "transcribe": f"http://127.0.0.1:{free_port()}/metrics"}  # fmt: skip
    port = free_port()
    app = create_app(DashboardSettings(store_url="sqlite://", kafka=bus, metrics_targets=targets), store=store)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    wait_for_port(port, 10)
    shots = Path(os.environ.get("EDGECAP_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Site(f"http://127.0.0.1:{port}", store, bus, fill(store), shots)
    finally:
        server.should_exit = True
        serving.join(10)
        stop.set()
        detecting.join(30)
        exporter.shutdown()
        exporting.join(10)
        store.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        flags = ["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"]
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            yield chromium
        finally:
            chromium.close()


def log_in(browser: Any, site: Site, role: str, viewport: dict[str, int] = DESKTOP) -> Any:
    user, _ = dashboard_user(site.store, role)
    page = browser.new_context(viewport=viewport).new_page()
    page.goto(f"{site.url}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#captions tr")
    return page


def visit(page: Any, view: str) -> None:
    """Open a view from the menu, and wait until its scripts run (htmx is deferred)."""
    with page.expect_navigation():
        page.click(f"nav >> text={view}")
    page.wait_for_load_state("load")
    page.wait_for_function("window.htmx !== undefined")


def shoot(page: Any, site: Site, name: str) -> None:
    page.screenshot(path=str(site.shots / f"{name}.png"), full_page=False)


def overflows(page: Any) -> bool:
    """Whether the page is wider than the window (a phone would scroll sideways)."""
    return bool(page.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1"))


def test_every_view_for_an_admin(site: Site, browser: Any) -> None:
    page = log_in(browser, site, "admin")

    # Live: every segment with its site; the draft alone is pending; filters go in the URL
    page.wait_for_selector("tr[data-state=final] >> text=Turn the oven off.")
    assert page.locator("#captions tr").count() == 3
    assert "home" in page.text_content(f'tr[data-segment-id="{site.segments["oven"][1]}"]')
    page.select_option("#site-filter", "lab")
    page.wait_for_function("document.querySelectorAll('#captions tr').length === 1")
    assert page.url.endswith("/?site=lab")
    page.select_option("#site-filter", "")
    page.wait_for_function("document.querySelectorAll('#captions tr').length === 3")
    shoot(page, site, "live")

    # Segment: its journey, why the final, every version, and the audio a word seeks to
    agent, sid = site.segments["centrifuge"]
    page.click(f'tr[data-segment-id="{sid}"] a.agent')
    page.wait_for_url(f"**/segments/{agent}/{sid}")
    journey = page.text_content(".journey")
    assert all(step in journey for step in ("captured", "draft", "in the cloud", "transcribed", "final"))
    assert page.text_content(".reason") == "cloud"
    assert page.locator(".versions tbody tr").count() == 2
    page.wait_for_function("document.getElementById('player').readyState >= 1")  # the audio route answered
    page.click("#words .word >> text=spinning")
    page.wait_for_function("Math.abs(document.getElementById('player').currentTime - 1.1) < 0.05")
    shoot(page, site, "segment")

    # Search: words as one types, the query in the URL, a link back to the segment
    visit(page, "Search")
    page.fill("#q", "oven")
    page.wait_for_function("document.querySelectorAll('#results tr.result').length === 1")
    assert "Turn the oven off." in page.text_content("#results")
    assert "q=oven" in page.url
    page.fill("#q", "")
    page.wait_for_function("document.querySelectorAll('#results tr.result').length === 3")
    page.select_option("select[name=state]", "draft")
    page.wait_for_function("document.querySelectorAll('#results tr.result').length === 1")
    assert "kettle" in page.text_content("#results")
    page.go_back()  # htmx keeps the history: the previous results come back
    page.wait_for_function("document.querySelectorAll('#results tr.result').length === 3")
    page.goto(f"{site.url}/search?q=centrifuge")  # a shared URL shows its results
    assert page.locator("#results tr.result").count() == 1
    shoot(page, site, "search")

    # Fleet: online and offline (the last will), muted, quota; the agent's page; its configuration
    visit(page, "Fleet")
    assert page.locator("tr.agent-row").count() == 3
    assert page.locator('tr.offline[data-agent-id="pi-garage"]').count() == 1
    assert "muted" in page.text_content('tr[data-agent-id="pi-lab"]')
    shoot(page, site, "fleet")
    page.click("a.agent >> text=pi-kitchen")
    page.wait_for_url("**/fleet/pi-kitchen")
    page.check("input[name=muted]")
    page.fill("input[name=heartbeat_s]", "7")
    page.click("#config-form button[type=submit]")
    page.wait_for_selector("#config-result.ok")
    assert re.search(r"version \d{16}", page.text_content("#config-result") or ""), "the version Kafka took"
    config = read_config(site.kafka, "pi-kitchen")
    assert (config.muted, config.heartbeat_s) == (True, 7.0)
    shoot(page, site, "agent")

    # Upload: a photograph through Kafka and the detector; its boxes drawn over it; then in Frames
    visit(page, "Upload")
    chelsea = png("chelsea.png")
    page.set_input_files("#file", files=[{"name": "chelsea.png", "mimeType": "image/png", "buffer": chelsea}])
    page.wait_for_selector("#result svg.boxes g.box[data-label=cat]", timeout=90_000)
    box = page.locator("#result g.box[data-label=cat] rect").bounding_box()
    picture = page.locator("#result svg.boxes").bounding_box()
    assert box is not None and picture is not None and box["width"] > picture["width"] / 4  # drawn to scale
    shoot(page, site, "upload")
    visit(page, "Frames")
    page.wait_for_selector("figure.frame g.box[data-label=cat]")
    page.fill("input[name=label]", "zebra")
    page.wait_for_selector("#frames-grid >> text=No frames match.")
    page.fill("input[name=label]", "cat")
    page.wait_for_selector("figure.frame g.box[data-label=cat]")
    shoot(page, site, "frames")

    visit(page, "System")
    page.wait_for_selector("section.service.up[data-service=detect]")
    assert "down" in page.text_content("section.service[data-service=transcribe]")
    detected = "[data-service=detect] td.num"  # its first figure: records in (the photograph, at least)
    page.wait_for_function(f"/^[1-9]/.test(document.querySelector('{detected}').textContent)")
    shoot(page, site, "system")

    page.click("#logout")
    page.wait_for_url("**/login")
    page.goto(f"{site.url}/fleet")
    assert page.url.endswith("/login")


def test_a_viewer_sees_no_admin_action(site: Site, browser: Any) -> None:
    page = log_in(browser, site, "viewer")
    for unknown in ("/segments/pi-lab/nothing-here", "/fleet/pi-nobody"):
        answer = page.goto(f"{site.url}{unknown}")
        assert answer is not None and answer.status == 404 and "Not found" in page.text_content("main")
    page.goto(f"{site.url}/fleet/pi-kitchen")
    assert page.locator("#config-form").count() == 0
    page.goto(f"{site.url}/upload")
    assert page.locator("#file").count() == 0 and "for admins" in page.text_content("main")
    # and the routes behind them refuse the viewer's session (with its CSRF token)
    token = page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']")
    for path, body in (("/api/agents/pi-kitchen/config", '{"muted": true}'), ("/api/frames", "x"), ("/api/jobs", "x")):
        answer = page.request.post(f"{site.url}{path}", data=body, headers={"X-CSRF-Token": token})
        assert answer.status == 403, (path, answer.status)


def test_every_view_fits_a_phone(site: Site, browser: Any) -> None:
    page = log_in(browser, site, "admin", PHONE)
    agent, sid = site.segments["centrifuge"]
    for path, name in (("/", "live"), (f"/segments/{agent}/{sid}", "segment"), ("/search", "search"),
                       ("/fleet", "fleet"), ("/fleet/pi-kitchen", "agent"), ("/frames", "frames"),
                       ("/upload", "upload"), ("/system", "system")):  # fmt: skip
        page.goto(f"{site.url}{path}")
        page.wait_for_load_state("networkidle")
        assert not overflows(page), f"{path} is wider than a phone"
        assert page.locator("nav a").count() == 6
        shoot(page, site, f"phone-{name}")


def png(name: str) -> bytes:
    from PIL import Image as Pil

    out = io.BytesIO()
    Pil.fromarray(load(name)[:, :, ::-1]).save(out, "PNG")
    return out.getvalue()


def read_config(bus: KafkaSettings, agent_id: str) -> Any:
    """The newest configuration for ``agent_id`` on ``edgecap.config``, read by a real consumer."""
    from confluent_kafka import Consumer

    from contracts import AgentConfig

    consumer = Consumer({"bootstrap.servers": bus.bootstrap_servers, "group.id": unique("read-config"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([Kafka.CONFIG.value])
    found: list[AgentConfig] = []
    try:
        def newest() -> bool:
            record = consumer.poll(0.5)
            if record is not None and record.error() is None and record.key() == agent_id.encode():
                found.append(decode(record.value(), AgentConfig))
            return bool(found)

        wait_until(newest, 30, f"a configuration for {agent_id} on {Kafka.CONFIG.value}")
    finally:
        consumer.close()
    return found[-1]
