//! Transport security: https-only targets, per-app TLS (private CA, mutual TLS), and roster's
//! own listener (TLS, slow clients, connection cap).
use serde_json::json;

use crate::helpers::{app_body, joiner, spawn_app, spawn_app_with};

/// A public address (never called: these tests run without the delivery engine, and the
/// client refuses plain http to it anyway).
const PUBLIC_HTTP: &str = "http://93.184.215.14/scim/v2";

#[tokio::test]
async fn plain_http_to_a_public_host_is_refused_naming_the_variable() {
    let app = spawn_app_with(|c| c.run_engine = false).await;
    let detail = app
        .post(
            "/api/v1/apps",
            &app_body("x", json!({"base_url": PUBLIC_HTTP})),
        )
        .await
        .problem(422);
    assert!(detail.starts_with("base_url:"), "{detail}");
    assert!(detail.contains("ROSTER_ALLOW_INSECURE_HTTP"), "{detail}");
    let detail = app
        .post(
            "/api/v1/apps",
            &app_body(
                "x",
                json!({"base_url": "https://93.184.215.14/scim/v2",
                       "auth": {"type": "oauth2", "token_url": "http://93.184.215.14/token",
                                "client_id": "c", "client_secret": "s"}}),
            ),
        )
        .await
        .problem(422);
    assert!(detail.starts_with("auth.token_url:"), "{detail}");
    assert!(detail.contains("ROSTER_ALLOW_INSECURE_HTTP"), "{detail}");
    assert_eq!(app.count("app").await, 0);

    // https is fine; so is plain http to loopback, which ROSTER_ALLOW_PRIVATE_TARGETS allows.
    let created = app
        .create_app(&app_body(
            "ok",
            json!({"base_url": "https://93.184.215.14/scim/v2"}),
        ))
        .await;
    app.create_app(&app_body("local", json!({}))).await;
    // A PATCH to plain http on a public host changes nothing.
    let path = format!("/api/v1/apps/{}", created["id"].as_str().unwrap());
    let detail = app
        .patch(
            &path,
            &json!({"base_url": PUBLIC_HTTP, "auth": {"type": "bearer", "token": "t"}}),
        )
        .await
        .problem(422);
    assert!(detail.contains("ROSTER_ALLOW_INSECURE_HTTP"), "{detail}");
    assert_eq!(
        app.get(&path).await.expect(200)["base_url"],
        "https://93.184.215.14/scim/v2"
    );
}

#[tokio::test]
async fn private_addresses_over_https_are_still_refused_without_allow_private() {
    let app = spawn_app_with(|c| {
        c.run_engine = false;
        c.allow_private_targets = false;
        c.allow_insecure_http = true;
    })
    .await;
    for url in [
        "https://10.1.2.3/scim/v2",
        "https://[::ffff:192.168.1.1]/v2",
    ] {
        let detail = app
            .post("/api/v1/apps", &app_body("x", json!({"base_url": url})))
            .await
            .problem(422);
        assert!(detail.starts_with("base_url:"), "{url}: {detail}");
    }
    // The operator's switch allows plain http to public hosts, nothing more.
    app.create_app(&app_body("public", json!({"base_url": PUBLIC_HTTP})))
        .await;
    assert_eq!(app.count("app").await, 1);
}

