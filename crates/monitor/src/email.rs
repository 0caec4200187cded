//! The e-mail channel: a notification as a message with a plain-text and an HTML part (the
//! seed's severity colours), written to the outbox like every other channel, and sent over SMTP
//! by the worker with `lettre` — upgraded with STARTTLS when the receiver asks for it, and then
//! never sent in the clear.
//!
//! The outbox row is self-contained: its payload holds the server, the addresses and both
//! bodies ([`Email`]), so a row written before a reload or a restart is sent where it was
//! addressed. With `username` and `password_file` it logs in (SMTP AUTH, only over STARTTLS);
//! the row keeps the file's path, never the password, which is read at each send.

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::channels::{colour, lines, severity_colour, status_str, title, RESOLVED_COLOUR};
use crate::manager::{Notification, Status};

/// One message as the outbox keeps it (the row's payload, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// The SMTP server, `host:port`.
    pub smtp: String,
    /// Upgrade with STARTTLS (required: no STARTTLS offered, nothing sent).
    pub starttls: bool,
    /// A PEM file of CA certificates to trust besides the system's.
    pub ca: Option<String>,
    /// The SMTP user to log in as, if any.
    #[serde(default)]
    pub username: Option<String>,
    /// The file holding its password (the path, not the password).
    #[serde(default)]
    pub password_file: Option<String>,
    /// The sender.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// The subject: status, alert name, count.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part.
    pub html: String,
}

/// What a failed send came to: the error, and whether retrying cannot help.
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) error: String,
    pub(crate) permanent: bool,
}

impl Email {
    /// The message for `note`, to the receiver's `email` settings; `date` dates the alerts.
    pub fn of(
        note: &Notification,
        email: &sekisho_config::EmailReceiver,
        date: &dyn Fn(std::time::Instant) -> String,
    ) -> Self {
        let subject = format!("sekisho {}", title(note));
        let text = format!(
            "{subject}\n\n{}\n\nstarted: {}\ngroup: {}\n",
            lines(note),
            note.alerts
                .iter()
                .map(|a| date(a.starts_at))
                .collect::<Vec<_>>()
                .join(", "),
            note.group_key
        );
        Self {
            smtp: email.smtp.clone(),
            starttls: email.starttls,
            ca: email.ca.clone(),
            username: email.username.clone(),
            password_file: email.password_file.clone(),
            from: email.from.clone(),
            to: email.to.clone(),
            html: html(note, &subject, date),
            subject,
            text,
        }
    }

    /// Sends the message over SMTP (STARTTLS when asked), within `timeout` per step.
    pub(crate) async fn send(&self, timeout: std::time::Duration) -> Result<(), SendError> {
        let permanent = |error: String| SendError {
            error,
            permanent: true,
        };
        let message = self.message().map_err(permanent)?;
        let Some((host, port)) = self
            .smtp
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        else {
            return Err(permanent(format!("`{}` is not host:port", self.smtp)));
        };
        // Not `relay()`: that one always wants TLS on port 465/587 conventions; the receiver's
        // own `starttls` decides here.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(timeout));
        if self.starttls {
            let mut parameters = TlsParameters::builder(host.to_owned());
            if let Some(ca) = &self.ca {
                let pem = tokio::fs::read(ca)
                    .await
                    .map_err(|e| permanent(format!("cannot read the CA file `{ca}`: {e}")))?;
                let certificate = Certificate::from_pem(&pem)
                    .map_err(|e| permanent(format!("the CA file `{ca}`: {e}")))?;
                parameters = parameters.add_root_certificate(certificate);
            }
            let parameters = parameters
                .build()
                .map_err(|e| permanent(format!("TLS settings: {e}")))?;
            builder = builder.tls(Tls::Required(parameters));
            if let (Some(user), Some(file)) = (&self.username, &self.password_file) {
                // Read at each send: a rotated secret is used at once. A missing file is worth
                // retrying (a secret being mounted), so not permanent.
                let password = tokio::fs::read_to_string(file)
                    .await
                    .map_err(|e| SendError {
                        error: format!("cannot read the SMTP password file `{file}`: {e}"),
                        permanent: false,
                    })?;
                let password = password.lines().next().unwrap_or_default().to_owned();
                builder = builder.credentials(Credentials::new(user.clone(), password));
            }
        }
        let transport = builder.build();
        match transport.send(message).await {
            Ok(_) => Ok(()),
            Err(error) => {
                // A refused login (530, 534, 535, 538) is a secret to fix, after which the
                // message must still go: retried. Any other 5xx answer (a recipient refused,
                // …) will not change on a retry.
                let login_refused = error.status().is_some_and(|code| {
                    matches!(code.to_string().as_str(), "530" | "534" | "535" | "538")
                });
                Err(SendError {
                    permanent: error.is_permanent() && !login_refused,
                    error: crate::error_chain(&error),
                })
            }
        }
    }

    fn message(&self) -> Result<Message, String> {
        let mailbox = |text: &str| -> Result<Mailbox, String> {
            text.parse::<Mailbox>()
                .map_err(|e| format!("`{text}` is not an e-mail address: {e}"))
        };
        let mut builder = Message::builder()
            .from(mailbox(&self.from)?)
            .subject(self.subject.clone());
        for to in &self.to {
            builder = builder.to(mailbox(to)?);
        }
        builder
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(self.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(self.html.clone()),
                    ),
            )
            .map_err(|e| format!("cannot build the message: {e}"))
    }
}

