"""A loopback HTTP(S) server for download tests: never the network. Serves {path: (status, body, announced
length)} and redirects {path: location}, records every request path; `tls_certificate` makes a
self-signed certificate for 127.0.0.1 (openssl) that clients trust through SSL_CERT_FILE."""
from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import threading
from typing import Dict, List, Optional, Tuple


class LocalServer:
    def __init__(self, files: Dict[str, Tuple[int, bytes, Optional[int]]], redirects: Optional[Dict[str, str]] = None,
                 certificate: Optional[Tuple[str, str]] = None):
        self.files, self.redirects = files, dict(redirects or {})
        self.requests: List[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, body, length = server.files.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*certificate)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def tls_certificate(folder: str) -> Tuple[str, str]:
    """(certificate, key) files of a self-signed certificate for 127.0.0.1, valid for a day."""
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key
