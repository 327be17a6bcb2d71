//! The dev-target's HTTP side: routing, fault injection, auth, stats.
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use poem::http::{Method, StatusCode};
use poem::{Endpoint, Request, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::DevTargetArgs;
use super::filter;
use super::profiles;
use super::store::{Kind, Refusal, Store};
use crate::scim::schemas;

/// The SCIM root under the listen address.
pub const SCIM_ROOT: &str = "/scim/v2";
/// A tenant's paths: `/tenants/{name}` + the usual ones (its SCIM root and `_dev/users:load`).
pub const TENANT_PREFIX: &str = "/tenants/";
const MAX_REQUEST_BODY: usize = 1024 * 1024;

#[derive(Default)]
struct Stats {
    requests: BTreeMap<String, u64>,
    throttled: u64,
    /// Answers still to throttle under `--throttle-first`.
    scripted_throttles_used: u32,
    failed: u64,
    hung: u64,
    dropped: u64,
}

pub struct Shared {
    pub store: Mutex<Store>,
    /// `/tenants/{name}/…`: stores of their own, made on first use ([`Shared::tenant`]).
    tenants: Mutex<HashMap<String, Arc<Mutex<Store>>>>,
    /// The listen address's root (the base URL without [`SCIM_ROOT`]).
    root: String,
    stats: Mutex<Stats>,
    args: DevTargetArgs,
    limiter: Option<DefaultDirectRateLimiter>,
    /// The profile's documented rate limits (`--vendor-limit` applied), one bucket each for
    /// every tenant together.
    vendor_limits: Vec<(profiles::VendorLimit, DefaultDirectRateLimiter)>,
    rng: Mutex<StdRng>,
    pub shutdown: CancellationToken,
}

impl Shared {
    pub fn new(args: DevTargetArgs, base_url: String, shutdown: CancellationToken) -> Self {
        let limiter = args.rate_limit.and_then(NonZeroU32::new).map(|n| {
            let burst = args.rate_burst.and_then(NonZeroU32::new).unwrap_or(n);
            DefaultDirectRateLimiter::direct(Quota::per_second(n).allow_burst(burst))
        });
        let vendor_limits = args
            .profile
            .rate_limits(&args.vendor_limits)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|limit| {
                let period =
                    Duration::from_secs(u64::from(limit.window_seconds)) / limit.limit.max(1);
                let quota = Quota::with_period(period)?
                    .allow_burst(NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN));
                Some((limit, DefaultDirectRateLimiter::direct(quota)))
            })
            .collect();
        let rng = match args.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let root = base_url
            .strip_suffix(SCIM_ROOT)
            .unwrap_or(&base_url)
            .to_owned();
        Self {
            store: Mutex::new(Store::new(base_url).allowing_duplicate_user_names(
                args.allow_duplicate_user_names && !args.profile.rejects_duplicate_user_names(),
            )),
            tenants: Mutex::default(),
            root,
            stats: Mutex::new(Stats::default()),
            args,
            limiter,
            vendor_limits,
            rng: Mutex::new(rng),
            shutdown,
        }
    }

    pub fn stats_json(&self) -> Value {
        let (users, groups) = self
            .store
            .lock()
            .map(|s| (s.count(Kind::User), s.count(Kind::Group)))
            .unwrap_or_default();
        let stats = self.stats.lock();
        let Ok(stats) = stats else {
            return json!({});
        };
        json!({
            "requests": stats.requests,
            "throttled": stats.throttled,
            "failed": stats.failed,
            "hung": stats.hung,
            "dropped": stats.dropped,
            "users": users,
            "groups": groups,
        })
    }

    pub fn reset(&self) {
        if let Ok(mut store) = self.store.lock() {
            store.clear();
        }
        if let Ok(mut stats) = self.stats.lock() {
            *stats = Stats::default();
        }
    }

    /// The store of tenant `name` (made empty on first use), whose SCIM root is
    /// `/tenants/{name}/scim/v2`: one dev-target process serving many apps that each see only
    /// their own users and groups (the multi-app reconcile bench).
    fn tenant(&self, name: &str) -> Option<Arc<Mutex<Store>>> {
        let mut tenants = self.tenants.lock().ok()?;
        let store = tenants.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Mutex::new(Store::new(format!(
                "{}{TENANT_PREFIX}{name}{SCIM_ROOT}",
                self.root
            ))))
        });
        Some(store.clone())
    }

    fn bump<F: FnOnce(&mut Stats)>(&self, f: F) {
        if let Ok(mut stats) = self.stats.lock() {
            f(&mut stats);
        }
    }

    /// Whether this request is one of the first `--throttle-first` (counted as throttled).
    fn scripted_throttle(&self) -> bool {
        let Ok(mut stats) = self.stats.lock() else {
            return false;
        };
        if stats.scripted_throttles_used >= self.args.throttle_first {
            return false;
        }
        stats.scripted_throttles_used += 1;
        stats.throttled += 1;
        true
    }

    fn roll(&self) -> f64 {
        self.rng.lock().map(|mut r| r.r#gen::<f64>()).unwrap_or(1.0)
    }
}

