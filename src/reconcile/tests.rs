//! Behaviour of the classifier, table-driven: `classify` (one account) and `missing` (a whole run)
//! are the only callers of the API under test.
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::mapping::IdentityView;
use crate::settings::{AppSettings, DeprovisionAction, compile_mappings};

/// DESIGN §4's example app: userName ← email, names, work email, title, externalId ←
/// employee_id; role mapping; scope board-room in example.com; deprovision deactivate.
fn settings() -> AppSettings {
    let settings = serde_json::from_value(json!({
        "rate_limit": {"per_second": 10, "burst": 20},
        "max_concurrency": 4,
        "timeout_ms": 10_000,
        "max_attempts": 8,
        "matching": {"target_attribute": "userName"},
        "scope": {"groups": ["board-room"], "email_domains": ["example.com"]},
        "mappings": [
            {"target": "userName", "source": "email"},
            {"target": "name.givenName", "source": "given_name"},
            {"target": "name.familyName", "source": "family_name"},
            {"target": "emails[type eq \"work\"].value", "source": "email"},
            {"target": "title", "source": "title"},
            {"target": "externalId", "source": "employee_id"}
        ],
        "role_mapping": {"target": "roles[primary eq true].value", "default": "member",
                         "rules": [{"group": "board-admins", "value": "admin"}]},
        "group_push": ["board-room"],
        "deprovision": {"action": "deactivate", "delete_after_days": 30},
        "reconcile": {"interval_minutes": 60, "mode": "report", "deprovision_unmatched": false},
        "deletion_guard": {"max_fraction": 0.2, "max_count": 50},
        "quirks": {}
    }));
    settings.expect("the DESIGN example parses as AppSettings")
}

fn delete_policy(settings: &mut AppSettings) {
    settings.deprovision.action = DeprovisionAction::Delete;
}

fn deprovision_unmatched(settings: &mut AppSettings) {
    settings.reconcile.deprovision_unmatched = true;
}

fn as_is(_: &mut AppSettings) {}

/// A change to the example settings for one case.
type Tweak = fn(&mut AppSettings);

/// One row of the classification table: name, settings, account, expected finding.
type Case = (&'static str, Tweak, Value, Expect);

fn person(id: &str, employee_id: &str, email: &str, given: &str, family: &str) -> IdentityView {
    IdentityView {
        id: id.to_owned(),
        employee_id: employee_id.to_owned(),
        user_name: None,
        email: Some(email.to_owned()),
        given_name: Some(given.to_owned()),
        family_name: Some(family.to_owned()),
        display_name: None,
        department: Some("Board".to_owned()),
        title: Some("Chair".to_owned()),
        manager_employee_id: None,
        attributes: json!({}),
        status: "active".to_owned(),
        groups: vec!["board-room".to_owned()],
    }
}

fn ada() -> IdentityView {
    person("i-ada", "E100", "ada@example.com", "Ada", "Lovelace")
}

/// Terminated: a leaver.
fn grace() -> IdentityView {
    IdentityView {
        status: "terminated".to_owned(),
        ..person("i-grace", "E200", "grace@example.com", "Grace", "Hopper")
    }
}

/// Active, but moved out of the app's group.
fn alan() -> IdentityView {
    IdentityView {
        groups: vec!["finance".to_owned()],
        ..person("i-alan", "E300", "alan@example.com", "Alan", "Turing")
    }
}

/// In scope, not linked.
fn edsger() -> IdentityView {
    person(
        "i-edsger",
        "E400",
        "Edsger@Example.com",
        "Edsger",
        "Dijkstra",
    )
}

fn linked(target_id: &str) -> Option<LinkInfo> {
    Some(LinkInfo {
        target_id: Some(target_id.to_owned()),
        state: "linked".to_owned(),
    })
}

/// Roster's identities for the classification table: ada, grace and alan linked, edsger not.
fn roster() -> Vec<(IdentityView, Option<LinkInfo>)> {
    vec![
        (ada(), linked("t-ada")),
        (grace(), linked("t-grace")),
        (alan(), linked("t-alan")),
        (edsger(), None),
    ]
}

/// Ada's account as a target returns it: its own attributes (`meta`, `formatted`, a home
/// email) and key order, which are no drift.
fn ada_account() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": "t-ada",
        "meta": {"resourceType": "User", "version": "W/\"3\"", "created": "2026-01-01T00:00:00Z"},
        "active": true,
        "externalId": "E100",
        "userName": "ada@example.com",
        "name": {"formatted": "Ada Lovelace", "familyName": "Lovelace", "givenName": "Ada"},
        "emails": [{"value": "ada@example.com", "type": "work", "primary": true}],
        "roles": [{"value": "member", "primary": true}],
        "title": "Chair",
        "groups": [{"value": "g-1", "display": "board-room"}]
    })
}

