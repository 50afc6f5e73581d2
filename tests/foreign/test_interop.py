"""Foreign-client interop: Tailor against clients that share no code with it.

Producers and consumers here are Python: fastavro (Avro, Parsing Canonical Form, CRC-64-AVRO
fingerprints, single-object encoding) and confluent-kafka (librdkafka's Python client), with a
Confluent-compatible schema registry stand-in (registry_standin.py); canonical forms and
fingerprints are also checked against Java's own Avro (the specification's reference, through
java/Pcf.java). The only thing shared with
Tailor is the contract: the schemas in avro/*.avsc, the documented framings and the documented
configuration. Run with tests/foreign/run.sh (TAILOR_TEST_BROKERS, TAILOR_BIN, TAILOR_JAVA_PCF).
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import random
import time
import urllib.request
from pathlib import Path

import fastavro
import fastavro.schema
import pytest

from interop import (
    AUDIENCE_CHANGE,
    AVRO_DIR,
    BACKOFFICE,
    BACKOFFICE_TYPES,
    CONTRACTS,
    DEAD_LETTER,
    JOURNEY_TRIGGER,
    PROFILE,
    STOREFRONT,
    STOREFRONT_TYPES,
    Contract,
    PRODUCED,
    Kafka,
    Worker,
    backoffice,
    confluent_id,
    decode_single_object,
    epoch_ms,
    free_port,
    identity,
    java_pcf,
    now_ms,
    profile,
    read_all,
    read_datum,
    read_topic,
    seen_segment,
    storefront,
    storefront_contexts,
    tailor_schemas,
    topic_size,
    wait_for,
    write_config,
)

# ---- (a) fingerprints: Parsing Canonical Form and CRC-64-AVRO, Tailor vs fastavro and Java -----


@pytest.fixture(scope="module")
def builtin_schemas(tailor_bin):
    return tailor_schemas()


def _entry_for_file(entries, contract: Contract, file_name: str):
    found = [
        e
        for e in entries
        if e.get("name") == contract.name
        and Path(str(e.get("file", ""))).name == file_name
        and "compat" not in Path(str(e.get("file", ""))).parts
    ]
    assert len(found) == 1, f"expected one entry for {file_name} ({contract.name}) in {json.dumps(entries)[:2000]}"
    return found[0]


@pytest.mark.parametrize("stem", sorted(CONTRACTS))
def test_contract_schemas_have_fastavros_canonical_form_and_fingerprint(stem, builtin_schemas):
    c = CONTRACTS[stem]
    e = _entry_for_file(builtin_schemas, c, f"{stem}.avsc")
    assert e["canonical"] == c.canonical, f"Parsing Canonical Form of avro/{stem}.avsc"
    assert str(e["fingerprint"]).lower() == c.fingerprint_hex, (
        f"CRC-64-AVRO of avro/{stem}.avsc: tailor {e['fingerprint']}, fastavro {c.fingerprint_hex}"
    )


# Schemas in the style of the Avro specification's own examples.
SPEC_SCHEMAS = {
    "primitive-int-as-string": "int",
    "primitive-int-as-object": {"type": "int"},
    "primitive-null": "null",
    "primitive-boolean-as-object": {"type": "boolean"},
    "primitive-long": "long",
    "primitive-float-as-object": {"type": "float"},
    "primitive-double": "double",
    "primitive-bytes-as-object": {"type": "bytes"},
    "primitive-string": "string",
    "logical-timestamp-millis": {"type": "long", "logicalType": "timestamp-millis"},
    "logical-decimal-bytes": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2},
    "record-linked-list": {
        "type": "record",
        "name": "LongList",
        "namespace": "org.example",
        "doc": "Linked list of 64-bit values.",
        "aliases": ["LinkedLongs"],
        "fields": [
            {"name": "value", "type": "long", "doc": "The value.", "default": 0, "order": "descending"},
            {"name": "next", "type": ["null", "LongList"], "default": None, "aliases": ["tail"], "order": "ignore"},
        ],
    },
    "enum-with-default": {
        "type": "enum",
        "name": "Suit",
        "namespace": "cards",
        "doc": "A card suit.",
        "aliases": ["CardSuit"],
        "symbols": ["SPADES", "HEARTS", "DIAMONDS", "CLUBS"],
        "default": "SPADES",
    },
    "array": {"type": "array", "items": "string", "default": []},
    "map": {"type": "map", "values": "long", "default": {}},
    "fixed": {"type": "fixed", "size": 16, "name": "md5", "namespace": "org.example.hash", "aliases": ["hash"]},
    "union": ["null", "string", {"type": "array", "items": "int"}],
    "nested-names-and-namespaces": {
        "type": "record",
        "name": "Outer",
        "namespace": "a.b",
        "fields": [
            # inherits the enclosing namespace: a.b.Inner
            {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}},
            {"name": "byShortName", "type": "Inner"},
            {"name": "byFullName", "type": "a.b.Inner"},
            # a dotted name is a full name: its namespace attribute is ignored
            {"name": "other", "type": {"type": "record", "name": "x.y.Other", "namespace": "ignored.ns", "fields": [
                {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},  # x.y.Kind
            ]}},
            {"name": "kindAgain", "type": "x.y.Kind"},
            {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
            {"name": "hashes", "type": {"type": "map", "values": "Hash"}},
            {"name": "inners", "type": {"type": "array", "items": "Inner"}, "default": []},
            {"name": "maybe", "type": ["null", "x.y.Other", "Hash"], "default": None},
        ],
    },
    "record-logical-fields": {
        "type": "record",
        "name": "Payment",
        "namespace": "org.example.pay",
        "fields": [
            {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "amount", "type": {"type": "fixed", "name": "Amount", "size": 8, "logicalType": "decimal",
                                        "precision": 18, "scale": 2}},
            {"name": "tags", "type": {"type": "map", "values": {"type": "array", "items": "string"}}, "default": {}},
            {"name": "note", "type": ["null", "string"], "default": None, "doc": "Free text."},
        ],
    },
    "record-without-namespace-using-namespaced-type": {
        "type": "record",
        "name": "Envelope",
        "fields": [
            {"name": "header", "type": {"type": "record", "name": "Header", "namespace": "org.example.h",
                                        "fields": [{"name": "v", "type": "int", "default": 1}]},
             "default": {"v": 1}},
            {"name": "again", "type": "org.example.h.Header", "default": {"v": 2}},
            {"name": "flag", "type": "boolean", "default": True},
        ],
    },
    # An error (Avro IDL's) is written as a record in the canonical form.
    "error-type": {
        "type": "record",
        "name": "Failure",
        "namespace": "org.example.err",
        "fields": [
            {"name": "problem", "type": {"type": "error", "name": "Problem", "doc": "An IDL error.",
                                         "fields": [{"name": "message", "type": "string"}]}},
            {"name": "again", "type": ["null", "Problem"], "default": None},
        ],
    },
    "error-type-top-level": {"type": "error", "name": "Oops", "namespace": "org.example.err",
                             "fields": [{"name": "code", "type": "int"}]},
    # The same short name in two namespaces: a short reference means the enclosing namespace's.
    "same-short-name-in-two-namespaces": {
        "type": "record",
        "name": "X",
        "fields": [
            {"name": "inner", "type": {"type": "record", "name": "Y", "namespace": "a", "fields": [
                {"name": "ax", "type": {"type": "record", "name": "X", "fields": [{"name": "v", "type": "int"}]}},  # a.X
                {"name": "ref", "type": "X"},  # a.X
                {"name": "top", "type": ["null", "Y"]},  # a.Y
            ]}},
            {"name": "ref2", "type": ["null", "X"], "default": None},  # X
            {"name": "ref3", "type": "a.X"},
        ],
    },
    "namespace-inherited-through-three-levels": {
        "type": "record",
        "name": "L0",
        "namespace": "p.q",
        "fields": [
            {"name": "l1", "type": {"type": "record", "name": "L1", "namespace": "r", "fields": [
                {"name": "l2", "type": {"type": "record", "name": "L2", "fields": [  # r.L2
                    {"name": "h", "type": {"type": "fixed", "name": "H", "size": 1024}},  # r.H
                    {"name": "back", "type": ["null", "p.q.L0"]},
                ]}},
                {"name": "again", "type": "L2"},
                {"name": "hh", "type": "r.H"},
            ]}},
            {"name": "l2", "type": "r.L2"},
        ],
    },
    # Attributes in another order, properties the form drops (doc, aliases, order, defaults,
    # logicalType, custom ones), primitives written as objects, non-ASCII text in docs.
    "attribute-order-extra-properties-and-unicode-doc": {
        "fields": [
            {"type": {"items": {"type": "string", "avro.java.string": "String"}, "type": "array",
                      "doc": "caf\u00e9 \u2603 \"quoted\" \\ back"}, "name": "tags", "default": []},
            {"default": {}, "name": "m",
             "type": {"values": {"symbols": ["A", "B"], "name": "Letter", "type": "enum", "doc": "\u00fcber"}, "type": "map"}},
            {"name": "u", "type": [{"type": "null"}, {"type": "long", "logicalType": "timestamp-millis"},
                                   {"size": 2, "type": "fixed", "name": "Two", "namespace": "other"}]},
            {"name": "f", "type": "other.Two", "order": "ascending", "x-custom": {"nested": [1, 2]}},
        ],
        "java-class": "com.example.Thing",
        "connect.name": "z.Thing",
        "doc": "\u00e9t\u00e9",
        "type": "record",
        "namespace": "z",
        "name": "Thing",
        "aliases": ["Old"],
    },
    "top-level-union-of-named-types": [
        "null",
        {"type": "record", "name": "A", "namespace": "n", "fields": []},
        {"type": "enum", "name": "E", "namespace": "n", "symbols": ["x"]},
        {"type": "array", "items": "n.A"},
        {"type": "map", "values": "n.E"},
    ],
}

# Schemas Java's Avro parses and fastavro does not, so they are checked against Java only (with
# Java's answer, checked too: the reference itself must not drift). Both rely on Java's look-up of
# a short name: in the enclosing namespace, else in the null namespace (Schema.Names.get);
# fastavro looks in the enclosing namespace only ("a.T", "a.S": unknown type).
JAVA_ONLY_SCHEMAS = {
    # A record in namespace `a` referencing a type of the null namespace, and an error inside it.
    "null-namespace-type-referenced-from-a-namespace": (
        {"type": "record", "name": "T", "fields": [{"name": "x", "type": {"type": "record", "name": "a.R", "fields": [
            {"name": "t", "type": ["null", "T"]},
            {"name": "e", "type": {"type": "error", "name": "E", "fields": []}},
        ]}}]},
        '{"name":"T","type":"record","fields":[{"name":"x","type":{"name":"a.R","type":"record","fields":'
        '[{"name":"t","type":["null","T"]},{"name":"e","type":{"name":"a.E","type":"record","fields":[]}}]}}]}',
    ),
    # "namespace": "" is the null namespace. (No named type is defined inside S: Java 1.8.2 gives
    # one the namespace around S, "a", where the specification says S's, the null namespace.)
    "empty-namespace-is-the-null-namespace": (
        {"type": "record", "name": "R", "namespace": "a", "fields": [
            {"name": "s", "type": {"type": "record", "name": "S", "namespace": "", "fields": [
                {"name": "n", "type": "int"},
                {"name": "next", "type": ["null", "S"]},
            ]}},
            {"name": "s2", "type": "S"},
            {"name": "self", "type": ["null", "R"], "default": None},
        ]},
        '{"name":"a.R","type":"record","fields":[{"name":"s","type":{"name":"S","type":"record","fields":'
        '[{"name":"n","type":"int"},{"name":"next","type":["null","S"]}]}},{"name":"s2","type":"S"},'
        '{"name":"self","type":["null","a.R"]}]}',
    ),
}


@pytest.mark.parametrize("name", sorted(SPEC_SCHEMAS))
def test_spec_example_schemas_have_fastavros_canonical_form_and_fingerprint(name, tmp_path, tailor_bin):
    schema = SPEC_SCHEMAS[name]
    c = Contract(schema)
    path = tmp_path / f"{name}.avsc"
    path.write_text(json.dumps(schema, indent=2))
    entries = tailor_schemas("--file", str(path))
    assert len(entries) == 1, entries
    e = entries[0]
    assert e["canonical"] == c.canonical
    assert str(e["fingerprint"]).lower() == c.fingerprint_hex, f"tailor {e['fingerprint']}, fastavro {c.fingerprint_hex}"
    if c.name is not None:
        assert e["name"] == c.name


# Java's Avro (org.apache.avro.SchemaNormalization) is the specification's reference: every
# contract schema and every example above must have its canonical form and fingerprint in Tailor.
# fastavro and Java agree on every schema both parse; JAVA_ONLY_SCHEMAS are those fastavro rejects.


@pytest.fixture(scope="module")
def java_reference(tmp_path_factory):
    """Java's answer for every schema of the fingerprint tests, from one JVM: key ("avro/<stem>" or
    the example's name) -> (the schema file, Java's entry)."""
    dir = tmp_path_factory.mktemp("java-pcf")
    files = {f"avro/{stem}": AVRO_DIR / f"{stem}.avsc" for stem in CONTRACTS}
    examples = {**SPEC_SCHEMAS, **{n: s for n, (s, _) in JAVA_ONLY_SCHEMAS.items()}}
    for name, schema in examples.items():
        files[name] = dir / f"{name}.avsc"
        # Raw UTF-8 here (the fastavro tests write \u escapes): both readers see the same bytes.
        files[name].write_text(json.dumps(schema, indent=2, ensure_ascii=False), encoding="utf-8")
    try:
        answers = java_pcf(files.values())
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    return {k: (p, answers[str(p)]) for k, p in files.items()}


def _assert_as_java(tailor: dict, java: dict, what: str) -> None:
    assert "error" not in java, f"Java's Avro rejected {what}: {java['error']}"
    assert tailor["canonical"] == java["canonical"], (
        f"Parsing Canonical Form of {what}:\n  tailor {tailor['canonical']}\n  java   {java['canonical']}"
    )
    assert str(tailor["fingerprint"]).lower() == java["fingerprint"], (
        f"CRC-64-AVRO of {what}: tailor {tailor['fingerprint']}, java {java['fingerprint']}"
    )
    if java["name"] is not None:
        assert tailor["name"] == java["name"], what


@pytest.mark.parametrize("stem", sorted(CONTRACTS))
def test_contract_schemas_have_javas_canonical_form_and_fingerprint(stem, builtin_schemas, java_reference):
    _, java = java_reference[f"avro/{stem}"]
    e = _entry_for_file(builtin_schemas, CONTRACTS[stem], f"{stem}.avsc")
    _assert_as_java(e, java, f"avro/{stem}.avsc")


@pytest.mark.parametrize("name", sorted(SPEC_SCHEMAS) + sorted(JAVA_ONLY_SCHEMAS))
def test_example_schemas_have_javas_canonical_form_and_fingerprint(name, java_reference, tailor_bin):
    path, java = java_reference[name]
    if name in JAVA_ONLY_SCHEMAS:
        assert java.get("canonical") == JAVA_ONLY_SCHEMAS[name][1], f"Java's Avro changed its answer: {java}"
    entries = tailor_schemas("--file", str(path))
    assert len(entries) == 1, entries
    _assert_as_java(entries[0], java, f"{name} ({json.dumps(json.loads(path.read_text(encoding='utf-8')))})")


# ---- shared by the end-to-end tests -----------------------------------------------------------


class Story:
    """Events of one test: labels -> the event (id, type, key, time) and, once sent, its offset."""

    def __init__(self):
        self.t0 = now_ms() - 300_000  # five minutes ago: inside every window, never "in the future"
        self._tick = itertools.count()
        self.events = {}
        self.sent = {}
        self.pending = []

    def at(self) -> int:
        return self.t0 + next(self._tick) * 100

    def add(self, label, topic, key, payload: bytes, event=None):
        self.events[label] = event
        self.pending.append((topic, key, payload, label))

    def send(self, kafka: Kafka):
        for s in kafka.send(self.pending):
            self.sent[s.label] = s
        self.pending = []


def decoded_outputs(records, contract: Contract, decode=None, ident=lambda rec: rec["id"]):
    """Decodes every record of an output topic (tombstones apart) and drops duplicates by id
    (outputs are at-least-once with deterministic ids: a consumer keeps one per id)."""
    decode = decode or (lambda r: decode_single_object(contract, r.value))
    by_id, tombstones = {}, []
    for r in records:
        if r.value is None:
            tombstones.append(r)
            continue
        rec = decode(r)
        rec["_record"] = r
        i = ident(rec)
        if i in by_id:
            a = {k: v for k, v in by_id[i].items() if k != "_record"}
            b = {k: v for k, v in rec.items() if k != "_record"}
            assert a == b, f"two outputs with id {i} differ:\n{a}\n{b}"
            continue
        by_id[i] = rec
    return list(by_id.values()), tombstones


def check_event_cause(rec, time_field, sent, event, event_type):
    cause = rec["cause"]
    assert cause["kind"] == "event", rec
    assert cause["eventId"] == event["eventId"], rec
    assert cause["eventType"] == event_type, rec
    assert cause["sourceTopic"] == sent.topic, rec
    assert cause["sourcePartition"] == sent.partition, rec
    assert cause["sourceOffset"] == sent.offset, rec
    t = epoch_ms(rec[time_field])
    assert event["timestamp"] <= t <= now_ms() + 60_000, f"{time_field} {t} before the event's time {event['timestamp']}"


def changes_by_key(changes):
    got = collections.defaultdict(list)
    for c in changes:
        got[(c["profileKey"], c["segmentId"], c["direction"])].append(c)
    return got


def header(rec, name):
    v = rec.headers.get(name)
    return v.decode() if v is not None else None


# ---- (b) spec-following producer in, spec-following consumer out --------------------------------


def test_single_object_and_json_events_of_every_family_and_bad_messages(deploy):
    d = deploy("so-json", partitions=1)
    T = d.topics
    worker = d.start()
    kafka = Kafka()
    s = Story()

    who = {
        "A": identity("c-a", "ecid-a", "a@example.com"),
        "B": identity("c-b", None, "b@example.com"),
        "D": identity("c-d", None, "d@example.com"),
        "E": identity("c-e", "ecid-e", "e@example.com"),
        "F": identity("c-f", None, "f@example.com"),
        "N": identity("c-n", None, "n@example.com"),
    }
    key = {k: v["customerId"] for k, v in who.items()}

    def so(label, topic, contract, event):
        s.add(label, topic, event["identity"]["customerId"], contract.single_object(event), event)

    def js(label, topic, contract, event, prefix=b""):
        s.add(label, topic, event["identity"]["customerId"], prefix + contract.json_bytes(event), event)

    # Phase 1, profile topic: loyalty tiers and consents (applied before the orders that need them).
    so("A-profileRecord", T.profile, PROFILE, profile("profileRecord", "a-p1", s.at(), who["A"], tier="gold", email_consent="y"))
    so("B-accountUpdated", T.profile, PROFILE, profile("accountUpdated", "b-p1", s.at(), who["B"], email_consent="y"))
    so("D-accountCreated", T.profile, PROFILE, profile("accountCreated", "d-p1", s.at(), who["D"], tier="gold"))
    js("E-profileRecord", T.profile, PROFILE, profile("profileRecord", "e-p1", s.at(), who["E"], tier="gold", email_consent="y"))
    so("F-accountCreated", T.profile, PROFILE, profile("accountCreated", "f-p1", s.at(), who["F"], email_consent="y"))
    so("N-profileRecord", T.profile, PROFILE, profile("profileRecord", "n-p1", s.at(), who["N"], email_consent="n"))
    s.send(kafka)
    worker.wait_caught_up(T, d.partitions)

    # Phase 2: every storefront type (A), every back-office type (B), a deletion (D), JSON events
    # of the other two families (E storefront, F back office), an order without consent (N).
    for t in STOREFRONT_TYPES:
        ev = storefront(t, f"a-{t}", s.at(), who["A"], **storefront_contexts(t, who["A"], order_id="order-a"))
        so(f"A-{t}", T.storefront, STOREFRONT, ev)
    for t in BACKOFFICE_TYPES:
        so(f"B-{t}", T.backoffice, BACKOFFICE, backoffice(t, f"b-{t}", s.at(), who["B"], "order-b", 120.0))
    so("D-accountDeleted", T.profile, PROFILE, profile("accountDeleted", "d-p2", s.at(), who["D"]))
    js("E-addToCart", T.storefront, STOREFRONT,
       storefront("addToCart", "e-s1", s.at(), who["E"], **storefront_contexts("addToCart", who["E"])))
    js("F-orderPlaced", T.backoffice, BACKOFFICE, backoffice("orderPlaced", "f-b1", s.at(), who["F"], "order-f", 80.0),
       prefix=b" \n\t")  # whitespace before the JSON object
    so("N-orderPlaced", T.backoffice, BACKOFFICE, backoffice("orderPlaced", "n-b1", s.at(), who["N"], "order-n", 30.0))

    # Bad messages, each with the reason code it must be dead-lettered with.
    bad_who = identity("c-bad", "ecid-bad", None)

    def add(eid, t=None):
        return storefront("addToCart", eid, s.at() if t is None else t, bad_who, **storefront_contexts("addToCart", bad_who))

    good = STOREFRONT.single_object(add("bad-base"))
    garbage = b"\xff" + random.Random(7).randbytes(40)  # not '{', C3 01 or 00
    nested = STOREFRONT.complete(storefront("productPageView", "bad-json-1", s.at(), bad_who,
                                            **storefront_contexts("productPageView", bad_who)))
    nested["productContext"]["pricing"]["regularPrice"] = "cheap"  # a string where a double goes
    newer = STOREFRONT.with_fields(add=[{"name": "experimentId", "type": ["null", "string"], "default": None}])
    teleport = add("bad-type")
    teleport["eventType"] = "teleport"
    bad = {
        "bad-framing": (T.storefront, None, garbage, "bad_framing"),
        "bad-empty": (T.storefront, "c-bad", b"", "empty"),
        "bad-json-nested": (T.storefront, "c-bad", json.dumps(nested).encode(), "bad_json"),
        "bad-json-syntax": (T.storefront, "c-bad", b'{"eventId": "bad-json-2", "eventType": ', "bad_json"),
        "bad-unknown-schema": (T.storefront, "c-bad", newer.single_object(dict(add("bad-fp"), experimentId="x")), "unknown_schema"),
        "bad-body": (T.storefront, "c-bad", good[:-40], "bad_body"),
        "bad-trailing": (T.storefront, "c-bad", good + b"\x00\x00", "trailing_bytes"),
        "bad-wrong-record": (T.storefront, "c-bad",
                             BACKOFFICE.single_object(backoffice("orderPlaced", "bad-wr", s.at(), bad_who, "o-x", 1.0)),
                             "wrong_record"),
        "bad-event-type": (T.storefront, "c-bad", STOREFRONT.single_object(teleport), "unknown_event_type"),
        "bad-event-time": (T.storefront, "c-bad", STOREFRONT.single_object(add("bad-time", 0)), "bad_event_time"),
    }
    for label, (topic, k, payload, _) in bad.items():
        s.add(label, topic, k, payload)
    s.send(kafka)
    worker.wait_caught_up(T, d.partitions)
    ev, sent = s.events, s.sent

    # --- audience changes: every record decoded with avro/audience_change.avsc only.
    audience = read_topic(T.audience, d.partitions)
    changes, tombstones = decoded_outputs(audience, AUDIENCE_CHANGE)
    expected = {}  # (key, segment, direction) -> label of the causing event, or "deletion"

    def expect(shopper, segment, direction, cause):
        expected[(key[shopper], segment, direction)] = cause

    expect("A", seen_segment("profileRecord"), "ENTERED", "A-profileRecord")
    expect("A", "gold", "ENTERED", "A-profileRecord")
    for t in STOREFRONT_TYPES:
        expect("A", seen_segment(t), "ENTERED", f"A-{t}")
    expect("A", "cart-holders", "ENTERED", "A-addToCart")
    expect("A", "cart-holders", "EXITED", "A-completeCheckout")
    expect("A", "buyers", "ENTERED", "A-completeCheckout")
    expect("B", seen_segment("accountUpdated"), "ENTERED", "B-accountUpdated")
    for t in BACKOFFICE_TYPES:
        expect("B", seen_segment(t), "ENTERED", f"B-{t}")
    expect("B", "buyers", "ENTERED", "B-orderPlaced")
    expect("D", seen_segment("accountCreated"), "ENTERED", "D-accountCreated")
    expect("D", "gold", "ENTERED", "D-accountCreated")
    expect("D", seen_segment("accountCreated"), "EXITED", "deletion")
    expect("D", "gold", "EXITED", "deletion")
    expect("E", seen_segment("profileRecord"), "ENTERED", "E-profileRecord")
    expect("E", "gold", "ENTERED", "E-profileRecord")
    expect("E", seen_segment("addToCart"), "ENTERED", "E-addToCart")
    expect("E", "cart-holders", "ENTERED", "E-addToCart")
    expect("F", seen_segment("accountCreated"), "ENTERED", "F-accountCreated")
    expect("F", seen_segment("orderPlaced"), "ENTERED", "F-orderPlaced")
    expect("F", "buyers", "ENTERED", "F-orderPlaced")
    expect("N", seen_segment("profileRecord"), "ENTERED", "N-profileRecord")
    expect("N", seen_segment("orderPlaced"), "ENTERED", "N-orderPlaced")
    expect("N", "buyers", "ENTERED", "N-orderPlaced")

    got = changes_by_key(changes)
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    assert not missing and not unexpected, f"missing changes {missing}\nunexpected changes {unexpected}"
    for k, recs in got.items():
        assert len(recs) == 1, f"{k} changed {len(recs)} times: {recs}"
        c, cause = recs[0], expected[k]
        shopper = next(n for n, v in key.items() if v == k[0])
        assert c["identity"]["customerId"] == key[shopper], c
        if cause == "deletion":
            assert c["cause"]["kind"] == "deletion", c
            continue
        assert c["identity"]["email"] == who[shopper]["email"], c
        event_type = ev[cause]["eventType"]
        check_event_cause(c, "eventTime", sent[cause], ev[cause], event_type)
        r = c["_record"]
        assert r.key == k[0].encode(), f"audience change keyed {r.key!r}, not by its profile key"

    # --- explanations (issue 14): each change names the condition of the rule that flipped it,
    # where it is written in the segments file, and its values before and after; exits of a
    # deleted profile have none.
    seg_lines = d.segments.read_text().splitlines()

    def where(rule_text):
        for i, line in enumerate(seg_lines):
            if line.strip() == f"rule: {rule_text}":
                return i + 1, line.index(rule_text) + 1
        raise AssertionError(f"{rule_text!r} not in the segments file")

    def explained(shopper, segment, direction):
        return got[(key[shopper], segment, direction)][0]["explanation"]

    def flip(rule_text, before, after, operands):
        line, col = where(rule_text)
        return {"expression": rule_text, "line": line, "column": col, "before": before, "after": after,
                "operands": [{"expression": e, "before": b, "after": a} for e, b, a in operands]}

    assert explained("A", "gold", "ENTERED") == flip(
        'loyalty.tier == "gold"', "false", "true", [("loyalty.tier", "missing", '"gold"')])
    assert explained("B", "buyers", "ENTERED") == flip(
        "orders.count >= 1", "false", "true", [("orders.count", "0", "1")])
    for t in STOREFRONT_TYPES:
        assert explained("A", seen_segment(t), "ENTERED") == flip(
            f"count({t}, 7d) >= 1", "false", "true", [(f"count({t}, 7d)", "0", "1")]), t
    cart_exit = explained("A", "cart-holders", "EXITED")
    assert cart_exit["expression"] == "cart.items > 0" and (cart_exit["before"], cart_exit["after"]) == ("true", "false")
    assert cart_exit["operands"][0]["after"] == "0" and int(cart_exit["operands"][0]["before"]) > 0, cart_exit
    assert explained("D", "gold", "EXITED") is None, "a deletion's exit has no rule that flipped"
    # A consumer still on the previous schema (without the field) reads the new records.
    previous = AUDIENCE_CHANGE.with_fields(drop=["explanation"])
    rec = got[(key["A"], "gold", "ENTERED")][0]
    old_view = read_datum(AUDIENCE_CHANGE.parsed, rec["_record"].value[10:], previous.parsed)
    assert "explanation" not in old_view and old_view["segmentId"] == "gold", old_view

    # GET /profiles/{id}/explain: the rule's tree for the shopper now, read with Python's client.
    status, body = worker.get("/profiles/a@example.com/explain?segment=buyers")
    assert status == 200, body
    doc = json.loads(body)
    line, col = where("orders.count >= 1")
    assert (doc["profile_key"], doc["segment"], doc["member"], doc["result"]) == ("c-a", "buyers", True, "true"), doc
    tree = doc["tree"]
    assert (tree["expression"], tree["line"], tree["column"], tree["value"]) == ("orders.count >= 1", line, col, "true")
    assert [(c["expression"], c["value"]) for c in tree["children"]] == [("orders.count", "1")], tree
    assert "changesAt" not in tree and doc["next_change"] is None, "an order count does not change with time"
    status, body = worker.get("/profiles/c-a/explain?segment=" + seen_segment("productPageView"))
    doc = json.loads(body)
    assert status == 200 and doc["result"] == "true", body
    assert doc["tree"]["changesAt"] == doc["next_change"] > doc["evaluated_at"], "a 7-day count expires"
    status, body = worker.get("/profiles/c-a/explain?segment=no-such-segment")
    assert status == 404 and "buyers" in json.loads(body)["error"], body
    assert worker.get("/profiles/c-a/explain")[0] == 400

    # D's deletion: a tombstone (null value, header tailor.tombstone) for its profile key.
    assert tombstones, "no tombstone on the audience topic after accountDeleted"
    for r in tombstones:
        assert header(r, "tailor.tombstone") == "deletion", r.headers
        assert r.key in (b"c-d", b"d@example.com"), f"tombstone for {r.key!r}: only D was deleted"
    assert b"c-d" in {r.key for r in tombstones}

    # --- journey triggers: decoded with avro/journey_trigger.avsc only.
    journeys = read_topic(T.journeys, d.partitions)
    triggers, jt_tombstones = decoded_outputs(journeys, JOURNEY_TRIGGER)
    want = {
        ("c-a", "welcome-gold"): ("A-profileRecord", "a@example.com"),
        ("c-d", "welcome-gold"): ("D-accountCreated", None),  # no consent given: no contact point
        ("c-e", "welcome-gold"): ("E-profileRecord", "e@example.com"),
        ("c-a", "post-purchase"): ("A-completeCheckout", "a@example.com"),
        ("c-b", "post-purchase"): ("B-orderPlaced", "b@example.com"),
        ("c-f", "post-purchase"): ("F-orderPlaced", "f@example.com"),
        # N placed an order but opted out of e-mail: post-purchase needs e-mail consent.
    }
    got_t = collections.defaultdict(list)
    for t in triggers:
        got_t[(t["profileKey"], t["journeyId"])].append(t)
    assert set(got_t) == set(want), f"triggers {sorted(got_t)}, expected {sorted(want)}"
    order_totals = {"A-completeCheckout": ("order-a", 15.0), "B-orderPlaced": ("order-b", 120.0),
                    "F-orderPlaced": ("order-f", 80.0)}
    for k, (label, email) in want.items():
        assert len(got_t[k]) == 1, got_t[k]
        t = got_t[k][0]
        check_event_cause(t, "triggeredAt", sent[label], ev[label], ev[label]["eventType"])
        assert t["contact"]["email"] == email, t
        assert t["identity"]["customerId"] == k[0], t
        if k[1] == "welcome-gold":
            assert t["cause"]["segmentId"] == "gold", t
        else:
            order_id, total = order_totals[label]
            assert t["context"]["orderId"] == order_id, t
            assert t["context"]["orderTotal"] == pytest.approx(total), t
            assert [i["sku"] for i in t["context"]["orderItems"]] == ["SKU-1"], t
            if label.endswith("orderPlaced"):
                # The back-office order's currency and commerce scope travel with the trigger.
                assert t["context"]["currencyCode"] == "GBP", t
                assert t["store"] == {"storeCode": "main", "storeViewCode": "default"}, t
    for r in jt_tombstones:
        assert header(r, "tailor.tombstone") == "deletion" and r.key in (b"c-d", b"d@example.com"), r

    # --- dead letters: decoded with avro/dead_letter.avsc only; reason, original bytes, origin.
    dead = read_topic(T.dead_letter, d.partitions)
    letters, _ = decoded_outputs(
        dead, DEAD_LETTER, ident=lambda dl: (dl["sourceTopic"], dl["sourcePartition"], dl["sourceOffset"]))
    by_origin = {(dl["sourceTopic"], dl["sourcePartition"], dl["sourceOffset"]): dl for dl in letters}
    want_dl = {(sent[l].topic, sent[l].partition, sent[l].offset): l for l in bad}
    assert set(by_origin) == set(want_dl), (
        f"bad messages not dead-lettered: {[want_dl[o] for o in sorted(set(want_dl) - set(by_origin))]}\n"
        f"dead letters of good messages: {[(o, by_origin[o]['reasonCode'], by_origin[o]['reason']) for o in sorted(set(by_origin) - set(want_dl))]}"
    )
    for origin, label in want_dl.items():
        dl, m = by_origin[origin], sent[label]
        reason = bad[label][3]
        assert dl["reasonCode"] == reason, f"{label}: {dl['reasonCode']} ({dl['reason']}), expected {reason}"
        assert dl["payload"] == m.value, f"{label}: payload is not the original bytes"
        assert dl["key"] == m.key, f"{label}: key {dl['key']!r}, sent {m.key!r}"
        assert dl["reason"], f"{label}: no detail"
        if dl["sourceTimestamp"] is not None and m.timestamp is not None:
            assert epoch_ms(dl["sourceTimestamp"]) == m.timestamp, label
        assert header(dl["_record"], "tailor.reason") == reason, dl["_record"].headers
    nested_dl = by_origin[(sent["bad-json-nested"].topic, sent["bad-json-nested"].partition, sent["bad-json-nested"].offset)]
    assert "productContext.pricing.regularPrice" in nested_dl["reason"], (
        f"the bad_json detail should name the field's path: {nested_dl['reason']!r}")

    # --- metrics: dead letters by reason, events by type, messages by framing.
    samples = worker.metrics()
    for reason, n in collections.Counter(b[3] for b in bad.values()).items():
        assert worker.metric("tailor_dead_letters_total", samples, reason=reason) == n, reason
    applied = collections.Counter(e["eventType"] for l, e in ev.items() if e is not None and l in sent)
    del applied["accountDeleted"]
    for event_type, n in applied.items():
        assert worker.metric("tailor_events_total", samples, type=event_type) == n, event_type
    json_good = 3
    json_bad = sum(1 for b in bad.values() if b[3] == "bad_json")
    framing_json = worker.metric("tailor_input_framing_total", samples, framing="json")
    assert json_good <= framing_json <= json_good + json_bad, framing_json
    so_good = sum(1 for l, e in ev.items() if e is not None) - json_good
    so_bad = sum(1 for b in bad.values() if b[2][:2] == b"\xc3\x01")
    framing_so = worker.metric("tailor_input_framing_total", samples, framing="single_object")
    assert so_good <= framing_so <= so_good + so_bad, framing_so
    assert worker.metric("tailor_input_framing_total", samples, framing="confluent") == 0
    assert worker.status("/readyz") == 200
    worker.stop()


def test_extra_writer_schemas_from_the_schemas_dir(deploy, tmp_path):
    """[schemas] dir: a producer on a newer or older compatible version of a contract schema,
    known to Tailor by a file, is applied; one on an unknown version is dead-lettered."""
    schemas = tmp_path / "writer-schemas"
    schemas.mkdir()
    newer = STOREFRONT.with_fields(add=[{"name": "experimentId", "type": ["null", "string"], "default": None}])
    older = STOREFRONT.with_fields(drop=["deviceContext"])
    (schemas / "storefront.experiment.avsc").write_text(json.dumps(newer.json, indent=2))
    (schemas / "storefront.nodevice.avsc").write_text(json.dumps(older.json, indent=2))
    unknown = STOREFRONT.with_fields(add=[{"name": "other", "type": "string", "default": ""}])

    d = deploy("schemas-dir", partitions=1, schemas_dir=schemas)
    T = d.topics
    listed = tailor_schemas("--config", str(d.config))
    for file_name, c in [("storefront.experiment.avsc", newer), ("storefront.nodevice.avsc", older)]:
        e = _entry_for_file(listed, c, file_name)
        assert e["canonical"] == c.canonical and str(e["fingerprint"]).lower() == c.fingerprint_hex, e
    for stem, c in CONTRACTS.items():  # the contract is still there
        _entry_for_file(listed, c, f"{stem}.avsc")

    worker = d.start()
    s = Story()
    who = {k: identity(f"c-{k}", f"ecid-{k}", None) for k in ("new", "old", "unk")}
    cart = lambda k, eid: storefront("addToCart", eid, s.at(), who[k], **storefront_contexts("addToCart", who[k]))  # noqa: E731
    s.add("new", T.storefront, "c-new", newer.single_object(dict(cart("new", "n1"), experimentId="exp-7")), {})
    old_event = cart("old", "o1")
    del old_event["deviceContext"]
    s.add("old", T.storefront, "c-old", older.single_object(old_event), {})
    s.add("unk", T.storefront, "c-unk", unknown.single_object(dict(cart("unk", "u1"), other="x")), {})
    s.send(Kafka())
    worker.wait_caught_up(T, d.partitions)

    changes, _ = decoded_outputs(read_topic(T.audience, d.partitions), AUDIENCE_CHANGE)
    got = set(changes_by_key(changes))
    for k in ("c-new", "c-old"):
        assert (k, "cart-holders", "ENTERED") in got, f"{k}'s addToCart was not applied: {sorted(got)}"
    assert not any(k[0] == "c-unk" for k in got), sorted(got)
    letters = [decode_single_object(DEAD_LETTER, r.value) for r in read_topic(T.dead_letter, d.partitions)]
    assert [(dl["reasonCode"], dl["sourceOffset"], dl["payload"]) for dl in letters] == [
        ("unknown_schema", s.sent["unk"].offset, s.sent["unk"].value)], letters
    worker.stop()


# ---- (c) Confluent framing with a schema registry -----------------------------------------------


class RegistryClient:
    """What a Confluent deserializer does: the writer schema by id, over the documented API."""

    def __init__(self, url, username=None, password=None):
        self.url = url
        self.auth = None
        if username is not None:
            self.auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.cache = {}

    def get(self, path):
        req = urllib.request.Request(self.url + path)
        if self.auth:
            req.add_header("Authorization", self.auth)
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers.get_content_type() in ("application/vnd.schemaregistry.v1+json", "application/json")
            return json.loads(r.read())

    def writer(self, schema_id):
        if schema_id not in self.cache:
            text = self.get(f"/schemas/ids/{schema_id}")["schema"]
            self.cache[schema_id] = fastavro.parse_schema(json.loads(text))
        return self.cache[schema_id]


def test_confluent_framing_with_a_schema_registry(deploy, registry):
    reg = registry(username="tailor", password="s3cret")
    client = RegistryClient(reg.url, "tailor", "s3cret")
    d = deploy(
        "confluent",
        partitions=2,
        registry={"url": reg.url, "username": "tailor", "password": "s3cret"},
        output_framing="confluent",
    )
    T = d.topics
    newer = STOREFRONT.with_fields(add=[{"name": "experimentId", "type": ["null", "string"], "default": None}])
    older = STOREFRONT.with_fields(drop=["deviceContext"])
    sf_id = reg.register(f"{T.storefront}-value", STOREFRONT.text)
    newer_id = reg.register(f"{T.storefront}-value", newer.text)
    older_id = reg.register(f"{T.storefront}-value", older.text)
    pr_id = reg.register(f"{T.profile}-value", PROFILE.text)
    assert len({sf_id, newer_id, older_id, pr_id}) == 4
    unknown_id = 424242

    worker = d.start()
    # The output schemas are registered under <topic>-value (TopicNameStrategy) at start.
    out_subjects = {T.audience: AUDIENCE_CHANGE, T.journeys: JOURNEY_TRIGGER, T.dead_letter: DEAD_LETTER}
    wait_for("the output schemas registered", lambda: all(f"{t}-value" in reg.subjects() for t in out_subjects), 30)
    out_ids = {}
    for topic, contract in out_subjects.items():
        latest = client.get(f"/subjects/{topic}-value/versions/latest")
        registered = fastavro.parse_schema(json.loads(latest["schema"]))
        assert fastavro.schema.to_parsing_canonical_form(registered) == contract.canonical, topic
        out_ids[topic] = latest["id"]

    s = Story()
    who = {k: identity(f"c-{k}", f"ecid-{k}", f"{k}@example.com") for k in ("g", "h", "i", "k", "o", "x")}
    cart = lambda k, eid: storefront("addToCart", eid, s.at(), who[k], **storefront_contexts("addToCart", who[k]))  # noqa: E731
    ev_i = profile("profileRecord", "i1", s.at(), who["i"], tier="gold", email_consent="y")
    s.add("i", T.profile, "c-i", PROFILE.confluent(pr_id, ev_i), ev_i)
    s.send(Kafka())
    worker.wait_caught_up(T, d.partitions)
    ev_g, ev_h, ev_o, ev_k, ev_x = cart("g", "g1"), cart("h", "h1"), cart("o", "o1"), cart("k", "k1"), cart("x", "x1")
    del ev_o["deviceContext"]
    s.add("g", T.storefront, "c-g", STOREFRONT.confluent(sf_id, ev_g), ev_g)
    s.add("h", T.storefront, "c-h", newer.confluent(newer_id, dict(ev_h, experimentId="exp-7")), ev_h)
    s.add("o", T.storefront, "c-o", older.confluent(older_id, ev_o), ev_o)
    s.add("k", T.storefront, "c-k", STOREFRONT.single_object(ev_k), ev_k)  # framings mix on one topic
    s.add("x", T.storefront, "c-x", STOREFRONT.confluent(unknown_id, ev_x), None)
    s.send(Kafka())
    worker.wait_caught_up(T, d.partitions)

    def decode(contract, topic):
        def run(r):
            sid = confluent_id(r.value)
            assert sid == out_ids[topic], f"{topic}: schema id {sid}, the subject's latest is {out_ids[topic]}"
            return read_datum(client.writer(sid), r.value[5:], contract.parsed)
        return run

    changes, _ = decoded_outputs(read_topic(T.audience, d.partitions), AUDIENCE_CHANGE, decode(AUDIENCE_CHANGE, T.audience))
    got = changes_by_key(changes)
    want = {("c-i", "gold", "ENTERED"): "i", ("c-i", seen_segment("profileRecord"), "ENTERED"): "i"}
    for k in "ghok":
        want[(f"c-{k}", "cart-holders", "ENTERED")] = k
        want[(f"c-{k}", seen_segment("addToCart"), "ENTERED")] = k
    assert set(got) == set(want), f"missing {sorted(set(want) - set(got))}, unexpected {sorted(set(got) - set(want))}"
    for k, label in want.items():
        check_event_cause(got[k][0], "eventTime", s.sent[label], s.events[label], s.events[label]["eventType"])

    triggers, _ = decoded_outputs(read_topic(T.journeys, d.partitions), JOURNEY_TRIGGER, decode(JOURNEY_TRIGGER, T.journeys))
    assert [(t["profileKey"], t["journeyId"], t["contact"]["email"]) for t in triggers] == [("c-i", "welcome-gold", "i@example.com")]

    dead = read_topic(T.dead_letter, d.partitions)
    letters = [decode(DEAD_LETTER, T.dead_letter)(r) for r in dead]
    assert [(dl["reasonCode"], dl["sourceTopic"], dl["sourcePartition"], dl["sourceOffset"], dl["payload"], dl["key"])
            for dl in letters] == [("unknown_schema_id", T.storefront, s.sent["x"].partition, s.sent["x"].offset,
                                    s.sent["x"].value, b"c-x")], letters

    fetched = {int(r.path.rsplit("/", 1)[1]) for r in reg.requests_for("GET", "/schemas/ids/") if r.path.rsplit("/", 1)[1].isdigit()}
    assert {sf_id, newer_id, older_id, pr_id, unknown_id} <= fetched, f"the worker fetched ids {sorted(fetched)}"
    samples = worker.metrics()
    # Four good Confluent-framed messages (the unknown id's may count too) and one single-object.
    assert 4 <= worker.metric("tailor_input_framing_total", samples, framing="confluent") <= 5
    assert worker.metric("tailor_input_framing_total", samples, framing="single_object") == 1
    assert worker.metric("tailor_input_framing_total", samples, framing="json") == 0
    assert worker.metric("tailor_dead_letters_total", samples, reason="unknown_schema_id") == 1
    worker.stop()


# ---- (d) registry outage: wait, never dead-letter ---------------------------------------------


def test_registry_outage_holds_the_partition_and_dead_letters_nothing(deploy, registry):
    reg = registry()
    d = deploy("outage", partitions=1, registry={"url": reg.url})
    T = d.topics
    v1 = reg.register(f"{T.storefront}-value", STOREFRONT.text)
    worker = d.start()
    kafka = Kafka()
    s = Story()
    who = {k: identity(f"c-{k}", f"ecid-{k}", None) for k in ("p", "q", "r")}
    cart = lambda k: storefront("addToCart", f"{k}1", s.at(), who[k], **storefront_contexts("addToCart", who[k]))  # noqa: E731
    audience = d.reader(T.audience)

    def entered(records, k):
        return any(c["profileKey"] == k and c["segmentId"] == "cart-holders"
                   for c in decoded_outputs(records, AUDIENCE_CHANGE)[0])

    ev_p = cart("p")
    s.add("p", T.storefront, "c-p", STOREFRONT.confluent(v1, ev_p), ev_p)
    s.send(kafka)
    audience.read_until("P's change (schema v1 fetched)", lambda recs: entered(recs, "c-p"))

    # A newer version the worker has never seen; then the registry goes away.
    v3 = STOREFRONT.with_fields(add=[{"name": "campaign", "type": ["null", "string"], "default": None}])
    v3_id = reg.register(f"{T.storefront}-value", v3.text)
    reg.stop()
    ev_q, ev_r = cart("q"), cart("r")
    s.add("q", T.storefront, "c-q", v3.confluent(v3_id, dict(ev_q, campaign="spring")), ev_q)
    s.add("r", T.storefront, "c-r", STOREFRONT.confluent(v1, ev_r), ev_r)  # behind Q on the partition
    s.send(kafka)

    wait_for("/readyz to answer 503 while the registry is down", lambda: worker.status("/readyz") == 503, 60,
             on_fail=worker.log_text)
    hold_until = time.monotonic() + 3
    while time.monotonic() < hold_until:
        assert topic_size(T.dead_letter, d.partitions) == 0, "dead-lettered while the registry was down"
        recs = audience.poll()
        assert not entered(recs, "c-q") and not entered(recs, "c-r"), "applied without its writer schema?"
        time.sleep(0.2)

    reg.start()  # same port, same schemas
    recs = audience.read_until("Q's change after the registry is back", lambda recs: entered(recs, "c-q") and entered(recs, "c-r"), 90)
    changes = [c for c in decoded_outputs(recs, AUDIENCE_CHANGE)[0] if c["segmentId"] == "cart-holders"]
    order = [c["profileKey"] for c in sorted(changes, key=lambda c: c["cause"]["sourceOffset"])]
    assert order == ["c-p", "c-q", "c-r"], order
    q = next(c for c in changes if c["profileKey"] == "c-q")
    check_event_cause(q, "eventTime", s.sent["q"], ev_q, "addToCart")
    wait_for("/readyz to answer 200 again", lambda: worker.status("/readyz") == 200, 60)
    worker.wait_caught_up(T, d.partitions)
    assert topic_size(T.dead_letter, d.partitions) == 0, "a dead letter after the outage"
    assert worker.metric("tailor_dead_letters_total") == 0
    assert any(r.path == f"/schemas/ids/{v3_id}" and r.status == 200 for r in reg.requests), "v3 never fetched"
    worker.stop()


# ---- (d) registry outage across a rebalance: the held partition is resumed when assigned again --


def kafka_partition(key: str, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record (the Java client's Utils.murmur2, as
    librdkafka's murmur2_random): the partition a producer puts `key` in."""
    data, m = key.encode(), 0x5BD1E995
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i:i + 4], "little") * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def test_a_held_partition_survives_a_rebalance(deploy, registry, tmp_path):
    """A partition held (paused) for the registry stays held through a rebalance and is resumed
    when the registry answers, wherever it is. Worker A holds both partition numbers (each has an
    event with a schema id the registry, down, has not answered for, and a single-object event
    behind it); worker B joins the group, so each worker owns one partition: the one A keeps is
    not revoked (cooperative rebalancing) and stays held; the other B reads from the start and
    holds. Once the registry is back, every event is applied by the worker owning its partition,
    nothing is dead-lettered, and both workers are ready with nothing paused."""
    reg = registry()
    d = deploy("held-rebalance", partitions=2, registry={"url": reg.url})
    T, n = d.topics, d.partitions
    topics_per_number = len(T.inputs) + 1  # the three inputs and the repartition topic
    newer = STOREFRONT.with_fields(add=[{"name": "campaign", "type": ["null", "string"], "default": None}])
    newer_id = reg.register(f"{T.storefront}-value", newer.text)  # an id no worker has asked for

    a = d.start()
    wait_for("A to be assigned every partition", lambda: a.metric("tailor_assigned_partitions") == topics_per_number * n,
             60, on_fail=a.log_text)
    audience = d.reader(T.audience)
    workers = {"A": a}

    # Per partition number p: Q (Confluent framing, the new id) and, behind it, R (single-object),
    # each of its own shopper, keyed so that the producer puts it in p.
    shoppers = {}  # label -> (key, partition)
    for p in range(n):
        for role in "qr":
            key = next(k for k in (f"c-{role}{p}-{i}" for i in itertools.count()) if kafka_partition(k, n) == p)
            shoppers[f"{role}{p}"] = (key, p)

    def logs():
        return "\n".join(f"===== worker {name} =====\n{w.log_text()}" for name, w in workers.items())

    def assert_nothing_applied(when):
        assert topic_size(T.dead_letter, n) == 0, f"dead-lettered {when}"
        changed = {c["profileKey"] for c in decoded_outputs(audience.poll(), AUDIENCE_CHANGE)[0]}
        early = changed & {k for k, _ in shoppers.values()}
        assert not early, f"applied {when} (the registry is down): {sorted(early)}"

    reg.stop()
    s = Story()
    for label, (key, p) in shoppers.items():
        who = identity(key, f"ecid-{key}", None)
        ev = storefront("addToCart", f"{label}-1", s.at(), who, **storefront_contexts("addToCart", who))
        payload = newer.confluent(newer_id, dict(ev, campaign="spring")) if label[0] == "q" else STOREFRONT.single_object(ev)
        s.add(label, T.storefront, key, payload, ev)
    s.send(Kafka())
    for label, (key, p) in shoppers.items():
        assert s.sent[label].partition == p, f"{key}: the producer chose partition {s.sent[label].partition}, murmur2 says {p}"
    assert all(s.sent[f"q{p}"].offset < s.sent[f"r{p}"].offset for p in range(n))

    wait_for("A to hold both partitions (/readyz 503, tailor_paused_partitions 2)",
             lambda: a.status("/readyz") == 503 and a.metric("tailor_paused_partitions") == n, 60, on_fail=logs)
    assert_nothing_applied("while A holds its partitions")

    # B joins the group with its own state and HTTP port: the group rebalances, one partition each.
    b_dir = tmp_path / "worker-b"
    b_dir.mkdir()
    b_port = free_port()
    b = Worker(b_dir, write_config(b_dir, T, d.segments, b_port, registry={"url": reg.url}), b_port, run=2)
    d.workers.append(b)  # killed at the end, its log printed if the test fails
    workers["B"] = b
    b.start(wait_ready=False)  # B holds its partition as soon as it reads it: never ready before the registry is back
    wait_for("the rebalance: one partition number to each worker (tailor_assigned_partitions)",
             lambda: a.metric("tailor_assigned_partitions") == topics_per_number
             and b.metric("tailor_assigned_partitions") == topics_per_number, 60, on_fail=logs)
    # A keeps one partition, still held. B reads its partition from the start (A committed
    # nothing there) and holds it.
    wait_for("each worker to hold its partition again (/readyz 503, tailor_paused_partitions 1)",
             lambda: all(w.status("/readyz") == 503 and w.metric("tailor_paused_partitions") == 1 for w in (a, b)),
             60, on_fail=logs)
    assert_nothing_applied("after the rebalance")

    reg.start()  # same port, same schemas
    want = {}  # (key, segment, direction) -> label
    for label, (key, _) in shoppers.items():
        want[(key, "cart-holders", "ENTERED")] = label
        want[(key, seen_segment("addToCart"), "ENTERED")] = label
    audience.read_until("every held event applied once the registry is back",
                        lambda recs: set(want) <= set(changes_by_key(decoded_outputs(recs, AUDIENCE_CHANGE)[0])), 90)
    for name, w in workers.items():
        wait_for(f"{name} ready with nothing paused (/readyz 200, tailor_paused_partitions 0)",
                 lambda w=w: w.status("/readyz") == 200 and w.metric("tailor_paused_partitions") == 0, 60, on_fail=logs)

    def caught_up():  # every input and repartition message committed, by one worker or the other
        stored = {}
        for w in (a, b):
            for tp, v in w.stored_offsets().items():
                stored[tp] = max(stored.get(tp, 0), v)
        if any(stored.get(tp, 0) < end for tp, end in PRODUCED.items() if tp[0] in T.inputs):
            return False
        return all(stored.get((T.repartition, p), 0) >= e for p, e in read_all(T.repartition, n)[1].items())

    wait_for("the workers to commit every input message", caught_up, 60, interval=0.2, on_fail=logs)

    changes, _ = decoded_outputs(read_topic(T.audience, n), AUDIENCE_CHANGE)
    got = changes_by_key(changes)
    assert set(got) == set(want), f"missing {sorted(set(want) - set(got))}, unexpected {sorted(set(got) - set(want))}"
    for k, label in want.items():
        assert len(got[k]) == 1, f"{k} changed {len(got[k])} times: {got[k]}"
        check_event_cause(got[k][0], "eventTime", s.sent[label], s.events[label], "addToCart")
    # Each worker applied the two events of the partition it owns: A's own was held across the rebalance.
    for name, w in workers.items():
        assert w.metric("tailor_events_total", type="addToCart") == 2, f"{name} applied {w.metric('tailor_events_total')} events"
        assert w.metric("tailor_dead_letters_total") == 0, f"{name} dead-lettered"
    assert topic_size(T.dead_letter, n) == 0, "a dead letter after the rebalance"
    assert any(r.path == f"/schemas/ids/{newer_id}" and r.status == 200 for r in reg.requests), "the new id never fetched"
    a.stop()
    b.stop()