/// `POST /_dev/users:load`: seeds users fast (no faults, no auth, no `schemas` needed), from a
/// body of one JSON resource per line; answers `{"ids": [...]}` in the same order. For a
/// dev-target in its own process, as the reconcile bench runs it.
async fn load_users(store: &Mutex<Store>, req: Request) -> Response {
    let body = match req.into_body().into_bytes_limit(LOAD_BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => return error_response(&Refusal::new(413, None, e.to_string())),
    };
    let mut ids = Vec::new();
    let Ok(mut store) = store.lock() else {
        return error_response(&Refusal::new(500, None, "store poisoned"));
    };
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let created = serde_json::from_slice::<Value>(line)
            .map_err(|e| Refusal::new(400, Some("invalidSyntax"), format!("line {}: {e}", n + 1)))
            .and_then(|resource| store.create(Kind::User, resource));
        match created {
            Ok(created) => ids.push(created["id"].clone()),
            Err(refusal) => return error_response(&refusal),
        }
    }
    json_response(200, &serde_json::json!({ "ids": ids }))
}

/// `/tenants/{name}/rest` → `(name, /rest)`; `None` for a path outside any tenant. A name is 1
/// to 64 letters, digits, `-` or `_`.
fn split_tenant(path: &str) -> Option<Result<(&str, &str), Refusal>> {
    let after = path.strip_prefix(TENANT_PREFIX)?;
    let (name, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    Some(if valid {
        Ok((name, rest))
    } else {
        Err(Refusal::new(404, None, format!("no tenant `{name}`")))
    })
}

/// A seeding request's body: 64 MiB, some 100k accounts.
const LOAD_BODY_LIMIT: usize = 64 << 20;

fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .content_type("application/scim+json")
        .body(body.to_string())
}

fn resource_response(status: u16, resource: &Value) -> Response {
    let mut response = json_response(status, resource);
    if let Some(version) = resource["meta"]["version"].as_str()
        && let Ok(value) = version.parse()
    {
        response.headers_mut().insert("etag", value);
    }
    if status == 201
        && let Some(location) = resource["meta"]["location"].as_str()
        && let Ok(value) = location.parse()
    {
        response.headers_mut().insert("location", value);
    }
    response
}

fn error_response(refusal: &Refusal) -> Response {
    let mut body = json!({
        "schemas": [schemas::ERROR],
        "status": refusal.status.to_string(),
        "detail": refusal.detail,
    });
    if let Some(t) = refusal.scim_type {
        body["scimType"] = Value::String(t.into());
    }
    json_response(refusal.status, &body)
}

/// `Retry-After` in seconds, or, with `--retry-after-http-date`, as the HTTP date that many
/// seconds from now (RFC 9110 allows both; clients must handle both).
fn with_retry_after(mut response: Response, seconds: u64, as_date: bool) -> Response {
    let text = if as_date {
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(seconds))
    } else {
        seconds.to_string()
    };
    if let Ok(value) = text.parse() {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

/// 429 with `Retry-After` (whole seconds, at least 1) until `not_until`; counted as throttled.
fn throttled(
    shared: &Shared,
    not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>,
    detail: String,
) -> Response {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    shared.bump(|s| s.throttled += 1);
    with_retry_after(
        error_response(&Refusal::new(429, None, detail)),
        seconds.max(1),
        shared.args.retry_after_http_date,
    )
}

/// The whole server as one endpoint, so fault injection applies before any routing.
pub struct DevEndpoint {
    pub shared: Arc<Shared>,
}

impl Endpoint for DevEndpoint {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        Ok(self.handle(req).await)
    }
}