fn account_of(id: &str, user_name: &str, active: bool) -> Value {
    json!({"id": id, "userName": user_name, "active": active})
}

/// `account` with the values at the JSON pointers replaced (or removed, for `Null`).
fn edited(mut account: Value, edits: &[(&str, Value)]) -> Value {
    for (pointer, value) in edits {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer with a parent");
        let parent = account
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("the pointer's parent is an object");
        match value {
            Value::Null => parent.remove(key),
            value => parent.insert(key.to_owned(), value.clone()),
        };
    }
    account
}

/// What a finding should be: class, action label, identity, and the paths that differ.
#[derive(Debug, PartialEq)]
struct Expect {
    class: Class,
    action: &'static str,
    identity_id: Option<String>,
    paths: Vec<String>,
}

fn expect(class: Class, action: &'static str, identity_id: Option<&str>) -> Expect {
    Expect {
        class,
        action,
        identity_id: identity_id.map(str::to_owned),
        paths: Vec::new(),
    }
}

fn differing(mut expect: Expect, paths: &[&str]) -> Expect {
    expect.paths = paths.iter().map(|path| (*path).to_owned()).collect();
    expect
}

fn summary(finding: &Finding) -> Expect {
    Expect {
        class: finding.class,
        action: finding.action.label(),
        identity_id: finding.identity_id.clone(),
        paths: finding
            .differences
            .iter()
            .map(|difference| difference.path.clone())
            .collect(),
    }
}

fn classifier(tweak: Tweak, identities: &[(IdentityView, Option<LinkInfo>)]) -> Classifier {
    classifier_of(
        Desired::new(&settings_with(tweak), compiled(tweak)).expect("userName is a valid path"),
        identities,
    )
}

fn settings_with(tweak: Tweak) -> AppSettings {
    let mut settings = settings();
    tweak(&mut settings);
    settings
}

fn compiled(tweak: Tweak) -> crate::mapping::CompiledMappings {
    compile_mappings(&settings_with(tweak)).expect("the example mappings compile")
}

fn classifier_of(
    mut desired: Desired,
    identities: &[(IdentityView, Option<LinkInfo>)],
) -> Classifier {
    for (identity, link) in identities {
        desired.insert(identity, link.as_ref());
    }
    Classifier::new(desired)
}

/// Hands `classifier` the renderings it asks for, from `identities` (as the run reads them from
/// the store).
fn provide(
    classifier: &mut Classifier,
    identities: &[(IdentityView, Option<LinkInfo>)],
    wanted: &[IdentityRef],
) {
    for identity in wanted {
        let id = classifier.identity_id(*identity).to_owned();
        let (view, _) = identities
            .iter()
            .find(|(view, _)| view.id == id)
            .expect("the classifier asks for identities it was given");
        assert!(classifier.render(*identity, view));
    }
}

/// Classifies one account of a run, its identity rendered first as the run does per page.
fn classify_with(
    classifier: &mut Classifier,
    identities: &[(IdentityView, Option<LinkInfo>)],
    account: &Value,
) -> Finding {
    let wanted = classifier.to_render([account]);
    provide(classifier, identities, &wanted);
    let finding = classifier
        .classify_account(account)
        .expect("its identity was rendered");
    classifier.forget_renderings();
    finding
}

/// The `missing` findings at the end of a run.
fn finish(
    classifier: &mut Classifier,
    identities: &[(IdentityView, Option<LinkInfo>)],
) -> Vec<Finding> {
    let missing = classifier.missing();
    provide(classifier, identities, &missing);
    missing
        .into_iter()
        .map(|identity| {
            classifier
                .missing_finding(identity)
                .expect("its identity was rendered")
        })
        .collect()
}

