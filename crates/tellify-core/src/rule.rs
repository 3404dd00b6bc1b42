//! Rules as users write them: the YAML/JSON document, its validation, and template instances.
//!
//! [`RuleSpec`] is the wire form (unknown fields are refused). [`RuleSpec::validate`] checks
//! what serde cannot: fields that belong to another kind, missing per-kind fields, templates
//! that do not parse. JavaScript is checked by compiling it in [`crate::eval`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alert::Severity;

/// A duration written as `10s`, `1m`, `1h30m`, `90d` (humantime), stored in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub i64);

impl Duration {
    pub fn millis(self) -> i64 {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const MAX: u128 = 100 * 365 * 24 * 3600 * 1000;
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("`{s}` is not a duration like 30s, 5m or 1h: {e}"))?;
        if d.as_millis() > MAX {
            return Err(format!("`{s}` is longer than 100 years"));
        }
        Ok(Duration(d.as_millis() as i64))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = std::time::Duration::from_millis(self.0.max(0) as u64);
        write!(f, "{}", humantime::format_duration(d))
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// What a rule does with the events its condition matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    #[default]
    Match,
    Threshold,
    Count,
    Absence,
    Script,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Match => "match",
            RuleKind::Threshold => "threshold",
            RuleKind::Count => "count",
            RuleKind::Absence => "absence",
            RuleKind::Script => "script",
        }
    }
}

/// A rule document, exactly as users write it in YAML or JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub kind: RuleKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Re-rendered each time the alert folds a new event, so it follows `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// What the alert says once the rule resolves it (a geofence's "left"); the last
    /// summary stays when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_when: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_after: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_every: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// `threshold`: how long `when` must hold before the alert fires.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<Duration>,
    /// `threshold`: how often conditions on `_topic` alone are checked (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Duration>,
    /// `count`: the sliding window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// `count`: fires when more than this many events (or distinct values) are in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    /// `count`: count distinct values of this field path instead of events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<String>,
    /// `absence`: the longest expected gap between events of one key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_every: Option<Duration>,
    /// `absence`: keys expected from the start, before any event was seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// `script`: JavaScript defining `function handle(event, ctx)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// This rule is a template for others: it is not evaluated itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
    /// For a template: the JSON Schema of its params. For an instance: the params' values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// For an instance: the name of the template it is made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The longest rule, template or instance name, in characters.
pub const MAX_RULE_NAME: usize = 200;

