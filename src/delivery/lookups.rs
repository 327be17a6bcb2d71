//! Matching look-ups merged across jobs. Before each create, delivery looks the person up in the
//! target (DESIGN §5); under load, many jobs of one app do so at once. Their look-ups queue
//! here, and one dispatcher per app sends them as one `filter=userName eq "a" or userName eq
//! "b" …` listing, so that a thousand joiners cost a few dozen look-ups instead of a thousand
//! (each SCIM call counts against the app's rate limit).
//!
//! Invariants:
//! - A job sees exactly what its own `find_by` would have found, or the error the shared call
//!   met when a single call would meet it too (throttled, told to wait, credentials refused, no
//!   answer: the job retries by the policy), or it makes its own call: a batch answered with a
//!   5xx without `Retry-After` (the `or` filter may be what fails), or refused as a filter,
//!   sends every job of the batch back to its own look-up (`after_failed_batch`).
//! - Every account in an answer is checked with `scim::filter::holds_value`, the one rule of
//!   every look-up (`userName` and `emails.value` ignoring case, anything else exactly): the
//!   client drops accounts that answer none of the asked values (a target that ignores or
//!   misreads the filter), and each job gets only the accounts that hold its own value.
//! - Up to two look-ups of an app are in flight at once; a look-up made when fewer are leaves
//!   at once (alone), so merging adds no wait when the app is idle. Those made meanwhile queue
//!   and leave together, up to 25 values per listing.
//! - A target that refuses the `or` filter (a 4xx other than auth or throttling) is asked one
//!   value at a time from then on, until the app's settings change (a new runtime).
//! - The shared call is in every served job's call log (its provisioning log shows the call
//!   that looked it up); the metrics count it once; its trace span is a child of the first
//!   served job's span, tagged with that job's HR event.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::execute;
use crate::scim::{CallRecord, ScimClient, ScimError, filter};

/// Values per look-up: about 1.5 KB of URL with e-mail addresses as user names, well under the
/// 8 KB most servers accept.
const MAX_VALUES: usize = 25;
/// Look-ups of one app in flight at once. While they are, later ones queue and leave together.
const MAX_DISPATCHERS: usize = 2;

/// A matching look-up started for a claimed job before it runs (`LookupBatcher::look_ahead`),
/// carried by the job to its first look-up.
pub struct LookAhead {
    attr: String,
    value: String,
    answer: oneshot::Receiver<Reply>,
    /// `Creates::seq` when it was asked: a create of the same value started since makes its
    /// answer stale.
    asked: u64,
    asked_at: Instant,
}

/// How long a look-up started ahead may be used: a job waits for its slot for a few target
/// round trips, or a few rate-limit periods; one that waited longer (a long pause) asks again.
const AHEAD_MAX_AGE: Duration = Duration::from_secs(60);

/// The creates this process's jobs started lately, per matching value: a look-up sent ahead
/// before another job of the app started creating an account with the same value (two people
/// with one address) is not used: the job asks again, as it would have without looking ahead.
#[derive(Default)]
struct Creates {
    /// Counts starts; a look-up ahead notes it when asked.
    seq: u64,
    /// (attribute, value ignoring case) → the `seq` of the latest create started with it.
    latest: HashMap<(String, String), u64>,
    /// The same, in the order they started, to forget them after `AHEAD_MAX_AGE`.
    order: VecDeque<(Instant, u64, (String, String))>,
}

impl Creates {
    fn key(attr: &str, value: &str) -> (String, String) {
        // Ignoring case for every attribute: more look-ups asked again, never fewer.
        (attr.to_ascii_lowercase(), value.to_lowercase())
    }

    fn started(&mut self, attr: &str, value: &str, now: Instant) {
        while let Some((at, seq, _)) = self.order.front()
            && now.duration_since(*at) > AHEAD_MAX_AGE
        {
            let seq = *seq;
            if let Some((_, _, key)) = self.order.pop_front()
                && self.latest.get(&key) == Some(&seq)
            {
                self.latest.remove(&key);
            }
        }
        self.seq += 1;
        let key = Self::key(attr, value);
        self.latest.insert(key.clone(), self.seq);
        self.order.push_back((now, self.seq, key));
    }

