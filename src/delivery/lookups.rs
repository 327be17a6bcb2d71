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
}

/// How long an account created or adopted in this process stays claimed by its resource: far
/// longer than a job's end takes to be committed, after which the database's links (checked
/// before every adoption) say who holds it.
const CLAIM_TTL: Duration = Duration::from_secs(600);

/// Target accounts this process's jobs created or adopted lately: (kind, target id) → the
/// resource that holds it and when. Two jobs that match the same account at once (two people
/// with one address) would otherwise both adopt it before either link is committed.
#[derive(Default)]
struct Claims(HashMap<(String, String), (String, Instant)>);

impl Claims {
    fn claim(
        &mut self,
        key: (String, String),
        resource_id: &str,
        now: Instant,
    ) -> Result<(), String> {
        self.0
            .retain(|_, (_, at)| now.duration_since(*at) < CLAIM_TTL);
        match self.0.get(&key) {
            Some((holder, _)) if holder != resource_id => Err(holder.clone()),
            _ => {
                self.0.insert(key, (resource_id.to_owned(), now));
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
        if !batchable(attr) || self.or_refused.load(Ordering::Relaxed) {
            return client.users().find_by(attr, value).await;
        }
        let (reply, answer) = oneshot::channel();
        let start = {
            let Ok(mut queue) = self.queue.lock() else {
                return client.users().find_by(attr, value).await;
            };
            queue.waiting.push_back(Waiter {
                attr: attr.to_owned(),
                value: value.to_owned(),
                reply,
                span: tracing::Span::current(),
                job: execute::job_call_context(),
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
        // Waiting for another task's call: the job's worker is free for other apps meanwhile.
        match super::limiter::without_worker(answer).await {
            Ok(Reply::Found(found, calls)) => {
                execute::record_shared_calls(calls);
                found
            }
            Ok(Reply::Alone) | Err(_) => client.users().find_by(attr, value).await,
        }
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
        assert_eq!(claims.0.len(), 1, "expired claims are dropped");
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
