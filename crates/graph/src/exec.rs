//! The execution state of one session (generation.md §3.4 and §5).
//!
//! Source nodes are prepared in topological order, and every prepared copy of one source node
//! runs before the next source node is prepared, so a node's parents have always finished when
//! it is prepared (a valid topological order, which §5.1 allows). Iteration is tracked as a
//! context: the list of `(iterate node, index)` pairs a copy belongs to. A node gets one copy
//! per compatible combination of its parents' contexts; an `iterate` adds one level per
//! element; a `collect` closes the innermost level and gathers what was inside it.

use crate::context::NodeError;
use crate::spec::{Inputs, NodeSpec};
use crate::validate::Graph;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};

type Ctx = Vec<(String, usize)>;

#[derive(Debug, Clone)]
struct Instance {
    exec_id: String,
    ctx: Ctx,
}

/// Where one input of a prepared node comes from.
#[derive(Debug, Clone)]
struct Binding {
    field: String,
    parent: String,
    parent_field: String,
    /// Sort key for a collector's items: the producer's iteration path, then edge order.
    order: (Vec<usize>, usize),
}

#[derive(Debug, Clone)]
struct Planned {
    source_id: String,
    bindings: Vec<Binding>,
}

/// A node ready to run: its execution id, source id, the node JSON with edge values copied in,
/// and its checked inputs (or the error that stops it before it runs).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub exec_id: String,
    pub source_id: String,
    pub spec: &'static NodeSpec,
    pub node: Value,
    pub inputs: Result<Inputs, NodeError>,
}

#[derive(Debug, Clone)]
pub struct Session {
    id: String,
    graph: Graph,
    order: Vec<String>,
    next_source: usize,
    instances: HashMap<String, Vec<Instance>>,
    queue: VecDeque<String>,
    planned: HashMap<String, Planned>,
    exec_graph_id: String,
    exec_nodes: Map<String, Value>,
    exec_edges: Vec<Value>,
    executed: Vec<String>,
    executed_history: Vec<String>,
    results: Map<String, Value>,
    errors: Map<String, Value>,
    prepared_source_mapping: Map<String, Value>,
    source_prepared_mapping: Map<String, Value>,
    prepared_iteration_paths: Map<String, Value>,
    indegree: Map<String, Value>,
    failed: bool,
}

fn agree(a: &Ctx, b: &Ctx) -> bool {
    a.iter()
        .all(|(k, i)| b.iter().all(|(k2, j)| k != k2 || i == j))
}

fn merge(a: &Ctx, b: &Ctx) -> Ctx {
    let mut out = a.clone();
    for pair in b {
        if !out.iter().any(|(k, _)| *k == pair.0) {
            out.push(pair.clone());
        }
    }
    out
}

fn outer(ctx: &Ctx) -> Ctx {
    let mut c = ctx.clone();
    c.pop();
    c
}

