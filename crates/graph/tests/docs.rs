//! `docs/nodes.md` must match the catalogue. `UPDATE_DOCS=1` rewrites it.

#[test]
fn nodes_md_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/nodes.md");
    let expected = atelier_graph::markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &expected).expect("write docs/nodes.md");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == expected,
        "docs/nodes.md is out of date: run `UPDATE_DOCS=1 cargo test -p atelier-graph --test docs`"
    );
}
