//! `collect` and `iterate`, whose behaviour lives in the engine (generation.md §5.2), and the
//! collection utilities.

use super::{fields, node};
use crate::field::Ty;
use crate::spec::{Input, NodeSpec};
use serde_json::{json, Value};

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
    vec![collect, iterate]
}
