//! Runs the utility nodes (primitives, math, strings, collections) through the engine and
//! checks their outputs against what InvokeAI's nodes give for the same inputs.

// The helpers below unwrap results for the tests that call them.
#![allow(clippy::expect_used)]

mod common;
use common::*;

use atelier_graph::{find, validate_graph, NodeError};
use image::DynamicImage;
use serde_json::{json, Value};

/// Runs a graph of the single node `fields` (with `type`) and returns its output.
fn one(fields: Value) -> Result<Value, NodeError> {
    let mut node = fields;
    node["id"] = json!("n");
    let session = run(
        json!({"nodes": {"n": node}, "edges": []}),
        &mut Memory::default(),
    )?;
    Ok(result(&session, "n")[0].clone())
}

fn ok(fields: Value) -> Value {
    one(fields).expect("node runs")
}

/// The output's `value`.
fn value(fields: Value) -> Value {
    ok(fields)["value"].clone()
}

/// The node's error as (error_type, message).
fn fails(fields: Value) -> (String, String) {
    let e = one(fields).expect_err("node fails");
    (e.error_type, e.message)
}

/// The first validation message for a graph of the single node `fields`.
fn rejected(fields: Value) -> (Vec<Value>, String) {
    let mut node = fields;
    node["id"] = json!("n");
    let issues = validate_graph(&json!({"nodes": {"n": node}, "edges": []})).expect_err("invalid");
    (issues[0].loc.clone(), issues[0].msg.clone())
}

#[test]
fn scalar_primitives_pass_values_through() {
    assert_eq!(
        ok(json!({"type": "integer", "value": 42})),
        json!({"value": 42, "type": "integer_output"})
    );
    assert_eq!(value(json!({"type": "integer"})), json!(0));
    assert_eq!(
        ok(json!({"type": "float", "value": 2})),
        json!({"value": 2.0, "type": "float_output"})
    );
    assert_eq!(
        ok(json!({"type": "string", "value": "hi"})),
        json!({"value": "hi", "type": "string_output"})
    );
    assert_eq!(
        ok(json!({"type": "boolean", "value": "yes"})),
        json!({"value": true, "type": "boolean_output"})
    );
}

#[test]
fn collection_primitives_pass_lists_through() {
    for (ty, input, expected, output) in [
        (
            "integer_collection",
            json!([1, "2", 3.0]),
            json!([1, 2, 3]),
            "integer_collection_output",
        ),
        (
            "float_collection",
            json!([1, 2.5]),
            json!([1.0, 2.5]),
            "float_collection_output",
        ),
        (
            "string_collection",
            json!(["a", 5]),
            json!(["a", "5"]),
            "string_collection_output",
        ),
        (
            "boolean_collection",
            json!([true, 0]),
            json!([true, false]),
            "boolean_collection_output",
        ),
        (
            "conditioning_collection",
            json!([{"conditioning_name": "c1"}]),
            json!([{"conditioning_name": "c1"}]),
            "conditioning_collection_output",
        ),
        (
            "latents_collection",
            json!([{"latents_name": "l1"}]),
            json!([{"latents_name": "l1"}]),
            "latents_collection_output",
        ),
    ] {
        let out = ok(json!({"type": ty, "collection": input}));
        assert_eq!(out, json!({"collection": expected, "type": output}), "{ty}");
    }
    assert_eq!(
        ok(json!({"type": "integer_collection"}))["collection"],
        json!([])
    );
    // The latents collection has no default.
    let e = one(json!({"type": "latents_collection"})).expect_err("required");
    assert_eq!(e.error_type, "MissingInputException");
    let (loc, msg) = rejected(json!({"type": "integer_collection", "collection": [1, "x"]}));
    assert_eq!(
        loc,
        vec![
            json!("nodes"),
            json!("n"),
            json!("integer_collection"),
            json!("collection"),
            json!(1)
        ]
    );
    assert_eq!(
        msg,
        "Input should be a valid integer, unable to parse string as an integer"
    );
}

