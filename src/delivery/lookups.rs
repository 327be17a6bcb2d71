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
//! - Up to two look-ups of an app are in flight at once; a job's own look-up made when fewer
//!   are leaves at once (alone), so merging adds no wait when the app is idle. Those made
//!   meanwhile queue and leave together, up to 25 values per listing.
//! - Where the app's calls are plenty, a look-up started ahead (at its job's claim) leaves at
//!   once when none of the app's look-ups is under way, else with a full batch of 25, or with
//!   the next batch to leave (`leaves_now`): under load each call answers 25 accounts, and
//!   the calls the look-ups take from the app's slots stay few (the engine claims a batch's
//!   worth more of such an app's jobs, so its slots stay busy meanwhile).
//! - Where the app's calls are scarce, a look-up started ahead waits until its job needs it and
//!   while more jobs than the app's slots hold an answer (`holds_back`); then it leaves with
//!   every look-up queued meanwhile. A job's own look-up (none ahead, or after a 409) leaves at
//!   once.
//! - A batch is asked by one read of the target's whole user listing when that costs fewer calls
//!   than by filter (`plan`). Its answer counts only if the listing proves itself complete
//!   (`ListingProof`: its `totalResults` where pages are indexed, a cursor walk read to its
//!   end where they are not); else the batch is asked by filter, and the runtime never lists
//!   again. Where calls tie, a listing that would be kept (`ListedUsers`) is preferred. A
//!   target whose listings leave accounts out is listed only for values its listing proves
//!   absent (`Quirks::listing_proves_absence_of`: addresses at the domains it lists wholly),
//!   and a kept listing answers only those.
//! - The last proven listing (of at most `MAX_LISTED` accounts) answers the app's later
//!   look-ups without a call while it is at most `AHEAD_MAX_AGE` old and no create of the
//!   value started lately (`Creates::fresh`, the rule of a look-up sent ahead): each answer
//!   checked with `holds_value`, as the listing's own are. An account another writer made
//!   after the listing was asked is missed meanwhile, as by a look-up sent ahead; the create's
//!   409 then leads to a fresh look-up.
//! - A target that refuses the `or` filter (a 4xx other than auth or throttling) is asked one
//!   value at a time from then on, until the app's settings change (a new runtime).
//! - The shared call is in every served job's call log (its provisioning log shows the call
//!   that looked it up); the metrics count it once; its trace span is a child of the first
//!   served job's span, tagged with that job's HR event.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::execute;
use crate::scim::{
    CallRecord, CursorStep, ListQuery, Page, Quirks, ScimClient, ScimError, filter, id_of,
};

/// Values per look-up: about 1.5 KB of URL with e-mail addresses as user names, well under the
/// 8 KB most servers accept.
const MAX_VALUES: usize = 25;
/// Look-ups of one app in flight at once. While they are, later ones queue and leave together.
const MAX_DISPATCHERS: usize = 2;
/// How long a held-back batch waits at most before it looks again.
const HOLD_AT_MOST: Duration = Duration::from_secs(1);
/// Look-ups answered by one listing of the target at most; also the most accounts a listing
/// kept to answer later look-ups holds (see [`ListedUsers`]): a bigger one is not kept.
const MAX_LISTED: usize = 500;
/// Jobs of an app claimed ahead at least, whatever its rate (the engine's claim window): a
/// slow app's look-ups started ahead then wait together and leave as one call, instead of
/// one call per job (each call counts against the app's rate limit).
pub const LOOK_AHEAD_ROOM: u64 = MAX_VALUES as u64;

/// What a matching look-up found, and when it was asked: an answer sent ahead or read from a
/// kept listing may be up to [`AHEAD_MAX_AGE`] old.
#[derive(Debug)]
pub struct Found {
    pub accounts: Vec<Value>,
    pub asked_at: Instant,
}

/// A matching look-up started for a claimed job before it runs (`LookupBatcher::look_ahead`),
/// carried by the job to its first look-up.
pub struct LookAhead {
    attr: String,
    value: String,
    answer: oneshot::Receiver<Reply>,
    /// Set once the job needs the answer: a look-up started ahead while the app was short of
    /// tokens waits in the queue until then (or until another job's look-up takes it along).
    wanted: Arc<AtomicBool>,
    asked_at: Instant,
}

/// How long a look-up started ahead may be used: a job waits for its slot for a few target
/// round trips, or a few rate-limit periods; one that waited longer (a long pause) asks again.
const AHEAD_MAX_AGE: Duration = Duration::from_secs(60);

/// The creates this process's jobs started lately, per matching value: a look-up sent ahead is
/// not used if another job of the app started creating an account with the same value (two
/// people with one address, or the same person's create whose outcome was unknown) lately —
/// after it was asked, or before, since that create may have been under way when it was
/// answered: the job asks again, inside its matching turn, as it would have without looking
/// ahead.
#[derive(Default)]
struct Creates {
    /// Counts starts, to tell a value's latest start from its earlier ones.
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

    /// Whether a look-up of `value` asked at `asked_at` may still be used at `now`: not too
    /// old, and no create of that value started lately (forgotten `AHEAD_MAX_AGE` after it
    /// started, at the next start).
    fn fresh(&self, attr: &str, value: &str, asked_at: Instant, now: Instant) -> bool {
        now.duration_since(asked_at) <= AHEAD_MAX_AGE
            && !self.latest.contains_key(&Self::key(attr, value))
    }
}

/// The app's last listing of its users that proved itself complete ([`ListingProof`]), kept
/// to answer the look-ups made shortly after it without a call of their own: a one-page
/// target is then listed once a minute instead of asked once per batch.
///
/// It answers a look-up only while it is at most `AHEAD_MAX_AGE` old and no job of the app
/// started creating an account with the looked-up value lately ([`Creates::fresh`]): the
/// staleness, and the rule, of a look-up sent ahead. An account another writer created in
/// the target after the listing was asked is not seen meanwhile — the same window as a
/// look-up sent ahead's: a target that enforces uniqueness answers roster's create with 409,
/// and the look-up after a 409 is made afresh (that job's create started, so the listing no
/// longer answers its value).
struct ListedUsers {
    /// When the listing's first page was asked.
    asked_at: Instant,
    /// Its accounts, each once (by id), as the target served them.
    accounts: Vec<Value>,
    /// (attribute, held value lower-cased) → positions in `accounts`, for each attribute in
    /// `indexed`: the candidates, each then checked with `filter::holds_value`.
    by_value: HashMap<(String, String), Vec<usize>>,
    /// Attribute names (ASCII lower-cased) whose values are in `by_value`.
    indexed: Vec<String>,
    /// The calls that read it: in the log of each job it answers.
    calls: Vec<CallRecord>,
}

impl ListedUsers {
    fn new(
        asked_at: Instant,
        accounts: Vec<Value>,
        asked_attr: &str,
        calls: Vec<CallRecord>,
    ) -> Self {
        let mut indexed = vec!["username".to_owned(), "emails.value".to_owned()];
        let asked_attr = asked_attr.to_ascii_lowercase();
        if !indexed.contains(&asked_attr) {
            indexed.push(asked_attr);
        }
        // Read from the accounts as `holds_value` reads them (attribute names ignoring case).
        let mut by_value: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (at, account) in accounts.iter().enumerate() {
            for attr in &indexed {
                for held in filter::values_at(account, attr) {
                    // What `holds_value` compares: a string, or a number's decimal text.
                    let text = match held {
                        Value::String(s) => s.to_lowercase(),
                        Value::Number(n) => n.to_string(),
                        _ => continue,
                    };
                    let positions = by_value.entry((attr.clone(), text)).or_default();
                    if positions.last() != Some(&at) {
                        positions.push(at);
                    }
                }
            }
        }
        Self {
            asked_at,
            accounts,
            by_value,
            indexed,
            calls,
        }
    }