impl DevEndpoint {
    async fn handle(&self, req: Request) -> Response {
        let shared = &self.shared;
        let mut path = req.uri().path().to_owned();
        let method = req.method().clone();
        let tenant = match split_tenant(&path) {
            None => None,
            Some(Ok((name, rest))) => {
                let Some(store) = shared.tenant(name) else {
                    return error_response(&Refusal::new(500, None, "tenants poisoned"));
                };
                path = rest.to_owned();
                Some(store)
            }
            Some(Err(refusal)) => return error_response(&refusal),
        };
        let store = tenant.as_deref().unwrap_or(&shared.store);
        match (method.as_str(), path.as_str(), tenant.is_some()) {
            ("GET", "/_dev/stats", false) => return json_response(200, &shared.stats_json()),
            ("POST", "/_dev/reset", false) => {
                shared.reset();
                return Response::builder().status(StatusCode::NO_CONTENT).finish();
            }
            ("POST", "/_dev/users:load", _) => return load_users(store, req).await,
            _ => {}
        }
        let Some(rest) = path.strip_prefix(SCIM_ROOT) else {
            return error_response(&Refusal::new(404, None, format!("no route {path}")));
        };
        let segments: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                url::form_urlencoded::parse(format!("s={s}").replace('+', "%2B").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            })
            .collect();
        shared.bump(|s| *s.requests.entry(method.to_string()).or_default() += 1);

