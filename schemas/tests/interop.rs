//! The wire format, read by standard Avro tooling: a Python consumer using fastavro and nothing
//! but the published `.avsc` files decodes every golden event to the same values we do.
//! Needs `python3` with fastavro on `PYTHONPATH` (scripts/setup.sh installs it).

use std::path::PathBuf;
use std::process::Command;

use twin_schemas::registry::HISTORY;
use twin_schemas::{decode, Event};

#[test]
fn fastavro_decodes_every_golden_event_from_the_avsc_files_alone() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for (event_type, version, _) in HISTORY {
        let golden = root
            .join("testdata")
            .join(format!("{}.v{version}.avro", event_type.file_stem()));
        let out = Command::new("python3")
            .arg(root.join("examples/decode_events.py"))
            .arg(root.join("avro"))
            .arg(&golden)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "fastavro could not decode {}: {}\n(run scripts/setup.sh, which installs fastavro, \
             and put its python folder on PYTHONPATH)",
            golden.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();

        let data = std::fs::read(&golden).expect("golden file");
        let mut ours = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("len")) as usize;
            ours.push(decode(&rest[4..4 + len]).expect("we decode it"));
            rest = &rest[4 + len..];
        }
        assert_eq!(theirs.len(), ours.len(), "{}", golden.display());
        for (their, our) in theirs.iter().zip(&ours) {
            assert_eq!(their["_type"], event_type.name());
            let our_json = match our {
                Event::Raw(d) => serde_json::to_value(d),
                Event::Cleaned(d) => serde_json::to_value(d),
                Event::Chunk(c) => serde_json::to_value(c),
                Event::Embedded(e) => serde_json::to_value(e),
                Event::Deleted(d) => serde_json::to_value(d),
            }
            .expect("json");
            // Every field we have, they have, with the same value.
            for (field, value) in our_json.as_object().expect("object") {
                assert_eq!(&their[field], value, "{event_type} field {field}");
            }
        }
    }
}
