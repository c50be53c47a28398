//! What the graph crate's tests share: an in-memory [`Context`] and a runner.
#![allow(dead_code)]

use atelier_graph::{validate_graph, Context, ImageRef, NodeError, SaveRequest, Session};
use image::DynamicImage;
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Default)]
pub struct Memory {
    pub images: HashMap<String, DynamicImage>,
    pub saved: Vec<SaveRequest>,
}

impl Context for Memory {
    fn load_image(&mut self, name: &str) -> Result<DynamicImage, NodeError> {
        self.images
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::value(format!("Image {name} not found")))
    }
    fn save_image(
        &mut self,
        image: &DynamicImage,
        request: SaveRequest,
    ) -> Result<ImageRef, NodeError> {
        let name = format!("img{}.png", self.images.len());
        self.images.insert(name.clone(), image.clone());
        self.saved.push(request);
        Ok(ImageRef {
            image_name: name,
            width: image.width(),
            height: image.height(),
        })
    }
    fn is_canceled(&self) -> bool {
        false
    }
    fn progress(&mut self, _: &str, _: Option<f64>) {}
    fn app_version(&self) -> String {
        "test".into()
    }
}

/// Runs to completion; returns the session JSON or the first error.
pub fn run(graph: Value, ctx: &mut Memory) -> Result<Value, NodeError> {
    let graph = validate_graph(&graph).map_err(|e| NodeError::value(format!("{e:?}")))?;
    let mut session = Session::new("s", graph);
    while let Some(p) = session.next_node() {
        let out = p.inputs.and_then(|inputs| (p.spec.run)(&inputs, ctx));
        match out {
            Ok(o) => session.complete(&p.exec_id, o),
            Err(e) => {
                session.fail(&p.exec_id, &e);
                return Err(e);
            }
        }
    }
    Ok(session.to_json())
}

pub fn result(session: &Value, source: &str) -> Vec<Value> {
    session["source_prepared_mapping"][source]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|id| session["results"][id.as_str().unwrap_or_default()].clone())
        .collect()
}

pub fn edge(s: &str, sf: &str, d: &str, df: &str) -> Value {
    json!({"source": {"node_id": s, "field": sf}, "destination": {"node_id": d, "field": df}})
}
