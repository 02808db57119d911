//! Ingest: autonomous, scheduled crawlers (Medium, Substack, LinkedIn export, GitHub, any article
//! url) that emit one `RawDocument` event per document to the raw-documents topic.
//!
//! Not built yet: tracked by the ingest issue (#3). `twin ingest` says so and exits non-zero.
