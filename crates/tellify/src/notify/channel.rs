//! Channel kinds: which settings are secrets, how settings are sealed for storage and shown,
//! and [`Settings`], each kind's settings parsed into its typed struct (which builds its
//! notifier).
//!
//! Secrets (webhook URLs, routing keys, tokens, passwords) are write-only: a read shows
//! `"***"`, and an update that leaves one out or sends `"***"` keeps the stored value.
//! [`Secrets`] is that rule, used for channels and for the SMTP settings alike.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    Notifier, Senders, amqp, email, kafka, mqtt, nats, pagerduty, redis, slack, sms, teams, webhook,
};
use crate::crypto::SecretBox;

/// What is shown instead of a secret.
pub const HIDDEN: &str = "***";

/// Where write-only secrets sit in a settings object, and the one way they are kept across
/// updates, sealed for storage, hidden from reads and opened for sending.
pub struct Secrets {
    /// Settings whose value is a secret.
    pub fields: &'static [&'static str],
    /// Settings holding an object whose every value is a secret (webhook `headers`: the
    /// header names are shown, their values are not).
    pub maps: &'static [&'static str],
}

impl Secrets {
    /// Fills the secrets an update keeps into `new`, from `stored` (the stored settings,
    /// opened): a secret left out or sent as `***` takes its stored value, and so does each
    /// entry of a secret map sent as `***` (the other entries are as sent; a map sent whole
    /// as `***` keeps the stored map). `null` removes a secret. `***` where nothing is stored
    /// is refused, since there is nothing to keep.
    pub fn keep(
        &self,
        new: &mut Map<String, Value>,
        stored: Option<&Map<String, Value>>,
    ) -> Result<(), String> {
        let nothing =
            |f: &str| format!("`{f}` is `***` but nothing is stored: send the secret itself");
        for &field in self.fields {
            let old = stored.and_then(|s| s.get(field)).filter(|v| v.is_string());
            match new.get(field) {
                None => {
                    if let Some(old) = old {
                        new.insert(field.to_owned(), old.clone());
                    }
                }
                Some(Value::String(s)) if s == HIDDEN => {
                    let old = old.ok_or_else(|| nothing(field))?;
                    new.insert(field.to_owned(), old.clone());
                }
                Some(Value::Null) => {
                    new.remove(field);
                }
                // Anything else is the new value (and checked as such).
                Some(_) => {}
            }
        }
        for &field in self.maps {
            let old = stored.and_then(|s| s.get(field)).and_then(Value::as_object);
            match new.get_mut(field) {
                None => {
                    if let Some(old) = old {
                        new.insert(field.to_owned(), Value::Object(old.clone()));
                    }
                }
                Some(Value::String(s)) if s == HIDDEN => {
                    let old = old.ok_or_else(|| nothing(field))?;
                    new.insert(field.to_owned(), Value::Object(old.clone()));
                }
                Some(Value::Null) => {
                    new.remove(field);
                }
                Some(Value::Object(entries)) => {
                    for (name, value) in entries.iter_mut() {
                        if value != HIDDEN {
                            continue;
                        }
                        // Header names are case-insensitive: `authorization` keeps `Authorization`.
                        let kept = old.and_then(|o| {
                            o.get(name).or_else(|| {
                                o.iter()
                                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                                    .map(|(_, v)| v)
                            })
                        });
                        *value = kept
                            .filter(|v| v.is_string())
                            .cloned()
                            .ok_or_else(|| nothing(&format!("{field}.{name}")))?;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Settings as stored: every secret (given plain) sealed with the server key.
    pub fn seal(&self, mut settings: Map<String, Value>, keys: &SecretBox) -> Map<String, Value> {
        let seal = |v: &mut Value| {
            if let Value::String(plain) = v {
                *v = Value::String(keys.seal(plain));
            }
        };
        for &field in self.fields {
            if let Some(v) = settings.get_mut(field) {
                seal(v);
            }
        }
        for &field in self.maps {
            if let Some(Value::Object(entries)) = settings.get_mut(field) {
                entries.values_mut().for_each(seal);
            }
        }
        settings
    }

    /// Settings as shown: every secret replaced by `***`.
    pub fn hide(&self, mut settings: Map<String, Value>) -> Map<String, Value> {
        let hidden = || Value::String(HIDDEN.into());
        for &field in self.fields {
            if let Some(v) = settings.get_mut(field).filter(|v| !v.is_null()) {
                *v = hidden();
            }
        }
        for &field in self.maps {
            match settings.get_mut(field) {
                Some(Value::Object(entries)) => entries.values_mut().for_each(|v| *v = hidden()),
                Some(v) if !v.is_null() => *v = hidden(),
                _ => {}
            }
        }
        settings
    }

    /// Settings as used: every sealed secret opened. A secret map that is not an object
    /// (what an older version could store for `"headers": "***"`) is dropped.
    pub fn open(
        &self,
        mut settings: Map<String, Value>,
        keys: &SecretBox,
    ) -> anyhow::Result<Map<String, Value>> {
        let open = |v: &mut Value| -> anyhow::Result<()> {
            if let Some(s) = v.as_str().filter(|s| SecretBox::is_sealed(s)) {
                *v = Value::String(keys.open(s)?);
            }
            Ok(())
        };
        for &field in self.fields {
            if let Some(v) = settings.get_mut(field) {
                open(v)?;
            }
        }
        for &field in self.maps {
            match settings.get_mut(field) {
                Some(Value::Object(entries)) => {
                    for v in entries.values_mut() {
                        open(v)?;
                    }
                }
                Some(_) => {
                    settings.remove(field);
                }
                None => {}
            }
        }
        Ok(settings)
    }
}

/// A secret setting's value, opened. It does not print (`Debug` shows `***`), so a settings
/// struct can be logged or put in an error without leaking it; [`Secret::expose`] is the one
/// way to the value, where it is sent.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(HIDDEN)
    }
}

/// One kind of channel: its name and where its secrets sit. Its settings are the struct of
/// its module (`webhook::Settings`, …), parsed by [`Settings::parse`].
pub struct Kind {
    pub name: &'static str,
    pub secrets: Secrets,
}

const fn secrets(fields: &'static [&'static str]) -> Secrets {
    Secrets { fields, maps: &[] }
}

pub const KINDS: &[Kind] = &[
    Kind {
        name: "webhook",
        secrets: Secrets {
            fields: &["url", "secret"],
            maps: &["headers"],
        },
    },
    Kind {
        name: "slack",
        secrets: secrets(&["webhook_url"]),
    },
    Kind {
        name: "teams",
        secrets: secrets(&["webhook_url"]),
    },
    Kind {
        name: "pagerduty",
        secrets: secrets(&["routing_key"]),
    },
    Kind {
        name: "sms",
        secrets: secrets(&["token"]),
    },
    Kind {
        name: "email",
        secrets: secrets(&[]),
    },
    // A broker URL may carry credentials, so it is a secret.
    Kind {
        name: "nats",
        secrets: secrets(&["url"]),
    },
    Kind {
        name: "redis",
        secrets: secrets(&["url"]),
    },
    Kind {
        name: "mqtt",
        secrets: secrets(&["url", "password"]),
    },
    Kind {
        name: "amqp",
        secrets: secrets(&["url"]),
    },
    // Kafka credentials are separate settings, so its broker list is not a secret.
    Kind {
        name: "kafka",
        secrets: secrets(&["password"]),
    },
];

pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// A channel's settings, parsed and checked: the struct of its kind. Parsed when a channel is
/// saved (so a mistake is a `400` then, not a dead delivery later) and again, from the stored
/// settings with their secrets opened, each time the channel sends.
#[derive(Debug)]
pub enum Settings {
    Webhook(webhook::Settings),
    Slack(slack::Settings),
    Teams(teams::Settings),
    PagerDuty(pagerduty::Settings),
    Sms(sms::Settings),
    Email(email::Settings),
    Nats(nats::Settings),
    Redis(redis::Settings),
    Mqtt(mqtt::Settings),
    Amqp(amqp::Settings),
    Kafka(kafka::Settings),
}

/// What a kind's settings struct adds to its serde shape.
pub trait Check {
    /// The checks serde cannot express (a URL's scheme, a key's length, …).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Settings {
    /// Parses `settings` (everything but `name`, `kind`, `shared`) as a `kind` channel's. The
    /// error names the setting at fault.
    pub fn parse(kind_name: &str, settings: &Map<String, Value>) -> Result<Self, String> {
        Ok(match kind_name {
            "webhook" => Self::Webhook(typed(settings)?),
            "slack" => Self::Slack(typed(settings)?),
            "teams" => Self::Teams(typed(settings)?),
            "pagerduty" => Self::PagerDuty(typed(settings)?),
            "sms" => Self::Sms(typed(settings)?),
            "email" => Self::Email(typed(settings)?),
            "nats" => Self::Nats(typed(settings)?),
            "redis" => Self::Redis(typed(settings)?),
            "mqtt" => Self::Mqtt(typed(settings)?),
            "amqp" => Self::Amqp(typed(settings)?),
            "kafka" => Self::Kafka(typed(settings)?),
            _ => {
                let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
                return Err(format!(
                    "`kind`: `{kind_name}` is not one of {}",
                    names.join(", ")
                ));
            }
        })
    }

    /// The notifier that sends with these settings, through the server's shared clients.
    pub fn notifier(self, senders: &Senders) -> Box<dyn Notifier> {
        match self {
            Self::Webhook(settings) => Box::new(webhook::Webhook {
                http: senders.http.clone(),
                settings,
            }),
            Self::Slack(settings) => Box::new(slack::Slack {
                http: senders.http.clone(),
                settings,
            }),
            Self::Teams(settings) => Box::new(teams::Teams {
                http: senders.http.clone(),
                settings,
            }),
            Self::PagerDuty(settings) => Box::new(pagerduty::PagerDuty {
                http: senders.http.clone(),
                settings,
            }),
            Self::Sms(settings) => Box::new(sms::Sms {
                http: senders.http.clone(),
                settings,
            }),
            Self::Email(settings) => Box::new(email::Email {
                smtp: senders.smtp.clone(),
                transports: senders.smtp_transports.clone(),
                settings,
            }),
            Self::Nats(settings) => Box::new(nats::Nats {
                clients: senders.nats.clone(),
                settings,
            }),
            Self::Redis(settings) => Box::new(redis::Redis {
                clients: senders.redis.clone(),
                settings,
            }),
            Self::Mqtt(settings) => Box::new(mqtt::Mqtt {
                clients: senders.mqtt.clone(),
                settings,
            }),
            Self::Amqp(settings) => Box::new(amqp::Amqp {
                clients: senders.amqp.clone(),
                settings,
            }),
            Self::Kafka(settings) => Box::new(kafka::Kafka {
                clients: senders.kafka.clone(),
                settings,
            }),
        }
    }
}

/// Deserializes and checks one kind's settings; serde refuses unknown settings (each struct
/// denies them) and missing or mistyped ones, and the message names the setting.
fn typed<T: DeserializeOwned + Check>(settings: &Map<String, Value>) -> Result<T, String> {
    let parsed: T =
        serde_path_to_error::deserialize(Value::Object(settings.clone())).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path == "." || inner.contains(&format!("`{path}`")) {
                inner
            } else {
                format!("`{path}`: {inner}")
            }
        })?;
    parsed.check()?;
    Ok(parsed)
}

