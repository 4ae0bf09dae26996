//! The CRD YAML committed in `crds/` must be exactly what the Rust types generate.

#[test]
fn committed_crd_yaml_matches_the_types() {
    let crate_dir = tally_crds::crate_dir();
    let mut stale = Vec::new();
    for (name, expected) in tally_crds::crd_files() {
        let committed = std::fs::read_to_string(crate_dir.join(name)).unwrap_or_default();
        if committed != expected {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "CRD YAML out of date: {stale:?}; run `make crds` and commit the result"
    );
}
