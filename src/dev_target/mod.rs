//! `roster dev-target`: an in-memory SCIM 2.0 server for demos, tests and benchmarks.
//! Depends only on `scim`'s types and constants: its filters are read by the `scim_v2` crate and
//! evaluated in `filter`, its PATCH applied in `patch`, with no code shared with roster's client,
//! so that tests checking roster against it check against an independent implementation.
//!
//! - SCIM root: `http://ADDR/scim/v2` ([`DevTarget::base_url`]): `/Users`, `/Groups` (CRUD,
//!   `filter=`, `startIndex`/`count`, PATCH, PUT, `.search`), `/ServiceProviderConfig` (no
//!   auth; advertises `filter.maxResults` = `--max-page-size`, ETags, PATCH), `/ResourceTypes`,
//!   `/Schemas`. `userName` and a group's `displayName` are unique ignoring case (409
//!   `uniqueness`); `meta.version` is a strong ETag from one counter, `If-Match` compares
//!   strongly (a weak tag never matches) and mismatches are 412; PATCH answers 200 with the
//!   resource. As strict as RFC 7644 where a lenient server would hide a client bug: POST and PUT
//!   need `schemas`, a PUT body's `id` must be the URL's, a PatchOp needs its `schemas`, a
//!   `replace` whose value filter matches nothing is 400 `noTarget`, `active` is a boolean.
//! - Control plane (no auth, no faults): `GET /_dev/stats` →
//!   `{"requests": {"GET": n, …}, "throttled": n, "failed": n, "hung": n, "dropped": n, "users": n, "groups": n}`
//!   (requests counts every SCIM request received, faulted or not), `POST /_dev/reset` (empties
//!   the store and the counters), `POST /_dev/users:load` (one JSON user per line, created as
//!   they are; answers `{"ids": [...]}`: seeds a dev-target in another process fast).
//! - Tenants: `/tenants/{name}/scim/v2` (and `/tenants/{name}/_dev/users:load`) is a store of
//!   its own, made empty on first use, with the same rules, faults and counters: one process
//!   serves many apps that each see only their own accounts (the multi-app reconcile bench).
//! - Full listings resume where the previous page ended (a cursor per listing in progress), so
//!   paging through n resources is O(n), not O(n²).
//! - Faults, applied in this order to every SCIM request: `--latency-ms`, `--rate-limit`
//!   (429 + `Retry-After` seconds), `--fail-rate` (half 503 + `Retry-After: 1`, half 500),
//!   `--hang-rate` (no answer until shutdown), then the `--token` check. `--seed` makes the
//!   fault draws reproducible.
//! - `--profile NAME` (`dev_target::profiles`): a catalogue connector's vendor, emulated by
//!   the rules its documentation states (each citing its source); `rfc` is the default. A
//!   profile's documented rate limits (Slack's and Miro's) are buckets of the whole process
//!   (every tenant: one organisation), checked after auth, 429 + `Retry-After` beyond one;
//!   `--vendor-limit NAME=LIMIT/SECONDS[:BURST]` replaces one (tests lower them).
//!   `--guest-domain D` names the domains of Asana's guests, which its listings leave out.
//! - TLS: `--tls-cert` and `--tls-key` (PEM files) serve https; `--client-ca` then requires a
//!   client certificate signed by that CA (mutual TLS).
//! - In-process use (tests, bench, demo): [`spawn`] on port 0, then [`DevTarget`]'s accessors
//!   read and edit the store directly.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

mod filter;
mod patch;
mod profiles;
mod server;
mod store;

pub use profiles::Profile;
pub use server::{SCIM_ROOT, TENANT_PREFIX};
pub use store::Kind;

