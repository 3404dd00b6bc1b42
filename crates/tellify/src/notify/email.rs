//! `email` channels: messages with a plain-text and an HTML part (or text only), sent through
//! the server's SMTP settings with lettre — implicit TLS, STARTTLS or none; password or no
//! authentication. TLS always verifies the server; `ca_file` adds a private CA to trust.

use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tellify_core::subscription::MessageFormat;
use tellify_core::template::Templates;

use super::channel::{Check, Secret, deserialize_recipients};
use super::pool::Pool;
use super::{Notification, Notifier, NotifyError, message};

/// How long lettre waits on each step of a conversation (connecting, each command's answer).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one message may take from connecting to the server's last answer. lettre's step
/// timeout does not cover everything (a TLS handshake with a server that never answers, a
/// server that trickles its answers), and the settings check answers a waiting admin, so the
/// whole send is bounded too; under the worker's 30-second limit on a send.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Implicit TLS (usually port 465).
    Tls,
    /// Plain, then STARTTLS (usually 587); refuses a server that does not offer it.
    Starttls,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    Password,
    None,
}

/// The server's SMTP settings (`smtp:` in the config file, `/api/v1/config/smtp`). They are
/// also the key of the kept connection: a change of any of them connects afresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub from_addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_name: Option<String>,
    #[serde(default = "default_encryption")]
    pub encryption: Encryption,
    #[serde(default = "default_auth")]
    pub auth: Auth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Write-only; sealed at rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A PEM file of a CA to trust besides the system's (a private mail server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

fn default_port() -> u16 {
    587
}
fn default_encryption() -> Encryption {
    Encryption::Starttls
}
fn default_auth() -> Auth {
    Auth::None
}

impl SmtpSettings {
    pub fn check(&self) -> Result<(), String> {
        if self.host.trim().is_empty() {
            return Err("`host` is required".into());
        }
        self.from_addr
            .parse::<lettre::Address>()
            .map_err(|e| format!("`from_addr`: {e}"))?;
        if self.auth == Auth::Password && (self.username.is_none() || self.password.is_none()) {
            return Err("`auth: password` needs `username` and `password`".into());
        }
        Ok(())
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, NotifyError> {
        let tls = || -> Result<TlsParameters, NotifyError> {
            let mut b = TlsParameters::builder(self.host.clone());
            if let Some(path) = &self.ca_file {
                let pem = std::fs::read(path)
                    .map_err(|e| NotifyError::permanent(format!("cannot read ca_file: {e}")))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| NotifyError::permanent(format!("ca_file: {e}")))?;
                b = b.add_root_certificate(cert);
            }
            b.build()
                .map_err(|e| NotifyError::permanent(format!("TLS settings: {e}")))
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .timeout(Some(STEP_TIMEOUT));
        builder = match self.encryption {
            Encryption::Tls => builder.tls(Tls::Wrapper(tls()?)),
            Encryption::Starttls => builder.tls(Tls::Required(tls()?)),
            Encryption::None => builder.tls(Tls::None),
        };
        if self.auth == Auth::Password
            && let (Some(u), Some(p)) = (&self.username, &self.password)
        {
            builder = builder.credentials(Credentials::new(u.clone(), p.expose().to_owned()));
        }
        Ok(builder.build())
    }

    /// Sends one message on a connection of its own: the check of new settings. Failed logins
    /// and transient errors are retried (a wrong password gets fixed); a permanent refusal of
    /// the message is not.
    pub async fn send(
        &self,
        to: &[String],
        subject: &str,
        text: String,
        html: Option<String>,
    ) -> Result<(), NotifyError> {
        let message = self.message(to, subject, text, html)?;
        deliver(&self.transport()?, message).await
    }

    /// One message from these settings' sender.
    fn message(
        &self,
        to: &[String],
        subject: &str,
        text: String,
        html: Option<String>,
    ) -> Result<Message, NotifyError> {
        let from_addr = self
            .from_addr
            .parse()
            .map_err(|e| NotifyError::permanent(format!("from_addr: {e}")))?;
        let mut b = Message::builder()
            .from(Mailbox::new(self.from_name.clone(), from_addr))
            .subject(subject);
        for addr in to {
            let mailbox: Mailbox = addr
                .parse()
                .map_err(|e| NotifyError::permanent(format!("`{addr}`: {e}")))?;
            b = b.to(mailbox);
        }
        match html {
            Some(html) => b.multipart(MultiPart::alternative_plain_html(text, html)),
            None => b.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text),
            ),
        }
        .map_err(|e| NotifyError::permanent(format!("cannot build the message: {e}")))
    }
}

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// Sends `message` through `transport`, in [`SEND_TIMEOUT`] at most.
async fn deliver(transport: &Transport, message: Message) -> Result<(), NotifyError> {
    let sent = tokio::time::timeout(SEND_TIMEOUT, transport.send(message))
        .await
        .map_err(|_| {
            NotifyError::retry(format!(
                "SMTP: timed out after {} s (connecting, TLS, login or sending): does the server answer SMTP with this `encryption`?",
                SEND_TIMEOUT.as_secs(),
            ))
        })?;
    sent.map(drop).map_err(|e| {
        // A permanent refusal of the message (a 5xx such as an unknown recipient) will
        // not change; everything else, including a failed login, may be fixed.
        let auth = e.to_string().contains("535");
        if e.is_permanent() && !auth {
            NotifyError::permanent(format!("SMTP: {e}"))
        } else if e.is_timeout() {
            NotifyError::retry(format!("SMTP: timed out: {e}"))
        } else {
            NotifyError::retry(format!("SMTP: {e}"))
        }
    })
}

