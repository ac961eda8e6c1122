"""The pool's certificates and tokens from the command line (pki.py does the
work): `xcp pool-init`, `xcp cert-issue`, `xcp token-issue`. These commands
touch only files, never the network."""

from __future__ import annotations

import argparse

from xcp_control.security import pki
from xcp_control.cli.client import API_ERROR, USAGE, CliError, looks_like_uuid

DEFAULT_CLIENTS = (("admin", "pool-admin"), ("viewer", "read-only"), ("client", "client"))


def _tls(args: argparse.Namespace) -> pki.TlsDir:
    if not args.tls_dir:
        raise CliError(USAGE, "error: name the certificate directory with --tls-dir "
                              "(or XCP_TLS_DIR)")
    return pki.TlsDir(args.tls_dir)


def pool_init(args: argparse.Namespace) -> None:
    """A pool CA, the master's certificate and three client identities."""
    tls = _tls(args)
    try:
        pki.create_ca(tls)
    except FileExistsError as exc:
        raise CliError(API_ERROR, f"error: {exc}") from None
    pki.issue(tls, tls.master(), "master", "master", tuple(args.address or ()))
    for name, kind in DEFAULT_CLIENTS:
        pki.issue(tls, tls.client(name), name, kind)
    print(f"pool CA and certificates written to {tls.path}\n"
          f"  master: {tls.master().cert}\n"
          + "".join(f"  {kind} client '{name}': {tls.client(name).cert}\n"
                    for name, kind in DEFAULT_CLIENTS)
          + "issue one per slave with: xcp cert-issue --kind host --name <host uuid>", end="\n")


def cert_issue(args: argparse.Namespace) -> None:
    tls = _tls(args)
    if not tls.ca_key.exists():
        raise CliError(API_ERROR, f"error: no pool CA in {tls.path}: run xcp pool-init first")
    if args.kind == "host":
        if not looks_like_uuid(args.name):
            raise CliError(USAGE, f"error: a host certificate is named by the host's uuid, "
                                  f"got {args.name!r}")
        paths = tls.host(args.name.lower())
    elif args.kind == "master":
        paths = tls.master()
    else:
        paths = tls.client(args.name)
    pki.issue(tls, paths, args.name, args.kind, tuple(args.address or ()))
    print(paths.cert)


def token_issue(args: argparse.Namespace) -> None:
    tls = _tls(args)
    if args.ttl is not None and args.ttl <= 0:
        raise CliError(USAGE, f"error: --ttl must be more than 0 seconds, got {args.ttl:g}")
    print(pki.issue_token(tls, args.name, args.role, args.ttl))


def add_pool_init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", action="append", metavar="IP_OR_NAME",
                   help="another address clients dial the master at (repeatable; "
                        "127.0.0.1, localhost and master.xcp are always in)")


def add_cert_issue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", required=True, choices=pki.KINDS,
                   help="host (a slave: --name is its uuid), a client role, or master")
    p.add_argument("--name", required=True, help="host uuid, or the client's name")
    add_pool_init_args(p)


def add_token_issue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="who the token is for")
    p.add_argument("--role", required=True, choices=pki.ROLES)
    p.add_argument("--ttl", type=float, default=None, metavar="S",
                   help="seconds until it expires (default: never)")
