"""TLS on every link, with mutual authentication: a cluster CA and a certificate per part.

`chunkfs certs init --dir DIR` makes `ca.pem` (+ `ca.key`, to be kept off the servers) and, for
each name (by default metaserver, chunkserver, client, gateway, admin, etcd), `NAME.pem` and `NAME.key`
(0600), valid for the host names and addresses given (default: localhost, 127.0.0.1, ::1 and this
host's name). A daemon given `tls_dir` (one config switch) serves only TLS, asks every peer for a
certificate of the cluster CA (a plain-HTTP request gets no answer: the connection is closed in
the handshake), and itself connects with TLS, showing its certificate. What a certificate proves is
that its holder is part of the cluster; what it may do is still its key's role (chunkfs.auth).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

NAMES = ("metaserver", "chunkserver", "client", "gateway", "admin", "etcd")
VALID_DAYS = 3650


@dataclass(frozen=True)
class TlsFiles:
    """One part's TLS files in a directory made by `init_certs`."""

    directory: Path
    name: str

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / f"{self.name}.pem"

    @property
    def key(self) -> Path:
        return self.directory / f"{self.name}.key"

    def check(self) -> None:
        """ValueError naming a missing file."""
        for path in (self.ca, self.cert, self.key):
            if not path.exists():
                raise ValueError(f"{path} does not exist (chunkfs certs init --dir {self.directory})")

    def server_context(self) -> ssl.SSLContext:
        """For a daemon: its certificate; peers must show one of the cluster CA (mutual)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        context.verify_mode = ssl.CERT_REQUIRED
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def client_context(self) -> ssl.SSLContext:
        """For connecting: the server's certificate must be the cluster CA's, for the host
        connected to; shows this part's certificate."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def tls_files(directory: Path | str | None, name: str) -> TlsFiles | None:
    """The TLS files of `name` in `directory`, or None for no TLS (no directory given)."""
    if directory is None or not str(directory):
        return None
    files = TlsFiles(Path(directory), name)
    files.check()
    return files


def default_hosts() -> list[str]:
    return sorted({"localhost", "127.0.0.1", "::1", socket.gethostname()})


def init_certs(directory: Path, names: tuple[str, ...] = NAMES, hosts: list[str] | None = None) -> list[Path]:
    """Make the CA (unless `ca.pem` is there: then it signs) and a certificate for each name not
    made yet; returns the files written. Keys are EC P-256, certificates valid VALID_DAYS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    now = datetime.datetime.now(datetime.UTC)

    def save_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        written.append(path)

    def save_cert(path: Path, cert: x509.Certificate) -> None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        written.append(path)

    ca_pem, ca_key_pem = directory / "ca.pem", directory / "ca.key"
    if ca_pem.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_pem.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_pem} is not an EC key")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chunkfs cluster CA")])
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .sign(ca_key, hashes.SHA256()))
        save_key(ca_key_pem, ca_key)
        save_cert(ca_pem, ca_cert)
    alt_names: list[x509.GeneralName] = []
    for host in hosts or default_hosts():
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    for name in names:
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        if cert_path.exists():
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"chunkfs {name}")]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        key_path.unlink(missing_ok=True)
        save_key(key_path, key)
        save_cert(cert_path, cert)
    return written