/// An `email` channel's settings; the server's SMTP settings say how mail is sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The recipients' addresses: a list, or one string with commas.
    #[serde(deserialize_with = "deserialize_recipients")]
    pub to: Vec<String>,
    /// `html` (a text and an HTML part, the default) or `text`; a subscription's `format`
    /// wins over it.
    #[serde(default)]
    pub format: Option<Format>,
}

/// The parts of a channel's email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Html,
    Text,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        if let Some(bad) = self.to.iter().find(|a| !a.contains('@')) {
            return Err(format!("`to`: `{bad}` is not an email address"));
        }
        Ok(())
    }
}

/// The server's SMTP settings with the password opened, shared with the API that changes them.
pub type SharedSmtp = Arc<RwLock<Option<SmtpSettings>>>;

/// SMTP transports kept per SMTP settings: each keeps its connection for the next message
/// (lettre's pool, which also checks an idle connection before using it).
pub type Transports = Arc<Pool<SmtpSettings, Transport>>;

pub struct Email {
    pub smtp: SharedSmtp,
    pub transports: Transports,
    pub settings: Settings,
}

/// The HTML layout, compiled once (`email.html` names it so its values are escaped).
static HTML: LazyLock<Result<Templates, String>> = LazyLock::new(|| {
    Templates::compile([("email.html".to_owned(), include_str!("email.html"))])
        .map_err(|e| e.to_string())
});

/// The HTML part: the same facts as the text, laid out for a mail reader, every value escaped.
pub fn html(n: &Notification) -> Result<String, String> {
    let t = HTML.as_ref().map_err(Clone::clone)?;
    let alerts: Vec<Value> = n
        .alerts
        .iter()
        .map(|a| {
            serde_json::json!({
                "alert": a,
                "facts": Notification::facts(a),
                "colour": match a.severity.as_str() { "critical" => "#b00020", "error" => "#d9480f", "warning" => "#e8a300", _ => "#1c7ed6" },
            })
        })
        .collect();
    let ctx = tellify_core::template::to_value(serde_json::json!({
        "title": n.title(), "trigger": message::trigger_word(n.trigger), "digest": n.digest, "alerts": alerts,
    }));
    Ok(t.render("email.html", &ctx)?.unwrap_or_default())
}

#[async_trait::async_trait]
impl Notifier for Email {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let smtp = self
            .smtp
            .read()
            .map_err(|_| NotifyError::retry("SMTP settings unavailable"))?
            .clone()
            .ok_or_else(|| {
                NotifyError::retry("the server has no SMTP settings (PUT /api/v1/config/smtp)")
            })?;
        // The subscription's format wins over the channel's; html (text + HTML parts) by default.
        // A subscription's template defines the whole text, so such a message has no HTML part.
        let templated = n.template.is_some().then_some(MessageFormat::Text);
        let format = match (n.format, templated) {
            (Some(MessageFormat::Short), _) => MessageFormat::Short,
            (_, Some(text)) => text,
            (Some(f), None) => f,
            (None, None) => match self.settings.format {
                Some(Format::Text) => MessageFormat::Text,
                _ => MessageFormat::Html,
            },
        };
        let to = &self.settings.to;
        let message = match format {
            MessageFormat::Html => smtp.message(
                to,
                &n.title(),
                n.text(),
                Some(html(n).map_err(NotifyError::permanent)?),
            )?,
            MessageFormat::Text => smtp.message(to, &n.title(), n.text(), None)?,
            // For a pager or a phone's mail: the one line as subject and body.
            MessageFormat::Short => smtp.message(to, &n.short(), n.short(), None)?,
        };
        self.transports
            .send(
                &smtp,
                || async { smtp.transport() },
                |transport| {
                    let message = message.clone();
                    async move { deliver(&transport, message).await }
                },
            )
            .await
    }
}
