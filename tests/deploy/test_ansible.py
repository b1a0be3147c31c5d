"""ansible/: the edge agent's role, checked offline and then run for real.

- ansible-lint (production profile, offline) passes on the role, the playbook and the inventory example;
- the systemd unit the role renders passes ``systemd-analyze verify`` with no output at all, and
  ``systemd-analyze security --offline`` scores it at most 2.0, the microphone still reachable;
- agent.toml rendered by the role is valid for ``edgecap agent --check-config``;
- ``edgecap devices add --inventory`` writes the host and its (vault-encrypted) credentials;
- the playbook installs the agent on a Debian system booted with ``systemd-nspawn -b`` in a network
  namespace made here, over SSH, from a wheelhouse and the operator's models (the booted system has no
  network beyond its link to this machine): the service starts, captions the sample recording, and its
  segments reach a mosquitto running the shipped configuration on this side of the link, logged in
  with the certificate ``edgecap devices`` issued; a second run changes nothing and restarts nothing.

The Debian root file system is built once by ``ansible/testbed/rootfs.sh`` (``make nspawn-rootfs``)
and cached under ``~/.cache/edgecap/nspawn``; each run boots a throw-away copy (``--ephemeral``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from support import wait_until

from contracts import Segment, decode
from contracts.topics import Up, mqtt_topic
from devtools.brokers import Mosquitto, free_port
from devtools.wer import wer
from edgecap.admin.devices import BRIDGE_ACCOUNT, CRL_NAME, render_config
from edgecap.admin.dynsec import plugin_path

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
SAMPLE_TEXT = (REPO / "devtools" / "samples" / "sample.txt").read_text(encoding="utf-8")
# where the wheel puts the sample recording inside the device's virtualenv (Debian bookworm: Python 3.11)
DEVICE_SAMPLE = "/opt/edgecap/venv/lib/python3.11/site-packages/devtools/samples/sample.wav"
MAX_EXPOSURE = 2.0


def run(argv: list[str | Path], timeout_s: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout_s,
                          check=False, **kwargs)  # type: ignore[call-overload]


def ansible_env() -> dict[str, str]:
    """This virtualenv's ansible, reading ansible/ansible.cfg, without colours."""
    return os.environ | {"PATH": f"{BIN}:{os.environ.get('PATH', '')}", "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
                         "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def render(out: Path, **variables: object) -> Path:
    """The role's unit and agent.toml rendered with its defaults and ``variables`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    extra = json.dumps({"render_dir": str(out), **variables})
    done = run([BIN / "ansible-playbook", ANSIBLE / "testbed" / "render.yml", "-e", extra], env=ansible_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return out


# --- offline checks ---------------------------------------------------------------------------------


def test_ansible_lint_production_profile() -> None:
    done = run([BIN / "ansible-lint", "--offline"], cwd=ANSIBLE, env=ansible_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


@pytest.mark.parametrize("camera", [False, True], ids=["mic", "mic+camera"])
def test_unit_verifies_clean_and_is_hardened(tmp_path: Path, camera: bool) -> None:
    install = tmp_path / "opt"  # systemd-analyze verify checks that ExecStart's program exists
    (install / "venv" / "bin").mkdir(parents=True)
    (install / "venv" / "bin" / "edgecap").write_text("#!/bin/sh\n")
    (install / "venv" / "bin" / "edgecap").chmod(0o755)
    unit = render(tmp_path / "out", edge_agent_install_dir=str(install), edge_agent_camera=camera)
    unit /= "edgecap-agent.service"
    verify = run(["systemd-analyze", "verify", unit])
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")  # it exits 0 on warnings: none at all

    threshold = f"--threshold={MAX_EXPOSURE * 10:.0f}"  # its scale is tenths
    security = run(["systemd-analyze", "security", "--offline=true", "--no-pager", threshold, unit])
    found = re.search(r"Overall exposure level for edgecap-agent\.service: (\d+\.\d+)", security.stdout)
    assert found, security.stdout + security.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE and security.returncode == 0, security.stdout
    text = unit.read_text()
    for line in ("DevicePolicy=closed", "DeviceAllow=char-alsa rw", "ProtectSystem=strict", "ProtectHome=yes",
                 "PrivateTmp=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=", "StateDirectory=edgecap",
                 "SystemCallFilter=@system-service", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"):
        assert line in text.splitlines(), line
    assert ("SupplementaryGroups=audio video" if camera else "SupplementaryGroups=audio") in text.splitlines()
    assert ("DeviceAllow=char-video4linux rw" in text) == camera


@pytest.mark.parametrize("auth", ["certificate", "password"])
def test_rendered_agent_toml_is_valid(tmp_path: Path, auth: str) -> None:
    out = render(tmp_path, edge_agent_id="pi-kitchen", edge_agent_site="kitchen", edge_agent_mqtt_host="mqtt.lan",
                 edge_agent_mqtt_auth=auth, edge_agent_mqtt_ca_cert="PEM", edge_agent_input_source="file",
                 edge_agent_input_file="/srv/talk.wav")
    done = run([BIN / "edgecap", "agent", "--config", out / "agent.toml", "--check-config"])
    assert done.returncode == 0, done.stdout + done.stderr
    checked = done.stdout + done.stderr
    assert "pi-kitchen" in checked and "mqtt.lan" in checked and "/srv/talk.wav" in checked
    assert ("/etc/edgecap/agent.key" in checked) == (auth == "certificate")
    assert ('"username": "pi-kitchen"' in checked) == (auth == "password")  # password_file is shown masked


def devices(tmp: Path, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    done = run([BIN / "edgecap", "devices", "--accounts", tmp / "dynsec.json", "--ca-dir", tmp / "ca", *argv],
               env=ansible_env())
    return done


def inventory_vars(inventory: Path, host: str, vault_password: Path | None = None) -> dict[str, object]:
    argv: list[str | Path] = [BIN / "ansible-inventory", "-i", inventory, "--host", host]
    if vault_password is not None:
        argv += ["--vault-password-file", vault_password]
    done = run(argv, env=ansible_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def test_devices_add_writes_the_inventory(tmp_path: Path) -> None:
    inv, out, vault_password = tmp_path / "inventory", tmp_path / "out", tmp_path / "vault-password"
    assert devices(tmp_path, "init-ca").returncode == 0
    done = devices(tmp_path, "add", "pi-7", "--cert", "--out-dir", out, "--inventory", inv,
                   "--ansible-host", "192.0.2.7")
    assert done.returncode == 0, done.stderr
    host = inventory_vars(inv, "pi-7")
    assert host["ansible_host"] == "192.0.2.7" and host["edge_agent_mqtt_auth"] == "certificate"
    assert host["edge_agent_mqtt_client_cert"] == (out / "pi-7.crt").read_text().strip("\n") + "\n"
    assert host["edge_agent_mqtt_client_key"] == (out / "pi-7.key").read_text().strip("\n") + "\n"
    assert host["edge_agent_mqtt_ca_cert"] == (tmp_path / "ca" / "ca.crt").read_text().strip("\n") + "\n"
    vault = inv / "host_vars" / "pi-7" / "vault.yml"
    assert vault.stat().st_mode & 0o077 == 0

    # added again with a password, encrypted at once: the address is kept, the certificate is gone
    vault_password.write_text("correct horse\n")
    done = devices(tmp_path, "add", "pi-7", "--generate", "--out-dir", out, "--inventory", inv,
                   "--vault-password-file", vault_password)
    assert done.returncode == 0, done.stderr
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    host = inventory_vars(inv, "pi-7", vault_password)
    assert host["ansible_host"] == "192.0.2.7" and host["edge_agent_mqtt_auth"] == "password"
    assert host["edge_agent_mqtt_password"] == (out / "pi-7.password").read_text().strip()
    assert "edge_agent_mqtt_client_key" not in host
    groups = json.loads(run([BIN / "ansible-inventory", "-i", inv, "--list", "--vault-password-file",
                             vault_password], env=ansible_env()).stdout)
    assert groups["edge_agents"]["hosts"] == ["pi-7"]

    refused = devices(tmp_path, "add", BRIDGE_ACCOUNT, "--bridge", "--generate", "--inventory", inv)
    assert refused.returncode == 1 and "--inventory is for devices" in refused.stderr
    refused = devices(tmp_path, "add", "pi-8", "--generate", "--out-dir", out, "--inventory", inv,
                      "--vault-password-file", tmp_path / "missing")
    assert refused.returncode == 1 and "ansible-vault encrypt failed" in refused.stderr
    assert not (inv / "host_vars" / "pi-8" / "vault.yml").exists()  # never left in clear text


# --- the real run: a Debian machine booted with systemd-nspawn, reached over SSH --------------------


@dataclass
class Machine:
    """A throw-away Debian system booted by systemd-nspawn in a network namespace of its own."""

    name: str
    address: str
    host_address: str
    key: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    cleanup: list[list[str]] = field(default_factory=list)

    def ssh(self, command: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return run(["ssh", "-i", self.key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "BatchMode=yes", "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR", f"root@{self.address}",
                    command], timeout_s=timeout_s)


def _ip(*argv: str) -> None:
    done = run(["ip", *argv])
    assert done.returncode == 0, f"ip {' '.join(argv)}: {done.stderr}"


@pytest.fixture(scope="module")
def rootfs() -> Path:
    """The cached Debian root file system (built on first use: about 2 minutes and 300 MB)."""
    if os.geteuid() != 0:
        pytest.skip("booting a machine with systemd-nspawn needs root (CI runs as root)")
    started = time.monotonic()
    done = run([ANSIBLE / "testbed" / "rootfs.sh"], timeout_s=900)
    assert done.returncode == 0, done.stderr[-3000:]
    sys.stderr.write(f"rootfs ready in {time.monotonic() - started:.1f} s: {done.stdout.strip()}\n")
    return Path(done.stdout.strip())


@pytest.fixture
def machine(rootfs: Path, tmp_path: Path) -> Iterator[Machine]:
    tag = uuid.uuid4().hex[:8]
    octet = int(tag[:2], 16) % 250 + 2
    m = Machine(f"edgecap-{tag}", f"10.213.{octet}.2", f"10.213.{octet}.1", tmp_path / "id", tmp_path / "nspawn.log")
    netns, host_if, guest_if = f"edgecap-{tag}", f"ve-h{tag}", f"ve-g{tag}"
    assert run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", m.key]).returncode == 0
    try:
        _ip("netns", "add", netns)
        m.cleanup.append(["ip", "netns", "delete", netns])  # takes the veth pair with it
        _ip("link", "add", host_if, "type", "veth", "peer", "name", guest_if)
        m.cleanup.append(["ip", "link", "delete", host_if])
        _ip("link", "set", guest_if, "netns", netns)
        _ip("addr", "add", f"{m.host_address}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", netns, "addr", "add", f"{m.address}/30", "dev", guest_if)
        _ip("-n", netns, "link", "set", guest_if, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        with open(m.log, "wb") as log:
            m.proc = subprocess.Popen(
                ["systemd-nspawn", "-D", str(rootfs), "--ephemeral", "-M", m.name, "--register=no",
                 "--keep-unit", f"--network-namespace-path=/run/netns/{netns}", "--console=passive",
                 f"--bind-ro={m.key}.pub:/root/.ssh/authorized_keys", "-b"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        started = time.monotonic()
        wait_until(lambda: m.proc is not None and (m.proc.poll() is not None or m.ssh("true", 10).returncode == 0),
                   60, "the machine's SSH", every_s=0.5, detail=lambda: m.log.read_text(errors="replace")[-3000:])
        assert m.proc.poll() is None, m.log.read_text(errors="replace")[-3000:]
        sys.stderr.write(f"machine booted and reachable over SSH in {time.monotonic() - started:.1f} s\n")
        yield m
    finally:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)  # nspawn shuts the booted system down cleanly
            try:
                m.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(m.proc.pid, signal.SIGKILL)  # its own session: nspawn and what it started
                m.proc.wait(10)
        said = m.log.read_text(errors="replace") if m.log.exists() else ""
        copy = re.search(r"Spawning container \S+ on (\S+)\.\n", said)
        if copy and Path(copy.group(1)).parent == rootfs.parent and Path(copy.group(1)).exists():
            shutil.rmtree(copy.group(1), ignore_errors=True)  # the ephemeral copy, if nspawn was killed
        for argv in reversed(m.cleanup):
            run(argv)


class Uplink:
    """The bridge's account on the broker's bridge listener, collecting one agent's segments and status."""

    def __init__(self, port: int, ca: Path, password: str, agent_id: str) -> None:
        self.segments: list[Segment] = []
        self.statuses: list[bytes] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=BRIDGE_ACCOUNT,
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(BRIDGE_ACCOUNT, password)
        self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_message = self._message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(mqtt_topic(agent_id, Up.SEGMENTS), 1), (mqtt_topic(agent_id, Up.STATUS), 1)])
        self.client.loop_start()
        assert self.subscribed.wait(10), "the bridge account's subscription was not granted"

    def _message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic.endswith("/segments"):
                self.segments.append(decode(bytes(msg.payload), Segment))
            else:
                self.statuses.append(bytes(msg.payload))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def playbook(inventory: Path, vault_password: Path, log: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``ansible-playbook site.yml`` on the inventory, its output kept in ``log``; and how long it took."""
    started = time.monotonic()
    done = run([BIN / "ansible-playbook", "-i", inventory, "--vault-password-file", vault_password,
                ANSIBLE / "site.yml"], timeout_s=600, cwd=ANSIBLE, env=ansible_env())
    log.write_text(done.stdout + done.stderr)
    return done, time.monotonic() - started


def recap(done: subprocess.CompletedProcess[str], host: str) -> dict[str, int]:
    found = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", done.stdout, re.MULTILINE)
    assert found, done.stdout[-4000:] + done.stderr[-2000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))}


def test_playbook_installs_and_runs_the_agent(machine: Machine, models_dir: Path, tmp_path: Path) -> None:
    agent = "testbed-pi"
    fleet, inv = tmp_path / "fleet", tmp_path / "inventory"
    vault_password = tmp_path / "vault-password"
    vault_password.write_text(uuid.uuid4().hex + "\n")
    timings: dict[str, float] = {}

    # the operator's side: the wheelhouse, the broker's CA and accounts, the device in the inventory
    started = time.monotonic()
    wheelhouse = tmp_path / "wheelhouse"
    done = run(["make", "-s", "-C", REPO, "-o", "venv", "wheelhouse", f"WHEELHOUSE={wheelhouse}"], timeout_s=600)
    assert done.returncode == 0, done.stdout + done.stderr
    timings["wheelhouse"] = time.monotonic() - started
    assert devices(fleet, "init-ca", "--server-name", f"IP:{machine.host_address}",
                   "--server-name", "IP:127.0.0.1").returncode == 0
    added = devices(fleet, "add", agent, "--cert", "--out-dir", fleet / "out", "--inventory", inv,
                    "--ansible-host", machine.address, "--vault-password-file", vault_password)
    assert added.returncode == 0, added.stderr
    assert devices(fleet, "add", BRIDGE_ACCOUNT, "--bridge", "--generate", "--out-dir", fleet / "out").returncode == 0
    (inv / "group_vars").mkdir()
    (inv / "group_vars" / "edge_agents.yml").write_text(json.dumps({
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(machine.key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "edge_agent_wheelhouse": str(wheelhouse),
        "edge_agent_models_src": str(models_dir / "tiny.en" / "onnx-int8"),
        "edge_agent_mqtt_host": machine.host_address,
        "edge_agent_mqtt_port": (device_port := free_port()),
        "edge_agent_apt_update_cache": False,  # the machine has no network but this link: the rootfs has them
        "edge_agent_input_source": "file",
        "edge_agent_input_file": DEVICE_SAMPLE,
        "edge_agent_input_realtime": False,
    }, indent=1))

    # the broker: the shipped configuration, the device listener on this side of the machine's link
    bridge_port = free_port()
    config = render_config({
        "DYNSEC_PLUGIN": plugin_path(), "ACCOUNTS_FILE": fleet / "dynsec.json",
        "DEVICE_PORT": device_port, "DEVICE_ADDRESS": machine.host_address,
        "BRIDGE_PORT": bridge_port, "BRIDGE_ADDRESS": "127.0.0.1",
        "CA_FILE": fleet / "ca" / "ca.crt", "SERVER_CERT": fleet / "ca" / "server.crt",
        "SERVER_KEY": fleet / "ca" / "server.key", "CLIENT_CERTIFICATES": True,
        "CRL_FILE": fleet / "ca" / CRL_NAME, "CRL_COMMENT": "", "PERSISTENCE_DIR": f"{tmp_path}/",
    })
    with Mosquitto(bridge_port, workdir=tmp_path / "mosquitto", config=config) as broker:
        uplink = Uplink(bridge_port, fleet / "ca" / "ca.crt",
                        (fleet / "out" / f"{BRIDGE_ACCOUNT}.password").read_text().strip(), agent)
        try:
            first, timings["first run"] = playbook(inv, vault_password, tmp_path / "first-run.log")
            assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
            counts = recap(first, agent)
            assert counts["failed"] == 0 and counts["unreachable"] == 0 and counts["changed"] > 0, counts

            started = time.monotonic()

            def journal() -> str:
                agent_log = machine.ssh("journalctl -u edgecap-agent --no-pager | tail -40").stdout
                return agent_log + (broker.workdir / "mosquitto.log").read_text(errors="replace")[-2000:]

            assert machine.ssh("systemctl is-active edgecap-agent").stdout.strip() == "active", journal()
            verify = machine.ssh("systemd-analyze verify /etc/systemd/system/edgecap-agent.service 2>&1")
            assert (verify.returncode, verify.stdout) == (0, ""), verify.stdout  # the unit as installed, too
            # every segment of the recording captioned on the device and received over TLS by the broker
            wait_until(lambda: bool(uplink.statuses) and len(uplink.segments) >= 4
                       and json.loads(uplink.statuses[-1]).get("input_done") is True
                       and len({s.segment_id for s in uplink.segments}) >= 4, 180,
                       "the agent's segments and its status saying the input is captioned", every_s=0.5,
                       detail=journal)

            def captioned() -> list[str]:
                return machine.ssh("cat /var/lib/edgecap/captions/captions.jsonl").stdout.splitlines()

            # the caption file gets its last line a moment after the segment goes up: wait for it
            wait_until(lambda: len(captioned()) == len({s.segment_id for s in uplink.segments}), 60,
                       "one caption line on the device per segment the broker received", every_s=0.5,
                       detail=lambda: f"{captioned()}\n{journal()}")  # fmt: skip
            timings["captioned and delivered"] = time.monotonic() - started
            drafts = {s.segment_id: s for s in uplink.segments}
            assert {s.agent_id for s in drafts.values()} == {agent}
            text = " ".join(s.draft.text for s in sorted(drafts.values(), key=lambda s: s.seq) if s.draft)
            assert wer(SAMPLE_TEXT, text) < 0.25, text
            captions = captioned()
            assert len(captions) == len(drafts), captions
            unit_state = machine.ssh("systemctl show -p MainPID -p NRestarts edgecap-agent").stdout

            second, timings["second run"] = playbook(inv, vault_password, tmp_path / "second-run.log")
            assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-2000:]
            counts = recap(second, agent)
            assert counts["changed"] == 0 and counts["failed"] == 0, second.stdout[-6000:]
            # nothing changed, so the handler did not restart the agent
            assert machine.ssh("systemctl show -p MainPID -p NRestarts edgecap-agent").stdout == unit_state
            owner = machine.ssh("stat -c '%U %G %a' /var/lib/edgecap /etc/edgecap/agent.key").stdout.split("\n")
            assert owner[:2] == ["edgecap edgecap 750", "root edgecap 640"], owner
        finally:
            uplink.close()
    sys.stderr.write("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + "\n")
