"""``edgecap demo``: the whole pipeline on one machine, a recording standing in for the microphone
and a folder of photographs for the camera.

Starts mosquitto and a Kafka-protocol broker on free loopback ports, then the bridge, the
transcription worker, the reconciler, the detection worker, the dashboard and an agent as separate
processes, each configured through its own environment variables exactly as in production. The
camera (``--frames``) is by default the photographs with known content that scikit-image bundles
(a person, a cat, a cup, a motorcycle), when it is installed. With ``--until-done`` it exits once
every captured segment has a final caption in the store and every frame its detections, and prints,
as its last line on stdout, a JSON summary (segments, finals, lost, latencies, WER when the
reference is known; frames sent and stored, the classes found in each).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.settings import CLOUD_MODEL
from devtools import SAMPLES_DIR as SAMPLES
from devtools.brokers import Mosquitto, Tansu, free_port, wait_for_port
from runtime.logs import configure
from runtime.settings import models_dir

log = logging.getLogger("edgecap.demo")

AGENT_ID = "demo-agent"
DEMO_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png")
FRAMES_FPS = 2.0


def bundled_photos(into: Path) -> Path | None:
    """scikit-image's photographs of :data:`DEMO_PHOTOS` copied into ``into`` (None without scikit-image)."""
    try:
        import skimage
    except ImportError:
        return None
    source = Path(skimage.data.__file__).parent
    into.mkdir(parents=True, exist_ok=True)
    for name in DEMO_PHOTOS:
        shutil.copyfile(source / name, into / name)
    return into


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="edgecap-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.workdir / "captions", ignore_errors=True)  # a reused --workdir starts afresh
        for stale in self.workdir.glob("*.sqlite3*"):
            stale.unlink()
        for stale in self.workdir.glob("edgecap.db*"):
            stale.unlink()
        self.store_url = f"sqlite:///{self.workdir / 'edgecap.db'}"
        self.captions_dir = self.workdir / "captions"
        self.services: list[Service] = []
        self.stop = threading.Event()
        self.store: Any = None
        self._watcher: Any = None  # the paho client watching the agent's status
        self.frames = self._frames_source()
        self.frames_expected = self._count_frames()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        models = Path(self.args.models_dir).expanduser() / self.args.model
        cloud_model = Path(self.args.models_dir).expanduser() / self.args.cloud_model
        for needed, name in ((models / "onnx-int8", self.args.model), (cloud_model / "ct2", self.args.cloud_model)):
            if not needed.is_dir():
                raise SystemExit(
                    f"edgecap demo: model missing at {needed}; run: edgecap models prepare "
                    f"--model {name} --models-dir {self.args.models_dir}"
                )
        self.mosquitto = Mosquitto(workdir=self.workdir / "mosquitto").start()
        self.kafka = Tansu(workdir=self.workdir / "tansu").start()
        kafka = self.kafka.bootstrap
        metrics: dict[str, int] = {}  # service → its /metrics port, for the dashboard's GET /api/system
        metrics["bridge"] = free_port()
        self._spawn("bridge", ["-m", "bridge"], {
            "EDGECAP_BRIDGE_MQTT__PORT": str(self.mosquitto.port),
            "EDGECAP_BRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka,
            "EDGECAP_BRIDGE_METRICS_PORT": str(metrics["bridge"]),
            "EDGECAP_BRIDGE_METRICS_HOST": "127.0.0.1",
        })
        worker_env = {
            "EDGECAP_WORKER_KAFKA__BOOTSTRAP_SERVERS": kafka,
            "EDGECAP_WORKER_STORE_URL": self.store_url,
            "EDGECAP_WORKER_MODEL_DIR": str(cloud_model),  # the ctranslate2 engine loads its ct2/
        }
        for worker in ("transcribe", "reconcile"):
            metrics[worker] = free_port()
            port = {"EDGECAP_WORKER_METRICS_PORT": str(metrics[worker])}
            self._spawn(worker, ["-m", "cloud", worker], worker_env | port)
        detector = Path(self.args.models_dir).expanduser() / "yolov3-tiny"
        if self.frames is not None:
            metrics["detect"] = free_port()
            self._spawn("detect", ["-m", "cloud", "detect"], worker_env | {
                "EDGECAP_WORKER_DETECT__MODEL_DIR": str(detector),
                "EDGECAP_WORKER_METRICS_PORT": str(metrics["detect"]),
            })
        password = self._dashboard_account()
        self._spawn("dashboard", ["-m", "cloud.dashboard"], {
            "EDGECAP_DASHBOARD_STORE_URL": self.store_url,
            "EDGECAP_DASHBOARD_HOST": "127.0.0.1",
            "EDGECAP_DASHBOARD_PORT": str(self.args.port),
            "EDGECAP_DASHBOARD_KAFKA__BOOTSTRAP_SERVERS": kafka,  # uploads, configurations sent to agents
            "EDGECAP_DASHBOARD_METRICS_TARGETS": json.dumps(
                {name: f"http://127.0.0.1:{port}/metrics" for name, port in metrics.items()}
            ),
        })
        wait_for_port(self.args.port, 60, self.services[-1].proc)
        sys.stderr.write(f"edgecap demo: dashboard at http://127.0.0.1:{self.args.port}, log in as admin with "
                         f"password {password}  (logs in {self.workdir})\n")  # fmt: skip
        camera = {} if self.frames is None else {
            "EDGECAP_AGENT_FRAMES__ENABLED": "true",
            "EDGECAP_AGENT_FRAMES__SOURCE": str(self.frames),
            "EDGECAP_AGENT_FRAMES__FPS": str(FRAMES_FPS),
            "EDGECAP_AGENT_FRAMES__MOTION": "false",  # photographs, each whole
        }
        self._spawn("agent", ["-m", "edge_agent", "--input", str(self.args.input)], {
            "EDGECAP_AGENT_AGENT_ID": AGENT_ID,
            "EDGECAP_AGENT_MQTT__PORT": str(self.mosquitto.port),
            "EDGECAP_AGENT_ASR__MODEL_DIR": str(models / "onnx-int8"),
            "EDGECAP_AGENT_OUTBOX__PATH": str(self.workdir / "outbox.sqlite3"),
            "EDGECAP_AGENT_CAPTIONS__DIR": str(self.captions_dir),
        } | camera, stdout=None)

    def _dashboard_account(self) -> str:
        """The demo's dashboard user ``admin``: its password (``--dashboard-password``, else a new one)."""
        import secrets

        from cloud.dashboard.accounts import Accounts

        password = self.args.dashboard_password or secrets.token_urlsafe(9)
        self._open_store()
        Accounts(self.store).add_user("admin", password, "admin", replace=True)
        return str(password)

    def _frames_source(self) -> Path | None:
        """The camera's folder: ``--frames``, or the bundled photographs (``auto``), or none."""
        choice = self.args.frames
        if choice == "none":
            return None
        detector = Path(self.args.models_dir).expanduser() / "yolov3-tiny" / "onnx" / "model.json"
        if not detector.is_file():
            log.warning("no detector in %s (edgecap models prepare --detector yolov3-tiny): no camera", detector.parent)
            return None
        if choice == "auto":
            found = bundled_photos(self.workdir / "frames")
            if found is None:
                log.warning("scikit-image is not installed: no photographs for the camera")
            return found
        return Path(choice)

    def _count_frames(self) -> int:
        """How many frames the camera will send: every image of its folder (motion off), or unknown (0)."""
        if self.frames is None or not self.frames.is_dir():
            return 0
        from edge_agent.frames.sources import IMAGE_SUFFIXES

        return sum(1 for p in self.frames.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], stdout: int | None = -1) -> None:
        logf = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, *argv],
            env=os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"} | env,
            stdout=logf if stdout == -1 else None,
            stderr=logf,
        )
        logf.close()
        self.services.append(Service(name, proc))
        log.info("started %s (pid %d)", name, proc.pid)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.loop_stop()
            self._watcher.disconnect()
            self._watcher = None
        for service in reversed(self.services):
            if service.proc.poll() is None:
                service.proc.terminate()
        for service in reversed(self.services):
            try:
                service.proc.wait(15)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop; killing pid %d", service.name, service.proc.pid)
                service.proc.kill()
                service.proc.wait()
        if self.store is not None:
            self.store.close()
            self.store = None
        for broker in ("kafka", "mosquitto"):
            if hasattr(self, broker):
                getattr(self, broker).stop()

    def crashed(self) -> str | None:
        for service in self.services:
            if service.proc.poll() is not None:
                return f"{service.name} exited with {service.proc.returncode} (see {self.workdir}/{service.name}.log)"
        return None

    # --- progress ---------------------------------------------------------------------------

    def agent_log(self) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """The agent's own record of what it captured (drafts) and which finals reached it.

        ``captions.jsonl`` holds one record per caption (rewritten atomically), every version kept:
        version 1 is the edge draft, a later one a final that reached the device.
        """
        path = self.captions_dir / "captions.jsonl"
        drafts: dict[str, dict[str, Any]] = {}
        finals: set[str] = set()
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                draft = next((v for v in record["versions"] if v["version"] == 1), None)
                if draft is None:
                    continue
                drafts[record["segment_id"]] = {
                    "segment_id": record["segment_id"],
                    "seq": record["seq"],
                    "started_at": record["started_at"],
                    "ended_at": record["ended_at"],
                    "shown_at": record["shown_at"],
                    "produced_at": draft["produced_at"],
                    "text": draft["text"],
                }
                if record["version"] > 1:
                    finals.add(record["segment_id"])
        return drafts, finals

    def _open_store(self) -> None:
        if self.store is None:
            from cloud.store import Store

            self.store = Store(self.store_url)

    def finals(self) -> dict[str, dict[str, Any]]:
        """The demo agent's segments with a final caption in the cloud store."""
        self._open_store()
        rows = self.store.list_segments(limit=100_000, agent_id=AGENT_ID)
        return {row["segment_id"]: row for row in rows if row.get("final")}

    def watch_status(self) -> threading.Event:
        """An event set once the agent's retained status says its input ended and is all captioned:
        the agent says so itself (no guess from the wall clock, which a busy machine makes wrong)."""
        import paho.mqtt.client as mqtt

        from contracts import DecodeError, Status, Up, decode, mqtt_topic

        done = threading.Event()

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                status = decode(bytes(msg.payload), Status)
            except DecodeError as exc:
                log.warning("the agent's status does not decode: %s", exc)
                return
            if status.input_done:
                done.set()

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgecap-demo-{os.getpid()}")
        client.on_connect = lambda c, *_: c.subscribe(mqtt_topic(AGENT_ID, Up.STATUS), qos=1)
        client.on_message = on_message
        client.connect("127.0.0.1", self.mosquitto.port)
        client.loop_start()
        self._watcher = client
        return done

    def wait_until_done(self, input_done: threading.Event) -> dict[str, Any]:
        """Wait until the agent reports that its input ended and every segment it captured has a final
        in the store and back on the device (or ``--timeout`` seconds pass without progress)."""
        drafts: dict[str, dict[str, Any]] = {}
        stored: dict[str, dict[str, Any]] = {}
        on_device: set[str] = set()
        progress, last_progress = (0, 0, 0, 0), time.monotonic()
        while not self.stop.is_set():
            problem = self.crashed()
            if problem:
                log.error("%s", problem)
                break
            drafts, on_device = self.agent_log()
            stored = self.finals()
            frames = self.frames_stored()
            if (input_done.is_set() and drafts and set(drafts) <= set(stored) and set(drafts) <= on_device
                    and len(frames) >= self.frames_expected):  # fmt: skip
                break
            now = (len(drafts), len(stored), len(on_device), len(frames))
            if now != progress:
                progress, last_progress = now, time.monotonic()
            elif time.monotonic() - last_progress > self.args.timeout:
                log.error("no progress for %.0f s: giving up", self.args.timeout)
                break
            self.stop.wait(0.5)
        summary = summarize(drafts, stored, self.args.reference)
        summary["finals_on_device"] = len(set(drafts) & on_device)
        summary["input_done"] = input_done.is_set()
        frames = sorted(self.frames_stored(), key=lambda r: r.seq)
        summary["frames_expected"] = self.frames_expected
        summary["frames_stored"] = len(frames)
        summary["frame_labels"] = [sorted({b.label for b in r.boxes}) for r in frames]
        return summary

    def frames_stored(self) -> list[Any]:
        """The agent's frames in the store, with their detections."""
        if self.frames is None:
            return []
        self._open_store()
        return list(self.store.list_frames(agent_id=AGENT_ID, limit=10_000))