#[test]
fn image_collection_appends_direct_images_to_the_connected_ones() {
    let graph = json!({"nodes": {
        "first": {"id": "first", "type": "image_collection", "images": [{"image_name": "a.png"}]},
        "second": {"id": "second", "type": "image_collection", "images": [{"image_name": "b.png"}, {"image_name": "c.png"}]},
    }, "edges": [edge("first", "collection", "second", "collection")]});
    let session = run(graph, &mut Memory::default()).expect("runs");
    assert_eq!(
        result(&session, "second")[0],
        json!({"collection": [{"image_name": "a.png"}, {"image_name": "b.png"}, {"image_name": "c.png"}],
            "type": "image_collection_output"})
    );
    assert_eq!(
        ok(json!({"type": "image_collection"})),
        json!({"collection": [], "type": "image_collection_output"})
    );
    let spec = find("image_collection").expect("spec");
    assert_eq!(
        spec.input("collection").expect("collection").kind.as_str(),
        "connection"
    );
    assert_eq!(
        spec.input("images").expect("images").kind.as_str(),
        "direct"
    );
}

#[test]
fn image_primitive_reports_the_stored_size() {
    let mut ctx = Memory::default();
    ctx.images
        .insert("x.png".into(), DynamicImage::new_rgb8(12, 7));
    let graph = json!({"nodes": {"i": {"id": "i", "type": "image", "image": {"image_name": "x.png"}}}, "edges": []});
    let session = run(graph, &mut ctx).expect("runs");
    assert_eq!(
        result(&session, "i")[0],
        json!({"image": {"image_name": "x.png"}, "width": 12, "height": 7, "type": "image_output"})
    );
    assert!(ctx.saved.is_empty());
}

#[test]
fn color_and_bounding_box() {
    assert_eq!(
        ok(json!({"type": "color"})),
        json!({"color": {"r": 0, "g": 0, "b": 0, "a": 255}, "type": "color_output"})
    );
    assert_eq!(
        ok(json!({"type": "color", "color": {"r": 1, "g": 2, "b": 3, "a": 4}}))["color"],
        json!({"r": 1, "g": 2, "b": 3, "a": 4})
    );
    let (loc, msg) =
        rejected(json!({"type": "color", "color": {"r": 1, "g": 2, "b": 256, "a": 4}}));
    assert_eq!(loc.last(), Some(&json!("b")));
    assert_eq!(msg, "Input should be less than or equal to 255");
    assert_eq!(
        ok(json!({"type": "bounding_box", "x_min": 1, "y_min": 2, "x_max": 30, "y_max": 40})),
        json!({"bounding_box": {"x_min": 1, "x_max": 30, "y_min": 2, "y_max": 40, "score": null},
            "type": "bounding_box_output"})
    );
    let (ty, msg) = fails(json!({"type": "bounding_box", "x_min": 5}));
    assert_eq!(ty, "ValidationError");
    assert!(
        msg.ends_with("Value error, x_min (5) is greater than x_max (0)."),
        "{msg}"
    );
}

#[test]
fn conditioning_passes_through_and_latents_need_a_tensor_store() {
    let graph = json!({"nodes": {
        "list": {"id": "list", "type": "conditioning_collection", "collection": [{"conditioning_name": "c1"}, {"conditioning_name": "c2"}]},
        "it": {"id": "it", "type": "iterate"},
        "c": {"id": "c", "type": "conditioning"},
    }, "edges": [edge("list", "collection", "it", "collection"), edge("it", "item", "c", "conditioning")]});
    let session = run(graph, &mut Memory::default()).expect("runs");
    let outs = result(&session, "c");
    assert_eq!(outs.len(), 2);
    assert_eq!(
        outs[1],
        json!({"conditioning": {"conditioning_name": "c2"}, "type": "conditioning_output"})
    );
    // `conditioning` only takes its field over an edge.
    let e = one(json!({"type": "conditioning"})).expect_err("no edge");
    assert_eq!(e.error_type, "RequiredConnectionException");

    let graph = json!({"nodes": {
        "list": {"id": "list", "type": "latents_collection", "collection": [{"latents_name": "l1"}]},
        "it": {"id": "it", "type": "iterate"},
        "l": {"id": "l", "type": "latents"},
    }, "edges": [edge("list", "collection", "it", "collection"), edge("it", "item", "l", "latents")]});
    let e = run(graph, &mut Memory::default()).expect_err("no tensors");
    assert_eq!(e.error_type, "ObjectNotFoundError");
    assert_eq!(e.message, "'Object with name l1 not found'");
}

