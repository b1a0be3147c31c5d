"""The dashboard under load: final stored → on the client, with many agents writing and many watching.

    .venv/bin/python benchmarks/dashboard.py [--agents 100] [--clients 20] [--browsers 1] [--duration-s 60]
                                             [--drain-s 30] [--poll-s 0.25] [--keep DIR]

Everything is real and in processes of its own: a PostgreSQL cluster of its own
(:class:`devtools.postgres.Postgres`), the dashboard (``python -m cloud.dashboard``: uvicorn, one
process, on a free port) with a viewer and an API token made through
:class:`cloud.dashboard.accounts.Accounts`, and three processes started here:

- the **agents**: ``--agents`` simulated devices writing through the store's own write path, the one
  the reconciler uses (:meth:`Store.upsert_draft`, then :meth:`Store.record_final` with the real
  rule :func:`cloud.rule.reconcile`): each agent a segment every 2-5 s (uniform), its draft at once and
  its final 1-2 s after the draft was stored, from a scheduler and a pool of 8 writer threads, so the
  cadence does not wait on the writes (how late writes start is reported: ``writer_lag_ms_p95``);
- the **SSE clients**: ``--clients`` streams on ``GET /api/events`` (async httpx + httpx-sse, each its
  own connection; a dropped stream reconnects with ``Last-Event-ID`` as a browser does). For each
  final a client records its receive time − the final's ``stored_at`` (both ``time.time()`` of this
  machine; ``stored_at`` is taken before the final's transaction commits, so the commit is counted);
- the **browsers** (``--browsers``, 0 to skip): pages of Debian's Chromium driven by Playwright
  (``executable_path``: no browser download), logged in through ``POST /api/login``, with a
  MutationObserver installed before the page's own scripts that records when each final's text
  first appears in the DOM (``Date.now()``). Every final's text carries a token of its own
  (``zz<agent>n<seq>``) that its draft lacks, so "on the page" means the final text itself is shown.

The load runs ``--duration-s``; then the clients get up to ``--drain-s`` to receive every final
stored. ``missed`` counts (finals stored × clients) never received by a client: it must be 0 (the
exit status is 1 otherwise). ``page_missed`` counts the same for the pages: a page that shows only
its newest rows or one site may legitimately miss some; it is reported, not judged.

Server figures are the dashboard process's own, from ``/proc``: CPU seconds (user + system) over
the load window and that as a percentage of one core, and its peak RSS (``VmHWM``); ``rss_idle_mb``
is its RSS with every client connected, before the load. Page weight: ``/`` (after redirects) and
every asset it names (scripts, stylesheets, icons, images, and ``url()``/``@import`` in its
stylesheets), fetched uncompressed, summed, and gzip-compressed here file by file (level 6, as a
compressing proxy would send them), after the load (``page_bytes``, ``page_html_bytes``: a
server-rendered page grows with what is stored) and before it, on the empty store (``…_empty``);
``page_transfer_bytes`` is what the first browser received while loading the page on the empty
store (its API calls included, the event stream excluded). A page that cannot be fetched is
reported in ``page_error`` (the dashboard's log is in ``--keep``'s directory).

Everything shares this machine's cores (PostgreSQL, the dashboard, the writers, the clients and
Chromium): latencies include their competition; ``clients_cpu_percent`` (the SSE clients' process,
of one core) and ``host_cpu_percent`` (the whole machine, of all its cores) over the load window
show how busy the measuring side and the machine were. Compare runs taken on one machine. The feed
reads the store every ``events_poll_s`` (``--poll-s`` sets it), which bounds the latency from
below. Prints one line per phase on stderr, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import heapq
import json
import logging
import math
import multiprocessing as mp
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from cloud.dashboard.accounts import Accounts  # noqa: E402
from cloud.rule import reconcile  # noqa: E402
from cloud.settings import DashboardSettings  # noqa: E402
from cloud.store import Store  # noqa: E402
from contracts import CloudTranscript, Draft, Transcript, new_segment_id  # noqa: E402
from devtools.brokers import free_port, wait_for_port  # noqa: E402
from devtools.postgres import Postgres  # noqa: E402

log = logging.getLogger("benchmarks.dashboard")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = re.compile(r"zz(\d{3})n(\d{5})")
WRITERS = 8


def token(agent: int, seq: int) -> str:
    """The word only the final of ``agent``'s segment ``seq`` contains."""
    return f"zz{agent:03d}n{seq:05d}"


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# --- the agents (a process) ------------------------------------------------------------------


