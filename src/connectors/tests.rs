use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::settings::{
    AppScope, DeletionGuard, DeprovisionAction, Matching, ReconcileSettings, default_mappings,
};

fn is_url(source: &str) -> bool {
    url::Url::parse(source).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some())
}

#[test]
fn every_catalogue_file_parses_and_every_fact_has_a_source() {
    let mut names = Vec::new();
    for (file, text) in CATALOGUE_FILES {
        let connector = parse(text).unwrap_or_else(|e| panic!("connectors/{file}.json: {e}"));
        assert_eq!(
            &connector.name, file,
            "the file is named after its connector"
        );
        assert!(connector.version >= 1, "{file}: version");
        assert!(!connector.facts.is_empty(), "{file}: no facts");
        let mut sources: Vec<(&str, &str)> = connector
            .facts
            .iter()
            .map(|f| (f.fact.as_str(), f.source.as_str()))
            .collect();
        sources.push((&connector.credential.fact, &connector.credential.source));
        sources.extend(
            connector
                .limits
                .iter()
                .map(|l| (l.fact.as_str(), l.source.as_str())),
        );
        for (fact, source) in sources {
            assert!(!fact.trim().is_empty(), "{file}: an empty fact");
            assert!(is_url(source), "{file}: `{fact}` has no https source");
        }
        // Every placeholder has a parameter and every parameter a placeholder (in the base
        // URL or the rate-limit group).
        let templates = [
            connector.base_url_template.as_deref(),
            connector.defaults.rate_limit_group.as_deref(),
        ];
        for param in &connector.params {
            assert!(
                templates
                    .iter()
                    .flatten()
                    .any(|t| t.contains(&format!("{{{}}}", param.name))),
                "{file}: {} unused",
                param.name
            );
        }
        if let Some(group) = connector
            .rate_limit_group(&acme_params(&connector))
            .expect("the group template fills")
        {
            assert!(
                !group.contains('{'),
                "{file}: unfilled placeholder in {group}"
            );
        }
        if connector.base_url_template.is_some() {
            let url = connector
                .base_url(&acme_params(&connector))
                .expect("template fills");
            assert!(!url.contains('{'), "{file}: unfilled placeholder in {url}");
            assert!(is_url(&url), "{file}: {url}");
        }
        for auth in &connector.auth_types {
            assert!(
                ["bearer", "basic", "oauth2"].contains(&auth.as_str()),
                "{file}: {auth}"
            );
        }
        // The connector's own defaults respect its own limits.
        let quirks = Quirks::from_json(&connector.defaults.quirks).expect("quirks parse");
        connector
            .check_limits(&settings_from(&connector), &quirks)
            .unwrap_or_else(|e| panic!("{file}: defaults break a limit: {e}"));
        names.push(connector.name.clone());
    }
    assert_eq!(catalogue().len(), CATALOGUE_FILES.len(), "every file loads");
    for required in [
        "slack",
        "github-emu",
        "aws-identity-center",
        "atlassian",
        "zoom",
        "salesforce",
        "figma",
        "miro",
        "snowflake",
        "asana",
        "rfc",
        "entra-style",
    ] {
        assert!(names.iter().any(|n| n == required), "{required} missing");
    }
}

fn settings_from(connector: &Connector) -> AppSettings {
    AppSettings {
        rate_limit: connector.defaults.rate_limit.clone(),
        max_concurrency: connector.defaults.max_concurrency,
        timeout_ms: 30_000,
        max_attempts: 8,
        matching: Matching::default(),
        scope: AppScope::default(),
        mappings: connector.defaults.mappings.clone(),
        role_mapping: None,
        group_push: Vec::new(),
        deprovision: connector.defaults.deprovision.clone(),
        reconcile: ReconcileSettings::default(),
        deletion_guard: DeletionGuard::default(),
        quirks: connector.defaults.quirks.clone(),
        rate_limit_group: connector
            .rate_limit_group(&acme_params(connector))
            .expect("the group template fills"),
    }
}

/// Every parameter of `connector` set to `acme`.
fn acme_params(connector: &Connector) -> BTreeMap<String, String> {
    connector
        .params
        .iter()
        .map(|p| (p.name.clone(), "acme".to_owned()))
        .collect()
}

#[test]
fn an_unknown_connector_names_the_known_ones() {
    let err = find("slak").unwrap_err();
    assert_eq!(err.field(), "connector");
    let text = err.to_string();
    assert!(text.contains("`slak`"), "{text}");
    assert!(
        text.contains("slack") && text.contains("github-emu"),
        "{text}"
    );
}

