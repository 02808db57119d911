//! Evaluations read back from the warehouse, side by side as a table (`twin eval A B`, `twin
//! runs compare`), and as bar charts, one panel per measure, to PNG and SVG.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use twin_warehouse::Warehouse;

use crate::job::{Evaluation, ROW_KIND};
use crate::{EvalError, Result};

/// The evaluations recorded with run `run_id`, oldest first.
pub async fn recorded(warehouse: &dyn Warehouse, run_id: &str) -> Result<Vec<Evaluation>> {
    let mut out = Vec::new();
    for row in warehouse.run_metrics(run_id).await? {
        if row.kind != ROW_KIND {
            continue;
        }
        let evaluation: Evaluation = serde_json::from_str(&row.body).map_err(|e| {
            EvalError::Invalid(format!(
                "run {run_id}: the evaluation made at {} is unreadable: {e}",
                row.step
            ))
        })?;
        out.push(evaluation);
    }
    out.sort_by_key(|e| e.created_at);
    Ok(out)
}

/// A measure of an evaluation: its label, its value, and whether lower is better.
struct Measure {
    label: &'static str,
    value: fn(&Evaluation) -> Option<f64>,
    lower_is_better: bool,
}

const MEASURES: [Measure; 6] = [
    Measure {
        label: "perplexity",
        value: |e| Some(e.perplexity.perplexity),
        lower_is_better: true,
    },
    Measure {
        label: "cosine",
        value: |e| Some(e.generation.cosine),
        lower_is_better: false,
    },
    Measure {
        label: "ROUGE-L",
        value: |e| Some(e.generation.rouge_l),
        lower_is_better: false,
    },
    Measure {
        label: "length ratio",
        value: |e| Some(e.generation.length_ratio),
        lower_is_better: false,
    },
    Measure {
        label: "judge accuracy",
        value: |e| e.judge.as_ref().map(|j| j.accuracy),
        lower_is_better: false,
    },
    Measure {
        label: "judge style",
        value: |e| e.judge.as_ref().map(|j| j.style),
        lower_is_better: false,
    },
];

/// The evaluations side by side: a column per `(name, evaluation)`, a row per measure; the
/// best value of a row (lower perplexity, higher scores) marked with `*` when they differ.
pub fn table(columns: &[(String, &Evaluation)]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = vec![
        ("".into(), columns.iter().map(|(n, _)| n.clone()).collect()),
        (
            "dataset".into(),
            columns.iter().map(|(_, e)| e.dataset.clone()).collect(),
        ),
        (
            "test samples".into(),
            columns.iter().map(|(_, e)| e.samples.to_string()).collect(),
        ),
    ];
    for m in &MEASURES {
        let values: Vec<Option<f64>> = columns.iter().map(|(_, e)| (m.value)(e)).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        let best = if m.lower_is_better {
            present.iter().copied().fold(f64::INFINITY, f64::min)
        } else {
            present.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        };
        // Length ratio: nearest to 1 is best.
        let best = if m.label == "length ratio" {
            present
                .iter()
                .copied()
                .min_by(|a, b| (a - 1.0).abs().total_cmp(&(b - 1.0).abs()))
                .unwrap_or(best)
        } else {
            best
        };
        let differ = present.iter().any(|v| *v != present[0]);
        let label = if m.lower_is_better {
            format!("{} (lower is better)", m.label)
        } else {
            m.label.to_string()
        };
        rows.push((
            label,
            values
                .iter()
                .map(|v| match v {
                    Some(v) if differ && columns.len() > 1 && *v == best => format!("{v:.4} *"),
                    Some(v) => format!("{v:.4}"),
                    None => "-".into(),
                })
                .collect(),
        ));
    }
    rows.push((
        "answer tokens/s".into(),
        columns
            .iter()
            .map(|(_, e)| format!("{:.1}", e.generation.tokens_per_second))
            .collect(),
    ));
    if columns.iter().any(|(_, e)| e.judge.is_some()) {
        rows.push((
            "judge".into(),
            columns
                .iter()
                .map(|(_, e)| e.judge.as_ref().map_or("-".into(), |j| j.judge.clone()))
                .collect(),
        ));
    }
    rows.push((
        "recorded with run".into(),
        columns
            .iter()
            .map(|(_, e)| e.run_id.clone().unwrap_or_else(|| "-".into()))
            .collect(),
    ));
    twin_training::runs::aligned(&rows)
}

/// Bar charts of the evaluations, one panel per measure that any of them has, to `out.png`
/// and `out.svg`; returns the two paths.
pub fn chart(columns: &[(String, &Evaluation)], out: &Path) -> Result<(PathBuf, PathBuf)> {
    let png = out.with_extension("png");
    let svg = out.with_extension("svg");
    if let Some(parent) = png.parent() {
        std::fs::create_dir_all(parent).map_err(|source| EvalError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let text = twin_training::runs::chart_font();
    let size = (1200, 700);
    draw(
        BitMapBackend::new(&png, size).into_drawing_area(),
        columns,
        text,
    )
    .map_err(|e| EvalError::Invalid(format!("{}: {e}", png.display())))?;
    draw(
        SVGBackend::new(&svg, size).into_drawing_area(),
        columns,
        text,
    )
    .map_err(|e| EvalError::Invalid(format!("{}: {e}", svg.display())))?;
    Ok((png, svg))
}

/// A folder's last component: what fits under a bar.
fn short(name: &str) -> String {
    std::path::Path::new(name)
        .file_name()
        .map_or_else(|| name.to_string(), |n| n.to_string_lossy().into_owned())
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    columns: &[(String, &Evaluation)],
    text: bool,
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let measures: Vec<&Measure> = MEASURES
        .iter()
        .filter(|m| columns.iter().any(|(_, e)| (m.value)(e).is_some()))
        .collect();
    let panels = area.split_evenly((2, measures.len().div_ceil(2).max(1)));
    for (panel, m) in panels.iter().zip(&measures) {
        let values: Vec<f64> = columns
            .iter()
            .map(|(_, e)| (m.value)(e).unwrap_or(0.0))
            .collect();
        let high = values.iter().copied().fold(0.0, f64::max);
        let high = if high > 0.0 { high * 1.15 } else { 1.0 };
        let n = columns.len() as u32;
        let mut builder = ChartBuilder::on(panel);
        builder.margin(12);
        if text {
            let caption = if m.lower_is_better {
                format!("{} (lower is better)", m.label)
            } else {
                m.label.to_string()
            };
            builder
                .caption(caption, ("sans-serif", 18))
                .x_label_area_size(28)
                .y_label_area_size(48);
        }
        // Bar i is centred on x = i; the axis labels the whole numbers with the names.
        let mut chart = builder.build_cartesian_2d(-0.5..(f64::from(n) - 0.5), 0.0..high)?;
        let names: Vec<String> = columns.iter().map(|(n, _)| short(n)).collect();
        let label = move |x: &f64| {
            let i = x.round();
            if text && (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n as usize)
            .x_label_formatter(&label)
            .draw()?;
        for (i, value) in values.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let x = i as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.4, 0.0), (x + 0.4, *value)],
                color.filled(),
            )))?;
            if text {
                let style = ("sans-serif", 14)
                    .into_font()
                    .into_text_style(panel)
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                chart.draw_series(std::iter::once(Text::new(
                    format!("{value:.3}"),
                    (x, *value),
                    style,
                )))?;
            }
        }
    }
    area.present()?;
    Ok(())
}
