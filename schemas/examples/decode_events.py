#!/usr/bin/env python3
"""Decode twin events with nothing but the published .avsc files and standard Avro tooling.

This is how a downstream Kafka consumer outside this project reads the log: each message value
is Avro single-object encoded (C3 01, the writer schema's 8-byte CRC-64-AVRO fingerprint in
little-endian order, then the Avro binary datum). Index the .avsc files by fingerprint, pick the
writer schema from the header, and resolve it to the current schema of the same name.

    python3 decode_events.py SCHEMAS_DIR FILE

FILE holds events each prefixed by its length (u32, little-endian), as the golden files in
schemas/testdata do. Prints one JSON object per event, with "_type" naming its schema.
Requires fastavro (pip install fastavro).
"""
import datetime
import glob
import io
import json
import os
import struct
import sys

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form


def load_schemas(folder):
    """(writer schemas by fingerprint bytes, current schema by record name)."""
    by_fingerprint, current = {}, {}
    released = sorted(glob.glob(os.path.join(folder, "history", "*.avsc")))
    for path in released + sorted(glob.glob(os.path.join(folder, "*.avsc"))):
        with open(path) as f:
            schema = parse_schema(json.load(f))
        # fastavro prints the fingerprint as the little-endian bytes the header carries.
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        by_fingerprint[fp] = schema
        if os.path.dirname(path) == os.path.normpath(folder):
            current[schema["name"]] = schema
    return by_fingerprint, current


def decode(message, by_fingerprint, current):
    if len(message) < 10 or message[:2] != b"\xc3\x01":
        raise ValueError("not an Avro single-object message")
    writer = by_fingerprint.get(message[2:10])
    if writer is None:
        raise ValueError("unknown schema fingerprint " + message[2:10].hex())
    reader = current[writer["name"]]
    record = schemaless_reader(io.BytesIO(message[10:]), writer, reader)
    record["_type"] = writer["name"].rsplit(".", 1)[-1]
    return record


def to_json(value):
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    raise TypeError(repr(value))


def main():
    folder, path = sys.argv[1], sys.argv[2]
    by_fingerprint, current = load_schemas(folder)
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        (length,) = struct.unpack_from("<I", data, at)
        message = data[at + 4 : at + 4 + length]
        at += 4 + length
        print(json.dumps(decode(message, by_fingerprint, current), default=to_json, sort_keys=True))


if __name__ == "__main__":
    main()