#[test]
fn base_url_templates_need_every_parameter_and_only_plain_values() {
    let aws = find("aws-identity-center").unwrap();
    let mut params = BTreeMap::from([("region".to_owned(), "eu-west-1".to_owned())]);
    let err = aws.base_url(&params).unwrap_err();
    assert_eq!(err.field(), "connector_params.tenant_id");
    params.insert("tenant_id".into(), "d-123".into());
    assert_eq!(
        aws.base_url(&params).unwrap(),
        "https://scim.eu-west-1.amazonaws.com/d-123/scim/v2"
    );
    // A value that would move the credentials to another host is refused.
    for evil in ["evil.com/x", "a@b", "x#", "", ".."] {
        params.insert("region".into(), evil.into());
        assert_eq!(
            aws.base_url(&params).unwrap_err(),
            ConnectorError::BadParam {
                param: "region".into()
            },
            "{evil}"
        );
    }
    params.insert("region".into(), "eu-west-1".into());
    params.insert("tenant".into(), "x".into());
    assert_eq!(
        aws.base_url(&params).unwrap_err().field(),
        "connector_params.tenant"
    );
    let rfc = find("rfc").unwrap();
    assert_eq!(
        rfc.base_url(&BTreeMap::new()).unwrap_err().field(),
        "base_url"
    );
}

#[test]
fn limits_name_the_setting_the_limit_and_its_source() {
    let aws = find("aws-identity-center").unwrap();
    let settings = settings_from(aws);
    let mut quirks = Quirks::from_json(&aws.defaults.quirks).unwrap();
    assert!(aws.check_limits(&settings, &quirks).is_ok());
    quirks.max_members_per_patch = 101;
    let err = aws.check_limits(&settings, &quirks).unwrap_err();
    assert_eq!(err.field(), "quirks.max_members_per_patch");
    let text = err.to_string();
    assert!(text.contains("101") && text.contains("100"), "{text}");
    assert!(
        text.contains(
            "https://docs.aws.amazon.com/singlesignon/latest/developerguide/patchgroup.html"
        ),
        "{text}"
    );

    let slack = find("slack").unwrap();
    let mut fast = settings_from(slack);
    fast.rate_limit.per_second = 11;
    let quirks = Quirks::from_json(&slack.defaults.quirks).unwrap();
    let err = slack.check_limits(&fast, &quirks).unwrap_err();
    assert_eq!(err.field(), "rate_limit.per_second");
    assert!(err.to_string().contains("600 per minute"), "{err}");
}

#[test]
fn explicit_quirks_override_the_connector_field_by_field() {
    let aws = find("aws-identity-center").unwrap();
    let merged = aws.quirks_with(Some(&json!({"page_size": 50})));
    let quirks = Quirks::from_json(&merged).unwrap();
    assert_eq!(quirks.page_size, 50);
    assert_eq!(quirks.max_members_per_patch, 100, "the connector's kept");
    assert_eq!(aws.quirks_with(Some(&json!("rfc"))), json!("rfc"));
    assert_eq!(aws.quirks_with(None), aws.defaults.quirks);
}

#[test]
fn differences_list_what_a_newer_version_would_change() {
    let slack = find("slack").unwrap();
    let mut settings = settings_from(slack);
    // As the service stores them: quirks normalised to the full object.
    settings.quirks = serde_json::to_value(Quirks::from_json(&settings.quirks).unwrap()).unwrap();
    assert_eq!(
        slack.differences(&settings, &acme_params(slack)),
        vec![],
        "built from it: none"
    );

    let mut newer = slack.clone();
    newer.version += 1;
    newer.defaults.rate_limit.per_second = 2;
    newer.defaults.quirks = json!({"page_size": 500});
    newer.defaults.deprovision.action = DeprovisionAction::Delete;
    let found = newer.differences(&settings, &acme_params(slack));
    let settings_named: Vec<&str> = found.iter().map(|d| d.setting.as_str()).collect();
    assert_eq!(
        settings_named,
        vec!["rate_limit", "deprovision", "quirks.page_size"]
    );
    let page = &found[2];
    assert_eq!(page.app, Value::from(1000));
    assert_eq!(page.connector, Value::from(500));

    let mut other = settings.clone();
    other.mappings = default_mappings();
    assert!(
        slack
            .differences(&other, &acme_params(slack))
            .iter()
            .any(|d| d.setting == "mappings")
    );
}