    /// The accounts holding `value` at `attr`, as a look-up would find them; `None` when
    /// `attr` is not indexed.
    fn find(&self, attr: &str, value: &str) -> Option<Vec<Value>> {
        let key = attr.to_ascii_lowercase();
        if !self.indexed.contains(&key) {
            return None;
        }
        let candidates = self
            .by_value
            .get(&(key, value.to_lowercase()))
            .map_or(&[][..], Vec::as_slice);
        Some(
            candidates
                .iter()
                .filter_map(|&at| self.accounts.get(at))
                .filter(|account| filter::holds_value(account, attr, value))
                .cloned()
                .collect(),
        )
    }
}

enum Reply {
    /// The answer to this waiter's value, and the call(s) that gave it.
    Found(Result<Vec<Value>, ScimError>, Vec<CallRecord>),
    /// Look it up alone (after the call(s) made for it that answered nothing: a listing that
    /// proved nothing).
    Alone(Vec<CallRecord>),
}

struct Waiter {
    attr: String,
    value: String,
    reply: oneshot::Sender<Reply>,
    /// Someone waits for the answer now (see [`LookAhead::wanted`]); a dispatcher leaves only
    /// for a batch holding such a look-up.
    wanted: Arc<AtomicBool>,
    /// Calls made for it that answered nothing (a listing not proven complete): in its job's
    /// log with the call that answers it.
    earlier: Vec<CallRecord>,
    /// Whether it was started ahead of its job, and so when it leaves.
    ahead: Ahead,
    /// The job's span and tags: a call made for it is its span's child, tagged as its own.
    span: tracing::Span,
    job: execute::JobCallContext,
}

/// Whether a queued look-up was started ahead of its job, and so when it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ahead {
    /// A job's own look-up (none ahead, or after a 409): it is needed at once.
    No,
    /// Where the app's calls are plenty (its target's latency bounds them): with a batch,
    /// when none of the app's look-ups is under way or a full batch is queued (see
    /// [`leaves_now`]).
    WithBatch,
    /// Where the app's calls are scarce (its rate limit bounds them): only once its job needs
    /// it, and then only when the jobs already answered run low (see [`holds_back`]).
    WhenNeeded,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    dispatchers: usize,
    /// Dispatchers whose batch is under way (asked, not answered yet).
    sending: usize,
}

impl Queue {
    /// Queued look-ups that leave once wanted (their job waits), and queued look-ups that
    /// leave with a batch, wanted or not ([`Ahead::WithBatch`]).
    fn counts(&self) -> (usize, usize) {
        self.waiting.iter().fold((0, 0), |(wanted, ahead), w| {
            if w.ahead == Ahead::WithBatch {
                (wanted, ahead + 1)
            } else if w.wanted() {
                (wanted + 1, ahead)
            } else {
                (wanted, ahead)
            }
        })
    }
}

/// A dispatcher's batch under way: counted out of `Queue::sending` once answered (or dropped),
/// and a dispatcher holding look-ups started ahead looks again.
struct Sending<'a>(&'a LookupBatcher);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if let Ok(mut queue) = self.0.queue.lock() {
            queue.sending = queue.sending.saturating_sub(1);
        }
        self.0.matching.changed.notify_waiters();
    }
}

/// One app's merged look-ups (part of its runtime: rebuilt when its settings change).
pub struct LookupBatcher {
    queue: Mutex<Queue>,
    /// The app's calls at once: scarce look-ups are held back while more jobs than this have
    /// their answer and wait for their calls.
    slots: usize,
    or_refused: AtomicBool,
    listing: Mutex<ListingKnowledge>,
    /// The last proven listing, while it may answer look-ups.
    listed_users: Mutex<Option<Arc<ListedUsers>>>,
    /// What the app's jobs are doing to its accounts: kept across a change of its settings
    /// ([`Self::succeeding`]), since jobs of the old runtime may still be at it.
    claims: Arc<Mutex<Claims>>,
    creates: Arc<Mutex<Creates>>,
    matching: Arc<MatchingTurns>,
}

/// Matching values a job of this app is matching, then maybe creating: (attribute, value
/// ignoring case) → its turn. Two jobs with one value (two people with one address) take turns
/// from their look-up to the end of their create, so the second looks up after the first's
/// account exists and never creates a second one on a target that does not enforce uniqueness.
/// Calls hold the app's slots one at a time, so nothing else serialises two such jobs.
#[derive(Default)]
struct MatchingTurns {
    turns: Mutex<HashMap<(String, String), ValueLock>>,
    /// Jobs holding their turn: matching (waiting for a look-up) or creating.
    held: std::sync::atomic::AtomicUsize,
    /// Told when a turn ends or a look-up is wanted: a held-back batch looks again.
    changed: Arc<tokio::sync::Notify>,
}

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
        if self.held.is_some() {
            self.turns.held.fetch_sub(1, Ordering::AcqRel);
            self.turns.changed.notify_waiters();
        }
        let Ok(mut turns) = self.turns.turns.lock() else {
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
            // Those not wanted yet stay: the job that needs one starts a dispatcher.
            let (wanted, later): (VecDeque<Waiter>, VecDeque<Waiter>) = queue
                .waiting
                .drain(..)
                .partition(|w| w.wanted.load(Ordering::Acquire));
            queue.waiting = later;
            for w in wanted {
                w.alone();
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
    /// A 5xx without `Retry-After`, an answer that could not be read or was cut short of its
    /// `totalResults`, or a time-out (408, or no answer in time): perhaps the target fails on,
    /// or is slow with, the `or` filter itself. Every job of this batch looks up alone, instead of spending an attempt.
    RetryAlone,
    /// Throttled or told to wait (`Retry-After`), credentials refused, or no connection at
    /// all: every job met that answer and retries by the policy, instead of each asking a
    /// target in trouble again at once.
    Shared,
}

fn after_failed_batch(error: &ScimError) -> BatchFailure {
    match (error, error.status()) {
        // An answer that did not fit, or moved under, its pages: one value's answer is smaller.
        (ScimError::IncompleteListing { .. }, _) => BatchFailure::RetryAlone,
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

/// How a dispatcher asks the look-ups it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// One value: its own filtered look-up.
    Alone,
    /// Up to `MAX_VALUES` values as one `or`-filtered listing (or, where the target takes one
    /// term, each job alone).
    Merged,
    /// Every pending value from one read of the target's whole user listing, checked locally.
    Listing,
}

/// What the batcher knows of the app's user listing, from its last read (per runtime).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ListingKnowledge {
    /// Accounts in the target: the last listing's `totalResults` (or the accounts a cursor
    /// walk read), plus the creates started since. `None` before the first listing.
    accounts: Option<u64>,
    /// Accounts per page, as the last listing of several pages served them (0: not known;
    /// the client's page size then).
    per_page: u64,
    /// A listing was not proven complete (see [`ListingProof`]: no `totalResults` where
    /// index paging needs one, a wrap, fewer or more distinct accounts than it said): never
    /// listed again; look-ups are asked by filter.
    unproven: bool,
}

/// Calls that `pending` look-ups of one attribute cost asked by filter.
fn lookup_calls(pending: usize, merges: bool) -> u64 {
    let pending = pending as u64;
    if merges {
        pending.div_ceil(MAX_VALUES as u64)
    } else {
        pending
    }
}

/// Calls a listing of the target costs, as far as `known` tells (one when nothing is known:
/// its first page says, and a listing that would cost more stops there).
fn listing_calls(known: &ListingKnowledge, page_size: u32) -> u64 {
    let per_page = if known.per_page > 0 {
        known.per_page
    } else {
        u64::from(page_size.max(1))
    };
    known.accounts.map_or(1, |a| a.div_ceil(per_page).max(1))
}

/// How `pending` look-ups of one attribute are asked: a listing of the target only when it
/// costs fewer calls than the look-ups it replaces and no earlier listing failed its proof —
/// or as many, where the listing would be kept to answer the next look-ups (`ListedUsers`:
/// the target holds at most `MAX_LISTED` accounts, or its size is not known yet), so that a
/// small target is listed once instead of asked once per batch. A single look-up is listed
/// only on such a tie once the target's size is known (one page).
fn plan(pending: usize, merges: bool, known: &ListingKnowledge, page_size: u32) -> Plan {
    let by_filter = if pending <= 1 {
        Plan::Alone
    } else {
        Plan::Merged
    };
    if pending == 0 || known.unproven {
        return by_filter;
    }
    let listing = listing_calls(known, page_size);
    let filter_calls = lookup_calls(pending, merges);
    let kept = known.accounts.is_none_or(|a| a <= MAX_LISTED as u64);
    let tie_listed = kept && listing == filter_calls && (pending > 1 || known.accounts.is_some());
    if listing < filter_calls || tie_listed {
        Plan::Listing
    } else {
        by_filter
    }
}

/// A listing read page by page, and whether it proves that an account it does not hold is
/// absent. Nothing wraps, no page is marked unproven, every account has an id, and either
/// - (index paging, or one unpaged answer) every page carries `totalResults`, it never shrinks
///   (an account removed meanwhile could shift another past the pages read), no page moved
///   under the walk (the pages overlap by one account, which must be where it was: an account
///   removed and another added meanwhile leave the total as it was, yet shift the rest), and
///   the distinct ids read are exactly the last `totalResults`; or
/// - (cursor paging, RFC 9865, where `totalResults` is optional) the walk ended on a page
///   without `nextCursor` and met every id once: an id met twice means the listing shifted
///   under the walk, which may then have stepped over another account. A `totalResults`, if
///   the target sends one, must still never shrink and match the ids read.
#[derive(Debug, Default)]
struct ListingProof {
    ids: HashSet<String>,
    total: Option<u64>,
    pages: u64,
    biggest_page: u64,
    /// The pages came from a cursor walk.
    by_cursor: bool,
    /// The cursor walk ended on a page without `nextCursor`.
    cursor_ended: bool,
    /// Every value asked is one a listing that leaves accounts out still proves absent
    /// (`Quirks::listing_proves_absence_of`): a page `unproven` only for being `partial`
    /// counts.
    partial_proves: bool,
    broken: bool,
}

/// What the listing should do after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterPage {
    Continue,
    /// Not provable: stop, and ask by filter.
    Unproven,
    /// The pages still to read cost as many calls as the look-ups: stop, and ask by filter.
    TooBig,
}

