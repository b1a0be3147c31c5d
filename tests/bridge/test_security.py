"""Device identity end to end: the shipped mosquitto configuration (edgecap/admin/mosquitto), devices made by
``edgecap devices``, the real bridge with its own account, and the Kafka-protocol broker.

Attackers: anonymous clients, wrong passwords and unknown users (each attempt sends its CONNECT and
a PUBLISH in one write, without waiting, on a raw TLS socket), device A publishing under device B's
topic, A claiming to be B in the envelope on its own topic, A reading B's downlink or taking over
B's client id, devices A and C subscribing to anything but their own downlink (the bridge's shared
group, wildcards, B's topics: refused in the SUBACK, by password and by certificate), client
certificates of another CA, a certificate revoked by ``edgecap devices remove``. None of their
segments may reach Kafka, while B's segments go through and are receipted and B gets its captions.

``EDGECAP_TEST_SECURITY_ATTEMPTS`` (default 1000, the issue's proof) sets how many attempts each
attack makes; the certificate tests make a tenth of them. ``EDGECAP_TEST_SECURITY_SEGMENTS``
(default 300): B's segments while A and C try to subscribe.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Producer
from paho.mqtt.properties import Properties
from support import Record, bridge_settings, commit_segments, make_segment, read_topic, scale, wait_until

from bridge.app import Bridge
from bridge.settings import BridgeSettings
from contracts import DecodeError, Final, Reason, Receipt, Segment, Transcript, decode, encode
from contracts.topics import Down, Kafka, Up, mqtt_filter, mqtt_topic, shared_filter
from devtools.brokers import Mosquitto, Tansu, free_port
from edge_agent.link import MqttLink, certificate_cn
from edge_agent.outbox import Outbox
from edge_agent.settings import OutboxSettings
from edgecap.admin.devices import (
    BRIDGE_ACCOUNT,
    CRL_NAME,
    certificates,
    init_ca,
    issue_certificate,
    render_config,
)
from edgecap.admin.devices_cli import main as devices_main
from edgecap.admin.dynsec import accounts, device_role, plugin_path
from runtime.mqttauth import apply_credentials
from runtime.settings import MqttSettings

pytestmark = pytest.mark.integration

ATTEMPTS = scale("SECURITY_ATTEMPTS", 1000)
SEGMENTS = scale("SECURITY_SEGMENTS", 300)
A, B, C = "sec-device-a", "sec-device-b", "sec-device-c"
GRANTED_QOS1 = 0x01
NOT_AUTHORIZED = 0x87

if shutil.which("openssl") is None or not Path(plugin_path()).exists():
    pytest.skip("openssl and mosquitto's dynamic security plugin are needed", allow_module_level=True)


def users(accounts_file: Path) -> list[str]:
    """The accounts that log in by password."""
    return [a.username for a in accounts(accounts_file) if a.has_password]


# --- the fleet: CA, server certificate, devices and the bridge's account made by `edgecap devices` ---


def devices(argv: list[str]) -> int:
    """``edgecap devices …`` in this process, leaving the test session's logging as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return devices_main(argv)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def serial_of(cert: Path) -> int:
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-serial"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().partition("=")[2], 16)


def crl_serials(crl: Path) -> set[int]:
    """The serial numbers a CRL revokes, as ``openssl crl`` reads them (its signature checked too)."""
    ca = crl.parent / "ca.crt"
    out = subprocess.run(["openssl", "crl", "-in", str(crl), "-CAfile", str(ca), "-noout", "-text"],
                         capture_output=True, text=True, check=True)
    assert "verify OK" in out.stderr + out.stdout
    return {int(line.split(":", 1)[1], 16) for line in out.stdout.splitlines() if "Serial Number:" in line}


