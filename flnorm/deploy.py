"""Deploying across machines: certificates, node keys and the Flower commands.

A deployment is one ``flower-superlink`` and one ``flower-supernode`` per site, each with
its own data, and ``flwr run . <connection>`` to start a run. This module writes what
they need and builds their command lines; ``flnorm deploy ...`` exposes it.

- TLS: a CA and a server certificate for the SuperLink's hosts (``make_tls``);
  SuperNodes and the ``flwr`` CLI trust the CA (``--root-certificates``).
- SuperNode authentication: an EC P-384 key pair per node in OpenSSH format
  (``make_node_key``); the public key is registered with ``flwr supernode register``
  before the node starts with ``--auth-supernode-private-key``. A node whose key is not
  registered is refused (``[code: 2004] Failed to activate SuperNode``).
- Runtime dependency installation is disabled (offline); every Flower process needs the
  environment's ``bin`` on ``PATH`` (the SuperLink spawns ``flower-superexec``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}
# Flower's SuperExec (started by a SuperNode or SuperLink) asks for a new task to launch every
# ``TASK_POLL_ENV`` seconds (default 1). A SuperNode's launches a ClientApp for every message,
# so there a short poll starts every phase of every round sooner; a SuperLink's launches one
# ServerApp (or simulation) per run, where a short poll saves under a second once and costs a
# request through the SuperLink's HTTP stack every poll for the whole run (README, *Deploying*).
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPERNODE_TASK_POLL = 0.1  # s, the SuperNodes' SuperExec poll that flnorm sets unless given


@dataclass(frozen=True)
class TLSFiles:
    """The CA certificate everyone trusts and the SuperLink's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, directory: str | Path) -> TLSFiles:
        d = Path(directory).resolve()
        files = cls(d / "ca.crt", d / "server.crt", d / "server.key")
        missing = [str(p) for p in (files.ca_cert, files.server_cert, files.server_key) if not p.exists()]
        if missing:
            raise FileNotFoundError(f"missing TLS files: {', '.join(missing)} (make them: flnorm deploy certs)")
        return files


def _san(host: str):  # noqa: ANN202 - a cryptography GeneralName
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_tls(directory: str | Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 365) -> TLSFiles:
    """Write ``ca.crt``/``ca.key`` and ``server.crt``/``server.key`` valid for ``hosts``.

    ``hosts`` are the names and IP addresses SuperNodes and the CLI use to reach the
    SuperLink (the SuperLink also connects to itself on 127.0.0.1: keep it listed).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(directory).resolve()
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flnorm deployment CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def private(key) -> bytes:  # noqa: ANN001
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    _write(out / "ca.key", private(ca_key), secret=True)
    _write(out / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", private(server_key), secret=True)
    _write(out / "server.crt", server_cert.public_bytes(serialization.Encoding.PEM))
    return TLSFiles(out / "ca.crt", out / "server.crt", out / "server.key")


def make_node_key(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write a SuperNode's key pair: ``<name>`` (private, OpenSSH) and ``<name>.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(directory).resolve()
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(out / name, private, secret=True)
    _write(out / f"{name}.pub", public + b"\n")
    return out / name, out / f"{name}.pub"


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    path.write_bytes(data)
    if secret:
        path.chmod(0o600)


def _bin(tool: str) -> str:
    """``tool`` from this environment's ``bin`` (next to the running Python)."""
    candidate = Path(sys.executable).parent / tool
    return str(candidate) if candidate.exists() else tool


def flower_env(flwr_home: str | Path, base: Mapping[str, str] | None = None,
               runtime_bin: Path | None = None, task_poll: float | None = None) -> dict[str, str]:
    """Environment for a Flower process: its own ``FLWR_HOME``, offline, the venv on ``PATH``.

    ``runtime_bin`` (``flnorm.deploy_engine.runtime_bin``), for a SuperNode, goes first on
    ``PATH``: the SuperExec it launches by name is then flnorm's. ``task_poll`` (s) sets the
    SuperExec's task poll (``TASK_POLL_ENV``) unless the environment already does; ``None``
    leaves Flower's default.
    """
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    if task_poll is not None:
        env.setdefault(TASK_POLL_ENV, str(task_poll))
    env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    path = [str(Path(sys.executable).parent), env.get("PATH", "")]
    if runtime_bin is not None:
        path.insert(0, str(runtime_bin))
    env["PATH"] = os.pathsep.join(path)
    return env


def superlink_command(port: int = 9092, host: str = "0.0.0.0", tls: TLSFiles | None = None,
                      auth: bool = False) -> list[str]:
    """``flower-superlink`` serving the Fleet, Control and Runtime APIs on ``host:port``."""
    if auth and tls is None:
        raise ValueError("SuperNode authentication needs TLS (Flower refuses it on an insecure SuperLink)")
    cmd = [_bin("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if tls is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                "--ssl-keyfile", str(tls.server_key)]
    if auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def node_config(partition_id: int, num_partitions: int, data_path: str | None = None) -> str:
    """The ``--node-config`` string: a partition of the run's dataset, or a site's own file."""
    items = [f"partition-id={partition_id}", f"num-partitions={num_partitions}"]
    if data_path:
        items.append(f'data-path="{Path(data_path).resolve()}"')
    return " ".join(items)


def supernode_command(superlink: str, port: int, config: str, root_certificates: str | Path | None = None,
                      private_key: str | Path | None = None, runtime_bin: Path | None = None) -> list[str]:
    """``flower-supernode`` connecting to ``superlink`` (``host:port``); ``port`` is its own API.

    With ``runtime_bin`` (``flnorm.deploy_engine.runtime_bin``) it is flnorm's: warm ClientApp
    processes and a short idle poll; run it with ``flower_env(..., runtime_bin=runtime_bin)``.
    """
    program = str(runtime_bin / "flower-supernode") if runtime_bin is not None else _bin("flower-supernode")
    cmd = [program, "--superlink", superlink, "--port", str(port), "--node-config", config]
    if root_certificates is None:
        if private_key is not None:
            raise ValueError("an authenticated SuperNode needs TLS: give root_certificates")
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(Path(root_certificates).resolve())]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(Path(private_key).resolve())]
    return cmd


def register_command(public_key: str | Path, connection: str) -> list[str]:
    """``flwr supernode register``: allow the node holding the matching private key to join."""
    return [_bin("flwr"), "supernode", "register", str(Path(public_key).resolve()), connection, "--format", "json"]


def write_connection(flwr_home: str | Path, name: str, address: str,
                     root_certificates: str | Path | None = None) -> Path:
    """Add connection ``name`` (the default) to the ``flwr`` CLI's ``$FLWR_HOME/config.toml``.

    ``root_certificates=None`` means an insecure (plain HTTP) SuperLink.
    """
    home = Path(flwr_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    security = (f'root-certificates = "{Path(root_certificates).resolve()}"' if root_certificates
                else "insecure = true")
    path = home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{security}\n')
    return path
