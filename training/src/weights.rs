//! Tensors in safetensors files, by Hugging Face parameter name: one `model.safetensors`, or
//! shards listed by `model.safetensors.index.json`. Read into libtorch tensors (bf16 and f16
//! widened to f32 on the CPU); written as f32.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

use crate::{Result, TrainingError};

/// Tensors by name.
pub type Weights = BTreeMap<String, Tensor>;

/// The safetensors files of a checkpoint folder: `model.safetensors`, or the shards its index
/// names, or (for an adapter) `adapter_model.safetensors`.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let value: serde_json::Value = read_json(&index)?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| TrainingError::Config {
                path: index.clone(),
                reason: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(TrainingError::Config {
        path: dir.to_path_buf(),
        reason: "no model.safetensors and no model.safetensors.index.json: not a checkpoint \
                 in the Hugging Face layout (twin reads safetensors only)"
            .into(),
    })
}

/// Every tensor of `files`, as f32 (integer tensors keep their kind).
pub fn load(files: &[PathBuf]) -> Result<Weights> {
    let mut weights = Weights::new();
    for path in files {
        // Read whole (the project forbids `unsafe`, so no memory map): one shard at a time.
        let map = std::fs::read(path).map_err(|source| TrainingError::Io {
            path: path.clone(),
            source,
        })?;
        let tensors = SafeTensors::deserialize(&map).map_err(|e| TrainingError::Config {
            path: path.clone(),
            reason: format!("not a safetensors file: {e}"),
        })?;
        for (name, view) in tensors.tensors() {
            let kind = match view.dtype() {
                Dtype::F32 => Kind::Float,
                Dtype::F16 => Kind::Half,
                Dtype::BF16 => Kind::BFloat16,
                Dtype::F64 => Kind::Double,
                Dtype::I64 => Kind::Int64,
                Dtype::I32 => Kind::Int,
                Dtype::U8 => Kind::Uint8,
                Dtype::BOOL => Kind::Bool,
                other => {
                    return Err(TrainingError::Config {
                        path: path.clone(),
                        reason: format!(
                            "tensor `{name}` has dtype {other:?}, which twin cannot read"
                        ),
                    })
                }
            };
            let shape: Vec<i64> = view.shape().iter().map(|d| *d as i64).collect();
            let tensor = Tensor::f_of_data_size(view.data(), &shape, kind)
                .map_err(|e| TrainingError::Torch(format!("{}: `{name}`: {e}", path.display())))?;
            let tensor = match kind {
                Kind::Half | Kind::BFloat16 | Kind::Double => tensor.to_kind(Kind::Float),
                _ => tensor,
            };
            weights.insert(name, tensor);
        }
    }
    Ok(weights)
}

/// Write `tensors` (f32 or i64) to one safetensors file, with `metadata` in its header.
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, tensor) in tensors {
        let tensor = tensor.detach().to_device(tch::Device::Cpu).contiguous();
        let shape: Vec<usize> = tensor.size().iter().map(|d| *d as usize).collect();
        let numel = tensor.numel();
        let (dtype, bytes) = match tensor.kind() {
            Kind::Int64 => {
                let mut v = vec![0i64; numel];
                tensor.copy_data(&mut v, numel);
                (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
            _ => {
                let tensor = tensor.to_kind(Kind::Float);
                let mut v = vec![0f32; numel];
                tensor.copy_data(&mut v, numel);
                (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
        };
        buffers.push((name.clone(), dtype, shape, bytes));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TrainingError::Torch(format!("{}: {e}", path.display())))?;
    let partial = path.with_extension("safetensors.part");
    safetensors::serialize_to_file(views, metadata, &partial)
        .map_err(|e| TrainingError::Torch(format!("{}: {e}", path.display())))?;
    std::fs::rename(&partial, path).map_err(|source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A whole file as text.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A JSON file, parsed into `T`; the error names the file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read_text(path)?).map_err(|e| TrainingError::Config {
        path: path.to_path_buf(),
        reason: format!("not JSON of the expected shape: {e}"),
    })
}

/// Write `value` as pretty JSON.
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    std::fs::write(path, text + "\n").map_err(|source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
    })
}