/// The one check of a name a user chooses for an object that is addressed by it in paths
/// and shown in pages and logs — rules, templates and instances here; channels, users and
/// token labels in the server, which may narrow the characters further: 1 to `max`
/// characters, not blank, no leading or trailing white space, and no control characters
/// (NUL, CR, LF, ESC, …) or bidirectional overrides, which would let a name hide or
/// disguise what it says. The message names no field; callers say which name it is.
pub fn check_name(name: &str, max: usize) -> Result<(), String> {
    let len = name.chars().count();
    if len == 0 || len > max || name.trim().is_empty() {
        return Err(format!("must be 1 to {max} characters and not blank"));
    }
    if name.trim() != name {
        return Err("must not begin or end with white space".into());
    }
    // U+202A..U+202E and U+2066..U+2069 reorder text; U+200E/U+200F mark direction.
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if let Some(c) = name.chars().find(|&c| hidden(c)) {
        return Err(format!(
            "must not hold control or text-direction characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}

/// A name no rule may have: `/api/v1/rules/test` is the dry run of an unsaved rule.
pub const RESERVED_RULE_NAME: &str = "test";

fn check_rule_name(name: &str) -> Result<(), RuleError> {
    check_name(name, MAX_RULE_NAME).map_err(|m| RuleError::new(Some("name"), m))?;
    if name == RESERVED_RULE_NAME {
        return Err(RuleError::new(
            Some("name"),
            "`test` is reserved (`/api/v1/rules/test` is the dry run of an unsaved rule); choose another name",
        ));
    }
    Ok(())
}

/// A rule that failed validation; `field` names where, when it is one field's fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("`{f}`: ")).unwrap_or_default())]
pub struct RuleError {
    pub field: Option<String>,
    pub message: String,
    /// For JavaScript and template syntax errors: where in the field's text.
    pub line: Option<u32>,
    pub column: Option<u32>,
    /// For template instances: every way the params break the template's schema.
    pub failures: Vec<ParamFailure>,
}

impl RuleError {
    pub fn new(field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            field: field.map(str::to_owned),
            message: message.into(),
            line: None,
            column: None,
            failures: Vec::new(),
        }
    }
}

/// A rule document as stored and exchanged: a rule, a template, or an instance of one.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleDoc {
    Rule(Box<RuleSpec>),
    /// `template: true`: kept as written, since its typed fields may still hold `{{ params.X }}`.
    Template(Template),
    /// `{name, from, params}`: made into a rule with its template when saved.
    Instance(Instance),
}

/// A rule template: the raw document and the JSON Schema of its params.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Template {
    pub name: String,
    pub description: Option<String>,
    pub params: Value,
    #[serde(skip)]
    pub doc: Value,
}

/// An instance of a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub name: String,
    pub from: String,
    #[serde(default)]
    pub params: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl RuleDoc {
    pub fn name(&self) -> &str {
        match self {
            RuleDoc::Rule(r) => &r.name,
            RuleDoc::Template(t) => &t.name,
            RuleDoc::Instance(i) => &i.name,
        }
    }

    /// The document as JSON, the form it is stored and shown in.
    pub fn to_json(&self) -> Value {
        match self {
            RuleDoc::Rule(r) => serde_json::to_value(r).expect("a rule always serializes"),
            RuleDoc::Template(t) => t.doc.clone(),
            RuleDoc::Instance(i) => serde_json::to_value(i).expect("an instance always serializes"),
        }
    }
}

/// Parses one rule document from JSON (the API form, and each YAML document).
pub fn parse_doc(value: Value) -> Result<RuleDoc, RuleError> {
    let Value::Object(map) = &value else {
        return Err(RuleError::new(None, "a rule must be an object"));
    };
    if map.get("template") == Some(&Value::Bool(true)) {
        let name = map
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| RuleError::new(Some("name"), "a template needs a name"))?
            .to_owned();
        check_rule_name(&name)?;
        let params = map
            .get("params")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object"}));
        jsonschema::validator_for(&params).map_err(|e| {
            RuleError::new(
                Some("params"),
                format!("a template's params must be a valid JSON Schema: {e}"),
            )
        })?;
        let description = map
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned);
        return Ok(RuleDoc::Template(Template {
            name,
            description,
            params,
            doc: value,
        }));
    }
    if let Some(Value::String(name)) = map.get("name") {
        check_rule_name(name)?;
    }
    // Errors name the field at fault (`field`, and in the message).
    let invalid = |what: &str, e: crate::fields::FieldError| match e.field {
        Some(field) => RuleError::new(Some(&field), e.message),
        None => RuleError::new(None, format!("invalid {what}: {}", e.message)),
    };
    if map.contains_key("from") {
        return crate::fields::from_json(value)
            .map(RuleDoc::Instance)
            .map_err(|e| invalid("rule instance", e));
    }
    crate::fields::from_json(value)
        .map(|r| RuleDoc::Rule(Box::new(r)))
        .map_err(|e| invalid("rule", e))
}

/// Parses one or more rule documents (`---` between) from YAML.
pub fn parse_yaml(text: &str) -> Result<Vec<RuleDoc>, RuleError> {
    // The parser's default budget (1,024 documents) is for config files; a rule pack may hold
    // thousands of rules, so the document and node counts scale up while the depth and alias
    // guards against hostile YAML stay as they are.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 100_000;
    budget.max_nodes = 10_000_000;
    budget.max_events = 40_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| RuleError::new(None, format!("invalid rule YAML: {e}")))?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(parse_doc)
        .collect()
}

impl RuleSpec {
    /// Whether the rule is evaluated at all (templates and disabled rules are not).
    pub fn is_active(&self) -> bool {
        !self.template && !self.disabled
    }

