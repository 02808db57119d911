//! What is stored beside the projection: snapshots (named sets of log positions) and the
//! datasets built from them, with their samples. Neither is a projection of the log, so a
//! rebuild (`drop_all`) keeps them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use twin_schemas::Position;

use crate::AsOf;

/// A pinned view of the warehouse: the newest version of each row caused at or before
/// `positions`. Costs one row; reads through it never change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Derived from the positions: the same positions give the same id.
    pub id: String,
    /// A name to find it by.
    pub name: Option<String>,
    /// When it was made, ms since the epoch.
    pub created_at: i64,
    /// The last applied position of each partition, by partition.
    pub positions: Vec<Position>,
}

impl Snapshot {
    /// A snapshot of `positions` (sorted by partition here).
    pub fn new(mut positions: Vec<Position>, name: Option<String>, created_at: i64) -> Self {
        positions.sort();
        Self {
            id: snapshot_id(&positions),
            name,
            created_at,
            positions,
        }
    }

    /// The reads of this snapshot.
    pub fn as_of(&self) -> AsOf {
        AsOf::Positions(self.positions.clone())
    }
}

/// `s-` and 12 hex digits of SHA-256 over the positions.
pub fn snapshot_id(positions: &[Position]) -> String {
    let mut hash = Sha256::new();
    for p in positions {
        hash.update(format!("{}:{};", p.partition, p.offset));
    }
    format!("s-{}", &hex(&hash.finalize())[..12])
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The per-partition minimum of several snapshots' positions: what the oldest of them can see.
/// A partition missing from any of them is at its minimum: nothing below it is needed.
pub fn floor<'a>(snapshots: impl IntoIterator<Item = &'a [Position]>) -> Option<Vec<Position>> {
    let mut floor: Option<std::collections::BTreeMap<u32, Option<u64>>> = None;
    for positions in snapshots {
        let these: std::collections::BTreeMap<u32, u64> =
            positions.iter().map(|p| (p.partition, p.offset)).collect();
        floor = Some(match floor {
            None => these.iter().map(|(k, v)| (*k, Some(*v))).collect(),
            Some(mut f) => {
                for (partition, offset) in f.iter_mut() {
                    *offset = match (*offset, these.get(partition)) {
                        (Some(a), Some(b)) => Some(a.min(*b)),
                        _ => None,
                    };
                }
                for partition in these.keys() {
                    f.entry(*partition).or_insert(None);
                }
                f
            }
        });
    }
    floor.map(|f| {
        f.into_iter()
            .filter_map(|(partition, offset)| offset.map(|offset| Position { partition, offset }))
            .collect()
    })
}

/// A dataset as stored: who made it from what (its lineage, as JSON the dataset builder owns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// Derived from its snapshot, kind, generator and parameters (or from its content when
    /// imported).
    pub id: String,
    /// A name to find it by.
    pub name: Option<String>,
    /// `instruct` or `preference`.
    pub kind: String,
    /// The snapshot it was built from; none when imported.
    pub snapshot_id: Option<String>,
    /// When it was made, ms since the epoch.
    pub created_at: i64,
    /// Lineage, parameters and statistics, as JSON.
    pub metadata: String,
}

/// One sample of a dataset, as JSON the dataset builder owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRow {
    /// `train` or `test`.
    pub split: String,
    /// Its place in the split.
    pub index: u32,
    /// The sample.
    pub body: String,
}

/// A training run as stored: its parameters, lineage and results, as JSON the trainer owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// `r-` and a time-ordered suffix.
    pub id: String,
    /// A name to find it by.
    pub name: Option<String>,
    /// `running`, `interrupted`, `failed` or `finished`.
    pub status: String,
    /// When it started, ms since the epoch.
    pub created_at: i64,
    /// When it last changed, ms since the epoch.
    pub updated_at: i64,
    /// Parameters, lineage, code version and results, as JSON.
    pub body: String,
}

/// Metrics of one step of a run (`train`) or one evaluation (`eval`), as JSON. A step written
/// again (a resumed run) replaces the earlier one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// The run.
    pub run_id: String,
    /// `train` or `eval`.
    pub kind: String,
    /// The optimizer step.
    pub step: u64,
    /// The values, as a JSON object.
    pub body: String,
}

/// A request the inference service answered (`twin serve`): route, query, filters, retrieved
/// chunks and scores, token counts, time per step, model, as JSON in `body`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRow {
    /// The request's id.
    pub id: String,
    /// When it was answered, ms since the epoch.
    pub created_at: i64,
    /// The route (`/rag`, `/v1/chat/completions`, ...).
    pub route: String,
    /// The model that answered (`name@vN` or its folder).
    pub model: String,
    /// Everything else, as a JSON object.
    pub body: String,
}

/// The one item whose id is `key`, or starts with it when only one does, or is named `key`.
pub(crate) fn find<T>(
    items: Vec<T>,
    key: &str,
    id_and_name: impl Fn(&T) -> (&String, Option<&str>),
) -> Option<T> {
    let mut by_prefix = Vec::new();
    let mut by_name = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let (id, name) = id_and_name(item);
        if id == key {
            return items.into_iter().nth(i);
        }
        if id.starts_with(key) {
            by_prefix.push(i);
        }
        if name == Some(key) {
            by_name.push(i);
        }
    }
    let pick = match (by_prefix.as_slice(), by_name.as_slice()) {
        ([one], _) => Some(*one),
        (_, [.., last]) => Some(*last),
        _ => None,
    };
    pick.and_then(|i| items.into_iter().nth(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(partition: u32, offset: u64) -> Position {
        Position { partition, offset }
    }

    #[test]
    fn ids_follow_positions_and_floor_is_the_per_partition_minimum() {
        let a = Snapshot::new(vec![p(1, 9), p(0, 5)], None, 1);
        let b = Snapshot::new(vec![p(0, 5), p(1, 9)], Some("b".into()), 2);
        assert_eq!(a.id, b.id);
        assert_eq!(a.positions, vec![p(0, 5), p(1, 9)]);
        let floor = floor([&[p(0, 5), p(1, 20)][..], &[p(0, 9), p(1, 10), p(2, 3)][..]]);
        assert_eq!(floor, Some(vec![p(0, 5), p(1, 10)]));
        assert_eq!(super::floor(std::iter::empty::<&[Position]>()), None);
    }

    #[test]
    fn find_by_id_prefix_or_name() {
        let items = vec![
            ("s-abc".to_string(), Some("one")),
            ("s-abd".to_string(), None),
        ];
        let f = |key| find(items.clone(), key, |(id, name)| (id, *name)).map(|x| x.0);
        assert_eq!(f("s-abc").as_deref(), Some("s-abc"));
        assert_eq!(f("s-abd").as_deref(), Some("s-abd"));
        assert_eq!(f("s-ab"), None, "ambiguous prefix");
        assert_eq!(f("one").as_deref(), Some("s-abc"));
        assert_eq!(f("nope"), None);
    }
}
