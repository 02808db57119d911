//! What the dataset tests and the benchmark share: documents cleaned and chunked by the real
//! stages (the embedding model's tokenizer counts the tokens) and written to a warehouse as the
//! stream worker writes them.

#![allow(dead_code)]

use tokenizers::Tokenizer;
use twin_config::ChunkingConfig;
use twin_schemas::{Position, RawDocument};
use twin_stream::{clean, Chunker};
use twin_warehouse::Warehouse;

/// The chunker of the default configuration, counting with the model's tokenizer.
pub fn chunker() -> Chunker {
    let path = twin_testkit::process::tool_cache()
        .join("models/sentence-transformers/all-MiniLM-L6-v2/tokenizer.json");
    let tokenizer = Tokenizer::from_file(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    Chunker::new(tokenizer, ChunkingConfig::default(), 256).expect("chunker")
}

/// Write `docs` (raw, cleaned, chunks) at partition 0 from `first_offset` on, one offset each,
/// and record them applied; the next free offset.
pub async fn project(
    warehouse: &dyn Warehouse,
    chunker: &Chunker,
    docs: &[RawDocument],
    first_offset: u64,
) -> u64 {
    let mut offset = first_offset;
    for doc in docs {
        let at = Position {
            partition: 0,
            offset,
        };
        let cleaned = clean::clean(doc, 1);
        let chunks = chunker.chunk(&cleaned, 1).expect("chunk");
        warehouse.put_raw(doc, at).await.expect("raw");
        warehouse.put_cleaned(&cleaned, at).await.expect("cleaned");
        warehouse
            .replace_chunks(&doc.id, &chunks, at)
            .await
            .expect("chunks");
        offset += 1;
    }
    if offset > first_offset {
        warehouse
            .record_applied(&[Position {
                partition: 0,
                offset: offset - 1,
            }])
            .await
            .expect("applied");
    }
    offset
}
