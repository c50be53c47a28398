//! String manipulation.

use crate::spec::NodeSpec;

pub fn specs() -> Vec<NodeSpec> {
    Vec::new()
}
