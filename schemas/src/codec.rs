//! Events to bytes and back, in Avro single-object encoding: `C3 01`, the writer schema's
//! 8-byte CRC-64-AVRO fingerprint (little-endian), then the Avro binary datum.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{from_value, to_value};
use serde::Serialize;

use crate::registry::{registry, EventType};
use crate::types::Event;
use crate::SchemaError;

const HEADER_LEN: usize = 10;

/// Encode an event with its current schema.
pub fn encode(event: &Event) -> Result<Vec<u8>, SchemaError> {
    let event_type = event.event_type();
    let value = match event {
        Event::Raw(d) => value_of(event_type, d),
        Event::Cleaned(d) => value_of(event_type, d),
        Event::Chunk(c) => value_of(event_type, c),
        Event::Embedded(e) => value_of(event_type, e),
        Event::Deleted(d) => value_of(event_type, d),
    }?;
    let known = &registry().current[event_type as usize];
    let fail = |e: apache_avro::Error| SchemaError::Encode {
        event_type,
        reason: e.to_string(),
    };
    let datum = GenericDatumWriter::builder(&known.schema)
        .build()
        .map_err(fail)?
        .write_value_to_vec(value)
        .map_err(fail)?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + datum.len());
    bytes.extend_from_slice(&known.header);
    bytes.extend_from_slice(&datum);
    Ok(bytes)
}

/// Decode an event written with any schema version this build knows, resolved to the current one.
pub fn decode(bytes: &[u8]) -> Result<Event, SchemaError> {
    let (event_type, value) = decode_value(bytes)?;
    let malformed = |e: apache_avro::Error| SchemaError::Malformed {
        event_type,
        reason: e.to_string(),
    };
    Ok(match event_type {
        EventType::RawDocument => Event::Raw(from_value(&value).map_err(malformed)?),
        EventType::CleanedDocument => Event::Cleaned(from_value(&value).map_err(malformed)?),
        EventType::Chunk => Event::Chunk(from_value(&value).map_err(malformed)?),
        EventType::EmbeddedChunk => Event::Embedded(from_value(&value).map_err(malformed)?),
        EventType::DocumentDeleted => Event::Deleted(from_value(&value).map_err(malformed)?),
    })
}

/// Decode to a generic Avro value in the current schema, with the event type the header names.
pub fn decode_value(bytes: &[u8]) -> Result<(EventType, Value), SchemaError> {
    if bytes.len() < HEADER_LEN || bytes[0] != 0xC3 || bytes[1] != 0x01 {
        let shown: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(SchemaError::NotSingleObject(format!(
            "{} bytes, starting {}",
            bytes.len(),
            shown.join(" ")
        )));
    }
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[2..HEADER_LEN]);
    let registry = registry();
    let writer = registry
        .writer_schema(&fingerprint)
        .ok_or(SchemaError::UnknownFingerprint(u64::from_le_bytes(
            fingerprint,
        )))?;
    let event_type = writer.event_type;
    let reader_schema = &registry.current[event_type as usize].schema;
    let malformed = |e: apache_avro::Error| SchemaError::Malformed {
        event_type,
        reason: e.to_string(),
    };
    let mut datum = &bytes[HEADER_LEN..];
    let value = GenericDatumReader::builder(&writer.schema)
        .reader_schema(reader_schema)
        .build()
        .map_err(malformed)?
        .read_value(&mut datum)
        .map_err(malformed)?;
    if !datum.is_empty() {
        return Err(SchemaError::Malformed {
            event_type,
            reason: format!("{} trailing bytes after the datum", datum.len()),
        });
    }
    Ok((event_type, value))
}

fn value_of<T: Serialize>(event_type: EventType, item: &T) -> Result<Value, SchemaError> {
    let fail = |e: apache_avro::Error| SchemaError::Encode {
        event_type,
        reason: e.to_string(),
    };
    // Serde gives plain longs and strings; resolving against the schema turns them into the
    // logical types and enum symbols the schema declares.
    to_value(item)
        .map_err(fail)?
        .resolve(event_type.schema())
        .map_err(fail)
}