#[tokio::test]
async fn an_app_stored_with_plain_http_is_held_at_start_until_its_url_is_fixed() {
    // Stored while the operator allowed plain http, with a job waiting for it.
    let mut app = spawn_app_with(|c| {
        c.run_engine = false;
        c.allow_private_targets = false;
        c.allow_insecure_http = true;
    })
    .await;
    let created = app
        .create_app(&app_body("legacy", json!({"base_url": PUBLIC_HTTP})))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    app.post_event(&joiner(
        "e1",
        "E1",
        "2026-11-23T09:00:00Z",
        json!({"email": "ada@example.com"}),
    ))
    .await;
    assert_eq!(app.count("job").await, 1);

    // Restarted without it: the app is held and says why.
    app.config.allow_insecure_http = false;
    let app = app.restart().await;
    let status = app
        .get(&format!("/api/v1/apps/{id}/status"))
        .await
        .expect(200);
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(status["paused_by"], "transport", "{status}");
    let reason = status["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("base_url") && reason.contains("ROSTER_ALLOW_INSECURE_HTTP"),
        "{reason}"
    );
    // Its job waits: neither sent nor dead.
    let jobs = app.rows("SELECT state FROM job").await;
    assert_eq!(jobs, vec![json!({"state": "pending"})]);
    // Nothing is sent to it, not even by test-connection, and a resume is refused.
    let report = app
        .post(&format!("/api/v1/apps/{id}/test-connection"), &json!({}))
        .await
        .expect(200);
    assert_eq!(report["ok"], false);
    assert!(
        report["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ROSTER_ALLOW_INSECURE_HTTP")),
        "{report}"
    );
    let detail = app
        .post(&format!("/api/v1/apps/{id}/resume"), &json!({}))
        .await
        .problem(409);
    assert!(detail.contains("https"), "{detail}");
    assert_eq!(
        app.get(&format!("/api/v1/apps/{id}")).await.expect(200)["state"],
        "paused"
    );
    let audit = app
        .rows("SELECT action FROM audit WHERE action = 'app.held_plain_http'")
        .await;
    assert_eq!(audit.len(), 1);

    // A change that leaves the URL alone keeps it held; fixing the URL releases it.
    let path = format!("/api/v1/apps/{id}");
    let view = app
        .patch(&path, &json!({"max_attempts": 5}))
        .await
        .expect(200);
    assert_eq!(view["state"], "paused");
    let view = app
        .patch(
            &path,
            &json!({"base_url": "https://93.184.215.14/scim/v2",
                    "auth": {"type": "bearer", "token": "new-token"}}),
        )
        .await
        .expect(200);
    assert_eq!(view["state"], "active", "{view}");
    let status = app.get(&format!("{path}/status")).await.expect(200);
    assert_eq!(status["paused_by"], json!(null), "{status}");
    assert_eq!(
        app.rows("SELECT state FROM job").await,
        vec![json!({"state": "pending"})]
    );
    // A later start leaves the fixed app alone.
    let app = app.restart().await;
    assert_eq!(app.get(&path).await.expect(200)["state"], "active");
}

/// Certificates made at test time: CAs, and server or client certificates they sign.
mod pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };

    pub type Ca = CertifiedIssuer<'static, KeyPair>;

    pub fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
    }

    /// A certificate for `names` signed by `ca`: (certificate PEM, key PEM).
    pub fn leaf(ca: &Ca, names: &[&str], client: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate that expired in 2020.
    pub fn expired_client(ca: &Ca) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "old client");
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// A dev-target serving https with a certificate for `names` signed by `ca`, and, with
/// `client_ca`, requiring a client certificate signed by it.
async fn tls_target(
    dir: &std::path::Path,
    ca: &pki::Ca,
    names: &[&str],
    client_ca: Option<&pki::Ca>,
) -> roster::dev_target::DevTarget {
    let (cert, key) = pki::leaf(ca, names, false);
    let tag = uuid_like();
    let write = |name: &str, text: &str| {
        let path = dir.join(format!("{tag}-{name}"));
        std::fs::write(&path, text).expect("write pem");
        path
    };
    roster::dev_target::spawn(roster::dev_target::DevTargetArgs {
        token: Some(TARGET_TOKEN.into()),
        tls_cert: Some(write("cert.pem", &cert)),
        tls_key: Some(write("key.pem", &key)),
        client_ca: client_ca.map(|c| write("client-ca.pem", &c.pem())),
        ..Default::default()
    })
    .await
    .expect("tls dev-target")
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

const TARGET_TOKEN: &str = "canary-tls-bearer-7f3a";

async fn test_connection(app: &crate::helpers::TestApp, id: &str) -> serde_json::Value {
    app.post(&format!("/api/v1/apps/{id}/test-connection"), &json!({}))
        .await
        .expect(200)
}

fn tls_app(name: &str, base_url: &str, tls: serde_json::Value) -> serde_json::Value {
    let mut body = app_body(
        name,
        json!({"base_url": base_url, "auth": {"type": "bearer", "token": TARGET_TOKEN}}),
    );
    if !tls.is_null() {
        body["tls"] = tls;
    }
    body
}

#[tokio::test]
async fn a_trusted_private_ca_works_and_tls_failures_are_named() {
    let app = spawn_app_with(|c| c.run_engine = false).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca("roster test CA");
    let other_ca = pki::ca("someone else's CA");
    let target = tls_target(dir.path(), &ca, &["127.0.0.1"], None).await;
    let base = target.base_url();
    assert!(base.starts_with("https://"), "{base}");

    // The system roots do not know the private CA.
    let plain = app.create_app(&tls_app("no-ca", &base, json!(null))).await;
    let report = test_connection(&app, plain["id"].as_str().unwrap()).await;
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["reason"].as_str().unwrap().contains("unknown CA"),
        "{report}"
    );
    // An app trusting another CA fails the same way.
    let wrong = app
        .create_app(&tls_app(
            "wrong-ca",
            &base,
            json!({"ca_pem": other_ca.pem()}),
        ))
        .await;
    let report = test_connection(&app, wrong["id"].as_str().unwrap()).await;
    assert!(
        report["reason"].as_str().unwrap().contains("unknown CA"),
        "{report}"
    );
    // Trusting the right CA works, and the CA is readable.
    let path = format!("/api/v1/apps/{}", plain["id"].as_str().unwrap());
    let view = app
        .patch(&path, &json!({"tls": {"ca_pem": ca.pem()}}))
        .await
        .expect(200);
    assert_eq!(view["tls"]["ca_pem"], json!(ca.pem()));
    assert_eq!(view["tls"]["client_key_set"], false);
    let report = test_connection(&app, plain["id"].as_str().unwrap()).await;
    assert_eq!(report["ok"], true, "{report}");

    // A certificate for another name.
    let elsewhere = tls_target(dir.path(), &ca, &["scim.other.example"], None).await;
    let mismatch = app
        .create_app(&tls_app(
            "mismatch",
            &elsewhere.base_url(),
            json!({"ca_pem": ca.pem()}),
        ))
        .await;
    let report = test_connection(&app, mismatch["id"].as_str().unwrap()).await;
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("hostname mismatch"),
        "{report}"
    );
}