def summarize(
    drafts: dict[str, dict[str, Any]], finals: dict[str, dict[str, Any]], reference: Path | None
) -> dict[str, Any]:
    def p50(values: list[float]) -> float | None:
        return round(statistics.median(values), 1) if values else None

    ordered = sorted(drafts.values(), key=lambda d: d["started_at"])
    summary: dict[str, Any] = {
        "segments": len(drafts),
        "finals": sum(1 for sid in drafts if sid in finals),
        "lost": sum(1 for sid in drafts if sid not in finals),
        "draft_latency_ms_p50": p50([(d["produced_at"] - d["ended_at"]) * 1000 for d in ordered]),
        "final_latency_ms_p50": p50(
            [(finals[d["segment_id"]]["final"]["stored_at"] - d["ended_at"]) * 1000
             for d in ordered if d["segment_id"] in finals]
        ),
    }
    if reference is not None:
        from devtools.wer import wer

        ref = reference.read_text(encoding="utf-8")
        summary["wer_draft"] = round(wer(ref, " ".join(d["text"] for d in ordered)), 4)
        summary["wer_final"] = round(
            wer(ref, " ".join(finals[d["segment_id"]]["final"]["text"] for d in ordered if d["segment_id"] in finals)),
            4,
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecap demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=SAMPLES / "sample.wav", help="recording played as the microphone")
    parser.add_argument("--reference", type=Path, help="reference transcript of --input (for WER)")
    parser.add_argument("--until-done", action="store_true", help="exit once every segment has a final caption")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds without progress (a new draft or final) before giving up"
    )
    parser.add_argument("--model", default="tiny.en", help="the agent's model (name under the models directory)")
    parser.add_argument("--cloud-model", default=CLOUD_MODEL,
                        help="the transcriber's model (the worker's default: benchmarks/cloud_model_choice.py)")
    parser.add_argument(
        "--models-dir", type=Path, default=models_dir(), help="where `edgecap models prepare` put models"
    )
    parser.add_argument("--port", type=int, default=8000, help="dashboard port")
    parser.add_argument("--dashboard-password", help="password of the dashboard user admin (default: new, printed)")
    parser.add_argument("--frames", default="auto",
                        help="the camera: a folder of images or a video file; auto: scikit-image's photographs; none")
    parser.add_argument("--workdir", help="where logs, the store and captions go (default: a new temp dir)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    configure(args.debug, "demo")
    if args.reference is None and args.input == SAMPLES / "sample.wav":
        args.reference = SAMPLES / "sample.txt"

    from edge_agent.capture import FileSource

    FileSource(args.input, realtime=False)  # a missing or unreadable input fails here, before anything starts
    demo = Demo(args)
    signal.signal(signal.SIGTERM, lambda *_: demo.stop.set())
    try:
        demo.start()
        if args.until_done:
            summary = demo.wait_until_done(demo.watch_status())
            demo.close()  # the agent writes captions to this stdout: stop it before the summary line
            sys.stdout.write(json.dumps(summary) + "\n")
            sys.stdout.flush()
            captions_done = summary["input_done"] and summary["lost"] == 0 and summary["segments"] > 0
            return 0 if captions_done and summary["frames_stored"] >= summary["frames_expected"] else 1
        sys.stderr.write("edgecap demo: running; Ctrl-C stops it\n")
        while not demo.stop.wait(1.0):
            problem = demo.crashed()
            if problem:
                log.error("%s", problem)
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        demo.close()


if __name__ == "__main__":
    raise SystemExit(main())
