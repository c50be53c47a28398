//! The session queue's pure rules (queue-and-events.md §1.4, §2): the status lifecycle and
//! batch expansion. Storage, the worker and the events build on these; nothing here does I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

/// A queue item's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueItemStatus {
    Pending,
    InProgress,
    /// A parent suspended while a called workflow runs.
    Waiting,
    Completed,
    Failed,
    Canceled,
}

impl QueueItemStatus {
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::InProgress,
        Self::Waiting,
        Self::Completed,
        Self::Failed,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Waiting => "waiting",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Completed, failed and canceled items never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }

    /// Whether the lifecycle allows moving from `self` to `next`. Terminal statuses are final;
    /// everything else may be canceled; the rest follows the diagram of §1.4.
    pub fn can_become(self, next: Self) -> bool {
        use QueueItemStatus::*;
        match (self, next) {
            (from, _) if from.is_terminal() => false,
            (_, Canceled) => true,
            (Pending, InProgress) => true,
            (InProgress, Completed | Failed | Waiting) => true,
            (Waiting, Pending) => true,
            _ => false,
        }
    }
}

impl fmt::Display for QueueItemStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One field's list of values in a batch: `items[i]` goes to `node_path.field_name` in the
/// i-th session of its zip group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchDatum {
    pub node_path: String,
    pub field_name: String,
    pub items: Vec<Value>,
}

/// A substitution applied to one session (`NodeFieldValue`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeFieldValue {
    pub node_path: String,
    pub field_name: String,
    pub value: Value,
}

/// Why a batch's data cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("Zipped batch items must all have the same length")]
    ZipLengths,
    #[error("All items in a batch datum must have the same type")]
    MixedTypes,
    #[error("Each batch data must have unique node_id and field_name")]
    Duplicate,
}

/// The JSON "kind" of a batch value; ints and floats count as one kind.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "list",
        Value::Object(o) if o.contains_key("image_name") => "image",
        Value::Object(o) if o.contains_key("video_name") => "video",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// Checks the data rules of §2.1 that need no graph.
pub fn validate_batch_data(data: &[Vec<BatchDatum>]) -> Result<(), BatchError> {
    let mut seen = HashSet::new();
    for group in data {
        if let Some(first) = group.first() {
            if group.iter().any(|d| d.items.len() != first.items.len()) {
                return Err(BatchError::ZipLengths);
            }
        }
        for datum in group {
            if let Some(first) = datum.items.first() {
                if datum.items.iter().any(|v| kind(v) != kind(first)) {
                    return Err(BatchError::MixedTypes);
                }
            }
            if !seen.insert((datum.node_path.as_str(), datum.field_name.as_str())) {
                return Err(BatchError::Duplicate);
            }
        }
    }
    Ok(())
}

/// How many sessions a batch makes: `runs × Π(group lengths)`, or `runs` without data.
pub fn session_count(data: Option<&[Vec<BatchDatum>]>, runs: u64) -> u64 {
    let product = data.map_or(1u64, |groups| {
        groups
            .iter()
            .map(|g| g.first().map_or(0, |d| d.items.len() as u64))
            .fold(1u64, u64::saturating_mul)
    });
    runs.saturating_mul(product)
}

