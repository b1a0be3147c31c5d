"""Device identities at the MQTT broker: accounts, client certificates, the broker's configuration
rendered from the templates in ``edgecap/admin/mosquitto/`` (package data).

A device is known to mosquitto by its agent id: as user name of an account in the dynamic security
plugin's file (:mod:`edgecap.admin.dynsec`, with a password and a role granting exactly its own
topics) and/or as the common name of a client certificate issued by the fleet's CA (the account then
holds its role, without a password). Certificates are made with the ``openssl`` command line (no
Python crypto package is needed on the broker host). The command line is
:mod:`edgecap.admin.devices_cli` (``edgecap devices``).

The CA directory is an ``openssl ca`` database, made lazily (a CA from an older ``init-ca`` gets it on
first use): ``index.txt`` records every certificate the CA signs (serial, CN, expiry, revoked or
not), ``certs/<serial>.pem`` keeps a copy of each, ``ca.cnf`` is the configuration written by this
module. Revoking rewrites ``crl.pem``, which the broker reads (``crlfile``) when devices log in by
certificate.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contracts.ids import is_agent_id

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "mosquitto"  # package data: found in a wheel too
CONFIG_TEMPLATE = TEMPLATES / "mosquitto.conf"
BRIDGE_ACCOUNT = "edgecap-bridge"
"""The bridge's own user name; its role grants it every device's uplink and downlink."""

CRL_NAME = "crl.pem"
"""The certificate revocation list in the CA directory (mosquitto's ``crlfile``)."""
CRL_DAYS = 3650
"""Validity of each CRL written. Past its nextUpdate, OpenSSL refuses *every* client certificate
("CRL has expired"), so it is made to last as long as the CA (``init_ca``'s default); every
revocation writes a new one."""

_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


class DeviceError(Exception):
    """A device cannot be added or removed; the message says why."""


def check_agent_id(agent_id: str, *, bridge: bool = False) -> str:
    """``agent_id`` if it is a valid agent id (the pattern of ``contracts``) and not reserved."""
    if not is_agent_id(agent_id):
        raise DeviceError(
            f"invalid agent id {agent_id!r}: 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    if (agent_id == BRIDGE_ACCOUNT) != bridge:
        raise DeviceError(
            f"{BRIDGE_ACCOUNT!r} is the bridge's account: add it with --bridge, and no device under that name"
            if agent_id == BRIDGE_ACCOUNT
            else f"--bridge is only for the account {BRIDGE_ACCOUNT!r}"
        )
    return agent_id


# --- passwords ---------------------------------------------------------------------------------


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

_CA_CONFIG = "ca.cnf"
_CA_CONFIG_TEXT = f"""\
# written by edgecap (bridge/devices.py) on every use; run openssl ca with -config ca.cnf from this directory
[ ca ]
default_ca = edgecap_ca

[ edgecap_ca ]
certificate = ca.crt
private_key = ca.key
# edgecap signs with -rand_serial (159 random bits, as openssl x509 gave CAs of earlier edgecap
# versions): openssl ca insists on this setting and writes the file, but never reads it. Not
# ca.srl: openssl x509 keeps the last serial used there, openssl ca would take it as the next one.
serial = serial
database = index.txt
new_certs_dir = certs
crlnumber = crlnumber
default_md = sha256
default_crl_days = {CRL_DAYS}
# a device may hold several certificates (re-issued before the old one expires)
unique_subject = no
policy = edgecap_policy

[ edgecap_policy ]
commonName = supplied
"""


@dataclass(frozen=True)
class IssuedCertificate:
    """One line of the CA's database (``index.txt``)."""

    serial: str
    """Hexadecimal, as in index.txt; the copy is ``certs/<serial>.pem``."""
    common_name: str
    expires: datetime
    revoked: bool


def _openssl(*args: str, cwd: Path) -> str:
    """Run ``openssl args…`` in ``cwd``; its standard output."""
    if shutil.which("openssl") is None:
        raise DeviceError("openssl not found: install the Debian package 'openssl'")
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DeviceError(f"openssl {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def _ca_database(ca_dir: Path) -> Path:
    """Make the ``openssl ca`` database of the CA in ``ca_dir`` where it is missing; returns ``ca_dir``."""
    if not (ca_dir / "ca.crt").is_file() or not (ca_dir / "ca.key").is_file():
        raise DeviceError(f"no CA in {ca_dir} (ca.crt and ca.key): make one with `edgecap devices init-ca`")
    config = ca_dir / _CA_CONFIG
    if not config.is_file() or config.read_text(encoding="utf-8") != _CA_CONFIG_TEXT:
        config.write_text(_CA_CONFIG_TEXT, encoding="utf-8")
    (ca_dir / "index.txt").touch()
    if not (ca_dir / "crlnumber").exists():
        (ca_dir / "crlnumber").write_text("01\n")
    (ca_dir / "certs").mkdir(exist_ok=True)
    return ca_dir


def init_ca(ca_dir: Path, name: str = "edgecap-devices", days: int = 3650) -> Path:
    """Make ``ca_dir/ca.crt`` and ``ca.key`` (EC P-256) unless they exist, and the CA's database and
    (empty) CRL where they are missing, so an existing CA gets them too; returns the certificate."""
    ca_dir = ca_dir.resolve()
    cert = ca_dir / "ca.crt"
    if not cert.exists():
        ca_dir.mkdir(parents=True, exist_ok=True)
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", "ca.key", "-out", "ca.crt", "-subj", f"/CN={name}", "-days", str(days), cwd=ca_dir)
        (ca_dir / "ca.key").chmod(0o600)
        log.info("CA %s made in %s", name, ca_dir)
    if not (ca_dir / CRL_NAME).exists():
        write_crl(ca_dir)
    return cert


def issue_certificate(
    ca_dir: Path, common_name: str, out_dir: Path, *, server_names: list[str] | None = None, days: int = 825
) -> tuple[Path, Path]:
    """Issue ``out_dir/<common_name>.crt`` + ``.key`` from the CA in ``ca_dir``: a client certificate
    (extendedKeyUsage clientAuth), or with ``server_names`` a server one ("IP:…"/"DNS:…" entries).
    ``openssl ca`` signs it and records it in the CA's database (see :func:`certificates`)."""
    ca_dir, out_dir = ca_dir.resolve(), out_dir.resolve()
    _ca_database(ca_dir)
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
    try:
        _openssl("ca", "-config", _CA_CONFIG, "-batch", "-notext", "-rand_serial", "-in", str(csr),
                 "-out", str(crt), "-days", str(days), "-extfile", str(ext), cwd=ca_dir)
    finally:
        csr.unlink()
        ext.unlink()
    log.info("certificate CN=%s issued to %s", common_name, crt)
    return crt, key


def _index_time(text: str) -> datetime:
    """An index.txt date: UTCTime (YYMMDDHHMMSSZ) or, from 2050, GeneralizedTime."""
    return datetime.strptime(text, "%y%m%d%H%M%SZ" if len(text) == 13 else "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def certificates(ca_dir: Path) -> list[IssuedCertificate]:
    """Every certificate in the CA's database, in the order issued (none where there is no database)."""
    index = ca_dir / "index.txt"
    if not index.is_file():
        return []
    found = []
    for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 6:
            raise DeviceError(f"{index}, line {number}: not an openssl ca database line: {line!r}")
        status, expires, _revoked_at, serial, _file, subject = fields
        parts = dict(part.split("=", 1) for part in subject.strip("/").split("/") if "=" in part)
        try:
            found.append(IssuedCertificate(serial, parts.get("CN", ""), _index_time(expires), status == "R"))
        except ValueError as exc:
            raise DeviceError(f"{index}, line {number}: {exc}") from exc
    return found


def _serial(cert: Path) -> int:
    out = _openssl("x509", "-in", str(cert), "-noout", "-serial", cwd=cert.parent)
    return int(out.strip().partition("=")[2], 16)


def revoke_certificates(ca_dir: Path, common_name: str, files: Iterable[Path] = ()) -> list[str]:
    """Revoke every certificate issued to ``common_name`` that is not revoked yet, and write the CRL.

    Those are the ones in the CA's database (revoked from their copies in ``certs/``) and ``files``:
    certificates issued by a CA of an earlier edgecap version, before it had a database, which
    ``openssl ca -revoke`` adds to it. Returns the serials revoked now; none: the CRL is untouched.
    """
    ca_dir = ca_dir.resolve()
    known = certificates(ca_dir)
    todo: dict[int, tuple[str, Path]] = {
        int(c.serial, 16): (c.serial, ca_dir / "certs" / f"{c.serial}.pem")
        for c in known
        if c.common_name == common_name and not c.revoked
    }
    listed = {int(c.serial, 16): c.common_name for c in known}
    for cert in (f for f in files if f.is_file()):
        serial = _serial(cert)
        if listed.get(serial, common_name) != common_name:
            raise DeviceError(f"{cert} has serial {serial:X}, which the CA's database records for "
                              f"CN={listed[serial]}, not {common_name}: revoke by hand")
        if serial not in listed or (serial in todo and not todo[serial][1].is_file()):
            todo[serial] = (f"{serial:X}", cert)
    if not todo:
        return []
    if missing := [str(path) for _, path in todo.values() if not path.is_file()]:
        raise DeviceError(
            f"cannot revoke the certificates of {common_name}: no copy at {', '.join(missing)} "
            f"(revoke a copy by hand: cd {ca_dir} && openssl ca -config {_CA_CONFIG} -revoke FILE)"
        )
    _ca_database(ca_dir)
    revoked: list[str] = []
    try:
        for serial_hex, path in todo.values():
            _openssl("ca", "-config", _CA_CONFIG, "-revoke", str(path), cwd=ca_dir)
            revoked.append(serial_hex)
            log.info("certificate %s of CN=%s revoked", serial_hex, common_name)
    finally:
        if revoked:  # even when a later one failed: the database says revoked, the CRL must say so too
            write_crl(ca_dir)
    return revoked


def _wait_past_last_update(crl: Path) -> None:
    """Wait until the clock is past the second of ``crl``'s lastUpdate.

    mosquitto adds the CRL it reads on SIGHUP to those it already holds, and OpenSSL then checks
    against the one with the latest lastUpdate (whole seconds); with two of the same second, which
    one counts is not defined. So each CRL must be at least a second younger than the one before.
    """
    try:
        out = _openssl("crl", "-in", str(crl), "-noout", "-lastupdate", cwd=crl.parent)
        last = datetime.strptime(out.strip().partition("=")[2], "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC)
    except (DeviceError, ValueError) as exc:
        log.warning("cannot read the lastUpdate of %s (%s): replacing it anyway", crl, exc)
        return
    wait = (last + timedelta(seconds=1) - datetime.now(UTC)).total_seconds()
    if wait > 2:
        log.warning("%s was made %s, in the future: after a SIGHUP mosquitto may keep using it, "
                    "restart mosquitto to apply the new one", crl, last)
    elif wait > 0:
        time.sleep(wait)


def write_crl(ca_dir: Path) -> Path:
    """Write ``ca_dir/crl.pem`` from the CA's database (atomically, for a broker reading it); returns it."""
    ca_dir = _ca_database(ca_dir.resolve())
    crl = ca_dir / CRL_NAME
    if crl.exists():
        _wait_past_last_update(crl)
    new = crl.with_name(f"{CRL_NAME}.new")
    _openssl("ca", "-config", _CA_CONFIG, "-gencrl", "-out", new.name, cwd=ca_dir)
    new.chmod(0o644)  # public; mosquitto reads it as its own user
    os.replace(new, crl)
    log.info("CRL written to %s", crl)
    return crl


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
