//! Event contracts of the LLM twin platform.
//!
//! The `.avsc` files under `schemas/avro/` are the contract; this crate mirrors them in Rust and
//! encodes events in Avro's *single-object encoding* (see `schemas/README.md` for why).
//!
//! - [`types`]: the Rust mirror of each schema ([`RawDocument`], [`CleanedDocument`], [`Chunk`],
//!   [`EmbeddedChunk`], [`DocumentDeleted`]) and the [`Event`] enum over them.
//! - [`codec`]: [`encode`] and [`decode`]: bytes on the log to and from events, resolving events
//!   written with any released version of a schema to the current one.
//! - [`registry`]: every schema, current and released, by [`EventType`] and by fingerprint;
//!   [`registry::check_compatible`] guards schema evolution.
//! - [`fingerprint`]: the specification's schema fingerprint (CRC-64-AVRO of the canonical form).
//! - [`ids`]: deterministic document and chunk ids ([`ChunkId`]), content hashes, and the log
//!   [`Position`] of an event.
//! - [`urls`]: [`strip_tracking`], the one rule for tracking parameters in links, used by the
//!   crawlers (canonical urls) and the clean stage (links in text).

pub mod codec;
pub mod fingerprint;
pub mod ids;
pub mod registry;
pub mod types;
pub mod urls;

pub use codec::{decode, encode};
pub use ids::{content_hash, document_id, ChunkId, Position};
pub use registry::EventType;
pub use types::{
    Author, BlockKind, Chunk, CleanedDocument, ContentBlock, DocumentDeleted, DocumentKind,
    EmbeddedChunk, Event, RawDocument,
};
pub use urls::strip_tracking;

/// What can go wrong turning events into bytes and back.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The bytes do not start with the single-object marker `C3 01` and a fingerprint.
    #[error("not an Avro single-object event: {0}")]
    NotSingleObject(String),
    /// The fingerprint names no schema this build knows (written by a newer producer, or not ours).
    #[error(
        "unknown schema fingerprint {0:016x}: not a schema in schemas/avro (a newer producer?)"
    )]
    UnknownFingerprint(u64),
    /// The datum does not decode with the schema its header names (truncated or corrupt bytes).
    #[error("{event_type} event does not decode: {reason}")]
    Malformed {
        /// The event type its header names.
        event_type: EventType,
        /// What the decoder reported.
        reason: String,
    },
    /// A Rust value does not fit its schema (a bug in this crate, caught by the tests).
    #[error("{event_type} event does not encode: {reason}")]
    Encode {
        /// The event type being encoded.
        event_type: EventType,
        /// What the encoder reported.
        reason: String,
    },
    /// An identity (a chunk id) is not of its form.
    #[error("{0}")]
    Identity(String),
    /// A schema file does not parse, or two schemas are incompatible.
    #[error("schema {name}: {reason}")]
    Schema {
        /// The schema's name or file.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}