/// The substitutions of every session, in insertion order: the run loop outermost, then the
/// cartesian product of the zip groups with the last group varying fastest. `limit` stops the
/// expansion early (the queue's free capacity).
pub fn expand_batch(
    data: Option<&[Vec<BatchDatum>]>,
    runs: u64,
    limit: u64,
) -> Vec<Vec<NodeFieldValue>> {
    let groups: Vec<&Vec<BatchDatum>> = data.map(|d| d.iter().collect()).unwrap_or_default();
    let lengths: Vec<usize> = groups
        .iter()
        .map(|g| g.first().map_or(0, |d| d.items.len()))
        .collect();
    let mut out = Vec::new();
    if lengths.contains(&0) {
        return out;
    }
    let per_run: u64 = lengths.iter().map(|l| *l as u64).product();
    'runs: for _ in 0..runs {
        for combo in 0..per_run {
            if out.len() as u64 >= limit {
                break 'runs;
            }
            // Mixed-radix digits of `combo`, last group least significant.
            let mut rest = combo;
            let mut indices = vec![0usize; lengths.len()];
            for (slot, len) in indices.iter_mut().zip(&lengths).rev() {
                *slot = (rest % *len as u64) as usize;
                rest /= *len as u64;
            }
            let mut values = Vec::new();
            for (group, index) in groups.iter().zip(&indices) {
                for datum in group.iter() {
                    values.push(NodeFieldValue {
                        node_path: datum.node_path.clone(),
                        field_name: datum.field_name.clone(),
                        value: datum.items[*index].clone(),
                    });
                }
            }
            out.push(values);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn datum(node: &str, items: Vec<Value>) -> BatchDatum {
        BatchDatum {
            node_path: node.into(),
            field_name: "value".into(),
            items,
        }
    }

    #[test]
    fn terminal_statuses_are_final() {
        use QueueItemStatus::*;
        for t in [Completed, Failed, Canceled] {
            assert!(QueueItemStatus::ALL.iter().all(|n| !t.can_become(*n)));
        }
        assert!(Pending.can_become(InProgress) && Pending.can_become(Canceled));
        assert!(!Pending.can_become(Completed));
        assert!(InProgress.can_become(Waiting) && Waiting.can_become(Pending));
        assert_eq!(QueueItemStatus::parse("in_progress"), Some(InProgress));
    }

    #[test]
    fn expansion_follows_the_contract_example() {
        // groups [[A(2), B(2)], [C(2)]], runs = 2 → (A0,B0,C0) (A0,B0,C1) (A1,B1,C0) (A1,B1,C1), twice.
        let data = vec![
            vec![
                datum("A", vec![json!("a0"), json!("a1")]),
                datum("B", vec![json!(0), json!(1.5)]),
            ],
            vec![datum("C", vec![json!("c0"), json!("c1")])],
        ];
        assert!(validate_batch_data(&data).is_ok());
        assert_eq!(session_count(Some(&data), 2), 8);
        let sessions = expand_batch(Some(&data), 2, u64::MAX);
        let labels: Vec<String> = sessions
            .iter()
            .map(|s| {
                s.iter()
                    .map(|v| v.value.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        assert_eq!(
            labels[..4],
            [
                r#""a0",0,"c0""#,
                r#""a0",0,"c1""#,
                r#""a1",1.5,"c0""#,
                r#""a1",1.5,"c1""#
            ]
        );
        assert_eq!(labels[4..], labels[..4]);
        assert_eq!(
            expand_batch(Some(&data), 2, 3).len(),
            3,
            "capacity stops the expansion"
        );
    }

    #[test]
    fn edge_cases_and_refusals() {
        assert_eq!(expand_batch(None, 3, u64::MAX).len(), 3);
        assert!(expand_batch(None, 3, u64::MAX).iter().all(Vec::is_empty));
        let empty_group = vec![vec![datum("A", vec![])]];
        assert_eq!(session_count(Some(&empty_group), 5), 0);
        assert!(expand_batch(Some(&empty_group), 5, u64::MAX).is_empty());
        let uneven = vec![vec![
            datum("A", vec![json!(1)]),
            datum("B", vec![json!(1), json!(2)]),
        ]];
        assert_eq!(validate_batch_data(&uneven), Err(BatchError::ZipLengths));
        let mixed = vec![vec![datum("A", vec![json!(1), json!("x")])]];
        assert_eq!(validate_batch_data(&mixed), Err(BatchError::MixedTypes));
        let twice = vec![
            vec![datum("A", vec![json!(1)])],
            vec![datum("A", vec![json!(2)])],
        ];
        assert_eq!(validate_batch_data(&twice), Err(BatchError::Duplicate));
    }
}
