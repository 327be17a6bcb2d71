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

/// Slow clients against roster's own listener: raw connections, so that a test controls
/// exactly how much of a request is sent.
mod slow_clients {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::timeout;

    use crate::helpers::{ADMIN, TestApp, eventually, joiner, spawn_app_with};

    /// The read timeout these tests run roster with (`ROSTER_HTTP_READ_TIMEOUT_SECS`).
    const READ_TIMEOUT: Duration = Duration::from_secs(2);
    /// … and the one for a thousand slow clients: opening and accepting them takes over a
    /// second in a debug build on a busy two-core machine, and the first must still be held
    /// when the last is accepted and the API is asked.
    const HOLD_TIMEOUT: Duration = Duration::from_secs(5);

    fn addr(app: &TestApp) -> String {
        app.base.trim_start_matches("http://").to_owned()
    }

    async fn open(addr: &str, sent: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(sent).await.expect("send");
        stream
    }

    /// Everything the server sends until it closes the connection (a reset ends it too).
    async fn until_closed(mut stream: TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Reads one answer to a request without a body (up to the end of its head and a short
    /// body, which roster sends in one piece).
    async fn answer_head(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before an answer");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// How many slow connections this process can hold (two descriptors each, the client's
    /// and roster's, both in this process): raises the soft `RLIMIT_NOFILE` to 4096 when it
    /// is lower, and counts down only when it cannot be raised.
    fn slow_connections_possible(wanted: usize) -> usize {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        const NEEDED: u64 = 4096;
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return wanted;
        };
        if soft >= NEEDED
            || (hard >= NEEDED && setrlimit(Resource::RLIMIT_NOFILE, NEEDED, hard).is_ok())
        {
            return wanted;
        }
        let possible = usize::try_from(soft.saturating_sub(512) / 2).unwrap_or(0);
        eprintln!(
            "the file descriptor limit is {soft} (hard {hard}) and cannot be raised to \
             {NEEDED}: holding {} slow connections instead of {wanted}",
            possible.min(wanted)
        );
        possible.min(wanted)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_slow_clients_neither_starve_the_api_nor_stay_connected() {
        let count = slow_connections_possible(1000);
        let app = spawn_app_with(|c| {
            c.run_engine = false;
            c.http_read_timeout = HOLD_TIMEOUT;
            c.max_connections = 1100;
        })
        .await;
        let addr = addr(&app);
        // Half send part of a request head; half a whole head announcing 100 kB of body and
        // then one byte of it.
        let partial_head = b"POST /api/v1/events HTTP/1.1\r\nHost: roster\r\nContent-Ty".to_vec();
        let stalled_body = format!(
            "POST /api/v1/events HTTP/1.1\r\nHost: roster\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
        )
        .into_bytes();
        let mut slow = Vec::with_capacity(count + 1);
        slow.extend(
            futures::future::join_all((0..count).map(|i| {
                let sent = if i % 2 == 0 {
                    &partial_head
                } else {
                    &stalled_body
                };
                open(&addr, sent)
            }))
            .await,
        );
        eventually(
            "roster to hold every slow connection",
            Duration::from_secs(30),
            || async { (app.open_connections() >= count).then_some(()) },
        )
        .await;
        // And a keep-alive connection that asked once and then says nothing.
        let mut idle = open(&addr, b"GET /healthz HTTP/1.1\r\nHost: roster\r\n\r\n").await;
        assert!(answer_head(&mut idle).await.starts_with("HTTP/1.1 200"));

        // The API still answers at once (a liveness bound, not a performance figure).
        let ready = timeout(
            Duration::from_secs(1),
            app.http.get(format!("{}/readyz", app.base)).send(),
        )
        .await
        .expect("/readyz answers within 1 s while the slow clients wait")
        .expect("/readyz");
        assert_eq!(ready.status(), 200);
        let event = joiner(
            "slow-1",
            "E-SLOW-1",
            "2026-11-01T09:00:00Z",
            serde_json::json!({}),
        );
        let posted = timeout(Duration::from_secs(1), app.post("/api/v1/events", &event))
            .await
            .expect("an HR event is taken within 1 s while the slow clients wait");
        assert_eq!(posted.status, 202, "{}", posted.text);
        // … and it did so while every slow connection was still held.
        let mut buf = [0u8; 1];
        let still_open = slow
            .iter()
            .filter(|s| {
                matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count();
        assert_eq!(
            still_open, count,
            "slow connections cut before the checks ran"
        );

        slow.push(idle);
        let ends = timeout(
            HOLD_TIMEOUT + Duration::from_secs(3),
            futures::future::join_all(slow.into_iter().map(until_closed)),
        )
        .await
        .expect("roster closes every slow connection within the read timeout (and a margin)");
        let (idle_end, ends) = ends.split_last().expect("connections");
        assert_eq!(
            idle_end, "",
            "an idle keep-alive connection is closed without a word"
        );
        for (i, end) in ends.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(end, "", "a slow head is cut off without an answer");
            } else {
                assert!(end.starts_with("HTTP/1.1 408"), "{end}");
                assert!(end.contains("application/problem+json"), "{end}");
                assert!(end.contains("ROSTER_HTTP_READ_TIMEOUT_SECS"), "{end}");
            }
        }
    }

    #[tokio::test]
    async fn a_connection_above_the_cap_waits_until_one_closes() {
        let app = spawn_app_with(|c| {
            c.run_engine = false;
            c.max_connections = 2;
        })
        .await;
        let addr = addr(&app);
        let ask = b"GET /healthz HTTP/1.1\r\nHost: roster\r\n\r\n";
        // Two keep-alive connections, each served once: both are being served now.
        let mut first = open(&addr, ask).await;
        assert!(answer_head(&mut first).await.starts_with("HTTP/1.1 200"));
        let mut second = open(&addr, ask).await;
        assert!(answer_head(&mut second).await.starts_with("HTTP/1.1 200"));
        // A third is connected (the kernel's backlog) but not served …
        let mut third = open(&addr, ask).await;
        let mut buf = [0u8; 1];
        assert!(
            timeout(Duration::from_millis(500), third.read(&mut buf))
                .await
                .is_err(),
            "a third connection was served above a cap of 2"
        );
        // … until one of the two closes.
        drop(first);
        let answer = timeout(Duration::from_secs(10), answer_head(&mut third))
            .await
            .expect("the waiting connection is served once another closes");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(second);
    }

    #[tokio::test]
    async fn a_stalled_upload_is_answered_408_and_stores_nothing_and_a_slow_steady_body_is_taken() {
        let app = spawn_app_with(|c| {
            c.run_engine = false;
            c.http_read_timeout = READ_TIMEOUT;
        })
        .await;
        let addr = addr(&app);
        // An HR snapshot whose first 5,000 rows (stored in batches as they come) arrive, then
        // nothing more of the announced length.
        let mut csv = String::from("employee_id,email\r\n");
        for i in 0..5000 {
            csv.push_str(&format!("E{i},e{i}@example.com\r\n"));
        }
        let head = format!(
            "POST /api/v1/hr/snapshots HTTP/1.1\r\nHost: roster\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
            csv.len() + 100_000
        );
        let stalled = open(&addr, format!("{head}{csv}").as_bytes()).await;
        let end = timeout(READ_TIMEOUT + Duration::from_secs(8), until_closed(stalled))
            .await
            .expect("roster ends a stalled upload");
        assert!(end.starts_with("HTTP/1.1 408"), "{end}");
        assert!(end.contains("application/problem+json"), "{end}");
        assert_eq!(app.count("hr_snapshot").await, 0);
        assert_eq!(app.count("hr_snapshot_row").await, 0);

        // No deadline for a whole body: an event sent in four pieces a second apart (longer
        // than the read timeout in all, never that long without data) is taken.
        let body = serde_json::to_vec(&joiner(
            "steady-1",
            "E-STEADY-1",
            "2026-11-01T09:00:00Z",
            serde_json::json!({}),
        ))
        .expect("json");
        let mut steady = open(
            &addr,
            format!(
                "POST /api/v1/events HTTP/1.1\r\nHost: roster\r\nAuthorization: Bearer {ADMIN}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        for piece in body.chunks(body.len().div_ceil(4)) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            steady.write_all(piece).await.expect("send a piece");
        }
        let end = timeout(Duration::from_secs(10), until_closed(steady))
            .await
            .expect("an answer");
        assert!(end.starts_with("HTTP/1.1 202"), "{end}");
        assert_eq!(app.count("hr_event").await, 1);
    }

    #[tokio::test]
    async fn on_shutdown_a_request_under_way_is_answered_and_idle_and_new_connections_are_not() {
        let app = spawn_app_with(|c| c.run_engine = false).await;
        let addr = addr(&app);
        let body = serde_json::to_vec(&joiner(
            "drain-1",
            "E-DRAIN-1",
            "2026-11-01T09:00:00Z",
            serde_json::json!({}),
        ))
        .expect("json");
        let (first, rest) = body.split_at(body.len() / 2);
        let mut head = format!(
            "POST /api/v1/events HTTP/1.1\r\nHost: roster\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        head.extend_from_slice(first);
        let mut under_way = open(&addr, &head).await;
        let mut idle = open(&addr, b"GET /healthz HTTP/1.1\r\nHost: roster\r\n\r\n").await;
        assert!(answer_head(&mut idle).await.starts_with("HTTP/1.1 200"));
        assert_eq!(app.open_connections(), 2);

        app.begin_shutdown();
        let idle_end = timeout(Duration::from_secs(10), until_closed(idle))
            .await
            .expect("an idle connection is closed on shutdown");
        assert_eq!(idle_end, "");
        eventually(
            "the listener to refuse new connections",
            Duration::from_secs(10),
            || async { TcpStream::connect(&addr).await.is_err().then_some(()) },
        )
        .await;
        // The request under way still gets its answer.
        under_way.write_all(rest).await.expect("send the rest");
        let end = timeout(Duration::from_secs(10), until_closed(under_way))
            .await
            .expect("an answer");
        assert!(end.starts_with("HTTP/1.1 202"), "{end}");
        assert_eq!(app.count("hr_event").await, 1);
    }

    #[tokio::test]
    async fn a_client_that_stalls_its_tls_handshake_is_cut_off_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = super::pki::ca("roster api CA");
        let (cert, key) = super::pki::leaf(&ca, &["127.0.0.1"], false);
        let cert_file = dir.path().join("api-cert.pem");
        let key_file = dir.path().join("api-key.pem");
        std::fs::write(&cert_file, cert).expect("write");
        std::fs::write(&key_file, key).expect("write");
        let app = spawn_app_with(|c| {
            c.run_engine = false;
            c.http_read_timeout = READ_TIMEOUT;
            c.tls_cert_file = Some(cert_file);
            c.tls_key_file = Some(key_file);
        })
        .await;
        // The first bytes of a TLS record, then nothing.
        let stalled = open(&addr(&app), &[0x16, 0x03, 0x01]).await;
        let end = timeout(READ_TIMEOUT + Duration::from_secs(5), until_closed(stalled))
            .await
            .expect("roster closes a connection whose handshake stalls");
        assert_eq!(end, "");
    }
}