/// The HTML part: a bar in the notification's colour, then one row per alert with its severity
/// in that severity's colour (green once resolved), its target, summary, runbook and
/// fingerprint.
fn html(note: &Notification, subject: &str, date: &dyn Fn(std::time::Instant) -> String) -> String {
    let mut rows = String::new();
    for alert in &note.alerts {
        let (badge, label) = match alert.status {
            Status::Resolved => (RESOLVED_COLOUR, "resolved".to_owned()),
            Status::Firing => (
                severity_colour(alert.severity),
                alert.severity.as_str().to_owned(),
            ),
        };
        let field = |name: &str| alert.labels.get(name).map_or("", String::as_str);
        let annotation = |name: &str| alert.annotations.get(name).map_or("", String::as_str);
        let runbook = match alert.annotations.get("runbook_url") {
            Some(url) => format!("<a href=\"{}\">runbook</a>", escape(url)),
            None => String::new(),
        };
        rows.push_str(&format!(
            "<tr><td style=\"background:#{badge:06X};color:#fff;padding:4px 8px;font-weight:bold\">{}</td>\
             <td style=\"padding:4px 8px\">{}</td><td style=\"padding:4px 8px\">{}</td>\
             <td style=\"padding:4px 8px\">{}</td><td style=\"padding:4px 8px\">{}</td>\
             <td style=\"padding:4px 8px\">{runbook}</td>\
             <td style=\"padding:4px 8px;font-family:monospace\">{}</td></tr>\n",
            escape(&label),
            escape(field("alertname")),
            escape(field("target")),
            escape(annotation("summary")),
            escape(&date(alert.starts_at)),
            escape(&alert.fingerprint),
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html><body style=\"font-family:sans-serif\">\n\
         <div style=\"border-left:8px solid #{:06X};padding:8px 12px\">\n\
         <h2 style=\"margin:0 0 8px 0\">{}</h2>\n\
         <p>Status: <b>{}</b> · group <code>{}</code></p>\n\
         <table style=\"border-collapse:collapse\">\n\
         <tr><th align=\"left\">severity</th><th align=\"left\">alert</th><th align=\"left\">target</th>\
         <th align=\"left\">summary</th><th align=\"left\">since</th><th align=\"left\"></th>\
         <th align=\"left\">fingerprint</th></tr>\n{rows}</table>\n</div>\n</body></html>\n",
        colour(note),
        escape(subject),
        status_str(note.status),
        escape(&note.group_key),
    )
}

/// Text for HTML: the five characters that matter.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::manager::{NotifiedAlert, Severity};

    fn note(status: Status) -> Notification {
        Notification {
            receiver: "ops".to_owned(),
            group_key: "{}:{alertname=\"HighCpu\"}".to_owned(),
            status,
            alerts: vec![NotifiedAlert {
                fingerprint: "00ff00ff00ff00ff".to_owned(),
                labels: [
                    ("alertname".to_owned(), "HighCpu".to_owned()),
                    ("target".to_owned(), "<gateway>".to_owned()),
                ]
                .into(),
                annotations: [("summary".to_owned(), "CPU & more".to_owned())].into(),
                severity: Severity::Critical,
                status,
                starts_at: std::time::Instant::now(),
                ends_at: None,
            }],
        }
    }

    fn settings() -> sekisho_config::EmailReceiver {
        sekisho_config::EmailReceiver {
            smtp: "127.0.0.1:25".to_owned(),
            from: "Sekisho <sekisho@example.com>".to_owned(),
            to: vec!["ops@example.com".to_owned()],
            starttls: false,
            ca: None,
            username: None,
            password_file: None,
        }
    }

    #[test]
    fn a_firing_message_is_coloured_by_severity_and_escaped() {
        let email = Email::of(&note(Status::Firing), &settings(), &|_| {
            "2026-12-03T00:00:00Z".to_owned()
        });
        assert_eq!(email.subject, "sekisho [FIRING] HighCpu (1 alert)");
        assert!(email.html.contains("#FF0000"), "{}", email.html);
        assert!(email.html.contains("&lt;gateway&gt;") && email.html.contains("CPU &amp; more"));
        assert!(email.text.contains("00ff00ff00ff00ff") && email.text.contains("<gateway>"));
        let resolved = Email::of(&note(Status::Resolved), &settings(), &|_| String::new());
        assert!(resolved.html.contains("#2EB67D") && !resolved.html.contains("#FF0000"));
        let message = String::from_utf8(email.message().unwrap().formatted()).unwrap();
        assert!(message.contains("multipart/alternative"), "{message}");
        assert!(message.contains("text/plain") && message.contains("text/html"));
    }

    #[test]
    fn a_bad_address_is_a_permanent_failure() {
        let mut email = Email::of(&note(Status::Firing), &settings(), &|_| String::new());
        email.to = vec!["not an address".to_owned()];
        assert!(email
            .message()
            .unwrap_err()
            .contains("not an e-mail address"));
    }
}