        let args = &shared.args;
        if args.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.latency_ms)).await;
        }
        let resource_path = matches!(
            segments.first().map(String::as_str),
            Some("Users" | "Groups")
        );
        if resource_path && shared.scripted_throttle() {
            let refusal = Refusal::new(429, None, "scripted throttle");
            return with_retry_after(
                error_response(&refusal),
                args.throttle_seconds,
                args.retry_after_http_date,
            );
        }
        if let Some(limiter) = &shared.limiter
            && let Err(not_until) = limiter.check()
        {
            return throttled(shared, &not_until, "rate limit exceeded".to_owned());
        }
        if args.fail_rate > 0.0 && shared.roll() < args.fail_rate {
            shared.bump(|s| s.failed += 1);
            return if shared.roll() < 0.5 {
                with_retry_after(
                    error_response(&Refusal::new(503, None, "injected failure")),
                    1,
                    args.retry_after_http_date,
                )
            } else {
                error_response(&Refusal::new(500, None, "injected failure"))
            };
        }
        if args.hang_rate > 0.0 && shared.roll() < args.hang_rate {
            shared.bump(|s| s.hung += 1);
            // Never answer; the client gives up. Shutdown ends the wait.
            shared.shutdown.cancelled().await;
            return error_response(&Refusal::new(503, None, "shutting down"));
        }
        let public = segments.len() == 1
            && matches!(
                segments[0].as_str(),
                "ServiceProviderConfig" | "ServiceProviderConfigs"
            );
        if let Some(token) = &args.token
            && !public
        {
            let presented = req
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "));
            let ok = presented.is_some_and(|p| {
                use subtle::ConstantTimeEq as _;
                bool::from(p.as_bytes().ct_eq(token.as_bytes()))
            });
            if !ok {
                return error_response(&Refusal::new(401, None, "missing or wrong bearer token"));
            }
        }
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let if_match = req.header("if-match").map(str::to_owned);
        let user_agent = req.header("user-agent").map(str::to_owned);
        let content_type = req.header("content-type").map(str::to_owned);
        let body = match req.into_body().into_bytes_limit(MAX_REQUEST_BODY).await {
            Ok(bytes) => bytes,
            Err(_) => return error_response(&Refusal::new(413, None, "body too large")),
        };
        let body_bytes = body.len();
        let body = if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
            let json_ok = content_type.as_deref().is_some_and(|ct| {
                let media = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                media == "application/json" || media == "application/scim+json"
            });
            if !json_ok {
                return error_response(&Refusal::new(
                    415,
                    None,
                    "Content-Type must be application/scim+json",
                ));
            }
            match serde_json::from_slice::<Value>(&body) {
                Ok(v) => Some(v),
                Err(e) => {
                    return error_response(&Refusal::new(
                        400,
                        Some("invalidSyntax"),
                        format!("invalid JSON: {e}"),
                    ));
                }
            }
        } else {
            None
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let seen = profiles::Seen {
            method: &method,
            segments: &segments,
            query: &query,
            body: body.as_ref(),
            user_agent: user_agent.as_deref(),
            body_bytes,
        };
        // The vendor's documented limits, in their order; a request refused by one has taken
        // the tokens of those before it, as it counted there.
        for (limit, bucket) in &shared.vendor_limits {
            if (limit.counts)(&seen)
                && let Err(not_until) = bucket.check()
            {
                let detail = format!(
                    "rate limit `{}` exceeded: {} per {} s",
                    limit.name, limit.limit, limit.window_seconds
                );
                return throttled(shared, &not_until, detail);
            }
        }
        let verdict = args.profile.check(&seen);
        let result = match verdict {
            profiles::Verdict::Serve => {
                self.route(store, &method, &segments, &query, body, if_match.as_deref())
            }
            profiles::Verdict::Refuse(refusal) => Err(refusal),
            profiles::Verdict::EmptyList => Ok(json_response(200, &list_of(Vec::new()))),
            profiles::Verdict::ServeFilter(filter) => {
                let mut query = query.clone();
                query.insert("filter".to_owned(), filter);
                self.route(store, &method, &segments, &query, body, if_match.as_deref())
            }
            profiles::Verdict::Deactivate => deactivate(store, &segments, if_match.as_deref()),
        };
        let is_write = matches!(
            method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        if is_write && args.drop_reply_rate > 0.0 && shared.roll() < args.drop_reply_rate {
            // The write is applied but its answer never arrives: the case where a client must
            // not create the account a second time.
            shared.bump(|s| s.dropped += 1);
            shared.shutdown.cancelled().await;
            return error_response(&Refusal::new(503, None, "shutting down"));
        }
        match result {
            Ok(response) => response,
            Err(refusal) => error_response(&refusal),
        }
    }

    fn route(
        &self,
        store: &Mutex<Store>,
        method: &Method,
        segments: &[&str],
        query: &BTreeMap<String, String>,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Result<Response, Refusal> {
        let args = &self.shared.args;
        let kind_of = |s: &str| match s {
            "Users" => Some(Kind::User),
            "Groups" => Some(Kind::Group),
            _ => None,
        };
        let mut store = store
            .lock()
            .map_err(|_| Refusal::new(500, None, "store poisoned"))?;
        let body = || body.clone().unwrap_or(Value::Null);
        // RFC 7644 §4: the discovery endpoints are read-only.
        if let Some(endpoint) = segments.first()
            && matches!(
                *endpoint,
                "ServiceProviderConfig" | "ServiceProviderConfigs" | "ResourceTypes" | "Schemas"
            )
            && method != Method::GET
        {
            return Err(Refusal::new(
                405,
                None,
                format!(
                    "{method} is not allowed on /{endpoint}: discovery endpoints are read-only"
                ),
            ));
        }
        match (method.as_str(), segments) {
            ("GET", [discovery]) if *discovery == args.profile.discovery_segment() => {
                Ok(json_response(200, &service_provider_config(args)))
            }
            ("GET", ["ResourceTypes"]) => Ok(json_response(200, &list_of(resource_types()))),
            ("GET", ["ResourceTypes", name]) => resource_types()
                .into_iter()
                .find(|t| t["name"] == *name)
                .map(|t| json_response(200, &t))
                .ok_or_else(|| Refusal::new(404, None, "no such resource type")),
            ("GET", ["Schemas"]) => Ok(json_response(200, &list_of(schema_docs()))),
            ("GET", ["Schemas", id]) => schema_docs()
                .into_iter()
                .find(|s| s["id"] == *id)
                .map(|s| json_response(200, &s))
                .ok_or_else(|| Refusal::new(404, None, "no such schema")),
            ("GET", [collection]) => {
                let kind = kind_of(collection)
                    .ok_or_else(|| Refusal::new(404, None, "no such endpoint"))?;
                Ok(self.list(&store, kind, collection, query))
            }
            ("POST", [collection, ".search"]) => {
                let kind = kind_of(collection)
                    .ok_or_else(|| Refusal::new(404, None, "no such endpoint"))?;
                Ok(self.list(&store, kind, collection, &search_query(&body())))
            }
            // RFC 7644 §3.4.3: a search from the root spans every resource type.
            ("POST", [".search"]) => Ok(self.search_all(&store, &search_query(&body()))),
            ("POST", [collection]) => {
                let kind = kind_of(collection)
                    .ok_or_else(|| Refusal::new(404, None, "no such endpoint"))?;
                Store::require_schemas(kind, &body())?;
                let created = store.create(kind, body())?;
                Ok(resource_response(201, &created))
            }
            (_, [collection, id]) => {
                let kind = kind_of(collection)
                    .ok_or_else(|| Refusal::new(404, None, "no such endpoint"))?;
                // A vendor's refusal of what a group write would change (a rename).
                if kind == Kind::Group
                    && matches!(*method, Method::PUT | Method::PATCH)
                    && let Ok(current) = store.get(kind, id)
                    && let Some(refusal) =
                        args.profile.group_write_refusal(method, &current, &body())
                {
                    return Err(refusal);
                }
                match method.as_str() {
                    "GET" => {
                        let mut resource = store.get(kind, id)?;
                        args.profile.shape_read(collection, &mut resource);
                        Ok(resource_response(
                            200,
                            &project(resource, &Projection::of(query)),
                        ))
                    }
                    "PUT" | "PATCH" => {
                        let written = if *method == Method::PUT {
                            Store::require_schemas(kind, &body())?;
                            store.replace(kind, id, body(), if_match)?
                        } else {
                            store.patch(kind, id, &body(), if_match)?
                        };
                        if kind == Kind::User
                            && written.get("active") == Some(&Value::Bool(false))
                            && args.profile.deactivation_leaves_groups()
                        {
                            store.leave_groups(id);
                        }
                        Ok(resource_response(200, &written))
                    }
                    "DELETE" => {
                        store.delete(kind, id, if_match)?;
                        Ok(Response::builder().status(StatusCode::NO_CONTENT).finish())
                    }
                    _ => Err(Refusal::new(405, None, "method not allowed")),
                }
            }
            _ => Err(Refusal::new(404, None, "no such endpoint")),
        }
    }

    /// A root search: users then groups matching the filter, paged together.
    fn search_all(&self, store: &Store, query: &BTreeMap<String, String>) -> Response {
        let filter = match query.get("filter").filter(|f| !f.trim().is_empty()) {
            Some(text) => match filter::parse(text) {
                Ok(f) => Some(f),
                Err(e) => return error_response(&Refusal::new(400, Some("invalidFilter"), e)),
            },
            None => None,
        };
        let projection = Projection::of(query);
        let args = &self.shared.args;
        let mut found = Vec::new();
        for kind in [Kind::User, Kind::Group] {
            found.extend(
                store
                    .list(kind, filter.as_ref(), 1, usize::MAX, false)
                    .resources
                    .into_iter()
                    .filter(|r| args.profile.lists(kind.endpoint(), r, &args.guest_domains)),
            );
        }
        let number = |key: &str| query.get(key).and_then(|v| v.trim().parse::<i64>().ok());
        let (default, max) = page_sizes(&self.shared.args);
        let count =
            number("count").map_or(default, |c| usize::try_from(c.max(0)).unwrap_or(0).min(max));
        let start = usize::try_from(number("startIndex").unwrap_or(1).max(1)).unwrap_or(1);
        let total = found.len();
        let resources: Vec<Value> = found
            .into_iter()
            .skip(start - 1)
            .take(count)
            .map(|r| project(r, &projection))
            .collect();
        json_response(
            200,
            &json!({
                "schemas": [schemas::LIST_RESPONSE],
                "totalResults": total,
                "itemsPerPage": resources.len(),
                "startIndex": start,
                "Resources": resources,
            }),
        )
    }

    /// A page of what the profile lists (`Profile::lists`): every match is read, the ones the
    /// vendor leaves out dropped, then the page taken, so `totalResults` counts what is listed.
    fn listed(
        &self,
        store: &Store,
        kind: Kind,
        collection: &str,
        filter: Option<&scim_v2::filter::Filter>,
        start_index: usize,
        count: usize,
    ) -> super::store::Page {
        let args = &self.shared.args;
        if args.guest_domains.is_empty() {
            return store.list(kind, filter, start_index, count, false);
        }
        let listed: Vec<Value> = store
            .list(kind, filter, 1, usize::MAX, false)
            .resources
            .into_iter()
            .filter(|r| args.profile.lists(collection, r, &args.guest_domains))
            .collect();
        super::store::Page {
            total: listed.len(),
            start_index,
            resources: listed
                .into_iter()
                .skip(start_index.saturating_sub(1))
                .take(count)
                .collect(),
        }
    }

    fn list(
        &self,
        store: &Store,
        kind: Kind,
        collection: &str,
        query: &BTreeMap<String, String>,
    ) -> Response {
        let args = &self.shared.args;
        let filter = match query.get("filter").filter(|f| !f.trim().is_empty()) {
            Some(text) => match filter::parse(text) {
                Ok(f) => Some(f),
                Err(e) => return error_response(&Refusal::new(400, Some("invalidFilter"), e)),
            },
            None => None,
        };
        let number = |key: &str| query.get(key).and_then(|v| v.trim().parse::<i64>().ok());
        let (default, max) = page_sizes(args);
        let count =
            number("count").map_or(default, |c| usize::try_from(c.max(0)).unwrap_or(0).min(max));
        let projection = Projection::of(query);
        // A resource as this read returns it: as the vendor shapes it, with the asked attributes.
        let shaped = |mut resource: Value| {
            args.profile.shape_read(collection, &mut resource);
            project(resource, &projection)
        };
        let cursor = query.get("cursor").filter(|_| args.profile.cursor_paging());
        if let Some(cursor) = cursor {
            // RFC 9865: the cursor is opaque; here it is the offset of the next page.
            let offset = match cursor.as_str() {
                "" => 0,
                text => match text.strip_prefix("next:").and_then(|n| n.parse().ok()) {
                    Some(offset) => offset,
                    None => {
                        return error_response(&Refusal::new(
                            400,
                            Some("invalidCursor"),
                            "unknown cursor",
                        ));
                    }
                },
            };
            let page = self.listed(store, kind, collection, filter.as_ref(), offset + 1, count);
            let resources: Vec<Value> = page.resources.into_iter().map(shaped).collect();
            let next = offset + resources.len();
            let mut body = json!({
                "schemas": [schemas::LIST_RESPONSE],
                "itemsPerPage": resources.len(),
                "Resources": resources,
            });
            if next < page.total && count > 0 {
                body["nextCursor"] = Value::String(format!("next:{next}"));
            }
            return json_response(200, &body);
        }
        // RFC 7644 §3.4.2.4: startIndex < 1 is 1; a negative count is 0.
        let start = usize::try_from(number("startIndex").unwrap_or(1).max(1)).unwrap_or(1);
        let page = if args.guest_domains.is_empty() {
            store.list(kind, filter.as_ref(), start, count, args.paging_wraps)
        } else {
            self.listed(store, kind, collection, filter.as_ref(), start, count)
        };
        let resources: Vec<Value> = page.resources.into_iter().map(shaped).collect();
        json_response(
            200,
            &json!({
                "schemas": [schemas::LIST_RESPONSE],
                "totalResults": page.total,
                "itemsPerPage": resources.len(),
                "startIndex": page.start_index,
                "Resources": resources,
            }),
        )
    }
}

/// A DELETE of a user that the vendor reads as "deactivate": `active` set to false (with the
/// request's `If-Match`), the account kept; 204 as a DELETE answers.
fn deactivate(
    store: &Mutex<Store>,
    segments: &[&str],
    if_match: Option<&str>,
) -> Result<Response, Refusal> {
    let ["Users", id] = segments else {
        return Err(Refusal::new(404, None, "no such endpoint"));
    };
    let deactivate = json!({
        "schemas": [schemas::PATCH_OP],
        "Operations": [{"op": "replace", "path": "active", "value": false}],
    });
    store
        .lock()
        .map_err(|_| Refusal::new(500, None, "store poisoned"))?
        .patch(Kind::User, id, &deactivate, if_match)?;
    Ok(Response::builder().status(StatusCode::NO_CONTENT).finish())
}

/// A `POST …/.search` body's parameters as the query a GET would carry (RFC 7644 §3.4.3:
/// `attributes` and `excludedAttributes` are lists there).
fn search_query(search: &Value) -> BTreeMap<String, String> {
    let mut q = BTreeMap::new();
    for key in [
        "filter",
        "startIndex",
        "count",
        "attributes",
        "excludedAttributes",
    ] {
        let text = match search.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            Some(Value::Null) | None => continue,
            Some(other) => other.to_string(),
        };
        q.insert(key.to_owned(), text);
    }
    q
}

