use roster::dev_target::DevTargetArgs;
use roster::scim::{Auth, ErrorClass, ScimError, TransportKind};

use crate::helpers::{TOKEN, bearer, client, spawn_target};

#[tokio::test]
async fn a_wrong_token_is_an_auth_error_and_never_shown() {
    let t = spawn_target(DevTargetArgs::default()).await;
    let (wrong, calls) = client(&t.target.base_url(), bearer("wrong-canary-token"), |_| {});
    let err = wrong.users().get("x").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth);
    assert_eq!(err.status(), Some(401));
    let report = wrong.test_connection().await;
    assert!(report.reachable && !report.auth_ok);
    assert_eq!(report.reason.as_deref(), Some("401: token rejected"));
    let everything = format!("{err} {err:?} {report:?} {:?} {wrong:?}", calls.all());
    assert!(!everything.contains("canary"), "{everything}");
    assert!(!everything.contains(TOKEN));
    let (none, _) = client(&t.target.base_url(), Auth::None, |_| {});
    assert!(none.users().get("x").await.unwrap_err().is_auth());
}

#[tokio::test]
async fn a_closed_port_is_a_transient_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let (c, calls) = client(
        &format!("http://127.0.0.1:{port}/scim/v2"),
        Auth::None,
        |_| {},
    );
    let err = c.users().get("x").await.unwrap_err();
    assert!(
        matches!(
            err,
            ScimError::Transport {
                kind: TransportKind::Connect,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(calls.all()[0].status, None);
    let report = c.test_connection().await;
    assert!(!report.reachable);
    assert_eq!(report.reason.as_deref(), Some("connection refused"));
}

#[tokio::test]
async fn a_server_without_scim_is_reported_as_such() {
    let t = spawn_target(DevTargetArgs::default()).await;
    // The dev-target's root without /scim/v2 answers 404 everywhere.
    let (c, _) = client(
        &format!("http://{}/other", t.target.addr()),
        bearer(TOKEN),
        |_| {},
    );
    let report = c.test_connection().await;
    assert!(report.reachable);
    assert_eq!(
        report.reason.as_deref(),
        Some("not a SCIM server: /ServiceProviderConfig answered 404")
    );
}

/// The shared black-box checks (`../shared/peers/smoke.sh`) pass against the dev-target too.
#[tokio::test]
async fn dev_target_passes_the_shared_smoke_checks() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/smoke.sh");
    if !script.exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "smoke.sh missing under CI"
        );
        eprintln!("skipped: {} not found", script.display());
        return;
    }
    let t = spawn_target(DevTargetArgs::default()).await;
    // A guard against a hang, not a speed check: the script starts some forty curl and python3
    // processes, which took 65 s on a busy two-core machine.
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::new("bash")
            .arg(&script)
            .arg(t.target.base_url())
            .arg(TOKEN)
            .output(),
    )
    .await
    .expect("smoke.sh finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}
