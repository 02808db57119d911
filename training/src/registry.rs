//! The model registry: trained models under the data folder as `registry/NAME/vN/`, each a
//! Hugging Face folder (a full model or a PEFT adapter) with `lineage.json` saying what made it:
//! the run, the dataset, the snapshot and its log positions, and the base model.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use twin_warehouse::Position;

use crate::{Result, TrainingError};

/// The `kind` of a base model imported from a file (`twin models import`) rather than trained.
pub const IMPORTED: &str = "imported";

/// What made a registered model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// `full` or `lora` (trained), or [`IMPORTED`].
    pub kind: String,
    /// The model it was trained from (a folder, `name@vN`, or `init:CONFIG`).
    pub base: String,
    /// The folder of the base model, for an adapter (what `merge` and loading need).
    pub base_dir: Option<PathBuf>,
    /// The training run.
    pub run_id: String,
    /// The dataset (its id, or the file it was read from).
    pub dataset: String,
    /// The snapshot the dataset was built from.
    pub snapshot_id: Option<String>,
    /// The snapshot's log positions.
    #[serde(default)]
    pub positions: Vec<Position>,
    /// When it was registered, ms since the epoch.
    pub created_at: i64,
}

/// One registered model.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Its version (1, 2, ...).
    pub version: u32,
    /// Its folder.
    pub dir: PathBuf,
    /// What made it.
    pub lineage: Lineage,
}

impl Entry {
    /// `name@vN`.
    pub fn reference(&self) -> String {
        format!("{}@v{}", self.name, self.version)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainingError + '_ {
    move |source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A registry name: letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(TrainingError::Invalid(format!(
            "model name {name:?}: use letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// Copy the model folder `from` into the registry as the next version of `name`.
pub fn register(root: &Path, name: &str, from: &Path, lineage: &Lineage) -> Result<Entry> {
    check_name(name)?;
    let folder = root.join(name);
    std::fs::create_dir_all(&folder).map_err(io(&folder))?;
    let version = versions(&folder).last().copied().unwrap_or(0) + 1;
    let staging = folder.join(format!(".v{version}.part"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        if entry.path().is_file() {
            let to = staging.join(entry.file_name());
            std::fs::copy(entry.path(), &to).map_err(io(&to))?;
        }
    }
    crate::weights::write_json(
        &staging.join("lineage.json"),
        &serde_json::to_value(lineage).unwrap_or_default(),
    )?;
    let dir = folder.join(format!("v{version}"));
    std::fs::rename(&staging, &dir).map_err(io(&dir))?;
    Ok(Entry {
        name: name.into(),
        version,
        dir,
        lineage: lineage.clone(),
    })
}

fn versions(folder: &Path) -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    found.sort();
    found
}

fn entry(root: &Path, name: &str, version: u32) -> Result<Entry> {
    let dir = root.join(name).join(format!("v{version}"));
    let path = dir.join("lineage.json");
    let lineage: Lineage = crate::weights::read_json(&path)?;
    Ok(Entry {
        name: name.into(),
        version,
        dir,
        lineage,
    })
}

/// Every registered model, by name then version.
pub fn list(root: &Path) -> Result<Vec<Entry>> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        for version in versions(&root.join(&name)) {
            out.push(entry(root, &name, version)?);
        }
    }
    Ok(out)
}

/// The entry `key` names: `name@vN` (or `name@N`), or `name` for its newest version. `None`
/// when `key` is not a registry reference at all (it may be a folder).
pub fn find(root: &Path, key: &str) -> Result<Option<Entry>> {
    let (name, version) = match key.split_once('@') {
        Some((name, v)) => {
            let v = v.trim_start_matches('v');
            let version: u32 = v.parse().map_err(|_| {
                TrainingError::Invalid(format!("{key}: the version must be vN, as in {name}@v1"))
            })?;
            (name, Some(version))
        }
        None => (key, None),
    };
    if check_name(name).is_err() {
        return Ok(None);
    }
    let all = versions(&root.join(name));
    let version = match version {
        Some(v) if all.contains(&v) => v,
        Some(v) => {
            return Err(TrainingError::Invalid(format!(
                "{name} has no version v{v} in the registry (it has {})",
                all.iter()
                    .map(|v| format!("v{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        None => match all.last() {
            Some(v) => *v,
            None => return Ok(None),
        },
    };
    entry(root, name, version).map(Some)
}
