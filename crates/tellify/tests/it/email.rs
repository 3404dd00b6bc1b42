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

    // A subscription may choose the short form: one line as subject and body, no HTML.
    let (status, body) = server
        .post_json(ADMIN, "/api/v1/subscriptions", &json!({"channel": "mail", "format": "short", "rules": ["disk"], "notify_on": ["resolve"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = server.alerts(ADMIN, "status=firing").await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, _) = server
        .request(
            Method::POST,
            ADMIN,
            &format!("/api/v1/alerts/{id}/resolve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mails = smtp.wait_for(7).await;
    let short: Vec<&str> = mails[5..]
        .iter()
        .map(|m| m["data"].as_str().expect("data"))
        .filter(|d| !d.contains("multipart"))
        .collect();
    assert_eq!(
        short.len(),
        1,
        "one short mail besides the rule's own html one"
    );
    assert!(
        short[0].contains("Subject: RESOLVED CRITICAL cad0"),
        "{}",
        short[0]
    );
}

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("time")
        .timestamp_millis()
}

/// The seeds' disk-usage case: work email for > 90% in weekday working hours; home email and
/// SMS only for >= 97% on evenings and weekends — in Berlin time, across the end of summer time
/// (Sunday 2026-10-25, 03:00 CEST → 02:00 CET).
#[tokio::test]
async fn disk_usage_goes_to_work_by_day_and_home_and_sms_by_night_across_dst() {
    let smtp = SmtpServer::start("mailer", "right-password");
    let sms = crate::receiver::Receiver::start().await;
    // Friday 2026-10-23 08:00 UTC is 10:00 in Berlin (CEST).
    let mut server = Server::start_at(ms("2026-10-23T08:00:00Z"), &[]).await;
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/config/smtp",
            &settings(&smtp, "right-password"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ann = server.user_in_zone("ann", "Europe/Berlin").await;
    for (name, channel) in [
        ("work", json!({"kind": "email", "to": ["ann@work.test"]})),
        (
            "home",
            json!({"kind": "email", "to": ["ann@home.test"], "format": "text"}),
        ),
        (
            "phone",
            json!({"kind": "sms", "url": sms.url("/Accounts/AC1/Messages.json"), "account": "AC1", "token": "tok", "from": "+15550001", "to": "+4915550002"}),
        ),
    ] {
        let (status, body) = server
            .put_json(&ann, &format!("/api/v1/channels/{name}"), &channel)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let weekdays = json!(["mon", "tue", "wed", "thu", "fri"]);
    let work_hours = json!({"days": weekdays, "from": "09:00", "to": "18:00"});
    let off_hours = json!([{"days": weekdays, "from": "18:00", "to": "09:00"}, {"days": ["sat", "sun"], "from": "00:00", "to": "24:00"}]);
    for sub in [
        json!({"channel": "work", "rules": ["disk-usage-high"], "when": "alert.value > 90", "schedule": work_hours, "notify_on": ["fire"]}),
        json!({"channel": "home", "rules": ["disk-usage-critical"], "when": "alert.value >= 97", "schedule": off_hours, "notify_on": ["fire"]}),
        json!({"channel": "phone", "rules": ["disk-usage-critical"], "schedule": off_hours, "notify_on": ["fire"]}),
    ] {
        let (status, body) = server.post_json(&ann, "/api/v1/subscriptions", &sub).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    server
        .rules_from(&ann, &crate::harness::example("disk.yaml"))
        .await;
    let disk =
        |host: &str, fs: &str, pct: f64| format!("host:{host} fs:{fs} used_pct:{pct} kind:disk");
    let to = |m: &serde_json::Value| m["to"][0].as_str().expect("to").to_owned();

    // Friday 10:00: 93.5% held 5 minutes → work email.
    server
        .send(
            &ann,
            "disk",
            "text/plain",
            &disk("cadfs01", "/sarc/cad", 93.5),
        )
        .await;
    server.advance("5m").await;
    let mails = smtp.wait_for(1).await;
    assert_eq!(to(&mails[0]), "ann@work.test");

    // Friday 19:00 (17:00 UTC): 97.4% → after 1 minute home email and SMS; work is asleep.
    server.advance("8h55m").await;
    server
        .send(
            &ann,
            "disk",
            "text/plain",
            &disk("cadfs02", "/proj/vr0", 97.4),
        )
        .await;
    server.advance("5m").await;
    let mails = smtp.wait_for(2).await;
    assert_eq!(to(&mails[1]), "ann@home.test");
    let texts = sms.wait_for(1).await;
    let body = String::from_utf8_lossy(&texts[0].body).to_string();
    assert!(
        body.contains("To=%2B4915550002") && body.contains("cadfs02"),
        "{body}"
    );

    // Monday 2026-10-26 07:30 UTC: after the clocks went back that is 08:30 in Berlin, still
    // off hours (with summer time it would be 09:30, work hours). A critical disk → home + SMS.
    let monday_0730 = ms("2026-10-26T07:30:00Z");
    let wait = monday_0730 - server.now;
    server.advance(&format!("{wait}ms")).await;
    server
        .send(&ann, "disk", "text/plain", &disk("cadfs03", "/tmp", 99.0))
        .await;
    server.advance("5m").await;
    let mails = smtp.wait_for(3).await;
    assert_eq!(
        to(&mails[2]),
        "ann@home.test",
        "08:35 in Berlin is before work"
    );
    sms.wait_for(2).await;

    // Monday 08:30 UTC is 09:30 in Berlin: a > 90% disk → work email, no SMS.
    server.advance("55m").await;
    server
        .send(&ann, "disk", "text/plain", &disk("cadfs04", "/home", 92.0))
        .await;
    server.advance("5m").await;
    let mails = smtp.wait_for(4).await;
    assert_eq!(to(&mails[3]), "ann@work.test");
    sms.settle_at(&mut server, 2).await;
    assert_eq!(smtp.messages().len(), 4, "nothing else was sent");
}

/// A mail server that accepts connections and never says a word (or one that is not a mail
/// server at all): checking SMTP settings answers 422 in seconds, whatever the encryption,
/// rather than holding the request for minutes.
#[tokio::test]
async fn smtp_settings_check_against_a_silent_server_fails_quickly() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accept and hold every connection open without answering.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let server = Server::start().await;
    for encryption in ["tls", "starttls", "none"] {
        let body = json!({"host": "127.0.0.1", "port": port, "from_addr": "alerts@tellify.test",
            "encryption": encryption, "auth": "password", "username": "mailer", "password": "pw",
            "test_addr": "ops@tellify.test"});
        let started = std::time::Instant::now();
        let (status, body) = server.put_json(ADMIN, "/api/v1/config/smtp", &body).await;
        let took = started.elapsed();
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{encryption}: {body}"
        );
        assert_eq!(body["error"]["code"], "smtp_failed", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("timed out"), "{encryption}: {message}");
        assert!(
            took < std::time::Duration::from_secs(20),
            "{encryption}: answered after {took:?}"
        );
    }
    let (_, smtp) = server.get(ADMIN, "/api/v1/config/smtp").await;
    assert!(
        smtp.get("host").is_none_or(|h| h.is_null()),
        "nothing saved: {smtp}"
    );
    silent.abort();
}
