//! The data folder's layout: where each embedded backend keeps its files under `data_dir`, named
//! in one place so that every role (and every test) finds them alike.

use std::path::{Path, PathBuf};

/// The files of the embedded backends under one data folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLayout {
    root: PathBuf,
}

impl DataLayout {
    /// The layout under `root` (the configuration's `data_dir`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The data folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The embedded event log: `log/TOPIC/PARTITION/`.
    pub fn log(&self) -> PathBuf {
        self.root.join("log")
    }

    /// The embedded warehouse: one SQLite file.
    pub fn warehouse(&self) -> PathBuf {
        self.root.join("warehouse.sqlite")
    }

    /// The embedded vector store (Qdrant Edge): a shard folder per collection.
    pub fn vectors(&self) -> PathBuf {
        self.root.join("vectors")
    }

    /// Models pulled from a hub, and their ONNX exports: `models/ORG/NAME/`.
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }

    /// Training runs: their checkpoints and outputs, `runs/RUN/`.
    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// The model registry: trained models by name and version, `registry/NAME/vN/`.
    pub fn registry(&self) -> PathBuf {
        self.root.join("registry")
    }

    /// The dataset builder's answers from LLMs, cached by request so that a build resumes
    /// without asking again.
    pub fn generator_cache(&self) -> PathBuf {
        self.root.join("datasets").join("answers.sqlite")
    }

    /// The crawlers' state: what each source emitted.
    pub fn ingest_state(&self) -> PathBuf {
        self.root.join("ingest").join("state.sqlite")
    }
}

impl crate::TwinConfig {
    /// Where the embedded backends keep their files.
    pub fn layout(&self) -> DataLayout {
        DataLayout::new(&self.data_dir)
    }
}