@dataclass
class Fleet:
    root: Path
    accounts: Path
    ca_dir: Path
    out: Path
    foreign: Path

    @property
    def ca(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def cli(self) -> list[str]:
        return ["--accounts", str(self.accounts), "--ca-dir", str(self.ca_dir)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    root = tmp_path_factory.mktemp("fleet")
    f = Fleet(root, root / "dynsec.json", root / "ca", root / "devices", root / "foreign")
    assert devices([*f.cli, "init-ca", "--server-name", "IP:127.0.0.1", "--server-name", "DNS:localhost"]) == 0
    for agent in (A, B, C):
        assert devices([*f.cli, "add", agent, "--generate", "--cert", "--out-dir", str(f.out)]) == 0
    assert devices([*f.cli, "add", BRIDGE_ACCOUNT, "--bridge", "--generate", "--out-dir", str(f.out)]) == 0
    init_ca(f.foreign, "intruder-ca")
    issue_certificate(f.foreign, A, f.foreign)  # A's name, but not from the fleet's CA
    return f


def start_broker(fleet: Fleet, workdir: Path, *, client_certificates: bool) -> tuple[Mosquitto, int]:
    """mosquitto running the shipped configuration and ACL; returns it and its bridge port."""
    port, bridge_port = free_port(), free_port()
    config = render_config(
        {
            "DYNSEC_PLUGIN": plugin_path(),
            "ACCOUNTS_FILE": fleet.accounts,
            "DEVICE_PORT": port,
            "DEVICE_ADDRESS": "127.0.0.1",
            "BRIDGE_PORT": bridge_port,
            "BRIDGE_ADDRESS": "127.0.0.1",
            "CA_FILE": fleet.ca,
            "SERVER_CERT": fleet.ca_dir / "server.crt",
            "SERVER_KEY": fleet.ca_dir / "server.key",
            "CLIENT_CERTIFICATES": client_certificates,
            "CRL_FILE": fleet.ca_dir / CRL_NAME,
            "CRL_COMMENT": "" if client_certificates else "#",
            "PERSISTENCE_DIR": f"{workdir}/",
        }
    )
    broker = Mosquitto(port, workdir=workdir, config=config).start()
    written = (workdir / "mosquitto.conf").read_text().splitlines()
    for key in ("persistence_location", "max_inflight_messages", "max_queued_messages"):  # the shipped values,
        assert sum(line.startswith(f"{key} ") for line in written) == 1, key  # not the runner's defaults
    assert (f"crlfile {fleet.ca_dir / CRL_NAME}" in written) == client_certificates
    return broker, bridge_port


def device_settings(fleet: Fleet, port: int, agent: str, *, cert: bool = False) -> MqttSettings:
    if cert:
        return MqttSettings(host="localhost", port=port, tls=True, ca_file=fleet.ca,
                            cert_file=fleet.out / f"{agent}.crt", key_file=fleet.out / f"{agent}.key")
    return MqttSettings(host="localhost", port=port, tls=True, ca_file=fleet.ca, username=agent,
                        password_file=fleet.out / f"{agent}.password")


# --- raw MQTT v5 attempts: CONNECT and PUBLISH in one write, not waiting for the CONNACK -----------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_and_publish(
    client_id: str, username: str | None, password: str | None, topic: str, payload: bytes
) -> bytes:
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _str("MQTT") + bytes([5, flags]) + (30).to_bytes(2, "big") + _varint(0) + _str(client_id)
    body += (_str(username) if username is not None else b"") + (_str(password) if password is not None else b"")
    publish = _str(topic) + (1).to_bytes(2, "big") + _varint(0) + payload
    return b"\x10" + _varint(len(body)) + body + b"\x32" + _varint(len(publish)) + publish


def raw_attempt(port: int, context: ssl.SSLContext, packets: bytes) -> str:
    """What the broker answers: 'connack 0x..', 'closed', or the TLS/socket error (with the TLS
    alert's reason where there is one, e.g. 'error SSLError SSLV3_ALERT_CERTIFICATE_REVOKED')."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as plain,
            context.wrap_socket(plain, server_hostname="localhost") as tls,
        ):
            tls.sendall(packets)
            head = tls.recv(2)
            if not head:
                return "closed"
            if head[0] != 0x20:
                return f"packet {head[0]:#x}"
            body = tls.recv(head[1])
            return f"connack {body[1]:#x}"
    except OSError as exc:  # ssl.SSLError included
        reason = getattr(exc, "reason", None)
        return f"error {type(exc).__name__}" + (f" {reason}" if reason else "")


def attacker_segment(agent_id: str, ledger: set[str]) -> bytes:
    segment = make_segment(agent_id, 0, seconds=0.05, draft=False)
    ledger.add(segment.segment_id)
    return encode(segment)


# --- paho clients ------------------------------------------------------------------------------


@dataclass
class Client:
    """A paho v5 client with its publish results and received messages."""

    client: mqtt.Client
    acks: dict[int, int] = field(default_factory=dict)
    received: list[mqtt.MQTTMessage] = field(default_factory=list)
    suback: list[int] = field(default_factory=list)
    receive_maximum: int = 65535
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish_all(self, items: list[tuple[str, bytes]], timeout_s: float = 60) -> list[int]:
        """Publish at QoS 1 and return the PUBACK reason codes."""
        mids = [self.client.publish(topic, payload, qos=1).mid for topic, payload in items]
        wait_until(lambda: all(m in self.acks for m in mids), timeout_s, "PUBACKs")
        return [self.acks[m] for m in mids]


def connect(settings: MqttSettings, client_id: str) -> Client:
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    apply_credentials(paho, settings)
    paho.max_inflight_messages_set(50)
    c = Client(paho)
    connected = threading.Event()

    def on_publish(_c: object, _u: object, mid: int, reason: mqtt.ReasonCode, _p: object) -> None:
        with c.lock:
            c.acks[mid] = reason.value

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with c.lock:
            c.received.append(msg)

    def on_subscribe(_c: object, _u: object, _mid: int, reasons: list[mqtt.ReasonCode], _p: object) -> None:
        with c.lock:
            c.suback.extend(r.value for r in reasons)

    def on_connect(_c: object, _u: object, _f: object, _r: object, props: Properties | None) -> None:
        c.receive_maximum = getattr(props, "ReceiveMaximum", 65535)
        connected.set()

    paho.on_connect = on_connect
    paho.on_publish, paho.on_message, paho.on_subscribe = on_publish, on_message, on_subscribe
    paho.connect(settings.host, settings.port)
    paho.loop_start()
    assert connected.wait(10), f"{client_id} could not connect"
    return c


def segment_ids_in_kafka(bootstrap: str, must_see: set[str]) -> set[str]:
    """Every segment id in ``edgecap.segments``: read until ``must_see`` are there and nothing new
    came for 1.5 s (Tansu's high watermarks cannot be trusted)."""
    seen: set[str] = set()
    read = 0

    def ids(records: list[Record]) -> bool:
        nonlocal read
        for _, value in records[read:]:
            try:
                seen.add(decode(value, Segment).segment_id)
            except DecodeError:  # another test's raw record; the bridge writes only valid segments
                continue
        read = len(records)
        return must_see <= seen

    read_topic(bootstrap, Kafka.SEGMENTS, ids, timeout_s=60, linger_s=1.5)
    return seen


# --- the tests ---------------------------------------------------------------------------------


def test_devices_command_adds_lists_and_removes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    cli = ["--accounts", str(tmp_path / "dynsec.json"), "--ca-dir", str(ca_dir)]
    secret = tmp_path / "given"
    secret.write_text("a-given-password\n")
    assert devices([*cli, "add", "pi-1", "--password-file", str(secret)]) == 0
    assert devices([*cli, "init-ca"]) == 0
    assert crl_serials(ca_dir / CRL_NAME) == set()  # init-ca writes an empty CRL
    assert devices([*cli, "add", "pi-2", "--generate", "--cert", "--out-dir", str(out)]) == 0
    assert users(tmp_path / "dynsec.json") == ["pi-1", "pi-2"]
    # each device's account holds its own role, with its topics only
    assert {a.username: a.roles for a in accounts(tmp_path / "dynsec.json")} == {
        "pi-1": (device_role("pi-1"),), "pi-2": (device_role("pi-2"),)}
    assert certificate_cn(str(out / "pi-2.crt")) == "pi-2"
    assert (out / "pi-2.password").stat().st_mode & 0o077 == 0
    # the certificate is recorded: serial, CN, expiry; a new one for the same device is recorded too
    first = serial_of(out / "pi-2.crt")
    assert devices([*cli, "add", "pi-2", "--cert", "--days", "30", "--out-dir", str(out)]) == 0
    second = serial_of(out / "pi-2.crt")
    recorded = certificates(ca_dir)
    assert [(int(c.serial, 16), c.common_name, c.revoked) for c in recorded] == [
        (first, "pi-2", False), (second, "pi-2", False)]
    assert 29 <= (recorded[1].expires - datetime.now(UTC)).days <= 30
    capsys.readouterr()
    assert devices([*cli, "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["pi-1\tdevice\tpassword", "pi-2\tdevice\tpassword+certificate"]
    assert devices([*cli, "remove", "pi-1"]) == 0
    assert "systemctl restart mosquitto" in capsys.readouterr().out
    assert users(tmp_path / "dynsec.json") == ["pi-2"]
    # revoke: both certificates of pi-2 in the CRL, its password kept; remove: the password goes
    assert devices([*cli, "revoke", "pi-2"]) == 0
    said = capsys.readouterr().out
    assert "2 certificate(s) of pi-2 revoked" in said and "kill -HUP" in said and "restart" in said
    assert crl_serials(ca_dir / CRL_NAME) == {first, second}
    assert all(c.revoked for c in certificates(ca_dir))
    assert devices([*cli, "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["pi-2\tdevice\tpassword+revoked-certificate"]
    assert devices([*cli, "revoke", "pi-2"]) == 1  # nothing left to revoke
    assert devices([*cli, "remove", "pi-2"]) == 0
    assert users(tmp_path / "dynsec.json") == []
    assert devices([*cli, "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "pi-2\tdevice\trevoked-certificate"
    # the broker's configuration points at the CRL only when devices log in by certificate
    for flag, line in (([], f"#crlfile {ca_dir.resolve() / CRL_NAME}"), (["--client-certificates"],
                                                                          f"crlfile {ca_dir.resolve() / CRL_NAME}")):
        assert devices([*cli, "config", *flag]) == 0
        assert line in capsys.readouterr().out.splitlines()
    # a CA of an earlier version: ca.crt, ca.key, issued/ copies and ca.srl, where openssl x509 kept the
    # last serial it used; its database is made on first use, its certificates are still revoked
    assert devices([*cli, "add", "pi-4", "--cert", "--out-dir", str(out)]) == 0
    legacy = serial_of(out / "pi-4.crt")
    for name in ("index.txt", "crlnumber", "serial", "ca.cnf", CRL_NAME):
        for path in ca_dir.glob(f"{name}*"):
            path.unlink()
    shutil.rmtree(ca_dir / "certs")
    digits = f"{legacy:X}"
    (ca_dir / "ca.srl").write_text(digits.zfill(len(digits) + len(digits) % 2) + "\n")  # as openssl writes it
    assert devices([*cli, "add", "pi-5", "--cert", "--out-dir", str(out)]) == 0
    assert serial_of(out / "pi-5.crt") != legacy
    assert devices([*cli, "remove", "pi-4"]) == 0
    assert crl_serials(ca_dir / CRL_NAME) == {legacy}
    assert [(c.common_name, c.revoked) for c in certificates(ca_dir)] == [("pi-5", False), ("pi-4", True)]
    # bad ids, the reserved bridge account, nothing to add, unknown device: refused with a reason
    assert devices([*cli, "add", "pi/../x", "--generate"]) == 1
    assert devices([*cli, "add", "+", "--generate"]) == 1
    assert devices([*cli, "add", BRIDGE_ACCOUNT, "--generate"]) == 1
    assert devices([*cli, "add", "pi-3"]) == 1
    assert devices([*cli, "remove", "pi-9"]) == 1
    assert devices([*cli, "revoke", BRIDGE_ACCOUNT]) == 1
    err = capsys.readouterr().err
    assert "invalid agent id" in err and "bridge's account" in err and "nothing to add" in err
    assert "no certificate left to revoke" in err


@pytest.fixture(scope="module")
def secured(fleet: Fleet, kafka: Tansu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Bridge]]:
    """The password-mode broker and the bridge, logged in with its own account on its own listener."""
    broker, bridge_port = start_broker(fleet, tmp_path_factory.mktemp("broker"), client_certificates=False)
    bridge_mqtt = MqttSettings(host="localhost", port=bridge_port, tls=True, ca_file=fleet.ca, username=BRIDGE_ACCOUNT,
                               password_file=fleet.out / f"{BRIDGE_ACCOUNT}.password", session_expiry_s=30)
    settings = bridge_settings(broker, kafka.bootstrap, mqtt=bridge_mqtt, downlink=True,
                               downlink_session_timeout_ms=2000)
    bridge = Bridge(settings).start()
    try:
        assert bridge.wait_ready(15), "the bridge could not subscribe with its own account"
        yield broker.port, bridge
    finally:
        bridge.stop()
        broker.close()


@pytest.mark.proof  # ATTEMPTS of each of five attacks
def test_only_authenticated_devices_reach_kafka_and_only_as_themselves(
    fleet: Fleet, kafka: Tansu, secured: tuple[int, Bridge], tmp_path: Path
) -> None:
    port, bridge = secured
    started = time.monotonic()
    attackers: set[str] = set()

    # B, a legitimate device: the real agent link with its outbox, over TLS with its password
    finals: list[Final] = []
    box = Outbox(tmp_path / "b.db")
    link = MqttLink(B, device_settings(fleet, port, B), box, on_final=finals.append)
    link.start()
    legit: list[str] = []

    def b_records(n: int) -> None:
        legit.extend(commit_segments(box, B, n))
        link.notify()

    try:
        assert link.connected.wait(10), "the legitimate device could not connect"
        b_records(10)

        # 1. anonymous, wrong password, unknown user: CONNACK refusals, the pipelined PUBLISH unseen
        context = ssl.create_default_context(cafile=fleet.ca)
        outcomes: dict[str, set[str]] = {}
        for kind, username, password in (("anonymous", None, None), ("wrong password", B, "guess"),
                                         ("unknown user", "sec-nobody", "guess")):
            answers = set()
            for i in range(ATTEMPTS):
                packets = connect_and_publish(f"x-{i}", username, password and f"{password}-{i}",
                                              mqtt_topic(B, Up.SEGMENTS), attacker_segment(B, attackers))
                answers.add(raw_attempt(port, context, packets))
            outcomes[kind] = answers
        print(f"refusals after {time.monotonic() - started:.1f} s: {outcomes}")
        assert outcomes["anonymous"] <= {"connack 0x87", "connack 0x86", "closed"}, outcomes
        assert outcomes["wrong password"] <= {"connack 0x86", "connack 0x87", "closed"}, outcomes
        assert outcomes["unknown user"] <= {"connack 0x86", "connack 0x87", "closed"}, outcomes

        # 2. device A, properly logged in, under B's client id (the broker uses A's user name as the
        #    client id instead, so B's session is neither closed nor taken over), publishing under
        #    B's topics: PUBACK "not authorised", dropped
        a = connect(device_settings(fleet, port, A), B)
        try:
            # the broker takes as many unacknowledged publishes as an agent's and the bridge's windows
            bridge_window = BridgeSettings.model_fields["max_in_flight"].default
            assert a.receive_maximum == bridge_window >= OutboxSettings.model_fields["max_in_flight"].default
            reasons = a.publish_all([(mqtt_topic(B, Up.SEGMENTS), attacker_segment(B, attackers))
                                     for _ in range(ATTEMPTS)])
            assert set(reasons) == {NOT_AUTHORIZED}
            for channel in (Up.FRAMES, Up.STATUS):
                assert a.publish_all([(mqtt_topic(B, channel), b"{}")]) == [NOT_AUTHORIZED]
            for channel in (Down.RECEIPTS, Down.CAPTIONS, Down.CONFIG):  # forged downlink to B
                assert a.publish_all([(mqtt_topic(B, channel), b"{}")]) == [NOT_AUTHORIZED]

            # 3. A subscribing to B's downlink, by name and by wildcard: nothing of B's may arrive
            a.client.subscribe([(mqtt_topic(A, Down.RECEIPTS), 1), (mqtt_topic(B, Down.RECEIPTS), 1),
                                (mqtt_topic(B, Down.CAPTIONS), 1), (mqtt_topic(B, Down.CONFIG), 1),
                                (mqtt_filter(Down.RECEIPTS), 1), (mqtt_filter(Down.CAPTIONS), 1), ("edgecap/#", 1)])
            wait_until(lambda: len(a.suback) == 7, 10, "SUBACKs")
            assert a.suback == [GRANTED_QOS1] + [NOT_AUTHORIZED] * 6, a.suback  # refused at the broker

            # 4. A claiming to be B on its own topic: through the ACL, dead-lettered by the bridge,
            #    rejected in A's receipts so A does not resend forever
            spoofed: set[str] = set()
            reasons = a.publish_all([(mqtt_topic(A, Up.SEGMENTS), attacker_segment(B, spoofed))
                                     for _ in range(ATTEMPTS)])
            attackers |= spoofed
            assert set(reasons) == {0}

            def receipts() -> list[Receipt]:
                with a.lock:
                    mine = [m.payload for m in a.received if m.topic == mqtt_topic(A, Down.RECEIPTS)]
                return [decode(p, Receipt) for p in mine]

            def rejected() -> dict[str, str]:
                return {r.segment_id: r.reason for rec in receipts() for r in rec.rejected}

            wait_until(lambda: spoofed <= rejected().keys(), 60, "rejections of the spoofed segments")
            assert {rejected()[sid] for sid in spoofed} == {Reason.SPOOFED_AGENT.value}
            assert bridge.stats()["dead_lettered"].get(Reason.SPOOFED_AGENT.value, 0) >= ATTEMPTS

            # 5. meanwhile B: more segments, all receipted, and a caption through the bridge's downlink
            b_records(10)
            now = time.time()
            final = Final(agent_id=B, segment_id=legit[0], seq=0, started_at=now, ended_at=now + 0.1, text="for B only",
                          source="cloud", version=2, transcript=Transcript(text="for B only", model_id="t",
                                                                           produced_at=time.time()))
            producer = Producer({"bootstrap.servers": kafka.bootstrap})
            producer.produce(Kafka.FINALS.value, key=B, value=encode(final))
            assert producer.flush(10) == 0
            wait_until(lambda: box.depth() == 0, 60, "receipts of all of B's segments")
            wait_until(lambda: any(f.segment_id == final.segment_id for f in finals), 30, "B's caption")
            assert link.counters["disconnects"] == 0, "A's connection with B's client id threw B out"
            assert link.counters["receipted"] == len(legit)
            # the receipt of a segment of A's own, sent by the bridge after all of B's downlink: on A's
            # one connection, anything of B's routed to A would have come before it
            own = make_segment(A, 0)
            assert a.publish_all([(mqtt_topic(A, Up.SEGMENTS), encode(own))]) == [0]
            wait_until(lambda: any(own.segment_id in r.accepted for r in receipts()), 30, "the receipt of A's own")
            with a.lock:
                spied = [m.topic for m in a.received if f"/{B}/" in m.topic]
            assert spied == [], f"A read B's downlink: {spied}"
        finally:
            a.client.disconnect()
            a.client.loop_stop()
    finally:
        link.stop()

    # 6. Kafka: every segment of B, none of the attackers'
    assert len(attackers) == 5 * ATTEMPTS
    in_kafka = segment_ids_in_kafka(kafka.bootstrap, set(legit))
    assert set(legit) <= in_kafka
    assert not attackers & in_kafka, f"{len(attackers & in_kafka)} attacker segments reached Kafka"
    print(f"{ATTEMPTS} attempts per attack; whole test {time.monotonic() - started:.1f} s")


def attack_filters(agent: str, group: str) -> list[str]:
    """Every subscription a device must be refused: the bridge's shared group (and any other group),
    the uplink of every device, another device's downlink by name, wildcards (under its own id too)."""
    return [
        shared_filter(group, Up.SEGMENTS),
        shared_filter(group, Up.FRAMES),
        shared_filter("edgecap-bridge", Up.SEGMENTS),  # the production default group
        shared_filter("attackers", Up.SEGMENTS),
        f"$share/{group}/{mqtt_topic(B, Up.SEGMENTS)}",
        f"$share/{group}/#",
        f"$share/{group}/{mqtt_topic(agent, Down.RECEIPTS)}",  # its own topic, but shared
        mqtt_filter(Up.SEGMENTS),
        mqtt_topic(B, Up.SEGMENTS),
        mqtt_topic(B, Up.STATUS),
        *(mqtt_topic(B, channel) for channel in Down),
        mqtt_filter(Down.RECEIPTS),
        mqtt_filter(Down.CAPTIONS),
        f"edgecap/v1/agents/{agent}/+",
        f"edgecap/v1/agents/{agent}/#",
        "edgecap/#",
        "+/+/+/+/+",
        "#",
        "$SYS/#",
    ]


def subscribe(client: Client, filters: list[str]) -> dict[str, int]:
    """Subscribe to ``filters`` (QoS 1) in one SUBSCRIBE; the SUBACK's reason code for each."""
    client.client.subscribe([(f, 1) for f in filters])
    wait_until(lambda: len(client.suback) == len(filters), 10, "the SUBACK")
    with client.lock:
        return dict(zip(filters, client.suback, strict=True))


def test_subscriptions_beyond_the_own_downlink_are_refused_at_the_broker(
    fleet: Fleet, kafka: Tansu, secured: tuple[int, Bridge], tmp_path: Path
) -> None:
    """Devices A and C try to join the bridge's shared subscription group (where each would be handed
    a share of every device's segments, which mosquitto then drops for the whole group when the read
    check fails), to subscribe to wildcards, to the uplink and to another device's downlink: each
    SUBACK says "not authorised" while their own receipts, captions and config are granted. The
    bridge then receives every segment B publishes exactly once, on the first try (none resent
    after a missing receipt: none was handed to an attacker), and none reaches an attacker."""
    port, bridge = secured
    group = bridge.settings.shared_group
    attackers: dict[str, Client] = {}
    box = Outbox(tmp_path / "b.db")
    link = MqttLink(B, device_settings(fleet, port, B), box, on_final=lambda _final: None)
    try:
        for agent in (A, C):
            attackers[agent] = client = connect(device_settings(fleet, port, agent), agent)
            own = [mqtt_topic(agent, channel) for channel in Down]
            attacks = attack_filters(agent, group)
            answers = subscribe(client, own + attacks)
            assert answers == {f: GRANTED_QOS1 for f in own} | {f: NOT_AUTHORIZED for f in attacks}, answers

        link.start()
        assert link.connected.wait(10), "the legitimate device could not connect"
        received = bridge.stats()["received"]
        legit = commit_segments(box, B, SEGMENTS)
        link.notify()
        wait_until(lambda: box.depth() == 0, 60, "receipts of all of B's segments")
        assert link.counters["receipted"] == SEGMENTS
        assert link.counters["published"] == SEGMENTS and link.counters["resent"] == 0, link.counters
        assert bridge.stats()["received"] - received == SEGMENTS
        for agent, client in attackers.items():
            with client.lock:
                got = [m.topic for m in client.received]
            assert got == [], f"{agent} received {got[:5]}"
    finally:
        link.stop()
        for client in attackers.values():
            client.client.disconnect()
            client.client.loop_stop()
    assert set(legit) <= segment_ids_in_kafka(kafka.bootstrap, set(legit))


def test_client_certificates_only_from_the_fleet_ca(fleet: Fleet, tmp_path: Path) -> None:
    broker, _ = start_broker(fleet, tmp_path / "broker", client_certificates=True)
    attempts = max(1, ATTEMPTS // 10)
    try:
        # a certificate with A's name from another CA, or none at all: refused during the handshake
        foreign = ssl.create_default_context(cafile=fleet.ca)
        foreign.load_cert_chain(fleet.foreign / f"{A}.crt", fleet.foreign / f"{A}.key")
        bare = ssl.create_default_context(cafile=fleet.ca)
        for context in (foreign, bare):
            answers = {raw_attempt(broker.port, context, connect_and_publish(
                A, None, None, mqtt_topic(A, Up.SEGMENTS), b"{}")) for _ in range(attempts)}
            assert all(a.startswith(("error", "closed")) for a in answers), answers
        # A's own certificate: connected as A whatever user name it claims, and only A's topics
        claims_b = device_settings(fleet, broker.port, A, cert=True).model_copy(update={"username": B})
        a = connect(claims_b, "whatever")
        try:
            assert a.publish_all([(mqtt_topic(B, Up.SEGMENTS), b"{}")] * attempts) == [NOT_AUTHORIZED] * attempts
            assert a.publish_all([(mqtt_topic(A, Up.SEGMENTS), b"{}")]) == [0x10]  # accepted; no subscriber here
            # subscriptions are checked for the certificate's name as well: its own downlink only
            own, attacks = [mqtt_topic(A, channel) for channel in Down], attack_filters(A, "edgecap-bridge")
            answers = subscribe(a, own + attacks)
            assert answers == {f: GRANTED_QOS1 for f in own} | {f: NOT_AUTHORIZED for f in attacks}, answers
        finally:
            a.client.disconnect()
            a.client.loop_stop()
    finally:
        broker.close()


def test_revoked_certificate_refused_after_reload(fleet: Fleet, tmp_path: Path) -> None:
    """``edgecap devices remove`` revokes the device's certificate; after a SIGHUP mosquitto refuses it
    at the TLS handshake while another device's certificate still works. A connection made before the
    revocation survives the SIGHUP (mosquitto checks the CRL at handshakes only) and ends with a restart."""
    revoked = "sec-device-revoked"
    assert devices([*fleet.cli, "add", revoked, "--cert", "--out-dir", str(fleet.out)]) == 0
    broker, _ = start_broker(fleet, tmp_path / "broker", client_certificates=True)
    attempts = max(1, ATTEMPTS // 10)

    def context(agent: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=fleet.ca)
        context.load_cert_chain(fleet.out / f"{agent}.crt", fleet.out / f"{agent}.key")
        return context

    def answers(agent: str, n: int = attempts) -> set[str]:
        return {raw_attempt(broker.port, context(agent), connect_and_publish(
            agent, None, None, mqtt_topic(agent, Up.SEGMENTS), b"{}")) for _ in range(n)}

    def refused_as_revoked(got: set[str]) -> None:
        # every pipelined attempt refused: the server's alert names the revocation, or the client,
        # still writing its CONNECT, sees the connection end first
        assert got <= {"error SSLError SSLV3_ALERT_CERTIFICATE_REVOKED", "closed", "error SSLEOFError",
                       "error SSLEOFError UNEXPECTED_EOF_WHILE_READING", "error ConnectionResetError"}, got
        # a bare handshake, nothing written after it, always reads the alert: refused as revoked
        bare = raw_attempt(broker.port, context(revoked), b"")
        assert bare == "error SSLError SSLV3_ALERT_CERTIFICATE_REVOKED", bare
        print(f"{attempts} attempts with the revoked certificate: {sorted(got)}")

    held: Client | None = None
    try:
        assert answers(revoked, 3) == answers(B, 3) == {"connack 0x0"}
        held = connect(device_settings(fleet, broker.port, revoked, cert=True), "held")

        assert devices([*fleet.cli, "remove", revoked]) == 0
        assert serial_of(fleet.out / f"{revoked}.crt") in crl_serials(fleet.ca_dir / CRL_NAME)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)
        # the reload is done when a bare TLS handshake is refused (no CONNECT: a connection that got
        # through before the reload would take over the held one's session)
        wait_until(lambda: "REVOKED" in raw_attempt(broker.port, context(revoked), b""), 30, "the reload")
        refused_as_revoked(answers(revoked))
        assert answers(B, 3) == {"connack 0x0"}
        # already connected before: still connected and authorised as itself
        assert held.publish_all([(mqtt_topic(revoked, Up.SEGMENTS), b"{}")]) == [0x10]

        broker.stop()
        broker.start()
        wait_until(lambda: held is not None and not held.client.is_connected(), 10, "the held connection to end")
        refused_as_revoked(answers(revoked))
        assert answers(B, 3) == {"connack 0x0"}
        assert not held.client.is_connected()  # its reconnection attempts are refused too
    finally:
        if held is not None:
            held.client.disconnect()
            held.client.loop_stop()
        broker.close()
