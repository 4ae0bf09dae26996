//! Writes the CRD YAML generated from the Rust types into `crds/` (and the Helm chart's copy
//! when the chart exists). Run with `make crds` after changing the types.

fn main() -> std::io::Result<()> {
    let crate_dir = tally_crds::crate_dir();
    let chart_crds = crate_dir.join("../charts/tally/crds");
    for (name, yaml) in tally_crds::crd_files() {
        std::fs::write(crate_dir.join(name), &yaml)?;
        println!("wrote crds/{name}");
        if chart_crds.is_dir() {
            std::fs::write(chart_crds.join(name), &yaml)?;
            println!("wrote charts/tally/crds/{name}");
        }
    }
    Ok(())
}
