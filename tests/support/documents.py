"""Client ID metadata documents served on 127.0.0.1, over http or https, as a client publishes them.

The https server's certificate comes from a throwaway test CA; a live server trusts it through
SSL_CERT_FILE (OpenSSL's own variable, which `ssl.create_default_context()` reads), so the
server's real certificate check runs unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class DocumentsCA:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_test_ca(directory: Path) -> DocumentsCA:
    """A CA and a certificate it signed for 127.0.0.1 and localhost, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test documents CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "test-ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "documents.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "documents.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return DocumentsCA(ca_file=ca_file, cert_file=cert_file, key_file=key_file)


@dataclass
class Route:
    body: bytes
    content_type: str = "application/json"
    status: int = 200
    cache_control: str = "max-age=3600"
    delay: float = 0.0  # seconds before the headers
    drip: float = 0.0  # seconds between the body's bytes (the headers come at once)


class DocumentServer:
    """Serves whatever `put()` says at each path; counts the GETs each path received."""

    def __init__(self, tls: DocumentsCA | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                with server._lock:
                    server.hits[path] += 1
                    route = server.routes.get(path)
                if route is None:
                    route = Route(b'{"error": "not found"}', status=404)
                if route.delay:
                    time.sleep(route.delay)
                # The server under test may have given up already (the slow-document tests).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.send_response(route.status)
                    self.send_header("Content-Type", route.content_type)
                    self.send_header("Content-Length", str(len(route.body)))
                    if route.cache_control:
                        self.send_header("Cache-Control", route.cache_control)
                    self.end_headers()
                    if not route.drip:
                        self.wfile.write(route.body)
                        return
                    self.wfile.flush()
                    for offset in range(len(route.body)):
                        self.wfile.write(route.body[offset : offset + 1])
                        self.wfile.flush()
                        time.sleep(route.drip)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert_file, tls.key_file)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.origin}{path}"

    def put(self, path: str, body: bytes | dict[str, Any], **route: Any) -> str:
        """Serve `body` (a dict becomes JSON) at `path`; returns its URL."""
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        with self._lock:
            self.routes[path] = Route(raw, **route)
        return self.url(path)

    def document(self, path: str, **fields: Any) -> str:
        """A valid public-client document at `path` whose client_id is its own URL."""
        url = self.url(path)
        document = {
            "client_id": url,
            "client_name": "Document client",
            "redirect_uris": ["http://localhost:33420/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            **fields,
        }
        cache_control = document.pop("cache_control", "max-age=3600")
        return self.put(path, document, cache_control=cache_control)

    def start(self) -> DocumentServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
