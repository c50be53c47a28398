//! The SD node catalogue accepts the graphs the web UI builds (generation.md Appendix A) and
//! checks their fields at validation time.
#![allow(clippy::expect_used)]

use atelier_graph::validate_graph;
use serde_json::{json, Value};

fn appendix_a() -> Value {
    let text = include_str!("appendix_a.json");
    let body: Value = serde_json::from_str(text).expect("json");
    body["batch"]["graph"].clone()
}

#[test]
fn the_generate_tab_graph_validates_with_defaults_filled_in() {
    let graph = validate_graph(&appendix_a()).expect("valid");
    let denoise = &graph.nodes["denoise_latents:n11"];
    assert_eq!(denoise["scheduler"], "dpmpp_3m_k");
    assert_eq!(denoise["hidiffusion_t1_ratio"], 0.4);
    let noise = &graph.nodes["noise:n10"];
    assert_eq!(
        (noise["noise_type"].clone(), noise["seed"].clone()),
        (json!("SD"), json!(0))
    );
    let meta = &graph.nodes["core_metadata:n13"];
    assert_eq!(
        meta["hidiffusion"], false,
        "extra keys survive on core_metadata"
    );
    assert_eq!(graph.nodes["canvas_output:n12"]["use_cache"], false);
}

#[test]
fn generation_fields_are_checked() {
    let mut g = appendix_a();
    g["nodes"]["noise:n10"]["seed"] = json!(-1);
    let graph = validate_graph(&g).expect("a negative seed wraps");
    assert_eq!(graph.nodes["noise:n10"]["seed"], 4_294_967_295_i64);
    let mut g = appendix_a();
    g["nodes"]["noise:n10"]["width"] = json!(500);
    let issue = &validate_graph(&g).expect_err("not a multiple of 8")[0];
    assert_eq!(issue.msg, "Input should be a multiple of 8");
    let mut g = appendix_a();
    g["nodes"]["denoise_latents:n11"]["scheduler"] = json!("fancy");
    let issue = &validate_graph(&g).expect_err("unknown scheduler")[0];
    assert_eq!(issue.kind, "literal_error");
    assert_eq!(
        issue.loc,
        vec![
            json!("nodes"),
            json!("denoise_latents:n11"),
            json!("denoise_latents"),
            json!("scheduler")
        ]
    );
    let mut g = appendix_a();
    g["nodes"]["denoise_latents:n11"]["steps"] = json!(0);
    assert_eq!(
        validate_graph(&g).expect_err("steps")[0].msg,
        "Input should be greater than 0"
    );
    let mut g = appendix_a();
    g["nodes"]["denoise_latents:n11"]["cfg_rescale_multiplier"] = json!(1);
    assert_eq!(
        validate_graph(&g).expect_err("rescale")[0].msg,
        "Input should be less than 1"
    );
    // A string cannot feed the UNet.
    let mut g = appendix_a();
    g["edges"].as_array_mut().expect("edges").push(json!({
        "source": {"node_id": "positive_prompt:n2", "field": "value"},
        "destination": {"node_id": "canvas_output:n12", "field": "vae"}}));
    let issue = &validate_graph(&g).expect_err("types")[0];
    assert!(issue
        .msg
        .starts_with("Value error, Edge source and target types do not match"));
}
