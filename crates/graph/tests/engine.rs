//! Runs graphs through the engine with an in-memory image store.

mod common;
use common::*;

use atelier_graph::validate_graph;
use serde_json::json;

#[test]
fn math_chain() {
    let graph = json!({"nodes": {
        "a": {"id": "a", "type": "integer", "value": 6},
        "b": {"id": "b", "type": "integer", "value": 7},
        "m": {"id": "m", "type": "mul"},
        "s": {"id": "s", "type": "sub", "b": 2},
    }, "edges": [edge("a", "value", "m", "a"), edge("b", "value", "m", "b"), edge("m", "value", "s", "a")]});
    let session = run(graph, &mut Memory::default()).expect("runs");
    assert_eq!(
        result(&session, "s")[0],
        json!({"value": 40, "type": "integer_output"})
    );
    assert_eq!(session["executed_history"], json!(["a", "b", "m", "s"]));
}

#[test]
fn iterate_then_collect() {
    let graph = json!({"nodes": {
        "list": {"id": "list", "type": "collect"},
        "one": {"id": "one", "type": "integer", "value": 1},
        "two": {"id": "two", "type": "integer", "value": 2},
        "it": {"id": "it", "type": "iterate"},
        "add": {"id": "add", "type": "add", "b": 10},
        "out": {"id": "out", "type": "collect"},
    }, "edges": [
        edge("one", "value", "list", "item"), edge("two", "value", "list", "item"),
        edge("list", "collection", "it", "collection"),
        edge("it", "item", "add", "a"), edge("add", "value", "out", "item"),
    ]});
    let session = run(graph, &mut Memory::default()).expect("runs");
    assert_eq!(result(&session, "add").len(), 2);
    assert_eq!(result(&session, "out")[0]["collection"], json!([11, 12]));
}

#[test]
fn missing_required_input_fails_at_run_time() {
    let graph = json!({"nodes": {"r": {"id": "r", "type": "img_resize"}}, "edges": []});
    let err = run(graph, &mut Memory::default()).expect_err("fails");
    assert_eq!(err.error_type, "MissingInputException");
    assert_eq!(
        err.message,
        "Node img_resize missing value or connection for field image"
    );
}

#[test]
fn validation_messages() {
    let cyc = json!({"nodes": {"a": {"id": "a", "type": "add"}, "b": {"id": "b", "type": "add"}},
        "edges": [edge("a", "value", "b", "a"), edge("b", "value", "a", "a")]});
    assert_eq!(
        validate_graph(&cyc).expect_err("cycle")[0].msg,
        "Value error, Graph contains cycles"
    );
    let bad_type = json!({"nodes": {"a": {"id": "a", "type": "string"}, "b": {"id": "b", "type": "add"}},
        "edges": [edge("a", "value", "b", "a")]});
    assert!(validate_graph(&bad_type).expect_err("types")[0].msg.starts_with("Value error, Edge source and target types do not match (source=EdgeConnection(node_id='a', field='value')"));
    let unknown = json!({"nodes": {"a": {"id": "a", "type": "nope"}}});
    let issue = &validate_graph(&unknown).expect_err("unknown")[0];
    assert_eq!(issue.kind, "union_tag_invalid");
    assert_eq!(issue.loc, vec![json!("nodes"), json!("a")]);
    let bad_value = json!({"nodes": {"a": {"id": "a", "type": "integer", "value": "x"}}});
    let issue = &validate_graph(&bad_value).expect_err("value")[0];
    assert_eq!(
        issue.loc,
        vec![json!("nodes"), json!("a"), json!("integer"), json!("value")]
    );
    let two = json!({"nodes": {"a": {"id": "a", "type": "integer"}, "b": {"id": "b", "type": "integer"}, "c": {"id": "c", "type": "add"}},
        "edges": [edge("a", "value", "c", "a"), edge("b", "value", "c", "a")]});
    assert!(validate_graph(&two).is_err());
    let mismatch = json!({"nodes": {"x": {"id": "y", "type": "integer"}}});
    assert_eq!(
        validate_graph(&mismatch).expect_err("ids")[0].msg,
        "Value error, Node ids must match, got x and y"
    );
}

#[test]
fn images_are_made_resized_and_saved_with_board_and_metadata() {
    let graph = json!({"nodes": {
        "blank": {"id": "blank", "type": "blank_image", "width": 64, "height": 32, "color": {"r": 255, "g": 0, "b": 0, "a": 255}, "is_intermediate": true},
        "meta": {"id": "meta", "type": "core_metadata", "seed": 5, "custom_key": "kept"},
        "resize": {"id": "resize", "type": "img_resize", "width": 16, "height": 8, "board": {"board_id": "b1"}},
    }, "edges": [edge("blank", "image", "resize", "image"), edge("meta", "metadata", "resize", "metadata")]});
    let mut ctx = Memory::default();
    let session = run(graph, &mut ctx).expect("runs");
    let out = &result(&session, "resize")[0];
    assert_eq!(
        (out["width"].clone(), out["height"].clone()),
        (json!(16), json!(8))
    );
    assert!(ctx.saved[0].is_intermediate);
    assert_eq!(ctx.saved[1].board_id.as_deref(), Some("b1"));
    let meta = ctx.saved[1].metadata.clone().unwrap_or_default();
    assert_eq!(meta["seed"], json!(5));
    assert_eq!(meta["custom_key"], json!("kept"));
    assert_eq!(meta["app_version"], json!("test"));
}
