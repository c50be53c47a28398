//! Parsing and validating a submitted graph (generation.md §2 and §4), with the reference's
//! error texts.

use crate::field::{compatible, Ty};
use crate::spec::{find, NodeSpec};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

/// One validation failure; `loc` is relative to the graph object.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphIssue {
    pub loc: Vec<Value>,
    pub kind: &'static str,
    pub msg: String,
    pub input: Value,
}

impl GraphIssue {
    fn graph(msg: String, graph: &Value) -> Self {
        Self {
            loc: Vec::new(),
            kind: "value_error",
            msg: format!("Value error, {msg}"),
            input: graph.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub source_node: String,
    pub source_field: String,
    pub destination_node: String,
    pub destination_field: String,
}

impl std::fmt::Display for Edge {
    /// The reference's rendering of an edge inside error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "source=EdgeConnection(node_id='{}', field='{}') destination=EdgeConnection(node_id='{}', field='{}')",
            self.source_node, self.source_field, self.destination_node, self.destination_field
        )
    }
}

impl Edge {
    pub fn to_json(&self) -> Value {
        json!({
            "source": {"node_id": self.source_node, "field": self.source_field},
            "destination": {"node_id": self.destination_node, "field": self.destination_field},
        })
    }
}

/// A valid graph: nodes normalized (defaults filled in, unknown keys dropped), edges parsed.
#[derive(Debug, Clone)]
pub struct Graph {
    pub id: String,
    pub nodes: Map<String, Value>,
    pub edges: Vec<Edge>,
}

