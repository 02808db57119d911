//! The event contracts: round trips, schema evolution and golden files.
//!
//! Golden files (`schemas/testdata/<schema>.v<N>.avro`) hold events as they were written by each
//! released schema version. They are never rewritten: the current code must keep reading them.
//! Run with `TWIN_BLESS=1` once to write the golden file of a *new* version.

use std::collections::BTreeMap;
use std::path::PathBuf;

use twin_schemas::registry::{check_compatible, parse, registry, HISTORY};
use twin_schemas::{
    content_hash, decode, document_id, encode, Author, BlockKind, Chunk, CleanedDocument,
    ContentBlock, DocumentDeleted, DocumentKind, EmbeddedChunk, Event, EventType, RawDocument,
    SchemaError,
};

fn author() -> Author {
    Author {
        id: "paul".into(),
        full_name: "Paul Iusztin".into(),
    }
}

fn raw() -> RawDocument {
    let mut code = ContentBlock::new(BlockKind::Code, "fn main() {\n\tprintln!(\"hi\");  \n}\n");
    code.language = Some("rust".into());
    let mut heading = ContentBlock::new(BlockKind::Heading, "Why 𝗯𝗼𝗹𝗱 letters?");
    heading.level = 2;
    let content = vec![
        heading,
        ContentBlock::paragraph("Streaming pipelines — in Rust. Ünïcödé stays."),
        code,
    ];
    let url = "https://medium.com/@paul/streaming-pipelines";
    RawDocument {
        id: document_id("medium", url),
        kind: DocumentKind::Article,
        platform: "medium".into(),
        author: author(),
        url: url.into(),
        title: "Streaming pipelines".into(),
        published_at: Some(1_700_000_000_000),
        crawled_at: 1_764_000_000_000,
        content_hash: content_hash(&content),
        content,
        metadata: BTreeMap::from([("subtitle".to_string(), "A guide".to_string())]),
    }
}

fn chunk() -> Chunk {
    let d = raw();
    Chunk {
        id: "c0".into(),
        document_id: d.id,
        kind: DocumentKind::Article,
        platform: d.platform,
        author: d.author,
        url: d.url,
        title: d.title,
        published_at: None,
        position: 0,
        text: "Streaming pipelines — in Rust.".into(),
        token_count: 7,
        document_hash: d.content_hash,
        chunked_at: 1_764_000_000_500,
    }
}

/// One event of every type, exercising optional, nested, unicode and whitespace-heavy fields.
fn samples() -> Vec<Event> {
    let d = raw();
    let mut file = ContentBlock::new(BlockKind::File, "  indented\r\n\ttabs\n");
    file.path = Some("src/lib.rs".into());
    let repo = RawDocument {
        id: document_id("github", "https://github.com/paul/twin"),
        kind: DocumentKind::Repository,
        platform: "github".into(),
        url: "https://github.com/paul/twin".into(),
        title: "twin".into(),
        published_at: None,
        content_hash: content_hash(std::slice::from_ref(&file)),
        content: vec![file],
        metadata: BTreeMap::new(),
        ..d.clone()
    };
    vec![
        Event::Raw(d.clone()),
        Event::Raw(repo),
        Event::Cleaned(CleanedDocument {
            id: d.id.clone(),
            kind: d.kind,
            platform: d.platform.clone(),
            author: d.author.clone(),
            url: d.url.clone(),
            title: d.title.clone(),
            published_at: d.published_at,
            cleaned_at: 1_764_000_000_100,
            content: d.content.clone(),
            content_hash: d.content_hash.clone(),
            raw_content_hash: d.content_hash.clone(),
            metadata: d.metadata.clone(),
        }),
        Event::Chunk(chunk()),
        Event::Embedded(EmbeddedChunk {
            chunk: chunk(),
            model_id: "sentence-transformers/all-MiniLM-L6-v2".into(),
            dimension: 4,
            embedding: vec![0.5, -0.5, 0.5, -0.5],
            embedded_at: 1_764_000_000_900,
        }),
        Event::Deleted(DocumentDeleted {
            document_id: d.id.clone(),
            kind: DocumentKind::Post,
            platform: "linkedin".into(),
            url: "https://www.linkedin.com/posts/paul-1".into(),
            deleted_at: 1_764_000_001_000,
            reason: "HTTP 404 at source".into(),
        }),
    ]
}

#[test]
fn every_event_type_round_trips_exactly() {
    for event in samples() {
        let bytes = encode(&event).expect("encodes");
        assert_eq!(&bytes[..2], &[0xC3, 0x01], "single-object marker");
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back, event);
        assert_eq!(back.key(), event.key());
    }
}

#[test]
fn the_header_names_the_writer_schema() {
    for event in samples() {
        let bytes = encode(&event).expect("encodes");
        let current = &registry().current[event.event_type() as usize];
        assert_eq!(&bytes[..10], &current.header);
    }
    let headers: std::collections::HashSet<[u8; 10]> =
        registry().current.iter().map(|k| k.header).collect();
    assert_eq!(
        headers.len(),
        EventType::ALL.len(),
        "fingerprints are distinct"
    );
}