def generate(url: str, agents: int, duration_s: float, out: str, seed: int) -> None:
    """Write drafts and finals for ``agents`` devices for ``duration_s``, then the figures to ``out``."""
    rng = random.Random(seed)
    store = Store(url, create=False)
    pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="writer")
    lock = threading.Condition()
    due: list[tuple[float, int, str, int, int, str]] = []  # (when, tie, kind, agent, seq, segment_id)
    pending = [0]  # writes submitted and not yet done
    lag: list[float] = []
    took: list[float] = []
    counts = {"drafts": 0, "finals": 0, "duplicates": 0, "errors": 0}
    tie = iter(range(1 << 62))
    start = time.time()
    end = start + duration_s

    def push(when: float, kind: str, agent: int, seq: int, segment_id: str) -> None:
        with lock:
            heapq.heappush(due, (when, next(tie), kind, agent, seq, segment_id))
            lock.notify()

    def tally(what: str) -> None:
        with lock:
            counts[what] += 1

    def header(agent: int, seq: int, segment_id: str, at: float) -> dict[str, Any]:
        return {"agent_id": f"bench-{agent:03d}", "segment_id": segment_id, "seq": seq,
                "started_at": at - 2.5, "ended_at": at}  # fmt: skip

    def write(when: float, kind: str, agent: int, seq: int, segment_id: str) -> None:
        began = time.time()
        lag.append(began - when)
        try:
            if kind == "draft":
                edge = Transcript(text=f"the quick brown fox jumps dd{agent:03d}n{seq:05d}",
                                  model_id="whisper-tiny.en-int8-onnx", produced_at=began)  # fmt: skip
                store.upsert_draft(Draft(**header(agent, seq, segment_id, when), draft=edge))
                tally("drafts")
                push(when + rng.uniform(1.0, 2.0), "final", agent, seq, segment_id)
            else:
                cloud = Transcript(text=f"The quick brown fox jumps {token(agent, seq)}.",
                                   model_id="whisper-small@ct2-int8:bench", produced_at=began)  # fmt: skip
                transcript = CloudTranscript(**header(agent, seq, segment_id, when), transcript=cloud, worker="bench")
                tally("finals" if store.record_final(transcript, reconcile) is not None else "duplicates")
        except Exception:  # a failed write is counted and the run goes on; the figures will show it
            tally("errors")
            log.exception("the %s of %s/%d failed", kind, agent, seq)
        finally:
            took.append(time.time() - began)
            with lock:
                pending[0] -= 1
                lock.notify()

    for agent in range(agents):
        push(start + rng.uniform(0.0, 5.0), "draft", agent, 0, new_segment_id())
    with lock:
        while due or pending[0]:
            if not due:
                lock.wait()
                continue
            when, _, kind, agent, seq, segment_id = due[0]
            wait = when - time.time()
            if wait > 0:
                lock.wait(wait)
                continue
            heapq.heappop(due)
            if kind == "draft":
                if when >= end:
                    continue  # the run is over: no new segments, but every final still comes
                heapq.heappush(due, (when + rng.uniform(2.0, 5.0), next(tie), "draft", agent, seq + 1,
                                     new_segment_id()))  # fmt: skip
            pending[0] += 1
            pool.submit(write, when, kind, agent, seq, segment_id)
    pool.shutdown()
    store.close()
    Path(out).write_text(json.dumps({
        **counts, "started": start, "ended": time.time(),
        "writer_lag_ms_p95": (percentile(lag, 95) or 0) * 1000, "write_ms_p50": (percentile(took, 50) or 0) * 1000,
        "write_ms_p95": (percentile(took, 95) or 0) * 1000,
    }))  # fmt: skip


# --- the SSE clients (a process) -------------------------------------------------------------


def listen(base: str, bearer: str, clients: int, ready: Any, received: Any, stop: Any, out: str) -> None:
    """``clients`` streams on /api/events until ``stop``; per client, each final's latency to ``out``."""
    asyncio.run(_listen(base, bearer, clients, ready, received, stop, out))


