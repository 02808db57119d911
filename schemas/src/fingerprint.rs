//! The Avro specification's schema fingerprint: CRC-64-AVRO (Rabin) over the schema's Parsing
//! Canonical Form.
//!
//! apache-avro 0.22 writes a primitive carrying a logical type as `{"type":"long"}` in its
//! canonical form, where the specification's [PRIMITIVES] rule says `"long"` (upstream
//! AVRO-4004). Its fingerprints then differ from every other implementation's, and a consumer
//! using standard tooling could not find our writer schemas. We reduce those objects to the plain
//! name and fingerprint the result as the specification defines.

use apache_avro::Schema;

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The specification's Parsing Canonical Form of a schema.
pub fn canonical_form(schema: &Schema) -> String {
    let mut form = schema.canonical_form();
    for primitive in PRIMITIVES {
        // In canonical JSON, an object holding nothing but a primitive "type" is a primitive
        // whose other attributes (logicalType) were stripped: records start with "name", and
        // arrays, maps and fixed carry more keys.
        form = form.replace(
            &format!(r#"{{"type":"{primitive}"}}"#),
            &format!(r#""{primitive}""#),
        );
    }
    form
}

/// CRC-64-AVRO of the schema's canonical form, as the specification computes it.
pub fn fingerprint(schema: &Schema) -> u64 {
    rabin(canonical_form(schema).as_bytes())
}

/// The 64-bit Rabin fingerprint the Avro specification gives in full.
fn rabin(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: [u64; 256] = std::array::from_fn(|i| {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & 0u64.wrapping_sub(fp & 1));
        }
        fp
    });
    bytes.iter().fold(EMPTY, |fp, &b| {
        (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_types_reduce_to_their_primitive() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"o","type":["null",{"type":"long","logicalType":"timestamp-millis"}]}]}"#,
        )
        .expect("parses");
        assert_eq!(
            canonical_form(&schema),
            r#"{"name":"R","type":"record","fields":[{"name":"t","type":"long"},{"name":"o","type":["null","long"]}]}"#
        );
    }

    #[test]
    fn fingerprints_match_an_independent_implementation() {
        // Computed by fastavro 1.12.1 (`fingerprint(to_parsing_canonical_form(s), "CRC-64-AVRO")`,
        // which prints the little-endian bytes) for schemas/avro/history/document_deleted.v1.avsc.
        let schema = Schema::parse_str(include_str!("../avro/history/document_deleted.v1.avsc"))
            .expect("parses");
        let bytes = fingerprint(&schema).to_le_bytes();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "12bd57f15333dd0e");
    }
}
