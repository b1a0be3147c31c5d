"""TLS and per-device credentials against a real mosquitto.

Certificates are made with the ``openssl`` command line in the test's temporary directory: a CA,
a server certificate for 127.0.0.1/localhost, a client certificate per device (CN = agent id) and
one from a foreign CA. mosquitto requires a client certificate and takes its CN as the user name;
an ACL lets each device use only its own topics. A second broker checks passwords (a
``mosquitto_passwd`` file) over TLS.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from support import commit_segments, wait_until

from contracts import Down, Receipt, Segment, Up, decode, encode, mqtt_filter, mqtt_topic
from devtools.brokers import Mosquitto, free_port
from edge_agent.link import IdentityError, MqttLink, apply_credentials
from edge_agent.outbox import Outbox
from runtime.settings import MqttSettings

pytestmark = pytest.mark.integration

AGENT = "tls-agent"

if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
    pytest.skip("openssl and mosquitto_passwd are needed to make certificates and passwords",
                allow_module_level=True)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}", "-days", "2", cwd=d)


def make_cert(d: Path, ca: str, name: str, cn: str, server: str | None = None) -> None:
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={server}\n" if server else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", ext.name, cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "ca", "server", "localhost", server="IP:127.0.0.1,DNS:localhost")
    make_cert(d, "ca", "elsewhere", "elsewhere", server="DNS:elsewhere.example")
    make_cert(d, "ca", "agent", AGENT)
    make_cert(d, "ca", "bridge", "bridge")
    make_cert(d, "ca", "someone", "someone-else")
    make_cert(d, "other-ca", "intruder", AGENT)
    (d / "acl").write_text("user bridge\ntopic readwrite edgecap/#\n\npattern readwrite edgecap/v1/agents/%u/#\n")
    return d


def tls_listener(port: int, d: Path, *, certs: bool, server: str = "server") -> str:
    auth = ("require_certificate true\nuse_identity_as_username true\n" if certs
            else f"require_certificate false\npassword_file {d}/passwd\n")
    return (f"listener {port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/{server}.crt\nkeyfile {d}/{server}.key\n"
            f"{auth}allow_anonymous false\nacl_file {d}/acl\n")


@pytest.fixture(scope="module")
def cert_broker(pki: Path) -> Iterator[Mosquitto]:
    port = free_port()
    with Mosquitto(port, config=tls_listener(port, pki, certs=True)) as broker:
        yield broker


def try_connect(settings: MqttSettings, client_id: str) -> str:
    """Connect once with ``settings``: 'ok', the broker's refusal, or the TLS error."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    apply_credentials(client, settings)
    result: list[str] = []
    answered = threading.Event()

    def answer(text: str) -> None:
        result.append(text)
        answered.set()

    client.on_connect = lambda _c, _u, _f, reason, _p: answer("ok" if not reason.is_failure else str(reason))
    client.on_disconnect = lambda _c, _u, _f, reason, _p: answer(f"refused: disconnected ({reason})")
    try:
        client.connect(settings.host, settings.port)
    except OSError as exc:  # ssl.SSLError is an OSError
        return f"refused: {exc}"
    client.loop_start()
    try:
        answered.wait(5)
    finally:
        client.loop_stop()
        client.disconnect()
    return result[0] if result else "refused: no CONNACK"