    /// Checks everything that does not need the JavaScript engine.
    pub fn validate(&self) -> Result<(), RuleError> {
        check_rule_name(&self.name)?;
        if let Some(source) = &self.source
            && source.is_empty()
        {
            return Err(RuleError::new(Some("source"), "must not be empty"));
        }
        if self.template {
            return Err(RuleError::new(
                Some("template"),
                "a template is a rule document of its own (see RuleDoc)",
            ));
        }
        let kind = self.kind.as_str();
        let only = |field: &str, present: bool, kinds: &[RuleKind]| {
            if present && !kinds.contains(&self.kind) {
                let names: Vec<_> = kinds.iter().map(|k| k.as_str()).collect();
                return Err(RuleError::new(
                    Some(field),
                    format!(
                        "applies only to {} rules, not to a {kind} rule",
                        names.join("/")
                    ),
                ));
            }
            Ok(())
        };
        let need = |field: &str, present: bool| {
            if present {
                Ok(())
            } else {
                Err(RuleError::new(
                    Some(field),
                    format!("a {kind} rule needs `{field}`"),
                ))
            }
        };
        only(
            "resolve_when",
            self.resolve_when.is_some(),
            &[RuleKind::Match],
        )?;
        only(
            "resolve_after",
            self.resolve_after.is_some(),
            &[RuleKind::Match],
        )?;
        only("for", self.for_.is_some(), &[RuleKind::Threshold])?;
        only("every", self.every.is_some(), &[RuleKind::Threshold])?;
        only("window", self.window.is_some(), &[RuleKind::Count])?;
        only("threshold", self.threshold.is_some(), &[RuleKind::Count])?;
        only("distinct", self.distinct.is_some(), &[RuleKind::Count])?;
        only(
            "expect_every",
            self.expect_every.is_some(),
            &[RuleKind::Absence],
        )?;
        only("keys", !self.keys.is_empty(), &[RuleKind::Absence])?;
        only("script", self.script.is_some(), &[RuleKind::Script])?;
        match self.kind {
            RuleKind::Match => {}
            RuleKind::Threshold => need("when", self.when.is_some())?,
            RuleKind::Count => {
                need("window", self.window.is_some())?;
                need("threshold", self.threshold.is_some())?;
            }
            RuleKind::Absence => need("expect_every", self.expect_every.is_some())?,
            RuleKind::Script => need("script", self.script.is_some())?,
        }
        for (field, d) in [
            ("window", self.window),
            ("expect_every", self.expect_every),
            ("every", self.every),
            ("resolve_after", self.resolve_after),
            ("repeat_every", self.repeat_every),
        ] {
            if d.is_some_and(|d| d.0 <= 0) {
                return Err(RuleError::new(Some(field), "must be longer than 0s"));
            }
        }
        if self.key.is_some() && !self.group_by.is_empty() {
            return Err(RuleError::new(
                Some("group_by"),
                "give either `key` or `group_by`, not both",
            ));
        }
        Ok(())
    }

    /// The JavaScript fields of the rule, by name, for compiling and analysis.
    pub fn scripts(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("when", self.when.as_deref()),
            ("value", self.value.as_deref()),
            ("resolve_when", self.resolve_when.as_deref()),
            ("script", self.script.as_deref()),
        ]
        .into_iter()
        .filter_map(|(field, src)| src.map(|s| (field, s)))
    }

    /// The template fields rendered per alert, by name (`labels.env`, `links.logs`, …).
    pub fn templates(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for (field, src) in [
            ("key", &self.key),
            ("summary", &self.summary),
            ("resolve_summary", &self.resolve_summary),
            ("body", &self.body),
        ] {
            if let Some(src) = src {
                out.push((field.to_owned(), src.as_str()));
            }
        }
        out.extend(
            self.labels
                .iter()
                .map(|(k, v)| (format!("labels.{k}"), v.as_str())),
        );
        out.extend(
            self.links
                .iter()
                .map(|(k, v)| (format!("links.{k}"), v.as_str())),
        );
        out
    }
}