/// Classifies `account` alone against `identities` under `settings` tweaked by `tweak`.
fn classify(
    tweak: Tweak,
    identities: &[(IdentityView, Option<LinkInfo>)],
    account: &Value,
) -> Finding {
    classify_with(&mut classifier(tweak, identities), identities, account)
}

#[test]
fn accounts_are_classified_as_the_design_table_says() {
    use Class::*;
    let ada_id = Some("i-ada");
    let cases: Vec<Case> = vec![
        (
            "linked and equal",
            as_is,
            ada_account(),
            expect(InSync, "none", ada_id),
        ),
        (
            "given name changed by hand",
            as_is,
            edited(ada_account(), &[("/name/givenName", json!("Adah"))]),
            differing(expect(Drifted, "patch", ada_id), &["name.givenName"]),
        ),
        (
            "userName differs only in case",
            as_is,
            edited(ada_account(), &[("/userName", json!("ADA@Example.COM"))]),
            expect(InSync, "none", ada_id),
        ),
        (
            "email element order and a home email",
            as_is,
            edited(
                ada_account(),
                &[(
                    "/emails",
                    json!([{"type": "home", "value": "ada@home.test"},
                           {"type": "work", "value": "ada@example.com", "primary": true}]),
                )],
            ),
            expect(InSync, "none", ada_id),
        ),
        (
            "deactivated by hand while in scope",
            as_is,
            edited(ada_account(), &[("/active", json!(false))]),
            differing(expect(Drifted, "patch", ada_id), &["active"]),
        ),
        (
            "linked account whose userName was moved out of the managed domain",
            as_is,
            edited(ada_account(), &[("/userName", json!("ada@partner.org"))]),
            differing(expect(Drifted, "patch", ada_id), &["userName"]),
        ),
        (
            "title and role removed",
            as_is,
            edited(
                ada_account(),
                &[("/title", Value::Null), ("/roles", json!([]))],
            ),
            differing(
                expect(Drifted, "patch", ada_id),
                &["title", "roles[primary eq true].value"],
            ),
        ),
        (
            "leaver re-activated by hand",
            as_is,
            account_of("t-grace", "grace@example.com", true),
            expect(Orphan, "deactivate", Some("i-grace")),
        ),
        (
            "leaver re-activated by hand, app deletes",
            delete_policy,
            account_of("t-grace", "grace@example.com", true),
            expect(Orphan, "delete", Some("i-grace")),
        ),
        (
            "leaver without `active` counts as active",
            as_is,
            json!({"id": "t-grace", "userName": "grace@example.com"}),
            expect(Orphan, "deactivate", Some("i-grace")),
        ),
        (
            "leaver deactivated",
            as_is,
            account_of("t-grace", "grace@example.com", false),
            expect(InSync, "none", Some("i-grace")),
        ),
        (
            "leaver deactivated, `active` sent as text",
            delete_policy,
            json!({"id": "t-grace", "userName": "grace@example.com", "active": "False"}),
            expect(InSync, "none", Some("i-grace")),
        ),
        (
            "leaver's second account, matched by userName while she is linked: deprovisioning it would move her link",
            as_is,
            account_of("t-other", "Grace@example.com", true),
            expect(Conflict, "none", Some("i-grace")),
        ),
        (
            "moved out of the app's group, still active",
            as_is,
            account_of("t-alan", "alan@example.com", true),
            expect(Orphan, "deactivate", Some("i-alan")),
        ),
        (
            "managed domain, matches nobody",
            as_is,
            account_of("t-x", "someone@example.com", true),
            expect(Unmatched, "none", None),
        ),
        (
            "managed domain, matches nobody, deprovision_unmatched",
            deprovision_unmatched,
            account_of("t-x", "someone@example.com", true),
            expect(Unmatched, "deactivate", None),
        ),
        (
            "unmatched and already inactive: deactivating again would be a write per run",
            deprovision_unmatched,
            account_of("t-x", "someone@example.com", false),
            expect(Unmatched, "none", None),
        ),
        (
            "managed by its primary email when userName is no address",
            as_is,
            json!({"id": "t-x", "userName": "someone", "emails": [
                {"value": "someone@other.test"}, {"value": "someone@example.com", "primary": true}]}),
            expect(Unmatched, "none", None),
        ),
        (
            "external guest",
            as_is,
            account_of("t-guest", "guest@partner.org", true),
            expect(Unmanaged, "none", None),
        ),
        (
            "external guest, even with deprovision_unmatched",
            deprovision_unmatched,
            account_of("t-guest", "guest@partner.org", true),
            expect(Unmanaged, "none", None),
        ),
        (
            "a look-alike domain is not managed",
            deprovision_unmatched,
            account_of("t-guest", "eve@evil-example.com", true),
            expect(Unmanaged, "none", None),
        ),
        (
            "no userName, no emails, under a domain filter",
            deprovision_unmatched,
            json!({"id": "t-empty", "active": true}),
            expect(Unmanaged, "none", None),
        ),
        (
            "not even an object",
            deprovision_unmatched,
            json!("garbage"),
            expect(Unmanaged, "none", None),
        ),
        (
            "unlinked, matches an in-scope identity case-insensitively, equal",
            as_is,
            json!({
                "id": "t-edsger", "userName": "edsger@example.com", "active": true,
                "externalId": "E400", "title": "Chair",
                "name": {"givenName": "Edsger", "familyName": "Dijkstra"},
                "emails": [{"type": "work", "value": "Edsger@Example.com"}],
                "roles": [{"primary": true, "value": "member"}]
            }),
            expect(Adoptable, "link", Some("i-edsger")),
        ),
        (
            "unlinked, matches an in-scope identity, with drift",
            as_is,
            account_of("t-edsger", "EDSGER@example.com", true),
            differing(
                expect(Adoptable, "link_and_patch", Some("i-edsger")),
                &[
                    "name.givenName",
                    "name.familyName",
                    "emails[type eq \"work\"].value",
                    "title",
                    "externalId",
                    "roles[primary eq true].value",
                ],
            ),
        ),
        (
            "matches ada by userName, but ada is linked to another account: a duplicate",
            as_is,
            edited(ada_account(), &[("/id", json!("t-ada-2"))]),
            expect(Conflict, "none", ada_id),
        ),
        (
            "no id at all, matched by userName: must never replace ada's link",
            as_is,
            edited(ada_account(), &[("/id", Value::Null)]),
            expect(Conflict, "none", ada_id),
        ),
        (
            "no id at all, matches an unlinked identity: nothing to link",
            as_is,
            json!({"userName": "edsger@example.com", "active": true}),
            expect(Conflict, "none", Some("i-edsger")),
        ),
    ];
    for (name, tweak, account, want) in cases {
        let finding = classify(tweak, &roster(), &account);
        assert_eq!(summary(&finding), want, "{name}: {finding:#?}");
    }
}

