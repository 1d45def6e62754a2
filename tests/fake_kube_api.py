"""A stand-in for the Kubernetes API server: exactly the two GETs the plugin makes, over HTTPS.

A test double, kept for the plugin's pod-lookup tests (tests/integration/test_kubernetes.py: auth
variants, failures, request counts), run inside a lab node namespace, where the plugin runs. The
controllers, manifests and end-to-end tests run the real kube-apiserver (tests/kube_apiserver.py).
It answers, in the API's real JSON shape (kind, apiVersion v1,
metadata with name, namespace, uid, resourceVersion, labels, annotations):

    GET /api/v1/namespaces/{ns}/pods/{name}   -> a Pod, or a 404 Status
    GET /api/v1/namespaces/{ns}               -> a Namespace, or a 404 Status

and anything else with a 404 Status. A request is authorised by `Authorization: Bearer <token>`
(a wrong token is a 401 Status, as from the real API) or, without that header, by a client
certificate signed by --client-ca. The objects come from the --data JSON file, re-read on every
request so a test can change them while the server runs:

    {"namespaces": {"<ns>": {"labels": {...}, "annotations": {...}}},
     "pods": {"<ns>/<name>": {"labels": {...}, "annotations": {...}}}}

Every request is appended to --requests as a JSON line (method, path, auth). Prints
`ready <port>` once it listens. Run: python -m tests.fake_kube_api --cert … --key … --data …
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
           "reason": reason, "code": code}
    if details:
        out["details"] = details
    return out


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def namespace_object(name: str, spec: dict) -> dict:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": _uid("ns", name),
            "resourceVersion": "101",
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": {"kubernetes.io/metadata.name": name, **(spec.get("labels") or {})},
            "annotations": dict(spec.get("annotations") or {}),
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def pod_object(namespace: str, name: str, spec: dict) -> dict:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": _uid("pod", namespace, name),
            "resourceVersion": "202",
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": dict(spec.get("labels") or {}),
            "annotations": dict(spec.get("annotations") or {}),
        },
        "spec": {
            "containers": [{"name": "app", "image": "busybox"}],
            "serviceAccountName": spec.get("serviceAccountName", "default"),
            "nodeName": spec.get("nodeName", "node1"),
        },
        "status": {"phase": "Pending"},
    }


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the plugin makes both GETs on one connection
    server: Server

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        sys.stderr.write("fake-kube-api: " + (format % args) + "\n")

    def _send(self, code: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _auth(self) -> str:
        header = self.headers.get("Authorization")
        if header is not None:
            return "token" if header == f"Bearer {self.server.token}" else ""
        return "cert" if self.connection.getpeercert() else ""

    def do_GET(self):  # noqa: N802 - http.server's name
        auth = self._auth()
        with open(self.server.requests_path, "a") as f:
            f.write(json.dumps({"method": "GET", "path": self.path, "auth": auth or "refused"}) + "\n")
        if not auth:
            return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
        with open(self.server.data_path) as f:
            data = json.load(f)
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 4 and parts[:3] == ["api", "v1", "namespaces"]:
            spec = (data.get("namespaces") or {}).get(parts[3])
            if spec is None:
                return self._send(404, _status(404, "NotFound", f'namespaces "{parts[3]}" not found',
                                               {"name": parts[3], "kind": "namespaces"}))
            return self._send(200, namespace_object(parts[3], spec))
        if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            spec = (data.get("pods") or {}).get(f"{parts[3]}/{parts[5]}")
            if spec is None:
                return self._send(404, _status(404, "NotFound", f'pods "{parts[5]}" not found',
                                               {"name": parts[5], "kind": "pods"}))
            return self._send(200, pod_object(parts[3], parts[5], spec))
        return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, tls: ssl.SSLContext, token: str, data_path: str, requests_path: str) -> None:
        super().__init__(("127.0.0.1", port), Api)
        self.tls, self.token, self.data_path, self.requests_path = tls, token, data_path, requests_path

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the request's own thread, never in the accepting one.
        conn = self.tls.wrap_socket(request, server_side=True)
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fake_kube_api")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--data", required=True)
    parser.add_argument("--requests", required=True)
    args = parser.parse_args(argv)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        tls.load_verify_locations(args.client_ca)
        tls.verify_mode = ssl.CERT_OPTIONAL
    server = Server(args.port, tls, args.token, args.data, args.requests)
    print(f"ready {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