impl ListingProof {
    /// Takes `page` (its accounts' ids) into the proof; `budget` is what the look-ups would
    /// cost by filter.
    fn page(&mut self, page: &Page, budget: u64) -> AfterPage {
        self.pages += 1;
        if self.pages == 1 {
            self.by_cursor = page.cursor.is_some();
        }
        let unproven = page.unproven && !(self.partial_proves && page.partial);
        let provable = !page.wrapped
            && !page.shifted
            && !unproven
            && self.by_cursor == page.cursor.is_some()
            && (self.by_cursor || page.total.is_some());
        if !provable || self.total.is_some_and(|before| page.total < Some(before)) {
            self.broken = true;
            return AfterPage::Unproven;
        }
        if page.total.is_some() {
            self.total = page.total;
        }
        for resource in &page.resources {
            let Some(id) = id_of(resource) else {
                self.broken = true;
                return AfterPage::Unproven;
            };
            if !self.ids.insert(id.to_owned()) && self.by_cursor {
                self.broken = true;
                return AfterPage::Unproven;
            }
        }
        let len = page.resources.len() as u64;
        self.biggest_page = self.biggest_page.max(len);
        self.cursor_ended = page.cursor == Some(CursorStep::Last);
        match page.total {
            Some(total) => {
                if self.pages == 1 && len > 0 && total.div_ceil(len).saturating_sub(1) >= budget {
                    return AfterPage::TooBig;
                }
            }
            // A cursor walk tells not how far it goes: it stops once it has cost what the
            // look-ups would, so that a big target costs at most twice what filters would.
            None => {
                if page.cursor == Some(CursorStep::More) && self.pages >= budget {
                    return AfterPage::TooBig;
                }
            }
        }
        AfterPage::Continue
    }

    fn complete(&self) -> bool {
        let read = self.ids.len() as u64;
        !self.broken
            && if self.by_cursor {
                self.cursor_ended && self.total.is_none_or(|total| total == read)
            } else {
                self.total == Some(read)
            }
    }

    /// Accounts in the target as far as the listing tells: its last `totalResults`, else the
    /// ids a cursor walk read (one more if it stopped before its end: at least that many).
    fn accounts(&self) -> Option<u64> {
        if self.total.is_some() || !self.by_cursor || self.broken {
            return self.total;
        }
        let read = self.ids.len() as u64;
        Some(if self.cursor_ended { read } else { read + 1 })
    }
}

/// A proven listing's answers: each asked value's accounts, and (up to `MAX_LISTED`) all of
/// them, to keep.
struct Listing {
    per_value: Vec<Vec<Value>>,
    accounts: Option<Vec<Value>>,
    asked_at: Instant,
}

impl Default for LookupBatcher {
    fn default() -> Self {
        Self::new(1)
    }
}

/// Whether a batch of look-ups started ahead while the app's calls were scarce waits a little
/// longer, for more look-ups to leave with it: while more jobs than the app's `slots` already
/// have their answer and wait for their calls (the app stays busy meanwhile), and fewer than a
/// full listing's worth (`MAX_VALUES`) are queued. Pure, so table-tested.
fn holds_back(answered_waiting: usize, slots: usize, queued: usize) -> bool {
    answered_waiting > slots && queued < MAX_VALUES
}

/// Whether the look-ups started `ahead` where the app's calls are plenty (their jobs will need
/// them soon) leave now, by how many of the app's look-ups are under way (`sending`): when none
/// is (an idle app adds no wait) or a full listing's worth (`MAX_VALUES`) is queued. Under load
/// each look-up then answers a full batch, and spends one of the app's call slots for 25
/// accounts instead of a few. (A wanted one, its job waiting, leaves at once.) Pure, so
/// table-tested.
fn leaves_now(ahead: usize, sending: usize) -> bool {
    ahead > 0 && (sending == 0 || ahead >= MAX_VALUES)
}

impl Waiter {
    /// Its job waits for the answer and it leaves on that alone (not one that leaves with a
    /// batch: see [`leaves_now`]).
    fn wanted(&self) -> bool {
        self.ahead != Ahead::WithBatch && self.wanted.load(Ordering::Acquire)
    }

    fn answer(self, found: Result<Vec<Value>, ScimError>, calls: &[CallRecord]) {
        let mut all = self.earlier;
        all.extend_from_slice(calls);
        let _ = self.reply.send(Reply::Found(found, all));
    }

    fn alone(self) {
        let _ = self.reply.send(Reply::Alone(self.earlier));
    }
}

impl LookupBatcher {
    /// The batcher of an app that makes `slots` calls at once.
    #[must_use]
    pub fn new(slots: u32) -> Self {
        let matching = Arc::new(MatchingTurns::default());
        Self {
            queue: Mutex::default(),
            slots: usize::try_from(slots.max(1)).unwrap_or(1),
            or_refused: AtomicBool::default(),
            listing: Mutex::default(),
            listed_users: Mutex::default(),
            claims: Arc::default(),
            creates: Arc::default(),
            matching,
        }
    }

