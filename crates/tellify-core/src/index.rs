//! The rule index: which rules could care about an event, without running any JavaScript.
//!
//! Rules are bucketed by source (exact name, glob, or any). Within a bucket, a rule whose
//! trigger conditions are all conjunctions containing a string equality on an event field
//! (`event.kind == 'disk' && event.used_pct > 90`) is filed under that field and value, so an
//! event only meets the rules filed under its own values. Everything else is a candidate for
//! every event of its source. The index only ever narrows: the JavaScript still decides, so a
//! rule the analysis does not understand is merely unindexed, never missed.

use std::collections::HashMap;

use serde_json::Value;

/// A rule's position in the evaluator's table.
pub type RuleId = u32;

/// `event.path == 'value'`, a term every matching event must satisfy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Equality {
    pub path: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num,
    Punct(&'static str),
}

const PUNCTS: [&str; 44] = [
    ">>>=", "===", "!==", "**=", "<<=", ">>=", ">>>", "...", "&&=", "||=", "??=", "==", "!=", "<=",
    ">=", "&&", "||", "??", "?.", "=>", "++", "--", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=",
    "**", "<<", ">>", "<", ">", "=", "+", "-", "*", "/", "%", "!", "?", ":",
];
const SINGLE: [&str; 11] = ["(", ")", "[", "]", "{", "}", ",", ";", ".", "&", "|"];

/// Splits JavaScript into tokens, or `None` for anything it does not follow (template
/// strings, regular expressions, unusual escapes): such a condition is simply not indexed.
fn tokenize(src: &str) -> Option<Vec<Token>> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'`'
            || (c == b'/' && bytes.get(i + 1).is_some_and(|n| *n == b'/' || *n == b'*'))
        {
            // Template strings and comments are not followed: the condition is not indexed.
            return None;
        } else if c == b'\'' || c == b'"' {
            let mut s = String::new();
            i += 1;
            loop {
                let ch = *bytes.get(i)?;
                match ch {
                    b'\\' => {
                        let esc = *bytes.get(i + 1)?;
                        match esc {
                            b'\\' | b'\'' | b'"' => s.push(esc as char),
                            b'n' => s.push('\n'),
                            b't' => s.push('\t'),
                            _ => return None,
                        }
                        i += 2;
                    }
                    _ if ch == c => {
                        i += 1;
                        break;
                    }
                    _ => {
                        // Multi-byte UTF-8 is copied whole.
                        let len = utf8_len(ch);
                        s.push_str(std::str::from_utf8(bytes.get(i..i + len)?).ok()?);
                        i += len;
                    }
                }
            }
            out.push(Token::Str(s));
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            out.push(Token::Num);
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$')
            {
                i += 1;
            }
            out.push(Token::Ident(src[start..i].to_owned()));
        } else {
            let rest = &src[i..];
            let punct = PUNCTS
                .iter()
                .chain(SINGLE.iter())
                .find(|p| rest.starts_with(**p))?;
            // A `/` where a value is expected starts a regular expression: not followed here.
            if *punct == "/"
                && !matches!(
                    out.last(),
                    Some(Token::Ident(_) | Token::Num | Token::Str(_) | Token::Punct(")" | "]"))
                )
            {
                return None;
            }
            out.push(Token::Punct(punct));
            i += punct.len();
        }
    }
    Some(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// The string equalities on event fields that every event satisfying `src` must meet, if `src`
/// is one expression that is a conjunction; `None` when nothing can be said.
pub fn required_equalities(src: &str) -> Option<Vec<Equality>> {
    // Lines may be separate statements (automatic semicolon insertion): the value is then the
    // last one's, not the conjunction's.
    if src.trim().contains('\n') {
        return None;
    }
    let tokens = tokenize(src)?;
    let mut conjuncts: Vec<&[Token]> = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Punct("(" | "[" | "{") => depth += 1,
            Token::Punct(")" | "]" | "}") => depth -= 1,
            Token::Punct("&&") if depth == 0 => {
                conjuncts.push(&tokens[start..i]);
                start = i + 1;
            }
            Token::Punct(
                "||" | "??" | "?" | ":" | "," | ";" | "=" | "+=" | "-=" | "=>" | "&&=" | "||="
                | "??=",
            ) if depth == 0 => return None,
            _ => {}
        }
    }
    conjuncts.push(&tokens[start..]);
    let found: Vec<Equality> = conjuncts.into_iter().filter_map(equality).collect();
    (!found.is_empty()).then_some(found)
}

fn equality(mut tokens: &[Token]) -> Option<Equality> {
    while let [Token::Punct("("), inner @ .., Token::Punct(")")] = tokens {
        tokens = inner;
    }
    let op = tokens
        .iter()
        .position(|t| matches!(t, Token::Punct("==" | "===")))?;
    let (left, right) = (&tokens[..op], &tokens[op + 1..]);
    match (left, right) {
        (path, [Token::Str(value)]) | ([Token::Str(value)], path) => Some(Equality {
            path: event_path(path)?,
            value: value.clone(),
        }),
        _ => None,
    }
}

