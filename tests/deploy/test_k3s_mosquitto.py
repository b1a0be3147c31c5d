"""k3s's mosquitto.conf (k3s/base/mosquitto/mosquitto.conf, the project's template rendered for the
pod) run in a real mosquitto here: the pod's mounts laid out in a temporary folder with what
``edgecap devices`` makes (the CA, the server certificate, the CRL, the accounts), and only the
folder prefix, the plugin's path and the listeners' ports and address changed. A device connects
with its client certificate and publishes its own uplink; the ACL refuses another device's topic
and the bridge's shared group; a certificate of another CA is refused at the handshake; the
bridge's account reads the uplink on the bridge's listener.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from k3s_objects import BASE

from contracts.topics import Down, Up, mqtt_topic, shared_filter
from devtools.brokers import Mosquitto, free_port
from edgecap.admin.devices import BRIDGE_ACCOUNT, CRL_NAME, init_ca, issue_certificate
from edgecap.admin.devices_cli import main as devices
from edgecap.admin.dynsec import plugin_path

pytestmark = [pytest.mark.deploy, pytest.mark.integration]

A, B = "k3s-device-a", "k3s-device-b"
NOT_AUTHORIZED = 0x87
NO_SUBSCRIBERS = 0x10
GRANTED_QOS1 = 0x01


@dataclass
class Broker:
    root: Path
    device_port: int
    bridge_port: int

    @property
    def ca(self) -> Path:
        return self.root / "tls" / "ca.crt"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """mosquitto on the committed k3s rendering, its files where the pod mounts them."""
    root = tmp_path_factory.mktemp("mosquitto-pod")
    ca_dir, out = root / "ca", root / "devices"
    accounts = root / "accounts" / "dynamic-security.json"
    cli = ["--accounts", str(accounts), "--ca-dir", str(ca_dir)]
    assert devices([*cli, "init-ca", "--server-name", "DNS:localhost"]) == 0
    assert devices([*cli, "add", A, "--cert", "--out-dir", str(out)]) == 0
    assert devices([*cli, "add", B, "--cert", "--out-dir", str(out)]) == 0
    assert devices([*cli, "add", BRIDGE_ACCOUNT, "--bridge", "--generate", "--out-dir", str(out)]) == 0
    # the projected volume /mosquitto/tls: cert-manager's ca.crt, tls.crt, tls.key and the CRL
    tls = root / "tls"
    tls.mkdir()
    for source, target in (("ca.crt", "ca.crt"), ("server.crt", "server.crt"), ("server.key", "server.key")):
        (tls / target).write_bytes((ca_dir / source).read_bytes())
    (tls / "crl.pem").write_bytes((ca_dir / CRL_NAME).read_bytes())
    (root / "data").mkdir()

    device_port, bridge_port = free_port(), free_port()
    conf = (BASE / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    # the pod's paths (cafile, certfile, keyfile twice; crlfile; the accounts; persistence) under root
    local, count = re.subn(r"^(\w+) /mosquitto/", rf"\1 {root}/", conf, flags=re.M)
    assert count == 9, f"the pod's paths moved: {count} of them"
    local, n_plugin = re.subn(
        r"^plugin /usr/lib/mosquitto_dynamic_security\.so$", f"plugin {plugin_path()}", local, flags=re.M
    )
    local, n_device = re.subn(r"^listener 8883 0\.0\.0\.0$", f"listener {device_port} 127.0.0.1", local, flags=re.M)
    local, n_bridge = re.subn(r"^listener 8884 0\.0\.0\.0$", f"listener {bridge_port} 127.0.0.1", local, flags=re.M)
    assert (n_plugin, n_device, n_bridge) == (1, 1, 1)
    running = Mosquitto(device_port, workdir=root / "run", config=local).start()
    try:
        yield Broker(root, device_port, bridge_port)
    finally:
        running.close()


@dataclass
class Client:
    paho: mqtt.Client
    acks: dict[int, int] = field(default_factory=dict)
    suback: list[int] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


def connect(port: int, context: ssl.SSLContext, client_id: str, password: tuple[str, str] | None = None) -> Client:
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    paho.tls_set_context(context)
    if password:
        paho.username_pw_set(*password)
    client = Client(paho)
    connected = threading.Event()
    paho.on_connect = lambda *_: connected.set()

    def on_publish(_c: object, _u: object, mid: int, reason: mqtt.ReasonCode, _p: object) -> None:
        client.acks[mid] = reason.value
        client.done.set()

    def on_subscribe(_c: object, _u: object, _mid: int, reasons: list[mqtt.ReasonCode], _p: object) -> None:
        client.suback.extend(r.value for r in reasons)
        client.done.set()

    paho.on_publish, paho.on_subscribe = on_publish, on_subscribe
    paho.connect("localhost", port)
    paho.loop_start()
    assert connected.wait(10), f"{client_id} could not connect"
    return client


def publish(client: Client, topic: str) -> int:
    client.done.clear()
    mid = client.paho.publish(topic, b"{}", qos=1).mid
    assert client.done.wait(10), "no PUBACK"
    return client.acks[mid]


def subscribe(client: Client, topic: str) -> int:
    client.done.clear()
    client.suback.clear()
    client.paho.subscribe(topic, qos=1)
    assert client.done.wait(10), "no SUBACK"
    return client.suback[0]


def device_context(broker: Broker, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=broker.ca)
    context.load_cert_chain(cert, key)
    return context


def test_a_device_with_its_certificate_gets_its_own_topics_only(broker: Broker) -> None:
    out = broker.root / "devices"
    a = connect(broker.device_port, device_context(broker, out / f"{A}.crt", out / f"{A}.key"), "anything")
    try:
        assert publish(a, mqtt_topic(A, Up.SEGMENTS)) == NO_SUBSCRIBERS  # accepted
        assert publish(a, mqtt_topic(B, Up.SEGMENTS)) == NOT_AUTHORIZED
        assert subscribe(a, mqtt_topic(A, Down.CAPTIONS)) == GRANTED_QOS1
        assert subscribe(a, mqtt_topic(B, Down.CAPTIONS)) == NOT_AUTHORIZED
        assert subscribe(a, shared_filter("edgecap-bridge", Up.SEGMENTS)) == NOT_AUTHORIZED
        assert subscribe(a, "#") == NOT_AUTHORIZED
    finally:
        a.paho.disconnect()
        a.paho.loop_stop()


def _connack(port: int, context: ssl.SSLContext) -> bytes:
    """The first byte the broker answers an MQTT v5 CONNECT with over TLS (b"" if it closes the
    connection); raises ssl.SSLError or OSError when the handshake is refused."""
    client_id = b"probe"
    variable = b"\x00\x04MQTT\x05\x02\x00\x3c\x00"  # v5, clean start, keep-alive 60 s, no properties
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    with socket.create_connection(("localhost", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(bytes([0x10, len(body)]) + body)
            return tls.recv(1)


def test_a_certificate_of_another_ca_is_refused(broker: Broker, tmp_path: Path) -> None:
    out = broker.root / "devices"
    assert _connack(broker.device_port, device_context(broker, out / f"{B}.crt", out / f"{B}.key")) == b"\x20"
    init_ca(tmp_path, "intruder-ca")
    cert, key = issue_certificate(tmp_path, A, tmp_path)  # A's name, another CA
    try:
        answer = _connack(broker.device_port, device_context(broker, cert, key))
    except (ssl.SSLError, OSError):
        return
    assert answer == b"", f"the broker answered a foreign certificate with {answer!r}"


def test_the_bridge_reads_the_uplink_on_its_own_listener(broker: Broker) -> None:
    password = (broker.root / "devices" / f"{BRIDGE_ACCOUNT}.password").read_text(encoding="utf-8").strip()
    context = ssl.create_default_context(cafile=broker.ca)
    bridge = connect(broker.bridge_port, context, "bridge-0", (BRIDGE_ACCOUNT, password))
    try:
        assert subscribe(bridge, shared_filter("edgecap-bridge", Up.SEGMENTS)) == GRANTED_QOS1
    finally:
        bridge.paho.disconnect()
        bridge.paho.loop_stop()
