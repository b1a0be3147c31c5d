"""Configuration down to agents: the AgentConfig contract, RemoteConfig on the device (versions, mute,
persistence), and the whole path ``send_config`` → Kafka → bridge → retained MQTT → MqttLink against
real mosquitto and Tansu."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Producer
from support import bridge_settings, read_topic, unique, wait_until

import contracts as c
from bridge.app import Bridge
from cloud.agent_config import ConfigNotSent, send_config
from devtools.brokers import Mosquitto, Tansu, free_port
from devtools.speech import sample_recording
from edge_agent.agent import Agent
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from edge_agent.remote import RemoteConfig, config_path
from edge_agent.settings import AgentSettings
from edge_agent.vad import Segmenter, SpeechSegment, VadEvent, WebrtcSegmenter
from edgecap.admin.config import main as config_main
from edgecap.admin.devices import BRIDGE_ACCOUNT, new_password
from edgecap.admin.dynsec import plugin_path, set_account
from runtime.settings import KafkaSettings, MqttSettings

RATE = 16000
T0 = 1_700_000_000.0
CHUNK_S = 0.03


def config(agent_id: str = "pi-1", version: int = 1, **settings: object) -> c.AgentConfig:
    return c.AgentConfig(agent_id=agent_id, version=version, issued_at=time.time(), **settings)  # type: ignore[arg-type]


@pytest.fixture
def root_level() -> Iterator[None]:
    """Put the root logger's level back after a test that lets a configuration change it."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


# --- the contract ----------------------------------------------------------------------------


def test_agent_config_round_trips_and_names_only_what_it_changes() -> None:
    full = config(version=7, muted=True, heartbeat_s=2.5, vad_aggressiveness=3, log_level="DEBUG")
    raw = c.encode(full)
    assert json.loads(raw)["schema"] == "edgecap.agent_config.v1"
    assert c.decode(raw) == full and c.decode(raw, c.AgentConfig) == full
    assert c.encode(c.decode(raw)) == raw
    assert config(version=8, muted=False).settings() == {"muted": False}
    assert config(version=9).settings() == {}
    status = c.Status(agent_id="pi-1", online=True, at=1.0, config_version=7, muted=True)
    assert c.decode(c.encode(status), c.Status) == status
    assert c.Kafka.CONFIG == "edgecap.config"
    assert c.mqtt_topic("pi-1", c.Down.CONFIG) == "edgecap/v1/agents/pi-1/config"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("unknown_setting", 1),
        ("version", 0),
        ("version", -5),
        ("heartbeat_s", 0),
        ("heartbeat_s", 3600.5),
        ("vad_aggressiveness", 4),
        ("vad_aggressiveness", -1),
        ("log_level", "TRACE"),
        ("muted", "maybe"),
        ("agent_id", "../evil"),
        ("issued_at", -1),
    ],
)
def test_agent_config_refuses_unknown_keys_and_out_of_range_values(field: str, value: object) -> None:
    good = json.loads(c.encode(config(version=3, muted=True)))
    with pytest.raises(c.DecodeError) as info:
        c.decode(json.dumps(good | {field: value}).encode(), c.AgentConfig)
    assert info.value.reason is c.Reason.INVALID
    assert field in info.value.detail


# --- RemoteConfig on the device ------------------------------------------------------------------


def test_only_newer_versions_are_applied_and_stale_ones_are_counted(tmp_path: Path, root_level: None) -> None:
    vad = WebrtcSegmenter(aggressiveness=1)
    remote = RemoteConfig("pi-1", tmp_path / "c.json", heartbeat_s=10.0, vad=vad)
    assert remote.state() == (None, False)
    assert remote.apply(config(version=5, muted=True, heartbeat_s=2.5, vad_aggressiveness=3, log_level="WARNING"))
    assert remote.state() == (5, True) and remote.heartbeat_s == 2.5 and vad.aggressiveness == 3
    assert logging.getLogger().level == logging.WARNING
    assert not remote.apply(config(version=5, muted=False))  # the retained message again
    assert not remote.apply(config(version=3, muted=False, heartbeat_s=60))  # an older one
    assert remote.counters["config_stale"] == 2 and remote.counters["config_applied"] == 1
    assert remote.state() == (5, True) and remote.heartbeat_s == 2.5
    assert not remote.apply(config("pi-2", version=9, muted=False))  # not ours
    assert remote.counters["config_wrong_agent"] == 1 and remote.muted.is_set()
    assert remote.apply(config(version=6, muted=False))
    assert remote.state() == (6, False) and remote.heartbeat_s == 2.5  # unset settings stay as they are


