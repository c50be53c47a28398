//! Graphs of invocations (generation.md §2–§5): the catalogue of node types with their fields,
//! validation of a submitted graph, and the execution state of one session.
//!
//! This crate does no I/O. Nodes reach images and progress through the [`Context`] trait,
//! which the server implements on top of its image service and event bus.

mod context;
mod docs;
mod exec;
mod field;
pub mod nodes;
pub mod openapi;
mod spec;
mod validate;

pub use context::{Context, ImageRef, NodeError, SaveRequest};
pub use docs::markdown;
pub use exec::{Prepared, Session};
pub use field::{check_value, Ty};
pub use spec::{catalogue, find, image_output, Input, InputKind, Inputs, NodeSpec, Output, RunFn};
pub use validate::{validate_graph, Edge, Graph, GraphIssue};
