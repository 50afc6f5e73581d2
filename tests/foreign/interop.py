"""Helpers of the foreign-client interop tests: Avro with fastavro (and, for canonical forms and
fingerprints, Java's own Avro), Kafka with confluent-kafka, the `tailor` binary as a child process,
and the platform's events built as plain dicts from the field names in avro/*.avsc. Nothing here
comes from Tailor's code: the .avsc files are the contract.
"""

from __future__ import annotations

import copy
import http.client
import io
import json
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import fastavro
import fastavro.schema
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[2]
AVRO_DIR = REPO / "avro"
SINGLE_OBJECT_MARKER = b"\xc3\x01"


# ---- environment ------------------------------------------------------------------------------


def brokers() -> str:
    b = os.environ.get("TAILOR_TEST_BROKERS", "").strip()
    if not b:
        raise RuntimeError(
            "TAILOR_TEST_BROKERS is not set: run tests/foreign/run.sh (or scripts/test.sh), "
            "which needs a running broker, e.g. TAILOR_TEST_BROKERS=127.0.0.1:19092"
        )
    return b


def tailor_bin() -> str:
    b = os.environ.get("TAILOR_BIN", "").strip()
    if not b or not os.access(b, os.X_OK):
        raise RuntimeError(f"TAILOR_BIN={b!r} is not an executable: set it to the built tailor binary")
    return os.path.abspath(b)  # workers run in their own directories


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_for(what: str, ok: Callable[[], object], timeout: float, interval: float = 0.1, on_fail: Callable[[], str] = lambda: ""):
    """Calls `ok` until it returns something truthy (returned) or `timeout` seconds pass (fails)."""
    deadline = time.monotonic() + timeout
    while True:
        got = ok()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_fail()}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- Avro: the contract, with fastavro only --------------------------------------------------


class Contract:
    """One writer/reader schema: its JSON, fastavro's parsed form, Parsing Canonical Form and
    CRC-64-AVRO fingerprint (fastavro gives the 8 fingerprint bytes little-endian, as hex: the
    order single-object encoding writes them in)."""

    def __init__(self, schema_json, source: str = "<inline>"):
        self.source = source
        self.json = schema_json
        self.text = json.dumps(schema_json)
        self.parsed = fastavro.parse_schema(copy.deepcopy(schema_json))
        self.canonical = fastavro.schema.to_parsing_canonical_form(self.parsed)
        self.fingerprint_hex = fastavro.schema.fingerprint(self.canonical, "CRC-64-AVRO")
        self.fingerprint = bytes.fromhex(self.fingerprint_hex)
        assert len(self.fingerprint) == 8
        self.expanded = fastavro.schema.expand_schema(copy.deepcopy(schema_json))
        self.name = self.parsed.get("name") if isinstance(self.parsed, dict) else None

    @classmethod
    def file(cls, path) -> "Contract":
        path = Path(path)
        c = cls(json.loads(path.read_text()), str(path))
        c.text = path.read_text()
        return c

    def header(self) -> bytes:
        return SINGLE_OBJECT_MARKER + self.fingerprint

    def complete(self, datum):
        """`datum` with every field the schema has (defaults where absent), checked: a key the
        schema does not have, or a missing field without default, is an error in the test."""
        return _complete(self.expanded, datum, self.name or "$")

    def datum(self, datum) -> bytes:
        """The Avro binary encoding of `datum` (completed first), schemaless."""
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.parsed, self.complete(datum), strict=True)
        return buf.getvalue()

    def single_object(self, datum) -> bytes:
        """Avro single-object encoding: C3 01, the 8-byte CRC-64-AVRO fingerprint, the datum."""
        return self.header() + self.datum(datum)

    def confluent(self, schema_id: int, datum) -> bytes:
        """Confluent wire format: magic byte 0, the 4-byte big-endian schema id, the datum."""
        return b"\x00" + struct.pack(">I", schema_id) + self.datum(datum)

    def json_bytes(self, datum) -> bytes:
        """The same record as a JSON object with the Avro field names and plain values."""
        return json.dumps(self.complete(datum)).encode()

    def with_fields(self, add: Iterable[dict] = (), drop: Iterable[str] = ()) -> "Contract":
        """Another version of this record: top-level fields added or removed."""
        j = copy.deepcopy(self.json)
        drop = set(drop)
        j["fields"] = [f for f in j["fields"] if f["name"] not in drop] + list(add)
        return Contract(j, f"{self.source} (variant)")