/// One way the params of an instance break its template's schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamFailure {
    /// JSON pointer into the params (`/threshold`), empty for the whole object.
    pub path: String,
    pub message: String,
}

/// Why an instance could not be made from its template.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InstanceError {
    #[error("params do not match the template's schema")]
    InvalidParams(Vec<ParamFailure>),
    #[error("{0}")]
    Rule(RuleError),
}

/// Makes the rule `instance` (`{name, from, params}`) from `template`.
///
/// Every string field outside the per-alert templates has `{{ params.X }}` replaced now; a
/// string that is exactly one `{{ params.X }}` takes X's JSON value, so numbers stay numbers.
/// Per-alert templates (`summary`, `labels`, …) keep their text and get `params` when rendered.
pub fn instantiate(template: &Template, instance: &Instance) -> Result<RuleSpec, InstanceError> {
    let params = match &instance.params {
        Value::Null => Value::Object(Default::default()),
        p => p.clone(),
    };
    check_params(&template.params, &params)?;
    let mut doc = template.doc.clone();
    let obj = doc
        .as_object_mut()
        .expect("a template document is an object");
    const PER_ALERT: [&str; 6] = [
        "summary",
        "resolve_summary",
        "body",
        "key",
        "labels",
        "links",
    ];
    for (field, value) in obj.iter_mut() {
        if PER_ALERT.contains(&field.as_str()) || field == "params" {
            continue;
        }
        substitute(value, &params)
            .map_err(|m| InstanceError::Rule(RuleError::new(Some(field), m)))?;
    }
    obj.remove("template");
    obj.insert("name".to_owned(), Value::String(instance.name.clone()));
    obj.insert("params".to_owned(), params);
    if let Some(d) = &instance.description {
        obj.insert("description".to_owned(), Value::String(d.clone()));
    }
    if instance.disabled {
        obj.insert("disabled".to_owned(), Value::Bool(true));
    }
    obj.insert("from".to_owned(), Value::String(template.name.clone()));
    let rule: RuleSpec = crate::fields::from_json(doc).map_err(|e| {
        InstanceError::Rule(RuleError::new(
            e.field.as_deref(),
            format!(
                "the template with these params is not a valid rule: {}",
                e.message
            ),
        ))
    })?;
    Ok(rule)
}

fn check_params(schema: &Value, params: &Value) -> Result<(), InstanceError> {
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        InstanceError::Rule(RuleError::new(
            Some("params"),
            format!("the template's params schema is not valid JSON Schema: {e}"),
        ))
    })?;
    let failures: Vec<ParamFailure> = validator
        .iter_errors(params)
        .map(|e| ParamFailure {
            path: e.instance_path().to_string(),
            message: e.to_string(),
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(InstanceError::InvalidParams(failures))
    }
}

