//! What a site counts as a success: its goals, and the experiments that compare variants by
//! one of them. The query API answers `event:goal` and `conversion_rate` from the goals, and
//! `/v1/experiments` from the experiments.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A goal's or a variant's name: printable, at most 120 characters.
pub const NAME_PATTERN: &str = r"^[^\x00-\x1f]+$";

/// An experiment's id, as events carry it in `properties.experiment_id`.
pub const EXPERIMENT_ID_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$";

/// An experiment's `start` or `end`: a date, or an RFC 3339 date-time.
pub const DATE_OR_TIME_PATTERN: &str = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))?$";

/// A conversion the site counts: events of a type (with properties, optionally), or page
/// views of a path pattern.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.eventType) != has(self.pagePath)").message("a goal has exactly one of eventType and pagePath"))]
#[x_kube(validation = Rule::new("!has(self.properties) || has(self.eventType)").message("properties go with eventType"))]
pub struct Goal {
    /// The goal's name, as the query API's `event:goal` dimension and filters show it;
    /// unique within the site.
    #[schemars(length(min = 1, max = 120), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Events of this type complete the goal (`signup`, `purchase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub event_type: Option<String>,
    /// Page views whose path matches this pattern complete the goal: `*` stands for any
    /// characters but `/`, `**` for any characters (`/blog/*`, `/docs/**`, `/pricing`).
    /// The whole path must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub page_path: Option<String>,
    /// With `eventType`: properties the event must carry, each equal to the value given
    /// (compared as text: `true`, `42` and `pro` match the JSON values true, 42 and "pro").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 10))]
    pub properties: BTreeMap<String, String>,
}

impl Goal {
    /// The regular expression (RE2 syntax) of `pagePath`, matching a whole path.
    pub fn path_regex(pattern: &str) -> String {
        let mut re = String::from("^");
        let mut rest = pattern;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("**") {
                re.push_str(".*");
                rest = after;
            } else if let Some(after) = rest.strip_prefix('*') {
                re.push_str("[^/]*");
                rest = after;
            } else {
                if "\\.+?()[]{}|^$".contains(c) {
                    re.push('\\');
                }
                re.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        re.push('$');
        re
    }
}

/// An A/B experiment: visitors see one of its variants, and the variants are compared by how
/// many of their users complete a goal.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.variants.exists(v, v.name == self.control)").message("control must name one of the variants"))]
pub struct Experiment {
    /// The id events carry in `properties.experiment_id` (or `experimentId`) to take part,
    /// with the variant they saw in `properties.variant`; unique within the site.
    #[schemars(length(min = 1, max = 63), regex(pattern = EXPERIMENT_ID_PATTERN))]
    pub id: String,
    /// What the experiment tries, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub description: Option<String>,
    /// The variants, each with its planned share of the users.
    #[schemars(length(min = 2, max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub variants: Vec<Variant>,
    /// The variant the others are compared with.
    #[schemars(length(min = 1, max = 120))]
    pub control: String,
    /// The name of the site's goal (in `goals`) that counts as a conversion.
    #[schemars(length(min = 1, max = 120))]
    pub goal: String,
    /// When it starts: a date (`2026-03-01`, the site's midnight) or an RFC 3339 date-time.
    /// The summary counts from here unless asked otherwise. Unset: from the first event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DATE_OR_TIME_PATTERN))]
    pub start: Option<String>,
    /// When it ends (a date counts whole), in the same forms. Unset: still running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DATE_OR_TIME_PATTERN))]
    pub end: Option<String>,
    /// `draft`, `running` (the default), `paused` or `completed`; for people and dashboards:
    /// events are counted whatever it says.
    #[serde(default)]
    pub status: ExperimentStatus,
}

/// One variant of an experiment.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    /// The name events carry in `properties.variant` (`A`, `B`, `control`).
    #[schemars(length(min = 1, max = 120), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Its planned share, relative to the others' weights (default 1: an even split). The
    /// summary's sample-ratio check compares the users seen with this split.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10000))]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Where an experiment stands.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum ExperimentStatus {
    Draft,
    #[default]
    Running,
    Paused,
    Completed,
}

impl ExperimentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
        }
    }
}

/// The problems of a site's goals and experiments that the schema cannot express: names
/// declared twice, an experiment's goal that is not declared, variants named twice.
pub fn goal_problems(goals: &[Goal], experiments: &[Experiment]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, goal) in goals.iter().enumerate() {
        if goals[..i].iter().any(|g| g.name == goal.name) {
            problems.push(format!(
                "spec.goals[{i}]: the name {:?} is declared twice",
                goal.name
            ));
        }
        if goal.event_type.is_some() == goal.page_path.is_some() {
            problems.push(format!(
                "spec.goals[{i}]: give exactly one of eventType and pagePath"
            ));
        }
        if !goal.properties.is_empty() && goal.event_type.is_none() {
            problems.push(format!("spec.goals[{i}]: properties go with eventType"));
        }
    }
    for (i, x) in experiments.iter().enumerate() {
        let at = format!("spec.experiments[{i}]");
        if experiments[..i].iter().any(|e| e.id == x.id) {
            problems.push(format!("{at}: the id {:?} is declared twice", x.id));
        }
        if !goals.iter().any(|g| g.name == x.goal) {
            problems.push(format!("{at}.goal: {:?} is not one of spec.goals", x.goal));
        }
        if x.variants.len() < 2 {
            problems.push(format!("{at}.variants: an experiment needs at least two"));
        }
        for (j, v) in x.variants.iter().enumerate() {
            if x.variants[..j].iter().any(|w| w.name == v.name) {
                problems.push(format!("{at}.variants[{j}]: {:?} is named twice", v.name));
            }
        }
        if !x.variants.iter().any(|v| v.name == x.control) {
            problems.push(format!(
                "{at}.control: {:?} is not one of its variants",
                x.control
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_patterns_become_whole_path_expressions() {
        assert_eq!(Goal::path_regex("/pricing"), "^/pricing$");
        assert_eq!(Goal::path_regex("/blog/*"), "^/blog/[^/]*$");
        assert_eq!(Goal::path_regex("/docs/**"), "^/docs/.*$");
        assert_eq!(Goal::path_regex("/a.b(c)?"), r"^/a\.b\(c\)\?$");
    }
}