/// `event.a.b`, `e['a'].b`, `event?.a` → `a.b`.
fn event_path(tokens: &[Token]) -> Option<String> {
    let (first, mut rest) = tokens.split_first()?;
    if !matches!(first, Token::Ident(name) if name == "event" || name == "e") {
        return None;
    }
    let mut parts = Vec::new();
    loop {
        match rest {
            [] => break,
            [Token::Punct("." | "?."), Token::Ident(name), tail @ ..] => {
                parts.push(name.clone());
                rest = tail;
            }
            [
                Token::Punct("["),
                Token::Str(name),
                Token::Punct("]"),
                tail @ ..,
            ] => {
                if name.contains('.') {
                    return None;
                }
                parts.push(name.clone());
                rest = tail;
            }
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("."))
}

/// The free identifiers a piece of JavaScript reads (not property names after a dot).
pub fn identifiers(src: &str) -> Option<Vec<String>> {
    let tokens = tokenize(src)?;
    let mut out = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if let Token::Ident(name) = t
            && !matches!(
                i.checked_sub(1).map(|p| &tokens[p]),
                Some(Token::Punct("." | "?."))
            )
            && !out.contains(name)
        {
            out.push(name.clone());
        }
    }
    Some(out)
}

/// The source names a script reads literally through `_topic['NAME']` or `_topic.NAME`.
/// Computed names (`_topic['apps.' + id]`) are not listed.
pub fn topic_references(src: &str) -> Vec<String> {
    let Some(tokens) = tokenize(src) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for window in tokens.windows(4) {
        let name = match window {
            [
                Token::Ident(t),
                Token::Punct("["),
                Token::Str(name),
                Token::Punct("]"),
            ] if t == "_topic" => name,
            [
                Token::Ident(t),
                Token::Punct("." | "?."),
                Token::Ident(name),
                _,
            ] if t == "_topic" => name,
            _ => continue,
        };
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    // `_topic.x` at the very end of the text has no fourth token.
    if let [
        ..,
        Token::Ident(t),
        Token::Punct("." | "?."),
        Token::Ident(name),
    ] = &tokens[..]
        && t == "_topic"
        && !out.contains(name)
    {
        out.push(name.clone());
    }
    out
}

/// What a field path reads to in JavaScript, as far as JSON can tell.
pub enum Resolved<'a> {
    /// `undefined` or `null`: cannot equal a string.
    Absent,
    Value(&'a Value),
    /// Passes through a string, number, boolean or array, whose JavaScript properties (such as
    /// `length`) JSON does not hold: anything is possible.
    Unknown,
}

/// Reads `a.b.c` from an event the way JavaScript would, or says it cannot tell.
pub fn resolve<'a>(data: &'a Value, path: &str) -> Resolved<'a> {
    let mut current = data;
    for part in path.split('.') {
        current = match current {
            Value::Object(map) => match map.get(part) {
                Some(v) => v,
                None => return Resolved::Absent,
            },
            Value::Null => return Resolved::Absent,
            _ => return Resolved::Unknown,
        };
    }
    match current {
        Value::Null => Resolved::Absent,
        v => Resolved::Value(v),
    }
}

/// Where a rule is filed: under equalities (any one suffices to make it a candidate) or always.
#[derive(Debug, Clone)]
pub enum Filing {
    Always,
    Under(Vec<Equality>),
}

#[derive(Debug, Default)]
struct Bucket {
    always: Vec<RuleId>,
    by_field: HashMap<String, HashMap<String, Vec<RuleId>>>,
}

impl Bucket {
    fn add(&mut self, id: RuleId, filing: &Filing) {
        match filing {
            Filing::Always => self.always.push(id),
            Filing::Under(eqs) => {
                for eq in eqs {
                    self.by_field
                        .entry(eq.path.clone())
                        .or_default()
                        .entry(eq.value.clone())
                        .or_default()
                        .push(id);
                }
            }
        }
    }

    fn collect(&self, data: &Value, out: &mut Vec<RuleId>) {
        out.extend_from_slice(&self.always);
        for (path, by_value) in &self.by_field {
            match resolve(data, path) {
                Resolved::Absent => {}
                Resolved::Value(Value::String(s)) => {
                    if let Some(ids) = by_value.get(s) {
                        out.extend_from_slice(ids);
                    }
                }
                // JavaScript's `==` may still equate a number, boolean or array with the
                // string, and a path through a string or array may read a property JSON lacks
                // (`length`); such events meet every rule filed on the field.
                Resolved::Value(_) | Resolved::Unknown => {
                    by_value.values().for_each(|ids| out.extend_from_slice(ids))
                }
            }
        }
    }
}

