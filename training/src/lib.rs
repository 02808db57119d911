//! Training: snapshots pinned to a log position, instruct and preference datasets, fine-tuning of
//! Llama, Mistral and GPT-2 family checkpoints through tch, experiment tracking and ONNX export.
//!
//! Not built yet: `twin train` says so and exits non-zero.
