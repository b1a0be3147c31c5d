"""``edgecap devices``: add, remove and list devices at the MQTT broker; make its CA and configuration.

    edgecap devices init-ca [--server-name IP:10.0.0.5 --server-name DNS:mqtt.example.org]
    edgecap devices add pi-7 --generate [--cert]          # or --password-file FILE
    edgecap devices add pi-7 --cert --inventory ansible/inventory --ansible-host 192.0.2.7   # and to ansible
    edgecap devices add edgecap-bridge --bridge --generate
    edgecap devices remove pi-7                           # password removed, certificates revoked
    edgecap devices revoke pi-7                           # certificates revoked, password kept
    edgecap devices list
    edgecap devices config [--client-certificates] --output /etc/mosquitto/mosquitto.conf

Accounts are entries of the dynamic security plugin's file (``--accounts``, see
:mod:`edgecap.admin.dynsec`): each device gets a role of its own that grants only its own topics, for
publish, delivery and subscription alike, so a device cannot subscribe to another's downlink, to a
wildcard or to the bridge's shared group. What a device must be given (its password file,
certificate and key, the CA certificate) is written to ``--out-dir``. mosquitto 2.0 reads the
accounts file at start only: after ``add`` or ``remove``, restart it; the command prints that hint.

Every certificate the CA issues is recorded in its ``openssl ca`` database; ``remove`` and ``revoke``
revoke all of a device's certificates and rewrite ``<ca-dir>/crl.pem``, the broker's ``crlfile``.
mosquitto re-reads it on SIGHUP and checks it at each new TLS handshake: a revoked device that is
connected at that moment stays connected until it reconnects, which a restart forces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgecap.admin import dynsec
from edgecap.admin.devices import (
    BRIDGE_ACCOUNT,
    CONFIG_TEMPLATE,
    CRL_NAME,
    DeviceError,
    certificates,
    check_agent_id,
    init_ca,
    issue_certificate,
    new_password,
    render_config,
    revoke_certificates,
    write_secret,
)
from edgecap.admin.inventory import write_device
from runtime.logs import configure

BROKER_DIR = Path("/etc/mosquitto/edgecap")
RESTART_HINT = (
    "restart mosquitto to apply it: systemctl restart mosquitto (mosquitto 2.0 reads the accounts file at "
    "start only; sessions and queued messages are kept, devices reconnect by themselves)\n"
)
REVOKE_HINT = (
    "reload mosquitto so that new connections are checked against the new CRL: systemctl reload mosquitto "
    "(or kill -HUP <mosquitto pid>). A device connected now stays connected until it reconnects: "
    "systemctl restart mosquitto shuts it out at once (sessions are kept)\n"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecap devices", description="Device identities at the MQTT broker.")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    parser.add_argument("--accounts", type=Path, default=BROKER_DIR / "dynamic-security.json",
                        help="the dynamic security plugin's file: accounts and their roles")
    parser.add_argument("--ca-dir", type=Path, default=BROKER_DIR / "ca", help="CA directory (ca.crt, ca.key)")
    sub = parser.add_subparsers(dest="command", required=True)

    add = sub.add_parser("add", help="add a device (or change its credentials)")
    add.add_argument("agent_id")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--password-file", type=Path, help="set the password read from this file")
    secret.add_argument("--generate", action="store_true", help="generate a password into --out-dir")
    add.add_argument("--cert", action="store_true", help="issue a client certificate (CN = agent id)")
    add.add_argument("--days", type=int, default=825, help="validity of the certificate")
    add.add_argument("--bridge", action="store_true", help=f"the bridge's own account {BRIDGE_ACCOUNT!r}")
    add.add_argument("--out-dir", type=Path, default=Path("."), help="where the device's files are written")
    add.add_argument("--inventory", type=Path,
                     help="also add the device to this ansible inventory folder (ansible/inventory): a host file "
                     "and host_vars/<id>/vault.yml with its credentials, for the role edge_agent")
    add.add_argument("--ansible-host", help="with --inventory: the device's address for ansible (ansible_host)")
    add.add_argument("--vault-password-file", type=Path,
                     help="with --inventory: encrypt the credentials file with ansible-vault at once")

    remove = sub.add_parser("remove", help="remove a device: delete its password, revoke its certificates")
    remove.add_argument("agent_id")
    remove.add_argument("--bridge", action="store_true", help=f"the bridge's own account {BRIDGE_ACCOUNT!r}")

    revoke = sub.add_parser(
        "revoke", help="revoke a device's certificates (its password stays), e.g. before issuing a new one"
    )
    revoke.add_argument("agent_id")

    sub.add_parser("list", help="list the accounts, issued and revoked certificates")

    ca = sub.add_parser(
        "init-ca", help="make the CA, its (empty) CRL and the broker's server certificate; "
        "on an existing CA, add what is missing"
    )
    ca.add_argument("--name", default="edgecap-devices", help="the CA's common name")
    ca.add_argument("--server-name", action="append", default=[], help="IP:… or DNS:… of the broker (repeat)")

    conf = sub.add_parser("config", help="write the broker's mosquitto.conf from the shipped template")
    conf.add_argument("--device-port", type=int, default=8883)
    conf.add_argument("--device-address", default="0.0.0.0")
    conf.add_argument("--bridge-port", type=int, default=8884)
    conf.add_argument("--bridge-address", default="0.0.0.0", help="bind it to the cluster-internal interface")
    conf.add_argument("--client-certificates", action="store_true", help="devices log in by certificate")
    conf.add_argument("--plugin", default=dynsec.plugin_path(), help="mosquitto_dynamic_security.so")
    conf.add_argument("--persistence-dir", default="/var/lib/mosquitto/")
    conf.add_argument("--output", type=Path, help="write here instead of standard output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(args.debug, "devices")
    try:
        return _COMMANDS[args.command](args)
    except (DeviceError, dynsec.AccountsError) as exc:
        sys.stderr.write(f"edgecap devices: {exc}\n")
        return 1


def _add(args: argparse.Namespace) -> int:
    agent_id = check_agent_id(args.agent_id, bridge=args.bridge)
    if not (args.password_file or args.generate or args.cert):
        raise DeviceError("nothing to add: give --password-file FILE, --generate and/or --cert")
    if args.cert and args.bridge:
        raise DeviceError("the bridge logs in with a password on its own listener: no --cert")
    if args.inventory and args.bridge:
        raise DeviceError("--inventory is for devices: the bridge is not installed by ansible")
    out = sys.stdout
    password: str | None = None
    if args.generate:
        password = new_password()
        path = write_secret(args.out_dir / f"{agent_id}.password", password + "\n")
        out.write(f"password of {agent_id} written to {path} (give it as mqtt.password_file)\n")
    elif args.password_file:
        password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    # the account holds the role even for a device that logs in by certificate only
    dynsec.set_account(args.accounts, agent_id, password=password, bridge=args.bridge)
    what = "with a new password" if password is not None else "its password unchanged" if any(
        a.has_password for a in dynsec.accounts(args.accounts) if a.username == agent_id) else "without a password"
    out.write(f"{agent_id} added to {args.accounts} ({what})\n")
    crt = key = None
    if args.cert:
        crt, key = issue_certificate(args.ca_dir, agent_id, args.out_dir, days=args.days)
        issued = args.ca_dir / "issued"
        issued.mkdir(exist_ok=True)
        (issued / crt.name).write_bytes(crt.read_bytes())
        out.write(f"certificate of {agent_id}: {crt}, key {key}, CA {args.ca_dir / 'ca.crt'} "
                  f"(recorded in {args.ca_dir / 'index.txt'}; `edgecap devices revoke {agent_id}` revokes it)\n")
    if args.inventory:
        ca = args.ca_dir / "ca.crt"
        host_file, vault = write_device(
            args.inventory, agent_id, ansible_host=args.ansible_host, ca_cert=ca if ca.is_file() else None,
            client_cert=crt, client_key=key, password=password, vault_password_file=args.vault_password_file,
        )
        out.write(f"{agent_id} added to the inventory: {host_file}, credentials in {vault} "
                  + ("(encrypted)\n" if args.vault_password_file else "(encrypt it: ansible-vault encrypt FILE)\n"))
    if not args.bridge:
        out.write(f"its role {dynsec.device_role(agent_id)} grants it its own topics only\n")
    out.write(RESTART_HINT)
    return 0


def _revoke_all(ca_dir: Path, agent_id: str) -> list[str]:
    """Revoke the device's certificates (the database's, and the issued copy, which a CA of an earlier
    version may hold without a database), forget the issued copy, say what was done."""
    issued = ca_dir / "issued" / f"{agent_id}.crt"
    revoked = revoke_certificates(ca_dir, agent_id, [issued])
    issued.unlink(missing_ok=True)
    if revoked:
        sys.stdout.write(f"{len(revoked)} certificate(s) of {agent_id} revoked (serial {', '.join(revoked)}); "
                         f"CRL written to {ca_dir.resolve() / CRL_NAME}\n")
    return revoked


def _remove(args: argparse.Namespace) -> int:
    agent_id = check_agent_id(args.agent_id, bridge=args.bridge)
    removed = dynsec.remove_account(args.accounts, agent_id, bridge=args.bridge)
    if removed:
        sys.stdout.write(f"{agent_id} removed from {args.accounts}\n")
    revoked = _revoke_all(args.ca_dir, agent_id)
    if not (removed or revoked):
        raise DeviceError(f"{agent_id} is not in {args.accounts} and has no certificate left to revoke")
    if revoked:
        sys.stdout.write(REVOKE_HINT)
    if removed:
        sys.stdout.write(RESTART_HINT)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    agent_id = check_agent_id(args.agent_id)
    if not _revoke_all(args.ca_dir, agent_id):
        raise DeviceError(f"{agent_id} has no certificate left to revoke in {args.ca_dir}")
    sys.stdout.write(REVOKE_HINT)
    return 0


def _list(args: argparse.Namespace) -> int:
    issued = args.ca_dir / "issued"
    certified = {p.stem for p in issued.glob("*.crt")} if issued.is_dir() else set()
    revoked = {c.common_name for c in certificates(args.ca_dir) if c.revoked}
    known = dynsec.accounts(args.accounts)
    with_password = {a.username for a in known if a.has_password}
    for name in sorted(with_password | certified | revoked | {a.username for a in known}):
        kinds = (("password", with_password), ("certificate", certified), ("revoked-certificate", revoked))
        how = [kind for kind, names in kinds if name in names] or ["no-credentials"]
        role = "bridge" if name == BRIDGE_ACCOUNT else "device"
        sys.stdout.write(f"{name}\t{role}\t{'+'.join(how)}\n")
    return 0


def _init_ca(args: argparse.Namespace) -> int:
    cert = init_ca(args.ca_dir, args.name)
    sys.stdout.write(f"CA certificate: {cert} (give it to every device and the bridge as mqtt.ca_file)\n")
    sys.stdout.write(f"CRL: {cert.parent / CRL_NAME} (the broker's crlfile with client certificates)\n")
    if args.server_name:
        crt, key = issue_certificate(args.ca_dir, "server", args.ca_dir, server_names=args.server_name)
        sys.stdout.write(f"server certificate: {crt}, key {key}\n")
    return 0


def _config(args: argparse.Namespace) -> int:
    crl = args.ca_dir.resolve() / CRL_NAME
    if args.client_certificates and not crl.exists():
        sys.stderr.write(f"edgecap devices: warning: {crl} does not exist, and mosquitto does not start without "
                         "it: make it with `edgecap devices init-ca` (on an existing CA it adds only the CRL)\n")
    if not args.accounts.exists():
        sys.stderr.write(f"edgecap devices: warning: {args.accounts} does not exist: until it does, mosquitto refuses "
                         "every login. Add the bridge's account and the devices with `edgecap devices add`\n")
    text = render_config(
        {
            "DYNSEC_PLUGIN": args.plugin,
            "ACCOUNTS_FILE": args.accounts.resolve(),
            "DEVICE_PORT": args.device_port,
            "DEVICE_ADDRESS": args.device_address,
            "BRIDGE_PORT": args.bridge_port,
            "BRIDGE_ADDRESS": args.bridge_address,
            "CA_FILE": args.ca_dir.resolve() / "ca.crt",
            "SERVER_CERT": args.ca_dir.resolve() / "server.crt",
            "SERVER_KEY": args.ca_dir.resolve() / "server.key",
            "CLIENT_CERTIFICATES": args.client_certificates,
            "CRL_FILE": crl,
            "CRL_COMMENT": "" if args.client_certificates else "#",
            "PERSISTENCE_DIR": args.persistence_dir,
        },
        CONFIG_TEMPLATE,
    )
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


_COMMANDS = {
    "add": _add, "remove": _remove, "revoke": _revoke, "list": _list, "init-ca": _init_ca, "config": _config
}


if __name__ == "__main__":
    raise SystemExit(main())
