//! Training runs as the warehouse keeps them: a record (parameters, lineage, code version,
//! results) and per-step metrics; and their comparison, as a table and as loss curves drawn
//! to PNG and SVG.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use twin_config::TrainingConfig;
use twin_warehouse::{MetricRow, Position, RunRecord, Warehouse};

use crate::trainer::{EvalMetrics, Plan, StepMetrics};
use crate::{Result, TrainingError};

/// The code that trained: the package version and, when built from a git checkout, its commit.
pub fn code_version() -> String {
    match option_env!("TWIN_GIT_COMMIT") {
        Some(commit) if !commit.is_empty() => {
            format!("{} ({commit})", env!("CARGO_PKG_VERSION"))
        }
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// It trained a model.
    #[default]
    Training,
    /// It only evaluated a model that no run of ours trained (a base checkpoint): `twin eval`
    /// records such an evaluation as a run of its own, so that it can be compared with the
    /// runs that trained.
    Evaluation,
}

/// What a run's record holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Training, or an evaluation only.
    #[serde(default)]
    pub kind: RunKind,
    /// The training parameters, as resolved (config, then options).
    pub params: TrainingConfig,
    /// The model trained from: a folder, a registry name, or `init:CONFIG`.
    pub model: String,
    /// Its family (`llama`, ...).
    pub family: String,
    /// Parameters of the model.
    pub parameters: i64,
    /// Parameters training changed.
    pub trainable_parameters: i64,
    /// The dataset: its id, or the file it was read from.
    pub dataset: String,
    /// The snapshot the dataset was built from, if any.
    pub snapshot_id: Option<String>,
    /// The snapshot's log positions.
    #[serde(default)]
    pub positions: Vec<Position>,
    /// Training and test examples, and samples left out for length.
    pub examples: (usize, usize, usize),
    /// The code that trained.
    pub code_version: String,
    /// `cpu` or `cuda:N`, and the precision.
    pub device: String,
    /// Steps planned.
    pub plan: Plan,
    /// What it ended with.
    #[serde(default)]
    pub result: Option<RunResult>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Steps done.
    pub steps: u64,
    /// The last step's training loss.
    pub train_loss: Option<f64>,
    /// The last evaluation loss.
    pub eval_loss: Option<f64>,
    /// Mean training tokens per second.
    pub tokens_per_second: f64,
    /// Seconds spent.
    pub seconds: f64,
    /// The output folder (Hugging Face layout).
    pub output: Option<PathBuf>,
    /// The registry entry made of it (`name@vN`).
    pub registered: Option<String>,
    /// The last checkpoint.
    pub checkpoint: Option<PathBuf>,
}

/// A run id: `r-` and the start time in ms, in hex (so ids sort by time).
pub fn new_run_id(now_ms: i64) -> String {
    format!("r-{now_ms:012x}")
}

/// Parse a record's body.
pub fn info(record: &RunRecord) -> Result<RunInfo> {
    serde_json::from_str(&record.body)
        .map_err(|e| TrainingError::Invalid(format!("run {}: unreadable record: {e}", record.id)))
}

/// A record of `info`.
pub fn record(
    id: &str,
    name: Option<String>,
    status: &str,
    created_at: i64,
    info: &RunInfo,
) -> RunRecord {
    RunRecord {
        id: id.to_string(),
        name,
        status: status.to_string(),
        created_at,
        updated_at: twin_datasets::build::now_ms(),
        body: serde_json::to_string(info).unwrap_or_default(),
    }
}

/// A step's metrics as a row.
pub fn step_row(run_id: &str, m: &StepMetrics) -> MetricRow {
    MetricRow {
        run_id: run_id.into(),
        kind: "train".into(),
        step: m.step,
        body: serde_json::to_string(m).unwrap_or_default(),
    }
}

/// An evaluation as a row.
pub fn eval_row(run_id: &str, m: &EvalMetrics) -> MetricRow {
    MetricRow {
        run_id: run_id.into(),
        kind: "eval".into(),
        step: m.step,
        body: serde_json::to_string(m).unwrap_or_default(),
    }
}

/// A run's curves: training and evaluation loss by step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// Training steps.
    pub train: Vec<StepMetrics>,
    /// Evaluations.
    pub eval: Vec<EvalMetrics>,
}

/// Read a run's curves from the warehouse.
pub async fn curves(warehouse: &dyn Warehouse, run_id: &str) -> Result<Curves> {
    let mut curves = Curves::default();
    for row in warehouse.run_metrics(run_id).await? {
        let bad = |e: serde_json::Error| {
            TrainingError::Invalid(format!("run {run_id}: step {}: {e}", row.step))
        };
        match row.kind.as_str() {
            "train" => curves
                .train
                .push(serde_json::from_str(&row.body).map_err(bad)?),
            "eval" => curves
                .eval
                .push(serde_json::from_str(&row.body).map_err(bad)?),
            _ => {}
        }
    }
    Ok(curves)
}

