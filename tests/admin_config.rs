//! `GET /config` (SPEC §7.6): the configuration in force after overrides and the last
//! reload, as JSON, with secrets redacted.

mod support;

use serde_json::Value;
use support::*;

async fn config_json(sidecar: &Sidecar) -> (Value, String) {
    let (status, headers, body) = get(&format!("http://{}/config", sidecar.admin)).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (value, body)
}

#[tokio::test]
async fn config_shows_what_is_in_force_with_secrets_redacted() {
    let backend = Backend::start().await;
    let yaml = "routes:
  - name: tenant
    match:
      path_prefix: /t
      headers:
        authorization: Bearer sekrit-token
        x-tenant: blue
    stale_if_error:
      max_age: 60s
      key_headers: [x-api-key]
  - name: keyed
    match:
      headers:
        x-api-key: key-value-42
  - name: named-secrets
    match:
      headers:
        x-auth-token: tok-value-43
        x-client-secret: sec-value-44
        x-session-id: ses-value-45
        x-region: eu-west
tracing:
  otlp_endpoint: http://collector:pass-word@127.0.0.1:4318
  sample_ratio: 0.5
";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let (config, body) = config_json(&sidecar).await;

    // The command line's overrides, not the file's (absent) addresses.
    assert_eq!(config["listen"], sidecar.addr.to_string());
    assert_eq!(config["admin_listen"], "127.0.0.1:0");
    assert_eq!(config["upstream"]["url"], format!("{}/", backend.url()));
    // Built-in defaults are shown as in force.
    assert_eq!(config["defaults"]["retry"]["attempts"], 3);
    let tenant = &config["routes"][0];
    assert_eq!(tenant["name"], "tenant");
    assert_eq!(tenant["match"]["path_prefix"], "/t");
    assert_eq!(tenant["match"]["headers"]["x-tenant"], "blue");
    assert_eq!(tenant["match"]["headers"]["authorization"], "[redacted]");
    assert_eq!(tenant["stale_if_error"]["key_headers"][0], "x-api-key");
    assert_eq!(
        config["routes"][1]["match"]["headers"]["x-api-key"],
        "[redacted]"
    );
    assert_eq!(
        config["tracing"]["otlp_endpoint"],
        "http://collector:[redacted]@127.0.0.1:4318"
    );
    assert_eq!(config["tracing"]["sample_ratio"], 0.5);
    // Names that say they hold a credential are redacted without being listed anywhere.
    let named = &config["routes"][2]["match"]["headers"];
    for name in ["x-auth-token", "x-client-secret", "x-session-id"] {
        assert_eq!(named[name], "[redacted]", "{name}");
    }
    assert_eq!(named["x-region"], "eu-west");
    for secret in [
        "sekrit-token",
        "key-value-42",
        "pass-word",
        "tok-value-43",
        "sec-value-44",
        "ses-value-45",
    ] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
}

#[tokio::test]
async fn config_after_a_reload_is_the_reloaded_one_and_a_failed_reload_changes_nothing() {
    let backend = Backend::start().await;
    let first = format!(
        "upstream:\n  url: {}\nroutes:\n  - name: before\n",
        backend.url()
    );
    let sidecar = Sidecar::start(&first).await;
    assert_eq!(config_json(&sidecar).await.0["routes"][0]["name"], "before");

    let second = format!(
        "upstream:\n  url: {}\ndefaults:\n  retry:\n    attempts: 5\nroutes:\n  - name: after\n",
        backend.url()
    );
    std::fs::write(&sidecar.config_path, second).unwrap();
    sidecar.app.reload().expect("valid reload");
    let (config, _) = config_json(&sidecar).await;
    assert_eq!(config["routes"][0]["name"], "after");
    assert_eq!(config["defaults"]["retry"]["attempts"], 5);
    assert_eq!(config["tracing"], Value::Null);
    // The overrides are laid over the reloaded file too.
    assert_eq!(config["listen"], sidecar.addr.to_string());

    std::fs::write(&sidecar.config_path, "routes: [{{").unwrap();
    assert!(sidecar.app.reload().is_err());
    assert_eq!(config_json(&sidecar).await.0["routes"][0]["name"], "after");
}

/// The second edition's keys are shown too, and the Redis password never is.
#[tokio::test]
async fn config_shows_hedge_concurrency_and_shared_without_the_redis_password() {
    let backend = Backend::start().await;
    let yaml = "shared:
  redis: redis://:redis-pass-99@127.0.0.1:1/0
  timeout: 20ms
routes:
  - name: quotes
    match: { path_prefix: /q }
    hedge: { delay: 50ms, max_ratio: 0.1 }
    concurrency: { initial: 8, min: 2, max: 64 }
    rate_limit: { rate: 100/s, burst: 10, scope: shared }
";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let (config, body) = config_json(&sidecar).await;
    let quotes = &config["routes"][0];
    assert_eq!(quotes["hedge"]["delay"], "50ms");
    assert_eq!(quotes["hedge"]["max_ratio"], 0.1);
    assert_eq!(quotes["concurrency"]["max"], 64);
    assert_eq!(quotes["rate_limit"]["scope"], "shared");
    assert_eq!(config["defaults"]["retry"]["budget"]["adaptive"], true);
    assert_eq!(config["shared"]["timeout"], "20ms");
    assert!(
        config["shared"]["redis"]
            .as_str()
            .is_some_and(|u| u.contains("127.0.0.1:1")),
        "{body}"
    );
    assert!(!body.contains("redis-pass-99"), "password leaked: {body}");
}
