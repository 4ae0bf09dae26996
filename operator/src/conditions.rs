//! Status conditions: building them, and keeping `lastTransitionTime` when nothing changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition of `type_` that is `True` when `ok`.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// `new`, with each condition's transition time taken from `old` when its status did not
/// change.
pub fn carry_transition_times(old: &[Condition], mut new: Vec<Condition>) -> Vec<Condition> {
    for c in &mut new {
        if let Some(prev) = old.iter().find(|o| o.type_ == c.type_)
            && prev.status == c.status
        {
            c.last_transition_time = prev.last_transition_time.clone();
        }
    }
    new
}

/// Whether `conditions` holds `type_` with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut old = condition("Ready", true, "Ok", "fine", Some(1));
        old.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        let same = carry_transition_times(
            &[old.clone()],
            vec![condition("Ready", true, "Ok", "still fine", Some(2))],
        );
        assert_eq!(same[0].last_transition_time, old.last_transition_time);
        let flipped = carry_transition_times(
            &[old.clone()],
            vec![condition("Ready", false, "Broken", "no", Some(2))],
        );
        assert_ne!(flipped[0].last_transition_time, old.last_transition_time);
        assert!(is_true(&same, "Ready") && !is_true(&flipped, "Ready"));
    }
}