async def _listen(base: str, bearer: str, clients: int, ready: Any, received: Any, stop: Any, out: str) -> None:
    from httpx_sse import aconnect_sse

    seen: list[dict[str, float]] = [{} for _ in range(clients)]  # "agent/segment" -> latency, ms
    reconnects = [0]
    events = [0]

    async def client(n: int) -> None:
        last_id = ""
        opened = False
        timeout = httpx.Timeout(10.0, read=60.0)  # the feed pings every 15 s
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {bearer}"},
                                     timeout=timeout) as http:  # fmt: skip
            while True:
                headers = {"Last-Event-ID": last_id} if last_id else {}
                try:
                    async with aconnect_sse(http, "GET", "/api/events", headers=headers) as source:
                        source.response.raise_for_status()
                        if not opened:
                            opened = True
                            with ready.get_lock():
                                ready.value += 1
                        async for sse in source.aiter_sse():
                            now = time.time()
                            events[0] += 1
                            if sse.id:
                                last_id = sse.id
                            if sse.event != "segment":
                                continue
                            row = json.loads(sse.data)
                            final = row.get("final")
                            key = f"{row['agent_id']}/{row['segment_id']}"
                            if final and key not in seen[n]:
                                seen[n][key] = (now - float(final["stored_at"])) * 1000
                                received[n] += 1
                except (httpx.HTTPError, ValueError) as exc:
                    reconnects[0] += 1
                    log.warning("client %d: stream ended (%s); reconnecting from %s", n, exc, last_id or "now")
                    await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(client(n)) for n in range(clients)]
    await asyncio.to_thread(stop.wait)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    Path(out).write_text(json.dumps({"seen": seen, "reconnects": reconnects[0], "events": events[0]}))


# --- the browsers (a process) ----------------------------------------------------------------

# Installed before the page's own scripts: the first time each final's token shows in the DOM, and
# whether the page has opened its live feed (an EventSource that fired "open").
OBSERVER = r"""
(() => {
  window.__seen = {};
  window.__feeds = 0;
  const token = /zz\d{3}n\d{5}/g;
  const scan = (text) => {
    if (!text || text.indexOf("zz") < 0) return;
    const now = Date.now();
    for (const m of text.matchAll(token)) if (!(m[0] in window.__seen)) window.__seen[m[0]] = now;
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "characterData") scan(r.target.data);
      else for (const node of r.addedNodes) scan(node.textContent);
    }
  }).observe(document, { subtree: true, childList: true, characterData: true });
  const Native = window.EventSource;
  if (Native) {
    window.EventSource = class extends Native {
      constructor(...args) {
        super(...args);
        this.addEventListener("open", () => { window.__feeds += 1; });
      }
    };
  }
})();
"""


def browse(base: str, user: str, password: str, browsers: int, ready: Any, expected: Any, stop: Any,
           drain_s: float, out: str) -> None:  # fmt: skip
    """``browsers`` logged-in pages of the dashboard until ``stop``; when each final's text appeared."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    result: dict[str, Any] = {"seen": [], "live": [], "transfer_bytes": 0, "requests": 0}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        pages = []
        for n in range(browsers):
            context = browser.new_context()
            login = context.request.post(urljoin(base, "/api/login"), data={"username": user, "password": password})
            if not login.ok:
                raise SystemExit(f"browser {n}: login refused ({login.status}): {login.text()[:200]}")
            page = context.new_page()
            page.add_init_script(OBSERVER)
            if n == 0:

                def count(request: Any) -> None:
                    result["transfer_bytes"] += request.sizes()["responseBodySize"]
                    result["requests"] += 1

                page.on("requestfinished", count)
            page.goto(base)
            try:
                page.wait_for_function("window.__feeds > 0", timeout=30_000)
                result["live"].append(True)
            except PlaywrightError:
                log.warning("browser %d: the page opened no live feed (EventSource) in 30 s", n)
                result["live"].append(False)
            try:
                page.wait_for_load_state("networkidle", timeout=10_000)
            except PlaywrightError:
                log.warning("browser %d: the page's requests did not settle in 10 s", n)
            pages.append(page)
            with ready.get_lock():
                ready.value += 1
        stop.wait()
        deadline = time.monotonic() + drain_s
        for page in pages:
            try:
                page.wait_for_function(f"Object.keys(window.__seen).length >= {expected.value}",
                                       timeout=max(1.0, deadline - time.monotonic()) * 1000)  # fmt: skip
            except PlaywrightError:
                pass  # what it has not shown by now is counted as missed on the page
            result["seen"].append(page.evaluate("window.__seen"))
        browser.close()
    Path(out).write_text(json.dumps(result))


# --- the dashboard process, from /proc ---------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def host_busy() -> tuple[float, float]:
    """This machine's busy and total CPU time so far (all cores, clock ticks), from ``/proc/stat``."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