    /// Whether a look-up of `value` asked at `asked` may still be used at `now`.
    fn fresh(&self, attr: &str, value: &str, asked: u64, asked_at: Instant, now: Instant) -> bool {
        now.duration_since(asked_at) <= AHEAD_MAX_AGE
            && self
                .latest
                .get(&Self::key(attr, value))
                .is_none_or(|started| *started <= asked)
    }
}

enum Reply {
    /// The answer to this waiter's value, and the call(s) that gave it.
    Found(Result<Vec<Value>, ScimError>, Vec<CallRecord>),
    /// Look it up alone.
    Alone,
}

struct Waiter {
    attr: String,
    value: String,
    reply: oneshot::Sender<Reply>,
    /// The job's span and tags: a call made for it is its span's child, tagged as its own.
    span: tracing::Span,
    job: execute::JobCallContext,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    dispatchers: usize,
}

/// One app's merged look-ups (part of its runtime: rebuilt when its settings change).
#[derive(Default)]
pub struct LookupBatcher {
    queue: Mutex<Queue>,
    or_refused: AtomicBool,
    claims: Mutex<Claims>,
    creates: Mutex<Creates>,
    matching: Arc<MatchingTurns>,
}

/// Matching values a job of this app is matching, then maybe creating: (attribute, value
/// ignoring case) → its turn. Two jobs with one value (two people with one address) take turns
/// from their look-up to the end of their create, so the second looks up after the first's
/// account exists and never creates a second one on a target that does not enforce uniqueness.
/// Calls hold the app's slots one at a time, so nothing else serialises two such jobs.
#[derive(Default)]
struct MatchingTurns(Mutex<HashMap<(String, String), ValueLock>>);

/// One matching value's turn: held by the job matching it.
type ValueLock = Arc<tokio::sync::Mutex<()>>;

/// A job's turn at one matching value, from its look-up until its create is answered; dropped,
/// it lets the next job with that value in, and forgets the value when none waits.
pub struct MatchingTurn {
    turns: Arc<MatchingTurns>,
    key: (String, String),
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for MatchingTurn {
    fn drop(&mut self) {
        let Ok(mut turns) = self.turns.0.lock() else {
            return;
        };
        drop(self.held.take());
        // Only the map holds it: nobody holds or waits for this value.
        if turns
            .get(&self.key)
            .is_some_and(|turn| Arc::strong_count(turn) == 1)
        {
            turns.remove(&self.key);
        }
    }
}

/// How long an account created or adopted in this process stays claimed by its resource: far
/// longer than a job's end takes to be committed, after which the database's links (checked
/// before every adoption) say who holds it.
const CLAIM_TTL: Duration = Duration::from_secs(600);

/// Target accounts this process's jobs created or adopted lately: (kind, target id) → the
/// resource that holds it and when. Two jobs that match the same account at once (two people
/// with one address) would otherwise both adopt it before either link is committed.
#[derive(Default)]
struct Claims {
    held: HashMap<(String, String), (String, Instant)>,
    /// The claims in the order they were made, to drop the expired ones from the front
    /// (checking the whole map at each claim cost O(n) per create under load).
    order: VecDeque<(Instant, (String, String))>,
}

impl Claims {
    fn claim(
        &mut self,
        key: (String, String),
        resource_id: &str,
        now: Instant,
    ) -> Result<(), String> {
        while let Some((at, _)) = self.order.front()
            && now.duration_since(*at) >= CLAIM_TTL
        {
            let at = *at;
            if let Some((_, expired)) = self.order.pop_front()
                && self.held.get(&expired).is_some_and(|(_, made)| *made == at)
            {
                self.held.remove(&expired);
            }
        }
        match self.held.get(&key) {
            Some((holder, at)) if holder != resource_id && now.duration_since(*at) < CLAIM_TTL => {
                Err(holder.clone())
            }
            _ => {
                self.held.insert(key.clone(), (resource_id.to_owned(), now));
                self.order.push_back((now, key));
                Ok(())
            }
        }
    }
}

/// Ends a dispatcher: however it stops (its task dropped at shutdown included), it is counted
/// out, and if it was the last one, whoever still waits is told to look up alone.
struct DispatcherExit<'a>(&'a LookupBatcher);