impl Session {
    /// A fresh session for a validated graph (nothing prepared yet).
    pub fn new(id: &str, graph: Graph) -> Self {
        let order = graph.topological_order().unwrap_or_default();
        Self {
            id: id.to_owned(),
            graph,
            order,
            next_source: 0,
            instances: HashMap::new(),
            queue: VecDeque::new(),
            planned: HashMap::new(),
            exec_graph_id: uuid::Uuid::new_v4().to_string(),
            exec_nodes: Map::new(),
            exec_edges: Vec::new(),
            executed: Vec::new(),
            executed_history: Vec::new(),
            results: Map::new(),
            errors: Map::new(),
            prepared_source_mapping: Map::new(),
            source_prepared_mapping: Map::new(),
            prepared_iteration_paths: Map::new(),
            indegree: Map::new(),
            failed: false,
        }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Every source node ran, or one failed.
    pub fn is_complete(&self) -> bool {
        self.failed || (self.queue.is_empty() && self.next_source >= self.order.len())
    }

    /// The next node to run, or `None` when the session is complete.
    pub fn next_node(&mut self) -> Option<Prepared> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(exec_id) = self.queue.pop_front() {
                return Some(self.fill(&exec_id));
            }
            let source = self.order.get(self.next_source)?.clone();
            self.next_source += 1;
            self.prepare(&source);
        }
    }

    /// Records a node's output (`type` is added from its spec).
    pub fn complete(&mut self, exec_id: &str, mut output: Map<String, Value>) {
        let Some(planned) = self.planned.get(exec_id) else {
            return;
        };
        let source = planned.source_id.clone();
        if let Some(spec) = self.graph.spec(&source) {
            output.insert("type".into(), json!(spec.output.type_name));
        }
        self.results
            .insert(exec_id.to_owned(), Value::Object(output));
        self.executed.push(exec_id.to_owned());
        let all_done = self
            .instances
            .get(&source)
            .is_some_and(|v| v.iter().all(|i| self.results.contains_key(&i.exec_id)));
        if all_done
            && !self
                .queue
                .iter()
                .any(|q| self.planned[q].source_id == source)
        {
            self.executed.push(source.clone());
            self.executed_history.push(source);
        }
    }

    /// Records a node's failure; the session is then complete.
    pub fn fail(&mut self, exec_id: &str, error: &NodeError) {
        self.errors
            .insert(exec_id.to_owned(), json!(error.to_string()));
        self.failed = true;
    }

    /// The output of the (first) copy of a source node, if it ran.
    pub fn result_of(&self, source_id: &str) -> Option<&Value> {
        let first = self.instances.get(source_id)?.first()?;
        self.results.get(&first.exec_id)
    }

    /// The output of one execution node, with its `type`.
    pub fn result_of_exec(&self, exec_id: &str) -> Option<&Value> {
        self.results.get(exec_id)
    }

    /// The session JSON (generation.md §3.4).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "graph": self.graph.to_json(),
            "execution_graph": {"id": self.exec_graph_id, "nodes": self.exec_nodes, "edges": self.exec_edges},
            "executed": self.executed,
            "executed_history": self.executed_history,
            "results": self.results,
            "errors": self.errors,
            "prepared_source_mapping": self.prepared_source_mapping,
            "source_prepared_mapping": self.source_prepared_mapping,
            "prepared_iteration_paths": self.prepared_iteration_paths,
            "indegree": self.indegree,
            "ready_order": [],
            "workflow_call_stack": [],
            "workflow_call_history": [],
            "workflow_call_parent": null,
            "waiting_workflow_call": null,
            "waiting_workflow_call_execution": null,
            "waiting_workflow_call_child_session": null,
            "max_workflow_call_depth": 4,
        })
    }

    /// Every combination of the parents' contexts that agree with each other.
    fn join(&self, parents: &[&str]) -> Vec<Ctx> {
        let mut combos: Vec<Ctx> = vec![Vec::new()];
        for parent in parents {
            let empty = Vec::new();
            let instances = self.instances.get(*parent).unwrap_or(&empty);
            let mut next: Vec<Ctx> = Vec::new();
            for combo in &combos {
                for inst in instances {
                    if agree(combo, &inst.ctx) {
                        let merged = merge(combo, &inst.ctx);
                        if !next.contains(&merged) {
                            next.push(merged);
                        }
                    }
                }
            }
            combos = next;
        }
        combos
    }

    /// The copy of `parent` that belongs to context `ctx`.
    fn parent_in(&self, parent: &str, ctx: &Ctx) -> Option<&Instance> {
        self.instances
            .get(parent)?
            .iter()
            .find(|i| agree(&i.ctx, ctx))
    }

    fn parents(&self, node: &str, field: Option<&str>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in self.graph.incoming(node) {
            if field.is_none_or(|f| e.destination_field == f) && !out.contains(&e.source_node) {
                out.push(e.source_node.clone());
            }
        }
        out
    }

    fn add_instance(
        &mut self,
        source: &str,
        ctx: Ctx,
        bindings: Vec<Binding>,
        set: Map<String, Value>,
    ) {
        let exec_id = uuid::Uuid::new_v4().to_string();
        let mut node = self.graph.nodes.get(source).cloned().unwrap_or(json!({}));
        node["id"] = json!(exec_id);
        for (k, v) in set {
            node[k] = v;
        }
        for b in &bindings {
            self.exec_edges.push(json!({
                "source": {"node_id": b.parent, "field": b.parent_field},
                "destination": {"node_id": exec_id, "field": b.field},
            }));
        }
        self.exec_nodes.insert(exec_id.clone(), node);
        self.prepared_source_mapping
            .insert(exec_id.clone(), json!(source));
        if let Value::Array(list) = self
            .source_prepared_mapping
            .entry(source.to_owned())
            .or_insert_with(|| json!([]))
        {
            list.push(json!(exec_id));
        }
        self.prepared_iteration_paths.insert(
            exec_id.clone(),
            json!(ctx.iter().map(|(_, i)| *i).collect::<Vec<_>>()),
        );
        self.indegree.insert(exec_id.clone(), json!(0));
        self.planned.insert(
            exec_id.clone(),
            Planned {
                source_id: source.to_owned(),
                bindings,
            },
        );
        self.instances
            .entry(source.to_owned())
            .or_default()
            .push(Instance {
                exec_id: exec_id.clone(),
                ctx,
            });
        self.queue.push_back(exec_id);
    }

    /// The bindings of a plain node's copy in context `ctx`.
    fn bind(&self, node: &str, ctx: &Ctx, skip_field: Option<&str>) -> Vec<Binding> {
        let mut out = Vec::new();
        for (idx, e) in self.graph.edges.iter().enumerate() {
            if e.destination_node != node || skip_field == Some(e.destination_field.as_str()) {
                continue;
            }
            if let Some(inst) = self.parent_in(&e.source_node, ctx) {
                out.push(Binding {
                    field: e.destination_field.clone(),
                    parent: inst.exec_id.clone(),
                    parent_field: e.source_field.clone(),
                    order: (inst.ctx.iter().map(|(_, i)| *i).collect(), idx),
                });
            }
        }
        out
    }

    fn value_of(&self, exec_id: &str, field: &str) -> Value {
        self.results
            .get(exec_id)
            .and_then(|r| r.get(field))
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn prepare(&mut self, source: &str) {
        let type_name = self.graph.spec(source).map_or("", |s| s.type_name);
        match type_name {
            "iterate" => {
                let parents = self.parents(source, None);
                let refs: Vec<&str> = parents.iter().map(String::as_str).collect();
                for combo in self.join(&refs) {
                    let bindings = self.bind(source, &combo, None);
                    let collection = bindings
                        .iter()
                        .find(|b| b.field == "collection")
                        .map(|b| self.value_of(&b.parent, &b.parent_field))
                        .or_else(|| self.graph.nodes[source].get("collection").cloned())
                        .and_then(|v| v.as_array().cloned())
                        .unwrap_or_default();
                    for index in 0..collection.len() {
                        let mut ctx = combo.clone();
                        ctx.push((source.to_owned(), index));
                        let mut set = Map::new();
                        set.insert("index".into(), json!(index));
                        self.add_instance(source, ctx, bindings.clone(), set);
                    }
                }
            }
            "collect" => {
                let item_parents = self.parents(source, Some("item"));
                let coll_parents = self.parents(source, Some("collection"));
                let refs: Vec<&str> = coll_parents.iter().map(String::as_str).collect();
                let mut groups: Vec<Ctx> = Vec::new();
                for p in &item_parents {
                    for inst in self.instances.get(p).into_iter().flatten() {
                        let o = outer(&inst.ctx);
                        if !groups.contains(&o) {
                            groups.push(o);
                        }
                    }
                }
                if item_parents.is_empty() {
                    groups = self.join(&refs);
                }
                for group in groups {
                    let mut bindings = self.bind(source, &group, Some("item"));
                    let mut items = Vec::new();
                    for (idx, e) in self.graph.edges.iter().enumerate() {
                        if e.destination_node != source || e.destination_field != "item" {
                            continue;
                        }
                        for inst in self.instances.get(&e.source_node).into_iter().flatten() {
                            if agree(&outer(&inst.ctx), &group) {
                                items.push(Binding {
                                    field: "item".into(),
                                    parent: inst.exec_id.clone(),
                                    parent_field: e.source_field.clone(),
                                    order: (inst.ctx.iter().map(|(_, i)| *i).collect(), idx),
                                });
                            }
                        }
                    }
                    items.sort_by(|a, b| a.order.cmp(&b.order));
                    bindings.extend(items);
                    self.add_instance(source, group, bindings, Map::new());
                }
            }
            _ => {
                let parents = self.parents(source, None);
                let refs: Vec<&str> = parents.iter().map(String::as_str).collect();
                for combo in self.join(&refs) {
                    let bindings = self.bind(source, &combo, None);
                    self.add_instance(source, combo, bindings, Map::new());
                }
            }
        }
    }

    /// Copies edge values into the prepared node and checks its inputs.
    fn fill(&mut self, exec_id: &str) -> Prepared {
        let planned = self.planned[exec_id].clone();
        let spec = self
            .graph
            .spec(&planned.source_id)
            .unwrap_or_else(|| crate::nodes::fallback());
        let mut node = self.exec_nodes.get(exec_id).cloned().unwrap_or(json!({}));
        if spec.type_name == "collect" {
            let mut collection: Vec<Value> = Vec::new();
            let from_edges: Vec<&Binding> = planned
                .bindings
                .iter()
                .filter(|b| b.field == "collection")
                .collect();
            if from_edges.is_empty() {
                if let Some(Value::Array(own)) = node.get("collection") {
                    collection.extend(own.iter().cloned());
                }
            }
            for b in from_edges {
                if let Value::Array(list) = self.value_of(&b.parent, &b.parent_field) {
                    collection.extend(list);
                }
            }
            for b in planned.bindings.iter().filter(|b| b.field == "item") {
                collection.push(self.value_of(&b.parent, &b.parent_field));
            }
            node["collection"] = Value::Array(collection);
            node["item"] = Value::Null;
        } else {
            for b in &planned.bindings {
                node[&b.field] = self.value_of(&b.parent, &b.parent_field);
            }
        }
        self.exec_nodes.insert(exec_id.to_owned(), node.clone());
        let inputs = check_inputs(spec, exec_id, &node, &planned);
        Prepared {
            exec_id: exec_id.to_owned(),
            source_id: planned.source_id,
            spec,
            node,
            inputs,
        }
    }
}

