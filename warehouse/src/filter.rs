//! Which documents a read selects and which version of them it sees, and the SQL conditions
//! both implementations build from them.

use twin_schemas::{DocumentKind, Position};

use crate::{kind_name, ChunkCursor};

/// Which version of each row a read sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AsOf {
    /// The newest: what the warehouse holds now.
    #[default]
    Latest,
    /// The newest caused by an event at or before these positions (one per partition; a
    /// partition not named shows nothing): what the warehouse held when it had applied them.
    Positions(Vec<Position>),
}

impl AsOf {
    /// The condition on a version row that it may be seen.
    pub(crate) fn visible(&self) -> Conditions {
        let mut c = Conditions::default();
        if let AsOf::Positions(positions) = self {
            if positions.is_empty() {
                c.push("1 = 0", []);
            } else {
                let each = vec!["(log_partition = ? AND log_offset <= ?)"; positions.len()];
                c.push(
                    &format!("({})", each.join(" OR ")),
                    positions.iter().flat_map(|p| {
                        [
                            SqlValue::Int(i64::from(p.partition)),
                            SqlValue::Int(p.offset as i64),
                        ]
                    }),
                );
            }
        }
        c
    }
}

/// Filters on documents (and on the chunks of those documents); unset fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentFilter {
    /// Only this author's documents.
    pub author_id: Option<String>,
    /// Only this kind.
    pub kind: Option<DocumentKind>,
    /// Only this platform's.
    pub platform: Option<String>,
    /// Only documents published at or after this time (ms since the epoch); documents without
    /// a publication time are left out when either bound is set.
    pub published_from: Option<i64>,
    /// Only documents published before this time (ms since the epoch).
    pub published_until: Option<i64>,
    /// Only these documents (an empty list selects none).
    pub document_ids: Option<Vec<String>>,
}

impl DocumentFilter {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only these documents.
    pub fn documents(ids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            document_ids: Some(ids.into_iter().map(Into::into).collect()),
            ..Self::default()
        }
    }
}

/// A value bound to a `?` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    /// A string.
    Text(String),
    /// An integer.
    Int(i64),
}

/// SQL conditions, each starting with ` AND `, with their `?` values in order.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    /// The conditions.
    pub sql: String,
    /// The values of their placeholders.
    pub values: Vec<SqlValue>,
}

impl Conditions {
    /// Add `sql` (with `?` placeholders for `values`).
    pub fn push(&mut self, sql: &str, values: impl IntoIterator<Item = SqlValue>) {
        self.sql.push_str(" AND ");
        self.sql.push_str(sql);
        self.values.extend(values);
    }

    /// Add all of `other`'s conditions after these.
    pub fn extend(&mut self, other: Conditions) {
        self.sql.push_str(&other.sql);
        self.values.extend(other.values);
    }
}

impl DocumentFilter {
    /// The filter as conditions on a table whose document id column is `id_column`.
    pub(crate) fn conditions(&self, id_column: &str) -> Conditions {
        let mut c = Conditions::default();
        if let Some(author) = &self.author_id {
            c.push("author_id = ?", [SqlValue::Text(author.clone())]);
        }
        if let Some(kind) = self.kind {
            c.push("kind = ?", [SqlValue::Text(kind_name(kind).into())]);
        }
        if let Some(platform) = &self.platform {
            c.push("platform = ?", [SqlValue::Text(platform.clone())]);
        }
        if self.published_from.is_some() || self.published_until.is_some() {
            c.push("published_at IS NOT NULL", []);
        }
        if let Some(from) = self.published_from {
            c.push("published_at >= ?", [SqlValue::Int(from)]);
        }
        if let Some(until) = self.published_until {
            c.push("published_at < ?", [SqlValue::Int(until)]);
        }
        if let Some(ids) = &self.document_ids {
            if ids.is_empty() {
                c.push("1 = 0", []);
            } else {
                let marks = vec!["?"; ids.len()].join(", ");
                c.push(
                    &format!("{id_column} IN ({marks})"),
                    ids.iter().cloned().map(SqlValue::Text),
                );
            }
        }
        c
    }
}

/// The conditions of a page of documents: the filter, and ids after `after`.
pub(crate) fn document_page(filter: &DocumentFilter, after: Option<&str>) -> Conditions {
    let mut conditions = filter.conditions("id");
    if let Some(after) = after {
        conditions.push("id > ?", [SqlValue::Text(after.to_string())]);
    }
    conditions
}

/// The conditions of a page of chunks: the filter on their documents, and chunks after `after`
/// in (document id, position) order.
pub(crate) fn chunk_page(filter: &DocumentFilter, after: Option<&ChunkCursor>) -> Conditions {
    let mut conditions = filter.conditions("document_id");
    if let Some(after) = after {
        conditions.push(
            "(document_id > ? OR (document_id = ? AND position > ?))",
            [
                SqlValue::Text(after.document_id.clone()),
                SqlValue::Text(after.document_id.clone()),
                SqlValue::Int(i64::from(after.position)),
            ],
        );
    }
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_do_not_filter_and_set_ones_bind_in_order() {
        assert!(DocumentFilter::all().conditions("id").sql.is_empty());
        let filter = DocumentFilter {
            author_id: Some("paul".into()),
            published_from: Some(10),
            document_ids: Some(vec!["a".into(), "b".into()]),
            ..Default::default()
        };
        let c = filter.conditions("document_id");
        assert_eq!(
            c.sql,
            " AND author_id = ? AND published_at IS NOT NULL AND published_at >= ? AND document_id IN (?, ?)"
        );
        assert_eq!(
            c.values,
            vec![
                SqlValue::Text("paul".into()),
                SqlValue::Int(10),
                SqlValue::Text("a".into()),
                SqlValue::Text("b".into())
            ]
        );
        assert_eq!(
            DocumentFilter::documents(Vec::<String>::new())
                .conditions("id")
                .sql,
            " AND 1 = 0"
        );
    }
}
