//! Integer and float arithmetic.

use super::{node, value_output};
use crate::field::Ty;
use crate::spec::{Input, NodeSpec};
use crate::NodeError;
use serde_json::json;

fn ab() -> Vec<Input> {
    vec![
        Input::new("a", Ty::Int)
            .default(json!(0))
            .desc("The first number"),
        Input::new("b", Ty::Int)
            .default(json!(0))
            .desc("The second number"),
    ]
}

pub fn specs() -> Vec<NodeSpec> {
    vec![
        node(
            "add",
            "Add Integers",
            "1.0.1",
            "math",
            ab(),
            "integer_output",
            vec![("value", Ty::Int)],
            |i, _| Ok(value_output(json!(i.int("a")?.wrapping_add(i.int("b")?)))),
        ),
        node(
            "sub",
            "Subtract Integers",
            "1.0.1",
            "math",
            ab(),
            "integer_output",
            vec![("value", Ty::Int)],
            |i, _| Ok(value_output(json!(i.int("a")?.wrapping_sub(i.int("b")?)))),
        ),
        node(
            "mul",
            "Multiply Integers",
            "1.0.1",
            "math",
            ab(),
            "integer_output",
            vec![("value", Ty::Int)],
            |i, _| Ok(value_output(json!(i.int("a")?.wrapping_mul(i.int("b")?)))),
        ),
        node(
            "div",
            "Divide Integers",
            "1.0.1",
            "math",
            ab(),
            "integer_output",
            vec![("value", Ty::Int)],
            |i, _| {
                let (a, b) = (i.int("a")?, i.int("b")?);
                if b == 0 {
                    return Err(NodeError::new("ZeroDivisionError", "division by zero"));
                }
                // Python's int(a / b) truncates toward zero.
                Ok(value_output(json!((a as f64 / b as f64).trunc() as i64)))
            },
        ),
    ]
}
