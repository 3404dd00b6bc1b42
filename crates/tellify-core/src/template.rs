//! Jinja templates (minijinja) for alert keys, summaries, bodies, labels and links.
//!
//! Each rule's templates are compiled once into their own environment, so a rule that changes
//! recompiles only itself. Rendering has a fuel limit so a runaway loop in a template cannot
//! stall the engine.

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::rule::RuleError;

/// Fuel for one render: plenty for loops over an event's fields, not for a runaway.
const FUEL: u64 = 100_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(FUEL));
    // Templates named `*.html` escape HTML; keys, summaries, labels and links are plain text.
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            minijinja::AutoEscape::Html
        } else {
            minijinja::AutoEscape::None
        }
    });
    env
}

/// Converts anything serializable (an event, params) into a template value.
pub fn to_value<T: serde::Serialize>(value: T) -> Value {
    Value::from(minijinja::value::Serde(value))
}

/// A set of named templates compiled once.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Compiles `(name, source)` pairs; a template that does not parse names its field and line.
    pub fn compile<'a>(
        sources: impl IntoIterator<Item = (String, &'a str)>,
    ) -> Result<Self, RuleError> {
        let mut env = environment();
        for (name, source) in sources {
            env.add_template_owned(name.clone(), source.to_owned())
                .map_err(|e| RuleError {
                    field: Some(name),
                    message: format!("template does not parse: {}", e.detail().unwrap_or("")),
                    line: e.line().map(|l| l as u32),
                    column: None,
                    failures: Vec::new(),
                })?;
        }
        Ok(Self { env })
    }

    pub fn has(&self, name: &str) -> bool {
        self.env.get_template(name).is_ok()
    }

    /// Renders the template `name`; `Ok(None)` if there is none by that name.
    pub fn render(&self, name: &str, ctx: &Value) -> Result<Option<String>, String> {
        match self.env.get_template(name) {
            Ok(t) => t.render(ctx).map(Some).map_err(|e| describe(name, &e)),
            Err(_) => Ok(None),
        }
    }
}

/// Renders a template used once (template instantiation).
pub fn render_once(source: &str, ctx: Value) -> Result<String, String> {
    environment()
        .render_str(source, ctx)
        .map_err(|e| describe("template", &e))
}

fn describe(name: &str, e: &minijinja::Error) -> String {
    let mut message = format!("{name}: {}", e.kind());
    if let Some(detail) = e.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    if let Some(line) = e.line() {
        message.push_str(&format!(" (line {line})"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_renders_and_reports_errors() {
        let t = Templates::compile([
            ("summary".to_owned(), "{{ event.host }} at {{ event.pct }}%"),
            ("body.html".to_owned(), "<b>{{ event.host }}</b>"),
        ])
        .expect("valid templates");
        let ctx = to_value(serde_json::json!({"event": {"host": "<cad>", "pct": 93.5}}));
        assert_eq!(
            t.render("summary", &ctx).expect("renders").as_deref(),
            Some("<cad> at 93.5%")
        );
        assert_eq!(
            t.render("body.html", &ctx).expect("renders").as_deref(),
            Some("<b>&lt;cad&gt;</b>")
        );
        assert_eq!(t.render("nope", &ctx), Ok(None));
        let err = Templates::compile([("summary".to_owned(), "line1\n{{ event.host ")])
            .err()
            .expect("does not parse");
        assert_eq!(err.field.as_deref(), Some("summary"));
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn runaway_loops_run_out_of_fuel() {
        let t = Templates::compile([(
            "summary".to_owned(),
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )])
        .expect("parses");
        assert!(t.render("summary", &Value::UNDEFINED).is_err());
    }
}
