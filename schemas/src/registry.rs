//! Every schema this build knows: the current version of each event type (`schemas/avro/*.avsc`)
//! and every released version (`schemas/avro/history/*.vN.avsc`), indexed by the CRC-64-AVRO
//! fingerprint that prefixes each encoded event.
//!
//! Releasing a schema change means: edit the current file, copy it to `history/` as the next
//! version, and add it to [`HISTORY`]. The tests refuse a current schema that is not frozen in
//! history, and a history version that the current schema cannot read.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;

use crate::SchemaError;

/// The kinds of event on the log, one per schema file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `raw_document.avsc`
    RawDocument,
    /// `cleaned_document.avsc`
    CleanedDocument,
    /// `chunk.avsc`
    Chunk,
    /// `embedded_chunk.avsc`
    EmbeddedChunk,
    /// `document_deleted.avsc`
    DocumentDeleted,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 5] = [
        EventType::RawDocument,
        EventType::CleanedDocument,
        EventType::Chunk,
        EventType::EmbeddedChunk,
        EventType::DocumentDeleted,
    ];

    /// The schema's record name.
    pub fn name(self) -> &'static str {
        match self {
            EventType::RawDocument => "RawDocument",
            EventType::CleanedDocument => "CleanedDocument",
            EventType::Chunk => "Chunk",
            EventType::EmbeddedChunk => "EmbeddedChunk",
            EventType::DocumentDeleted => "DocumentDeleted",
        }
    }

    /// The schema file's name without `.avsc`.
    pub fn file_stem(self) -> &'static str {
        match self {
            EventType::RawDocument => "raw_document",
            EventType::CleanedDocument => "cleaned_document",
            EventType::Chunk => "chunk",
            EventType::EmbeddedChunk => "embedded_chunk",
            EventType::DocumentDeleted => "document_deleted",
        }
    }

    /// The current schema's text, as published in `schemas/avro/`.
    pub fn avsc(self) -> &'static str {
        match self {
            EventType::RawDocument => include_str!("../avro/raw_document.avsc"),
            EventType::CleanedDocument => include_str!("../avro/cleaned_document.avsc"),
            EventType::Chunk => include_str!("../avro/chunk.avsc"),
            EventType::EmbeddedChunk => include_str!("../avro/embedded_chunk.avsc"),
            EventType::DocumentDeleted => include_str!("../avro/document_deleted.avsc"),
        }
    }

    /// The current schema, parsed.
    pub fn schema(self) -> &'static Schema {
        &registry().current[self as usize].schema
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every released schema version: (event type, version, text). Append, never edit.
pub const HISTORY: &[(EventType, u32, &str)] = &[
    (
        EventType::RawDocument,
        1,
        include_str!("../avro/history/raw_document.v1.avsc"),
    ),
    (
        EventType::CleanedDocument,
        1,
        include_str!("../avro/history/cleaned_document.v1.avsc"),
    ),
    (
        EventType::Chunk,
        1,
        include_str!("../avro/history/chunk.v1.avsc"),
    ),
    (
        EventType::EmbeddedChunk,
        1,
        include_str!("../avro/history/embedded_chunk.v1.avsc"),
    ),
    (
        EventType::DocumentDeleted,
        1,
        include_str!("../avro/history/document_deleted.v1.avsc"),
    ),
];

/// A parsed schema and the 10-byte single-object header that names it.
pub struct KnownSchema {
    /// Which event type it describes.
    pub event_type: EventType,
    /// Its released version, or `None` for a current schema not yet frozen in [`HISTORY`].
    pub version: Option<u32>,
    /// The parsed schema.
    pub schema: Schema,
    /// `C3 01` followed by the little-endian CRC-64-AVRO fingerprint.
    pub header: [u8; 10],
}

/// The schemas this build reads and writes.
pub struct Registry {
    /// Current schema per event type, indexed by `EventType as usize`.
    pub current: Vec<KnownSchema>,
    /// Every known writer schema (current and released) by fingerprint.
    by_fingerprint: HashMap<[u8; 8], KnownSchema>,
}

impl Registry {
    /// The writer schema an encoded event's fingerprint names.
    pub fn writer_schema(&self, fingerprint: &[u8; 8]) -> Option<&KnownSchema> {
        self.by_fingerprint.get(fingerprint)
    }

    /// Every known writer schema, current and released.
    pub fn all(&self) -> impl Iterator<Item = &KnownSchema> {
        self.by_fingerprint.values()
    }
}

/// The registry, parsed once. The schema texts are compiled in and checked by this crate's
/// tests, so a parse failure here is a build defect, not bad input.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let known = |event_type: EventType, version: Option<u32>, text: &str| {
            let schema = parse(event_type.file_stem(), text).expect("compiled-in schema parses");
            let header = header_of(&schema);
            KnownSchema {
                event_type,
                version,
                schema,
                header,
            }
        };
        let current: Vec<KnownSchema> = EventType::ALL
            .iter()
            .map(|&t| known(t, None, t.avsc()))
            .collect();
        let mut by_fingerprint = HashMap::new();
        for &(t, version, text) in HISTORY {
            let k = known(t, Some(version), text);
            by_fingerprint.insert(fingerprint_of(&k.header), k);
        }
        for &t in &EventType::ALL {
            let k = known(t, None, t.avsc());
            by_fingerprint.entry(fingerprint_of(&k.header)).or_insert(k);
        }
        Registry {
            current,
            by_fingerprint,
        }
    })
}

/// Parse a schema text, naming it in the error.
pub fn parse(name: &str, text: &str) -> Result<Schema, SchemaError> {
    Schema::parse_str(text).map_err(|e| SchemaError::Schema {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// The single-object header of a schema: `C3 01` and its CRC-64-AVRO fingerprint, little-endian.
pub fn header_of(schema: &Schema) -> [u8; 10] {
    let mut header = [0u8; 10];
    header[0] = 0xC3;
    header[1] = 0x01;
    header[2..].copy_from_slice(&crate::fingerprint::fingerprint(schema).to_le_bytes());
    header
}

/// The 8 fingerprint bytes of a header.
pub fn fingerprint_of(header: &[u8; 10]) -> [u8; 8] {
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&header[2..10]);
    fp
}

/// Whether events written with `writer` can be read with `reader` (Avro schema resolution).
pub fn check_compatible(writer: &Schema, reader: &Schema) -> Result<(), SchemaError> {
    SchemaCompatibility::can_read(writer, reader)
        .map(|_| ())
        .map_err(|e| SchemaError::Schema {
            name: reader.name().map(|n| n.to_string()).unwrap_or_default(),
            reason: format!("cannot read events of the older schema: {e}"),
        })
}