#[tokio::test]
async fn mutual_tls_works_with_the_client_certificate_and_is_refused_without_it() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca("server CA");
    let client_ca = pki::ca("client CA");
    let target = tls_target(dir.path(), &ca, &["127.0.0.1"], Some(&client_ca)).await;
    let (cert, key) = pki::leaf(&client_ca, &["roster"], true);

    let without = app
        .create_app(&tls_app(
            "no-client-cert",
            &target.base_url(),
            json!({"ca_pem": ca.pem()}),
        ))
        .await;
    let report = test_connection(&app, without["id"].as_str().unwrap()).await;
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("client certificate required"),
        "{report}"
    );
    // A certificate from a CA the target does not trust is refused.
    let (stranger_cert, stranger_key) = pki::leaf(&pki::ca("stranger"), &["roster"], true);
    let stranger = app
        .create_app(&tls_app(
            "stranger-cert",
            &target.base_url(),
            json!({"ca_pem": ca.pem(), "client_cert_pem": stranger_cert,
                   "client_key_pem": stranger_key}),
        ))
        .await;
    let report = test_connection(&app, stranger["id"].as_str().unwrap()).await;
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("client certificate refused"),
        "{report}"
    );
    app.delete(&format!("/api/v1/apps/{}", without["id"].as_str().unwrap()))
        .await;
    app.delete(&format!(
        "/api/v1/apps/{}",
        stranger["id"].as_str().unwrap()
    ))
    .await;

    let with = app
        .create_app(&tls_app(
            "client-cert",
            &target.base_url(),
            json!({"ca_pem": ca.pem(), "client_cert_pem": cert, "client_key_pem": key}),
        ))
        .await;
    assert_eq!(with["tls"]["client_key_set"], true, "{with}");
    assert_eq!(with["tls"]["client_cert_pem"], json!(cert));
    let report = test_connection(&app, with["id"].as_str().unwrap()).await;
    assert_eq!(report["ok"], true, "{report}");
    // Deliveries use it too.
    app.post_event(&joiner(
        "e1",
        "E1",
        "2026-11-23T09:00:00Z",
        json!({"email": "ada@example.com", "user_name": "ada@example.com"}),
    ))
    .await;
    crate::helpers::eventually(
        "ada provisioned over mutual TLS",
        std::time::Duration::from_secs(20),
        || async { (target.users_snapshot().len() == 1).then_some(()) },
    )
    .await;

    // The key is never shown, and never stored or logged in the clear.
    let key_body: String = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    let probe = &key_body[..40];
    for table in ["app", "audit", "operation"] {
        for row in app.rows(&format!("SELECT * FROM {table}")).await {
            let text = row.to_string();
            assert!(!text.contains(probe), "client key in {table}: {text}");
            assert!(!text.contains(TARGET_TOKEN), "token in {table}: {text}");
        }
    }
    let shown = app.get("/api/v1/apps").await.text;
    assert!(!shown.contains(probe) && !shown.contains(TARGET_TOKEN));
}

