//! Primitive values and their collections (InvokeAI's `primitives.py`): `integer`, `float`,
//! `string`, `boolean`, `image`, `color`, `bounding_box`, the `*_collection` nodes, and the
//! `latents`/`conditioning` primitives, which only pass their fields along.
//!
//! `video` is left out: this build has no video store.

use super::{fields, image_output_fields, node, value_output};
use crate::field::Ty;
use crate::spec::{Input, NodeSpec};
use crate::NodeError;
use serde_json::{json, Value};

/// Sets a spec's tags and description (the reference's `tags=` and docstring).
pub(super) fn tagged(
    mut spec: NodeSpec,
    tags: &'static [&'static str],
    description: &'static str,
) -> NodeSpec {
    spec.tags = tags;
    spec.description = description;
    spec
}

/// The fields of `integer_output`, `float_output`, `string_output`, `boolean_output`.
pub(super) fn value_field(ty: Ty) -> Vec<(&'static str, Ty)> {
    vec![("value", ty)]
}

/// The fields of the `*_collection_output` types.
pub(super) fn collection_field(element: Ty) -> Vec<(&'static str, Ty)> {
    vec![("collection", Ty::list(element))]
}

/// An output map with one `collection` field.
pub(super) fn collection_output(items: Vec<Value>) -> serde_json::Map<String, Value> {
    fields(vec![("collection", Value::Array(items))])
}

/// A single-value primitive: `value` in, `value` out.
#[allow(clippy::too_many_arguments)]
fn scalar(
    type_name: &'static str,
    title: &'static str,
    ty: Ty,
    default: Value,
    description: &'static str,
    output: &'static str,
    tags: &'static [&'static str],
    doc: &'static str,
) -> NodeSpec {
    tagged(
        node(
            type_name,
            title,
            "1.0.1",
            "primitives",
            vec![Input::new("value", ty.clone())
                .default(default)
                .desc(description)],
            output,
            value_field(ty),
            |i, _| Ok(value_output(i.get("value").clone())),
        ),
        tags,
        doc,
    )
}

/// A collection primitive: `collection` in, `collection` out.
#[allow(clippy::too_many_arguments)]
fn collection(
    type_name: &'static str,
    title: &'static str,
    version: &'static str,
    element: Ty,
    default: Option<Value>,
    description: &'static str,
    output: &'static str,
    tags: &'static [&'static str],
    doc: &'static str,
) -> NodeSpec {
    let mut input = Input::new("collection", Ty::list(element.clone())).desc(description);
    if let Some(d) = default {
        input = input.default(d);
    }
    tagged(
        node(
            type_name,
            title,
            version,
            "primitives",
            vec![input],
            output,
            collection_field(element),
            |i, _| Ok(collection_output(i.list("collection")?.clone())),
        ),
        tags,
        doc,
    )
}