/// Which attributes a read returns (RFC 7644 §3.4.2.5): `attributes` names the only ones
/// returned, `excludedAttributes` ones left out; `id`, `schemas` and `meta` always come back.
/// Names are case-insensitive, top-level (`emails`) or a sub-attribute (`name.givenName`),
/// with or without their schema's URN in front.
#[derive(Default)]
struct Projection {
    only: Vec<Vec<String>>,
    excluded: Vec<Vec<String>>,
}

impl Projection {
    fn of(query: &BTreeMap<String, String>) -> Self {
        let names = |key: &str| -> Vec<Vec<String>> {
            query
                .get(key)
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|name| !name.is_empty())
                        .map(attribute_path)
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            only: names("attributes"),
            excluded: names("excludedAttributes"),
        }
    }
}

/// `urn:…:User:name.givenName` → [`name`, `givenName`] (core schema) and
/// `urn:…:enterprise:2.0:User:manager.value` → [`urn:…:enterprise:2.0:User`, `manager`, `value`].
fn attribute_path(name: &str) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let (urn, rest) = match lower.strip_prefix("urn:") {
        Some(_) => match lower.rfind(':') {
            Some(i) => (Some(&lower[..i]), &lower[i + 1..]),
            None => (None, lower.as_str()),
        },
        None => (None, lower.as_str()),
    };
    let mut path: Vec<String> = urn
        .filter(|u| {
            *u != schemas::USER.to_ascii_lowercase() && *u != schemas::GROUP.to_ascii_lowercase()
        })
        .map(str::to_owned)
        .into_iter()
        .collect();
    path.extend(rest.split('.').map(str::to_owned));
    path
}