def memory_mb(pid: int, key: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


# --- page weight -----------------------------------------------------------------------------


class _Assets(HTMLParser):
    """The URLs of what a page loads: scripts, stylesheets, icons, preloads, images."""

    LINKS = frozenset({"stylesheet", "icon", "preload", "modulepreload", "manifest", "apple-touch-icon"})

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img", "source", "audio", "video") and a.get("src"):
            self.urls.append(str(a["src"]))
        elif tag == "link" and a.get("href") and self.LINKS & set((a.get("rel") or "").lower().split()):
            self.urls.append(str(a["href"]))


CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)['"]?\s*\)|@import\s+['"]([^'"]+)['"]""")


def page_weight(base: str, bearer: str) -> dict[str, Any]:
    """Bytes of ``/`` (after its redirects) and of every same-origin asset it names, uncompressed
    and gzip-compressed; ``error`` instead if the page itself cannot be had."""
    origin = urlparse(base).netloc
    headers = {"Authorization": f"Bearer {bearer}", "Accept": "text/html", "Accept-Encoding": "identity"}
    files: dict[str, bytes] = {}
    with httpx.Client(headers=headers, timeout=30, follow_redirects=True) as http:
        try:
            page = http.get(base)
            page.raise_for_status()
        except httpx.HTTPError as exc:
            log.error("the page %s could not be fetched: %s", base, exc)
            return {"error": str(exc)}
        compressed = http.get(base, headers={"Accept-Encoding": "gzip"}).headers.get("content-encoding") == "gzip"
        files[page.url.path] = page.content
        parser = _Assets()
        parser.feed(page.text)
        queue = [urljoin(str(page.url), u) for u in parser.urls]
        while queue:
            url = queue.pop()
            if url.startswith("data:") or urlparse(url).netloc != origin or urlparse(url).path in files:
                continue
            answer = http.get(url)
            if answer.status_code != 200:
                log.warning("page asset %s: HTTP %d", url, answer.status_code)
                continue
            files[urlparse(url).path] = answer.content
            if url.endswith(".css") or "text/css" in answer.headers.get("content-type", ""):
                queue += [
                    urljoin(url, a or b) for a, b in CSS_URL.findall(answer.text) if not (a or b).startswith("data:")
                ]
    return {
        "bytes": sum(len(b) for b in files.values()),
        "gzip_bytes": sum(len(gzip.compress(b, 6)) for b in files.values()),
        "html_bytes": len(page.content),
        "assets": sorted(files),
        "served_gzip": compressed,
    }


# --- one run ---------------------------------------------------------------------------------


def _wait(
    condition: Any, timeout_s: float, what: str, *procs: mp.process.BaseProcess | subprocess.Popen[bytes]
) -> bool:
    """Wait until ``condition()`` or ``timeout_s``; stop early with an error if a helper process died."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for proc in procs:
            dead = proc.poll() is not None if isinstance(proc, subprocess.Popen) else not proc.is_alive()
            if dead:
                raise SystemExit(f"{what}: a process it needs exited ({proc})")
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    poll_s = args.poll_s or DashboardSettings().events_poll_s
    with Postgres() as postgres:  # its own directory: the postgres user must own it
        store = Store(postgres.url)  # migrates
        user, password = "bench", secrets.token_urlsafe(12)
        accounts = Accounts(store)
        accounts.add_user(user, password, "viewer")
        bearer, _ = accounts.new_token(user, "benchmark")
        port = free_port()
        base = f"http://127.0.0.1:{port}/"
        logf = open(workdir / "dashboard.log", "ab")  # noqa: SIM115 - handed to the child
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "cloud.dashboard"], cwd=REPO, stdout=logf, stderr=logf,
            env=os.environ | {"EDGECAP_DASHBOARD_STORE_URL": postgres.url, "EDGECAP_DASHBOARD_PORT": str(port),
                              "EDGECAP_DASHBOARD_HOST": "127.0.0.1", "EDGECAP_DASHBOARD_EVENTS_POLL_S": str(poll_s)},
        )  # fmt: skip
        logf.close()
        helpers: list[mp.process.BaseProcess] = []
        stop = ctx.Event()
        try:
            wait_for_port(port, 60, dashboard)
            empty = page_weight(base, bearer)
            log.info("page weight, store empty: %s", empty)

            ready = ctx.Value("i", 0)
            received = ctx.Array("i", args.clients)
            expected = ctx.Value("i", 1 << 30)
            clients_out, browsers_out, agents_out = (workdir / f"{n}.json" for n in ("clients", "browsers", "agents"))
            helpers.append(ctx.Process(target=listen, name="clients", daemon=True, args=(
                base, bearer, args.clients, ready, received, stop, str(clients_out))))  # fmt: skip
            if args.browsers:
                helpers.append(ctx.Process(target=browse, name="browsers", daemon=True, args=(
                    base, user, password, args.browsers, ready, expected, stop, args.drain_s,
                    str(browsers_out))))  # fmt: skip
            for proc in helpers:
                proc.start()
            if not _wait(lambda: ready.value >= args.clients + args.browsers, 120, "clients", dashboard, *helpers):
                raise SystemExit(f"only {ready.value} of {args.clients + args.browsers} clients connected in 120 s")
            rss_idle = memory_mb(dashboard.pid, "VmRSS")
            log.info("%d SSE clients and %d browsers connected; %d agents write for %.0f s",
                     args.clients, args.browsers, args.agents, args.duration_s)  # fmt: skip

            cpu0, t0 = cpu_seconds(dashboard.pid), time.time()
            listener = helpers[0].pid or 0
            listener0, host0 = cpu_seconds(listener), host_busy()
            agents = ctx.Process(target=generate, name="agents", args=(
                postgres.url, args.agents, args.duration_s, str(agents_out), args.seed))  # fmt: skip
            agents.start()
            rss_max = rss_idle
            while agents.is_alive():
                agents.join(1.0)
                rss_max = max(rss_max, memory_mb(dashboard.pid, "VmRSS"))
                if dashboard.poll() is not None:
                    raise SystemExit(f"the dashboard exited with {dashboard.returncode} (see {workdir}/dashboard.log)")
            if agents.exitcode != 0:
                raise SystemExit(f"the agents' process exited with {agents.exitcode}")
            written = json.loads(agents_out.read_text())
            rows: list[tuple[str, str, int, float]] = []  # agent, segment, seq, final stored at
            for row in store.list_segments(limit=10**7):
                if (final := row["final"]) is not None:
                    rows.append((row["agent_id"], row["segment_id"], row["seq"], final["stored_at"]))
            expected.value = len(rows)
            log.info("%d drafts and %d finals written; waiting up to %.0f s for every client to have every final",
                     written["drafts"], written["finals"], args.drain_s)  # fmt: skip
            everyone = _wait(lambda: min(received[:]) >= len(rows), args.drain_s, "drain", dashboard, *helpers)
            cpu_s, window = cpu_seconds(dashboard.pid) - cpu0, time.time() - t0
            listener_s, host1 = cpu_seconds(listener) - listener0, host_busy()
            rss_peak = memory_mb(dashboard.pid, "VmHWM")
            weight = page_weight(base, bearer)
            log.info("page weight, %d segments stored: %s", len(rows), weight)
            stop.set()
            for proc in helpers:
                proc.join(args.drain_s + 60)
        finally:
            stop.set()
            for proc in helpers:
                if proc.is_alive():
                    proc.terminate()
            dashboard.terminate()
            try:
                dashboard.wait(15)
            except subprocess.TimeoutExpired:
                dashboard.kill()
                dashboard.wait()
            store.close()

    listened = json.loads(clients_out.read_text())
    keys = {f"{agent}/{segment}" for agent, segment, _, _ in rows}
    latencies = [ms for seen in listened["seen"] for key, ms in seen.items() if key in keys]
    missed = sum(len(keys - set(seen)) for seen in listened["seen"])
    result: dict[str, Any] = {
        "agents": args.agents, "clients": args.clients, "browsers": args.browsers, "duration_s": args.duration_s,
        "events_poll_s": poll_s,
        "drafts": written["drafts"], "finals": len(rows), "write_errors": written["errors"],
        "finals_per_s": round(len(rows) / args.duration_s, 1),
        "p50_ms": _ms(percentile(latencies, 50)), "p95_ms": _ms(percentile(latencies, 95)),
        "max_ms": _ms(max(latencies, default=None)), "missed": missed, "all_received": everyone,
        "events_received": listened["events"], "reconnects": listened["reconnects"],
    }  # fmt: skip
    if args.browsers:
        browsed = json.loads(browsers_out.read_text())
        stored = {token(int(agent.rsplit("-", 1)[1]), seq): at for agent, _, seq, at in rows}
        shown = [at / 1000 - stored[tok] for seen in browsed["seen"] for tok, at in seen.items() if tok in stored]
        result |= {
            "page_p50_ms": _ms((percentile(shown, 50) or 0) * 1000 if shown else None),
            "page_p95_ms": _ms((percentile(shown, 95) or 0) * 1000 if shown else None),
            "page_missed": sum(len(stored.keys() - set(seen)) for seen in browsed["seen"]),
            "page_live": all(browsed["live"]), "page_transfer_bytes": browsed["transfer_bytes"],
        }  # fmt: skip
    result |= {
        "cpu_s": round(cpu_s, 2), "cpu_percent": round(100 * cpu_s / window, 1),
        "rss_mb": round(max(rss_peak, rss_max), 1), "rss_idle_mb": round(rss_idle, 1),
        "writer_lag_ms_p95": round(written["writer_lag_ms_p95"], 1), "write_ms_p95": round(written["write_ms_p95"], 1),
        "page_bytes": weight.get("bytes"), "page_gzip_bytes": weight.get("gzip_bytes"),
        "page_html_bytes": weight.get("html_bytes"), "page_bytes_empty": empty.get("bytes"),
        "page_html_bytes_empty": empty.get("html_bytes"), "page_served_gzip": weight.get("served_gzip"),
        "page_assets": weight.get("assets"), "page_error": weight.get("error") or empty.get("error"),
        "clients_cpu_percent": round(100 * listener_s / window, 1),
        "host_cpu_percent": round(100 * (host1[0] - host0[0]) / max(1, host1[1] - host0[1]), 1),
        "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
    }  # fmt: skip
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100, help="simulated devices writing (default 100)")
    parser.add_argument("--clients", type=int, default=20, help="SSE clients on /api/events (default 20)")
    parser.add_argument("--browsers", type=int, default=1, help="Chromium pages measuring the same (0: none)")
    parser.add_argument("--duration-s", type=float, default=60.0, help="how long the agents write (default 60)")
    parser.add_argument("--drain-s", type=float, default=30.0, help="most time after the load for the last finals")
    parser.add_argument("--poll-s", type=float, help="the dashboard's events_poll_s (default: its own)")
    parser.add_argument("--seed", type=int, default=12, help="the agents' random cadence")
    parser.add_argument("--keep", type=Path, help="keep the work directory (logs, results) here")
    args = parser.parse_args()
    if args.agents < 1 or args.clients < 1 or args.browsers < 0 or args.duration_s <= 0:
        parser.error("--agents and --clients at least 1, --browsers at least 0, --duration-s above 0")
    if args.browsers and not Path(CHROMIUM).exists():
        log.warning("no Chromium at %s (Debian package chromium): running without browsers", CHROMIUM)
        args.browsers = 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for chatty in ("alembic", "httpx", "cloud.store", "cloud.dashboard.accounts"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="edgecap-bench-dashboard-") as workdir:
            result = run(args, Path(workdir))
    print(json.dumps(result), flush=True)  # noqa: T201
    return 0 if result["missed"] == 0 and result["write_errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