#[test]
fn bad_bytes_are_reported_not_panicked_on() {
    let good = encode(&samples()[0]).expect("encodes");
    // Truncated: header fine, datum cut short.
    let err = decode(&good[..good.len() / 2]).expect_err("truncated");
    assert!(
        matches!(
            err,
            SchemaError::Malformed {
                event_type: EventType::RawDocument,
                ..
            }
        ),
        "{err}"
    );
    // Not an event at all.
    let err = decode(b"{\"json\": true}").expect_err("json");
    assert!(matches!(err, SchemaError::NotSingleObject(_)), "{err}");
    assert!(decode(&[]).is_err());
    // A fingerprint nobody knows.
    let mut unknown = good.clone();
    unknown[2] ^= 0xFF;
    assert!(matches!(
        decode(&unknown),
        Err(SchemaError::UnknownFingerprint(_))
    ));
    // Trailing garbage after a complete datum.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    assert!(matches!(
        decode(&trailing),
        Err(SchemaError::Malformed { .. })
    ));
    // Every prefix of every event is either an error or (for none) a value: never a panic.
    for event in samples() {
        let bytes = encode(&event).expect("encodes");
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "prefix {cut} of {} decoded",
                event.event_type()
            );
        }
    }
}

#[test]
fn every_current_schema_is_frozen_in_history() {
    for t in EventType::ALL {
        let newest = HISTORY
            .iter()
            .filter(|(ht, _, _)| *ht == t)
            .max_by_key(|(_, v, _)| *v)
            .unwrap_or_else(|| panic!("{t} has no released version in HISTORY"));
        let frozen = parse(t.file_stem(), newest.2).expect("history parses");
        assert_eq!(
            frozen.canonical_form(),
            t.schema().canonical_form(),
            "schemas/avro/{}.avsc changed since v{}: copy it to schemas/avro/history/{}.v{}.avsc, \
             add it to HISTORY, and bless its golden file",
            t.file_stem(),
            newest.1,
            t.file_stem(),
            newest.1 + 1
        );
    }
}

#[test]
fn the_current_schemas_read_every_released_version() {
    for (t, version, text) in HISTORY {
        let old = parse(t.file_stem(), text).expect("history parses");
        check_compatible(&old, t.schema())
            .unwrap_or_else(|e| panic!("{t} v{version} is no longer readable: {e}"));
    }
}

fn golden_path(t: EventType, version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(format!("{}.v{version}.avro", t.file_stem()))
}

/// Golden files: length-prefixed events written by each released version.
#[test]
fn events_written_by_every_released_version_still_decode() {
    let bless = std::env::var_os("TWIN_BLESS").is_some();
    for (t, version, _) in HISTORY {
        let path = golden_path(*t, *version);
        if !path.exists() && bless {
            let mut out = Vec::new();
            for event in samples().into_iter().filter(|e| e.event_type() == *t) {
                let bytes = encode(&event).expect("encodes");
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
            std::fs::write(&path, out).expect("write golden file");
        }
        let data = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run once with TWIN_BLESS=1 to write it)",
                path.display()
            )
        });
        let mut rest = &data[..];
        let mut count = 0;
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let event = decode(&rest[4..4 + len])
                .unwrap_or_else(|e| panic!("{}: event {count}: {e}", path.display()));
            assert_eq!(event.event_type(), *t);
            assert!(!event.key().is_empty());
            rest = &rest[4 + len..];
            count += 1;
        }
        assert!(count > 0, "{} holds no events", path.display());
    }
}

/// The guard above must bite: changes that would break old events are refused.
#[test]
fn a_breaking_schema_change_is_refused() {
    let current: serde_json::Value =
        serde_json::from_str(EventType::RawDocument.avsc()).expect("json");
    let old = EventType::RawDocument.schema();

    let mutate = |f: &dyn Fn(&mut Vec<serde_json::Value>)| {
        let mut schema = current.clone();
        f(schema["fields"].as_array_mut().expect("fields"));
        parse("mutated", &schema.to_string()).expect("mutated schema parses")
    };
    // A new field without a default: old events have no value for it.
    let added =
        mutate(&|fields| fields.push(serde_json::json!({"name": "language", "type": "string"})));
    assert!(check_compatible(old, &added).is_err());
    // A field whose type changed incompatibly.
    let retyped = mutate(&|fields| {
        for f in fields.iter_mut() {
            if f["name"] == "title" {
                f["type"] = serde_json::json!("long");
            }
        }
    });
    assert!(check_compatible(old, &retyped).is_err());
    // A new field *with* a default is a compatible change.
    let extended = mutate(&|fields| {
        fields.push(serde_json::json!({"name": "language", "type": "string", "default": "en"}))
    });
    check_compatible(old, &extended).expect("adding a defaulted field is compatible");
}
