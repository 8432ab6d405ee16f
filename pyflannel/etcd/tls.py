"""TLS to etcd: the context made from the operator's files, and what a TLS failure means, in
words an operator can act on (which file, which side refused, what to change)."""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""


class TLSConfigError(ValueError):
    """The TLS files themselves cannot be used (missing, not PEM, key and certificate apart)."""


def client_context(files: TLSFiles, alpn: str = "h2") -> ssl.SSLContext:
    """A verifying client context: the CAs of --etcd-cafile (else the system's), our client
    certificate if given, ALPN ``alpn`` (gRPC needs "h2")."""
    try:
        context = ssl.create_default_context(cafile=files.cafile or None)
    except (OSError, ssl.SSLError) as e:
        raise TLSConfigError(f"--etcd-cafile {files.cafile}: {_file_problem(e)}") from None
    if files.certfile:
        try:
            context.load_cert_chain(files.certfile, files.keyfile or None)
        except (OSError, ssl.SSLError) as e:
            if getattr(e, "reason", "") == "KEY_VALUES_MISMATCH":
                raise TLSConfigError(
                    f"--etcd-keyfile {files.keyfile} is not the key of --etcd-certfile "
                    f"{files.certfile}"
                ) from None
            raise TLSConfigError(
                f"--etcd-certfile {files.certfile} / --etcd-keyfile {files.keyfile}: "
                f"{_file_problem(e)}"
            ) from None
    context.set_alpn_protocols([alpn])
    return context


class ContextCache:
    """The client context, made again only when one of the files changed on disk (rotated
    certificates are used from the next connection; a reconnect loop reads no file)."""

    def __init__(self, files: TLSFiles, alpn: str = "h2"):
        self.files, self.alpn = files, alpn
        self._context: ssl.SSLContext | None = None
        self._stamp: tuple[int, ...] | None = None

    def get(self) -> ssl.SSLContext:
        named = [f for f in (self.files.cafile, self.files.certfile, self.files.keyfile) if f]
        stamp: tuple[int, ...] | None
        try:
            stamp = tuple(os.stat(f).st_mtime_ns for f in named)
        except OSError:
            stamp = None  # a file is missing: client_context says which
        if self._context is None or stamp is None or stamp != self._stamp:
            self._context, self._stamp = client_context(self.files, self.alpn), stamp
        return self._context


def _file_problem(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"not usable ({getattr(e, 'reason', None) or e})"


# OpenSSL's verification results for the member's certificate.
_NOT_OUR_CA = {2, 18, 19, 20, 21}  # issuer unknown, self-signed, not signed by a CA we trust
_EXPIRED, _NOT_YET_VALID = 10, 9
_WRONG_NAME = {62, 64}  # hostname or IP address mismatch
_WRONG_PURPOSE = 26  # the certificate is not for TLS servers (extended key usage)

# Alerts with which a member refuses our client certificate (Go's TLS server sends "bad
# certificate" for any failed verification: unknown CA, expired, or an extended key usage
# without clientAuth).
_CLIENT_REFUSED = {
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "TLSV1_ALERT_DECRYPT_ERROR",
}
_CLIENT_MISSING = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"}
_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"}


def explain(error: BaseException, files: TLSFiles, host: str) -> str | None:
    """What a TLS failure with the member at ``host`` means, or None if ``error`` is not one."""
    if isinstance(error, TLSConfigError):
        return str(error)
    if isinstance(error, ssl.SSLCertVerificationError):
        return _server_certificate(error, files, host)
    if not isinstance(error, ssl.SSLError):
        return None
    reason = error.reason or ""
    if reason in _CLIENT_REFUSED | _CLIENT_MISSING and not files.certfile:
        return (
            "etcd requires a client certificate (its --client-cert-auth): give "
            "--etcd-certfile and --etcd-keyfile"
        )
    if reason in _CLIENT_REFUSED | _CLIENT_MISSING:
        what = "; ".join(client_certificate_findings(files)) or (
            "is it issued by a CA in etcd's --trusted-ca-file?"
        )
        return f"etcd refused our client certificate {files.certfile}: {what}"
    if reason in _NOT_TLS:
        return (
            f"the server at {host} does not speak TLS: if etcd serves plaintext there, use http://"
        )
    return f"TLS failed: {reason or error}"


def _server_certificate(error: ssl.SSLCertVerificationError, files: TLSFiles, host: str) -> str:
    code, detail = error.verify_code, error.verify_message
    trusted = f"--etcd-cafile ({files.cafile})" if files.cafile else "the system's CAs"
    if code in _NOT_OUR_CA:
        what = f"etcd's certificate is not signed by a CA in {trusted}"
    elif code == _EXPIRED:
        what = "etcd's certificate has expired"
    elif code == _NOT_YET_VALID:
        what = "etcd's certificate is not valid yet (is this node's clock right?)"
    elif code in _WRONG_NAME:
        what = (
            f"etcd's certificate does not name {host} (its subjectAltName): use an address "
            "it names in --etcd-endpoints, or reissue it with this one"
        )
    elif code == _WRONG_PURPOSE:
        what = "etcd's certificate is not made for TLS servers (extended key usage serverAuth)"
    else:
        what = "etcd's certificate was not accepted"
    return f"TLS failed: {what} [{detail}]"


_USAGE_NAMES = {
    "1.3.6.1.5.5.7.3.1": "server authentication (serverAuth)",
    "1.3.6.1.5.5.7.3.2": "client authentication (clientAuth)",
}


def client_certificate_findings(files: TLSFiles, now: datetime.datetime | None = None) -> list[str]:
    """What is wrong with our own client certificate, as far as it says itself: a key usage
    that excludes client authentication, its validity period, an issuer outside our CA
    file (etcd usually trusts the same CA)."""
    from cryptography import x509  # only when explaining a refusal

    try:
        cert = x509.load_pem_x509_certificate(Path(files.certfile).read_bytes())
    except (OSError, ValueError):
        return []
    findings = []
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and all(u.dotted_string != "1.3.6.1.5.5.7.3.2" for u in usages):
        named = ", ".join(_USAGE_NAMES.get(u.dotted_string, u.dotted_string) for u in usages)
        findings.append(
            f"its extended key usage is {named}, without client authentication "
            "(clientAuth): reissue it with clientAuth"
        )
    now = now or datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    if _naive(cert, "not_valid_after") < now:
        findings.append(f"it expired on {_naive(cert, 'not_valid_after'):%Y-%m-%d}")
    elif _naive(cert, "not_valid_before") > now:
        findings.append(f"it is not valid before {_naive(cert, 'not_valid_before'):%Y-%m-%d}")
    if files.cafile and not findings:
        try:
            pem = Path(files.cafile).read_bytes()
            marker = b"-----BEGIN CERTIFICATE-----"
            cas = [x509.load_pem_x509_certificate(marker + b) for b in pem.split(marker)[1:]]
        except (OSError, ValueError):
            cas = []
        if cas and all(ca.subject != cert.issuer for ca in cas):
            findings.append(
                f"it is issued by {cert.issuer.rfc4514_string()}, not by a CA in "
                "--etcd-cafile: does etcd's --trusted-ca-file hold that CA?"
            )
    return findings


def _naive(cert, field: str) -> datetime.datetime:
    """A validity bound in naive UTC (cryptography >= 42 has ``*_utc``; Debian 12's is 38)."""
    value = getattr(cert, f"{field}_utc", None)
    return value.replace(tzinfo=None) if value is not None else getattr(cert, field)