#[test]
fn integer_nodes() {
    assert_eq!(value(json!({"type": "add", "a": 2, "b": 3})), json!(5));
    assert_eq!(value(json!({"type": "sub", "a": 2, "b": 3})), json!(-1));
    assert_eq!(value(json!({"type": "mul", "a": -4, "b": 3})), json!(-12));
    assert_eq!(value(json!({"type": "div", "a": 7, "b": -2})), json!(-3));
    assert_eq!(
        fails(json!({"type": "div", "a": 7})),
        ("ZeroDivisionError".into(), "division by zero".into())
    );
    assert_eq!(
        fails(json!({"type": "add", "a": i64::MAX, "b": 1})).0,
        "OverflowError"
    );
}

#[test]
fn integer_math_every_operation() {
    let op = |operation: &str, a: i64, b: i64| {
        value(json!({"type": "integer_math", "operation": operation, "a": a, "b": b}))
    };
    assert_eq!(value(json!({"type": "integer_math"})), json!(2));
    assert_eq!(op("ADD", 7, 3), json!(10));
    assert_eq!(op("SUB", 7, 3), json!(4));
    assert_eq!(op("MUL", 7, 3), json!(21));
    assert_eq!(op("DIV", -7, 2), json!(-3));
    assert_eq!(op("EXP", -3, 3), json!(-27));
    assert_eq!(op("EXP", 5, 0), json!(1));
    assert_eq!(op("MOD", -7, 3), json!(2));
    assert_eq!(op("MOD", 7, -3), json!(-2));
    assert_eq!(op("ABS", -7, 3), json!(7));
    assert_eq!(op("MIN", 7, 3), json!(3));
    assert_eq!(op("MAX", 7, 3), json!(7));
    for operation in ["DIV", "MOD"] {
        assert_eq!(
            fails(json!({"type": "integer_math", "operation": operation, "b": 0})),
            ("ValueError".into(), "Cannot divide by zero".into())
        );
    }
    assert_eq!(
        fails(json!({"type": "integer_math", "operation": "EXP", "b": -1})),
        (
            "ValueError".into(),
            "Result of exponentiation is not an integer".into()
        )
    );
    assert_eq!(
        fails(json!({"type": "integer_math", "operation": "EXP", "a": 2, "b": 64})).0,
        "OverflowError"
    );
    let (loc, msg) = rejected(json!({"type": "integer_math", "operation": "SQRT"}));
    assert_eq!(
        loc,
        vec![
            json!("nodes"),
            json!("n"),
            json!("integer_math"),
            json!("operation")
        ]
    );
    assert_eq!(
        msg,
        "Input should be 'ADD', 'SUB', 'MUL', 'DIV', 'EXP', 'MOD', 'ABS', 'MIN' or 'MAX'"
    );
}

#[test]
fn float_math_every_operation() {
    let op = |operation: &str, a: f64, b: f64| {
        value(json!({"type": "float_math", "operation": operation, "a": a, "b": b}))
    };
    assert_eq!(value(json!({"type": "float_math"})), json!(2.0));
    assert_eq!(op("ADD", 1.5, 2.25), json!(3.75));
    assert_eq!(op("SUB", 1.5, 2.25), json!(-0.75));
    assert_eq!(op("MUL", 1.5, 2.0), json!(3.0));
    assert_eq!(op("DIV", 1.0, 4.0), json!(0.25));
    assert_eq!(op("EXP", 2.0, 0.5), json!(2f64.sqrt()));
    assert_eq!(op("EXP", -2.0, 3.0), json!(-8.0));
    assert_eq!(op("ABS", -2.5, 0.0), json!(2.5));
    assert_eq!(op("SQRT", 6.25, 0.0), json!(2.5));
    // numpy's sqrt of a negative is NaN, which serialises as null.
    assert_eq!(op("SQRT", -1.0, 0.0), Value::Null);
    assert_eq!(op("MIN", 2.0, -3.0), json!(-3.0));
    assert_eq!(op("MAX", 2.0, -3.0), json!(2.0));
    let err = |operation: &str, a: f64, b: f64| {
        fails(json!({"type": "float_math", "operation": operation, "a": a, "b": b}))
    };
    assert_eq!(
        err("DIV", 1.0, 0.0),
        ("ValueError".into(), "Cannot divide by zero".into())
    );
    assert_eq!(
        err("EXP", 0.0, -1.0),
        (
            "ValueError".into(),
            "Cannot raise zero to a negative power".into()
        )
    );
    assert_eq!(
        err("EXP", -8.0, 0.5),
        (
            "ValueError".into(),
            "Root operation resulted in a complex number".into()
        )
    );
    assert_eq!(err("EXP", 10.0, 400.0).0, "OverflowError");
    let (_, msg) = rejected(json!({"type": "float_math", "operation": "MOD"}));
    assert_eq!(
        msg,
        "Input should be 'ADD', 'SUB', 'MUL', 'DIV', 'EXP', 'ABS', 'SQRT', 'MIN' or 'MAX'"
    );
}