/// A required string setting must not be empty.
pub fn required(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("`{field}` must not be empty"));
    }
    Ok(())
}

/// Checks a channel's settings (everything but `name`, `kind`, `shared`) for its kind.
pub fn validate(kind_name: &str, settings: &Map<String, Value>) -> Result<(), String> {
    Settings::parse(kind_name, settings).map(drop)
}

/// A broker URL must have one of its client's schemes.
pub fn check_scheme(url: &str, schemes: &[&str]) -> Result<(), String> {
    if !schemes.iter().any(|s| url.starts_with(s)) {
        return Err(format!("`url` must start with {}", schemes.join(" or ")));
    }
    Ok(())
}

/// Checks an http(s) URL setting. One that is not a secret is shown on reads, so it may not
/// carry credentials (`https://user:password@…`).
pub fn check_url(u: &str, field: &str, secret: bool) -> Result<(), String> {
    let bad = || format!("`{field}` must be an http:// or https:// URL");
    let url = reqwest::Url::parse(u).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(bad());
    }
    if !secret && (!url.username().is_empty() || url.password().is_some()) {
        return Err(format!(
            "`{field}` must not carry credentials (it is shown on reads)"
        ));
    }
    Ok(())
}

/// Headers Tellify sets itself, or that would break the request's framing.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "idempotency-key",
    "x-tellify-signature",
];

