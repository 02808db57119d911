//! Serving: retrieval-augmented generation over HTTP on ONNX Runtime.
//!
//! Not built yet: `twin serve` says so and exits non-zero.
