//! Glob matchers shared by subscriptions and silences: names by glob, labels by glob each.

use std::collections::BTreeMap;

use globset::{Glob, GlobMatcher};

/// Compiles a glob; the error names the pattern.
pub fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("`{pattern}` is not a valid glob: {e}"))
}

/// Label matchers: every named label must be present and match its glob.
#[derive(Debug, Clone, Default)]
pub struct LabelGlobs(Vec<(String, GlobMatcher)>);

impl LabelGlobs {
    pub fn new(labels: &BTreeMap<String, String>) -> Result<Self, String> {
        labels
            .iter()
            .map(|(k, v)| glob(v).map(|g| (k.clone(), g)))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .all(|(k, g)| labels.get(k).is_some_and(|v| g.is_match(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_must_be_there_and_match() {
        let m = LabelGlobs::new(&[("host".to_owned(), "cad*".to_owned())].into()).expect("valid");
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(m.matches(&labels(&[("host", "cadfs01"), ("env", "prod")])));
        assert!(!m.matches(&labels(&[("host", "web1")])));
        assert!(!m.matches(&labels(&[("env", "prod")])));
        assert!(LabelGlobs::default().matches(&labels(&[])));
        assert!(glob("[").is_err());
    }
}
