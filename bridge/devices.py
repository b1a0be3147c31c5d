"""Device identities at the MQTT broker: password-file entries, client certificates, the broker's
configuration rendered from ``deploy/mosquitto/``.

A device is known to mosquitto by its agent id, as user name (an entry in the password file made by
``mosquitto_passwd``) and/or as the common name of a client certificate issued by the fleet's CA.
The shipped ACL grants by ``%u`` pattern, so a device needs no ACL line of its own. Certificates are
made with the ``openssl`` command line (no Python crypto package is needed on the broker host).
The command line is :mod:`bridge.devices_cli` (``edgecap devices``).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from contracts.messages import AgentId

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
CONFIG_TEMPLATE = TEMPLATES / "mosquitto.conf"
ACL_FILE = TEMPLATES / "acl"
BRIDGE_ACCOUNT = "edgecap-bridge"
"""The bridge's own user name; the ACL grants it every device's uplink and downlink."""

_AGENT_ID = TypeAdapter(AgentId)
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


class DeviceError(Exception):
    """A device cannot be added or removed; the message says why."""


def check_agent_id(agent_id: str, *, bridge: bool = False) -> str:
    """``agent_id`` if it is a valid agent id (the pattern of ``contracts``) and not reserved."""
    try:
        _AGENT_ID.validate_python(agent_id)
    except ValidationError as exc:
        raise DeviceError(f"invalid agent id {agent_id!r}: {exc.errors()[0]['msg']}") from exc
    if (agent_id == BRIDGE_ACCOUNT) != bridge:
        raise DeviceError(
            f"{BRIDGE_ACCOUNT!r} is the bridge's account: add it with --bridge, and no device under that name"
            if agent_id == BRIDGE_ACCOUNT
            else f"--bridge is only for the account {BRIDGE_ACCOUNT!r}"
        )
    return agent_id


# --- passwords ---------------------------------------------------------------------------------


def _mosquitto_passwd() -> str:
    path = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(path, os.X_OK):
        raise DeviceError("mosquitto_passwd not found: install the Debian package 'mosquitto'")
    return path


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DeviceError(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")


def users(passwd_file: Path) -> list[str]:
    """The user names in a mosquitto password file."""
    if not passwd_file.is_file():
        return []
    lines = passwd_file.read_text(encoding="utf-8").splitlines()
    return [line.split(":", 1)[0] for line in lines if ":" in line and not line.startswith("#")]


def set_password(passwd_file: Path, user: str, password: str) -> None:
    """Add ``user`` to the password file, or change its password (the file is made if missing).

    ``mosquitto_passwd -b`` takes the password as an argument: it is briefly visible to other local
    users in the process list, acceptable on a broker host that runs nothing else.
    """
    if not password or "\n" in password:
        raise DeviceError("a password must be one non-empty line")
    passwd_file.parent.mkdir(parents=True, exist_ok=True)
    create = [] if passwd_file.exists() else ["-c"]
    _run([_mosquitto_passwd(), *create, "-b", str(passwd_file), user, password], f"mosquitto_passwd for {user}")
    log.info("password of %s set in %s", user, passwd_file)


def remove_password(passwd_file: Path, user: str) -> bool:
    """Delete ``user``'s entry; False if there was none."""
    if user not in users(passwd_file):
        return False
    _run([_mosquitto_passwd(), "-D", str(passwd_file), user], f"removing {user} from {passwd_file}")
    log.info("password of %s removed from %s", user, passwd_file)
    return True


def new_password() -> str:
    """A random password (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


def write_secret(path: Path, text: str) -> Path:
    """Write ``text`` to a file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# --- certificates ------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise DeviceError("openssl not found: install the Debian package 'openssl'")
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DeviceError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def init_ca(ca_dir: Path, name: str = "edgecap-devices", days: int = 3650) -> Path:
    """Make ``ca_dir/ca.crt`` and ``ca.key`` (EC P-256) unless they exist; returns the certificate."""
    ca_dir = ca_dir.resolve()
    cert = ca_dir / "ca.crt"
    if cert.exists():
        return cert
    ca_dir.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-subj", f"/CN={name}", "-days", str(days), cwd=ca_dir)
    (ca_dir / "ca.key").chmod(0o600)
    log.info("CA %s made in %s", name, ca_dir)
    return cert


def issue_certificate(
    ca_dir: Path, common_name: str, out_dir: Path, *, server_names: list[str] | None = None, days: int = 825
) -> tuple[Path, Path]:
    """Issue ``out_dir/<common_name>.crt`` + ``.key`` from the CA in ``ca_dir``: a client certificate
    (extendedKeyUsage clientAuth), or with ``server_names`` a server one ("IP:…"/"DNS:…" entries)."""
    ca_dir, out_dir = ca_dir.resolve(), out_dir.resolve()
    if not (ca_dir / "ca.crt").is_file() or not (ca_dir / "ca.key").is_file():
        raise DeviceError(f"no CA in {ca_dir} (ca.crt and ca.key): make one with `edgecap devices init-ca`")
    out_dir.mkdir(parents=True, exist_ok=True)
    key, csr, crt = (out_dir / f"{common_name}{ext}" for ext in (".key", ".csr", ".crt"))
    ext = out_dir / f"{common_name}.ext"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}", cwd=out_dir)
    key.chmod(0o600)
    ext.write_text(
        f"subjectAltName={','.join(server_names)}\nextendedKeyUsage=serverAuth\n"
        if server_names
        else "extendedKeyUsage=clientAuth\n"
    )
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.crt"), "-CAkey", str(ca_dir / "ca.key"),
             "-CAcreateserial", "-out", str(crt), "-days", str(days), "-extfile", str(ext), cwd=ca_dir)
    csr.unlink()
    ext.unlink()
    log.info("certificate CN=%s issued to %s", common_name, crt)
    return crt, key


# --- the broker's configuration ----------------------------------------------------------------


def render_config(values: Mapping[str, object], template: Path = CONFIG_TEMPLATE) -> str:
    """The template with every ``@NAME@`` replaced by ``values[NAME]`` (booleans as true/false);
    a placeholder without a value, or a value without a placeholder, is an error."""
    text = template.read_text(encoding="utf-8")
    wanted = set(_PLACEHOLDER.findall(text))
    if missing := wanted - values.keys():
        raise DeviceError(f"no value for {sorted(missing)} in {template}")
    if unknown := values.keys() - wanted:
        raise DeviceError(f"{sorted(unknown)} are not placeholders of {template}")

    def value(match: re.Match[str]) -> str:
        v = values[match.group(1)]
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    return _PLACEHOLDER.sub(value, text)