#[test]
fn drift_names_both_values_and_patches_back() {
    let finding = classify(
        as_is,
        &roster(),
        &edited(ada_account(), &[("/name/givenName", json!("Adah"))]),
    );
    assert_eq!(
        serde_json::to_value(&finding).ok(),
        Some(json!({
            "class": "drifted", "target_id": "t-ada", "user_name": "ada@example.com",
            "identity_id": "i-ada",
            "differences": [{"path": "name.givenName", "roster": "Ada", "target": "Adah"}],
            "action": {"kind": "patch", "changes": [{"path": "name.givenName", "value": "Ada"}]}
        }))
    );
}

#[test]
fn without_a_domain_filter_an_empty_account_is_unmatched() {
    fn no_domain_filter(settings: &mut AppSettings) {
        settings.scope.email_domains = None;
        settings.reconcile.deprovision_unmatched = true;
    }
    for (account, want) in [
        (json!({"id": "t-empty", "active": true}), "deactivate"),
        (json!({"id": "t-empty", "userName": ""}), "deactivate"),
        (json!({"id": "t-bare", "userName": "nobody"}), "deactivate"),
        (json!({}), "deactivate"),
    ] {
        let finding = classify(no_domain_filter, &roster(), &account);
        assert_eq!(
            (finding.class, finding.action.label()),
            (Class::Unmatched, want),
            "{account}"
        );
    }
}

