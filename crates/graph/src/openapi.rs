//! JSON Schemas of the node catalogue, shaped like InvokeAI's OpenAPI components so the
//! workflow editor can build node templates from them: one `<Name>Invocation` per node type
//! (`class: "invocation"`, with `category`, `version`, `output`), one schema per output type
//! (`class: "output"`), the structured field types, and `Graph` with its node union.

use crate::field::Ty;
use crate::spec::catalogue;
use serde_json::{json, Map, Value};

/// `img_resize` → `ImgResize`.
pub fn camel(name: &str) -> String {
    name.split(['_', '-'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

pub fn invocation_schema_name(type_name: &str) -> String {
    format!("{}Invocation", camel(type_name))
}

pub fn output_schema_name(output_type: &str) -> String {
    camel(output_type)
}

fn collect_named(ty: &Ty, into: &mut Vec<&'static str>) {
    match ty {
        Ty::Named(n) if !into.contains(n) => into.push(n),
        Ty::List(inner) => collect_named(inner, into),
        Ty::Union(members) => members.iter().for_each(|m| collect_named(m, into)),
        _ => {}
    }
}

fn named_schema(name: &str) -> Value {
    let string = json!({"type": "string"});
    let props = match name {
        "ImageField" => json!({"image_name": string}),
        "BoardField" => json!({"board_id": string}),
        "LatentsField" => {
            json!({"latents_name": string, "seed": {"anyOf": [{"type": "integer"}, {"type": "null"}]}})
        }
        "ConditioningField" => json!({"conditioning_name": string}),
        "TensorField" => json!({"tensor_name": string}),
        "ColorField" => {
            let byte = json!({"type": "integer", "minimum": 0, "maximum": 255});
            json!({"r": byte, "g": byte, "b": byte, "a": byte})
        }
        _ => json!({}),
    };
    let required: Vec<&String> = props
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    json!({"type": "object", "title": name, "properties": props, "required": required})
}

/// Every schema to add under `components.schemas`.
pub fn schemas() -> Map<String, Value> {
    let mut out = Map::new();
    let mut named = Vec::new();
    let mut refs = Vec::new();
    let mut mapping = Map::new();
    for spec in catalogue().values() {
        let mut props = Map::new();
        props.insert("id".into(), json!({"type": "string", "description": "The id of this instance of an invocation. Must be unique among all instances of invocations."}));
        props.insert(
            "is_intermediate".into(),
            json!({"type": "boolean", "default": false, "input": "direct"}),
        );
        props.insert(
            "use_cache".into(),
            json!({"type": "boolean", "default": spec.use_cache, "input": "direct"}),
        );
        let mut required = vec![json!("type"), json!("id")];
        for input in &spec.inputs {
            collect_named(&input.ty, &mut named);
            let mut schema = input.schema();
            if let Value::Object(m) = &mut schema {
                m.insert("title".into(), json!(camel(input.name)));
                m.insert("orig_required".into(), json!(input.required()));
            }
            props.insert(input.name.into(), schema);
        }
        props.insert(
            "type".into(),
            json!({"type": "string", "const": spec.type_name, "enum": [spec.type_name], "default": spec.type_name}),
        );
        for input in spec.inputs.iter().filter(|i| i.required()) {
            if input.kind == crate::spec::InputKind::Direct {
                required.push(json!(input.name));
            }
        }
        let name = invocation_schema_name(spec.type_name);
        let output_name = output_schema_name(spec.output.type_name);
        out.insert(
            name.clone(),
            json!({
                "type": "object", "title": spec.title, "description": spec.description,
                "properties": props, "required": required,
                "class": "invocation", "category": spec.category, "version": spec.version,
                "node_pack": "invokeai", "tags": spec.tags,
                "output": {"$ref": format!("#/components/schemas/{output_name}")},
            }),
        );
        let reference = format!("#/components/schemas/{name}");
        mapping.insert(spec.type_name.into(), json!(reference));
        refs.push(json!({"$ref": reference}));
        if !out.contains_key(&output_name) {
            let mut oprops = Map::new();
            let mut orequired = Vec::new();
            for (field, ty) in &spec.output.fields {
                collect_named(ty, &mut named);
                oprops.insert((*field).into(), ty.schema());
                orequired.push(json!(field));
            }
            oprops.insert(
                "type".into(),
                json!({"type": "string", "const": spec.output.type_name, "enum": [spec.output.type_name], "default": spec.output.type_name}),
            );
            orequired.push(json!("type"));
            out.insert(
                output_name,
                json!({"type": "object", "title": camel(spec.output.type_name), "properties": oprops,
                    "required": orequired, "class": "output"}),
            );
        }
    }
    for name in named {
        out.entry(name.to_owned())
            .or_insert_with(|| named_schema(name));
    }
    out.insert(
        "EdgeConnection".into(),
        json!({"type": "object", "properties": {"node_id": {"type": "string"}, "field": {"type": "string"}}, "required": ["node_id", "field"]}),
    );
    out.insert(
        "Edge".into(),
        json!({"type": "object", "properties": {
            "source": {"$ref": "#/components/schemas/EdgeConnection"},
            "destination": {"$ref": "#/components/schemas/EdgeConnection"}}, "required": ["source", "destination"]}),
    );
    out.insert(
        "Graph".into(),
        json!({"type": "object", "title": "Graph", "properties": {
            "id": {"type": "string"},
            "nodes": {"type": "object", "additionalProperties": {"oneOf": refs, "discriminator": {"propertyName": "type", "mapping": mapping}}},
            "edges": {"type": "array", "items": {"$ref": "#/components/schemas/Edge"}},
        }}),
    );
    out
}