    /// The batcher of an app's new runtime, after its settings changed: merged look-ups and
    /// what was learnt of the target's listing start afresh, but the adoption claims, matching
    /// turns and recent creates are `previous`'s, so that a job of the new runtime never
    /// adopts an account a job of the old one has just taken, nor matches a value one of them
    /// is matching or creating.
    #[must_use]
    pub fn succeeding(previous: &LookupBatcher, slots: u32) -> Self {
        Self {
            claims: previous.claims.clone(),
            creates: previous.creates.clone(),
            matching: previous.matching.clone(),
            ..Self::new(slots)
        }
    }

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
        Ok(self.find_or_take(client, attr, value, None).await?.accounts)
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
    ) -> Result<Found, ScimError> {
        let ahead = ahead
            .filter(|ahead| ahead.attr == attr && ahead.value == value && self.still_fresh(ahead));
        if ahead.is_none()
            && let Some((accounts, calls, asked_at)) =
                self.answer_from_listing(client.quirks(), attr, value)
        {
            execute::record_shared_calls(calls);
            return Ok(Found { accounts, asked_at });
        }
        // An answer is as old as its asking; a look-up asked now is asked after this instant.
        let mut asked_at = Instant::now();
        let answer = match ahead {
            Some(ahead) => {
                // Needed now: it leaves, with every look-up that waits with it.
                ahead.wanted.store(true, Ordering::Release);
                self.kick(client);
                asked_at = ahead.asked_at;
                Some(ahead.answer)
            }
            None => self
                .enqueue(
                    client,
                    attr,
                    value,
                    tracing::Span::current(),
                    execute::job_call_context(),
                    Ahead::No,
                )
                .map(|(answer, _)| answer),
        };
        // Waiting for another task's call: the job's worker is free for other apps meanwhile.
        let shared = match answer {
            Some(answer) => match super::limiter::without_worker(answer).await {
                Ok(Reply::Found(found, calls)) => {
                    execute::record_shared_calls(calls);
                    Some(found)
                }
                Ok(Reply::Alone(calls)) => {
                    execute::record_shared_calls(calls);
                    None
                }
                Err(_) => None,
            },
            None => None,
        };
        let accounts = match shared {
            Some(found) => found?,
            // Not merged, or sent back to a look-up of its own: asked now.
            None => {
                asked_at = Instant::now();
                client.users().find_by(attr, value).await?
            }
        };
        Ok(Found { accounts, asked_at })
    }

    /// Starts the matching look-up of a job that has just been claimed, so that its answer is
    /// there when the job gets its slot: the look-up leaves the job's critical path, and the
    /// look-ups of jobs claimed together leave together. `None` when the value cannot be
    /// merged (the job then looks up alone, when it runs). The answer is the job's own (it is
    /// asked after the claim committed, as the job's own look-up would be), used once, for the
    /// job's first look-up: a look-up after a 409 is made afresh.
    ///
    /// `scarce`: the app is short of tokens (its calls wait for its rate limit). The look-up
    /// then waits in the queue until the job needs it, so that the look-ups of the jobs
    /// claimed meanwhile leave with it as one call (a merged listing, or a read of the whole
    /// target: see [`plan`]); otherwise it leaves with a batch ahead of its job ([`leaves_now`]),
    /// off the job's critical path.
    pub fn look_ahead(
        self: &Arc<Self>,
        client: &ScimClient,
        attr: &str,
        value: &str,
        span: tracing::Span,
        job: execute::JobCallContext,
        scarce: bool,
    ) -> Option<LookAhead> {
        if let Some(ahead) = self.listed_look_ahead(client, attr, value) {
            return Some(ahead);
        }
        let ahead = if scarce {
            Ahead::WhenNeeded
        } else {
            Ahead::WithBatch
        };
        let (answer, wanted) = self.enqueue(client, attr, value, span, job, ahead)?;
        Some(LookAhead {
            attr: attr.to_owned(),
            value: value.to_owned(),
            answer,
            wanted,
            asked_at: Instant::now(),
        })
    }

    /// A look-up ahead answered by the last proven listing, as asked when that listing was:
    /// used by the job only while it is fresh by the same rule ([`Self::still_fresh`]).
    fn listed_look_ahead(&self, client: &ScimClient, attr: &str, value: &str) -> Option<LookAhead> {
        if !batchable(attr) {
            return None;
        }
        let (found, calls, asked_at) = self.answer_from_listing(client.quirks(), attr, value)?;
        let (reply, answer) = oneshot::channel();
        reply.send(Reply::Found(Ok(found), calls)).ok()?;
        Some(LookAhead {
            attr: attr.to_owned(),
            value: value.to_owned(),
            answer,
            wanted: Arc::new(AtomicBool::new(true)),
            asked_at,
        })
    }

    /// Waits for this job's turn at matching `value` (see [`MatchingTurns`]); held until the
    /// job's create, if any, is answered.
    pub async fn matching_turn(&self, attr: &str, value: &str) -> MatchingTurn {
        let key = Creates::key(attr, value);
        let turn = match self.matching.turns.lock() {
            Ok(mut turns) => Some(turns.entry(key.clone()).or_default().clone()),
            Err(_) => None,
        };
        let held = match turn {
            Some(turn) => Some(super::limiter::without_worker(turn.lock_owned()).await),
            None => None,
        };
        if held.is_some() {
            self.matching.held.fetch_add(1, Ordering::AcqRel);
        }
        MatchingTurn {
            turns: self.matching.clone(),
            key,
            held,
        }
    }

    /// Notes that a job is about to create an account whose matching `attr` is `value`: a
    /// look-up of that value sent ahead before now is not used (see [`Creates`]).
    pub fn creating(&self, attr: &str, value: &str) {
        self.renaming(attr, value);
        // The target grows: a listing costs what it will hold.
        if let Ok(mut known) = self.listing.lock()
            && let Some(accounts) = known.accounts.as_mut()
        {
            *accounts += 1;
        }
    }

    /// Notes that a job is about to give an account it holds the matching `value` (a
    /// mover's new address): as for a create, a look-up of that value answered before now is
    /// not used, so that the next job with that value finds the account.
    pub fn renaming(&self, attr: &str, value: &str) {
        if let Ok(mut creates) = self.creates.lock() {
            creates.started(attr, value, Instant::now());
        }
    }

    fn still_fresh(&self, ahead: &LookAhead) -> bool {
        self.creates.lock().is_ok_and(|creates| {
            creates.fresh(&ahead.attr, &ahead.value, ahead.asked_at, Instant::now())
        })
    }

    /// Queues a look-up of `value` (needed now, or started `ahead`) and starts a dispatcher
    /// if it may leave ([`Self::kick`]). `None` when it cannot be merged (the caller looks up
    /// alone).
    fn enqueue(
        self: &Arc<Self>,
        client: &ScimClient,
        attr: &str,
        value: &str,
        span: tracing::Span,
        job: execute::JobCallContext,
        ahead: Ahead,
    ) -> Option<(oneshot::Receiver<Reply>, Arc<AtomicBool>)> {
        if !batchable(attr) || self.or_refused.load(Ordering::Relaxed) {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        let wanted = Arc::new(AtomicBool::new(ahead == Ahead::No));
        {
            let mut queue = self.queue.lock().ok()?;
            queue.waiting.push_back(Waiter {
                attr: attr.to_owned(),
                value: value.to_owned(),
                reply,
                ahead,
                wanted: wanted.clone(),
                earlier: Vec::new(),
                span,
                job,
            });
        }
        self.kick(client);
        Some((answer, wanted))
    }

    /// Starts a dispatcher if fewer than `MAX_DISPATCHERS` run and a look-up is wanted, or
    /// look-ups started ahead may leave ([`leaves_now`]) and every running dispatcher is
    /// under way (one that is not takes them).
    fn kick(self: &Arc<Self>, client: &ScimClient) {
        let start = self.queue.lock().is_ok_and(|mut queue| {
            let (wanted, ahead) = queue.counts();
            let start = queue.dispatchers < MAX_DISPATCHERS
                && (wanted > 0
                    || (queue.sending == queue.dispatchers && leaves_now(ahead, queue.sending)));
            if start {
                queue.dispatchers += 1;
            }
            start
        });
        if start {
            tokio::spawn(self.clone().dispatch(client.clone()));
        }
        // A dispatcher holding a batch back looks again.
        self.matching.changed.notify_waiters();
    }

    /// Takes the next batch and how to ask it: the first wanted waiter (or, when they may
    /// leave, the first started ahead with a batch) and more for the same attribute (up to
    /// `MAX_VALUES`, or every one when the target's listing is read); `None` while look-ups
    /// wait for others to leave with; empty when none may leave. Waiters whose job no longer
    /// waits are dropped. A batch taken counts as under way (`Queue::sending`).
    fn next_batch(&self, client: &ScimClient) -> Option<(Vec<Waiter>, Plan)> {
        let Ok(mut queue) = self.queue.lock() else {
            return Some((Vec::new(), Plan::Alone));
        };
        queue.waiting.retain(|w| !w.reply.is_closed());
        let (wanted, ahead) = queue.counts();
        let first = if wanted > 0 && !self.held_back(&queue) {
            queue.waiting.iter().position(Waiter::wanted)
        } else if leaves_now(ahead, queue.sending) {
            queue
                .waiting
                .iter()
                .position(|w| w.ahead == Ahead::WithBatch)
        } else if wanted + ahead > 0 {
            return None;
        } else {
            None
        };
        let Some(at) = first else {
            return Some((Vec::new(), Plan::Alone));
        };
        let attr = queue.waiting[at].attr.clone();
        let pending = queue.waiting.iter().filter(|w| w.attr == attr).count();
        let quirks = client.quirks();
        let merges = quirks.merges_lookups() && quirks.filters_on(&attr);
        let known = self.listing.lock().map(|k| *k).unwrap_or(ListingKnowledge {
            unproven: true,
            ..ListingKnowledge::default()
        });
        // A target whose listings leave accounts out (guests, say) proves an absence only for
        // addresses at the domains it lists wholly, if any.
        let proves = queue
            .waiting
            .iter()
            .filter(|w| w.attr == attr)
            .all(|w| quirks.listing_proves_absence_of(&w.attr, &w.value));
        let known = ListingKnowledge {
            unproven: known.unproven || !proves,
            ..known
        };
        let plan = plan(pending, merges, &known, quirks.page_size);
        let most = if plan == Plan::Listing {
            MAX_LISTED
        } else {
            MAX_VALUES
        };
        let mut batch = Vec::with_capacity(pending.min(most));
        if let Some(first) = queue.waiting.remove(at) {
            batch.push(first);
        }
        let mut rest = VecDeque::with_capacity(queue.waiting.len());
        while let Some(w) = queue.waiting.pop_front() {
            if batch.len() < most && w.attr == attr {
                batch.push(w);
            } else {
                rest.push_back(w);
            }
        }
        queue.waiting = rest;
        let plan = if batch.len() == 1 && plan == Plan::Merged {
            Plan::Alone
        } else {
            plan
        };
        queue.sending += 1;
        Some((batch, plan))
    }

    /// Whether the wanted look-ups of `queue` wait for others: only where every one was started
    /// ahead of a scarce app's calls, while the jobs already answered keep the app busy
    /// ([`holds_back`]).
    fn held_back(&self, queue: &Queue) -> bool {
        let mut wanted = queue.waiting.iter().filter(|w| w.wanted()).peekable();
        let Some(attr) = wanted.peek().map(|w| w.attr.as_str()) else {
            return false;
        };
        let mut matching = 0;
        for w in wanted {
            if w.ahead != Ahead::WhenNeeded {
                return false;
            }
            matching += 1;
        }
        let pending = queue.waiting.iter().filter(|w| w.attr == attr).count();
        let answered = self
            .matching
            .held
            .load(Ordering::Acquire)
            .saturating_sub(matching);
        holds_back(answered, self.slots, pending)
    }

    /// Puts `batch` back at the front of the queue (a listing that proved nothing): asked by
    /// filter next.
    fn requeue(&self, batch: Vec<Waiter>) {
        if let Ok(mut queue) = self.queue.lock() {
            for w in batch.into_iter().rev() {
                queue.waiting.push_front(w);
            }
        }
    }

    /// Reads the target's whole user listing and answers each of `values` from it, checked
    /// locally like a merged answer; `Ok(None)` when the listing is not proven complete (see
    /// [`ListingProof`]) or costs as many calls as the `budget` look-ups by filter would.
    async fn listed(
        &self,
        client: &ScimClient,
        attr: &str,
        values: &[&str],
        budget: u64,
    ) -> Result<Option<Listing>, ScimError> {
        use futures::TryStreamExt;
        let asked_at = Instant::now();
        let mut pages = client.users().list_pages(ListQuery {
            page_size: client.quirks().page_size,
            overlapping: true,
            ..ListQuery::default()
        });
        let quirks = client.quirks();
        let mut proof = ListingProof {
            partial_proves: values
                .iter()
                .all(|value| quirks.listing_proves_absence_of(attr, value)),
            ..ListingProof::default()
        };
        let mut per_value = vec![Vec::new(); values.len()];
        // Every account once, by id, to keep for later look-ups: none past `MAX_LISTED`.
        let mut kept: Option<(Vec<Value>, HashMap<String, usize>)> = Some(Default::default());
        let mut after = AfterPage::Continue;
        while let Some(page) = pages.try_next().await? {
            after = proof.page(&page, budget);
            if after != AfterPage::Continue {
                break;
            }
            if let Some((accounts, at)) = kept.as_mut() {
                for resource in &page.resources {
                    // Proven pages hold only accounts with an id; a later copy is newer.
                    let Some(id) = id_of(resource) else { continue };
                    match at.get(id) {
                        Some(&i) => accounts[i] = resource.clone(),
                        None => {
                            at.insert(id.to_owned(), accounts.len());
                            accounts.push(resource.clone());
                        }
                    }
                }
                if accounts.len() > MAX_LISTED {
                    kept = None;
                }
            }
            for resource in page.resources {
                for (i, value) in values.iter().enumerate() {
                    if filter::holds_value(&resource, attr, value)
                        && !per_value[i]
                            .iter()
                            .any(|r: &Value| id_of(r) == id_of(&resource))
                    {
                        per_value[i].push(resource.clone());
                    }
                }
            }
        }
        let complete = after == AfterPage::Continue && proof.complete();
        if let Ok(mut known) = self.listing.lock() {
            if let Some(accounts) = proof.accounts() {
                known.accounts = Some(accounts);
            }
            if proof.pages > 1 || after == AfterPage::TooBig {
                known.per_page = proof.biggest_page;
            }
            if after == AfterPage::Unproven || after == AfterPage::Continue && !complete {
                known.unproven = true;
                tracing::info!(
                    "A listing of the target's users was not proven complete; looking up by filter"
                );
            }
        }
        Ok(complete.then(|| Listing {
            per_value,
            accounts: kept.map(|(accounts, _)| accounts),
            asked_at,
        }))
    }

    /// Keeps a proven listing (see [`ListedUsers`]) to answer later look-ups.
    fn keep_listing(&self, listing: ListedUsers) {
        if let Ok(mut listed) = self.listed_users.lock() {
            *listed = Some(Arc::new(listing));
        }
    }

    /// The accounts the last proven listing holds for `value` at `attr`, as a look-up would
    /// find them, with the calls that read it; `None` when it may not answer (see
    /// [`ListedUsers`]): none kept, too old, `attr` not indexed, or a create of `value`
    /// started lately.
    fn answer_from_listing(
        &self,
        quirks: &Quirks,
        attr: &str,
        value: &str,
    ) -> Option<(Vec<Value>, Vec<CallRecord>, Instant)> {
        // A listing that leaves accounts out says nothing of the values it may leave out.
        if !quirks.listing_proves_absence_of(attr, value) {
            return None;
        }
        let listed = self.listed_users.lock().ok()?.clone()?;
        let fresh = self
            .creates
            .lock()
            .ok()?
            .fresh(attr, value, listed.asked_at, Instant::now());
        if !fresh {
            return None;
        }
        let found = listed.find(attr, value)?;
        Some((found, listed.calls.clone(), listed.asked_at))
    }

    /// Sends queued look-ups until none is left: one waiter's alone, several as one listing.
    async fn dispatch(self: Arc<Self>, client: ScimClient) {
        let _exit = DispatcherExit(&self);
        let changed = self.matching.changed.clone();
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some((mut batch, plan)) = self.next_batch(&client) else {
                // Held back: until a job's turn ends or a look-up is wanted (at most a second,
                // whatever the counts say).
                let _ = tokio::time::timeout(HOLD_AT_MOST, notified).await;
                continue;
            };
            if batch.is_empty() {
                return;
            }
            let _sending = Sending(&self);
            batch[0].span.in_scope(|| {
                let wanted = batch
                    .iter()
                    .filter(|w| w.wanted.load(Ordering::Acquire))
                    .count();
                tracing::debug!(
                    values = batch.len(),
                    wanted,
                    ?plan,
                    "Matching look-ups leave"
                );
            });
            if self.or_refused.load(Ordering::Relaxed) && plan != Plan::Listing {
                for w in batch {
                    w.alone();
                }
                continue;
            }
            if plan == Plan::Listing {
                let attr = batch[0].attr.clone();
                let values: Vec<&str> = batch.iter().map(|w| w.value.as_str()).collect();
                let quirks = client.quirks();
                let merges = quirks.merges_lookups() && quirks.filters_on(&attr);
                let budget = lookup_calls(values.len(), merges);
                let (result, calls) = execute::with_job_call_context(
                    &batch[0].job,
                    self.listed(&client, &attr, &values, budget)
                        .instrument(batch[0].span.clone()),
                )
                .await;
                match result {
                    Ok(Some(listing)) => {
                        if let Some(accounts) = listing.accounts {
                            self.keep_listing(ListedUsers::new(
                                listing.asked_at,
                                accounts,
                                &attr,
                                calls.clone(),
                            ));
                        }
                        for (w, found) in batch.into_iter().zip(listing.per_value) {
                            w.answer(Ok(found), &calls);
                        }
                    }
                    Err(e) if after_failed_batch(&e) == BatchFailure::Shared => {
                        for w in batch {
                            w.answer(Err(e.clone()), &calls);
                        }
                    }
                    // Not proven, too big, or refused: asked by filter (the knowledge now
                    // says so, so the next plan is not a listing).
                    other => {
                        if let Err(e) = other
                            && let Ok(mut known) = self.listing.lock()
                        {
                            tracing::info!(error = %e, "A listing of the target's users failed; looking up by filter");
                            known.unproven = true;
                        }
                        for w in &mut batch {
                            w.earlier.extend(calls.iter().cloned());
                        }
                        self.requeue(batch);
                    }
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
                w.answer(found, &calls);
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
                            w.answer(Err(e.clone()), &calls);
                        }
                        continue;
                    }
                },
            };
            match per_value {
                Some(per_value) => {
                    for (w, found) in batch.into_iter().zip(per_value) {
                        w.answer(Ok(found), &calls);
                    }
                }
                None => {
                    for w in batch {
                        w.alone();
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

    /// A change of an app's settings builds a new runtime while jobs of the old one still run:
    /// the new one's jobs must see what those are doing to the target's accounts.
    #[tokio::test]
    async fn a_new_runtimes_batcher_sees_what_the_old_ones_jobs_are_doing() {
        let old = LookupBatcher::new(4);
        let asked_before = Instant::now();
        assert_eq!(old.claim("user", "t1", "ada"), Ok(()));
        let turn = old.matching_turn("userName", "ada@example.com").await;
        old.creating("userName", "ada@example.com");
        let new = LookupBatcher::succeeding(&old, 4);
        assert!(
            new.claim("user", "t1", "bob").is_err(),
            "an account an old job is adopting is not adopted again"
        );
        let fresh = new.creates.lock().is_ok_and(|creates| {
            creates.fresh("userName", "ada@example.com", asked_before, Instant::now())
        });
        assert!(
            !fresh,
            "a look-up asked before an old job's create is not trusted"
        );
        let next = new.matching_turn("userName", "ada@example.com");
        tokio::pin!(next);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut next)
                .await
                .is_err(),
            "a new job waits for the old job matching the same value"
        );
        drop(turn);
        tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("and has its turn once the old job's ends");
    }

    #[test]
    fn a_look_up_sent_ahead_is_stale_once_a_create_of_its_value_started_lately_or_it_is_old() {
        let mut creates = Creates::default();
        let t0 = Instant::now();
        assert!(creates.fresh("userName", "ada@example.com", t0, t0));
        creates.started("userName", "bob@example.com", t0);
        assert!(
            creates.fresh("userName", "ada@example.com", t0, t0),
            "another value"
        );
        creates.started("userName", "ADA@example.com", t0);
        assert!(
            !creates.fresh("userName", "ada@example.com", t0, t0),
            "a create of the same value (ignoring case) started after it was asked"
        );
        // Asked after that create started: it may have been under way when answered.
        let later = t0 + Duration::from_millis(10);
        assert!(!creates.fresh("userName", "ada@example.com", later, later));
        let late = t0 + AHEAD_MAX_AGE + Duration::from_secs(1);
        assert!(
            !creates.fresh("userName", "cy@example.com", t0, late),
            "too old"
        );
        // Old starts are forgotten as new ones come.
        creates.started("userName", "cy@example.com", late);
        assert_eq!(creates.latest.len(), 1);
        assert_eq!(creates.order.len(), 1);
        assert!(creates.fresh("userName", "ada@example.com", late, late));
    }

    #[test]
    fn a_listing_answers_pending_look_ups_where_it_costs_fewer_calls_or_as_many_and_is_kept() {
        let unknown = ListingKnowledge::default();
        let known = |accounts, per_page| ListingKnowledge {
            accounts: Some(accounts),
            per_page,
            unproven: false,
        };
        let unproven = ListingKnowledge {
            unproven: true,
            ..unknown
        };
        // (pending, the target merges `or`, what is known, page size) → plan
        let table = [
            // One look-up: listed only when the target is known to fit one page (the listing
            // is then kept for the next look-ups, for the same one call).
            (1, false, unknown, 100, Plan::Alone),
            (1, true, known(0, 0), 100, Plan::Listing),
            (1, true, known(99, 0), 100, Plan::Listing),
            (1, true, known(101, 0), 100, Plan::Alone),
            (1, true, unproven, 100, Plan::Alone),
            // One term per filter: two look-ups cost two calls, an unknown listing one page.
            (2, false, unknown, 100, Plan::Listing),
            (2, false, known(99, 0), 100, Plan::Listing),
            // A tie: the listing is kept, and answers the next look-ups too.
            (2, false, known(150, 0), 100, Plan::Listing),
            (2, false, known(250, 0), 100, Plan::Merged),
            (3, false, known(150, 0), 100, Plan::Listing),
            // Pages as the target served them, not as asked.
            (3, false, known(150, 50), 100, Plan::Listing),
            (3, false, known(151, 50), 100, Plan::Merged),
            // Merged: 25 values a call.
            (25, true, unknown, 100, Plan::Listing),
            (26, true, unknown, 100, Plan::Listing),
            (26, true, known(101, 0), 100, Plan::Listing),
            (26, true, known(201, 0), 100, Plan::Merged),
            (60, true, known(180, 0), 100, Plan::Listing),
            (60, true, known(300, 0), 100, Plan::Listing),
            (60, true, known(301, 0), 100, Plan::Merged),
            // A tie where the listing is too big to keep: by filter.
            (6, false, known(600, 0), 100, Plan::Merged),
            (7, false, known(600, 0), 100, Plan::Listing),
            // A huge target is never listed.
            (500, false, known(1_000_000, 0), 100, Plan::Merged),
            // Once a listing was not proven complete, never again.
            (500, false, unproven, 100, Plan::Merged),
        ];
        for (pending, merges, known, page_size, expected) in table {
            assert_eq!(
                plan(pending, merges, &known, page_size),
                expected,
                "{pending} pending, merges {merges}, {known:?}, pages of {page_size}"
            );
        }
    }

    fn page(ids: &[&str], total: Option<u64>) -> Page {
        Page {
            resources: ids.iter().map(|id| json!({"id": id})).collect(),
            total,
            wrapped: false,
            shifted: false,
            unproven: false,
            partial: false,
            cursor: None,
        }
    }

    /// A page of a cursor walk: `last` when its answer had no `nextCursor`.
    fn cursor_page(ids: &[&str], last: bool) -> Page {
        Page {
            cursor: Some(if last {
                CursorStep::Last
            } else {
                CursorStep::More
            }),
            ..page(ids, None)
        }
    }

    /// What a listing of `pages` ends with, and whether it proved itself complete.
    fn read(pages: &[Page], budget: u64) -> (AfterPage, bool) {
        read_into(ListingProof::default(), pages, budget)
    }

    fn read_into(mut proof: ListingProof, pages: &[Page], budget: u64) -> (AfterPage, bool) {
        let mut after = AfterPage::Continue;
        for p in pages {
            after = proof.page(p, budget);
            if after != AfterPage::Continue {
                break;
            }
        }
        (after, after == AfterPage::Continue && proof.complete())
    }

    #[test]
    fn only_a_listing_whose_distinct_ids_are_its_total_proves_an_absence() {
        let proven = (AfterPage::Continue, true);
        let not_proven = (AfterPage::Continue, false);
        // Complete: one page, two pages, an account repeated across pages counted once.
        assert_eq!(read(&[page(&["a", "b"], Some(2))], 5), proven);
        assert_eq!(read(&[page(&[], Some(0))], 5), proven);
        assert_eq!(
            read(&[page(&["a", "b"], Some(4)), page(&["c", "d"], Some(4))], 5),
            proven
        );
        assert_eq!(
            read(&[page(&["a", "b"], Some(3)), page(&["b", "c"], Some(3))], 5),
            proven
        );
        // An account dropped from a page; a total above or below what was served.
        assert_eq!(
            read(&[page(&["a", "b"], Some(4)), page(&["c"], Some(4))], 5),
            not_proven
        );
        assert_eq!(read(&[page(&["a", "b"], Some(3))], 5), not_proven);
        assert_eq!(read(&[page(&["a", "b", "c"], Some(2))], 5), not_proven);
        // A target that grew between pages, read to its end.
        assert_eq!(
            read(&[page(&["a", "b"], Some(3)), page(&["c", "d"], Some(4))], 5),
            proven
        );
        // No totalResults, a total that shrank, a wrap, an account without id, no proof.
        let unproven = (AfterPage::Unproven, false);
        assert_eq!(read(&[page(&["a"], None)], 5), unproven);
        assert_eq!(
            read(&[page(&["a", "b"], Some(4)), page(&["c"], Some(3))], 5),
            unproven
        );
        let mut wrapped = page(&[], Some(4));
        wrapped.wrapped = true;
        assert_eq!(read(&[page(&["a", "b"], Some(4)), wrapped], 5), unproven);
        let mut whole = page(&["a"], Some(1));
        whole.unproven = true;
        assert_eq!(read(&[whole], 5), unproven);
        // `a` removed and `d` added between the pages: the total holds, the ids read match
        // it, yet `c` moved onto the page read; the overlapping page says so.
        let mut moved = page(&["d"], Some(3));
        moved.shifted = true;
        assert_eq!(read(&[page(&["a", "b"], Some(3)), moved], 5), unproven);
        let no_id = Page {
            resources: vec![json!({"userName": "a"})],
            total: Some(1),
            wrapped: false,
            shifted: false,
            unproven: false,
            partial: false,
            cursor: None,
        };
        assert_eq!(read(&[no_id], 5), unproven);
        // The first page tells the size: 10 pages to go cost more than 5 look-ups.
        assert_eq!(
            read(&[page(&["a", "b"], Some(22))], 5),
            (AfterPage::TooBig, false)
        );
        assert_eq!(
            read(&[page(&["a", "b"], Some(12))], 6).0,
            AfterPage::Continue
        );
    }

    #[test]
    fn a_cursor_walk_read_to_its_end_with_each_id_once_proves_an_absence() {
        let more = |ids: &[&str]| cursor_page(ids, false);
        let last = |ids: &[&str]| cursor_page(ids, true);
        let with_total = |mut p: Page, total| {
            p.total = Some(total);
            p
        };
        let wrapped = |mut p: Page| {
            p.wrapped = true;
            p
        };
        let partial = |mut p: Page| {
            p.unproven = true;
            p
        };
        let proven = (AfterPage::Continue, true);
        let unproven = (AfterPage::Unproven, false);
        // (pages, look-ups' budget) → what the listing ends with, proven
        let table = [
            // Read to a page without `nextCursor`: proven without any `totalResults`.
            (vec![last(&["a", "b"])], 5, proven),
            (vec![last(&[])], 5, proven),
            (
                vec![more(&["a", "b"]), more(&["c"]), last(&["d"])],
                5,
                proven,
            ),
            // A `totalResults` sent with cursors must agree, and never shrink.
            (vec![with_total(last(&["a", "b"]), 2)], 5, proven),
            (
                vec![with_total(last(&["a", "b"]), 3)],
                5,
                (AfterPage::Continue, false),
            ),
            (
                vec![
                    with_total(more(&["a", "b"]), 3),
                    with_total(last(&["c"]), 2),
                ],
                5,
                unproven,
            ),
            // An id met twice: the listing shifted under the walk.
            (vec![more(&["a", "b"]), last(&["b", "c"])], 5, unproven),
            (vec![last(&["a", "a"])], 5, unproven),
            // A cursor handed out again (the walk would loop).
            (vec![more(&["a"]), wrapped(more(&["b"]))], 5, unproven),
            // The target's listings leave accounts out.
            (vec![partial(last(&["a"]))], 5, unproven),
            // An account without id.
            (
                vec![Page {
                    resources: vec![json!({"userName": "a"})],
                    ..last(&[])
                }],
                5,
                unproven,
            ),
            // Not read to its end: once the pages read cost what the look-ups would, stop.
            (
                vec![more(&["a"]), more(&["b"]), last(&["c"])],
                2,
                (AfterPage::TooBig, false),
            ),
            (vec![more(&["a"]), last(&["b"])], 3, proven),
            // Index paging still needs `totalResults`, whatever a page says of cursors.
            (vec![page(&["a"], None)], 5, unproven),
            (vec![page(&["a"], Some(2)), last(&["b"])], 5, unproven),
        ];
        for (pages, budget, expected) in table {
            assert_eq!(read(&pages, budget), expected, "{pages:?}, budget {budget}");
        }
    }

    #[test]
    fn a_listing_that_leaves_accounts_out_proves_absent_only_the_values_its_quirks_allow() {
        let partial = |mut p: Page| {
            p.unproven = true;
            p.partial = true;
            p
        };
        let scoped = || ListingProof {
            partial_proves: true,
            ..ListingProof::default()
        };
        let whole = page(&["a", "b"], Some(2));
        // (pages, every asked value at a wholly listed domain) → proven
        let table = [
            (
                vec![partial(whole.clone())],
                false,
                (AfterPage::Unproven, false),
            ),
            (
                vec![partial(whole.clone())],
                true,
                (AfterPage::Continue, true),
            ),
            (
                vec![partial(cursor_page(&["a"], true))],
                true,
                (AfterPage::Continue, true),
            ),
            // Unproven for another reason too (no `totalResults`, one unpaged answer).
            (
                vec![partial(page(&["a"], None))],
                true,
                (AfterPage::Unproven, false),
            ),
            // The other rules still hold.
            (
                vec![partial(page(&["a", "b"], Some(3)))],
                true,
                (AfterPage::Continue, false),
            ),
        ];
        for (pages, in_domains, expected) in table {
            let proof = if in_domains {
                scoped()
            } else {
                ListingProof::default()
            };
            assert_eq!(read_into(proof, &pages, 5), expected, "{pages:?}");
        }
        // Unproven (paging none without `totalResults`) is not `partial`: never proven.
        let mut unpaged = page(&["a"], None);
        unpaged.unproven = true;
        assert!(!read_into(scoped(), &[unpaged], 5).1);
    }

    #[test]
    fn a_cursor_walk_tells_the_accounts_it_read() {
        let mut proof = ListingProof::default();
        assert_eq!(
            proof.page(&cursor_page(&["a", "b"], false), 1),
            AfterPage::TooBig
        );
        assert_eq!(proof.accounts(), Some(3), "at least one more");
        let mut proof = ListingProof::default();
        assert_eq!(
            proof.page(&cursor_page(&["a", "b"], true), 5),
            AfterPage::Continue
        );
        assert_eq!(proof.accounts(), Some(2));
        let mut proof = ListingProof::default();
        proof.page(&page(&["a"], Some(7)), 50);
        assert_eq!(proof.accounts(), Some(7), "its total");
    }

    #[test]
    fn a_kept_listing_answers_as_a_look_up_would_while_fresh_and_no_create_of_the_value_started() {
        let accounts = vec![
            json!({"id": "1", "userName": "Ada@Example.com",
                   "emails": [{"value": "ada.l@example.com"}], "externalId": "E1"}),
            json!({"id": "2", "userName": "bob@example.com", "externalId": 7}),
            json!({"id": "3", "userName": "ADA@example.com"}),
        ];
        let batcher = LookupBatcher::new(1);
        let quirks = Quirks::default();
        let listed = |asked_at, attr| ListedUsers::new(asked_at, accounts.clone(), attr, vec![]);
        let ids = |found: Option<(Vec<Value>, Vec<CallRecord>, Instant)>| {
            found.map(|(found, _, _)| {
                found
                    .iter()
                    .filter_map(|a| id_of(a).map(str::to_owned))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            ids(batcher.answer_from_listing(&quirks, "userName", "ada@example.com")),
            None,
            "none kept"
        );
        batcher.keep_listing(listed(Instant::now(), "userName"));
        // userName and e-mails ignoring case; the whole account, as the target served it.
        assert_eq!(
            ids(batcher.answer_from_listing(&quirks, "userName", "ada@EXAMPLE.com")),
            Some(vec!["1".to_owned(), "3".to_owned()])
        );
        let (found, _, _) = batcher
            .answer_from_listing(&quirks, "username", "bob@example.com")
            .expect("kept");
        assert_eq!(found, vec![accounts[1].clone()]);
        assert_eq!(
            ids(batcher.answer_from_listing(&quirks, "emails.value", "Ada.L@example.com")),
            Some(vec!["1".to_owned()])
        );
        assert_eq!(
            ids(batcher.answer_from_listing(&quirks, "userName", "cy@example.com")),
            Some(vec![])
        );
        // Only the indexed attributes: here the listing was asked for userName.
        assert_eq!(
            ids(batcher.answer_from_listing(&quirks, "externalId", "E1")),
            None
        );
        batcher.keep_listing(listed(Instant::now(), "externalId"));
        assert_eq!(
            ids(batcher.answer_from_listing(&quirks, "externalId", "E1")),
            Some(vec!["1".to_owned()])
        );
        assert_eq!(
            ids(batcher.answer_from_listing(&quirks, "externalId", "e1")),
            Some(vec![]),
            "exactly"
        );
        assert_eq!(
            ids(batcher.answer_from_listing(&quirks, "externalId", "7")),
            Some(vec!["2".to_owned()]),
            "a number as its text"
        );
        // A create of the value started: that value is asked again, the others not.
        batcher.creating("userName", "CY@example.com");
        assert_eq!(
            ids(batcher.answer_from_listing(&quirks, "userName", "cy@example.com")),
            None
        );
        assert!(
            batcher
                .answer_from_listing(&quirks, "userName", "bob@example.com")
                .is_some()
        );
        // Older than a look-up sent ahead may be: not used.
        let old = Instant::now()
            .checked_sub(AHEAD_MAX_AGE + Duration::from_secs(1))
            .expect("the clock runs long enough");
        batcher.keep_listing(listed(old, "userName"));
        assert_eq!(
            ids(batcher.answer_from_listing(&quirks, "userName", "bob@example.com")),
            None
        );
    }

    #[test]
    fn scarce_look_ups_wait_while_answered_jobs_keep_the_app_busy() {
        // (jobs answered and waiting for their calls, the app's slots, look-ups queued)
        let table = [
            ((0, 1, 1), false),
            ((1, 1, 1), false),
            ((2, 1, 1), true),
            ((2, 1, 24), true),
            ((2, 1, 25), false),
            ((4, 4, 3), false),
            ((5, 4, 3), true),
        ];
        for ((answered, slots, queued), held) in table {
            assert_eq!(
                holds_back(answered, slots, queued),
                held,
                "{answered} answered, {slots} slots, {queued} queued"
            );
        }
    }

    #[test]
    fn look_ups_started_ahead_leave_when_none_is_under_way_or_with_a_full_batch() {
        // (started ahead, under way) → leave now
        let table = [
            ((0, 0), false),
            ((0, 2), false),
            ((1, 0), true),
            ((1, 1), false),
            ((24, 1), false),
            ((25, 1), true),
            ((30, 2), true),
        ];
        for ((ahead, sending), leaves) in table {
            assert_eq!(
                leaves_now(ahead, sending),
                leaves,
                "{ahead} ahead, {sending} under way"
            );
        }
    }

    /// Under load, where the app's calls are plenty, each merged look-up answers a full batch:
    /// look-ups started ahead while one is under way wait for 25 to leave together, instead
    /// of a second call leaving at once with one value (each call takes one of the app's
    /// slots from its creates). Every job still gets exactly its own answer.
    #[tokio::test]
    async fn look_ups_started_ahead_while_one_is_under_way_leave_as_a_full_batch() {
        use crate::dev_target::{DevTargetArgs, Kind, spawn};
        use crate::net_guard::TargetPolicy;
        use crate::scim::{Auth, TargetConfig};
        let target = spawn(DevTargetArgs {
            latency_ms: 400,
            ..DevTargetArgs::default()
        })
        .await
        .expect("dev-target");
        let name = |i: usize| format!("ahead-{i}@example.com");
        let mut ids = HashMap::new();
        for i in [0, 3, 20, 30] {
            let created = target
                .insert(
                    Kind::User,
                    serde_json::json!({"schemas": [crate::scim::schemas::USER],
                                       "userName": name(i)}),
                )
                .expect("insert");
            ids.insert(i, id_of(&created).expect("id").to_owned());
        }
        let calls: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut config = TargetConfig::new(
            target.base_url().parse().expect("url"),
            Auth::None,
            TargetPolicy::AllowPrivate,
        );
        let sink = calls.clone();
        config.observer = Some(Arc::new(move |r: &CallRecord| {
            if r.method == "GET"
                && r.path.contains("filter")
                && let Ok(mut calls) = sink.lock()
            {
                calls.push(r.path.clone());
            }
        }));
        let client = ScimClient::new(config).expect("client");
        let batcher = Arc::new(LookupBatcher::new(32));
        // By filter only: what is under test is when the look-ups leave, not how.
        batcher.listing.lock().expect("knowledge").unproven = true;
        let ahead = |i: usize| {
            batcher
                .look_ahead(
                    &client,
                    "userName",
                    &name(i),
                    tracing::Span::none(),
                    execute::job_call_context(),
                    false,
                )
                .expect("merged")
        };
        // The first leaves at once, alone: nothing else is under way.
        let mut aheads = vec![ahead(0)];
        tokio::time::sleep(Duration::from_millis(100)).await;
        // 30 more while it is under way, each given the chance to leave at once.
        for i in 1..=30 {
            aheads.push(ahead(i));
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut found = Vec::new();
        for (i, ahead) in aheads.into_iter().enumerate() {
            let answer = batcher
                .find_or_take(&client, "userName", &name(i), Some(ahead))
                .await
                .expect("answered");
            found.push((i, answer.accounts));
        }
        for (i, accounts) in found {
            let got: Vec<&str> = accounts.iter().filter_map(id_of).collect();
            let want: Vec<&str> = ids.get(&i).map(String::as_str).into_iter().collect();
            assert_eq!(got, want, "{}", name(i));
        }
        let mut values_per_call: Vec<usize> = calls
            .lock()
            .expect("calls")
            .iter()
            .map(|path| path.matches(" eq ").count())
            .collect();
        // The call records show no value (they are redacted): each comparison is one.
        values_per_call.sort_unstable();
        assert_eq!(
            values_per_call,
            [1, 5, 25],
            "the first alone, then a full batch, then the rest once no call was under way"
        );
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
        let cut_short = ScimError::IncompleteListing {
            method: "GET".into(),
            path: "/Users".into(),
            reason: "2 resources read of the 3 its totalResults counts".into(),
        };
        assert_eq!(after_failed_batch(&cut_short), BatchFailure::RetryAlone);
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
