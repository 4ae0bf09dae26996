//! `GET /v1/sites`: the sites the request's key may read, and whether it is an admin key.
//! The console asks it first: its site picker lists these, and it shows the pipeline's
//! health and the replay button to admin keys only.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use tally_contracts::access::Holder;
use tally_crds::KeyScope;
use tally_runtime::access::{Denied, grant_of};

use crate::api::ApiError;
use crate::stats::StatsState;

/// The answer of `/v1/sites`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Sites {
    /// The pipeline the sites belong to.
    pub pipeline: String,
    /// Whether the key is one of the pipeline's admin keys (it reads every site, and may
    /// see the pipeline's health and replay its dead letters).
    pub admin: bool,
    /// The sites the key may read, by `site_id`.
    pub sites: Vec<ReadableSite>,
}

/// A site the key may read, with what the console needs to ask about it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadableSite {
    #[schema(example = "shop")]
    pub site_id: String,
    /// Its host names (`spec.domains`).
    pub domains: Vec<String>,
    /// The zone its days are counted in (`spec.timeZone`, default `UTC`).
    #[schema(example = "UTC")]
    pub time_zone: String,
    /// The names of its goals (`spec.goals`).
    pub goals: Vec<String>,
    /// The ids of its experiments (`spec.experiments`).
    pub experiments: Vec<String>,
}

/// The sites the key may read: every site for an admin key, its own for a site's read key.
#[utoipa::path(get, path = "/v1/sites", tag = "sites",
    responses((status = 200, description = "The sites the key may read", body = Sites), crate::api::ErrorAnswers))]
pub async fn get_sites(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
) -> Result<Json<Sites>, ApiError> {
    let config = state.config.load();
    let grant = grant_of(config.keys(), &headers)?.ok_or_else(|| {
        Denied::MissingKey(
            "listing sites needs a read key of a site or an admin key, as Authorization: Bearer <key> or X-API-Key: <key>"
                .into(),
        )
    })?;
    if !grant.has_scope(KeyScope::Read) {
        return Err(Denied::MissingScope("read").into());
    }
    let mut sites: Vec<ReadableSite> = config
        .sites
        .iter()
        .map(|site| &site.spec)
        .filter(|spec| grant.may_read(&spec.site_id))
        .map(|spec| ReadableSite {
            site_id: spec.site_id.clone(),
            domains: spec.domains.clone(),
            time_zone: spec.time_zone.clone().unwrap_or_else(|| "UTC".into()),
            goals: spec.goals.iter().map(|g| g.name.clone()).collect(),
            experiments: spec.experiments.iter().map(|e| e.id.clone()).collect(),
        })
        .collect();
    sites.sort_by(|a, b| a.site_id.cmp(&b.site_id));
    Ok(Json(Sites {
        pipeline: config.name().to_owned(),
        admin: matches!(grant.holder, Holder::Admin),
        sites,
    }))
}