/// The table of `twin runs compare`: one column per run, a row per parameter that differs
/// (or every parameter with `all`) and the final metrics.
pub fn compare_table(runs: &[(RunRecord, RunInfo, Curves)], all: bool) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    rows.push((
        "run".into(),
        runs.iter()
            .map(|(r, _, _)| match &r.name {
                Some(n) => format!("{} ({n})", r.id),
                None => r.id.clone(),
            })
            .collect(),
    ));
    rows.push((
        "status".into(),
        runs.iter().map(|(r, _, _)| r.status.clone()).collect(),
    ));
    let flat: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|(_, info, _)| {
            let mut map = BTreeMap::new();
            // An evaluation-only run trained nothing: it has no parameters to show.
            if info.kind == RunKind::Training {
                flatten(
                    "",
                    &serde_json::to_value(&info.params).unwrap_or_default(),
                    &mut map,
                );
            }
            map.insert("model".into(), info.model.clone());
            map.insert("dataset".into(), info.dataset.clone());
            map.insert(
                "trainable parameters".into(),
                info.trainable_parameters.to_string(),
            );
            map
        })
        .collect();
    let keys: std::collections::BTreeSet<&String> = flat.iter().flat_map(|m| m.keys()).collect();
    for key in keys {
        let values: Vec<String> = flat
            .iter()
            .map(|m| m.get(key).cloned().unwrap_or_else(|| "-".into()))
            .collect();
        if all || values.iter().any(|v| v != &values[0]) || runs.len() == 1 {
            rows.push((key.clone(), values));
        }
    }
    let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
    rows.push((
        "steps".into(),
        runs.iter()
            .map(|(_, _, c)| c.train.last().map_or("0".into(), |m| m.step.to_string()))
            .collect(),
    ));
    rows.push((
        "final train loss".into(),
        runs.iter()
            .map(|(_, _, c)| fmt(c.train.last().map(|m| m.loss)))
            .collect(),
    ));
    rows.push((
        "best eval loss".into(),
        runs.iter()
            .map(|(_, _, c)| fmt(c.eval.iter().map(|m| m.loss).reduce(f64::min)))
            .collect(),
    ));
    rows.push((
        "final eval loss".into(),
        runs.iter()
            .map(|(_, _, c)| fmt(c.eval.last().map(|m| m.loss)))
            .collect(),
    ));
    rows.push((
        "tokens/s".into(),
        runs.iter()
            .map(|(_, i, _)| {
                i.result
                    .as_ref()
                    .map_or("-".into(), |r| format!("{:.0}", r.tokens_per_second))
            })
            .collect(),
    ));
    aligned(&rows)
}

/// Rows of a label and one value per column, as aligned text columns.
pub fn aligned(rows: &[(String, Vec<String>)]) -> String {
    let columns = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let width0 = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|(_, v)| v.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (key, values) in rows {
        let mut line = format!("{key:<width0$}");
        for (v, w) in values.iter().zip(&widths) {
            line.push_str(&format!("  {v:<w$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Register a font for chart text, once: DejaVu Sans or Liberation Sans from the system. Without
/// one, charts are drawn without text. Returns whether there is one.
pub fn chart_font() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
        ];
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!(
            "no TrueType font found (DejaVu Sans, Liberation Sans): charts have no text"
        );
        false
    })
}

/// Draw the loss curves of `runs` (training solid, evaluation with markers) to `out.png` and
/// `out.svg`; returns the two paths.
pub fn plot(runs: &[(String, Curves)], out: &Path) -> Result<(PathBuf, PathBuf)> {
    let png = out.with_extension("png");
    let svg = out.with_extension("svg");
    if let Some(parent) = png.parent() {
        std::fs::create_dir_all(parent).map_err(|source| TrainingError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let text = chart_font();
    draw(
        BitMapBackend::new(&png, (1000, 600)).into_drawing_area(),
        runs,
        text,
    )
    .map_err(|e| TrainingError::Invalid(format!("{}: {e}", png.display())))?;
    draw(
        SVGBackend::new(&svg, (1000, 600)).into_drawing_area(),
        runs,
        text,
    )
    .map_err(|e| TrainingError::Invalid(format!("{}: {e}", svg.display())))?;
    Ok((png, svg))
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    runs: &[(String, Curves)],
    text: bool,
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let steps = runs
        .iter()
        .flat_map(|(_, c)| c.train.iter().map(|m| m.step))
        .max()
        .unwrap_or(1)
        .max(1);
    let losses: Vec<f64> = runs
        .iter()
        .flat_map(|(_, c)| {
            c.train
                .iter()
                .map(|m| m.loss)
                .chain(c.eval.iter().map(|m| m.loss))
        })
        .filter(|l| l.is_finite())
        .collect();
    let low = losses.iter().copied().fold(f64::INFINITY, f64::min);
    let high = losses.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (low, high) = if low.is_finite() && high > low {
        (low * 0.95, high * 1.05)
    } else {
        (0.0, 1.0)
    };
    let mut builder = ChartBuilder::on(&area);
    builder.margin(20);
    if text {
        builder
            .caption("loss by step", ("sans-serif", 24))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(0u64..steps, low..high)?;
    if text {
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .draw()?;
    }
    for (i, (name, curves)) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let series = chart.draw_series(LineSeries::new(
            curves.train.iter().map(|m| (m.step, m.loss)),
            color.stroke_width(2),
        ))?;
        if text {
            series
                .label(format!("{name} train"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        if !curves.eval.is_empty() {
            let eval = chart.draw_series(
                curves
                    .eval
                    .iter()
                    .map(|m| Circle::new((m.step, m.loss), 4, color.filled())),
            )?;
            if text {
                eval.label(format!("{name} eval"))
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
            }
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    area.present()?;
    Ok(())
}
