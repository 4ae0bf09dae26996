//! `tally-operator`: the Kubernetes controller for `AnalyticsPipeline` and `AnalyticsSite`.
//! Not implemented yet; this binary only names the resources it will reconcile.

fn main() {
    eprintln!(
        "tally-operator: the controller is not implemented yet; it will reconcile {} and {} ({}/{})",
        "AnalyticsPipeline",
        "AnalyticsSite",
        tally_crds::GROUP,
        tally_crds::VERSION
    );
    std::process::exit(2);
}
