//! `collect` and `iterate`, whose behaviour lives in the engine (generation.md §5.2), and the
//! collection utilities of InvokeAI's `collections.py` (`range`, `range_of_size`,
//! `random_range`) and `param_easing.py` (`float_range`).
//!
//! Python builds lists of any length; these nodes refuse more than [`MAX_ITEMS`] items with
//! `MemoryError` rather than exhaust the server's memory.

use super::math::bounds_error;
use super::primitives::{collection_field, collection_output, tagged};
use super::{fields, node};
use crate::field::Ty;
use crate::spec::{Input, Inputs, NodeSpec};
use crate::NodeError;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// The longest list a collection node builds.
pub const MAX_ITEMS: u64 = 1 << 20;

/// The reference's `SEED_MAX` (the largest uint32).
const SEED_MAX: i64 = u32::MAX as i64;

fn too_many(count: u64) -> Result<(), NodeError> {
    if count > MAX_ITEMS {
        return Err(NodeError::new(
            "MemoryError",
            format!("a collection of {count} items is over the limit of {MAX_ITEMS}"),
        ));
    }
    Ok(())
}

/// Python's `range(start, stop, step)` as a list.
fn py_range(start: i64, stop: i64, step: i64) -> Result<Vec<Value>, NodeError> {
    if step == 0 {
        return Err(NodeError::value("range() arg 3 must not be zero"));
    }
    let (start, stop, step) = (i128::from(start), i128::from(stop), i128::from(step));
    let span = if step > 0 { stop - start } else { start - stop };
    let count = if span <= 0 {
        0
    } else {
        (span + step.abs() - 1) / step.abs()
    };
    too_many(u64::try_from(count).unwrap_or(u64::MAX))?;
    // Every item lies between start and stop, so it fits in an i64.
    Ok((0..count)
        .map(|k| json!(i64::try_from(start + k * step).unwrap_or_default()))
        .collect())
}

fn range(i: &Inputs) -> Result<Map<String, Value>, NodeError> {
    let (start, stop, step) = (i.int("start")?, i.int("stop")?, i.int("step")?);
    // A validator on `stop` in the reference.
    if stop <= start {
        return Err(NodeError::value("stop must be greater than start"));
    }
    Ok(collection_output(py_range(start, stop, step)?))
}