def test_each_applied_configuration_is_logged_whatever_level_it_sets(
    caplog: pytest.LogCaptureFixture, root_level: None
) -> None:
    remote = RemoteConfig("pi-1", None, heartbeat_s=10.0)
    logging.getLogger().setLevel(logging.INFO)  # edge_agent.remote has no level of its own: the root's
    remote.apply(config(version=1, log_level="ERROR"))  # raising: logged before it applies
    assert logging.getLogger().level == logging.ERROR
    remote.apply(config(version=2, log_level="DEBUG", muted=True))  # lowering: applied first
    assert logging.getLogger().level == logging.DEBUG
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines == ["config v1 applied: log_level=ERROR", "config v2 applied: muted=True, log_level=DEBUG"]


def test_vad_mode_is_ignored_with_a_warning_by_engines_without_one(caplog: pytest.LogCaptureFixture) -> None:
    class EnergySegmenter(Segmenter):
        type_key = "energy"

        def _is_speech(self, data: bytes, samples: np.ndarray) -> bool:
            return bool(np.mean(samples**2) > 1e4)

    remote = RemoteConfig("pi-1", None, heartbeat_s=10.0, vad=EnergySegmenter(sample_rate=RATE, frame_samples=480))
    with caplog.at_level(logging.WARNING, logger="edge_agent.remote"):
        assert remote.apply(config(version=1, vad_aggressiveness=0))
    assert "vad_aggressiveness=0 ignored: the energy VAD engine" in caplog.text
    assert remote.version == 1  # the version is applied all the same: the other settings would be


def _chunks(pcm: bytes) -> list[tuple[bytes, float]]:
    n = int(CHUNK_S * RATE) * 2
    return [(pcm[i : i + n], T0 + i / 2 / RATE) for i in range(0, len(pcm), n)]


def test_mute_discards_audio_before_the_vad_and_closes_the_open_segment(tmp_path: Path) -> None:
    """The bundled recording through the real webrtc segmenter, muted from the middle of the second
    utterance to the pause before the fourth: nothing in between reaches the VAD or any segment."""
    sf = pytest.importorskip("soundfile")
    rec = sample_recording()
    audio, rate = sf.read(str(rec.path), dtype="int16")
    assert rate == RATE
    chunks = _chunks(audio.tobytes())
    second, third, fourth = rec.utterances[1], rec.utterances[2], rec.utterances[3]
    mute_at = next(i for i, (_, t) in enumerate(chunks) if t >= T0 + (second.start_s + second.end_s) / 2)
    unmute_at = next(i for i, (_, t) in enumerate(chunks) if t >= T0 + (third.end_s + fourth.start_s) / 2)
    mute_t, unmute_t = chunks[mute_at][1], chunks[unmute_at][1]

    vad = WebrtcSegmenter()
    remote = RemoteConfig("pi-1", tmp_path / "c.json", heartbeat_s=10.0, vad=vad)
    events: list[VadEvent] = []
    for i, (pcm, t0) in enumerate(chunks):
        if i == mute_at:
            remote.apply(config(version=1, muted=True))
        if i == unmute_at:
            remote.apply(config(version=2, muted=False))
        events += remote.feed(pcm, t0)
    events += vad.flush()
    segments = [e for e in events if isinstance(e, SpeechSegment)]  # not the pauses

    muted_chunks = unmute_at - mute_at
    assert remote.muted_s == pytest.approx(muted_chunks * CHUNK_S)
    assert vad.frames_seen == len(chunks) - muted_chunks  # muted audio never reached the VAD
    for s in segments:
        assert s.ended_at <= mute_t + 1e-6 or s.started_at >= unmute_t - 1e-6, (s.started_at - T0, s.ended_at - T0)
    cut = [s for s in segments if s.started_at < mute_t < s.ended_at + 1e-6]
    assert len(cut) == 1 and cut[0].ended_at == pytest.approx(mute_t)  # closed at the mute, not held open
    after = [s for s in segments if s.started_at >= unmute_t - 1e-6]
    assert len(after) == len(rec.utterances) - 3  # the fourth utterance onwards, one segment each
    assert after[0].ended_at >= T0 + fourth.end_s