#[test]
fn a_rehired_person_matches_their_in_scope_identity_not_the_old_one() {
    let old = IdentityView {
        status: "terminated".to_owned(),
        ..person("i-old", "E001", "ada@example.com", "Ada", "Lovelace")
    };
    for identities in [
        vec![(old.clone(), None), (ada(), None)],
        vec![(ada(), None), (old.clone(), None)],
    ] {
        let finding = classify(as_is, &identities, &ada_account());
        assert_eq!(
            (finding.class, finding.identity_id.as_deref()),
            (Class::Adoptable, Some("i-ada"))
        );
    }
}

/// Classifies every account in one run, then `finish`: the findings' (class, action, identity).
fn run(
    identities: &[(IdentityView, Option<LinkInfo>)],
    accounts: &[Value],
) -> Vec<(Class, &'static str, Option<String>)> {
    let mut classifier = classifier(as_is, identities);
    let mut findings: Vec<Finding> = accounts
        .iter()
        .map(|account| classify_with(&mut classifier, identities, account))
        .collect();
    findings.extend(finish(&mut classifier, identities));
    findings
        .into_iter()
        .map(|finding| (finding.class, finding.action.label(), finding.identity_id))
        .collect()
}

#[test]
fn in_scope_identities_without_an_account_are_missing_at_the_end() {
    use Class::*;
    let id = |id: &str| Some(id.to_owned());
    // Nobody has an account: only the in-scope identities are missing, in insertion order.
    assert_eq!(
        run(&roster(), &[]),
        vec![
            (Missing, "create", id("i-ada")),
            (Missing, "create", id("i-edsger"))
        ]
    );
    // Ada's account seen (linked), edsger's adopted: nobody missing.
    assert_eq!(
        run(
            &roster(),
            &[ada_account(), account_of("t-e", "edsger@example.com", true)]
        ),
        vec![
            (InSync, "none", id("i-ada")),
            (Adoptable, "link_and_patch", id("i-edsger"))
        ]
    );
    // An unmanaged account carrying ada's userName does not count as ada's.
    assert_eq!(
        run(
            &[(ada(), None)],
            &[
                json!({"id": "t-1", "userName": "guest@partner.org", "emails": [{"value": "ada@example.com"}]})
            ]
        ),
        vec![(Unmanaged, "none", None), (Missing, "create", id("i-ada"))]
    );
}

#[test]
fn two_accounts_matching_one_unlinked_identity_are_both_conflicts() {
    use Class::*;
    let id = || Some("i-edsger".to_owned());
    let roster = roster();
    let mut classifier = classifier(as_is, &roster);
    let account = |id: &str, user_name: &str| account_of(id, user_name, true);
    let first = classify_with(
        &mut classifier,
        &roster,
        &account("t-e1", "edsger@example.com"),
    );
    // The listing repeats the first account: still the same finding, no conflict.
    let again = classify_with(
        &mut classifier,
        &roster,
        &account("t-e1", "edsger@example.com"),
    );
    assert_eq!(first.class, Adoptable);
    assert_eq!(again.class, Adoptable);
    assert!(classifier.superseded().is_empty());
    let second = classify_with(
        &mut classifier,
        &roster,
        &account("t-e2", "EDSGER@example.com"),
    );
    assert_eq!(
        (second.class, second.action.label(), second.identity_id),
        (Conflict, "none", id())
    );
    // The first one's finding was handed out already: the run turns it into a conflict.
    assert_eq!(
        classifier.superseded(),
        &[("i-edsger".to_owned(), "t-e1".to_owned())]
    );
    // A third one is a conflict too, and supersedes nothing more.
    let third = classify_with(
        &mut classifier,
        &roster,
        &account("t-e3", "edsger@example.com"),
    );
    assert_eq!(third.class, Conflict);
    assert_eq!(classifier.superseded().len(), 1);
    // Edsger has accounts: not missing (no create of a fourth).
    let missing: Vec<_> = finish(&mut classifier, &roster)
        .into_iter()
        .map(|finding| finding.identity_id)
        .collect();
    assert_eq!(missing, vec![Some("i-ada".to_owned())]);
}

