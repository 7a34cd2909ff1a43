"""``flnorm deploy ...``: certificates, node keys, connections, and the Flower processes."""

from __future__ import annotations

import argparse
import os
import sys

from flnorm import deploy, deploy_engine


def add_parser(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    p = sub.add_parser("deploy", help="set up and start a real deployment (SuperLink, SuperNodes)",
                       description="Set up and start a Flower deployment; see README 'Deploying across machines'.")
    actions = p.add_subparsers(dest="action", required=True)

    certs = actions.add_parser("certs", help="write a CA and the SuperLink's TLS certificate")
    certs.add_argument("--out", required=True,
                       help="directory for ca.crt, ca.key (stays on the server), server.crt, server.key")
    certs.add_argument("--host", action="append", default=None,
                       help="name or IP the SuperLink is reached at (repeatable; 127.0.0.1 and localhost always)")

    key = actions.add_parser("node-key", help="write a SuperNode's authentication key pair")
    key.add_argument("name", help="file name: NAME (private key) and NAME.pub (to register)")
    key.add_argument("--out", required=True, help="directory for the key files")

    conn = actions.add_parser("connection", help="write the flwr CLI's connection to a SuperLink")
    conn.add_argument("--flwr-home", required=True, help="the CLI's FLWR_HOME")
    conn.add_argument("--name", default="flnorm", help="connection name (default: flnorm)")
    conn.add_argument("--address", required=True, help="SuperLink host:port")
    conn.add_argument("--root-certificates", help="ca.crt; omit for an insecure SuperLink")

    link = actions.add_parser("superlink", help="start flower-superlink (this process becomes it)")
    link.add_argument("--port", type=int, default=9092, help="the one port of its APIs (default: 9092)")
    link.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    link.add_argument("--certs", help="directory made by 'flnorm deploy certs' (TLS); omit for insecure")
    link.add_argument("--auth", action="store_true", help="only registered SuperNodes may join (needs --certs)")
    link.add_argument("--flwr-home", default=None, help="FLWR_HOME (default: inherited)")

    node = actions.add_parser("supernode", help="start flower-supernode (this process becomes it)")
    node.add_argument("--superlink", required=True, help="SuperLink host:port")
    node.add_argument("--port", type=int, default=9094, help="its own API port, distinct per node on a host")
    node.add_argument("--partition-id", type=int, required=True, help="which partition (the client id)")
    node.add_argument("--num-partitions", type=int, required=True, help="the run's --clients")
    node.add_argument("--data-path", help="the site's own data (.npz, see flnorm.data.site) instead of a partition")
    node.add_argument("--root-certificates", help="ca.crt of a TLS SuperLink; omit for insecure")
    node.add_argument("--key", help="private key of a registered node (SuperLink with --auth)")
    node.add_argument("--flwr-home", default=None, help="FLWR_HOME (default: inherited)")
    node.add_argument("--poll", type=float, default=deploy_engine.DEFAULT_POLL,
                      help=f"s between requests for a message when idle (default: {deploy_engine.DEFAULT_POLL}; "
                           "Flower's: 3)")
    node.add_argument("--cold", action="store_true",
                      help="Flower's SuperNode unchanged: a fresh Python per message, a 3 s idle poll (default: "
                           "ClientApps forked from a process with torch and Flower imported, see flnorm.deploy_engine)")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        if args.action == "certs":
            hosts = list(dict.fromkeys(["127.0.0.1", "localhost", *(args.host or [])]))
            tls = deploy.make_tls(args.out, hosts)
            print(f"{tls.ca_cert}\n{tls.server_cert}\n{tls.server_key}")
        elif args.action == "node-key":
            private, public = deploy.make_node_key(args.out, args.name)
            print(f"{private}\n{public}  (register it: flwr supernode register {public} <connection>)")
        elif args.action == "connection":
            print(deploy.write_connection(args.flwr_home, args.name, args.address, args.root_certificates))
        elif args.action == "superlink":
            tls = deploy.TLSFiles.in_dir(args.certs) if args.certs else None
            _exec(deploy.superlink_command(args.port, args.host, tls, args.auth),
                  deploy.flower_env(_flwr_home(args.flwr_home)))
        elif args.action == "supernode":
            config = deploy.node_config(args.partition_id, args.num_partitions, args.data_path)
            deploy_engine.check_poll(args.poll, f"--poll {args.poll}")
            home = _flwr_home(args.flwr_home)
            runtime = None if args.cold else deploy_engine.runtime_bin(home)
            env = deploy.flower_env(home, runtime_bin=runtime, task_poll=deploy.SUPERNODE_TASK_POLL) | {
                deploy_engine.POLL_ENV: str(args.poll)}
            _exec(deploy.supernode_command(args.superlink, args.port, config, args.root_certificates, args.key,
                                           runtime_bin=runtime), env)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"flnorm deploy {args.action}: error: {exc}\n")
    return 0


def _flwr_home(given: str | None) -> str:
    return given or os.environ.get("FLWR_HOME", os.path.expanduser("~/.flwr"))


def _exec(cmd: list[str], env: dict[str, str]) -> None:
    """Replace this process with ``cmd`` (same PID: stop it by that PID)."""
    print(" ".join(cmd), file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)
