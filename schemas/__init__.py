"""Avro schemas of pagerstream's topics and the single-object codec that frames them.

Every record on a pagerstream topic is Avro single-object encoded: the two marker bytes
``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
Canonical Form, then the Avro binary body. A consumer looks the fingerprint up among the
schemas it knows (``*.avsc`` here plus ``history/``) and resolves writer → reader schema.
"""

from pagerstream.schemas.codec import (  # noqa: F401
    SCHEMA_NAMES,
    AvroCodec,
    SchemaRegistry,
    UnknownSchema,
    DecodeError,
    registry,
)
