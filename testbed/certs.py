"""Certificates and keys for the local control plane, made with the openssl CLI
(the venv has no ``cryptography``; openssl is on every CI image)."""

from __future__ import annotations

import subprocess
from pathlib import Path

_DAYS = "3650"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def ensure_pki(pki: Path) -> None:
    """Creates, once, a CA, a serving cert for 127.0.0.1 signed by it, and the
    service-account signing key pair. Existing files are kept so a restarted
    apiserver keeps the CA every kubeconfig already trusts."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "apiserver.crt").exists() and (pki / "sa.pub").exists():
        return
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", _DAYS, "-subj", "/CN=coverage-exporter-testbed-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=pki,
    )
    # Python 3.13 verifies with VERIFY_X509_STRICT: the leaf needs SAN, EKU,
    # key usage and an authority key id, or the client rejects it.
    (pki / "apiserver.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key",
        "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver", cwd=pki,
    )
    _openssl(
        "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "apiserver.crt", "-days", _DAYS,
        "-extfile", "apiserver.ext", cwd=pki,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