class Peer:
    """The bridge's side, authenticated with its own certificate."""

    def __init__(self, settings: MqttSettings) -> None:
        self.received: list[Segment] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bridge", protocol=mqtt.MQTTv5)
        apply_credentials(self.client, settings)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(settings.host, settings.port)
        self.client.subscribe(mqtt_filter(Up.SEGMENTS), qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "the peer's subscription was not acknowledged"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        """Receive and receipt each segment, as the bridge does (the agent sends the oldest alone
        after connecting and waits for its receipt before sending more)."""
        segment = decode(msg.payload, Segment)
        self.received.append(segment)
        receipt = Receipt(agent_id=segment.agent_id, accepted=[segment.segment_id], issued_at=time.time())
        self.client.publish(mqtt_topic(segment.agent_id, Down.RECEIPTS), encode(receipt), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cert_settings(pki: Path, port: int, name: str) -> MqttSettings:
    return MqttSettings(host="localhost", port=port, tls=True, ca_file=pki / "ca.crt",
                        cert_file=pki / f"{name}.crt", key_file=pki / f"{name}.key")


def test_client_certificate_agent_delivers(tmp_path: Path, pki: Path, cert_broker: Mosquitto) -> None:
    peer = Peer(cert_settings(pki, cert_broker.port, "bridge"))
    box = Outbox(tmp_path / "o.db")
    link = MqttLink(AGENT, cert_settings(pki, cert_broker.port, "agent"), box, on_final=lambda f: None)
    link.start()
    try:
        assert link.connected.wait(10), "the agent's TLS connection with its certificate failed"
        ids = commit_segments(box, AGENT, 5)
        link.notify()
        wait_until(lambda: {s.segment_id for s in peer.received} >= set(ids), 10, "every segment at the peer")
        wait_until(lambda: box.depth() == 0, 10, "every receipt")
    finally:
        link.stop()
        peer.close()


def test_foreign_ca_and_missing_certificate_are_refused(pki: Path, cert_broker: Mosquitto) -> None:
    port = cert_broker.port
    assert try_connect(cert_settings(pki, port, "agent"), AGENT) == "ok"
    assert try_connect(cert_settings(pki, port, "intruder"), "intruder").startswith("refused")
    no_cert = MqttSettings(host="localhost", port=port, tls=True, ca_file=pki / "ca.crt")
    assert try_connect(no_cert, "anonymous").startswith("refused")
    plain = MqttSettings(host="127.0.0.1", port=port)  # no TLS at all
    assert try_connect(plain, "plain") != "ok"


def test_server_name_is_checked_unless_insecure(pki: Path) -> None:
    port = free_port()
    with Mosquitto(port, config=tls_listener(port, pki, certs=True, server="elsewhere")):
        settings = cert_settings(pki, port, "agent").model_copy(update={"host": "127.0.0.1"})
        assert "match" in try_connect(settings, AGENT)  # the certificate names elsewhere.example only
        insecure = MqttSettings.model_validate(settings.model_dump() | {"tls_insecure": True})
        assert try_connect(insecure, AGENT) == "ok"  # chain still checked, the name is not


def test_a_certificate_of_another_device_is_refused_at_start_up(tmp_path: Path, pki: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    with pytest.raises(IdentityError, match="CN='someone-else'"):
        MqttLink(AGENT, cert_settings(pki, 1, "someone"), box, on_final=lambda f: None)
    with pytest.raises(IdentityError, match="not a readable file"):
        MqttLink(AGENT, cert_settings(pki, 1, "missing"), box, on_final=lambda f: None)


def test_password_file_over_tls(tmp_path: Path, pki: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), AGENT, "right-password"], check=True, capture_output=True)
    (pki / "passwd").write_bytes(passwd.read_bytes())
    secret = tmp_path / "secret"
    secret.write_text("right-password\n")
    port = free_port()
    with Mosquitto(port, config=tls_listener(port, pki, certs=False)):
        good = MqttSettings(host="localhost", port=port, tls=True, ca_file=pki / "ca.crt",
                            username=AGENT, password_file=secret)
        assert good.secret() == "right-password"
        assert try_connect(good, AGENT) == "ok"
        bad = MqttSettings.model_validate(good.model_dump() | {"password_file": None, "password": "wrong"})
        assert try_connect(bad, AGENT) != "ok"
        nobody = MqttSettings.model_validate(good.model_dump() | {"username": "nobody"})
        assert try_connect(nobody, "nobody") != "ok"

        box = Outbox(tmp_path / "o.db")
        link = MqttLink(AGENT, good, box, on_final=lambda f: None)
        link.start()
        try:
            assert link.connected.wait(10)
        finally:
            link.stop()
