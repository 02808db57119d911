//! A model's files: `config.json`, `tokenizer.json`, `model.safetensors`, and the ONNX file
//! exported from them.
//!
//! [`ModelFiles::locate`] looks, in order, in the folder the configuration names, in the data
//! folder (`DATA_DIR/models/ORG/NAME`, where [`pull`] downloads to), and in the tool cache
//! (`~/.cache/twin/models/ORG/NAME`, where the setup script installs the default model).

use std::path::{Path, PathBuf};

use tracing::info;

use twin_config::EmbeddingPrecision;

use crate::bert::{self, ExportSummary};
use crate::EmbeddingError;

/// Files every model needs.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
/// Files a sentence-transformers model may have besides.
pub const OPTIONAL_FILES: [&str; 4] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
];

/// A model folder that holds every required file.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Hub id, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    pub id: String,
    /// The folder.
    pub dir: PathBuf,
}

impl ModelFiles {
    /// Use `dir` as the files of model `id`, checking the required files are there.
    pub fn at(id: &str, dir: impl Into<PathBuf>) -> Result<Self, EmbeddingError> {
        let dir = dir.into();
        if let Some(missing) = REQUIRED_FILES.iter().find(|f| !dir.join(f).is_file()) {
            return Err(EmbeddingError::Model {
                path: dir.clone(),
                reason: format!(
                    "{missing} is missing (a model folder holds {})",
                    REQUIRED_FILES.join(", ")
                ),
            });
        }
        Ok(Self {
            id: id.to_string(),
            dir,
        })
    }

    /// Find model `id`: in `configured` if given, else under `data_dir/models`, else in the tool
    /// cache. `None` when it is nowhere (then [`pull`] it).
    pub fn locate(
        id: &str,
        configured: Option<&Path>,
        data_dir: &Path,
    ) -> Result<Option<Self>, EmbeddingError> {
        if let Some(dir) = configured {
            return Self::at(id, dir).map(Some);
        }
        let candidates = [
            Some(twin_config::DataLayout::new(data_dir).models().join(id)),
            tool_cache().map(|c| c.join("models").join(id)),
        ];
        Ok(candidates
            .into_iter()
            .flatten()
            .find_map(|dir| Self::at(id, dir).ok()))
    }

    /// The ONNX file of the weights at `precision` under `cache_dir`, exported now if it is
    /// missing or older than the weights.
    pub fn onnx(
        &self,
        cache_dir: &Path,
        precision: EmbeddingPrecision,
    ) -> Result<PathBuf, EmbeddingError> {
        let dir = cache_dir.join(&self.id);
        let out = dir.join(onnx_file_name(precision));
        let weights = self.dir.join("model.safetensors");
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let fresh = matches!((modified(&out), modified(&weights)), (Some(o), Some(w)) if o >= w);
        if !fresh {
            let summary = self.export(&out, precision)?;
            info!(model = %self.id, path = %out.display(), layers = summary.layers,
                  parameters = summary.parameters, precision = precision.name(),
                  "exported ONNX model");
            // The first format's file (standard operators), which nothing reads any more.
            let _ = std::fs::remove_file(dir.join("model.onnx"));
        }
        Ok(out)
    }

    /// Export the weights to an ONNX file at `out`, its matrix products at `precision`.
    pub fn export(
        &self,
        out: &Path,
        precision: EmbeddingPrecision,
    ) -> Result<ExportSummary, EmbeddingError> {
        bert::export(&self.dir, out, precision)
    }
}

/// The version of what [`bert::export`] writes, in the file's name, so that a file written by
/// an earlier version is exported again rather than loaded. 2: fused `com.microsoft` operators.
pub const EXPORT_FORMAT: u32 = 2;

/// The name of the exported ONNX file at `precision`, e.g. `model.fp32.v2.onnx`.
pub fn onnx_file_name(precision: EmbeddingPrecision) -> String {
    format!("model.{}.v{EXPORT_FORMAT}.onnx", precision.name())
}

pub use twin_onnx::{default_library as default_runtime_library, tool_cache, ONNXRUNTIME_VERSION};

/// Download model `id` at `revision` from a Hugging Face Hub `endpoint` into `dest`.
///
/// Files go to a temporary name first, so an interrupted download leaves no half file behind.
/// `token` (from `HF_TOKEN`) is sent as a bearer token and never logged.
pub async fn pull(
    endpoint: &str,
    id: &str,
    revision: &str,
    dest: &Path,
    token: Option<&str>,
) -> Result<ModelFiles, EmbeddingError> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("twin/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| EmbeddingError::Download {
            url: endpoint.to_string(),
            reason: e.to_string(),
        })?;
    let base = endpoint.trim_end_matches('/');
    for (file, required) in REQUIRED_FILES
        .iter()
        .map(|f| (*f, true))
        .chain(OPTIONAL_FILES.iter().map(|f| (*f, false)))
    {
        let url = format!("{base}/{id}/resolve/{revision}/{file}");
        let mut request = client.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let fail = |reason: String| EmbeddingError::Download {
            url: url.clone(),
            reason,
        };
        let mut response = request.send().await.map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND && !required {
            continue;
        }
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}")));
        }
        let path = dest.join(file);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| EmbeddingError::io(dir, e))?;
        }
        let tmp = path.with_extension("part");
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| EmbeddingError::io(&tmp, e))?;
        let mut bytes = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
            bytes += chunk.len() as u64;
            tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                .await
                .map_err(|e| EmbeddingError::io(&tmp, e))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(|e| EmbeddingError::io(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| EmbeddingError::io(&path, e))?;
        info!(model = id, file, bytes, "downloaded");
    }
    ModelFiles::at(id, dest)
}