#[tokio::test]
async fn bad_tls_settings_are_refused_with_the_reason_and_change_nothing() {
    let app = spawn_app_with(|c| c.run_engine = false).await;
    let ca = pki::ca("client CA");
    let (cert, key) = pki::leaf(&ca, &["roster"], true);
    let (_, other_key) = pki::leaf(&ca, &["roster"], true);
    let (old_cert, old_key) = pki::expired_client(&ca);
    let base = "https://127.0.0.1:9/scim/v2";
    let big = format!("{}{}", ca.pem(), "#".repeat(1_010_000));
    for (tls, field, words) in [
        (json!({"ca_pem": "not pem"}), "tls.ca_pem", "no PEM block"),
        (json!({"ca_pem": big}), "tls.ca_pem", "at most"),
        (
            json!({"client_cert_pem": cert, "client_key_pem": other_key}),
            "tls.client_key_pem",
            "does not match",
        ),
        (
            json!({"client_cert_pem": cert, "client_key_pem": format!("{cert}{}", ca.pem())}),
            "tls.client_key_pem",
            "holds a certificate",
        ),
        (
            json!({"client_cert_pem": format!("{cert}{key}"), "client_key_pem": key}),
            "tls.client_cert_pem",
            "private key",
        ),
        (
            json!({"client_cert_pem": old_cert, "client_key_pem": old_key}),
            "tls.client_cert_pem",
            "expired",
        ),
        (
            json!({"client_cert_pem": cert}),
            "tls.client_key_pem",
            "required",
        ),
    ] {
        let detail = app
            .post("/api/v1/apps", &tls_app("bad", base, tls))
            .await
            .problem(422);
        assert!(
            detail.starts_with(field) && detail.contains(words),
            "{field} / {words}: {detail}"
        );
    }
    assert_eq!(app.count("app").await, 0);
    // A 5 MB bundle does not fit in a request at all.
    let huge = "#".repeat(5_000_000);
    let answer = app
        .post(
            "/api/v1/apps",
            &tls_app("bad", base, json!({"ca_pem": huge})),
        )
        .await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    // A PATCH with a mismatched key leaves the app as it was.
    let created = app
        .create_app(&tls_app(
            "good",
            base,
            json!({"client_cert_pem": cert, "client_key_pem": key}),
        ))
        .await;
    let path = format!("/api/v1/apps/{}", created["id"].as_str().unwrap());
    app.patch(
        &path,
        &json!({"tls": {"client_cert_pem": cert, "client_key_pem": other_key}}),
    )
    .await
    .problem(422);
    let view = app.get(&path).await.expect(200);
    assert_eq!(view["version"], created["version"]);
    assert_eq!(view["tls"]["client_cert_pem"], json!(cert));
}

#[tokio::test]
async fn roster_serves_its_api_over_tls_with_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca("roster api CA");
    let (cert, key) = pki::leaf(&ca, &["127.0.0.1"], false);
    let cert_file = dir.path().join("api-cert.pem");
    let key_file = dir.path().join("api-key.pem");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let app = spawn_app_with(|c| {
        c.run_engine = false;
        c.tls_cert_file = Some(cert_file);
        c.tls_key_file = Some(key_file);
    })
    .await;
    let addr = app.base.trim_start_matches("http://");
    let trusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let ready = trusting
        .get(format!("https://{addr}/readyz"))
        .send()
        .await
        .expect("https request");
    assert_eq!(ready.status(), 200);
    // Plain http to the TLS port gets no answer, and a client that does not trust the
    // certificate fails.
    assert!(
        app.http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_err()
    );
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(pki::ca("other").pem().as_bytes()).unwrap(),
        ])
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("https://{addr}/readyz"))
            .send()
            .await
            .is_err()
    );
}