impl Drop for DispatcherExit<'_> {
    fn drop(&mut self) {
        let Ok(mut queue) = self.0.queue.lock() else {
            return;
        };
        queue.dispatchers = queue.dispatchers.saturating_sub(1);
        if queue.dispatchers == 0 {
            for w in queue.waiting.drain(..) {
                let _ = w.reply.send(Reply::Alone);
            }
        }
    }
}

/// Attributes whose value can be read back from a resource to tell which asked value it
/// answers: top-level, single-valued. (`emails[type eq "work"].value` and the like are looked
/// up one at a time.)
fn batchable(attr: &str) -> bool {
    !attr.contains(['.', '[', ':']) && filter::check_attr_path(attr).is_ok()
}

/// The accounts found for each asked value, in order; `None` when some account answers none of
/// them (never from the client, which drops those; kept so that nothing unattributable is
/// ever handed to a job).
fn attribute(found: &[Value], attr: &str, values: &[&str]) -> Option<Vec<Vec<Value>>> {
    let mut per_value = vec![Vec::new(); values.len()];
    for resource in found {
        let mut any = false;
        for (i, value) in values.iter().enumerate() {
            if filter::holds_value(resource, attr, value) {
                per_value[i].push(resource.clone());
                any = true;
            }
        }
        if !any {
            return None;
        }
    }
    Some(per_value)
}

/// What a failed merged listing means for the jobs it served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchFailure {
    /// A 4xx other than auth, timeout or throttling: the target cannot take the `or` filter.
    /// Every job looks up alone, now and from then on.
    RefusesOr,
    /// A 5xx without `Retry-After`, an answer that could not be read, or a time-out (408, or
    /// no answer in time): perhaps the target fails on, or is slow with, the `or` filter
    /// itself. Every job of this batch looks up alone, instead of spending an attempt.
    RetryAlone,
    /// Throttled or told to wait (`Retry-After`), credentials refused, or no connection at
    /// all: every job met that answer and retries by the policy, instead of each asking a
    /// target in trouble again at once.
    Shared,
}

fn after_failed_batch(error: &ScimError) -> BatchFailure {
    match (error, error.status()) {
        (_, Some(408)) => BatchFailure::RetryAlone,
        (_, Some(401 | 403 | 429)) => BatchFailure::Shared,
        (_, Some(400..=499)) => BatchFailure::RefusesOr,
        (_, Some(_)) if error.retry_after().is_some() => BatchFailure::Shared,
        (ScimError::Http { .. } | ScimError::BadResponse { .. }, Some(_)) => {
            BatchFailure::RetryAlone
        }
        (
            ScimError::Transport {
                kind: crate::scim::TransportKind::Timeout,
                ..
            },
            _,
        ) => BatchFailure::RetryAlone,
        _ => BatchFailure::Shared,
    }
}

impl LookupBatcher {
    /// Claims the target resource `target_id` of `kind` (`user`, `group`) for `resource_id`,
    /// which has just created it or is about to adopt it. `Err` names the resource that
    /// claimed it first in this process: adopting it too would give one account two owners.
    pub fn claim(&self, kind: &str, target_id: &str, resource_id: &str) -> Result<(), String> {
        let Ok(mut claims) = self.claims.lock() else {
            // A poisoned map protects nothing more; the database's links still do.
            return Ok(());
        };
        claims.claim(
            (kind.to_owned(), target_id.to_owned()),
            resource_id,
            Instant::now(),
        )
    }

    /// The target accounts whose `attr` equals `value`, as `users().find_by` finds them.
    pub async fn find(
        self: &Arc<Self>,
        client: &ScimClient,
        attr: &str,
        value: &str,
    ) -> Result<Vec<Value>, ScimError> {
        self.find_or_take(client, attr, value, None).await
    }

    /// [`Self::find`], or the answer of `ahead`, the look-up this job started when it was
    /// claimed ([`Self::look_ahead`]), if it asked for the same value and is still fresh: it
    /// is usually there already.
    pub async fn find_or_take(
        self: &Arc<Self>,
        client: &ScimClient,
        attr: &str,
        value: &str,
        ahead: Option<LookAhead>,
    ) -> Result<Vec<Value>, ScimError> {
        let ahead = ahead
            .filter(|ahead| ahead.attr == attr && ahead.value == value && self.still_fresh(ahead));
        let answer = match ahead {
            Some(ahead) => Some(ahead.answer),
            None => self.enqueue(
                client,
                attr,
                value,
                tracing::Span::current(),
                execute::job_call_context(),
            ),
        };
        let Some(answer) = answer else {
            return client.users().find_by(attr, value).await;
        };
        // Waiting for another task's call: the job's worker is free for other apps meanwhile.
        match super::limiter::without_worker(answer).await {
            Ok(Reply::Found(found, calls)) => {
                execute::record_shared_calls(calls);
                found
            }
            Ok(Reply::Alone) | Err(_) => client.users().find_by(attr, value).await,
        }
    }