/// Rules filed by source and by required field values.
#[derive(Default)]
pub struct RuleIndex {
    exact: HashMap<String, Bucket>,
    globs: Vec<(globset::GlobMatcher, Bucket)>,
    any: Bucket,
}

impl RuleIndex {
    /// Files rule `id` for events of `source` (`None`: every source; a glob: matching ones).
    pub fn add(&mut self, id: RuleId, source: Option<&str>, filing: &Filing) -> Result<(), String> {
        let bucket = match source {
            None => &mut self.any,
            Some(s) if s.contains(['*', '?', '[', '{']) => {
                let glob = globset::Glob::new(s)
                    .map_err(|e| format!("`{s}` is not a valid glob: {e}"))?
                    .compile_matcher();
                match self.globs.iter().position(|(g, _)| g.glob() == glob.glob()) {
                    Some(i) => &mut self.globs[i].1,
                    None => {
                        self.globs.push((glob, Bucket::default()));
                        &mut self.globs.last_mut().expect("just pushed").1
                    }
                }
            }
            Some(s) => self.exact.entry(s.to_owned()).or_default(),
        };
        bucket.add(id, filing);
        Ok(())
    }

    /// The rules that could match an event of `source` with `data`, each once, in id order.
    pub fn candidates(&self, source: &str, data: &Value, out: &mut Vec<RuleId>) {
        out.clear();
        self.any.collect(data, out);
        if let Some(bucket) = self.exact.get(source) {
            bucket.collect(data, out);
        }
        for (glob, bucket) in &self.globs {
            if glob.is_match(source) {
                bucket.collect(data, out);
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eqs(src: &str) -> Option<Vec<(String, String)>> {
        required_equalities(src).map(|v| v.into_iter().map(|e| (e.path, e.value)).collect())
    }

    #[test]
    fn conjunctions_of_equalities_are_found() {
        assert_eq!(
            eqs("event.kind == 'disk' && event.used_pct > 90"),
            Some(vec![("kind".into(), "disk".into())])
        );
        assert_eq!(
            eqs("(e.data.namespace === \"public\") && 'FAILED' == event['data'].state"),
            Some(vec![
                ("data.namespace".into(), "public".into()),
                ("data.state".into(), "FAILED".into())
            ])
        );
    }

    #[test]
    fn anything_else_is_not_indexed() {
        assert_eq!(eqs("event.kind == 'disk' || event.kind == 'cpu'"), None);
        assert_eq!(eqs("event.used_pct > 90"), None);
        assert_eq!(eqs("event.kind == 'a' + 'b'"), None);
        assert_eq!(eqs("event.kind == 'disk' ? true : false"), None);
        assert_eq!(eqs("var a = event.kind == 'x'; a"), None);
        assert_eq!(eqs("/a'b/.test(event.kind) && event.k == 'x'"), None);
        assert_eq!(eqs("other.kind == 'x'"), None);
    }

    #[test]
    fn identifiers_skip_properties() {
        assert_eq!(
            identifiers("_topic['cluster.metrics'].numAppsRunning > event.x").expect("tokenizes"),
            vec!["_topic".to_owned(), "event".to_owned()]
        );
    }

    #[test]
    fn topic_references_are_literal_names() {
        assert_eq!(
            topic_references(
                "_topic['cluster.metrics'].numAppsRunning > 5 && _topic[\"apps\"].n && _topic.x"
            ),
            vec!["cluster.metrics", "apps", "x"]
        );
        assert_eq!(
            topic_references(
                "var a=_topic['applications'].apps; _topic['applications.'+a[0].id].state"
            ),
            vec!["applications"]
        );
    }

    #[test]
    fn candidates_by_source_and_value() {
        let mut index = RuleIndex::default();
        let disk = Filing::Under(vec![Equality {
            path: "kind".into(),
            value: "disk".into(),
        }]);
        index.add(1, Some("metrics"), &disk).expect("adds");
        index
            .add(2, Some("metrics"), &Filing::Always)
            .expect("adds");
        index
            .add(3, Some("dataos.*"), &Filing::Always)
            .expect("adds");
        index.add(4, None, &disk).expect("adds");
        let mut out = Vec::new();
        index.candidates("metrics", &json!({"kind": "disk"}), &mut out);
        assert_eq!(out, vec![1, 2, 4]);
        index.candidates("metrics", &json!({"kind": "cpu"}), &mut out);
        assert_eq!(out, vec![2]);
        index.candidates("metrics", &json!({"kind": 5}), &mut out);
        assert_eq!(out, vec![1, 2, 4]);
        index.candidates("dataos.jobs", &json!({}), &mut out);
        assert_eq!(out, vec![3]);
    }
}