fn project(resource: Value, projection: &Projection) -> Value {
    let Value::Object(mut object) = resource else {
        return resource;
    };
    const ALWAYS: [&str; 3] = ["id", "schemas", "meta"];
    if !projection.only.is_empty() {
        let mut kept = serde_json::Map::new();
        for (key, value) in &object {
            if ALWAYS.contains(&key.to_ascii_lowercase().as_str()) {
                kept.insert(key.clone(), value.clone());
            }
        }
        for path in &projection.only {
            copy_path(&Value::Object(object.clone()), &mut kept, path);
        }
        object = kept;
    }
    for path in &projection.excluded {
        if path.len() == 1 && ALWAYS.contains(&path[0].as_str()) {
            continue;
        }
        remove_path(&mut object, path);
    }
    Value::Object(object)
}

/// Copies the value at `path` (keys lower-cased) from `from` into `into`, creating parents.
fn copy_path(from: &Value, into: &mut serde_json::Map<String, Value>, path: &[String]) {
    let (Some((first, rest)), Value::Object(source)) = (path.split_first(), from) else {
        return;
    };
    let Some((key, value)) = source.iter().find(|(k, _)| k.eq_ignore_ascii_case(first)) else {
        return;
    };
    if rest.is_empty() {
        into.insert(key.clone(), value.clone());
        return;
    }
    match value {
        Value::Object(_) => {
            let entry = into
                .entry(key.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Value::Object(child) = entry {
                copy_path(value, child, rest);
            }
        }
        // A sub-attribute of a multi-valued attribute: that sub-attribute of each element.
        Value::Array(items) => {
            let picked: Vec<Value> = items
                .iter()
                .map(|item| {
                    let mut element = serde_json::Map::new();
                    copy_path(item, &mut element, rest);
                    Value::Object(element)
                })
                .collect();
            into.insert(key.clone(), Value::Array(picked));
        }
        _ => {}
    }
}

/// Removes the value at `path` (keys lower-cased), in every element of a multi-valued parent.
fn remove_path(object: &mut serde_json::Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(key) = object
        .keys()
        .find(|k| k.eq_ignore_ascii_case(first))
        .cloned()
    else {
        return;
    };
    if rest.is_empty() {
        object.remove(&key);
        return;
    }
    match object.get_mut(&key) {
        Some(Value::Object(child)) => remove_path(child, rest),
        Some(Value::Array(items)) => {
            for item in items {
                if let Value::Object(child) = item {
                    remove_path(child, rest);
                }
            }
        }
        _ => {}
    }
}

fn list_of(items: Vec<Value>) -> Value {
    json!({
        "schemas": [schemas::LIST_RESPONSE],
        "totalResults": items.len(),
        "itemsPerPage": items.len(),
        "startIndex": 1,
        "Resources": items,
    })
}

/// A listing's page size without `count`, and the largest `count` served: the profile's if
/// its vendor documents them, else `--max-page-size` for both; never more than a maximum the
/// vendor documents whatever `--max-page-size` says.
fn page_sizes(args: &DevTargetArgs) -> (usize, usize) {
    let max = args.max_page_size.max(1) as usize;
    let (default, max) = args.profile.page_sizes().unwrap_or((max, max));
    match args.profile.max_page_size() {
        Some(cap) => (default.min(cap), max.min(cap)),
        None => (default, max),
    }
}

fn service_provider_config(args: &DevTargetArgs) -> Value {
    let max_results = args
        .advertised_max_results
        .map_or_else(|| page_sizes(args).1, |n| n as usize);
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": max_results},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "OAuth Bearer Token",
            "description": "Authentication with a bearer token (--token)",
        }],
        "meta": {"resourceType": "ServiceProviderConfig"},
    })
}

