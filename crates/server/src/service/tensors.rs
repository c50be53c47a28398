//! Heavy intermediate values of generation (latents, noise, conditioning), kept by the server
//! and passed between nodes by name (generation.md §1). Bounded: the oldest entries are
//! dropped once more than [`CAPACITY`] are held, which is far more than one session uses.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

const CAPACITY: usize = 256;

/// A float tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Latents {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What a name refers to.
#[derive(Clone)]
pub enum Stored {
    Latents(Arc<Latents>),
    /// Engine-specific values (text conditioning): the engine adapter downcasts them.
    Opaque(Arc<dyn std::any::Any + Send + Sync>),
}

#[derive(Default)]
struct Inner {
    values: HashMap<String, Stored>,
    order: VecDeque<String>,
}

/// Shared between the worker's executor thread and the rest of the server.
#[derive(Clone, Default)]
pub struct TensorStore(Arc<Mutex<Inner>>);

impl std::fmt::Debug for TensorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TensorStore")
    }
}

impl TensorStore {
    /// Stores a value under a fresh name (`<prefix>_<uuid>`, like the reference's names).
    pub fn put(&self, prefix: &str, value: Stored) -> String {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4());
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        inner.values.insert(name.clone(), value);
        inner.order.push_back(name.clone());
        while inner.order.len() > CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.values.remove(&old);
            }
        }
        name
    }

    pub fn get(&self, name: &str) -> Option<Stored> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values
            .get(name)
            .cloned()
    }

    pub fn latents(&self, name: &str) -> Option<Arc<Latents>> {
        match self.get(name)? {
            Stored::Latents(l) => Some(l),
            Stored::Opaque(_) => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fresh_and_old_entries_go() {
        let store = TensorStore::default();
        let first = store.put(
            "noise",
            Stored::Latents(Arc::new(Latents {
                shape: vec![1],
                data: vec![1.0],
            })),
        );
        assert!(first.starts_with("noise_"));
        assert_eq!(store.latents(&first).expect("kept").data, vec![1.0]);
        for _ in 0..CAPACITY {
            store.put("x", Stored::Opaque(Arc::new(0u8)));
        }
        assert!(store.get(&first).is_none(), "the oldest went first");
    }
}
