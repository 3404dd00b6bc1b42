//! Email through a real SMTP server with STARTTLS and password authentication.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, Server};
use crate::smtp::SmtpServer;

fn settings(smtp: &SmtpServer, password: &str) -> serde_json::Value {
    json!({"host": "127.0.0.1", "port": smtp.port, "from_addr": "alerts@tellify.test", "from_name": "Tellify Alerts",
           "encryption": "starttls", "auth": "password", "username": "mailer", "password": password,
           "ca_file": smtp.ca.to_str().expect("path")})
}

#[tokio::test]
async fn email_goes_through_starttls_with_auth_with_html_and_text_parts() {
    let smtp = SmtpServer::start("mailer", "right-password");
    let mut server = Server::start().await;

    // A wrong password with test_addr: 422 with the SMTP error, and nothing saved.
    let mut bad = settings(&smtp, "wrong");
    bad["test_addr"] = json!("ops@tellify.test");
    let (status, body) = server.put_json(ADMIN, "/api/v1/config/smtp", &bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "smtp_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("535"),
        "{body}"
    );
    let (_, saved) = server.get(ADMIN, "/api/v1/config/smtp").await;
    assert_eq!(saved, json!({}));

    let mut good = settings(&smtp, "right-password");
    good["test_addr"] = json!("ops@tellify.test");
    let (status, body) = server.put_json(ADMIN, "/api/v1/config/smtp", &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["password"], "***");
    let test_mail = smtp.wait_for(1).await;
    assert_eq!(test_mail[0]["to"], json!(["ops@tellify.test"]));
    assert_eq!(test_mail[0]["tls"], true, "STARTTLS was used");

    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/mail",
            &json!({"kind": "email", "to": ["ann@tellify.test", "bob@tellify.test"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.rule(ADMIN, json!({"name": "disk", "source": "disk", "when": "event.pct > 90", "group_by": ["host"], "value": "event.pct",
        "severity": "critical", "summary": "{{ event.host }} <disk> at {{ event.pct }}%", "links": {"runbook": "https://runbooks.test/disk"},
        "notify": ["mail"]})).await;
    server
        .send(ADMIN, "disk", "text/plain", "host:cad01 pct:97")
        .await;
    server.settle().await;
    let mails = smtp.wait_for(2).await;
    let mail = &mails[1];
    assert_eq!(mail["to"], json!(["ann@tellify.test", "bob@tellify.test"]));
    assert_eq!(mail["from"], "alerts@tellify.test");
    let data = &crate::smtp::decode_qp(mail["data"].as_str().expect("data"));
    assert!(
        data.contains("Subject: [FIRING] disk: cad01 <disk> at 97%"),
        "{data}"
    );
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(data.contains("Content-Type: text/plain"), "{data}");
    assert!(data.contains("Content-Type: text/html"), "{data}");
    assert!(
        data.contains("cad01 &lt;disk&gt; at 97%"),
        "the HTML part escapes: {data}"
    );
    assert!(data.contains("https://runbooks.test/disk"), "{data}");
    assert!(
        data.contains("From: \"Tellify Alerts\" <alerts@tellify.test>")
            || data.contains("From: Tellify Alerts <alerts@tellify.test>"),
        "{data}"
    );

    // The password changes on the SMTP side: deliveries fail with the SMTP error, then retry.
    let (status, _) = server
        .put_json(ADMIN, "/api/v1/config/smtp", &settings(&smtp, "stale"))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "without test_addr the settings are saved as given"
    );
    server
        .send(ADMIN, "disk", "text/plain", "host:cad02 pct:99")
        .await;
    server.settle().await;
    let failed = server
        .deliveries_until(ADMIN, "status=pending", |d| {
            d.len() == 1 && d[0]["attempts"] == 1
        })
        .await;
    let error = failed[0]["last_error"].as_str().expect("error");
    assert!(
        error.contains("535") || error.to_lowercase().contains("auth"),
        "{error}"
    );
    let (status, _) = server.put_json(ADMIN, "/api/v1/config/smtp", &json!({"host": "127.0.0.1", "port": smtp.port,
        "from_addr": "alerts@tellify.test", "from_name": "Tellify Alerts", "encryption": "starttls", "auth": "password",
        "username": "mailer", "password": "right-password", "ca_file": smtp.ca.to_str().expect("path")})).await;
    assert_eq!(status, StatusCode::OK);
    server.advance("10s").await;
    smtp.wait_for(3).await;
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 2)
        .await;

    // A PUT that leaves the password out keeps it.
    let mut keep = settings(&smtp, "***");
    keep["test_addr"] = json!("ops@tellify.test");
    let (status, body) = server.put_json(ADMIN, "/api/v1/config/smtp", &keep).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    smtp.wait_for(4).await;
    let (status, _) = server
        .request(Method::POST, ADMIN, "/api/v1/channels/mail/test", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    smtp.wait_for(5).await;
}
