"""Certificates for TLS tests: a throwaway CA with server and client certificates made as
etcd's own TLS guide makes them (cfssl's "server" and "client" profiles: the server
certificate for server authentication only), and upstream flannel's own test certificates
(``upstream_certs``: its dist/test, the ones its functional suite runs with)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertSet:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


UPSTREAM = Path(__file__).resolve().parent / "upstream_certs"


def upstream_certs() -> CertSet:
    """flannel v0.20.2's dist/test certificates: server ``etcd`` (serverAuth only; IP SANs
    127.0.0.1 and 172.17.0.1) and client ``client`` (clientAuth), valid until 2027-08-18."""
    return CertSet(
        UPSTREAM / "ca.pem",
        UPSTREAM / "server.pem",
        UPSTREAM / "server-key.pem",
        UPSTREAM / "client.pem",
        UPSTREAM / "client-key.pem",
    )


def make_certs(
    directory: Path,
    server_ips: tuple[str, ...] = ("127.0.0.1",),
    name: str = "ca",
    client_cn: str = "client",
) -> CertSet:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN=pyflannel-test-{name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        cwd=d,
    )
    sans = ",".join(f"IP:{ip}" for ip in server_ips)
    for who, cn, ext in (
        ("server", "server", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth"),
        ("client", client_cn, "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{who}.ext").write_text(ext + "\n")
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            f"{who}.key",
            "-out",
            f"{who}.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{who}.csr",
            "-CA",
            f"{name}.crt",
            "-CAkey",
            f"{name}.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{who}.ext",
            "-out",
            f"{who}.crt",
            cwd=d,
        )
    return CertSet(
        d / f"{name}.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key"
    )
