//! The node reference (`docs/nodes.md`), generated from the catalogue so it cannot drift.

use crate::spec::catalogue;
use std::fmt::Write;

/// Markdown listing every node type with its inputs (type, kind, default, constraints) and
/// output fields.
pub fn markdown() -> String {
    let mut out = String::new();
    out.push_str("# Node reference\n\n");
    out.push_str(
        "Generated from the node catalogue (`crates/graph/src/nodes/`) by \
         `UPDATE_DOCS=1 cargo test -p atelier-graph --test docs`; do not edit by hand.\n\n",
    );
    out.push_str(
        "Every node also takes `id` (string), `is_intermediate` (bool, default false) and \
         `use_cache` (bool; the default is given per node). Kinds: `connection` inputs only \
         arrive over an edge, `direct` inputs only in the node's JSON, `any` either way. A \
         required input with no value when the node runs fails the item (generation.md §5.4).\n\n",
    );
    let mut by_category: std::collections::BTreeMap<&str, Vec<_>> = Default::default();
    for spec in catalogue().values() {
        let cat = if spec.category.is_empty() {
            "engine"
        } else {
            spec.category
        };
        by_category.entry(cat).or_default().push(spec);
    }
    out.push_str(&format!("{} node types.\n\n", catalogue().len()));
    for (category, specs) in by_category {
        let _ = writeln!(out, "## {category}\n");
        for spec in specs {
            let _ = writeln!(out, "### `{}`\n", spec.type_name);
            let _ = writeln!(
                out,
                "{} (version {}, `use_cache` default {}). Output: `{}`.\n",
                spec.title, spec.version, spec.use_cache, spec.output.type_name
            );
            if !spec.description.is_empty() {
                let _ = writeln!(out, "{}\n", spec.description);
            }
            if !spec.inputs.is_empty() {
                out.push_str("| input | type | kind | default | constraints | description |\n");
                out.push_str("| --- | --- | --- | --- | --- | --- |\n");
                for input in &spec.inputs {
                    let default = match &input.default {
                        None => "required".to_owned(),
                        Some(v) => format!("`{v}`"),
                    };
                    let mut cons = Vec::new();
                    for (sym, b) in [
                        (">=", &input.ge),
                        (">", &input.gt),
                        ("<=", &input.le),
                        ("<", &input.lt),
                    ] {
                        if let Some(b) = b {
                            cons.push(format!("{sym} {b}"));
                        }
                    }
                    if let Some(m) = input.multiple_of {
                        cons.push(format!("multiple of {m}"));
                    }
                    if let Some(m) = input.min_length {
                        cons.push(format!("at least {m} items"));
                    }
                    let _ = writeln!(
                        out,
                        "| `{}` | {} | {} | {} | {} | {} |",
                        input.name,
                        input.ty.name().replace('|', "\\|"),
                        input.kind.as_str(),
                        default.replace('|', "\\|"),
                        cons.join(", "),
                        input.description
                    );
                }
                out.push('\n');
            }
            let fields: Vec<String> = spec
                .output
                .fields
                .iter()
                .map(|(n, t)| format!("`{n}` ({})", t.name().replace('|', "\\|")))
                .collect();
            let _ = writeln!(out, "Outputs: {}.\n", fields.join(", "));
        }
    }
    out
}
