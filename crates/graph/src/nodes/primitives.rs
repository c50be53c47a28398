//! Primitive values (`integer`, `float`, `string`, `boolean`, `image`, `color`, their
//! collections).

use super::{fields, image_output_fields, node, value_output};
use crate::field::Ty;
use crate::spec::{Input, NodeSpec};
use serde_json::json;

pub fn specs() -> Vec<NodeSpec> {
    vec![
        node(
            "integer",
            "Integer Primitive",
            "1.0.1",
            "primitives",
            vec![Input::new("value", Ty::Int)
                .default(json!(0))
                .desc("The integer value")],
            "integer_output",
            vec![("value", Ty::Int)],
            |i, _| Ok(value_output(i.get("value").clone())),
        ),
        node(
            "float",
            "Float Primitive",
            "1.0.1",
            "primitives",
            vec![Input::new("value", Ty::Float)
                .default(json!(0.0))
                .desc("The float value")],
            "float_output",
            vec![("value", Ty::Float)],
            |i, _| Ok(value_output(i.get("value").clone())),
        ),
        node(
            "string",
            "String Primitive",
            "1.0.1",
            "primitives",
            vec![Input::new("value", Ty::Str)
                .default(json!(""))
                .desc("The string value")],
            "string_output",
            vec![("value", Ty::Str)],
            |i, _| Ok(value_output(i.get("value").clone())),
        ),
        node(
            "boolean",
            "Boolean Primitive",
            "1.0.1",
            "primitives",
            vec![Input::new("value", Ty::Bool)
                .default(json!(false))
                .desc("The boolean value")],
            "boolean_output",
            vec![("value", Ty::Bool)],
            |i, _| Ok(value_output(i.get("value").clone())),
        ),
        node(
            "image",
            "Image Primitive",
            "1.0.2",
            "primitives",
            vec![Input::new("image", Ty::Named("ImageField")).desc("The image to load")],
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
    ]
}