def _complete(schema, value, path):
    if isinstance(schema, list):
        if value is None:
            if "null" not in schema:
                raise ValueError(f"{path}: null for a union without null")
            return None
        return _complete(_branch(schema, value, path), value, path)
    if isinstance(schema, str):
        return value
    t = schema["type"]
    if isinstance(t, (dict, list)):
        return _complete(t, value, path)
    if t == "record":
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a record, got {value!r}")
        names = [f["name"] for f in schema["fields"]]
        unknown = set(value) - set(names)
        if unknown:
            raise ValueError(f"{path}: fields not in the schema: {sorted(unknown)}")
        out = {}
        for f in schema["fields"]:
            if f["name"] in value:
                out[f["name"]] = _complete(f["type"], value[f["name"]], f"{path}.{f['name']}")
            elif "default" in f:
                out[f["name"]] = copy.deepcopy(f["default"])
            else:
                raise ValueError(f"{path}.{f['name']}: required field missing")
        return out
    if t == "array":
        return [_complete(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if t == "map":
        return {k: _complete(schema["values"], v, f"{path}.{k}") for k, v in value.items()}
    return value


def _branch(union, value, path):
    def kind(s):
        if isinstance(s, str):
            return s
        t = s["type"]
        return t if isinstance(t, str) else kind(t)

    wanted = {
        dict: ("record", "map"),
        list: ("array",),
        str: ("string", "enum"),
        bool: ("boolean",),
        int: ("long", "int"),
        float: ("double", "float"),
        bytes: ("bytes", "fixed"),
    }[type(value)]
    for w in wanted:
        for s in union:
            if kind(s) == w:
                return s
    raise ValueError(f"{path}: no branch of {union} for {value!r}")


CONTRACTS = {p.stem: Contract.file(p) for p in sorted(AVRO_DIR.glob("*.avsc"))}
STOREFRONT = CONTRACTS["storefront"]
BACKOFFICE = CONTRACTS["backoffice"]
PROFILE = CONTRACTS["profile"]
AUDIENCE_CHANGE = CONTRACTS["audience_change"]
JOURNEY_TRIGGER = CONTRACTS["journey_trigger"]
DEAD_LETTER = CONTRACTS["dead_letter"]


def read_datum(writer_schema, payload: bytes, reader_schema=None) -> dict:
    """Decodes a whole Avro datum; bytes left over are an error."""
    bio = io.BytesIO(payload)
    record = fastavro.schemaless_reader(bio, writer_schema, reader_schema)
    rest = len(payload) - bio.tell()
    if rest:
        raise AssertionError(f"{rest} bytes left after the Avro datum")
    return record


def decode_single_object(contract: Contract, payload: bytes) -> dict:
    """Checks the single-object header is C3 01 + the contract's fingerprint, decodes the rest."""
    assert payload[:2] == SINGLE_OBJECT_MARKER, f"not single-object encoded: {payload[:12].hex()}"
    assert payload[2:10] == contract.fingerprint, (
        f"fingerprint {payload[2:10].hex()} is not fastavro's CRC-64-AVRO of {contract.source} "
        f"({contract.fingerprint_hex})"
    )
    return read_datum(contract.parsed, payload[10:])


def confluent_id(payload: bytes) -> int:
    assert len(payload) >= 5 and payload[0] == 0, f"not Confluent-framed: {payload[:8].hex()}"
    return struct.unpack(">I", payload[1:5])[0]


def epoch_ms(v) -> int:
    """fastavro returns timestamp-millis as an aware datetime; back to ms since the epoch."""
    if isinstance(v, int):
        return v
    import datetime as dt

    return (v - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(milliseconds=1)


# ---- Avro: Java's own implementation, the specification's reference --------------------------


def java_pcf(paths: Iterable) -> Dict[str, dict]:
    """Parsing Canonical Form and CRC-64-AVRO of schema files from Java's Avro
    (org.apache.avro.SchemaNormalization, Debian's libavro-java), through tests/foreign/java/Pcf.java
    as run.sh compiled it (TAILOR_JAVA_PCF): by path as given, {"file", "name", "canonical",
    "fingerprint" (the 8 bytes little-endian, as hex)}, or {"file", "error"} for a schema Java's
    parser rejected. One JVM for all the files."""
    cmd = os.environ.get("TAILOR_JAVA_PCF", "").strip()
    if not cmd:
        raise RuntimeError(
            "TAILOR_JAVA_PCF is not set: run tests/foreign/run.sh, which installs Java's Avro "
            "(libavro-java), compiles tests/foreign/java/Pcf.java and sets it"
        )
    paths = [str(p) for p in paths]
    r = subprocess.run([*shlex.split(cmd), *paths], capture_output=True, text=True, encoding="utf-8", timeout=300)
    out = {}
    for line in r.stdout.splitlines():
        e = json.loads(line)
        out[e["file"]] = e
    missing = [p for p in paths if p not in out]
    if missing or r.returncode not in (0, 1):  # 1: some schema rejected, reported per file
        raise RuntimeError(f"{cmd} exited {r.returncode} without an answer for {missing}:\n{r.stdout}\n{r.stderr}")
    return out


# ---- Kafka with confluent-kafka ---------------------------------------------------------------


@dataclass
class Topics:
    storefront: str
    backoffice: str
    profile: str
    audience: str
    journeys: str
    dead_letter: str
    repartition: str
    changelog: str

    @classmethod
    def new(cls, test: str) -> "Topics":
        p = f"f-{test}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        return cls(*(f"{p}.{s}" for s in ("storefront", "backoffice", "profile", "audience", "journeys", "deadletter", "repartition", "changelog")))

    @property
    def inputs(self) -> List[str]:
        return [self.storefront, self.backoffice, self.profile]

    @property
    def outputs(self) -> List[str]:
        return [self.audience, self.journeys, self.dead_letter]

    def create(self, partitions: int) -> None:
        admin = AdminClient({"bootstrap.servers": brokers()})
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in self.inputs + self.outputs],
            operation_timeout=30,
            request_timeout=30,
        )
        for t, f in futures.items():
            f.result(timeout=60)


@dataclass
class Sent:
    """One produced message, as the broker acknowledged it."""

    topic: str
    key: Optional[bytes]
    value: bytes
    partition: int = -1
    offset: int = -1
    timestamp: Optional[int] = None
    label: str = ""


class Kafka:
    """A producer with Kafka's default partitioner (murmur2 of the key, as the Java client and
    the platform's producers) and delivery reports."""

    def __init__(self):
        self.producer = Producer(
            {
                "bootstrap.servers": brokers(),
                "enable.idempotence": True,
                "linger.ms": 5,
                "partitioner": "murmur2_random",
            }
        )

    def send(self, messages: List[Tuple[str, Optional[str], bytes, str]]) -> List[Sent]:
        """Produces (topic, key, value, label) in order and waits until the broker has them all."""
        sent: List[Sent] = []
        errors = []
        for topic, key, value, label in messages:
            s = Sent(topic, key.encode() if isinstance(key, str) else key, value, label=label)
            sent.append(s)

            def report(err, msg, s=s):
                if err is not None:
                    errors.append((s.label, err))
                    return
                s.partition, s.offset = msg.partition(), msg.offset()
                ts_type, ts = msg.timestamp()
                s.timestamp = ts if ts_type != 0 else None

            while True:
                try:
                    self.producer.produce(topic, value=value, key=s.key, on_delivery=report)
                    break
                except BufferError:
                    self.producer.poll(0.05)
        left = self.producer.flush(60)
        assert left == 0, f"{left} messages not delivered within 60s"
        assert not errors, f"delivery failed: {errors}"
        assert all(s.offset >= 0 for s in sent), "a message got no offset"
        for s in sent:
            PRODUCED[(s.topic, s.partition)] = max(PRODUCED.get((s.topic, s.partition), 0), s.offset + 1)
        return sent


# End offset of every (topic, partition) the tests produced to, from the delivery reports. (The
# broker's ListOffsets answer is not used: the development broker reports the base offset of the
# last record batch + 1 as the high watermark, short of the end when a batch holds several records.)
PRODUCED: Dict[Tuple[str, int], int] = {}


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: Dict[str, Optional[bytes]]
    timestamp: Optional[int]


def _consumer(eof: bool) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": brokers(),
            "group.id": f"foreign-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": eof,
        }
    )