# ---- the HTTP API, with a client that is not Tailor's -------------------------------------------


def http_request(port, path, headers=None, method="GET"):
    """One request with Python's own HTTP client; a `Host` in `headers` replaces the default."""
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read().decode("utf-8", "replace")
    c.close()
    return r.status, body


def test_http_token_scheme_and_host(deploy, tailor_bin):
    """/profiles needs the token, under any case of the `Bearer` scheme; a loopback server answers
    only to its loopback names (DNS rebinding); an empty TAILOR_HTTP_TOKEN is refused at start,
    not taken as "no token"."""
    import os
    import subprocess

    d = deploy("http", partitions=1, http_token="s3cret")
    worker = d.start()
    port = d.port
    assert http_request(port, "/profiles/nobody")[0] == 401
    assert http_request(port, "/profiles/nobody", {"Authorization": "Bearer wrong"})[0] == 401
    for scheme in ("Bearer", "bearer", "BEARER"):
        status, body = http_request(port, "/profiles/nobody", {"Authorization": f"{scheme} s3cret"})
        assert status == 404, (scheme, status, body)
    assert http_request(port, "/metrics", {"Host": f"localhost:{port}"})[0] == 200
    assert http_request(port, "/metrics", {"Host": f"[::1]:{port}"})[0] == 200
    status, body = http_request(port, "/metrics", {"Host": f"rebound.example:{port}"})
    assert status == 421, (status, body)
    status, _ = http_request(port, "/profiles/nobody", {"Host": "rebound.example", "Authorization": "Bearer s3cret"})
    assert status == 421
    # E-mails are kept trimmed and lower-cased: found by the address as the shopper typed it.
    s = Story()
    ev = profile("profileRecord", "p1", s.at(), identity("c-http", None, " Eco.Shopper@Example.com "))
    s.add("p", d.topics.profile, "c-http", PROFILE.single_object(ev), ev)
    s.send(Kafka())
    worker.wait_caught_up(d.topics, d.partitions)
    auth = {"Authorization": "Bearer s3cret"}
    status, body = http_request(port, "/profiles/Eco.Shopper%40Example.com", auth)
    assert status == 200, (status, body)
    assert json.loads(body)["profile_key"] == "c-http", body
    worker.stop()

    env = dict(os.environ, TAILOR_HTTP_TOKEN="")
    run = subprocess.run([tailor_bin, "run", "--config", str(d.config)], env=env, cwd=d.dir,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0, run.stderr
    assert "TAILOR_HTTP_TOKEN is set but empty" in run.stderr, run.stderr