pub fn specs() -> Vec<NodeSpec> {
    let image = Ty::Named("ImageField");
    let latents = Ty::Named("LatentsField");
    let conditioning = Ty::Named("ConditioningField");
    vec![
        scalar(
            "boolean",
            "Boolean Primitive",
            Ty::Bool,
            json!(false),
            "The boolean value",
            "boolean_output",
            &["primitives", "boolean"],
            "A boolean primitive value",
        ),
        collection(
            "boolean_collection",
            "Boolean Collection Primitive",
            "1.0.2",
            Ty::Bool,
            Some(json!([])),
            "The collection of boolean values",
            "boolean_collection_output",
            &["primitives", "boolean", "collection"],
            "A collection of boolean primitive values",
        ),
        scalar(
            "integer",
            "Integer Primitive",
            Ty::Int,
            json!(0),
            "The integer value",
            "integer_output",
            &["primitives", "integer"],
            "An integer primitive value",
        ),
        collection(
            "integer_collection",
            "Integer Collection Primitive",
            "1.0.2",
            Ty::Int,
            Some(json!([])),
            "The collection of integer values",
            "integer_collection_output",
            &["primitives", "integer", "collection"],
            "A collection of integer primitive values",
        ),
        scalar(
            "float",
            "Float Primitive",
            Ty::Float,
            json!(0.0),
            "The float value",
            "float_output",
            &["primitives", "float"],
            "A float primitive value",
        ),
        collection(
            "float_collection",
            "Float Collection Primitive",
            "1.0.2",
            Ty::Float,
            Some(json!([])),
            "The collection of float values",
            "float_collection_output",
            &["primitives", "float", "collection"],
            "A collection of float primitive values",
        ),
        scalar(
            "string",
            "String Primitive",
            Ty::Str,
            json!(""),
            "The string value",
            "string_output",
            &["primitives", "string"],
            "A string primitive value",
        ),
        collection(
            "string_collection",
            "String Collection Primitive",
            "1.0.2",
            Ty::Str,
            Some(json!([])),
            "The collection of string values",
            "string_collection_output",
            &["primitives", "string", "collection"],
            "A collection of string primitive values",
        ),
        tagged(
            node(
                "image",
                "Image Primitive",
                "1.0.2",
                "primitives",
                vec![Input::new("image", image.clone()).desc("The image to load")],
                "image_output",
                image_output_fields(),
                |i, ctx| {
                    let name = i.image_name("image")?.to_owned();
                    let img = ctx.load_image(&name)?;
                    Ok(fields(vec![
                        ("image", json!({"image_name": name})),
                        ("width", json!(img.width())),
                        ("height", json!(img.height())),
                    ]))
                },
            ),
            &["primitives", "image"],
            "An image primitive value",
        ),
        tagged(
            node(
                "image_collection",
                "Image Collection Primitive",
                "1.0.2",
                "primitives",
                vec![
                    Input::new("collection", Ty::list(image.clone()))
                        .optional()
                        .conn()
                        .desc("An optional image collection to append to"),
                    Input::new("images", Ty::list(image.clone()))
                        .optional()
                        .direct()
                        .desc("The images to append to the collection"),
                ],
                "image_collection_output",
                collection_field(image),
                |i, _| {
                    // The connected collection first, then the images given in the node.
                    let mut items = Vec::new();
                    for name in ["collection", "images"] {
                        if let Some(list) = i.get(name).as_array() {
                            items.extend(list.iter().cloned());
                        }
                    }
                    Ok(collection_output(items))
                },
            ),
            &["primitives", "image", "collection"],
            "A collection of image primitive values",
        ),
        tagged(
            node(
                "latents",
                "Latents Primitive",
                "1.0.2",
                "primitives",
                vec![Input::new("latents", latents.clone())
                    .conn()
                    .desc("The latents tensor")],
                "latents_output",
                vec![
                    ("latents", latents.clone()),
                    ("width", Ty::Int),
                    ("height", Ty::Int),
                ],
                |i, ctx| {
                    // The reference loads the tensor to report its size; a missing one fails.
                    let name = i
                        .get("latents")
                        .get("latents_name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    match ctx.latents_size(&name)? {
                        Some((width, height)) => Ok(fields(vec![
                            ("latents", i.get("latents").clone()),
                            ("width", json!(width)),
                            ("height", json!(height)),
                        ])),
                        None => Err(NodeError::new(
                            "ObjectNotFoundError",
                            format!("'Object with name {name} not found'"),
                        )),
                    }
                },
            ),
            &["primitives", "latents"],
            "A latents tensor primitive value",
        ),
        collection(
            "latents_collection",
            "Latents Collection Primitive",
            "1.0.1",
            latents,
            None,
            "The collection of latents tensors",
            "latents_collection_output",
            &["primitives", "latents", "collection"],
            "A collection of latents tensor primitive values",
        ),
        tagged(
            node(
                "conditioning",
                "Conditioning Primitive",
                "1.0.1",
                "primitives",
                vec![Input::new("conditioning", conditioning.clone())
                    .conn()
                    .desc("Conditioning tensor")],
                "conditioning_output",
                vec![("conditioning", conditioning.clone())],
                |i, _| {
                    Ok(fields(vec![(
                        "conditioning",
                        i.get("conditioning").clone(),
                    )]))
                },
            ),
            &["primitives", "conditioning"],
            "A conditioning tensor primitive value",
        ),
        collection(
            "conditioning_collection",
            "Conditioning Collection Primitive",
            "1.0.2",
            conditioning,
            Some(json!([])),
            "The collection of conditioning tensors",
            "conditioning_collection_output",
            &["primitives", "conditioning", "collection"],
            "A collection of conditioning tensor primitive values",
        ),
        tagged(
            node(
                "color",
                "Color Primitive",
                "1.0.1",
                "primitives",
                vec![Input::new("color", Ty::Named("ColorField"))
                    .default(json!({"r": 0, "g": 0, "b": 0, "a": 255}))
                    .desc("The color value")],
                "color_output",
                vec![("color", Ty::Named("ColorField"))],
                |i, _| Ok(fields(vec![("color", i.get("color").clone())])),
            ),
            &["primitives", "color"],
            "A color primitive value",
        ),
        bounding_box(),
    ]
}

fn bounding_box() -> NodeSpec {
    let coord = |name: &'static str, desc: &'static str| {
        Input::new(name, Ty::Int).default(json!(0)).desc(desc)
    };
    tagged(
        node(
            "bounding_box",
            "Bounding Box",
            "1.0.0",
            "primitives",
            vec![
                coord("x_min", "x-coordinate of the box's top left corner"),
                coord("y_min", "y-coordinate of the box's top left corner"),
                coord("x_max", "x-coordinate of the box's bottom right corner"),
                coord("y_max", "y-coordinate of the box's bottom right corner"),
            ],
            "bounding_box_output",
            vec![("bounding_box", Ty::Named("BoundingBoxField"))],
            |i, _| {
                let (x_min, y_min) = (i.int("x_min")?, i.int("y_min")?);
                let (x_max, y_max) = (i.int("x_max")?, i.int("y_max")?);
                // The reference builds a `BoundingBoxField`, whose model validator rejects
                // inverted corners; pydantic reports that as a ValidationError.
                let invalid = |msg: String| {
                    NodeError::new(
                        "ValidationError",
                        format!("1 validation error for BoundingBoxField\n  Value error, {msg}"),
                    )
                };
                if x_min > x_max {
                    return Err(invalid(format!(
                        "x_min ({x_min}) is greater than x_max ({x_max})."
                    )));
                }
                if y_min > y_max {
                    return Err(invalid(format!(
                        "y_min ({y_min}) is greater than y_max ({y_max})."
                    )));
                }
                Ok(fields(vec![(
                    "bounding_box",
                    json!({"x_min": x_min, "x_max": x_max, "y_min": y_min, "y_max": y_max, "score": null}),
                )]))
            },
        ),
        &["primitives", "segmentation", "collection", "bounding box"],
        "Makes a bounding box from the given corner coordinates",
    )
}
