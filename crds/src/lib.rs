//! Tally's Kubernetes API: the `AnalyticsPipeline` and `AnalyticsSite` custom resources
//! (group `tally.dev`, version `v1alpha1`).
//!
//! These types are the single source of truth for the resources' shape: the CRD YAML in this
//! directory is generated from them (`cargo run -p tally-crds --bin crdgen`), the operator
//! reconciles them, and the collector and processor read the same YAML from files when they
//! run without a cluster. Field doc comments are the user documentation that
//! `kubectl explain` shows.

// Several `printcolumn(...)` arguments of the kube derive repeat `type_ = ...`, which this
// lint takes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

mod access;
mod duration;
mod goal;
mod pipeline;
mod site;

pub use access::*;
pub use duration::{DurationError, parse_duration};
pub use goal::*;
pub use pipeline::*;
pub use site::*;

use kube::CustomResourceExt;

/// The API group of every Tally resource.
pub const GROUP: &str = "tally.dev";
/// The API version these types describe.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in YAML.
pub const API_VERSION: &str = "tally.dev/v1alpha1";

/// This crate's source directory, where the CRD YAML is committed. Read at run time when
/// cargo provides it (`cargo run`, `cargo test`), so a binary built from another checkout
/// that shares the target directory still looks at this one.
pub fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}

/// Every CRD of this crate, rendered as YAML documents in a stable order, with the file
/// name each one is committed under in `crds/`.
pub fn crd_files() -> Vec<(&'static str, String)> {
    vec![
        (
            "analyticspipelines.tally.dev.yaml",
            render(&AnalyticsPipeline::crd()),
        ),
        (
            "analyticssites.tally.dev.yaml",
            render(&AnalyticsSite::crd()),
        ),
    ]
}

fn render(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let mut value = serde_json::to_value(crd).expect("a CRD always serializes");
    unwrap_descriptions(&mut value);
    let yaml = serde_yaml::to_string(&value).expect("a CRD always serializes to YAML");
    format!("# Generated from the Rust types in crds/src by `make crds`; do not edit.\n---\n{yaml}")
}

/// Doc comments are wrapped at 100 columns; `kubectl explain` wraps again. Join the lines of
/// each paragraph so that descriptions read as prose, keeping blank-line paragraph breaks.
fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| paragraph.split('\n').collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}
