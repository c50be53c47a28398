//! The node catalogue. Each module contributes its specs through `specs()`; field names,
//! defaults, versions and output types follow InvokeAI's invocations (generation.md §8) so
//! graphs written for InvokeAI run unchanged. `docs/nodes.md` is generated from this list.

mod collections;
pub mod generation;
mod image;
mod math;
mod metadata;
mod models;
mod primitives;
mod strings;

use crate::field::Ty;
use crate::spec::{Input, NodeSpec, Output, RunFn};
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// Every node type this build knows.
pub fn all() -> Vec<NodeSpec> {
    let mut specs = Vec::new();
    specs.extend(primitives::specs());
    specs.extend(collections::specs());
    specs.extend(math::specs());
    specs.extend(strings::specs());
    specs.extend(image::specs());
    specs.extend(metadata::specs());
    specs.extend(models::specs());
    specs.extend(generation::specs());
    specs
}

/// A spec with the common defaults; modules adjust what differs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn node(
    type_name: &'static str,
    title: &'static str,
    version: &'static str,
    category: &'static str,
    inputs: Vec<Input>,
    output: &'static str,
    fields: Vec<(&'static str, Ty)>,
    run: RunFn,
) -> NodeSpec {
    NodeSpec {
        type_name,
        title,
        version,
        category,
        tags: &[],
        description: "",
        inputs,
        output: Output {
            type_name: output,
            fields,
        },
        use_cache: true,
        keeps_extra_keys: false,
        run,
    }
}

/// An output map with one `value` field.
pub(crate) fn value_output(value: Value) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("value".into(), value);
    out
}

pub(crate) fn fields(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The `board` and `metadata` inputs of image-saving nodes (generation.md §6).
pub(crate) fn board_and_metadata() -> Vec<Input> {
    vec![
        Input::new("board", Ty::Named("BoardField"))
            .optional()
            .direct()
            .desc("The board to save the image to"),
        Input::new("metadata", Ty::Named("MetadataField"))
            .optional()
            .conn()
            .desc("Optional metadata to be saved with the image"),
    ]
}

/// The `image_output` fields.
pub(crate) fn image_output_fields() -> Vec<(&'static str, Ty)> {
    vec![
        ("image", Ty::Named("ImageField")),
        ("width", Ty::Int),
        ("height", Ty::Int),
    ]
}

/// Used only if a graph names a type the catalogue lost, which validation prevents.
pub(crate) fn fallback() -> &'static NodeSpec {
    static SPEC: OnceLock<NodeSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        node(
            "unknown",
            "Unknown",
            "0.0.0",
            "",
            Vec::new(),
            "unknown_output",
            Vec::new(),
            |_, _| {
                Err(crate::NodeError::new(
                    "InvalidNodeType",
                    "Unknown node type",
                ))
            },
        )
    })
}
