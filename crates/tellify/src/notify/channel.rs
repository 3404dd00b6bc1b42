//! Channel kinds: the settings each takes, which of them are secrets, and how settings are
//! checked, sealed for storage and shown.
//!
//! Secrets (webhook URLs, routing keys, tokens, passwords) are write-only: a read shows
//! `"***"`, and an update that leaves one out or sends `"***"` keeps the stored value.

use serde_json::{Map, Value};

use crate::crypto::SecretBox;

/// What is shown instead of a secret.
pub const HIDDEN: &str = "***";

/// The settings of one kind of channel.
pub struct Kind {
    pub name: &'static str,
    pub required: &'static [&'static str],
    pub optional: &'static [&'static str],
    /// Settings whose values are secret (for `headers`, each header's value).
    pub secrets: &'static [&'static str],
}

pub const KINDS: &[Kind] = &[
    Kind {
        name: "webhook",
        required: &["url"],
        optional: &["headers", "secret", "body"],
        secrets: &["url", "secret", "headers"],
    },
    Kind {
        name: "slack",
        required: &["webhook_url"],
        optional: &[],
        secrets: &["webhook_url"],
    },
    Kind {
        name: "teams",
        required: &["webhook_url"],
        optional: &["card"],
        secrets: &["webhook_url"],
    },
    Kind {
        name: "pagerduty",
        required: &["routing_key"],
        optional: &["url"],
        secrets: &["routing_key"],
    },
    Kind {
        name: "sms",
        required: &["url", "account", "from", "to"],
        optional: &["token"],
        secrets: &["token"],
    },
    Kind {
        name: "email",
        required: &["to"],
        optional: &["format"],
        secrets: &[],
    },
    // The URL may carry credentials, so it is a secret.
    Kind {
        name: "nats",
        required: &["url", "topic"],
        optional: &[],
        secrets: &["url"],
    },
    Kind {
        name: "redis",
        required: &["url", "topic"],
        optional: &["mode"],
        secrets: &["url"],
    },
    Kind {
        name: "mqtt",
        required: &["url", "topic"],
        optional: &["qos", "username", "password"],
        secrets: &["url", "password"],
    },
    Kind {
        name: "amqp",
        required: &["url", "topic"],
        optional: &["exchange"],
        secrets: &["url"],
    },
    // Kafka credentials are separate settings, so its broker list is not a secret.
    Kind {
        name: "kafka",
        required: &["url", "topic"],
        optional: &["username", "password", "sasl_mechanism", "ca_file"],
        secrets: &["password"],
    },
];

pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Checks a channel's settings (everything but `name`, `kind`, `shared`) for its kind.
pub fn validate(kind_name: &str, settings: &Map<String, Value>) -> Result<(), String> {
    let Some(kind) = kind(kind_name) else {
        let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        return Err(format!(
            "`kind`: `{kind_name}` is not one of {}",
            names.join(", ")
        ));
    };
    for field in settings.keys() {
        if !kind.required.contains(&field.as_str()) && !kind.optional.contains(&field.as_str()) {
            return Err(format!(
                "`{field}` is not a setting of a {kind_name} channel"
            ));
        }
    }
    for field in kind.required {
        if settings.get(*field).is_none_or(|v| v.is_null() || v == "") {
            return Err(format!("a {kind_name} channel needs `{field}`"));
        }
    }
    let string = |f: &str| match settings.get(f) {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(format!("`{f}` must be a string")),
    };
    match kind_name {
        "webhook" => {
            string("url")?;
            string("secret")?;
            string("body")?;
            check_url(settings, "url")?;
            if let Some(h) = settings.get("headers") {
                let Value::Object(h) = h else {
                    return Err("`headers` must be an object of strings".into());
                };
                if h.values().any(|v| !v.is_string()) {
                    return Err("`headers` must be an object of strings".into());
                }
            }
            if let Some(Value::String(body)) = settings.get("body") {
                tellify_core::template::Templates::compile([("body".to_owned(), body.as_str())])
                    .map_err(|e| e.to_string())?;
            }
        }
        "slack" | "teams" => {
            string("webhook_url")?;
            check_url(settings, "webhook_url")?;
            if let Some(card) = settings.get("card")
                && card != "adaptive"
                && card != "legacy"
            {
                return Err("`card` must be `adaptive` (a Workflows webhook) or `legacy` (an Office 365 connector)".into());
            }
        }
        "pagerduty" => {
            string("routing_key")?;
            string("url")?;
            check_url(settings, "url")?;
            // PagerDuty refuses any other key with a 400: say so now, not in a dead delivery.
            if let Some(key) = settings.get("routing_key").and_then(Value::as_str)
                && key != HIDDEN
                && !SecretBox::is_sealed(key)
                && key.chars().count() != 32
            {
                return Err("`routing_key` must be the 32 characters of an integration key".into());
            }
        }
        "sms" => {
            for f in ["url", "account", "from", "token"] {
                string(f)?;
            }
            check_url(settings, "url")?;
            recipients(settings.get("to")).map_err(|e| format!("`to`: {e}"))?;
        }
        "nats" | "redis" | "mqtt" | "amqp" => {
            for f in ["url", "topic", "mode", "username", "password", "exchange"] {
                string(f)?;
            }
            let schemes: &[&str] = match kind_name {
                "nats" => &["nats://", "tls://"],
                "redis" => &["redis://", "rediss://"],
                "mqtt" => &["mqtt://", "tcp://"],
                _ => &["amqp://", "amqps://"],
            };
            if let Some(url) = settings.get("url").and_then(Value::as_str)
                && url != HIDDEN
                && !SecretBox::is_sealed(url)
                && !schemes.iter().any(|s| url.starts_with(s))
            {
                return Err(format!("`url` must start with {}", schemes.join(" or ")));
            }
            if let Some(mode) = settings.get("mode")
                && mode != "stream"
                && mode != "pubsub"
            {
                return Err("`mode` must be `stream` or `pubsub`".into());
            }
            if let Some(q) = settings.get("qos")
                && q != 0
                && q != 1
            {
                return Err("`qos` must be 0 or 1".into());
            }
        }
        "kafka" => {
            for f in [
                "url",
                "topic",
                "username",
                "password",
                "sasl_mechanism",
                "ca_file",
            ] {
                string(f)?;
            }
            let url = settings.get("url").and_then(Value::as_str).unwrap_or("");
            let Some((_, servers)) = crate::notify::kafka::parse_url(url) else {
                return Err("`url` must start with kafka:// or kafkas://".into());
            };
            if servers.split(',').any(|hp| {
                hp.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            }) {
                return Err("`url` must list brokers as host:port, separated by commas".into());
            }
            if settings.contains_key("username") && !settings.contains_key("password") {
                return Err("a Kafka `username` needs a `password` (SASL)".into());
            }
            if let Some(m) = settings.get("sasl_mechanism").and_then(Value::as_str)
                && !crate::notify::kafka::MECHANISMS.contains(&m)
            {
                return Err(format!(
                    "`sasl_mechanism` must be one of {}",
                    crate::notify::kafka::MECHANISMS.join(", ")
                ));
            }
            let topic = settings.get("topic").and_then(Value::as_str).unwrap_or("");
            if topic.len() > 249
                || !topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err("`topic` must be up to 249 of a-z, A-Z, 0-9, `.`, `_`, `-`".into());
            }
        }
        "email" => {
            let to = recipients(settings.get("to")).map_err(|e| format!("`to`: {e}"))?;
            if let Some(bad) = to.iter().find(|a| !a.contains('@')) {
                return Err(format!("`to`: `{bad}` is not an email address"));
            }
            if let Some(f) = settings.get("format")
                && f != "html"
                && f != "text"
            {
                return Err("`format` must be `html` or `text`".into());
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_url(settings: &Map<String, Value>, field: &str) -> Result<(), String> {
    match settings.get(field).and_then(Value::as_str) {
        Some(HIDDEN) | None => Ok(()),
        // A kept secret was checked when it was given.
        Some(u) if SecretBox::is_sealed(u) => Ok(()),
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(()),
        Some(_) => Err(format!("`{field}` must be an http:// or https:// URL")),
    }
}

/// A list of recipients: an array of strings, or one string (comma-separated allowed).
pub fn recipients(v: Option<&Value>) -> Result<Vec<String>, String> {
    let list: Vec<String> = match v {
        Some(Value::String(s)) => s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(|s| s.trim().to_owned())
                    .ok_or_else(|| "must be strings".to_owned())
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("give a list of recipients".into()),
    };
    if list.is_empty() {
        return Err("give at least one recipient".into());
    }
    Ok(list)
}

/// Seals the secrets of new settings; a secret left out or sent as `***` keeps its stored value.
pub fn seal(
    kind_name: &str,
    mut new: Map<String, Value>,
    stored: Option<&Map<String, Value>>,
    keys: &SecretBox,
) -> Map<String, Value> {
    let Some(kind) = kind(kind_name) else {
        return new;
    };
    for field in kind.secrets {
        if *field == "headers" {
            // Left out, the stored headers stay (their values are secrets).
            if !new.contains_key("headers")
                && let Some(old) = stored.and_then(|s| s.get("headers"))
            {
                new.insert("headers".to_owned(), old.clone());
                continue;
            }
            if let Some(Value::Object(headers)) = new.get_mut("headers") {
                let old = stored
                    .and_then(|s| s.get("headers"))
                    .and_then(Value::as_object);
                for (name, value) in headers.iter_mut() {
                    *value = match value.as_str() {
                        Some(HIDDEN) => old
                            .and_then(|o| o.get(name))
                            .cloned()
                            .unwrap_or(Value::Null),
                        Some(plain) => Value::String(keys.seal(plain)),
                        None => Value::Null,
                    };
                }
                headers.retain(|_, v| !v.is_null());
            }
            continue;
        }
        match new.get(*field).and_then(Value::as_str) {
            Some(HIDDEN) | None => match stored.and_then(|s| s.get(*field)) {
                Some(old) => {
                    new.insert((*field).to_owned(), old.clone());
                }
                None => {
                    new.remove(*field);
                }
            },
            Some(plain) => {
                let sealed = keys.seal(plain);
                new.insert((*field).to_owned(), Value::String(sealed));
            }
        }
    }
    new
}

/// Settings as shown: every secret replaced by `***`.
pub fn hide(kind_name: &str, mut settings: Map<String, Value>) -> Map<String, Value> {
    let Some(kind) = kind(kind_name) else {
        return settings;
    };
    for field in kind.secrets {
        match settings.get_mut(*field) {
            Some(Value::Object(headers)) if *field == "headers" => headers
                .values_mut()
                .for_each(|v| *v = Value::String(HIDDEN.into())),
            Some(v) if !v.is_null() => *v = Value::String(HIDDEN.into()),
            _ => {}
        }
    }
    settings
}

/// Settings with every secret opened, for sending.
pub fn open(
    kind_name: &str,
    mut settings: Map<String, Value>,
    keys: &SecretBox,
) -> anyhow::Result<Map<String, Value>> {
    let Some(kind) = kind(kind_name) else {
        return Ok(settings);
    };
    for field in kind.secrets {
        match settings.get_mut(*field) {
            Some(Value::Object(headers)) if *field == "headers" => {
                for v in headers.values_mut() {
                    if let Some(s) = v.as_str().filter(|s| SecretBox::is_sealed(s)) {
                        *v = Value::String(keys.open(s)?);
                    }
                }
            }
            Some(v) => {
                if let Some(s) = v.as_str().filter(|s| SecretBox::is_sealed(s)) {
                    *v = Value::String(keys.open(s)?);
                }
            }
            None => {}
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    #[test]
    fn secrets_are_sealed_hidden_kept_and_opened() {
        let keys = SecretBox::from_key([1u8; 32]);
        let first = seal(
            "webhook",
            map(
                json!({"url": "https://h.example/x", "secret": "s1", "headers": {"Authorization": "Bearer t"}}),
            ),
            None,
            &keys,
        );
        assert!(SecretBox::is_sealed(first["url"].as_str().expect("url")));
        assert_eq!(
            hide("webhook", first.clone()),
            map(json!({"url": "***", "secret": "***", "headers": {"Authorization": "***"}}))
        );
        // An update that sends *** or leaves a secret out keeps it.
        let second = seal(
            "webhook",
            map(json!({"url": "***", "headers": {"Authorization": "***", "X-Env": "prod"}})),
            Some(&first),
            &keys,
        );
        let opened = open("webhook", second, &keys).expect("opens");
        assert_eq!(opened["url"], "https://h.example/x");
        assert_eq!(opened["secret"], "s1");
        assert_eq!(
            opened["headers"],
            json!({"Authorization": "Bearer t", "X-Env": "prod"})
        );
    }

    #[test]
    fn settings_are_checked_per_kind() {
        assert!(validate("webhook", &map(json!({"url": "https://x"}))).is_ok());
        assert!(
            validate("webhook", &map(json!({})))
                .expect_err("no url")
                .contains("url")
        );
        assert!(validate("webhook", &map(json!({"url": "ftp://x"}))).is_err());
        assert!(
            validate(
                "webhook",
                &map(json!({"url": "https://x", "colour": "red"}))
            )
            .expect_err("unknown")
            .contains("colour")
        );
        assert!(validate("carrier-pigeon", &map(json!({}))).is_err());
        assert!(validate("email", &map(json!({"to": "a@x.org, b@y.org"}))).is_ok());
        assert!(validate("email", &map(json!({"to": ["nobody"]}))).is_err());
        assert!(
            validate(
                "teams",
                &map(json!({"webhook_url": "https://x", "card": "fancy"}))
            )
            .is_err()
        );
        let key = "R0UT1NGKEY0123456789abcdefABCDEF";
        assert!(validate("pagerduty", &map(json!({"routing_key": key}))).is_ok());
        assert!(validate("pagerduty", &map(json!({"routing_key": "short"}))).is_err());
        assert!(
            validate(
                "sms",
                &map(json!({"url": "https://x", "account": "AC1", "from": "+1", "to": "+2, +3"}))
            )
            .is_ok()
        );
    }
}
