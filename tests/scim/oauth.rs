//! OAuth2 client credentials against a tiny local token endpoint.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use poem::{EndpointExt, Route, handler, post, web::Data};
use roster::dev_target::{self, DevTargetArgs};
use roster::scim::Auth;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{TOKEN, client, serve};

struct Issuer {
    requests: AtomicUsize,
    /// Tokens handed out in turn; the last one repeats.
    tokens: Vec<&'static str>,
}

#[handler]
fn token(req: &poem::Request, body: String, issuer: Data<&Arc<Issuer>>) -> poem::Response {
    let n = issuer.requests.fetch_add(1, Ordering::SeqCst);
    let expected = base64::engine::general_purpose::STANDARD.encode("roster:client-secret-canary");
    let authorized = req.header("authorization") == Some(format!("Basic {expected}").as_str());
    if !authorized
        || !body.contains("grant_type=client_credentials")
        || !body.contains("scope=scim")
    {
        return poem::Response::builder()
            .status(poem::http::StatusCode::UNAUTHORIZED)
            .body("{\"error\":\"invalid_client\"}");
    }
    let token = issuer.tokens[n.min(issuer.tokens.len() - 1)];
    poem::Response::builder()
        .content_type("application/json")
        .body(
            json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}).to_string(),
        )
}

async fn issuer(tokens: Vec<&'static str>) -> (String, Arc<Issuer>) {
    let issuer = Arc::new(Issuer {
        requests: AtomicUsize::new(0),
        tokens,
    });
    let addr = serve(Route::new().at("/token", post(token)).data(issuer.clone())).await;
    (format!("http://{addr}/token"), issuer)
}

fn oauth(token_url: &str) -> Auth {
    Auth::OAuth2ClientCredentials {
        token_url: url::Url::parse(token_url).unwrap(),
        client_id: "roster".into(),
        client_secret: SecretString::from("client-secret-canary"),
        scope: Some("scim".into()),
    }
}

#[tokio::test]
async fn one_token_serves_many_calls() {
    let target = dev_target::spawn(DevTargetArgs {
        token: Some(TOKEN.into()),
        ..DevTargetArgs::default()
    })
    .await
    .unwrap();
    let (token_url, issuer) = issuer(vec![TOKEN]).await;
    let (c, calls) = client(&target.base_url(), oauth(&token_url), |_| {});
    let users = c.users();
    let calls_made =
        futures::future::join_all((0..5).map(|_| users.find_by("userName", "nobody"))).await;
    for result in calls_made {
        assert!(result.unwrap().is_empty());
    }
    assert_eq!(
        issuer.requests.load(Ordering::SeqCst),
        1,
        "token cached and shared"
    );
    let log = format!("{:?} {c:?}", calls.all());
    assert!(!log.contains("canary") && !log.contains(TOKEN), "{log}");
}

#[tokio::test]
async fn a_rejected_cached_token_is_refreshed_once() {
    let target = dev_target::spawn(DevTargetArgs {
        token: Some(TOKEN.into()),
        ..DevTargetArgs::default()
    })
    .await
    .unwrap();
    let (token_url, issuer) = issuer(vec!["revoked-token", TOKEN]).await;
    let (c, _) = client(&target.base_url(), oauth(&token_url), |_| {});
    // A freshly fetched token that is refused is not fetched again at once.
    let err = c.users().get("x").await.unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert_eq!(issuer.requests.load(Ordering::SeqCst), 1);
    // The cached, refused token is replaced once and the call retried.
    let err = c.users().get("x").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(issuer.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refusing_token_endpoint_is_an_auth_error() {
    let target = dev_target::spawn(DevTargetArgs::default()).await.unwrap();
    let (token_url, _) = issuer(vec![TOKEN]).await;
    let mut auth = oauth(&token_url);
    if let Auth::OAuth2ClientCredentials { client_secret, .. } = &mut auth {
        *client_secret = SecretString::from("wrong-canary");
    }
    let (c, _) = client(&target.base_url(), auth, |_| {});
    let err = c.users().get("x").await.unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert!(!format!("{err:?}").contains("canary"));
}