fn resource_types() -> Vec<Value> {
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User", "name": "User", "endpoint": "/Users",
            "schema": schemas::USER,
            "schemaExtensions": [{"schema": schemas::ENTERPRISE_USER, "required": false}],
            "meta": {"resourceType": "ResourceType"},
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "Group", "name": "Group", "endpoint": "/Groups",
            "schema": schemas::GROUP,
            "meta": {"resourceType": "ResourceType"},
        }),
    ]
}

fn attribute(name: &str, kind: &str, multi: bool, unique: &str) -> Value {
    json!({"name": name, "type": kind, "multiValued": multi, "required": name == "userName" || name == "displayName",
           "caseExact": false, "mutability": "readWrite", "returned": "default", "uniqueness": unique})
}

fn schema_docs() -> Vec<Value> {
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": schemas::USER, "name": "User",
            "attributes": [
                attribute("userName", "string", false, "server"),
                attribute("name", "complex", false, "none"),
                attribute("displayName", "string", false, "none"),
                attribute("title", "string", false, "none"),
                attribute("active", "boolean", false, "none"),
                attribute("emails", "complex", true, "none"),
                attribute("roles", "complex", true, "none"),
                attribute("externalId", "string", false, "none"),
            ],
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": schemas::GROUP, "name": "Group",
            "attributes": [
                attribute("displayName", "string", false, "none"),
                attribute("members", "complex", true, "none"),
                attribute("externalId", "string", false, "none"),
            ],
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": schemas::ENTERPRISE_USER, "name": "EnterpriseUser",
            "attributes": [
                attribute("employeeNumber", "string", false, "none"),
                attribute("department", "string", false, "none"),
                attribute("manager", "complex", false, "none"),
            ],
        }),
    ]
}