#[derive(clap::Args, Debug, Clone)]
pub struct DevTargetArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Require `Authorization: Bearer T` (except on /ServiceProviderConfig and /_dev).
    #[arg(long)]
    pub token: Option<String>,
    /// Delay before answering each SCIM request.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Requests per second accepted (burst of the same size); above it 429 + Retry-After.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Requests accepted at once above `--rate-limit` (default: the rate), as a vendor's
    /// documented burst.
    #[arg(long, requires = "rate_limit")]
    pub rate_burst: Option<u32>,
    /// Share of requests answered 503 (with Retry-After) or 500, 0.0..=1.0.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of requests never answered, 0.0..=1.0.
    #[arg(long, default_value_t = 0.0)]
    pub hang_rate: f64,
    /// Seed for the fault injection's random draws.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most resources per page; larger `count`s are cut to it.
    #[arg(long, default_value_t = 200)]
    pub max_page_size: u32,
    /// `filter.maxResults` to advertise, if not `--max-page-size` (to play a server that
    /// advertises more than it returns).
    #[arg(long)]
    pub advertised_max_results: Option<u32>,
    /// A `startIndex` past the end returns page 1, as some servers do.
    #[arg(long)]
    pub paging_wraps: bool,
    /// Send `Retry-After` as an HTTP date instead of seconds.
    #[arg(long)]
    pub retry_after_http_date: bool,
    /// Answer the first N requests to /Users and /Groups 429 with `Retry-After:
    /// --throttle-seconds`, whatever the rate (a scripted, reproducible throttle).
    #[arg(long, default_value_t = 0)]
    pub throttle_first: u32,
    /// The `Retry-After` of `--throttle-first`'s answers, in seconds.
    #[arg(long, default_value_t = 3)]
    pub throttle_seconds: u64,
    /// Share of writes applied but never answered (the reply is lost), 0.0..=1.0.
    #[arg(long, default_value_t = 0.0)]
    pub drop_reply_rate: f64,
    /// Accept two users with one userName instead of answering 409 `uniqueness`, as targets
    /// that do not enforce uniqueness do (a duplicate create then makes a second account).
    #[arg(long)]
    pub allow_duplicate_user_names: bool,
    /// Emulate a catalogue connector's vendor: refuse what it refuses, answer as it answers
    /// (`rfc`, the default, is strict RFC 7644).
    #[arg(long, value_enum, default_value_t = Profile::Rfc)]
    pub profile: Profile,
    /// Replace one of the profile's documented rate limits (`slack`, `miro`): `NAME=LIMIT/SECONDS`
    /// or `NAME=LIMIT/SECONDS:BURST`, e.g. `writes=5/1:3` (repeatable; an unknown name is an
    /// error listing the profile's).
    #[arg(long = "vendor-limit", value_name = "NAME=LIMIT/SECONDS[:BURST]")]
    pub vendor_limits: Vec<String>,
    /// Serve https with this PEM certificate (then its chain); needs `--tls-key`.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Require a client certificate signed by this PEM CA (mutual TLS); needs `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<std::path::PathBuf>,
    /// With `--profile asana`: accounts whose userName is at this domain are guests, left out
    /// of every listing of /Users as Asana leaves its guests out (repeatable).
    #[arg(long = "guest-domain")]
    pub guest_domains: Vec<String>,
}

impl Default for DevTargetArgs {
    /// The CLI defaults, except port 0.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            latency_ms: 0,
            rate_limit: None,
            rate_burst: None,
            fail_rate: 0.0,
            hang_rate: 0.0,
            seed: None,
            max_page_size: 200,
            advertised_max_results: None,
            paging_wraps: false,
            retry_after_http_date: false,
            throttle_first: 0,
            throttle_seconds: 3,
            drop_reply_rate: 0.0,
            allow_duplicate_user_names: false,
            profile: Profile::Rfc,
            vendor_limits: Vec::new(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            guest_domains: Vec::new(),
        }
    }
}

/// A running dev-target. Dropping it stops the server.
pub struct DevTarget {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<server::Shared>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.to_owned())
}