def test_applied_configuration_is_persisted_merged_and_reloaded(tmp_path: Path) -> None:
    path = config_path(tmp_path / "outbox.sqlite3")
    assert path.name == "outbox.sqlite3.config.json"
    first = RemoteConfig("pi-1", path, heartbeat_s=10.0)
    first.apply(config(version=3, muted=True))
    first.apply(config(version=4, heartbeat_s=5.0))
    saved = c.decode(path.read_bytes(), c.AgentConfig)
    assert (saved.version, saved.muted, saved.heartbeat_s) == (4, True, 5.0)  # both messages, merged
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left

    restarted = RemoteConfig("pi-1", path, heartbeat_s=10.0)
    assert restarted.load()
    assert restarted.state() == (4, True) and restarted.heartbeat_s == 5.0
    assert not restarted.apply(config(version=4, muted=False))  # the retained copy after reconnecting
    assert restarted.muted.is_set()


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"schema": "edgecap.agent_config.v1", "agent_id": "pi-1", "version": 0, "issued_at": 1}',
     c.encode(config("pi-9", version=2, muted=True))],
    ids=["empty", "bad-json", "invalid", "another-agent"],
)
def test_corrupt_persisted_configuration_is_logged_and_ignored(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite3.config.json"
    path.write_bytes(content)
    remote = RemoteConfig("pi-1", path, heartbeat_s=10.0)
    with caplog.at_level(logging.ERROR, logger="edge_agent.remote"):
        assert not remote.load()
    assert "ignoring the saved configuration" in caplog.text
    assert remote.counters["config_load_errors"] == 1 and remote.state() == (None, False)
    assert remote.apply(config(version=1, muted=True))  # and the next one replaces the file
    assert c.decode(path.read_bytes(), c.AgentConfig).version == 1
    assert not RemoteConfig("pi-1", tmp_path / "missing.json", heartbeat_s=1.0).load()


def test_link_hands_over_its_own_configuration_and_reports_it(tmp_path: Path) -> None:
    """The link's message handling without a broker: another agent's config is a bad downlink."""
    got: list[c.AgentConfig] = []
    remote = RemoteConfig("pi-1", None, heartbeat_s=10.0)

    def on_config(cfg: c.AgentConfig) -> None:
        got.append(cfg)
        remote.apply(cfg)

    outbox = Outbox(tmp_path / "outbox.sqlite3")
    link = MqttLink("pi-1", MqttSettings(port=1), outbox, on_final=lambda _f: None, on_config=on_config,
                    config_state=remote.state)
    try:
        for cfg in (config("pi-1", version=2, muted=True), config("pi-2", version=3, muted=False)):
            msg = mqtt.MQTTMessage(topic=c.mqtt_topic("pi-1", c.Down.CONFIG).encode())
            msg.payload = c.encode(cfg)
            link._on_message(None, None, msg)
        broken = mqtt.MQTTMessage(topic=c.mqtt_topic("pi-1", c.Down.CONFIG).encode())
        broken.payload = b'{"schema": "edgecap.agent_config.v1", "agent_id": "pi-1", "version": 0}'
        link._on_message(None, None, broken)
        assert [g.version for g in got] == [2]
        assert link.counters["configs"] == 1 and link.counters["bad_downlink"] == 2
        status = link.status()
        assert (status.config_version, status.muted) == (2, True)

        def failing(_cfg: c.AgentConfig) -> None:
            raise RuntimeError("a bug in the receiver")

        link.on_config = failing
        msg = mqtt.MQTTMessage(topic=c.mqtt_topic("pi-1", c.Down.CONFIG).encode())
        msg.payload = c.encode(config("pi-1", version=4))
        link._on_message(None, None, msg)  # logged and counted, never raised into paho's thread
        assert link.counters["config_errors"] == 1
    finally:
        outbox.close()


@pytest.mark.models
def test_agent_muted_by_its_saved_configuration_captions_nothing_even_offline(tmp_path: Path, models_dir: Path) -> None:
    """The real Agent, started with a saved mute and no broker: the whole recording is captured and
    discarded; nothing is transcribed, captioned or committed to the outbox."""
    sf = pytest.importorskip("soundfile")
    outbox = tmp_path / "outbox.sqlite3"
    config_path(outbox).write_bytes(c.encode(config("pi-muted", version=4, muted=True, heartbeat_s=0.2)))
    settings = AgentSettings.load(
        agent_id="pi-muted",
        mqtt={"port": free_port()},  # nothing listens: the device is offline
        input={"file": sample_recording().path, "realtime": False},
        asr={"model_dir": models_dir / "tiny.en" / "onnx-int8", "threads": 1},
        outbox={"path": outbox},
        captions={"dir": tmp_path / "captions", "terminal": False},
    )
    agent = Agent(settings)
    try:
        agent.start()
        assert agent.remote.state() == (4, True) and agent.remote.heartbeat_s == 0.2
        wait_until(agent.input_done.is_set, 20, "the recording to be read")
        status = agent.link.status()
        assert (status.config_version, status.muted) == (4, True)
        assert agent.captioned == 0 and agent.outbox.depth() == 0 and agent.drafter.counters["inferences"] == 0
        assert agent.vad.frames_seen == 0  # no audio reached the VAD
        assert agent.remote.muted_s == pytest.approx(sf.info(str(settings.input.file)).duration, abs=CHUNK_S)
    finally:
        agent.stop()


def test_command_line_refuses_nothing_to_set_and_invalid_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_main(["set", "pi-1"]) == 2
    assert "nothing to set" in capsys.readouterr().err
    assert config_main(["set", "pi-1", "--heartbeat-s", "0", "--vad-aggressiveness", "9"]) == 2
    err = capsys.readouterr().err
    assert "heartbeat_s" in err and "vad_aggressiveness" in err
    assert config_main(["set", "../evil", "--muted", "true"]) == 2


def test_command_line_reads_its_settings_with_config_like_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "config.toml"
    settings.write_text('[kafka]\nbootstrap_servers = "kafka-0:9092"\nextra = { "sasl.password" = "hunter2" }\n')
    assert config_main(["set", "pi-1", "--muted", "true", "--config", str(settings), "--check-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kafka"]["bootstrap_servers"] == "kafka-0:9092" and "hunter2" not in json.dumps(shown)
    argv = ["set", "pi-1", "--muted", "true", "--config", str(settings), "--kafka", "kafka-1:9092", "--check-config"]
    assert config_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["kafka"]["bootstrap_servers"] == "kafka-1:9092"
    assert config_main(["set", "pi-1", "--muted", "true", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_send_config_raises_when_kafka_does_not_confirm() -> None:
    nowhere = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ConfigNotSent, match="v3 for pi-1"):
        send_config(nowhere, config(version=3, muted=True), timeout_s=1)
    assert time.monotonic() - started < 5
    argv = ["set", "pi-1", "--muted", "true", "--kafka", nowhere.bootstrap_servers, "--timeout-s", "1"]
    assert config_main(argv) == 1


# --- the whole path against real brokers -----------------------------------------------------------


class Device:
    """One agent's real MqttLink, outbox and RemoteConfig, recording every configuration handed over."""

    def __init__(self, agent_id: str, port: int, workdir: Path, password: str | None = None) -> None:
        self.agent_id = agent_id
        self.outbox = Outbox(workdir / f"{agent_id}.sqlite3")
        self.remote = RemoteConfig(agent_id, config_path(workdir / f"{agent_id}.sqlite3"), heartbeat_s=10.0)
        self.loaded = self.remote.load()
        self.received: list[c.AgentConfig] = []
        self._lock = threading.Lock()
        self.link = MqttLink(
            agent_id,
            MqttSettings(port=port, session_expiry_s=60, keepalive_s=5, username=password and agent_id,
                         password=password),
            self.outbox,
            on_final=lambda _f: None,
            on_config=self._on_config,
            config_state=self.remote.state,
        )
        self.link.start()
        assert self.link.connected.wait(10), f"{agent_id} did not connect"

    def _on_config(self, cfg: c.AgentConfig) -> None:
        with self._lock:
            self.received.append(cfg)
        self.remote.apply(cfg)

    def versions(self) -> list[int]:
        with self._lock:
            return [r.version for r in self.received]

    def close(self) -> None:
        self.link.stop()
        self.outbox.close()


@pytest.mark.integration
def test_configuration_reaches_the_agent_retained_and_bad_records_are_dead_lettered(
    mosquitto: Mosquitto, kafka: Tansu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_id, c_id, other = unique("pi-cfg-a"), unique("pi-cfg-c"), unique("pi-cfg-x")
    kafka_settings = KafkaSettings(bootstrap_servers=kafka.bootstrap)
    devices: list[Device] = []
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap, downlink=True)) as bridge:
        assert bridge.wait_ready(10)
        a = Device(a_id, mosquitto.port, tmp_path)
        devices.append(a)
        try:
            # a mute reaches the agent, is applied, reported in its status and saved
            send_config(kafka_settings, config(a_id, version=5, muted=True, heartbeat_s=3.0))
            wait_until(lambda: a.remote.version == 5, 20, "config v5 applied by agent A")
            assert a.versions() == [5] and a.remote.muted.is_set() and a.remote.heartbeat_s == 3.0
            status = a.link.status()
            assert (status.config_version, status.muted) == (5, True)

            # an older version (through the command line) is handed over, ignored and counted
            assert config_main(["set", a_id, "--muted", "false", "--version", "3", "--kafka", kafka.bootstrap]) == 0
            printed = c.decode(capsys.readouterr().out.strip().encode(), c.AgentConfig)
            assert (printed.agent_id, printed.version, printed.muted) == (a_id, 3, False)
            wait_until(lambda: a.versions() == [5, 3], 20, "the stale config handed to agent A")
            assert a.remote.counters["config_stale"] == 1 and a.remote.state() == (5, True)

            # a key that is not the config's agent, and a malformed record: dead-lettered, not published
            producer = Producer({"bootstrap.servers": kafka.bootstrap})
            spoofed = c.encode(config(a_id, version=99, muted=False))
            producer.produce(c.Kafka.CONFIG.value, key=other.encode(), value=spoofed)
            producer.produce(c.Kafka.CONFIG.value, key=a_id.encode(), value=b"{not a config")
            assert producer.flush(10) == 0

            def mine(records: list[tuple[bytes | None, bytes]]) -> list[c.DeadLetter]:
                letters = [c.decode(v, c.DeadLetter) for _, v in records]
                return [d for d in letters if d.source == c.Kafka.CONFIG.value and d.agent_id in (a_id, other)]

            letters = mine(read_topic(kafka.bootstrap, c.Kafka.DEADLETTER, lambda r: len(mine(r)) >= 2))
            assert sorted((d.reason, d.agent_id) for d in letters) == [
                (c.Reason.BAD_JSON.value, a_id),
                (c.Reason.SPOOFED_AGENT.value, other),
            ]
            assert next(d.payload for d in letters if d.agent_id == other) == spoofed
            stats = bridge.stats()
            assert stats["dead_lettered"].get("spoofed_agent") == 1 and stats["dead_lettered"].get("bad_json", 0) >= 1

            # published while its device is away: the device gets it when it connects (retained)
            send_config(kafka_settings, config(c_id, version=1, heartbeat_s=2.5))
            wait_until(lambda: bridge.stats()["config_published"] == 3, 20, "the broker's PUBACK for C's config")
            late = Device(c_id, mosquitto.port, tmp_path)
            devices.append(late)
            wait_until(lambda: late.versions() == [1], 20, "C's retained config")
            assert late.remote.state() == (1, False) and late.remote.heartbeat_s == 2.5

            # A restarts: muted from its saved file before connecting; the retained (stale) v3 changes nothing
            a.close()
            devices.remove(a)
            restarted = Device(a_id, mosquitto.port, tmp_path)
            devices.append(restarted)
            assert restarted.loaded and restarted.remote.state() == (5, True)
            wait_until(lambda: restarted.versions() == [3], 20, "A's retained config after the restart")
            assert restarted.remote.counters["config_stale"] == 1 and restarted.remote.muted.is_set()

            assert a.versions() == [5, 3]  # the spoofed v99 never reached A
            assert bridge.stats()["config_published"] == 3  # A v5, A v3, C v1
            assert bridge.stats()["config_failures"] == 0
        finally:
            for device in devices:
                device.close()


@pytest.mark.integration
@pytest.mark.skipif(not Path(plugin_path()).exists(), reason="mosquitto's dynamic security plugin holds the accounts")
def test_shipped_acl_lets_only_the_device_read_its_retained_configuration(kafka: Tansu, tmp_path: Path) -> None:
    """With the accounts and roles of ``edgecap devices`` (edgecap/admin/dynsec.py): the bridge's account
    publishes the retained config, its device reads it, another device's subscriptions to it (by name
    and by wildcard) are refused, and it cannot write a configuration, not even to its own topic."""
    a_id, b_id = unique("pi-acl-a"), unique("pi-acl-b")
    accounts = tmp_path / "dynsec.json"
    secrets = {user: new_password() for user in (a_id, b_id, BRIDGE_ACCOUNT)}
    for user, password in secrets.items():
        set_account(accounts, user, password=password, bridge=user == BRIDGE_ACCOUNT)
    port = free_port()
    listener = (f"listener {port} 127.0.0.1\nallow_anonymous false\nper_listener_settings false\n"
                f"plugin {plugin_path()}\nplugin_opt_config_file {accounts}\n")
    broker = Mosquitto(port, workdir=tmp_path / "mosquitto", config=listener).start()
    snoop: mqtt.Client | None = None
    device: Device | None = None
    try:
        bridge_mqtt = MqttSettings(port=port, session_expiry_s=30, username=BRIDGE_ACCOUNT,
                                   password=secrets[BRIDGE_ACCOUNT])
        with Bridge(bridge_settings(broker, kafka.bootstrap, downlink=True, mqtt=bridge_mqtt)) as bridge:
            assert bridge.wait_ready(10)
            seen: list[str] = []
            acks: dict[int, int] = {}
            subscribed = threading.Event()
            suback: list[int] = []
            snoop = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=a_id, protocol=mqtt.MQTTv5)
            snoop.username_pw_set(a_id, secrets[a_id])
            snoop.on_message = lambda _c, _u, msg: seen.append(msg.topic)
            snoop.on_subscribe = lambda _c, _u, _m, reasons, _p: (suback.extend(r.value for r in reasons),
                                                                  subscribed.set())
            snoop.on_publish = lambda _c, _u, mid, reason, _p: acks.__setitem__(mid, reason.value)
            snoop.connect("127.0.0.1", port)
            snoop.loop_start()
            snoop.subscribe([(c.mqtt_topic(b_id, c.Down.CONFIG), 1), ("edgecap/#", 1),
                             (c.mqtt_topic(a_id, c.Down.CONFIG), 1)])
            assert subscribed.wait(10)
            assert suback == [0x87, 0x87, 0x01]  # B's, the wildcard: not authorised; its own: granted

            send_config(KafkaSettings(bootstrap_servers=kafka.bootstrap), config(b_id, version=1, muted=True))
            device = Device(b_id, port, tmp_path, password=secrets[b_id])  # connects after the publish, maybe
            wait_until(lambda: device is not None and device.versions() == [1], 20, "B's retained configuration")
            forged = snoop.publish(c.mqtt_topic(a_id, c.Down.CONFIG), c.encode(config(a_id, version=7)), qos=1)
            wait_until(lambda: forged.mid in acks, 10, "the PUBACK of A's forged configuration")
            assert acks[forged.mid] == 0x87  # not authorised
            # A's own configuration, sent after B's: on A's one connection anything misrouted to A comes first
            send_config(KafkaSettings(bootstrap_servers=kafka.bootstrap), config(a_id, version=2))
            own = c.mqtt_topic(a_id, c.Down.CONFIG)
            wait_until(lambda: own in seen, 20, "A's own configuration")
            assert [t for t in seen if "/config" in t] == [own], f"A read configuration topics: {seen}"
    finally:
        if snoop is not None:
            snoop.disconnect()
            snoop.loop_stop()
        if device is not None:
            device.close()
        broker.close()