#[test]
fn float_to_int_and_rounding() {
    let to_int = |v: f64, multiple: i64, method: &str| {
        value(json!({"type": "float_to_int", "value": v, "multiple": multiple, "method": method}))
    };
    assert_eq!(to_int(2.5, 1, "Nearest"), json!(2));
    assert_eq!(to_int(3.5, 1, "Nearest"), json!(4));
    assert_eq!(to_int(37.0, 8, "Nearest"), json!(40));
    assert_eq!(to_int(37.0, 8, "Floor"), json!(32));
    assert_eq!(to_int(33.0, 8, "Ceiling"), json!(40));
    assert_eq!(to_int(-37.0, 8, "Truncate"), json!(-32));
    assert_eq!(to_int(-37.0, 8, "Floor"), json!(-40));
    let (_, msg) = rejected(json!({"type": "float_to_int", "multiple": 0}));
    assert_eq!(msg, "Input should be greater than or equal to 1");
    let (_, msg) = rejected(json!({"type": "float_to_int", "method": "Up"}));
    assert_eq!(
        msg,
        "Input should be 'Nearest', 'Floor', 'Ceiling' or 'Truncate'"
    );

    let round = |v: f64, decimals: i64| {
        value(json!({"type": "round_float", "value": v, "decimals": decimals}))
    };
    assert_eq!(round(2.675, 2), json!(2.67));
    assert_eq!(round(0.125, 2), json!(0.12));
    assert_eq!(round(2.5, 0), json!(2.0));
    assert_eq!(round(1234.5, -2), json!(1200.0));
    assert_eq!(value(json!({"type": "round_float"})), json!(0.0));
}

#[test]
fn random_numbers_stay_in_bounds() {
    for _ in 0..20 {
        let v = value(json!({"type": "rand_int", "low": -3, "high": 4}))
            .as_i64()
            .expect("int");
        assert!((-3..4).contains(&v), "{v}");
        let f = value(json!({"type": "rand_float", "low": 1.0, "high": 2.0, "decimals": 1}))
            .as_f64()
            .expect("float");
        assert!((1.0..=2.0).contains(&f), "{f}");
        assert_eq!((f * 10.0).round() / 10.0, f);
    }
    assert_eq!(
        value(json!({"type": "rand_int", "low": 5, "high": 6})),
        json!(5)
    );
    assert_eq!(
        fails(json!({"type": "rand_int", "low": 5, "high": 5})),
        ("ValueError".into(), "low >= high".into())
    );
    assert_eq!(
        fails(json!({"type": "rand_int", "high": 0})),
        ("ValueError".into(), "high <= 0".into())
    );
    for ty in ["rand_int", "rand_float", "random_range"] {
        assert!(!find(ty).expect("spec").use_cache, "{ty}");
    }
    assert_eq!(
        find("rand_int")
            .expect("spec")
            .input("high")
            .expect("high")
            .default,
        Some(json!(2_147_483_647))
    );
}

#[test]
fn strings() {
    assert_eq!(
        ok(json!({"type": "string_split_neg", "string": "a cat [blurry] on a mat [lowres]"})),
        json!({"positive_string": "a cat  on a mat ", "negative_string": " blurry lowres",
            "type": "string_pos_neg_output"})
    );
    assert_eq!(
        ok(json!({"type": "string_split", "string": "a,b,c", "delimiter": ","})),
        json!({"string_1": "a", "string_2": "b,c", "type": "string_2_output"})
    );
    assert_eq!(
        ok(json!({"type": "string_split", "string": "abc", "delimiter": ","})),
        json!({"string_1": "abc", "string_2": "", "type": "string_2_output"})
    );
    // Python's str.split refuses an empty separator, and the field defaults to one.
    assert_eq!(
        fails(json!({"type": "string_split", "string": "a b"})),
        ("ValueError".into(), "empty separator".into())
    );
    assert_eq!(
        value(json!({"type": "string_join", "string_left": "ab", "string_right": "cd"})),
        json!("abcd")
    );
    assert_eq!(
        value(
            json!({"type": "string_join_three", "string_left": "a", "string_middle": "-", "string_right": "b"})
        ),
        json!("a-b")
    );
}