impl Graph {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "nodes": self.nodes,
            "edges": self.edges.iter().map(Edge::to_json).collect::<Vec<_>>(),
        })
    }

    pub fn spec(&self, node_id: &str) -> Option<&'static NodeSpec> {
        self.nodes
            .get(node_id)
            .and_then(|n| n.get("type"))
            .and_then(Value::as_str)
            .and_then(find)
    }

    /// Edges into `node_id`, in graph order.
    pub fn incoming<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a Edge> + 'a {
        self.edges
            .iter()
            .filter(move |e| e.destination_node == node_id)
    }

    /// Node ids in a topological order; ties keep the order of `nodes`. `None` on a cycle.
    pub fn topological_order(&self) -> Option<Vec<String>> {
        let index: HashMap<&str, usize> = self
            .nodes
            .keys()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let mut indegree = vec![0usize; self.nodes.len()];
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        let mut seen = std::collections::HashSet::new();
        for e in &self.edges {
            let (Some(&s), Some(&d)) = (
                index.get(e.source_node.as_str()),
                index.get(e.destination_node.as_str()),
            ) else {
                continue;
            };
            if seen.insert((s, d)) {
                indegree[d] += 1;
                children[s].push(d);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> = (0..self.nodes.len())
            .filter(|&i| indegree[i] == 0)
            .collect();
        let keys: Vec<&String> = self.nodes.keys().collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(i) = ready.pop_first() {
            order.push(keys[i].clone());
            for &c in &children[i] {
                indegree[c] -= 1;
                if indegree[c] == 0 {
                    ready.insert(c);
                }
            }
        }
        (order.len() == self.nodes.len()).then_some(order)
    }
}

/// Parses one node against its type's schema.
fn parse_node(key: &str, node: &Value, issues: &mut Vec<GraphIssue>) -> Option<Value> {
    let base = || vec![json!("nodes"), json!(key)];
    let Value::Object(fields) = node else {
        issues.push(GraphIssue {
            loc: base(),
            kind: "model_attributes_type",
            msg: "Input should be a valid dictionary or object to extract fields from".into(),
            input: node.clone(),
        });
        return None;
    };
    let Some(type_name) = fields.get("type").and_then(Value::as_str) else {
        issues.push(GraphIssue {
            loc: base(),
            kind: "union_tag_not_found",
            msg: "Unable to extract tag using discriminator 'type'".into(),
            input: node.clone(),
        });
        return None;
    };
    let Some(spec) = find(type_name) else {
        let expected: Vec<String> = crate::spec::catalogue()
            .keys()
            .map(|k| format!("'{k}'"))
            .collect();
        issues.push(GraphIssue {
            loc: base(),
            kind: "union_tag_invalid",
            msg: format!(
                "Input tag '{type_name}' found using 'type' does not match any of the expected tags: {}",
                expected.join(", ")
            ),
            input: node.clone(),
        });
        return None;
    };
    let mut loc = base();
    loc.push(json!(type_name));
    let before = issues.len();
    let mut out = Map::new();
    let id = match fields.get("id") {
        None | Some(Value::Null) => json!(key),
        Some(Value::String(s)) => json!(s),
        Some(Value::Number(n)) => json!(n.to_string()),
        Some(other) => {
            let mut l = loc.clone();
            l.push(json!("id"));
            issues.push(GraphIssue {
                loc: l,
                kind: "string_type",
                msg: "Input should be a valid string".into(),
                input: other.clone(),
            });
            Value::Null
        }
    };
    out.insert("id".into(), id);
    let mut bool_field = |name: &str, default: bool, out: &mut Map<String, Value>| {
        let value = fields.get(name).cloned().unwrap_or(json!(default));
        match crate::field::check_value(&Ty::Bool, &value) {
            Ok(v) => {
                out.insert(name.into(), v);
            }
            Err(e) => {
                let mut l = loc.clone();
                l.push(json!(name));
                issues.push(GraphIssue {
                    loc: l,
                    kind: e.kind,
                    msg: e.msg,
                    input: value,
                });
            }
        }
    };
    bool_field("is_intermediate", false, &mut out);
    bool_field("use_cache", spec.use_cache, &mut out);
    for input in &spec.inputs {
        match fields.get(input.name) {
            Some(value) => match input.check(value) {
                Ok(v) => {
                    out.insert(input.name.into(), v);
                }
                Err(e) => {
                    let mut l = loc.clone();
                    l.push(json!(input.name));
                    l.extend(e.loc);
                    issues.push(GraphIssue {
                        loc: l,
                        kind: e.kind,
                        msg: e.msg,
                        input: value.clone(),
                    });
                }
            },
            None => {
                if let Some(default) = &input.default {
                    out.insert(input.name.into(), default.clone());
                }
            }
        }
    }
    if spec.keeps_extra_keys {
        for (k, v) in fields {
            if !out.contains_key(k) && k != "type" {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out.insert("type".into(), json!(type_name));
    (issues.len() == before).then_some(Value::Object(out))
}

fn parse_edge(i: usize, edge: &Value, issues: &mut Vec<GraphIssue>) -> Option<Edge> {
    let mut parts = Vec::new();
    for end in ["source", "destination"] {
        let mut pair = Vec::new();
        for key in ["node_id", "field"] {
            match edge.get(end).and_then(|e| e.get(key)) {
                Some(Value::String(s)) => pair.push(s.clone()),
                found => {
                    let missing = found.is_none();
                    issues.push(GraphIssue {
                        loc: vec![json!("edges"), json!(i), json!(end), json!(key)],
                        kind: if missing { "missing" } else { "string_type" },
                        msg: if missing {
                            "Field required".into()
                        } else {
                            "Input should be a valid string".into()
                        },
                        input: found
                            .cloned()
                            .unwrap_or_else(|| edge.get(end).cloned().unwrap_or(edge.clone())),
                    });
                }
            }
        }
        parts.push(pair);
    }
    match parts.as_slice() {
        [s, d] if s.len() == 2 && d.len() == 2 => Some(Edge {
            source_node: s[0].clone(),
            source_field: s[1].clone(),
            destination_node: d[0].clone(),
            destination_field: d[1].clone(),
        }),
        _ => None,
    }
}

/// Parses and validates a graph: node schemas, then rules 1–8 of generation.md §4.
pub fn validate_graph(graph: &Value) -> Result<Graph, Vec<GraphIssue>> {
    let Value::Object(map) = graph else {
        return Err(vec![GraphIssue {
            loc: Vec::new(),
            kind: "model_type",
            msg: "Input should be a valid dictionary or instance of Graph".into(),
            input: graph.clone(),
        }]);
    };
    let mut issues = Vec::new();
    let id = match map.get("id") {
        Some(Value::String(s)) => s.clone(),
        _ => uuid::Uuid::new_v4().to_string(),
    };
    let empty = Map::new();
    let nodes_in = match map.get("nodes") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(n)) => n,
        Some(other) => {
            return Err(vec![GraphIssue {
                loc: vec![json!("nodes")],
                kind: "dict_type",
                msg: "Input should be a valid dictionary".into(),
                input: other.clone(),
            }])
        }
    };
    let no_edges = Vec::new();
    let edges_in = match map.get("edges") {
        None | Some(Value::Null) => &no_edges,
        Some(Value::Array(e)) => e,
        Some(other) => {
            return Err(vec![GraphIssue {
                loc: vec![json!("edges")],
                kind: "list_type",
                msg: "Input should be a valid list".into(),
                input: other.clone(),
            }])
        }
    };
    let mut nodes = Map::new();
    for (key, node) in nodes_in {
        if let Some(parsed) = parse_node(key, node, &mut issues) {
            nodes.insert(key.clone(), parsed);
        }
    }
    let edges: Vec<Edge> = edges_in
        .iter()
        .enumerate()
        .filter_map(|(i, e)| parse_edge(i, e, &mut issues))
        .collect();
    if !issues.is_empty() {
        return Err(issues);
    }
    let graph_out = Graph { id, nodes, edges };
    check_rules(&graph_out).map_err(|msg| vec![GraphIssue::graph(msg, graph)])?;
    Ok(graph_out)
}

/// The declared type of an output field, with `iterate`/`collect` left open (`Any`).
fn output_type(graph: &Graph, node: &str, field: &str) -> Option<Ty> {
    graph.spec(node)?.output_field(field).cloned()
}

fn input_type(graph: &Graph, node: &str, field: &str) -> Option<Ty> {
    graph.spec(node)?.input(field).map(|i| i.ty.clone())
}

fn type_of(graph: &Graph, node: &str) -> &'static str {
    graph.spec(node).map_or("", |s| s.type_name)
}

fn check_rules(graph: &Graph) -> Result<(), String> {
    // 1. Keys and ids agree (duplicate keys cannot survive JSON parsing into a map).
    for (key, node) in &graph.nodes {
        let id = node.get("id").and_then(Value::as_str).unwrap_or_default();
        if id != key {
            return Err(format!("Node ids must match, got {key} and {id}"));
        }
    }
    // 3. Edge ends exist.
    for edge in &graph.edges {
        if !graph.nodes.contains_key(&edge.source_node) {
            return Err(format!(
                "Edge source node {} does not exist in the graph",
                edge.source_node
            ));
        }
        if !graph.nodes.contains_key(&edge.destination_node) {
            return Err(format!(
                "Edge destination node {} does not exist in the graph",
                edge.destination_node
            ));
        }
        if output_type(graph, &edge.source_node, &edge.source_field).is_none() {
            return Err(format!(
                "Edge source field {} does not exist in node {}",
                edge.source_field, edge.source_node
            ));
        }
        if input_type(graph, &edge.destination_node, &edge.destination_field).is_none() {
            return Err(format!(
                "Edge destination field {} does not exist in node {}",
                edge.destination_field, edge.destination_node
            ));
        }
    }
    // 4. Acyclic.
    if graph.topological_order().is_none() {
        return Err("Graph contains cycles".into());
    }
    // 5. Types.
    for edge in &graph.edges {
        let from = output_type(graph, &edge.source_node, &edge.source_field).unwrap_or(Ty::Any);
        let to =
            input_type(graph, &edge.destination_node, &edge.destination_field).unwrap_or(Ty::Any);
        if !compatible(&from, &to) {
            return Err(format!(
                "Edge source and target types do not match ({edge})"
            ));
        }
    }
    // 6. One edge per input, except a collector's items.
    let mut seen: BTreeMap<(&str, &str), &Edge> = BTreeMap::new();
    for edge in &graph.edges {
        let key = (
            edge.destination_node.as_str(),
            edge.destination_field.as_str(),
        );
        let is_collect_item =
            type_of(graph, &edge.destination_node) == "collect" && edge.destination_field == "item";
        if !is_collect_item && seen.insert(key, edge).is_some() {
            return Err(format!(
                "Field {} of node {} has more than one incoming edge ({edge})",
                edge.destination_field, edge.destination_node
            ));
        }
    }
    // 7 and 8. Iterators and collectors.
    for id in graph.nodes.keys() {
        match type_of(graph, id) {
            "iterate" => {
                if let Some(err) = iterator_error(graph, id) {
                    return Err(format!("Invalid iterator node ({id}): {err}"));
                }
            }
            "collect" => {
                if let Some(err) = collector_error(graph, id) {
                    return Err(format!("Invalid collector node ({id}): {err}"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The type an output really carries: a collector's list of its items' type, an iterator's
/// element type.
fn resolved_output(graph: &Graph, node: &str, field: &str, depth: usize) -> Ty {
    if depth > 64 {
        return Ty::Any;
    }
    match (type_of(graph, node), field) {
        ("collect", "collection") => {
            Ty::list(collector_root(graph, node, depth + 1).unwrap_or(Ty::Any))
        }
        ("iterate", "item") => graph
            .incoming(node)
            .find(|e| e.destination_field == "collection")
            .and_then(|e| {
                resolved_output(graph, &e.source_node, &e.source_field, depth + 1)
                    .element()
                    .cloned()
            })
            .unwrap_or(Ty::Any),
        _ => output_type(graph, node, field).unwrap_or(Ty::Any),
    }
}

fn flatten(ty: Ty, into: &mut Vec<Ty>) {
    match ty {
        Ty::Union(members) => members.into_iter().for_each(|m| flatten(m, into)),
        other => {
            if !into.contains(&other) {
                into.push(other);
            }
        }
    }
}

/// The single element type a collector gathers; `Some(Any)` when it cannot be narrowed,
/// `None` when it has no inputs; `Err` text when the types disagree.
fn collector_types(graph: &Graph, node: &str, depth: usize) -> Vec<Ty> {
    let mut types = Vec::new();
    for edge in graph.incoming(node) {
        let ty = resolved_output(graph, &edge.source_node, &edge.source_field, depth + 1);
        match edge.destination_field.as_str() {
            "item" => flatten(ty, &mut types),
            "collection" => {
                if let Some(el) = ty.element() {
                    flatten(el.clone(), &mut types);
                } else if ty == Ty::Any {
                    flatten(Ty::Any, &mut types);
                }
            }
            _ => {}
        }
    }
    types
}

fn collector_root(graph: &Graph, node: &str, depth: usize) -> Option<Ty> {
    let types = collector_types(graph, node, depth);
    let concrete: Vec<&Ty> = types.iter().filter(|t| **t != Ty::Any).collect();
    match concrete.as_slice() {
        [] if types.contains(&Ty::Any) => Some(Ty::Any),
        [] => None,
        [one] => Some((*one).clone()),
        _ => Some(Ty::Any),
    }
}

fn collector_error(graph: &Graph, node: &str) -> Option<&'static str> {
    let inputs: Vec<&Edge> = graph.incoming(node).collect();
    if inputs.is_empty() {
        return Some("Collector must have at least one item or collection input edge");
    }
    for edge in inputs
        .iter()
        .filter(|e| e.destination_field == "collection")
    {
        let ty = resolved_output(graph, &edge.source_node, &edge.source_field, 0);
        if !(ty.is_list() || ty == Ty::Any) {
            return Some("Collector collection input must be a collection");
        }
    }
    let types = collector_types(graph, node, 0);
    let concrete: Vec<&Ty> = types.iter().filter(|t| **t != Ty::Any).collect();
    if concrete.len() > 1 {
        return Some("Collector input collection items must be of a single type");
    }
    let root = concrete.first().map(|t| (*t).clone());
    for edge in graph
        .edges
        .iter()
        .filter(|e| e.source_node == node && e.source_field == "collection")
    {
        let to =
            input_type(graph, &edge.destination_node, &edge.destination_field).unwrap_or(Ty::Any);
        if !(to.is_list() || to == Ty::Any) {
            return Some("Collector output must connect to a collection input");
        }
        let accepts = match (&root, to.element()) {
            (_, None) => true,
            (Some(root), Some(el)) => compatible(root, el),
            (None, Some(el)) => *el == Ty::Any,
        };
        if !accepts {
            return Some(
                "Collector outputs must connect to a collection input with a matching type",
            );
        }
    }
    None
}

fn iterator_error(graph: &Graph, node: &str) -> Option<&'static str> {
    let inputs: Vec<&Edge> = graph
        .incoming(node)
        .filter(|e| e.destination_field == "collection")
        .collect();
    let input = match inputs.as_slice() {
        [] => return Some("Iterator must have a collection input edge"),
        [one] => *one,
        _ => return Some("Iterator may only have one input edge"),
    };
    let in_ty = resolved_output(graph, &input.source_node, &input.source_field, 0);
    if !in_ty.is_list() && in_ty != Ty::Any {
        return Some("Iterator input must be a collection");
    }
    let element = in_ty.element().cloned().unwrap_or(Ty::Any);
    let consumers: Vec<Ty> = graph
        .edges
        .iter()
        .filter(|e| e.source_node == node && e.source_field == "item")
        .filter_map(|e| input_type(graph, &e.destination_node, &e.destination_field))
        .collect();
    if !consumers.iter().all(|t| compatible(&element, t)) {
        return Some("Iterator outputs must connect to an input with a matching type");
    }
    if type_of(graph, &input.source_node) == "collect" {
        match collector_root(graph, &input.source_node, 0) {
            None => {
                return Some(
                    "Iterator input collector must have at least one item or collection input edge",
                )
            }
            Some(root) if !consumers.iter().all(|t| compatible(&root, t)) => {
                return Some("Iterator collection type must match all iterator output types")
            }
            _ => {}
        }
    }
    None
}