/// The run-time checks of §5.4: required inputs present, values valid after edges filled in.
fn check_inputs(
    spec: &NodeSpec,
    exec_id: &str,
    node: &Value,
    planned: &Planned,
) -> Result<Inputs, NodeError> {
    let mut values = Map::new();
    for input in &spec.inputs {
        let value = node.get(input.name).cloned().unwrap_or(Value::Null);
        let fed = planned.bindings.iter().any(|b| b.field == input.name);
        if value.is_null() && input.required() {
            return Err(match input.kind {
                crate::spec::InputKind::Connection => NodeError::new(
                    "RequiredConnectionException",
                    format!(
                        "Node {} missing connections for field {}",
                        spec.type_name, input.name
                    ),
                ),
                _ => NodeError::new(
                    "MissingInputException",
                    format!(
                        "Node {} missing value or connection for field {}",
                        spec.type_name, input.name
                    ),
                ),
            });
        }
        match input.check(&value) {
            Ok(v) => {
                values.insert(input.name.into(), v);
            }
            Err(e) => {
                return Err(NodeError::new(
                    "NodeInputError",
                    format!(
                        "Node {} has invalid {}input for {}: {}",
                        planned.source_id,
                        if fed { "incoming " } else { "" },
                        input.name,
                        e.msg
                    ),
                ))
            }
        }
    }
    if spec.keeps_extra_keys {
        if let Value::Object(map) = node {
            for (k, v) in map {
                if !values.contains_key(k)
                    && !["id", "type", "is_intermediate", "use_cache"].contains(&k.as_str())
                {
                    values.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Ok(Inputs {
        id: exec_id.to_owned(),
        is_intermediate: node
            .get("is_intermediate")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        values,
    })
}