#[test]
fn string_replace_literal_and_regex() {
    let replace = |string: &str, search: &str, repl: &str, regex: bool| {
        one(
            json!({"type": "string_replace", "string": string, "search_string": search,
            "replace_string": repl, "use_regex": regex}),
        )
        .map(|o| o["value"].clone())
    };
    // Literal searches ignore case and treat regex characters as text.
    assert_eq!(
        replace("A cat. a CAT.", "a cat.", "dog", false).expect("runs"),
        json!("dog dog")
    );
    assert_eq!(
        replace("a+b a+b", "a+b", "c", false).expect("runs"),
        json!("c c")
    );
    assert_eq!(replace("abc", "", "x", false).expect("runs"), json!("abc"));
    assert_eq!(
        replace("red, green", r"(\w+), (\w+)", r"\2 and \1", true).expect("runs"),
        json!("green and red")
    );
    assert_eq!(
        replace("Cat cat", "cat", "dog", true).expect("runs"),
        json!("Cat dog")
    );
    let e = replace("abc", "(a", "", true).expect_err("bad pattern");
    assert_eq!(
        (e.error_type.as_str(), e.message.as_str()),
        ("error", "missing ), unterminated subpattern at position 0")
    );
    let e = replace("abc", "b", r"\1", true).expect_err("bad template");
    assert_eq!(e.message, "invalid group reference 1 at position 1");
}

#[test]
fn integer_ranges() {
    let collection = |fields: Value| ok(fields)["collection"].clone();
    assert_eq!(
        ok(json!({"type": "range"})),
        json!({"collection": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "type": "integer_collection_output"})
    );
    assert_eq!(
        collection(json!({"type": "range", "start": 2, "stop": 11, "step": 3})),
        json!([2, 5, 8])
    );
    assert_eq!(
        collection(json!({"type": "range", "start": 2, "stop": 11, "step": -3})),
        json!([])
    );
    assert_eq!(
        fails(json!({"type": "range", "start": 5, "stop": 5})),
        (
            "ValueError".into(),
            "stop must be greater than start".into()
        )
    );
    assert_eq!(
        fails(json!({"type": "range", "step": 0})),
        ("ValueError".into(), "range() arg 3 must not be zero".into())
    );
    assert_eq!(
        fails(json!({"type": "range", "stop": i64::MAX})).0,
        "MemoryError"
    );
    assert_eq!(
        collection(json!({"type": "range_of_size", "start": 10, "size": 4, "step": -5})),
        json!([10, 5, 0, -5])
    );
    let (_, msg) = rejected(json!({"type": "range_of_size", "size": 0}));
    assert_eq!(msg, "Input should be greater than 0");
}

#[test]
fn random_range_is_seeded() {
    let draw = |seed: i64| {
        ok(json!({"type": "random_range", "low": 10, "high": 20, "size": 50, "seed": seed}))
            ["collection"]
            .clone()
    };
    let a = draw(7);
    assert_eq!(a, draw(7));
    assert_ne!(a, draw(8));
    let items = a.as_array().expect("list");
    assert_eq!(items.len(), 50);
    assert!(items
        .iter()
        .all(|v| (10..20).contains(&v.as_i64().expect("int"))));
    assert_eq!(
        ok(json!({"type": "random_range", "size": 0})),
        json!({"collection": [], "type": "integer_collection_output"})
    );
    assert_eq!(
        fails(json!({"type": "random_range", "low": 3, "high": 3})),
        ("ValueError".into(), "low >= high".into())
    );
    assert_eq!(
        fails(json!({"type": "random_range", "size": -1})),
        (
            "ValueError".into(),
            "negative dimensions are not allowed".into()
        )
    );
    let (_, msg) = rejected(json!({"type": "random_range", "seed": 4_294_967_296_i64}));
    assert_eq!(msg, "Input should be less than or equal to 4294967295");
}

