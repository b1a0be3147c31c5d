"""The broker's accounts and what each may do: the JSON file of mosquitto's dynamic security plugin.

mosquitto's ``acl_file`` does not check SUBSCRIBE: with it, a device could join the bridge's shared
subscription group and take (and lose) a share of every device's uploads. The dynamic security
plugin (``mosquitto_dynamic_security.so``, shipped with Debian's mosquitto) checks subscribe,
publish-send and publish-receive separately, so the accounts live in its file instead of a password
file and an ACL.

In mosquitto 2.0 its ACLs take no ``%u``/``%c`` patterns, so each device gets a role of its own
(``edgecap-device-<id>``) that grants exactly its topics, taken from :mod:`contracts.topics`: send on
its uplink (segments, frames, status), subscribe to and receive its downlink (receipts, captions,
config, detections), by literal topic, so no wildcard, ``$share/…`` or ``$SYS`` filter matches. The default for
everything else is "deny" (unsubscribing excepted). The bridge's role reads every device's uplink
(also through a shared subscription of any group) and writes every device's downlink.

A device that logs in by client certificate (``use_identity_as_username``) is never asked for a
password: the plugin sees only the certificate's common name as user name, so the device still needs
its client entry (without a password) for its role to apply. A user name without an entry may do
nothing at all.

The file is written here directly (atomically, keeping the owner and mode of the one it replaces)
and is the only source: no account may use the plugin's ``$CONTROL`` topics (nothing grants them),
so the broker never rewrites it. mosquitto 2.0 reads it at start only, not on SIGHUP: changes apply
after ``systemctl restart mosquitto`` (persistence keeps sessions and queued messages; devices
reconnect by themselves).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import pwd
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.topics import Down, Up, mqtt_filter, mqtt_topic, shared_filter

log = logging.getLogger(__name__)

PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/arm-linux-gnueabihf/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
"""Where Debian (per architecture) and a source build install the plugin."""

PBKDF2_ITERATIONS = 10_000
"""PBKDF2-SHA512 rounds of each password hash: ~5 ms per login on the broker (the plugin's own tool
uses 101), which slows guessing from a stolen file without slowing a flood of wrong passwords much."""

BROKER_USER = "mosquitto"
"""The user mosquitto drops to when started as root (Debian's service): it loads the plugin after
dropping privileges, so the file must be readable by it, or every login is refused."""

DEFAULT_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True}
"""Anything no role grants is refused: publish, delivery and subscription."""


class AccountsError(Exception):
    """The accounts file cannot be read or changed; the message says why."""


def plugin_path() -> str:
    """The installed dynamic security plugin (the Debian x86-64 path if none is found)."""
    return next((p for p in PLUGIN_PATHS if os.path.exists(p)), PLUGIN_PATHS[0])


def device_role(agent_id: str) -> str:
    """The name of the role holding ``agent_id``'s topics."""
    return f"edgecap-device-{agent_id}"


def device_acls(agent_id: str) -> list[dict[str, Any]]:
    """A device's grants: its own uplink to send, its own downlink to subscribe to and receive."""
    send = [mqtt_topic(agent_id, channel) for channel in Up]
    down = [mqtt_topic(agent_id, channel) for channel in Down]
    return (
        [_acl("publishClientSend", topic) for topic in send]
        + [_acl("subscribeLiteral", topic) for topic in down]
        + [_acl("publishClientReceive", topic) for topic in down]
    )


def bridge_acls() -> list[dict[str, Any]]:
    """The bridge's grants: every device's uplink (shared subscriptions of any group included),
    every device's downlink to send."""
    up = [mqtt_filter(channel) for channel in Up]
    return (
        [_acl("subscribePattern", f) for f in up]
        + [_acl("subscribePattern", shared_filter("+", channel)) for channel in Up]
        + [_acl("publishClientReceive", f) for f in up]
        + [_acl("publishClientSend", mqtt_filter(channel)) for channel in Down]
    )


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> dict[str, Any]:
    """The plugin's password fields: PBKDF2-SHA512 of the password with a random 12-byte salt."""
    if not password or "\n" in password:
        raise AccountsError("a password must be one non-empty line")
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode("ascii"),
        "salt": base64.b64encode(salt).decode("ascii"),
        "iterations": iterations,
    }


@dataclass(frozen=True)
class Account:
    """One client entry of the file."""

    username: str
    has_password: bool
    roles: tuple[str, ...]


def _empty() -> dict[str, Any]:
    return {"defaultACLAccess": dict(DEFAULT_ACCESS), "clients": [], "groups": [], "roles": []}


def load(path: Path) -> dict[str, Any]:
    """The file's content, or an empty one (every default "deny") where there is no file."""
    if not path.exists():
        return _empty()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AccountsError(f"cannot read the accounts file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k, []), list) for k in ("clients", "groups", "roles")):
        raise AccountsError(f"{path} is not a dynamic security file (clients, groups, roles)")
    for key, value in _empty().items():
        data.setdefault(key, value)
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically. A replaced file keeps its owner and mode; a new one is readable by
    its owner only (it holds password hashes), and made as root it belongs to :data:`BROKER_USER`
    where that user exists, so that the broker can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = path.with_name(f"{path.name}.new")
    mode, owner = 0o600, None
    if path.exists():
        st = path.stat()
        mode, owner = st.st_mode & 0o777, (st.st_uid, st.st_gid)
    elif os.geteuid() == 0:
        try:
            broker = pwd.getpwnam(BROKER_USER)
            owner = (broker.pw_uid, broker.pw_gid)
        except KeyError:
            log.warning("no user %r: make %s readable by the broker's user", BROKER_USER, path)
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(new, mode)
    if owner is not None and os.geteuid() == 0:
        os.chown(new, *owner)
    os.replace(new, path)


def accounts(path: Path) -> list[Account]:
    """Every client entry in the file, in the file's order."""
    return [
        Account(c["username"], "password" in c, tuple(r.get("rolename", "") for r in c.get("roles", [])))
        for c in load(path)["clients"]
        if isinstance(c, dict) and "username" in c
    ]


def set_account(path: Path, username: str, *, password: str | None, bridge: bool = False) -> None:
    """Make ``username``'s entry with its role (the bridge's, or the device's own), or update it:
    ``password`` sets a new password; None keeps the one it has (a new entry has none: it logs in by
    certificate only)."""
    data = load(path)
    rolename = username if bridge else device_role(username)
    acls = bridge_acls() if bridge else device_acls(username)
    data["roles"] = [r for r in data["roles"] if r.get("rolename") != rolename]
    data["roles"].append({"rolename": rolename, "acls": acls})
    entry = next((c for c in data["clients"] if c.get("username") == username), None)
    if entry is None:
        entry = {"username": username}
        data["clients"].append(entry)
    entry["roles"] = [{"rolename": rolename}]
    if password is not None:
        entry.update(hash_password(password))
    save(path, data)
    log.info("account %s (role %s) written to %s", username, rolename, path)


def remove_account(path: Path, username: str, *, bridge: bool = False) -> bool:
    """Delete ``username``'s entry and its role; False if there was no entry."""
    data = load(path)
    clients = [c for c in data["clients"] if c.get("username") != username]
    if len(clients) == len(data["clients"]):
        return False
    rolename = username if bridge else device_role(username)
    data["clients"] = clients
    data["roles"] = [r for r in data["roles"] if r.get("rolename") != rolename]
    save(path, data)
    log.info("account %s removed from %s", username, path)
    return True