fn substitute(value: &mut Value, params: &Value) -> Result<(), String> {
    match value {
        Value::String(s) if s.contains("{{") => {
            let trimmed = s.trim();
            if let Some(inner) = trimmed
                .strip_prefix("{{")
                .and_then(|t| t.strip_suffix("}}"))
                .map(str::trim)
                && let Some(name) = inner.strip_prefix("params.")
                && name.chars().all(|c| c.is_alphanumeric() || c == '_')
                && let Some(v) = params.get(name)
            {
                *value = v.clone();
                return Ok(());
            }
            let ctx = minijinja::context! { params => crate::template::to_value(params) };
            *value = Value::String(crate::template::render_once(s, ctx)?);
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| substitute(v, params)),
        Value::Object(map) => map.values_mut().try_for_each(|v| substitute(v, params)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(doc: &RuleDoc) -> &RuleSpec {
        match doc {
            RuleDoc::Rule(r) => r,
            other => panic!("expected a rule, got {other:?}"),
        }
    }

    #[test]
    fn names_are_checked_the_same_for_rules_templates_and_instances() {
        assert!(check_name("disk full / cad-1", 200).is_ok());
        assert!(check_name("Plattenplatz übervoll ✓", 200).is_ok());
        for bad in [
            "",
            "   ",
            " x",
            "x ",
            "a\0b",
            "a\nb",
            "a\rb",
            "a\u{1b}[31mb",
            "a\u{7f}",
            "a\u{85}b",
            "a\u{202e}b",
        ] {
            assert!(check_name(bad, 200).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(200), 200).is_ok());
        assert!(check_name(&"x".repeat(201), 200).is_err());
        for doc in [
            json!({"name": "a\u{0}b", "when": "true"}),
            json!({"name": "a\nb", "template": true, "when": "true"}),
            json!({"name": "a\u{7}b", "from": "t"}),
        ] {
            let err = parse_doc(doc).expect_err("a control character");
            assert_eq!(err.field.as_deref(), Some("name"));
        }
    }

    #[test]
    fn yaml_documents_and_durations() {
        let docs = parse_yaml(
            "name: disk\nkind: threshold\nwhen: event.used_pct > 90\nfor: 5m\n---\nname: hb\nkind: absence\nexpect_every: 1m\n",
        )
        .expect("valid yaml");
        assert_eq!(docs.len(), 2);
        assert_eq!(rule(&docs[0]).for_, Some(Duration(300_000)));
        assert_eq!(rule(&docs[1]).kind, RuleKind::Absence);
        docs.iter().for_each(|r| rule(r).validate().expect("valid"));
    }

    #[test]
    fn a_rule_file_may_hold_thousands_of_rules() {
        let text: Vec<String> = (0..2_000)
            .map(|i| format!("name: r{i}\nwhen: event.host == 'h{i}'\n"))
            .collect();
        assert_eq!(
            parse_yaml(&text.join("---\n")).expect("parses").len(),
            2_000
        );
    }

    #[test]
    fn unknown_fields_and_misplaced_fields_are_refused() {
        let err = parse_doc(json!({"name": "x", "whem": "true"})).expect_err("unknown field");
        assert!(err.message.contains("whem"), "{err}");
        let doc = parse_doc(json!({"name": "x", "window": "1m"})).expect("parses");
        let err = rule(&doc).validate().expect_err("window on a match rule");
        assert_eq!(err.field.as_deref(), Some("window"));
        let doc = parse_doc(json!({"name": "x", "kind": "count", "window": "1m"})).expect("parses");
        assert_eq!(
            rule(&doc)
                .validate()
                .expect_err("no threshold")
                .field
                .as_deref(),
            Some("threshold")
        );
        assert!(parse_doc(json!({"name": "x", "for": "soon"})).is_err());
    }

    #[test]
    fn instances_check_params_and_keep_types() {
        let RuleDoc::Template(template) = parse_doc(json!({
            "name": "disk-template", "template": true, "kind": "threshold",
            "params": {"type": "object", "required": ["limit", "fs"],
                       "properties": {"limit": {"type": "number", "maximum": 100}, "fs": {"type": "string"}}},
            "when": "event.fs == '{{ params.fs }}' && event.used_pct > {{ params.limit }}",
            "for": "{{ params.hold }}",
            "summary": "{{ params.fs }} at {{ event.used_pct }}%"
        }))
        .expect("parses") else {
            panic!("expected a template")
        };
        let instance = |params: Value| Instance {
            name: "disk-cad".into(),
            from: "disk-template".into(),
            params,
            description: None,
            disabled: false,
        };
        let rule = instantiate(
            &template,
            &instance(json!({"limit": 90, "fs": "/cad", "hold": "1m"})),
        )
        .expect("valid params");
        assert_eq!(
            rule.when.as_deref(),
            Some("event.fs == '/cad' && event.used_pct > 90")
        );
        assert_eq!(rule.for_, Some(Duration(60_000)));
        assert_eq!(
            rule.summary.as_deref(),
            Some("{{ params.fs }} at {{ event.used_pct }}%")
        );
        rule.validate().expect("a valid rule");
        match instantiate(&template, &instance(json!({"limit": 120}))) {
            Err(InstanceError::InvalidParams(failures)) => {
                assert_eq!(failures.len(), 2, "{failures:?}")
            }
            other => panic!("expected invalid params, got {other:?}"),
        }
    }
}