#[test]
fn an_unlinked_leavers_only_account_is_an_orphan() {
    let findings = run(
        &[(grace(), None)],
        &[account_of("t-other", "Grace@example.com", true)],
    );
    assert_eq!(
        findings,
        vec![(Class::Orphan, "deactivate", Some("i-grace".to_owned()))]
    );
}

#[test]
fn a_duplicate_of_a_linked_account_never_moves_the_link_whatever_the_order() {
    use Class::*;
    let duplicate = edited(ada_account(), &[("/id", json!("t-ada-2"))]);
    for accounts in [
        [ada_account(), duplicate.clone()],
        [duplicate.clone(), ada_account()],
    ] {
        let findings = run(&[(ada(), linked("t-ada"))], &accounts);
        let mut classes: Vec<_> = findings
            .iter()
            .map(|(class, action, _)| (*class, *action))
            .collect();
        classes.sort_by_key(|(class, _)| class.as_str());
        assert_eq!(classes, vec![(Conflict, "none"), (InSync, "none")]);
    }
}

#[test]
fn linked_accounts_not_seen_are_listed_for_confirmation_before_they_are_missing() {
    let roster = roster();
    let mut classifier = classifier(as_is, &roster);
    // Grace is out of scope: her unseen account is never missing, so needs no confirmation.
    assert_eq!(classifier.unseen_links(), vec!["t-ada".to_owned()]);
    // Confirmed by a GET by id: classified like a listed account, no longer unseen.
    let finding = classify_with(&mut classifier, &roster, &ada_account());
    assert_eq!(finding.class, Class::InSync);
    assert!(classifier.unseen_links().is_empty());
}

#[test]
fn an_account_whose_identity_was_not_read_fails_its_classification_instead_of_being_guessed() {
    let roster = roster();
    let mut classifier = classifier(as_is, &roster);
    // Ada is in scope: her account is compared with her rendered user, which nobody read.
    assert_eq!(
        classifier.classify_account(&ada_account()),
        Err(ReconcileError::NotRendered {
            identity_id: "i-ada".to_owned()
        })
    );
    // Nothing was recorded: her link is still unseen, and she is still to be rendered.
    assert_eq!(classifier.unseen_links(), vec!["t-ada".to_owned()]);
    let wanted = classifier.to_render([&ada_account()]);
    assert_eq!(wanted.len(), 1);
    assert_eq!(classifier.identity_id(wanted[0]), "i-ada");
    // Another person's view is not taken for hers.
    assert!(!classifier.render(wanted[0], &edsger()));
    assert!(classifier.classify_account(&ada_account()).is_err());
    // Grace is terminated: whether her account is an orphan needs no rendering.
    let grace_account = account_of("t-grace", "grace@example.com", true);
    assert!(classifier.to_render([&grace_account]).is_empty());
    assert_eq!(
        classifier
            .classify_account(&grace_account)
            .map(|finding| finding.class),
        Ok(Class::Orphan)
    );
    // Renderings last one page: forgotten, Ada must be read again.
    provide(&mut classifier, &roster, &wanted);
    classifier.forget_renderings();
    assert_eq!(classifier.to_render([&ada_account()]), wanted);
}