    /// Starts the matching look-up of a job that has just been claimed, so that its answer is
    /// there when the job gets its slot: the look-up leaves the job's critical path, and the
    /// look-ups of jobs claimed together leave together. `None` when the value cannot be
    /// merged (the job then looks up alone, when it runs). The answer is the job's own (it is
    /// asked after the claim committed, as the job's own look-up would be), used once, for the
    /// job's first look-up: a look-up after a 409 is made afresh.
    pub fn look_ahead(
        self: &Arc<Self>,
        client: &ScimClient,
        attr: &str,
        value: &str,
        span: tracing::Span,
        job: execute::JobCallContext,
    ) -> Option<LookAhead> {
        let asked = self.creates.lock().ok()?.seq;
        let answer = self.enqueue(client, attr, value, span, job)?;
        Some(LookAhead {
            attr: attr.to_owned(),
            value: value.to_owned(),
            answer,
            asked,
            asked_at: Instant::now(),
        })
    }

    /// Waits for this job's turn at matching `value` (see [`MatchingTurns`]); held until the
    /// job's create, if any, is answered.
    pub async fn matching_turn(&self, attr: &str, value: &str) -> MatchingTurn {
        let key = Creates::key(attr, value);
        let turn = match self.matching.0.lock() {
            Ok(mut turns) => Some(turns.entry(key.clone()).or_default().clone()),
            Err(_) => None,
        };
        let held = match turn {
            Some(turn) => Some(super::limiter::without_worker(turn.lock_owned()).await),
            None => None,
        };
        MatchingTurn {
            turns: self.matching.clone(),
            key,
            held,
        }
    }

    /// Notes that a job is about to create an account whose matching `attr` is `value`: a
    /// look-up of that value sent ahead before now is not used (see [`Creates`]).
    pub fn creating(&self, attr: &str, value: &str) {
        if let Ok(mut creates) = self.creates.lock() {
            creates.started(attr, value, Instant::now());
        }
    }

    fn still_fresh(&self, ahead: &LookAhead) -> bool {
        self.creates.lock().is_ok_and(|creates| {
            creates.fresh(
                &ahead.attr,
                &ahead.value,
                ahead.asked,
                ahead.asked_at,
                Instant::now(),
            )
        })
    }

    /// Queues a look-up of `value` and starts a dispatcher if fewer than `MAX_DISPATCHERS`
    /// run; `None` when it cannot be merged (the caller looks up alone).
    fn enqueue(
        self: &Arc<Self>,
        client: &ScimClient,
        attr: &str,
        value: &str,
        span: tracing::Span,
        job: execute::JobCallContext,
    ) -> Option<oneshot::Receiver<Reply>> {
        if !batchable(attr) || self.or_refused.load(Ordering::Relaxed) {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().ok()?;
            queue.waiting.push_back(Waiter {
                attr: attr.to_owned(),
                value: value.to_owned(),
                reply,
                span,
                job,
            });
            let start = queue.dispatchers < MAX_DISPATCHERS;
            if start {
                queue.dispatchers += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().dispatch(client.clone()));
        }
        Some(answer)
    }

    /// Takes the next batch: the first waiter and up to `MAX_VALUES - 1` more for the same
    /// attribute; empty when nobody waits.
    fn next_batch(&self) -> Vec<Waiter> {
        let Ok(mut queue) = self.queue.lock() else {
            return Vec::new();
        };
        let Some(first) = queue.waiting.pop_front() else {
            return Vec::new();
        };
        let mut batch = vec![first];
        let mut rest = VecDeque::with_capacity(queue.waiting.len());
        while let Some(w) = queue.waiting.pop_front() {
            if batch.len() < MAX_VALUES && w.attr == batch[0].attr {
                batch.push(w);
            } else {
                rest.push_back(w);
            }
        }
        queue.waiting = rest;
        batch
    }