#[test]
fn float_range_is_linspace() {
    assert_eq!(
        ok(json!({"type": "float_range", "start": 0, "stop": 1, "steps": 5})),
        json!({"collection": [0.0, 0.25, 0.5, 0.75, 1.0], "type": "float_collection_output"})
    );
    let default = ok(json!({"type": "float_range"}))["collection"].clone();
    let items = default.as_array().expect("list");
    assert_eq!(items.len(), 30);
    assert_eq!(
        (items[0].clone(), items[29].clone()),
        (json!(5.0), json!(10.0))
    );
    assert_eq!(
        fails(json!({"type": "float_range", "steps": -2})),
        (
            "ValueError".into(),
            "Number of samples, -2, must be non-negative.".into()
        )
    );
}

#[test]
fn if_selects_an_input() {
    let graph = json!({"nodes": {
        "t": {"id": "t", "type": "string", "value": "yes"},
        "f": {"id": "f", "type": "integer", "value": 3},
        "cond": {"id": "cond", "type": "boolean", "value": true},
        "pick": {"id": "pick", "type": "if"},
        "other": {"id": "other", "type": "if", "condition": false},
    }, "edges": [
        edge("t", "value", "pick", "true_input"), edge("f", "value", "pick", "false_input"),
        edge("cond", "value", "pick", "condition"),
        edge("t", "value", "other", "true_input"), edge("f", "value", "other", "false_input"),
    ]});
    let session = run(graph, &mut Memory::default()).expect("runs");
    assert_eq!(
        result(&session, "pick")[0],
        json!({"value": "yes", "type": "if_output"})
    );
    assert_eq!(result(&session, "other")[0]["value"], json!(3));
    assert_eq!(value(json!({"type": "if", "condition": true})), Value::Null);
}

#[test]
fn specs_follow_the_reference() {
    for (ty, title, version, category, output) in [
        (
            "integer_collection",
            "Integer Collection Primitive",
            "1.0.2",
            "primitives",
            "integer_collection_output",
        ),
        (
            "latents",
            "Latents Primitive",
            "1.0.2",
            "primitives",
            "latents_output",
        ),
        (
            "latents_collection",
            "Latents Collection Primitive",
            "1.0.1",
            "primitives",
            "latents_collection_output",
        ),
        (
            "conditioning",
            "Conditioning Primitive",
            "1.0.1",
            "primitives",
            "conditioning_output",
        ),
        (
            "image_collection",
            "Image Collection Primitive",
            "1.0.2",
            "primitives",
            "image_collection_output",
        ),
        (
            "bounding_box",
            "Bounding Box",
            "1.0.0",
            "primitives",
            "bounding_box_output",
        ),
        (
            "rand_float",
            "Random Float",
            "1.0.1",
            "math",
            "float_output",
        ),
        (
            "float_to_int",
            "Float To Integer",
            "1.0.1",
            "math",
            "integer_output",
        ),
        (
            "range",
            "Integer Range",
            "1.0.0",
            "batch",
            "integer_collection_output",
        ),
        (
            "range_of_size",
            "Integer Range of Size",
            "1.0.0",
            "batch",
            "integer_collection_output",
        ),
        (
            "random_range",
            "Random Range",
            "1.0.1",
            "batch",
            "integer_collection_output",
        ),
        (
            "float_range",
            "Float Range",
            "1.0.1",
            "math",
            "float_collection_output",
        ),
        (
            "string_split_neg",
            "String Split Negative",
            "1.0.1",
            "strings",
            "string_pos_neg_output",
        ),
        (
            "string_replace",
            "String Replace",
            "1.0.1",
            "strings",
            "string_output",
        ),
        ("if", "If", "1.0.0", "math", "if_output"),
    ] {
        let spec = find(ty).unwrap_or_else(|| panic!("{ty} missing"));
        assert_eq!(
            (
                spec.title,
                spec.version,
                spec.category,
                spec.output.type_name
            ),
            (title, version, category, output),
            "{ty}"
        );
    }
    let latents = find("latents").expect("latents");
    assert_eq!(
        latents.input("latents").expect("input").kind.as_str(),
        "connection"
    );
    assert_eq!(
        find("float_math")
            .expect("spec")
            .input("a")
            .expect("a")
            .default,
        Some(json!(1))
    );
}