#[test]
fn hash_collisions_in_the_index_never_tie_an_account_to_another_person() {
    // Every target id and matching value hashes alike: only the keys tell identities apart.
    let colliding = |identities: &[(IdentityView, Option<LinkInfo>)]| {
        let desired = Desired::new(&settings_with(as_is), compiled(as_is))
            .expect("userName is a valid path")
            .with_every_hash_colliding();
        classifier_of(desired, identities)
    };
    let second_edsger = IdentityView {
        id: "i-edsger-2".to_owned(),
        employee_id: "E401".to_owned(),
        ..edsger()
    };
    let mut identities = roster();
    identities.push((second_edsger, None));
    let accounts = [
        account_of("t-grace", "grace@example.com", true),
        ada_account(),
        account_of("t-alan", "alan@example.com", true),
        account_of("t-e", "edsger@example.com", true),
        account_of("t-x", "nobody@example.com", true),
        account_of("t-y", "guest@partner.org", true),
    ];
    let findings = |mut classifier: Classifier| {
        let mut all: Vec<Finding> = accounts
            .iter()
            .map(|account| classify_with(&mut classifier, &identities, account))
            .collect();
        all.extend(finish(&mut classifier, &identities));
        let mut findings: Vec<(Class, Option<String>)> = all
            .into_iter()
            .map(|finding| (finding.class, finding.identity_id))
            .collect();
        findings.push((
            Class::Conflict,
            classifier.superseded().first().map(|s| s.0.clone()),
        ));
        findings
    };
    let expected = findings(classifier(as_is, &identities));
    let id = |id: &str| Some(id.to_owned());
    assert_eq!(
        expected,
        vec![
            (Class::Orphan, id("i-grace")),
            (Class::InSync, id("i-ada")),
            (Class::Orphan, id("i-alan")),
            // Two in-scope identities render `edsger@example.com`: the first one is matched.
            (Class::Adoptable, id("i-edsger")),
            (Class::Unmatched, None),
            (Class::Unmanaged, None),
            // Nobody's account: the second edsger is missing.
            (Class::Missing, id("i-edsger-2")),
            (Class::Conflict, None),
        ]
    );
    assert_eq!(findings(colliding(&identities)), expected);
}

#[test]
fn a_missing_finding_names_the_user_roster_would_create() {
    let identities = [(ada(), linked("t-gone"))];
    let mut findings = finish(&mut classifier(as_is, &identities), &identities);
    let finding = findings.pop();
    assert_eq!(
        finding.map(|finding| (finding.target_id, finding.user_name)),
        Some((None, Some("ada@example.com".to_owned())))
    );
}

#[test]
fn an_invalid_matching_attribute_is_an_error_not_a_panic() {
    let mut settings = settings();
    settings.matching.target_attribute = "emails[".to_owned();
    let compiled = compile_mappings(&settings).expect("the example mappings compile");
    assert!(matches!(
        Desired::new(&settings, compiled),
        Err(ReconcileError::MatchingAttribute { .. })
    ));
}

#[test]
fn matching_on_external_id_is_case_exact() {
    fn by_external_id(settings: &mut AppSettings) {
        settings.matching.target_attribute = "externalId".to_owned();
    }
    for (external_id, want) in [("E100", Class::Adoptable), ("e100", Class::Unmatched)] {
        let account = edited(
            ada_account(),
            &[("/id", json!("t-new")), ("/externalId", json!(external_id))],
        );
        let finding = classify(by_external_id, &[(ada(), None)], &account);
        assert_eq!(finding.class, want, "externalId {external_id}");
    }
}

fn parts() -> impl Strategy<Value = (String, String, String, String)> {
    (
        "[A-Za-z0-9._-]{1,20}",
        "\\PC{0,24}",
        "\\PC{0,24}",
        "\\PC{0,24}",
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_rendered_user_of_a_linked_in_scope_identity_is_in_sync(
        (local, given, family, title) in parts(),
        admin in any::<bool>(),
    ) {
        let mut identity = person("i-p", "E900", &format!("{local}@Example.com"), &given, &family);
        identity.title = Some(title);
        if admin {
            identity.groups.push("board-admins".to_owned());
        }
        // The account as the target holds it, written out from the example settings' mappings
        // here rather than rendered by the code under test, with what a target adds (`meta`).
        let email = format!("{local}@Example.com");
        let account = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "t-p",
            "meta": {"resourceType": "User", "version": "\"1\""},
            "userName": email,
            "name": {"givenName": given, "familyName": family},
            "emails": [{"type": "work", "value": email, "primary": true}],
            "title": identity.title,
            "externalId": "E900",
            "active": true,
            "roles": [{"primary": true, "value": if admin { "admin" } else { "member" }}],
        });
        let finding = classify(as_is, &[(identity, linked("t-p"))], &account);
        prop_assert_eq!(finding.class, Class::InSync, "{:#?}", finding);
        prop_assert_eq!(finding.action, Action::None);
    }
}