    /// Sends queued look-ups until none is left: one waiter's alone, several as one listing.
    async fn dispatch(self: Arc<Self>, client: ScimClient) {
        let _exit = DispatcherExit(&self);
        loop {
            let mut batch = self.next_batch();
            if batch.is_empty() {
                return;
            }
            if self.or_refused.load(Ordering::Relaxed) {
                for w in batch {
                    let _ = w.reply.send(Reply::Alone);
                }
                continue;
            }
            if batch.len() == 1 {
                let w = batch.remove(0);
                let (found, calls) = execute::with_job_call_context(
                    &w.job,
                    client
                        .users()
                        .find_by(&w.attr, &w.value)
                        .instrument(w.span.clone()),
                )
                .await;
                let _ = w.reply.send(Reply::Found(found, calls));
                continue;
            }
            let attr = batch[0].attr.clone();
            let values: Vec<&str> = batch.iter().map(|w| w.value.as_str()).collect();
            // The shared call's span is in the first job's trace, tagged with its HR event.
            let (result, calls) = execute::with_job_call_context(
                &batch[0].job,
                client
                    .users()
                    .find_by_any(&attr, &values)
                    .instrument(batch[0].span.clone()),
            )
            .await;
            let per_value = match result {
                Ok(Some(found)) => attribute(&found, &attr, &values),
                Ok(None) => None,
                Err(e) => match after_failed_batch(&e) {
                    BatchFailure::RefusesOr => {
                        self.or_refused.store(true, Ordering::Relaxed);
                        tracing::info!(error = %e, "The target refused a look-up of several values; looking up one at a time");
                        None
                    }
                    BatchFailure::RetryAlone => None,
                    BatchFailure::Shared => {
                        for w in batch {
                            let _ = w.reply.send(Reply::Found(Err(e.clone()), calls.clone()));
                        }
                        continue;
                    }
                },
            };
            match per_value {
                Some(per_value) => {
                    for (w, found) in batch.into_iter().zip(per_value) {
                        let _ = w.reply.send(Reply::Found(Ok(found), calls.clone()));
                    }
                }
                None => {
                    for w in batch {
                        let _ = w.reply.send(Reply::Alone);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_account_claimed_by_one_resource_is_refused_to_another_until_the_claim_expires() {
        let mut claims = Claims::default();
        let key = || ("user".to_owned(), "t1".to_owned());
        let t0 = Instant::now();
        assert_eq!(claims.claim(key(), "ada", t0), Ok(()));
        assert_eq!(claims.claim(key(), "ada", t0), Ok(()), "the holder again");
        assert_eq!(claims.claim(key(), "bob", t0), Err("ada".to_owned()));
        assert_eq!(
            claims.claim(("group".to_owned(), "t1".to_owned()), "bob", t0),
            Ok(()),
            "kinds are apart"
        );
        let later = t0 + CLAIM_TTL;
        assert_eq!(claims.claim(key(), "bob", later), Ok(()), "expired");
        assert_eq!(claims.held.len(), 1, "expired claims are dropped");
        assert_eq!(claims.order.len(), 1);
    }

    #[test]
    fn a_look_up_sent_ahead_is_stale_once_a_create_of_its_value_started_or_it_is_old() {
        let mut creates = Creates::default();
        let t0 = Instant::now();
        let asked = creates.seq;
        assert!(creates.fresh("userName", "ada@example.com", asked, t0, t0));
        creates.started("userName", "bob@example.com", t0);
        assert!(
            creates.fresh("userName", "ada@example.com", asked, t0, t0),
            "another value"
        );
        creates.started("userName", "ADA@example.com", t0);
        assert!(
            !creates.fresh("userName", "ada@example.com", asked, t0, t0),
            "a create of the same value (ignoring case) started after it was asked"
        );
        let asked_later = creates.seq;
        assert!(creates.fresh("userName", "ada@example.com", asked_later, t0, t0));
        let late = t0 + AHEAD_MAX_AGE + Duration::from_secs(1);
        assert!(
            !creates.fresh("userName", "ada@example.com", asked_later, t0, late),
            "too old"
        );
        // Old starts are forgotten as new ones come.
        creates.started("userName", "cy@example.com", late);
        assert_eq!(creates.latest.len(), 1);
        assert_eq!(creates.order.len(), 1);
    }

    #[test]
    fn only_top_level_attributes_are_batched() {
        assert!(batchable("userName"));
        assert!(batchable("externalId"));
        assert!(!batchable("emails.value"));
        assert!(!batchable("emails[type eq \"work\"].value"));
        assert!(!batchable(
            "urn:ietf:params:scim:schemas:core:2.0:User:userName"
        ));
        assert!(!batchable("user name"));
    }

    #[test]
    fn accounts_are_attributed_to_the_values_they_answer() {
        let found = vec![
            json!({"id": "1", "userName": "Ada@Example.com"}),
            json!({"id": "2", "userName": "bob@example.com"}),
        ];
        let values = ["ada@example.com", "bob@example.com", "cy@example.com"];
        let per_value = attribute(&found, "userName", &values).expect("attributed");
        assert_eq!(per_value[0], vec![found[0].clone()]);
        assert_eq!(per_value[1], vec![found[1].clone()]);
        assert!(per_value[2].is_empty());
    }

    #[test]
    fn other_attributes_compare_exactly_and_a_stray_account_spoils_the_batch() {
        let found = vec![json!({"id": "1", "externalId": "e1"})];
        assert!(attribute(&found, "externalId", &["E1", "e2"]).is_none());
        let per_value = attribute(&found, "externalId", &["e1", "e2"]).expect("attributed");
        assert_eq!(per_value[0].len(), 1);
        // An account without the attribute answers nothing we asked.
        let found = vec![json!({"id": "1"})];
        assert!(attribute(&found, "userName", &["a"]).is_none());
    }

    #[test]
    fn two_accounts_for_one_value_are_both_kept() {
        let found = vec![
            json!({"id": "1", "userName": "ada"}),
            json!({"id": "2", "userName": "ADA"}),
        ];
        let per_value = attribute(&found, "userName", &["ada", "bob"]).expect("attributed");
        assert_eq!(per_value[0].len(), 2);
        assert!(per_value[1].is_empty());
    }

    #[test]
    fn a_failed_merged_listing_is_shared_retried_alone_or_turns_merging_off() {
        let answer = |status, retry_after: Option<u64>| ScimError::Http {
            status,
            scim_type: None,
            detail: String::new(),
            method: "GET".into(),
            path: "/Users".into(),
            retry_after: retry_after.map(std::time::Duration::from_secs),
        };
        let table = [
            (answer(400, None), BatchFailure::RefusesOr),
            (answer(404, None), BatchFailure::RefusesOr),
            (answer(414, None), BatchFailure::RefusesOr),
            (answer(501, None), BatchFailure::RetryAlone),
            (answer(500, None), BatchFailure::RetryAlone),
            (answer(502, None), BatchFailure::RetryAlone),
            (answer(503, Some(1)), BatchFailure::Shared),
            (answer(500, Some(5)), BatchFailure::Shared),
            (answer(429, None), BatchFailure::Shared),
            (answer(429, Some(2)), BatchFailure::Shared),
            (answer(401, None), BatchFailure::Shared),
            (answer(403, None), BatchFailure::Shared),
            (answer(408, None), BatchFailure::RetryAlone),
        ];
        for (error, expected) in table {
            assert_eq!(after_failed_batch(&error), expected, "{error}");
        }
        let unreadable = ScimError::BadResponse {
            method: "GET".into(),
            path: "/Users".into(),
            status: 200,
            reason: "not JSON".into(),
        };
        assert_eq!(after_failed_batch(&unreadable), BatchFailure::RetryAlone);
        let timeout = ScimError::Transport {
            method: "GET".into(),
            path: "/Users".into(),
            kind: crate::scim::TransportKind::Timeout,
            message: "timed out".into(),
        };
        assert_eq!(after_failed_batch(&timeout), BatchFailure::RetryAlone);
        let refused = ScimError::Transport {
            method: "GET".into(),
            path: "/Users".into(),
            kind: crate::scim::TransportKind::Connect,
            message: "connection refused".into(),
        };
        assert_eq!(after_failed_batch(&refused), BatchFailure::Shared);
    }
}
