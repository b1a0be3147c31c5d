"""``edgecap dashboard`` (also ``python -m cloud.dashboard``): serve the dashboard with uvicorn, or
manage who may log in to it.

    edgecap dashboard                                   serve it
    edgecap dashboard users add NAME [--role admin|viewer] [--password-stdin] [--replace]
    edgecap dashboard users list | remove NAME
    edgecap dashboard tokens add --user NAME [--name LABEL]     prints the token once
    edgecap dashboard tokens list | revoke TOKEN_ID

Accounts live in the store (``store_url``): the commands take the same settings as the server.
Without ``--password-stdin`` the password is asked for twice on the terminal.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys

import uvicorn

from cloud.dashboard.app import create_app
from cloud.settings import DashboardSettings
from runtime.service import add_common_options, prepare

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecap dashboard", description="Serve the live captions dashboard.")
    add_common_options(parser)
    commands = parser.add_subparsers(dest="command")
    users = commands.add_parser("users", help="dashboard users").add_subparsers(dest="action", required=True)
    add = users.add_parser("add", help="create a user (or --replace its password and role)")
    add.add_argument("name")
    add.add_argument("--role", choices=["admin", "viewer"], default="viewer")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--replace", action="store_true", help="set an existing user's password and role")
    users.add_parser("list", help="list users")
    users.add_parser("remove", help="delete a user, its sessions and tokens").add_argument("name")
    tokens = commands.add_parser("tokens", help="API tokens for scripts").add_subparsers(dest="action", required=True)
    new = tokens.add_parser("add", help="create a token (printed once)")
    new.add_argument("--user", required=True)
    new.add_argument("--name", default="script", help="what the token is for")
    tokens.add_parser("list", help="list tokens (never their secrets)")
    tokens.add_parser("revoke", help="revoke a token").add_argument("token_id")
    return parser


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise SystemExit("the passwords differ")
    return first


def _accounts(args: argparse.Namespace, settings: DashboardSettings) -> int:
    from cloud.dashboard.accounts import AccountError, Accounts
    from cloud.store import Store

    store = Store(settings.store_url)
    accounts = Accounts(store)
    out = sys.stdout
    try:
        if args.command == "users" and args.action == "add":
            user = accounts.add_user(args.name, _password(args.password_stdin), args.role, replace=args.replace)
            out.write(f"{user.username} ({user.role}) {'replaced' if args.replace else 'added'}\n")
        elif args.command == "users" and args.action == "list":
            for user in accounts.users():
                out.write(f"{user.username}\t{user.role}\n")
        elif args.command == "users":
            accounts.remove_user(args.name)
            out.write(f"{args.name} removed\n")
        elif args.action == "add":
            secret, token = accounts.new_token(args.user, args.name)
            out.write(f"{secret}\n")
            sys.stderr.write(f"token {token.token_id} for {token.username} ({token.name}): shown once, keep it\n")
        elif args.action == "list":
            for t in accounts.tokens():
                out.write(f"{t.token_id}\t{t.username}\t{t.name}\tlast used {t.last_used_at or 'never'}\n")
        else:
            accounts.revoke_token(args.token_id)
            out.write(f"token {args.token_id} revoked\n")
    except AccountError as exc:
        log.error("%s", exc)
        return 1
    finally:
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = prepare(DashboardSettings, args, "dashboard")
    if isinstance(settings, int):
        return settings
    if args.command is not None:
        return _accounts(args, settings)
    app = create_app(settings)
    log.info("dashboard on http://%s:%d", settings.host, settings.port)
    # uvicorn stops cleanly on SIGTERM/SIGINT itself (it installs its own handlers).
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=args.debug,
        log_level="debug" if args.debug else "info",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
