"""A device's entry in the ansible inventory of ``ansible/``, written by ``edgecap devices add --inventory``.

The inventory is a folder (ansible reads every file in it): each device gets ``<agent_id>.yml``, a
host in the ``edge_agents`` group with how it logs in to the broker, and ``host_vars/<agent_id>/vault.yml``
with what it logs in with (the CA certificate, its client certificate and key, or its password), the
variables of the role ``edge_agent``. The secrets file is written readable by its owner only and,
given a vault password file, encrypted at once with ``ansible-vault``, so it never rests in clear text.
No YAML library is needed: the files are small and written from fixed shapes (strings as JSON, which
YAML reads, and PEM text as literal blocks).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

from edgecap.admin.devices import DeviceError, write_secret

log = logging.getLogger(__name__)

GROUP = "edge_agents"
"""The group ``ansible/site.yml`` installs the agent on."""
_ANSIBLE_HOST = re.compile(r'^ {6}ansible_host: ("(?:[^"\\]|\\.)*")$', re.MULTILINE)


def _block(name: str, text: str) -> str:
    """``name: |`` and ``text`` as a YAML literal block (PEM text: no trailing spaces, no tabs)."""
    lines = text.strip("\n").splitlines()
    return f"{name}: |\n" + "".join(f"  {line}\n" for line in lines)


def write_device(
    inventory: Path,
    agent_id: str,
    *,
    ansible_host: str | None = None,
    group: str = GROUP,
    ca_cert: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    password: str | None = None,
    vault_password_file: Path | None = None,
) -> tuple[Path, Path]:
    """Write (or replace) the device's host file and secrets file in ``inventory``; returns both paths.

    With a client certificate the device logs in by certificate, else by password (one of the two is
    required). ``ca_cert`` is the CA the device trusts for the broker's TLS certificate.
    """
    if (client_cert is None) != (client_key is None):
        raise DeviceError("a client certificate goes with its key")
    if client_cert is None and password is None:
        raise DeviceError("the inventory needs the device's certificate (--cert) or password (--generate or "
                          "--password-file)")
    auth = "certificate" if client_cert is not None else "password"
    host_file = inventory / f"{agent_id}.yml"
    if ansible_host is None and host_file.is_file():  # a device added again keeps its address
        found = _ANSIBLE_HOST.search(host_file.read_text(encoding="utf-8"))
        ansible_host = json.loads(found.group(1)) if found else None
    host_vars = {"edge_agent_mqtt_auth": auth} | ({"ansible_host": ansible_host} if ansible_host else {})
    inventory.mkdir(parents=True, exist_ok=True)
    host_file.write_text(
        f"# written by `edgecap devices add {agent_id} --inventory`: the device's secrets are in "
        f"host_vars/{agent_id}/vault.yml\n{group}:\n  hosts:\n    {json.dumps(agent_id)}:\n"
        + "".join(f"      {key}: {json.dumps(value)}\n" for key, value in host_vars.items()),
        encoding="utf-8",
    )
    secrets = ["# the device's MQTT credentials (edgecap devices add): keep this file encrypted (ansible-vault)\n"]
    if ca_cert is not None:
        secrets.append(_block("edge_agent_mqtt_ca_cert", ca_cert.read_text(encoding="utf-8")))
    if client_cert is not None and client_key is not None:
        secrets.append(_block("edge_agent_mqtt_client_cert", client_cert.read_text(encoding="utf-8")))
        secrets.append(_block("edge_agent_mqtt_client_key", client_key.read_text(encoding="utf-8")))
    if password is not None:
        secrets.append(f"edge_agent_mqtt_password: {json.dumps(password)}\n")
    vault = write_secret(inventory / "host_vars" / agent_id / "vault.yml", "".join(secrets))
    if vault_password_file is not None:
        encrypt(vault, vault_password_file)
    log.info("inventory entry of %s written to %s and %s", agent_id, host_file, vault)
    return host_file, vault


def encrypt(path: Path, vault_password_file: Path) -> None:
    """Encrypt ``path`` in place with ``ansible-vault``; the clear text is gone if this returns."""
    beside = Path(sys.executable).parent / "ansible-vault"  # in this virtualenv, when it is not on PATH
    tool = shutil.which("ansible-vault") or (str(beside) if beside.exists() else None)
    if tool is None:
        path.unlink()
        raise DeviceError(f"ansible-vault not found (pip install ansible-core): {path} removed, not left in clear text")
    done = subprocess.run(
        [tool, "encrypt", "--vault-password-file", str(vault_password_file), str(path)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        path.unlink()
        raise DeviceError(f"ansible-vault encrypt failed ({done.stderr.strip()}): {path} removed")
