"""A throw-away certificate authority made with ``openssl``, for TLS on the local servers.

:func:`make_test_pki` writes a self-signed CA, a server certificate for
``localhost``/``127.0.0.1`` and a client certificate (for mutual TLS, its key
encrypted with a password) into a folder. The security tests give them to
the local Kafka broker's SSL listeners and to ``redis-server --tls-port``;
nothing here is meant for production certificates.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fraudstream.service.errors import DevStackError

#: Curve of every key: fast to make, and every client and server here speaks it.
_CURVE = "prime256v1"

_CA_EXTENSIONS = (
    "basicConstraints=critical,CA:TRUE",
    "keyUsage=critical,keyCertSign,cRLSign",
    "subjectKeyIdentifier=hash",
)

_LEAF_EXTENSIONS = """\
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage={usage}
subjectAltName={names}
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
"""


@dataclass(frozen=True)
class TestPki:
    """Paths of the PEM files :func:`make_test_pki` wrote.

    Attributes
    ----------
    ca_cert
        The CA certificate: the trust anchor for clients and servers.
    server_cert, server_key
        ``localhost``/``127.0.0.1`` certificate and its unencrypted PKCS#8 key.
    server_keystore
        Key and certificate in one file (Kafka's ``ssl.keystore.type=PEM``).
    client_cert, client_key
        Client certificate (CN ``fraudstream-client``) and its key, encrypted
        with ``client_key_password``.
    client_key_password
        Password of ``client_key``.
    """

    __test__ = False  # not a pytest test class, whatever its name

    ca_cert: Path
    server_cert: Path
    server_key: Path
    server_keystore: Path
    client_cert: Path
    client_key: Path
    client_key_password: str


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DevStackError("openssl is needed to make test certificates: apt-get install openssl")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DevStackError(
            f"`openssl {' '.join(args[:2])}` failed: {(result.stderr or result.stdout).strip()}"
        )


def _leaf(
    folder: Path, name: str, subject: str, usage: str, names: str, key_args: tuple[str, ...]
) -> None:
    """Key, request and CA-signed certificate ``name.pem`` (extensions in ``name.ext``)."""
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{_CURVE}",
        *key_args, "-out", f"{name}.key", cwd=folder,
    )  # fmt: skip
    passin = ("-passin", key_args[-1]) if key_args else ()
    _openssl(
        "req", "-new", "-key", f"{name}.key", *passin, "-subj", subject, "-out", f"{name}.csr",
        cwd=folder,
    )  # fmt: skip
    (folder / f"{name}.ext").write_text(_LEAF_EXTENSIONS.format(usage=usage, names=names))
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "7", "-sha256", "-extfile", f"{name}.ext",
        "-out", f"{name}.pem", cwd=folder,
    )  # fmt: skip


def make_test_pki(folder: Path, client_key_password: str = "client-key-secret") -> TestPki:
    """Write a CA, a server and a client certificate (all PEM) into ``folder``.

    Parameters
    ----------
    folder
        Created when missing; existing files of the same names are replaced.
    client_key_password
        Encrypts the client key (AES-256), so a key password is exercised too.

    Raises
    ------
    DevStackError
        ``openssl`` is missing or fails.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{_CURVE}",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "7", "-sha256",
        "-subj", "/CN=fraudstream test CA",
        *(arg for ext in _CA_EXTENSIONS for arg in ("-addext", ext)),
        cwd=folder,
    )  # fmt: skip
    _leaf(
        folder, "server", "/CN=localhost", "serverAuth,clientAuth",
        "DNS:localhost,IP:127.0.0.1", (),
    )  # fmt: skip
    _leaf(
        folder, "client", "/CN=fraudstream-client", "clientAuth", "DNS:fraudstream-client",
        ("-aes-256-cbc", "-pass", f"pass:{client_key_password}"),
    )  # fmt: skip
    keystore = folder / "server-keystore.pem"
    keystore.write_text((folder / "server.key").read_text() + (folder / "server.pem").read_text())
    return TestPki(
        ca_cert=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        server_keystore=keystore,
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        client_key_password=client_key_password,
    )
