"""Bridge throughput and latency against the raw ceiling measured in the same run.

    .venv/bin/python benchmarks/bridge.py [--count-1k 20000] [--count-160k 800] [--rounds 3] [--replicas 1 2]

For each segment size (1 KiB and 160 KiB of PCM audio in real ``Segment`` messages, with a draft)
it runs, each on a fresh mosquitto and a fresh in-memory Tansu:

- the **anchor**: a bare paho subscriber (MQTT v5, QoS 1, shared subscription to the same topic
  filter) feeding a bare confluent-kafka producer (acks=all, idempotent, the bridge's batching and
  compression settings), in a process of its own: the raw ceiling of MQTT → Kafka in Python;
- the **bridge** (``python -m bridge``) with its at-least-once path on: validation, manual MQTT
  acks after Kafka's confirmation, receipts to the agents;
  once with one replica, once with two (the same shared subscription).

Publisher processes send as fast as QoS 1 lets them (each message carries its publish time). A
Kafka consumer in this process tails ``edgecap.segments``: throughput counts from the first to the
last record seen there, latency is publish → seen in Kafka (publishers outrun the consumer, so it is
mostly queueing in mosquitto: compare it with the anchor's). Bridge memory is the peak RSS (VmHWM)
of its process; CPU per message is that of the consumer processes (``thread_cpu_us_per_msg``
splits the first one by thread). Anchor and bridge runs alternate in every round; figures are
medians over rounds, ratios medians of per-round ratios. Prints one line per run, then one JSON
line with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from bridge.app import uplink_producer_config  # noqa: E402
from bridge.settings import BridgeSettings  # noqa: E402
from contracts import Audio, Kafka, Segment, Transcript, Up, encode, mqtt_topic, shared_filter  # noqa: E402
from devtools.brokers import Mosquitto, Tansu, free_port  # noqa: E402
from runtime.settings import KafkaSettings, MqttSettings  # noqa: E402

SIZES = {"1k": 1024, "160k": 160 * 1024}
_ID = re.compile(rb'"segment_id":"bench-(\d+)-(\d+)-(\d+)"')
_SEQ0 = 10**9  # seq values of one width, so a message is a template with fixed-width holes


# --- publishers (processes) -----------------------------------------------------------------


def _template(agent_id: str, audio_bytes: int) -> tuple[bytes, bytes, bytes]:
    """A segment's wire bytes split around its segment id and seq: head, middle, tail."""
    now = time.time()
    pcm = (bytes(range(256)) * (audio_bytes // 256 + 1))[:audio_bytes]
    words = "the quick brown fox jumps over the lazy dog"
    raw = encode(
        Segment(
            agent_id=agent_id,
            segment_id="bench-00-00000000-0000000000000000000",
            seq=_SEQ0,
            started_at=now,
            ended_at=now + audio_bytes / 32000,
            audio=Audio(sample_rate=16000, data=pcm),
            draft=Transcript(text=words, model_id="bench", produced_at=now),
        )
    )
    sid = raw.index(b"bench-00-00000000-0000000000000000000")
    seq = raw.index(b'"seq":%d' % _SEQ0) + len(b'"seq":')
    return raw[:sid], raw[sid + 37 : seq], raw[seq + 10 :]


def _publisher(port: int, index: int, count: int, audio_bytes: int, start: Any, warmup: bool) -> None:
    agent_id = f"bench-agent-{index}"
    head, middle, tail = _template(agent_id, audio_bytes)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{agent_id}-pub", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    topic = mqtt_topic(agent_id, Up.SEGMENTS)
    start.wait()
    infos = []
    first = 0 if warmup else 1_000_000
    for i in range(first, first + count):
        sid = b"bench-%02d-%08d-%019d" % (index, i, time.time_ns())
        infos.append(client.publish(topic, b"".join((head, sid, middle, b"%d" % (_SEQ0 + i), tail)), qos=1))
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


# --- the anchor (a process of its own) ------------------------------------------------------


def anchor_main(mqtt_port: int, bootstrap: str, group: str) -> int:
    """Bare paho subscriber → bare confluent-kafka producer; runs until SIGTERM."""
    s = BridgeSettings.load(
        mqtt=MqttSettings(port=mqtt_port), kafka=KafkaSettings(bootstrap_servers=bootstrap), downlink=False
    )
    config = uplink_producer_config(s)  # the bridge's durability, batching and compression, minus its
    for key in ("logger", "enable.gapless.guarantee", "max.in.flight.requests.per.connection"):  # ordering
        config.pop(key)
    producer = Producer(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    prefix = len("edgecap/v1/agents/")
    topic = Kafka.SEGMENTS.value

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        key = msg.topic[prefix : msg.topic.index("/", prefix)]
        while True:
            try:
                producer.produce(topic, value=msg.payload, key=key)
                return
            except BufferError:
                producer.poll(0.01)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{group}-anchor", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *_: print("ready", flush=True)  # noqa: T201
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = s.max_in_flight
    props.SessionExpiryInterval = 300
    client.connect("127.0.0.1", mqtt_port, clean_start=False, properties=props)
    client.subscribe(shared_filter(group, Up.SEGMENTS), qos=1)
    client.loop_start()
    while not stop.is_set():
        producer.poll(0.01)
    client.loop_stop()
    producer.flush(10)
    return 0


# --- one run ----------------------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process, by thread name (librdkafka names its threads)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _start_consumers(
    kind: str, replicas: int, mq: Mosquitto, kafka: Tansu, workdir: Path, profile: Path | None,
    overrides: dict[str, str],
) -> list[subprocess.Popen[bytes]]:
    group = f"bench-{kind}"
    procs = []
    if kind == "anchor":
        proc = subprocess.Popen(
            [sys.executable, __file__, "--anchor", str(mq.port), kafka.bootstrap, group],
            stdout=subprocess.PIPE, stderr=open(workdir / "anchor.log", "ab"),  # noqa: SIM115
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        return [proc]
    for r in range(replicas):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECAP_BRIDGE_")} | {
            "EDGECAP_BRIDGE_MQTT__PORT": str(mq.port),
            "EDGECAP_BRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap,
            "EDGECAP_BRIDGE_CLIENT_ID": f"{group}-{r}",
            "EDGECAP_BRIDGE_SHARED_GROUP": group,
            "EDGECAP_BRIDGE_DOWNLINK": "false",
            "EDGECAP_BRIDGE_METRICS_PORT": str(port),
            "EDGECAP_BRIDGE_METRICS_HOST": "127.0.0.1",
        } | {f"EDGECAP_BRIDGE_{k.upper()}": v for k, v in overrides.items()}
        log = open(workdir / f"bridge-{r}.log", "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "bridge"]
        if profile is not None:  # py-spy (pip install py-spy) samples the bridge: collapsed stacks per run
            out = profile / f"bridge-{replicas}x-{int(time.time())}-{r}.txt"
            spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "--rate", "250", "--format", "raw"]
            cmd = [*spy, "-o", str(out), "--", *cmd]
        # a session of its own: a failed start kills the replica and its profiler together
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
                    if "edgecap_bridge_mqtt_connected 1.0" in resp.read().decode():
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            for proc in procs:  # never leave a replica (or its profiler) running after a failed start
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise RuntimeError(f"bridge replica {r} did not subscribe; see {workdir}")
    return procs


def _observe(
    consumer: Consumer, want: set[tuple[int, int]], timeout_s: float
) -> dict[tuple[int, int], tuple[int, int]]:
    """Tail the topic until every (publisher, i) in ``want`` was seen: {(p, i): (published_ns, seen_ns)}."""
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < len(want) and time.monotonic() < deadline:
        for m in consumer.consume(1000, timeout=0.05):
            now = time.time_ns()
            found = None if m.error() else _ID.search(m.value() or b"", 0, 200)
            if found:
                key = (int(found.group(1)), int(found.group(2)))
                if key in want and key not in seen:
                    seen[key] = (int(found.group(3)), now)
    return seen


def run(
    kind: str, replicas: int, size: str, count: int, publishers: int, workdir: Path, *,
    inflight: int = 500, profile: Path | None = None, overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    audio_bytes = SIZES[size]
    ctx = mp.get_context("fork")
    port = free_port()
    listener = f"listener {port} 127.0.0.1\nallow_anonymous true\n"
    config = listener + f"max_inflight_messages {inflight}\n"  # as edgecap/admin/mosquitto/mosquitto.conf
    # a fresh broker every run: a persistence file left by the run before would bring its sessions back
    mq_dir = workdir / f"mq-{kind}-{replicas}-{size}-{time.monotonic_ns()}"
    with Mosquitto(port, mq_dir, config) as mq, Tansu() as kafka:
        warm = Producer({"bootstrap.servers": kafka.bootstrap})
        for topic in (Kafka.SEGMENTS,):
            warm.produce(topic.value, b"warm-up")
        warm.flush(10)
        del warm
        procs = _start_consumers(kind, replicas, mq, kafka, workdir, profile, overrides or {})
        consumer = Consumer({
            "bootstrap.servers": kafka.bootstrap, "group.id": "bench-observer", "enable.auto.commit": False,
            "fetch.wait.max.ms": 10, "fetch.min.bytes": 1,
        })
        try:
            meta = consumer.list_topics(Kafka.SEGMENTS.value, timeout=10).topics[Kafka.SEGMENTS.value]
            consumer.assign([TopicPartition(Kafka.SEGMENTS.value, p, OFFSET_BEGINNING) for p in meta.partitions])
            per = count // publishers
            cpu_before = 0.0
            for warmup, n, timeout in ((True, 10, 60), (False, per, 300)):
                start = ctx.Event()
                pubs = [ctx.Process(target=_publisher, args=(mq.port, p, n, audio_bytes, start, warmup))
                        for p in range(publishers)]
                for p in pubs:
                    p.start()
                time.sleep(0.3)  # publishers connected
                first = 0 if warmup else 1_000_000
                want = {(p, i) for p in range(publishers) for i in range(first, first + n)}
                cpu_before = sum(_cpu_s(p.pid) for p in procs)
                threads_before = _thread_cpu_s(procs[0].pid)
                brokers_before = [_cpu_s(b.proc.pid) for b in (mq, kafka) if b.proc]
                start.set()
                seen = _observe(consumer, want, timeout)
                for p in pubs:
                    p.join(30)
                if len(seen) < len(want):
                    raise RuntimeError(f"{kind}: only {len(seen)} of {len(want)} seen in Kafka; see {workdir}")
            cpu = sum(_cpu_s(p.pid) for p in procs) - cpu_before
            threads = {k: v - threads_before.get(k, 0.0) for k, v in _thread_cpu_s(procs[0].pid).items()}
            brokers = [_cpu_s(b.proc.pid) - c for b, c in zip((mq, kafka), brokers_before, strict=True) if b.proc]
            rss = max(_peak_rss_mb(p.pid) for p in procs)
        finally:
            consumer.close()
            for p in procs:  # py-spy writes its profile on SIGINT
                p.send_signal(signal.SIGINT if profile is not None and kind == "bridge" else signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    published = [v[0] for v in seen.values()]
    arrived = sorted(v[1] for v in seen.values())
    span_s = (arrived[-1] - arrived[0]) / 1e9
    latencies = sorted((a - p) / 1e6 for p, a in seen.values())
    wire = len(b"".join(_template("bench-agent-0", audio_bytes))) + 37 + 10
    result = {
        "kind": kind, "replicas": replicas, "size": size, "messages": len(seen), "wire_bytes": wire,
        "msgs_per_s": round((len(seen) - 1) / span_s, 1),
        "mb_per_s": round((len(seen) - 1) * wire / span_s / 1e6, 2),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
        "publish_s": round((max(published) - min(published)) / 1e9, 2),
        "cpu_us_per_msg": round(cpu / len(seen) * 1e6),
        "mosquitto_cpu_us_per_msg": round(brokers[0] / len(seen) * 1e6),
        "kafka_cpu_us_per_msg": round(brokers[1] / len(seen) * 1e6),
        "rss_mb": round(rss, 1),
        "thread_cpu_us_per_msg": {k: round(v / len(seen) * 1e6) for k, v in threads.items() if v > 0},
    }
    return result


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--anchor":
        return anchor_main(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count-1k", type=int, default=20000, help="1 KiB segments per run")
    parser.add_argument("--count-160k", type=int, default=800, help="160 KiB segments per run")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="bridge replica counts to run")
    parser.add_argument("--inflight", type=int, default=500, help="mosquitto max_inflight_messages (the bridge's)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="segment sizes to run")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions; figures are medians over rounds")
    parser.add_argument("--profile", type=Path, help="run each bridge under py-spy, collapsed stacks into this folder")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a bridge setting for every bridge run, e.g. --set max_in_flight=200 (EDGECAP_BRIDGE_<KEY>)",
    )
    args = parser.parse_args()
    counts = {"1k": args.count_1k, "160k": args.count_160k}
    overrides = dict(item.split("=", 1) for item in args.set)
    runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="edgecap-bench-bridge-") as tmp:
        for round_ in range(args.rounds):  # anchor and bridge side by side in every round: ratios per round
            for size in args.sizes:
                for kind, replicas in [("anchor", 1)] + [("bridge", r) for r in args.replicas]:
                    r = run(kind, replicas, size, counts[size], args.publishers, Path(tmp), inflight=args.inflight,
                            profile=args.profile, overrides=overrides)
                    runs.setdefault((kind, replicas, size), []).append(r)
                    print(f"round {round_ + 1}: {json.dumps(r)}", flush=True)  # noqa: T201

    def median(key: str, kind: str, replicas: int, size: str) -> float:
        return round(statistics.median(r[key] for r in runs[(kind, replicas, size)]), 2)

    def figure(key: str, kind: str = "bridge", replicas: int = 1) -> dict[str, float]:
        return {size: median(key, kind, replicas, size) for size in args.sizes}

    def ratio(size: str, replicas: int) -> float:
        pairs = zip(runs[("bridge", replicas, size)], runs[("anchor", 1, size)], strict=True)
        return round(statistics.median(b["msgs_per_s"] / a["msgs_per_s"] for b, a in pairs), 3)

    base = args.replicas[0]
    summary: dict[str, Any] = {f"ratio_{size}": ratio(size, base) for size in args.sizes}
    summary |= {
        "msgs_per_s": figure("msgs_per_s", replicas=base),
        "mb_per_s": figure("mb_per_s", replicas=base),
        "latency_ms_p50": figure("latency_ms_p50", replicas=base),
        "latency_ms_p99": figure("latency_ms_p99", replicas=base),
        "rss_mb": max(r["rss_mb"] for (kind, _, _), rs in runs.items() if kind == "bridge" for r in rs),
        "cpu_us_per_msg": figure("cpu_us_per_msg", replicas=base),
        "anchor": {
            k: figure(k, "anchor")
            for k in ("msgs_per_s", "mb_per_s", "latency_ms_p50", "latency_ms_p99", "cpu_us_per_msg")
        },
        "replicas": {
            str(r): {"msgs_per_s": figure("msgs_per_s", replicas=r), **{f"ratio_{s}": ratio(s, r) for s in args.sizes}}
            for r in args.replicas
        },
        "publishers": args.publishers,
        "bridge_settings": overrides,
        "rounds": args.rounds,
        "counts": {size: counts[size] for size in args.sizes},
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