/// Binds and starts serving in the background.
pub async fn spawn(args: DevTargetArgs) -> std::io::Result<DevTarget> {
    use poem::listener::{Acceptor as _, AcceptorExt as _, Listener as _};
    if [args.fail_rate, args.hang_rate, args.drop_reply_rate]
        .iter()
        .any(|r| !(0.0..=1.0).contains(r))
    {
        return Err(invalid(
            "--fail-rate, --hang-rate and --drop-reply-rate must be between 0 and 1",
        ));
    }
    args.profile
        .rate_limits(&args.vendor_limits)
        .map_err(|e| invalid(&e))?;
    let tls = tls_config(&args)?;
    let acceptor = poem::listener::TcpListener::bind(args.listen)
        .into_acceptor()
        .await?;
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .ok_or_else(|| invalid("listener has no socket address"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base_url = format!("{scheme}://{addr}{SCIM_ROOT}");
    let acceptor = match tls {
        Some(config) => crate::listener::TlsAcceptor::new(acceptor, config).boxed(),
        None => acceptor.boxed(),
    };
    let shutdown = CancellationToken::new();
    let shared = Arc::new(server::Shared::new(
        args,
        base_url.clone(),
        shutdown.clone(),
    ));
    let endpoint = server::DevEndpoint {
        shared: shared.clone(),
    };
    let task = tokio::spawn(
        poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            endpoint,
            shutdown.cancelled_owned(),
            Some(Duration::from_secs(1)),
        ),
    );
    Ok(DevTarget {
        addr,
        base_url,
        shared,
        task: Some(task),
    })
}

/// Serves until Ctrl-C or SIGTERM; prints the base URL on stdout first.
/// The rustls configuration of `--tls-cert`, `--tls-key` and `--client-ca`, if given.
fn tls_config(args: &DevTargetArgs) -> std::io::Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        if args.tls_cert.is_some() || args.tls_key.is_some() || args.client_ca.is_some() {
            return Err(invalid(
                "--tls-cert and --tls-key go together (and --client-ca needs them)",
            ));
        }
        return Ok(None);
    };
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|e| invalid(&format!("{}: {e}", path.display())))
    };
    let client_ca = args.client_ca.as_ref().map(read).transpose()?;
    crate::pki::server_config(&read(cert)?, &read(key)?, client_ca.as_deref())
        .map(Some)
        .map_err(|e| invalid(&e.to_string()))
}

pub async fn run(args: DevTargetArgs) -> std::io::Result<()> {
    let target = spawn(args).await?;
    println!("{}", target.base_url());
    wait_for_signal().await;
    target.shutdown().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl DevTarget {
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/scim/v2`, the URL to register as an app's `base_url`.
    #[must_use]
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    fn snapshot(&self, kind: Kind) -> Vec<Value> {
        self.shared
            .store
            .lock()
            .map(|s| s.snapshot(kind))
            .unwrap_or_default()
    }

    /// Every user, in creation order.
    #[must_use]
    pub fn users_snapshot(&self) -> Vec<Value> {
        self.snapshot(Kind::User)
    }

    /// One user as stored, read in-process (no request: neither counted nor rate limited).
    #[must_use]
    pub fn user(&self, id: &str) -> Option<Value> {
        self.shared
            .store
            .lock()
            .ok()
            .and_then(|s| s.get(Kind::User, id).ok())
    }

    #[must_use]
    pub fn groups_snapshot(&self) -> Vec<Value> {
        self.snapshot(Kind::Group)
    }

    /// Same document as `GET /_dev/stats`.
    #[must_use]
    pub fn stats(&self) -> Value {
        self.shared.stats_json()
    }

    /// Empties the store and the counters.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Creates a resource directly (no faults, no auth), e.g. to seed a large target fast.
    pub fn insert(&self, kind: Kind, resource: Value) -> Result<Value, String> {
        let mut store = self
            .shared
            .store
            .lock()
            .map_err(|_| "store poisoned".to_string())?;
        store.create(kind, resource).map_err(|r| r.detail)
    }

    /// Edits a stored resource as someone in the target's admin UI would (drift); bumps its
    /// version. Returns whether it exists.
    pub fn edit(&self, kind: Kind, id: &str, f: impl FnOnce(&mut Value)) -> bool {
        self.shared
            .store
            .lock()
            .map(|mut s| s.edit(kind, id, f))
            .unwrap_or(false)
    }

    /// Stops accepting, ends hanging requests, waits up to a second for the others.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.shared.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for DevTarget {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}