/// Webhook headers: each name an HTTP token, each value a string an HTTP header may hold
/// (no CR, LF or other control characters), so nothing can be smuggled into the request.
pub fn check_headers(headers: &BTreeMap<String, Secret>) -> Result<(), String> {
    if headers.len() > 50 {
        return Err("`headers`: at most 50 headers".into());
    }
    for (name, value) in headers {
        let value = value.expose();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!(
                "`headers`: {name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
            ));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!("`headers`: {name:?} is set by Tellify itself"));
        }
        // The value is a secret: say what is wrong with it, never what it is.
        if value.len() > 8192 || reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(format!(
                "`headers`: the value of {name:?} must be up to 8 KiB without CR, LF or other control characters"
            ));
        }
    }
    Ok(())
}

/// Deserializes a list of recipients (see [`recipients`]).
pub fn deserialize_recipients<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    let v = Value::deserialize(d)?;
    recipients(Some(&v)).map_err(serde::de::Error::custom)
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

/// New settings of a kind made whole and checked: the secrets the update keeps are filled in
/// from `stored` (the stored settings of the same kind, opened; see [`Secrets::keep`]), then
/// everything is checked as plain values. The result is plain: [`seal`] it to store it.
pub fn resolve(
    kind_name: &str,
    mut new: Map<String, Value>,
    stored: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, String> {
    if let Some(kind) = kind(kind_name) {
        kind.secrets.keep(&mut new, stored)?;
    }
    validate(kind_name, &new)?;
    Ok(new)
}

/// Settings as stored: the kind's secrets sealed.
pub fn seal(kind_name: &str, settings: Map<String, Value>, keys: &SecretBox) -> Map<String, Value> {
    match kind(kind_name) {
        Some(kind) => kind.secrets.seal(settings, keys),
        None => settings,
    }
}

/// Settings as shown: every secret replaced by `***`.
pub fn hide(kind_name: &str, settings: Map<String, Value>) -> Map<String, Value> {
    match kind(kind_name) {
        Some(kind) => kind.secrets.hide(settings),
        None => settings,
    }
}

/// Settings with every secret opened, for sending.
pub fn open(
    kind_name: &str,
    settings: Map<String, Value>,
    keys: &SecretBox,
) -> anyhow::Result<Map<String, Value>> {
    match kind(kind_name) {
        Some(kind) => kind.secrets.open(settings, keys),
        None => Ok(settings),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    /// What `PUT` does: resolve against the stored settings (opened), then seal.
    fn put(
        kind: &str,
        new: Value,
        stored: Option<&Map<String, Value>>,
        keys: &SecretBox,
    ) -> Result<Map<String, Value>, String> {
        let opened = stored.map(|s| open(kind, s.clone(), keys).expect("opens"));
        resolve(kind, map(new), opened.as_ref()).map(|plain| seal(kind, plain, keys))
    }

    #[test]
    fn secrets_are_sealed_hidden_kept_and_opened() {
        let keys = SecretBox::from_key([1u8; 32]);
        let first = put(
            "webhook",
            json!({"url": "https://h.example/x", "secret": "s1", "headers": {"Authorization": "Bearer t"}}),
            None,
            &keys,
        )
        .expect("valid");
        assert!(SecretBox::is_sealed(first["url"].as_str().expect("url")));
        assert_eq!(
            hide("webhook", first.clone()),
            map(json!({"url": "***", "secret": "***", "headers": {"Authorization": "***"}}))
        );
        // An update that sends *** or leaves a secret out keeps it; per header too.
        let second = put(
            "webhook",
            json!({"url": "***", "headers": {"authorization": "***", "X-Env": "prod"}}),
            Some(&first),
            &keys,
        )
        .expect("valid");
        let opened = open("webhook", second.clone(), &keys).expect("opens");
        assert_eq!(opened["url"], "https://h.example/x");
        assert_eq!(opened["secret"], "s1");
        assert_eq!(
            opened["headers"],
            json!({"authorization": "Bearer t", "X-Env": "prod"})
        );
        // `"headers": "***"` keeps them all; `null` removes a secret.
        let third = put(
            "webhook",
            json!({"url": "***", "headers": "***", "secret": null}),
            Some(&second),
            &keys,
        )
        .expect("valid");
        let opened = open("webhook", third, &keys).expect("opens");
        assert_eq!(
            opened["headers"],
            json!({"authorization": "Bearer t", "X-Env": "prod"})
        );
        assert!(opened.get("secret").is_none());
        // *** with nothing stored is refused, not saved as nothing.
        for new in [
            json!({"url": "***"}),
            json!({"url": "https://x.example", "headers": "***"}),
            json!({"url": "https://x.example", "headers": {"X-Key": "***"}}),
        ] {
            let err = put("webhook", new.clone(), None, &keys).expect_err("nothing to keep");
            assert!(err.contains("nothing is stored"), "{new}: {err}");
        }
        // A stored value that was never sealed (older versions) still opens as itself.
        let legacy = map(json!({"url": "https://old.example", "headers": "***"}));
        let opened = open("webhook", legacy, &keys).expect("opens");
        assert_eq!(opened["url"], "https://old.example");
        assert!(
            opened.get("headers").is_none(),
            "a broken header map is dropped"
        );
    }

    #[test]
    fn webhook_headers_cannot_smuggle_anything_into_the_request() {
        let ok = |h: Value| {
            validate(
                "webhook",
                &map(json!({"url": "https://x.example", "headers": h})),
            )
        };
        assert!(ok(json!({"Authorization": "Bearer t", "X-Env": "prod ü"})).is_ok());
        for (headers, says) in [
            (json!({"X-A": "v\r\nX-Evil: 1"}), "X-A"),
            (json!({"X-A": "v\n"}), "X-A"),
            (json!({"X-A": "v\u{0}"}), "X-A"),
            (json!({"X-A\r\nX-Evil": "v"}), "not an HTTP header name"),
            (json!({"X A": "v"}), "not an HTTP header name"),
            (json!({"": "v"}), "not an HTTP header name"),
            (json!({"Content-Length": "1"}), "set by Tellify"),
            (
                json!({"X-A": 1}),
                "`headers.X-A`: invalid type: integer `1`, expected a string",
            ),
        ] {
            let err = ok(headers.clone()).expect_err("refused");
            assert!(err.contains(says), "{headers}: {err}");
            assert!(!err.contains("Evil: 1"), "the value is not echoed: {err}");
        }
    }

    #[test]
    fn typed_settings_name_the_setting_at_fault_and_never_print_a_secret() {
        let err = validate(
            "webhook",
            &map(json!({"url": "https://x.example", "colour": "red"})),
        )
        .expect_err("unknown");
        assert!(err.contains("unknown field `colour`"), "{err}");
        let err =
            validate("redis", &map(json!({"url": "redis://h", "topic": 7}))).expect_err("mistyped");
        assert!(err.starts_with("`topic`:"), "{err}");
        let err = validate(
            "mqtt",
            &map(json!({"url": "mqtt://h", "topic": "t", "qos": 2})),
        )
        .expect_err("qos");
        assert!(err.contains("qos"), "{err}");
        let err = validate("kafka", &map(json!({"topic": "t"}))).expect_err("missing");
        assert!(err.contains("missing field `url`"), "{err}");
        // Debug of parsed settings shows every secret as ***.
        let parsed = Settings::parse(
            "webhook",
            &map(
                json!({"url": "https://hook.example/T0KEN", "secret": "s3cret",
                "headers": {"Authorization": "Bearer t0ken"}}),
            ),
        )
        .expect("valid");
        let shown = format!("{parsed:?}");
        for secret in ["T0KEN", "s3cret", "t0ken"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("Authorization") && shown.contains("***"),
            "{shown}"
        );
    }

    /// The secrets a read hides (`KINDS`) and the fields typed [`Secret`] are the same ones:
    /// each setting's value shows in the parsed settings' Debug exactly when reads show it.
    #[test]
    fn the_secrets_hidden_on_reads_are_the_fields_typed_secret() {
        let key = "R0UT1NGKEY0123456789abcdefABCDEF";
        let examples = [
            (
                "webhook",
                json!({"url": "https://u.example/S1", "secret": "S2", "body": "B3"}),
            ),
            ("slack", json!({"webhook_url": "https://hooks.example/S4"})),
            ("teams", json!({"webhook_url": "https://teams.example/S5"})),
            (
                "pagerduty",
                json!({"routing_key": key, "url": "https://pd.example/P6"}),
            ),
            (
                "sms",
                json!({"url": "https://sms.example/M7", "account": "AC8", "from": "+19",
                "token": "T10", "to": "+211"}),
            ),
            ("email", json!({"to": "ops@x.example"})),
            (
                "nats",
                json!({"url": "nats://u:N12@h:4222", "topic": "N13"}),
            ),
            ("redis", json!({"url": "redis://u:R14@h", "topic": "R15"})),
            (
                "mqtt",
                json!({"url": "mqtt://h:1883/M16", "topic": "M17", "username": "M18",
                "password": "M19"}),
            ),
            (
                "amqp",
                json!({"url": "amqp://u:A20@h/%2f", "topic": "A21", "exchange": "A22"}),
            ),
            (
                "kafka",
                json!({"url": "kafka://h:9092", "topic": "K23", "username": "K24",
                "password": "K25", "sasl_mechanism": "PLAIN", "ca_file": "/K26.pem"}),
            ),
        ];
        assert_eq!(examples.len(), KINDS.len(), "every kind has an example");
        for (kind, example) in examples {
            let example = map(example);
            let shown = format!("{:?}", Settings::parse(kind, &example).expect(kind));
            let hidden = hide(kind, example.clone());
            for (field, value) in &example {
                let value = value.as_str().expect("string settings");
                let secret = hidden[field] == HIDDEN;
                assert_eq!(
                    !shown.contains(value),
                    secret,
                    "{kind}.{field}: hidden on reads: {secret}; Debug: {shown}"
                );
            }
        }
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
        assert!(validate("webhook", &map(json!({"url": "***"}))).is_err());
        // A URL that is shown on reads may not carry credentials; a secret one may.
        assert!(validate("webhook", &map(json!({"url": "https://u:p@x.example"}))).is_ok());
        let key = "R0UT1NGKEY0123456789abcdefABCDEF";
        assert!(
            validate(
                "pagerduty",
                &map(json!({"routing_key": key, "url": "https://u:p@x.example"}))
            )
            .is_err()
        );
        assert!(
            validate(
                "kafka",
                &map(json!({"url": "kafka://u:p@h:9092", "topic": "t"}))
            )
            .expect_err("credentials")
            .contains("username")
        );
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
