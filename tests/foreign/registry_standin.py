"""A stand-in for a Confluent-compatible schema registry, for Tailor's foreign-client tests.

No Confluent Schema Registry can be installed on the test machines (it needs a JVM and Confluent's
packages, and only PyPI is reachable), so this small server implements the part of the registry's
documented REST API that producers, consumers and Tailor use, with the documented request and
response shapes, status codes and error codes
(https://docs.confluent.io/platform/current/schema-registry/develop/api.html):

    GET  /schemas/ids/{id}                          {"schema": "<schema JSON as a string>"}
                                                    404 {"error_code": 40403, "message": "Schema not found"}
    GET  /schemas/ids/{id}/versions                 [{"subject": s, "version": v}, ...]
    GET  /schemas/types                             ["AVRO"]
    GET  /subjects                                  ["<subject>", ...]
    GET  /subjects/{subject}/versions               [1, 2, ...]             404 40401 Subject not found
    GET  /subjects/{subject}/versions/{v|latest}    {"subject", "version", "id", "schema"}
                                                    404 40401 Subject not found / 40402 Version not found
    POST /subjects/{subject}/versions               body {"schema": "..."} -> {"id": N}
                                                    (the same schema gets the same id, under any subject;
                                                    registering it again under a subject adds no version)
    POST /subjects/{subject}                        body {"schema": "..."} -> {"subject", "version", "id", "schema"}
                                                    (is this schema registered under the subject?) 404 40403
    POST /compatibility/subjects/{subject}/versions/{v|latest}   {"is_compatible": true}
                                                    (every schema is; 404 40401 / 40402 as above)
    GET  /config, GET /config/{subject}             {"compatibilityLevel": "BACKWARD"}

Request bodies must be JSON with one of the content types the registry accepts
(application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json);
others get 415. Responses are application/vnd.schemaregistry.v1+json. Only AVRO schemas are
supported ("schemaType" absent or "AVRO"); a schema that is not valid JSON gets 422 / 42201.
Schema ids start at 1 and are global, as in the registry.

Authentication is optional: with a username and password, every request needs HTTP basic auth
(401 / 40101 without it); with a bearer token, `Authorization: Bearer <token>`.

The server speaks HTTP/1.1 with keep-alive, like the real registry. `stop()` closes the listening
socket *and* every open connection (an outage, as a client sees it: refused connections, pooled
connections cut); `start()` listens again on the same port with the same schemas. Every request is
recorded in `requests` (method, path, content type, whether it was authorised) for the tests.

In-process (from pytest):

    reg = RegistryStandIn(port=0, username="u", password="p")
    reg.start()            # reg.url == "http://127.0.0.1:<port>"
    schema_id = reg.register("orders-value", schema_json_text)
    reg.stop(); reg.start()   # same port, same contents

Stand-alone:

    python3 registry_standin.py --port 8081 [--host 127.0.0.1] [--username U --password P] [--bearer-token T]

Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import re
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPTED_REQUEST_TYPES = (
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
)


@dataclass
class Request:
    method: str
    path: str
    content_type: Optional[str]
    authorised: bool
    status: int = 0


class _ApiError(Exception):
    def __init__(self, status: int, error_code: int, message: str):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _normalise(schema_text: str) -> str:
    """The form two schema texts are compared in: the same JSON gets the same id."""
    return json.dumps(json.loads(schema_text), sort_keys=True, separators=(",", ":"))


class RegistryStandIn:
    """The registry's state (survives stop/start) and its HTTP server."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        username: Optional[str] = None,
        password: Optional[str] = None,
        bearer_token: Optional[str] = None,
    ):
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.bearer_token = bearer_token
        self._lock = threading.Lock()
        # id -> schema text as first registered
        self._schemas: Dict[int, str] = {}
        self._ids_by_form: Dict[str, int] = {}
        # subject -> [(version, id)], oldest first
        self._subjects: Dict[str, List[Tuple[int, int]]] = {}
        self.requests: List[Request] = []
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._connections: set = set()

    # ---- state, usable without HTTP -------------------------------------------------------

    def register(self, subject: str, schema_text: str) -> int:
        """Registers `schema_text` under `subject` (as POST /subjects/{subject}/versions does)."""
        try:
            form = _normalise(schema_text)
        except ValueError as e:
            raise _ApiError(422, 42201, f"Invalid schema: {e}") from None
        with self._lock:
            schema_id = self._ids_by_form.get(form)
            if schema_id is None:
                schema_id = max(self._schemas, default=0) + 1
                self._schemas[schema_id] = schema_text
                self._ids_by_form[form] = schema_id
            versions = self._subjects.setdefault(subject, [])
            if all(i != schema_id for _, i in versions):
                versions.append((len(versions) + 1, schema_id))
            return schema_id

    def schema(self, schema_id: int) -> Optional[str]:
        with self._lock:
            return self._schemas.get(schema_id)

    def subjects(self) -> List[str]:
        with self._lock:
            return sorted(self._subjects)

    def latest(self, subject: str) -> Optional[Tuple[int, int]]:
        """(version, id) of the subject's latest version."""
        with self._lock:
            versions = self._subjects.get(subject)
            return versions[-1] if versions else None

    def requests_for(self, method: str, prefix: str) -> List[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    # ---- server ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "RegistryStandIn":
        """Listens on `port` (a free one if 0, kept for later starts) and serves in a thread."""
        if self._server is not None:
            raise RuntimeError("already running")
        registry = self

        class Handler(_Handler):
            pass

        Handler.registry = registry
        server = _Server((self.host, self.port), Handler)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening and cuts every open connection. The schemas are kept."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._connections)
            self._connections.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "RegistryStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- request handling -----------------------------------------------------------------

    def _authorised(self, header: Optional[str]) -> bool:
        if self.username is None and self.bearer_token is None:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if self.username is not None and scheme.lower() == "basic":
            try:
                user, _, pw = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return hmac.compare_digest(user, self.username) and hmac.compare_digest(
                pw, self.password or ""
            )
        if self.bearer_token is not None and scheme.lower() == "bearer":
            return hmac.compare_digest(value, self.bearer_token)
        return False

    def _version_entry(self, subject: str, version: str) -> Tuple[int, int]:
        with self._lock:
            versions = self._subjects.get(subject)
            if not versions:
                raise _ApiError(404, 40401, "Subject not found")
            if version == "latest":
                return versions[-1]
            if not version.lstrip("-").isdigit():
                raise _ApiError(422, 42202, "Invalid version")
            v = int(version)
            if v == -1:
                return versions[-1]
            for entry in versions:
                if entry[0] == v:
                    return entry
            raise _ApiError(404, 40402, "Version not found")

    def _schema_from_body(self, body: bytes) -> str:
        try:
            doc = json.loads(body or b"null")
        except ValueError:
            raise _ApiError(422, 42201, "Invalid schema: request body is not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str):
            raise _ApiError(422, 42201, "Invalid schema: body needs a \"schema\" string")
        if doc.get("schemaType", "AVRO") != "AVRO":
            raise _ApiError(422, 42201, "Invalid schema: only AVRO is supported by this stand-in")
        try:
            json.loads(doc["schema"])
        except ValueError as e:
            raise _ApiError(422, 42201, f"Invalid schema: {e}") from None
        return doc["schema"]

    def handle(self, method: str, path: str, body: bytes) -> Tuple[int, object]:
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        if method == "GET":
            if len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
                schema = self.schema(_int(parts[2]))
                if schema is None:
                    raise _ApiError(404, 40403, "Schema not found")
                return 200, {"schema": schema}
            if len(parts) == 4 and parts[:2] == ["schemas", "ids"] and parts[3] == "versions":
                schema_id = _int(parts[2])
                if self.schema(schema_id) is None:
                    raise _ApiError(404, 40403, "Schema not found")
                with self._lock:
                    return 200, [
                        {"subject": s, "version": v}
                        for s, versions in sorted(self._subjects.items())
                        for v, i in versions
                        if i == schema_id
                    ]
            if parts == ["schemas", "types"]:
                return 200, ["AVRO"]
            if parts == ["subjects"]:
                return 200, self.subjects()
            if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                with self._lock:
                    versions = self._subjects.get(parts[1])
                    if not versions:
                        raise _ApiError(404, 40401, "Subject not found")
                    return 200, [v for v, _ in versions]
            if len(parts) == 4 and parts[0] == "subjects" and parts[2] == "versions":
                version, schema_id = self._version_entry(parts[1], parts[3])
                return 200, {
                    "subject": parts[1],
                    "version": version,
                    "id": schema_id,
                    "schema": self.schema(schema_id),
                }
            if parts == ["config"] or (len(parts) == 2 and parts[0] == "config"):
                return 200, {"compatibilityLevel": "BACKWARD"}
        elif method == "POST":
            if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                schema_id = self.register(parts[1], self._schema_from_body(body))
                return 200, {"id": schema_id}
            if len(parts) == 2 and parts[0] == "subjects":
                form = _normalise(self._schema_from_body(body))
                with self._lock:
                    versions = self._subjects.get(parts[1])
                    if not versions:
                        raise _ApiError(404, 40401, "Subject not found")
                    schema_id = self._ids_by_form.get(form)
                    for v, i in versions:
                        if i == schema_id:
                            return 200, {
                                "subject": parts[1],
                                "version": v,
                                "id": i,
                                "schema": self._schemas[i],
                            }
                raise _ApiError(404, 40403, "Schema not found")
            if (
                len(parts) == 5
                and parts[:2] == ["compatibility", "subjects"]
                and parts[3] == "versions"
            ):
                self._schema_from_body(body)
                self._version_entry(parts[2], parts[4])  # 404 for a subject or version it lacks
                return 200, {"is_compatible": True}
        raise _ApiError(404, 404, "HTTP 404 Not Found")


def _int(s: str) -> int:
    if not re.fullmatch(r"-?\d{1,10}", s):
        raise _ApiError(404, 40403, "Schema not found")
    return int(s)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # Connections cut by stop() or by clients are part of the tests, not errors to print.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    registry: RegistryStandIn = None  # set per server
    server_version = "registry-standin/1"

    def setup(self):
        super().setup()
        with self.registry._lock:
            self.registry._connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.registry._lock:
                self.registry._connections.discard(self.connection)

    def log_message(self, format, *args):  # quiet: the tests read `requests` instead
        pass

    def _respond(self, status: int, doc: object, extra_headers=()) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, method: str) -> None:
        reg = self.registry
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        content_type = self.headers.get("Content-Type")
        authorised = reg._authorised(self.headers.get("Authorization"))
        record = Request(method, path, content_type, authorised)
        with reg._lock:
            reg.requests.append(record)
        try:
            if not authorised:
                record.status = 401
                self._respond(
                    401,
                    {"error_code": 40101, "message": "Unauthorized"},
                    [("WWW-Authenticate", 'Basic realm="schema-registry"')]
                    if reg.username is not None
                    else [("WWW-Authenticate", "Bearer")],
                )
                return
            if method == "POST":
                ctype = (content_type or "").split(";")[0].strip().lower()
                if ctype not in ACCEPTED_REQUEST_TYPES:
                    raise _ApiError(415, 415, f"HTTP 415 Unsupported Media Type: {content_type}")
            status, doc = reg.handle(method, path, body)
        except _ApiError as e:
            status, doc = e.status, {"error_code": e.error_code, "message": e.message}
        except Exception as e:  # a bug here must not look like a registry answer
            status, doc = 500, {"error_code": 50001, "message": f"stand-in error: {e!r}"}
        record.status = status
        self._respond(status, doc)

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def do_DELETE(self):
        self._serve("DELETE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--bearer-token")
    args = ap.parse_args()
    reg = RegistryStandIn(
        port=args.port,
        host=args.host,
        username=args.username,
        password=args.password,
        bearer_token=args.bearer_token,
    ).start()
    print(f"schema registry stand-in listening on {reg.url}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        reg.stop()


if __name__ == "__main__":
    main()
