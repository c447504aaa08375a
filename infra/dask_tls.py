"""Certificates for a Dask cluster that speaks TLS: a private CA, one certificate for the
cluster (scheduler and workers) and one for its clients.

Dask checks that every peer presents a certificate signed by the cluster's CA (not host
names), so whoever holds neither certificate cannot connect: the cluster runs only
the code of its clients. Keys are written readable by their owner only::

    python -m infra.dask_tls --out runs/dask-tls
    # ca.pem (the CA's certificate), cluster.pem and client.pem (each a certificate
    # followed by its private key, as Dask accepts them: --tls-cert alone)

Kubernetes: put them in two Secrets (``infra/README.md``); the CA's own key is not
written, so no further certificate can be signed: run it again to rotate them all.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365
FILES = ("ca.pem", "cluster.pem", "client.pem")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool) -> None:
    # Created with the final mode: a key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)


def make_certificates(out: Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"),
                      days: int = VALID_DAYS) -> dict[str, Path]:
    """Write a fresh CA certificate and the cluster's and the clients' certificates (signed
    by it), each with its key in the same file, under ``out``; the CA's key is dropped.
    Returns the paths by role ("ca", "cluster", "client")."""
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("imambig-dask-ca"))
          .issuer_name(_name("imambig-dask-ca")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=False, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True,
              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    paths = {"ca": out / "ca.pem"}
    _write(paths["ca"], ca.public_bytes(serialization.Encoding.PEM), private=False)
    for role in ("cluster", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        # Scheduler and workers both accept and open connections: both usages.
        cert = (x509.CertificateBuilder().subject_name(_name(f"imambig-dask-{role}"))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(ca_key, hashes.SHA256()))
        paths[role] = out / f"{role}.pem"
        _write(paths[role], cert.public_bytes(serialization.Encoding.PEM) + _key_pem(key),
               private=True)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for the PEM files")
    p.add_argument("--host", action="append", default=None,
                   help="a name or IP of the scheduler (repeatable); informative only, "
                        "Dask checks the CA, not host names")
    p.add_argument("--days", type=int, default=VALID_DAYS, help="validity")
    p.add_argument("--keep", action="store_true",
                   help="do nothing if the folder holds them already (a job run at each start)")
    a = p.parse_args(argv)
    if a.keep and all((a.out / name).is_file() for name in FILES):
        print(f"kept the certificates in {a.out}")
        return 0
    paths = make_certificates(a.out, a.host or ("localhost", "127.0.0.1"), a.days)
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
