"""A small Kubernetes API client: JSON requests, paged lists and streaming watches.

Built on cni_calico.kube's access (kubeconfig or in-cluster, token re-read when it rotates, an exec
plugin's token or client certificate renewed when it expires: new connections use the new one);
stdlib only. Each watch has a connection of its own (a watch holds its connection for minutes);
other requests share one keep-alive connection under a lock, re-opened after an error.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from cni_calico.kube import ApiAccess, KubeError, tls_context

LIST_PAGE = 500  # items per list page (client-go's reflector uses 500 too)


class ApiStatus(KubeError):
    """The API answered with an error Status."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason = code, reason


class Gone(ApiStatus):
    """410 Gone: the resourceVersion asked for is too old (compacted); list again."""


@dataclass
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion") or "")


def _status_error(code: int, doc: object, fallback: str, access: ApiAccess | None = None) -> ApiStatus:
    doc = doc if isinstance(doc, dict) else {}
    if code == 401 and access is not None:
        access.unauthorized()
    cls = Gone if code == 410 else ApiStatus
    return cls(code, str(doc.get("reason") or ""), str(doc.get("message") or fallback))


class KubeApi:
    def __init__(self, access: ApiAccess, timeout: float = 10.0) -> None:
        self.access, self.timeout = access, timeout
        url = urlsplit(access.server)
        self.scheme, self.host, self.prefix = url.scheme, url.hostname or "", url.path.rstrip("/")
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._ctx = tls_context(access) if url.scheme == "https" else None
        self._ctx_generation = access.cert_generation
        self._ctx_lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def _context(self):
        """The TLS context with the current client certificate: an exec plugin's that expired is
        renewed (the plugin run again) and the context built anew with it."""
        with self._ctx_lock:
            self.access.refresh()
            if self.access.cert_generation != self._ctx_generation:
                self._ctx, self._ctx_generation = tls_context(self.access), self.access.cert_generation
            return self._ctx

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self._context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self, content_type: str = "") -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "calico-kube-controllers (cni-calico)"}
        token = self.access.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def request(self, method: str, path: str, body: object = None,
                content_type: str = "application/json") -> dict:
        """One request on the shared connection; the answer's JSON object, or ApiStatus / KubeError."""
        data = None if body is None else json.dumps(body).encode()
        with self._lock:
            if self._conn is not None and self.scheme == "https" and self._ctx is not self._context():
                self._conn.close()  # made with a client certificate since renewed
                self._conn = None
            for attempt in (1, 2):  # a kept-alive connection the server closed: one fresh try
                if self._conn is None:
                    self._conn = self._connect(self.timeout)
                try:
                    self._conn.request(method, self.prefix + path, body=data,
                                       headers=self._headers(content_type if data is not None else ""))
                    resp = self._conn.getresponse()
                    raw = resp.read()
                    break
                except (OSError, http.client.HTTPException) as exc:
                    self._conn.close()
                    self._conn = None
                    if attempt == 2 or not isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError,
                                                            ConnectionResetError)):
                        raise KubeError(f"cannot reach the Kubernetes API at {self.access.server}: {exc}") from None
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = None
        if resp.status >= 300:
            raise _status_error(resp.status, doc, raw[:200].decode(errors="replace"), self.access)
        if not isinstance(doc, dict):
            raise KubeError(f"the Kubernetes API sent no JSON object for {method} {path}")
        return doc

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def probe(self, path: str) -> int:
        """The HTTP status of a GET of `path` on a connection of its own (/healthz answers plain text)."""
        conn = self._connect(self.timeout)
        try:
            conn.request("GET", self.prefix + path, headers=self._headers())
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException) as exc:
            raise KubeError(f"cannot reach the Kubernetes API at {self.access.server}: {exc}") from None
        finally:
            conn.close()

    def list(self, path: str, **params: str) -> tuple[list[dict], str]:
        """Every item of a collection, page by page, and the list's resourceVersion (where a watch
        starts). An expired continue token (410) restarts the list from the beginning."""
        items: list[dict] = []
        cont = ""
        while True:
            query = {**params, "limit": str(LIST_PAGE), **({"continue": cont} if cont else {})}
            try:
                doc = self.get(f"{path}?{urlencode(query)}")
            except Gone:
                if not cont:
                    raise
                items, cont = [], ""
                continue
            items.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
            meta = doc.get("metadata") or {}
            cont = str(meta.get("continue") or "")
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300,
              **params: str) -> Iterator[WatchEvent]:
        """The events after `resource_version` until the server ends the watch (timeoutSeconds).
        Raises Gone when that version is too old, ApiStatus / KubeError on other failures."""
        query = {**params, "watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)}
        conn = self._connect(timeout_seconds + 30)  # the server closes first; this catches a dead peer
        try:
            try:
                conn.request("GET", f"{self.prefix}{path}?{urlencode(query)}", headers=self._headers())
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise KubeError(f"cannot watch {path} at {self.access.server}: {exc}") from None
            if resp.status != 200:
                raw = resp.read()
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = None
                raise _status_error(resp.status, doc, raw[:200].decode(errors="replace"), self.access)
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise KubeError(f"watch of {path} broke: {exc}") from None
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    raise KubeError(f"watch of {path} sent a line that is not JSON: {line[:200]!r}") from None
                kind, obj = doc.get("type"), doc.get("object") or {}
                if kind == "ERROR":  # a Status inside the stream: 410 when the version was compacted
                    raise _status_error(int(obj.get("code") or 500), obj, "watch error")
                yield WatchEvent(str(kind), obj)
        finally:
            conn.close()
