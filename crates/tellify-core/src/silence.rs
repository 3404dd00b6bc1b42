//! Silences: mute matching alerts for a time range. Silenced alerts are still tracked; only
//! their notifications are held back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::matchers::LabelGlobs;

/// What a silence matches: each given matcher must match (globs allowed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matchers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A silence checked and ready to match.
#[derive(Debug, Clone)]
pub struct Silence {
    pub owner: String,
    pub starts_at: i64,
    pub ends_at: i64,
    rule: Option<globset::GlobMatcher>,
    key: Option<globset::GlobMatcher>,
    labels: LabelGlobs,
}

fn glob(field: &str, pattern: &str) -> Result<globset::GlobMatcher, String> {
    crate::matchers::glob(pattern).map_err(|e| format!("`{field}`: {e}"))
}

impl Silence {
    pub fn new(
        owner: &str,
        matchers: &Matchers,
        starts_at: i64,
        ends_at: i64,
    ) -> Result<Self, String> {
        if ends_at <= starts_at {
            return Err("`ends_at` must be after `starts_at`".into());
        }
        if matchers.rule.is_none() && matchers.key.is_none() && matchers.labels.is_empty() {
            return Err("`matchers`: give at least one of rule, key, labels".into());
        }
        Ok(Self {
            owner: owner.to_owned(),
            starts_at,
            ends_at,
            rule: matchers
                .rule
                .as_deref()
                .map(|p| glob("matchers.rule", p))
                .transpose()?,
            key: matchers
                .key
                .as_deref()
                .map(|p| glob("matchers.key", p))
                .transpose()?,
            labels: LabelGlobs::new(&matchers.labels)
                .map_err(|e| format!("`matchers.labels`: {e}"))?,
        })
    }

    pub fn active(&self, at: i64) -> bool {
        self.starts_at <= at && at < self.ends_at
    }

    /// Whether the silence mutes this alert at `at`. A user's silence mutes only their own
    /// alerts; an admin's mutes anyone's (`owner_is_admin`).
    pub fn mutes(
        &self,
        owner_is_admin: bool,
        alert_owner: &str,
        rule: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
        at: i64,
    ) -> bool {
        self.active(at)
            && (owner_is_admin || self.owner == alert_owner)
            && self.rule.as_ref().is_none_or(|g| g.is_match(rule))
            && self.key.as_ref().is_none_or(|g| g.is_match(key))
            && self.labels.matches(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silences_match_by_globs_within_their_time() {
        let m = Matchers {
            rule: Some("disk-*".into()),
            key: None,
            labels: [("host".to_owned(), "cad*".to_owned())].into(),
        };
        let s = Silence::new("ann", &m, 100, 200).expect("valid");
        let labels: BTreeMap<String, String> = [("host".to_owned(), "cadfs01".to_owned())].into();
        assert!(s.mutes(false, "ann", "disk-high", "k", &labels, 150));
        assert!(
            !s.mutes(false, "ann", "disk-high", "k", &labels, 200),
            "ends_at is exclusive"
        );
        assert!(!s.mutes(false, "ann", "disk-high", "k", &labels, 99));
        assert!(
            !s.mutes(false, "bob", "disk-high", "k", &labels, 150),
            "only the creator's alerts"
        );
        assert!(
            s.mutes(true, "bob", "disk-high", "k", &labels, 150),
            "an admin's silence mutes all"
        );
        assert!(!s.mutes(false, "ann", "cpu", "k", &labels, 150));
        assert!(!s.mutes(false, "ann", "disk-high", "k", &BTreeMap::new(), 150));
        assert!(Silence::new("ann", &Matchers::default(), 1, 2).is_err());
        assert!(Silence::new("ann", &m, 2, 1).is_err());
    }
}
