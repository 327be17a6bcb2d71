use std::sync::{Arc, Mutex};
use std::time::Duration;

use roster::dev_target::{self, DevTarget, DevTargetArgs};
use roster::net_guard::TargetPolicy;
use roster::scim::{Auth, CallRecord, ScimClient, TargetConfig};
use secrecy::SecretString;

pub const TOKEN: &str = "dev-token-canary";

/// Calls a client made, in order.
#[derive(Clone, Default)]
pub struct Calls(pub Arc<Mutex<Vec<CallRecord>>>);

impl Calls {
    pub fn all(&self) -> Vec<CallRecord> {
        self.0.lock().unwrap().clone()
    }
    /// `"METHOD status"` per call, e.g. `["PUT 412", "GET 200", "PUT 200"]`.
    pub fn summary(&self) -> Vec<String> {
        self.all()
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c.method,
                    c.status.map_or("-".into(), |s| s.to_string())
                )
            })
            .collect()
    }
    /// The status of each filtered listing (`filter=` look-up), in order; `None` when no
    /// answer arrived.
    pub fn listing_statuses(&self) -> Vec<Option<u16>> {
        self.all()
            .iter()
            .filter(|c| c.path.contains("filter="))
            .map(|c| c.status)
            .collect()
    }
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

pub fn client(
    base_url: &str,
    auth: Auth,
    tweak: impl FnOnce(&mut TargetConfig),
) -> (ScimClient, Calls) {
    let calls = Calls::default();
    let sink = calls.clone();
    let mut config = TargetConfig::new(
        url::Url::parse(base_url).unwrap(),
        auth,
        TargetPolicy::AllowPrivate,
    );
    config.timeout = Duration::from_secs(10);
    config.observer = Some(Arc::new(move |r: &CallRecord| {
        sink.0.lock().unwrap().push(r.clone())
    }));
    tweak(&mut config);
    (ScimClient::new(config).unwrap(), calls)
}

/// Looks every one of `user_names` up at once through `batcher`, as the jobs of one app would:
/// each one's answer, in order.
pub async fn find_all(
    batcher: &Arc<roster::delivery::lookups::LookupBatcher>,
    client: &ScimClient,
    user_names: &[impl AsRef<str>],
) -> Vec<Result<Vec<serde_json::Value>, roster::scim::ScimError>> {
    futures::future::join_all(
        user_names
            .iter()
            .map(|name| batcher.find(client, "userName", name.as_ref())),
    )
    .await
}

pub fn bearer(token: &str) -> Auth {
    Auth::Bearer(SecretString::from(token.to_owned()))
}

pub struct TestTarget {
    pub target: DevTarget,
    pub client: ScimClient,
    pub calls: Calls,
}

/// A dev-target on port 0 requiring [`TOKEN`], and a client for it.
pub async fn spawn_target(args: DevTargetArgs) -> TestTarget {
    spawn_target_with(args, |_| {}).await
}

pub async fn spawn_target_with(
    args: DevTargetArgs,
    tweak: impl FnOnce(&mut TargetConfig),
) -> TestTarget {
    let args = DevTargetArgs {
        token: Some(TOKEN.into()),
        ..args
    };
    let target = dev_target::spawn(args).await.unwrap();
    let (client, calls) = client(&target.base_url(), bearer(TOKEN), tweak);
    TestTarget {
        target,
        client,
        calls,
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn user(name: &str) -> serde_json::Value {
    serde_json::json!({
        "schemas": [roster::scim::schemas::USER],
        "userName": name,
        "name": {"givenName": "Ada", "familyName": "Lovelace"},
        "emails": [{"type": "work", "value": format!("{name}@example.com"), "primary": true}],
        "active": true,
    })
}

pub fn group(name: &str) -> serde_json::Value {
    serde_json::json!({"schemas": [roster::scim::schemas::GROUP], "displayName": name, "members": []})
}

/// The ids of a list of resources.
pub fn ids(resources: &[serde_json::Value]) -> Vec<String> {
    resources
        .iter()
        .map(|r| roster::scim::id_of(r).unwrap().to_owned())
        .collect()
}

/// Serves `app` on a free loopback port (a scripted peer for one test); returns its address.
pub async fn serve(app: impl poem::Endpoint + 'static) -> std::net::SocketAddr {
    crate::common::serve(app).await
}