fn range_of_size(i: &Inputs) -> Result<Map<String, Value>, NodeError> {
    let (start, size, step) = (i.int("start")?, i.int("size")?, i.int("step")?);
    if step == 0 {
        return Err(NodeError::value("range() arg 3 must not be zero"));
    }
    // range(start, start + step * size, step): `size` items, each one step further.
    too_many(size.unsigned_abs())?;
    let items = (0..i128::from(size.max(0)))
        .map(|k| {
            i64::try_from(i128::from(start) + k * i128::from(step))
                .map(|v| json!(v))
                .map_err(|_| {
                    NodeError::new("OverflowError", "integer result does not fit in 64 bits")
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(collection_output(items))
}

fn random_range(i: &Inputs) -> Result<Map<String, Value>, NodeError> {
    let (low, high, size, seed) = (
        i.int("low")?,
        i.int("high")?,
        i.int("size")?,
        i.int("seed")?,
    );
    // numpy checks the bounds, then the size.
    if low >= high {
        return Err(bounds_error(low));
    }
    if size < 0 {
        return Err(NodeError::value("negative dimensions are not allowed"));
    }
    too_many(size.unsigned_abs())?;
    // Seeded like the reference (`default_rng(seed)`), but with rand's generator: the same
    // seed always gives the same list here, not numpy's list.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.unsigned_abs());
    let items = (0..size).map(|_| json!(rng.gen_range(low..high))).collect();
    Ok(collection_output(items))
}

/// numpy's `linspace(start, stop, steps)` (endpoint included).
fn linspace(start: f64, stop: f64, steps: i64) -> Result<Vec<Value>, NodeError> {
    if steps < 0 {
        return Err(NodeError::value(format!(
            "Number of samples, {steps}, must be non-negative."
        )));
    }
    too_many(steps.unsigned_abs())?;
    let div = (steps - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut items: Vec<f64> = (0..steps)
        .map(|k| {
            let k = k as f64;
            let offset = if steps == 1 {
                k * delta
            } else if step == 0.0 {
                k / div * delta
            } else {
                k * step
            };
            offset + start
        })
        .collect();
    if steps > 1 {
        if let Some(last) = items.last_mut() {
            *last = stop;
        }
    }
    Ok(items.into_iter().map(|v| json!(v)).collect())
}

pub fn specs() -> Vec<NodeSpec> {
    let mut collect = node(
        "collect",
        "CollectInvocation",
        "1.1.0",
        "",
        vec![
            Input::new("item", Ty::Any)
                .optional()
                .conn()
                .desc("The item to collect (all inputs must be of the same type)"),
            Input::new("collection", Ty::list(Ty::Any))
                .default(json!([]))
                .desc("An optional collection to append to"),
        ],
        "collect_output",
        vec![("collection", Ty::list(Ty::Any))],
        |i, _| Ok(fields(vec![("collection", i.get("collection").clone())])),
    );
    collect.use_cache = false;
    let mut iterate = node(
        "iterate",
        "IterateInvocation",
        "1.1.0",
        "",
        vec![
            Input::new("collection", Ty::list(Ty::Any))
                .default(json!([]))
                .desc("The list of items to iterate over"),
            Input::new("index", Ty::Int)
                .default(json!(0))
                .desc("The index, will be provided on executed iterators"),
        ],
        "iterate_output",
        vec![("item", Ty::Any), ("index", Ty::Int), ("total", Ty::Int)],
        |i, _| {
            let list = i.list("collection")?;
            let index = i.int("index")?;
            let item = usize::try_from(index)
                .ok()
                .and_then(|x| list.get(x))
                .cloned()
                .unwrap_or(Value::Null);
            Ok(fields(vec![
                ("item", item),
                ("index", json!(index)),
                ("total", json!(list.len())),
            ]))
        },
    );
    iterate.use_cache = false;
    let mut random = tagged(
        node(
            "random_range",
            "Random Range",
            "1.0.1",
            "batch",
            vec![
                Input::new("low", Ty::Int)
                    .default(json!(0))
                    .desc("The inclusive low value"),
                Input::new("high", Ty::Int)
                    .default(json!(i32::MAX))
                    .desc("The exclusive high value"),
                Input::new("size", Ty::Int)
                    .default(json!(1))
                    .desc("The number of values to generate"),
                Input::new("seed", Ty::Int)
                    .default(json!(0))
                    .ge(json!(0))
                    .le(json!(SEED_MAX))
                    .desc("The seed for the RNG (omit for random)"),
            ],
            "integer_collection_output",
            collection_field(Ty::Int),
            |i, _| random_range(i),
        ),
        &["range", "integer", "random", "collection"],
        "Makes a collection of random integers",
    );
    random.use_cache = false;
    vec![
        collect,
        iterate,
        tagged(
            node(
                "range",
                "Integer Range",
                "1.0.0",
                "batch",
                vec![
                    Input::new("start", Ty::Int)
                        .default(json!(0))
                        .desc("The start of the range"),
                    Input::new("stop", Ty::Int)
                        .default(json!(10))
                        .desc("The stop of the range"),
                    Input::new("step", Ty::Int)
                        .default(json!(1))
                        .desc("The step of the range"),
                ],
                "integer_collection_output",
                collection_field(Ty::Int),
                |i, _| range(i),
            ),
            &["collection", "integer", "range"],
            "Makes a range of integers from start to stop by step",
        ),
        tagged(
            node(
                "range_of_size",
                "Integer Range of Size",
                "1.0.0",
                "batch",
                vec![
                    Input::new("start", Ty::Int)
                        .default(json!(0))
                        .desc("The start of the range"),
                    Input::new("size", Ty::Int)
                        .default(json!(1))
                        .gt(json!(0))
                        .desc("The number of values"),
                    Input::new("step", Ty::Int)
                        .default(json!(1))
                        .desc("The step of the range"),
                ],
                "integer_collection_output",
                collection_field(Ty::Int),
                |i, _| range_of_size(i),
            ),
            &["collection", "integer", "size", "range"],
            "Makes `size` integers from start, each `step` after the last",
        ),
        random,
        tagged(
            node(
                "float_range",
                "Float Range",
                "1.0.1",
                "math",
                vec![
                    Input::new("start", Ty::Float)
                        .default(json!(5))
                        .desc("The first value of the range"),
                    Input::new("stop", Ty::Float)
                        .default(json!(10))
                        .desc("The last value of the range"),
                    Input::new("steps", Ty::Int)
                        .default(json!(30))
                        .desc("number of values to interpolate over (including start and stop)"),
                ],
                "float_collection_output",
                collection_field(Ty::Float),
                |i, _| {
                    let items = linspace(i.float("start")?, i.float("stop")?, i.int("steps")?)?;
                    Ok(collection_output(items))
                },
            ),
            &["math", "range"],
            "Makes evenly spaced floats from start to stop",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_ranges() {
        assert_eq!(
            py_range(0, 10, 3).ok(),
            Some(vec![json!(0), json!(3), json!(6), json!(9)])
        );
        assert_eq!(py_range(0, 10, -1).ok(), Some(Vec::new()));
        assert_eq!(
            py_range(5, 0, -2).ok(),
            Some(vec![json!(5), json!(3), json!(1)])
        );
        assert_eq!(
            py_range(i64::MAX - 1, i64::MAX, 5).ok(),
            Some(vec![json!(i64::MAX - 1)])
        );
        assert!(py_range(0, i64::MAX, 1).is_err());
    }

    #[test]
    fn numpy_linspace() {
        let values = linspace(0.0, 1.0, 5).unwrap_or_default();
        assert_eq!(
            values,
            vec![json!(0.0), json!(0.25), json!(0.5), json!(0.75), json!(1.0)]
        );
        assert_eq!(linspace(3.0, 9.0, 1).ok(), Some(vec![json!(3.0)]));
        assert_eq!(linspace(2.0, 2.0, 3).ok(), Some(vec![json!(2.0); 3]));
        assert_eq!(linspace(0.0, 1.0, 0).ok(), Some(Vec::new()));
    }
}