def _record(m) -> Record:
    ts_type, ts = m.timestamp()
    return Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                  {k: v for k, v in (m.headers() or [])}, ts if ts_type != 0 else None)


def read_all(topic: str, partitions: int, timeout: float = 30) -> Tuple[List[Record], Dict[int, int]]:
    """Every record on the topic now, read from the beginning until each partition reports its
    end (librdkafka's end-of-partition event), and the end offset of each partition."""
    c = _consumer(eof=True)
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or len(meta.partitions) != partitions:
            raise AssertionError(
                f"topic {topic}: expected {partitions} partitions, the broker says "
                f"{'error ' + str(meta.error) if meta is not None and meta.error else (len(meta.partitions) if meta else 'no such topic')}")
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        records: List[Record] = []
        ends: Dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while len(ends) < partitions:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"reading {topic}: no end of partition {sorted(set(range(partitions)) - set(ends))} within {timeout}s")
            for m in c.consume(num_messages=500, timeout=0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        ends[m.partition()] = m.offset()
                        continue
                    raise KafkaException(m.error())
                ends.pop(m.partition(), None)
                records.append(_record(m))
        return records, ends
    finally:
        c.close()


def read_topic(topic: str, partitions: int) -> List[Record]:
    """Every record on the topic now."""
    return read_all(topic, partitions)[0]


def topic_size(topic: str, partitions: int) -> int:
    """Records on the topic now (offsets start at 0 on these fresh topics)."""
    return sum(read_all(topic, partitions)[1].values())


class TopicReader:
    """Reads every partition of a topic from the beginning, outside any group's commits, and
    keeps what it read (for waiting until something arrives)."""

    def __init__(self, topic: str, partitions: int):
        self.topic = topic
        self.partitions = partitions
        self.consumer = _consumer(eof=False)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.records: List[Record] = []

    def close(self):
        self.consumer.close()

    def poll(self, timeout: float = 0.2) -> List[Record]:
        for m in self.consumer.consume(num_messages=500, timeout=timeout):
            if m.error():
                raise KafkaException(m.error())
            self.records.append(_record(m))
        return list(self.records)

    def read_until(self, what: str, ok: Callable[[List[Record]], bool], timeout: float = 60) -> List[Record]:
        wait_for(what, lambda: ok(self.poll()), timeout, interval=0,
                 on_fail=lambda: f"{len(self.records)} records read from {self.topic}")
        return list(self.records)


# ---- the worker ------------------------------------------------------------------------------


def toml_str(s) -> str:
    return json.dumps(str(s))  # a TOML basic string is a JSON string for these values


def write_config(
    dir: Path,
    topics: Topics,
    segments: Path,
    http_port: int,
    batch: int = 100,
    registry: Optional[dict] = None,
    output_framing: Optional[str] = None,
    schemas_dir: Optional[Path] = None,
    http_token: Optional[str] = None,
) -> Path:
    """A worker config like tests/common/mod.rs `write_config`, plus the interop sections."""
    text = f"""[kafka]
"bootstrap.servers" = {toml_str(brokers())}
"topic.metadata.refresh.interval.ms" = "1000"
"client.id" = "tailor-foreign-{http_port}"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"max.poll.interval.ms" = "10000"
[topics]
storefront = {toml_str(topics.storefront)}
backoffice = {toml_str(topics.backoffice)}
profile = {toml_str(topics.profile)}
audience_changes = {toml_str(topics.audience)}
journey_triggers = {toml_str(topics.journeys)}
dead_letter = {toml_str(topics.dead_letter)}
repartition = {toml_str(topics.repartition)}
changelog = {toml_str(topics.changelog)}
[consumer]
group_id = {toml_str(topics.audience + "-group")}
[processing]
threads = 1
batch_max_messages = {batch}
batch_max_wait = "50ms"
[state]
path = "state"
[segments]
file = {toml_str(segments)}
[http]
listen = "127.0.0.1:{http_port}"
{"token = " + toml_str(http_token) if http_token is not None else ""}
[log]
level = "info,librdkafka=warn"
"""
    if registry is not None:
        text += "[schema_registry]\n" + "".join(f"{k} = {toml_str(v)}\n" for k, v in registry.items())
    if schemas_dir is not None:
        text += f"[schemas]\ndir = {toml_str(schemas_dir)}\n"
    if output_framing is not None:
        text += f"[output]\nframing = {toml_str(output_framing)}\n"
    path = dir / "tailor.toml"
    path.write_text(text)
    return path


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> List[Tuple[str, Dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m.group(2) or "")}
        try:
            out.append((m.group(1), labels, float(m.group(3))))
        except ValueError:
            pass
    return out


class Worker:
    """`tailor run --config CFG` as a child process, stderr to a log file."""

    def __init__(self, dir: Path, config: Path, http_port: int, run: int = 1):
        self.dir = dir
        self.config = config
        self.port = http_port
        self.log = dir / f"worker-{run}.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, ready_timeout: float = 90, wait_ready: bool = True) -> "Worker":
        """Starts the process and waits until /readyz answers 200 or, with `wait_ready=False` (a
        worker that may hold its partitions from the start, e.g. while the registry is down),
        until /healthz does."""
        path, what = ("/readyz", "the worker to be ready") if wait_ready else ("/healthz", "the worker to be up")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [tailor_bin(), "run", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.dir,
            )

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"tailor exited with {self.proc.returncode} before it was ready\n{self.log_text()}")
            return self.status(path) == 200

        wait_for(f"{what} ({path} 200)", ready, ready_timeout, on_fail=self.log_text)
        return self

    def get(self, path: str) -> Optional[Tuple[int, str]]:
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            c.request("GET", path)
            r = c.getresponse()
            body = r.read().decode("utf-8", "replace")
            c.close()
            return r.status, body
        except OSError:
            return None

    def status(self, path: str) -> Optional[int]:
        r = self.get(path)
        return r[0] if r else None

    def metrics(self) -> List[Tuple[str, Dict[str, str], float]]:
        r = self.get("/metrics")
        assert r is not None and r[0] == 200, f"/metrics answered {r}"
        return parse_metrics(r[1])

    def metric(self, name: str, samples=None, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
        samples = self.metrics() if samples is None else samples
        return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items()))

    def stored_offsets(self, samples=None) -> Dict[Tuple[str, int], float]:
        out: Dict[Tuple[str, int], float] = {}
        for n, l, v in self.metrics() if samples is None else samples:
            if n == "tailor_stored_offset":
                out[(l.get("topic", ""), int(l.get("partition", "-1")))] = v
        return out

    def caught_up(self, topics: Topics, partitions: int) -> bool:
        """Every input message produced so far, and everything the worker sent through its
        repartition topic, is committed with the state. Outputs are acknowledged before a commit
        (the README's batch steps), so they are all on their topics then. The metrics are read
        before the repartition topic's end, so what a committed message forwarded is in that end."""
        stored = self.stored_offsets()
        for (t, p), end in PRODUCED.items():
            if t in topics.inputs and stored.get((t, p), 0) < end:
                return False
        _, ends = read_all(topics.repartition, partitions)
        return all(stored.get((topics.repartition, p), 0) >= e for p, e in ends.items())

    def wait_caught_up(self, topics: Topics, partitions: int, timeout: float = 120) -> None:
        wait_for("the worker to commit every input message", lambda: self.caught_up(topics, partitions),
                 timeout, interval=0.2,
                 on_fail=lambda: f"produced {PRODUCED}\nstored offsets: {self.stored_offsets()}\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, and a clean exit within `timeout`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the worker did not stop within {timeout}s of SIGTERM\n{self.log_text()}")
        assert rc == 0, f"the worker exited with {rc}\n{self.log_text()}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def tailor_schemas(*args: str) -> List[dict]:
    """`tailor schemas ARGS --json`, parsed."""
    r = subprocess.run([tailor_bin(), "schemas", *args, "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"tailor schemas {' '.join(args)} --json exited {r.returncode}: {r.stderr}"
    doc = json.loads(r.stdout)
    assert isinstance(doc, list), f"expected a JSON array, got {r.stdout[:200]}"
    return doc


# ---- the platform's events, as plain dicts with the .avsc field names ------------------------

STORE = {
    "environmentId": "00000000-0000-0000-0000-000000000000",
    "environment": "Production",
    "storeUrl": "https://shop.example",
    "websiteId": 1,
    "websiteCode": "base",
    "storeId": 1,
    "storeCode": "main_website_store",
    "storeViewId": 1,
    "storeViewCode": "default",
    "websiteName": "Main Website",
    "storeName": "Main Website Store",
    "storeViewName": "Default Store View",
    "baseCurrencyCode": "USD",
    "storeViewCurrencyCode": "USD",
    "storefrontTemplate": "Luma",
}


def identity(customer=None, ecid=None, email=None) -> dict:
    return {"ecid": ecid, "customerId": customer, "email": email}


def product(sku: str, price: float) -> dict:
    return {
        "productId": 1234,
        "name": f"Product {sku}",
        "sku": sku,
        "topLevelSku": sku,
        "manufacturer": "Acme",
        "countryOfManufacture": "IT",
        "productType": "simple",
        "categories": ["14", "15"],
        "pricing": {"regularPrice": price, "minimalPrice": price, "maximalPrice": price, "currencyCode": "USD"},
        "canonicalUrl": f"https://shop.example/p/{sku.lower()}",
        "mainImageUrl": f"https://shop.example/img/{sku.lower()}.jpg",
        "createdAt": "2024-01-01 10:00:00",
    }


def cart_item(sku: str, qty: float, price: float) -> dict:
    return {
        "id": f"item-{sku}",
        "product": product(sku, price),
        "quantity": qty,
        "prices": {"price": {"value": price, "currency": "USD", "regularPrice": price}},
        "configurableOptions": [{"id": 1, "optionLabel": "Size", "valueId": 2, "valueLabel": "M"}],
        "discountAmount": 0.0,
        "formattedPrice": f"${price:.2f}",
        "canApplyMsrp": False,
    }


def cart(items: List[dict]) -> dict:
    subtotal = sum(i["quantity"] * i["prices"]["price"]["value"] for i in items)
    return {
        "id": "cart-1",
        "items": items,
        "prices": {
            "subtotalExcludingTax": {"value": subtotal, "currency": "USD"},
            "subtotalIncludingTax": {"value": subtotal * 1.1, "currency": "USD"},
        },
        "totalQuantity": sum(i["quantity"] for i in items),
        "possibleOnepageCheckout": True,
        "giftMessageSelected": False,
        "giftWrappingSelected": False,
        "source": "product-page",
        "discountAmount": 0.0,
    }


def storefront(event_type: str, event_id: str, t: int, ident: dict, **contexts) -> dict:
    ev = {
        "eventId": event_id,
        "eventType": event_type,
        "timestamp": t,
        "identity": ident,
        "shopperContext": {"shopperId": "logged-in" if ident.get("customerId") else "guest"},
        "storefrontInstanceContext": STORE,
        "pageContext": {"pageType": "PDP", "pageName": "Product"},
        "referrerUrlContext": {"referrerUrl": "https://search.example/"},
        "channelContext": {"_id": "https://ns.adobe.com/xdm/channels/web", "_type": "https://ns.adobe.com/xdm/channel-types/web"},
        "deviceContext": {"type": "mobile", "screenWidth": 390, "screenHeight": 844, "screenOrientation": "portrait"},
    }
    ev.update(contexts)
    return ev


def storefront_contexts(event_type: str, who: dict, order_id: str = "order-1") -> dict:
    """The contexts the storefront SDK sends with `event_type` (ACDL), for one SKU-1 in the cart."""
    one = [cart_item("SKU-1", 1.0, 10.0)]
    account = {
        "firstName": "Ann",
        "lastName": "Example",
        "emailAddress": who.get("email"),
        "accountId": who.get("customerId"),
        "accountType": "individual",
        "customerGroup": "General",
    }
    requisition = {"id": "rl-1", "name": "Monthly", "description": "Monthly order"}
    items = {"items": [{"sku": "SKU-1", "name": "Product SKU-1", "quantity": 3.0, "productId": 1234,
                        "selectedOptions": [{"attribute": "Size", "value": "M"}]}]}
    return {
        "pageView": {},
        "productPageView": {"productContext": product("SKU-1", 10.0),
                            "categoryContext": {"name": "Bags", "urlKey": "bags", "urlPath": "gear/bags"}},
        "searchRequestSent": {
            "searchUnitId": "search-bar",
            "searchInputContext": {"units": [{
                "searchUnitId": "search-bar", "searchRequestId": "req-1", "queryTypes": ["products"],
                "phrase": "red bag", "pageSize": 20, "currentPage": 1,
                "filter": [{"attribute": "price", "range": {"from": 0.0, "to": 50.0}}],
                "sort": [{"attribute": "relevance", "direction": "DESC"}]}]},
        },
        "searchResponseReceived": {
            "searchUnitId": "search-bar",
            "searchResultsContext": {"units": [{
                "searchUnitId": "search-bar", "searchRequestId": "req-1",
                "products": [{"name": "Red bag", "sku": "SKU-1", "url": "/red-bag", "price": 10.0, "rank": 1}],
                "categories": [{"name": "Bags", "url": "/bags", "rank": 1}],
                "suggestions": [{"suggestion": "red bags", "rank": 1}],
                "page": 1, "perPage": 20, "executionTime": 12.5}]},
        },
        "addToCart": {"productContext": product("SKU-1", 10.0),
                      "shoppingCartContext": cart([cart_item("SKU-1", 2.0, 10.0)]),
                      "changedProductsContext": {"items": [cart_item("SKU-1", 2.0, 10.0)]}},
        "removeFromCart": {"shoppingCartContext": cart(one),
                           "changedProductsContext": {"items": [cart_item("SKU-1", 1.0, 10.0)]}},
        "openCart": {"shoppingCartContext": cart(one)},
        "shoppingCartView": {"shoppingCartContext": cart(one)},
        "startCheckout": {"shoppingCartContext": cart(one)},
        "completeCheckout": {
            "shoppingCartContext": cart(one),
            "orderContext": {
                "orderId": order_id, "email": who.get("email"), "grandTotal": 15.0, "orderType": "checkout",
                "appliedCouponCode": "WELCOME", "subtotalExcludingTax": 10.0, "subtotalIncludingTax": 11.0,
                "salesTax": 1.0, "otherTax": 0.0, "taxAmount": 1.0, "discountAmount": 0.0,
                "paymentMethodCode": "checkmo", "paymentMethodName": "Check / Money order",
                "payments": [{"paymentMethodCode": "checkmo", "paymentMethodName": "Check", "total": 15.0}],
                "shipping": {"shippingMethod": "flatrate", "shippingAmount": 4.0}},
        },
        "signIn": {"accountContext": account},
        "signOut": {"accountContext": account},
        "createAccount": {"accountContext": account},
        "editAccount": {"accountContext": account},
        "createRequisitionList": {"requisitionListContext": requisition},
        "addToRequisitionList": {"requisitionListContext": requisition, "requisitionListItemsContext": items},
        "removeFromRequisitionList": {"requisitionListContext": requisition, "requisitionListItemsContext": items},
        "deleteRequisitionList": {"requisitionListContext": requisition},
    }[event_type]


def backoffice(event_type: str, event_id: str, t: int, ident: dict, order_id: str, total: float) -> dict:
    address = {"street1": "1 Main St", "city": "Leeds", "postalCode": "LS1", "country": "GB"}
    email = ident.get("email")
    return {
        "eventId": event_id,
        "eventType": event_type,
        "timestamp": t,
        "identity": ident,
        "commerceScope": {"environmentID": "env", "websiteCode": "base", "storeCode": "main", "storeViewCode": "default"},
        "channel": {"_type": "https://ns.adobe.com/xdm/channel-types/web"},
        "order": {
            "purchaseID": order_id,
            "priceTotal": total,
            "currencyCode": "GBP",
            "taxAmount": 0.0,
            "discountAmount": 0.0,
            "orderType": "checkout",
            "createdDate": "2024-01-01T10:00:00+00:00",
            "payments": [{"transactionID": "t1", "paymentAmount": total, "paymentType": "credit_card", "currencyCode": "GBP"}],
            "refunds": [{"transactionID": "r1", "refundAmount": 1.0, "refundReason": "return",
                         "refundPaymentType": "credit_card", "currencyCode": "GBP"}]
            if event_type == "orderLineItemRefunded" else [],
            "returns": {"returnID": "ret-1", "returnStatus": "pending", "purchaseID": order_id}
            if event_type.startswith("orderItem") and "Return" in event_type else None,
        },
        "shipping": {"shippingMethod": "flatrate", "shippingAmount": 5.0, "currencyCode": "GBP",
                     "trackingNumber": "1Z999AA10123456784", "address": address},
        "billing": {"address": address},
        "personalEmail": {"address": email} if email else None,
        "productListItems": [{
            "id": "line-1", "SKU": "SKU-1", "name": "Product SKU-1", "quantity": 1.0, "priceTotal": total,
            "discountAmount": 0.0, "currencyCode": "GBP",
            "categories": [{"id": "14", "name": "Bags", "path": "gear/bags"}],
        }],
    }


def profile(event_type: str, event_id: str, t: int, ident: dict, tier: Optional[str] = None,
            email_consent: Optional[str] = None) -> dict:
    email = ident.get("email")
    return {
        "eventId": event_id,
        "eventType": event_type,
        "timestamp": t,
        "identity": ident,
        "person": {"name": {"firstName": "Ann", "lastName": "Example"}, "birthDate": "1990-05-17", "gender": "female"},
        "personalEmail": {"address": email} if email else None,
        "mobilePhone": {"number": "+44 113 496 0000"},
        "billingAddress": {"street1": "1 Main St", "city": "Leeds", "country": "GB"},
        "userAccount": {"startDate": "2024-01-01T10:00:00Z", "status": "active"},
        "loyalty": {"tier": tier, "status": "active", "points": 1200.0} if tier else None,
        "consents": {"marketingEmail": email_consent, "marketingSms": "n"} if email_consent else None,
        "customerGroup": "General",
    }


STOREFRONT_TYPES = [
    "pageView", "productPageView", "searchRequestSent", "searchResponseReceived", "addToCart",
    "removeFromCart", "openCart", "shoppingCartView", "startCheckout", "completeCheckout", "signIn",
    "signOut", "createAccount", "editAccount", "createRequisitionList", "addToRequisitionList",
    "removeFromRequisitionList", "deleteRequisitionList",
]
BACKOFFICE_TYPES = [
    "orderPlaced", "orderInvoiced", "orderItemsShipped", "orderShipmentCompleted",
    "orderItemsReturnInitiated", "orderItemReturnCompleted", "orderLineItemRefunded", "orderCancelled",
]
PROFILE_TYPES = ["profileRecord", "accountCreated", "accountUpdated", "accountDeleted"]


def seen_segment(event_type: str) -> str:
    return "seen-" + event_type.lower()


def segments_yaml() -> str:
    """The test's segments: one per event type (its first event enters it), the shopper's state
    (loyalty tier, cart, orders), and journeys on an order (with e-mail consent) and on gold."""
    lines = ["# Written by tests/foreign: segments and journeys of the interop tests.", "segments:"]
    for t in STOREFRONT_TYPES + BACKOFFICE_TYPES + PROFILE_TYPES[:3]:
        lines += [f"  - id: {seen_segment(t)}", f"    rule: count({t}, 7d) >= 1"]
    lines += [
        "  - id: gold",
        '    rule: loyalty.tier == "gold"',
        "  - id: cart-holders",
        "    rule: cart.items > 0",
        "  - id: buyers",
        "    rule: orders.count >= 1",
        "journeys:",
        "  - id: post-purchase",
        "    on_event: [completeCheckout, orderPlaced]",
        "    consent: email",
        "  - id: welcome-gold",
        "    on_enter: gold",
    ]
    return "\n".join(lines) + "\n"


class Deployment:
    """A test's own topics, segments file, state directory and config, ready to start workers."""

    def __init__(self, name: str, partitions: int, dir: Path, **config):
        self.name = name
        self.partitions = partitions
        self.dir = dir
        self.topics = Topics.new(name)
        self.topics.create(partitions)
        self.port = free_port()
        self.segments = dir / "segments.yaml"
        self.segments.write_text(segments_yaml())
        self.config = write_config(dir, self.topics, self.segments, self.port, **config)
        self.workers: List[Worker] = []
        self.readers: List[TopicReader] = []

    def start(self) -> Worker:
        w = Worker(self.dir, self.config, self.port, run=len(self.workers) + 1)
        self.workers.append(w)
        return w.start()

    def reader(self, topic: str) -> TopicReader:
        r = TopicReader(topic, self.partitions)
        self.readers.append(r)
        return r

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        for r in self.readers:
            try:
                r.close()
            except Exception:
                pass
