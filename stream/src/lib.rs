//! Stream: the feature pipeline. Consumes raw-document events, cleans, chunks and embeds them, and
//! keeps the warehouse (ClickHouse or embedded) and the vector store (Qdrant or Qdrant Edge) current.
//!
//! Not built yet: tracked by the feature-pipeline issue (#4). `twin stream` says so and exits
//! non-zero.
