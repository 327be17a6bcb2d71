//! Behaviour of the mapping module, table-driven: each section has one `check` helper that is
//! the only caller of the API under test.
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn ada() -> IdentityView {
    IdentityView {
        id: "0b6d3c1e-0000-4000-8000-000000000100".to_owned(),
        employee_id: "E100".to_owned(),
        user_name: Some("ada".to_owned()),
        email: Some("ada@example.com".to_owned()),
        given_name: Some("Ada".to_owned()),
        family_name: Some("Lovelace".to_owned()),
        display_name: None,
        department: Some("Board".to_owned()),
        title: Some("Chair".to_owned()),
        manager_employee_id: Some("E001".to_owned()),
        attributes: json!({"cost_center": "CC-42", "level": 7, "remote": true,
                           "org": {"unit": "Research"}, "empty": "", "tags": ["a"]}),
        status: "active".to_owned(),
        groups: vec!["board-room".to_owned()],
    }
}

fn mapping(target: &str, source: &str) -> AttributeMapping {
    AttributeMapping {
        target: target.to_owned(),
        source: Some(source.to_owned()),
        value: None,
        expression: None,
    }
}

fn expression_mapping(target: &str, expression: &str) -> AttributeMapping {
    AttributeMapping {
        target: target.to_owned(),
        source: None,
        value: None,
        expression: Some(expression.to_owned()),
    }
}

/// The `mappings` and `role_mapping` of the DESIGN §4 `POST /apps` example.
fn design_example() -> (Vec<AttributeMapping>, RoleMapping) {
    let mappings = vec![
        mapping("userName", "email"),
        mapping("name.givenName", "given_name"),
        mapping("name.familyName", "family_name"),
        mapping("emails[type eq \"work\"].value", "email"),
        mapping("title", "title"),
        mapping("externalId", "employee_id"),
    ];
    let role_mapping = RoleMapping {
        target: "roles[primary eq true].value".to_owned(),
        default: Some("member".to_owned()),
        rules: vec![RoleRule {
            group: "board-admins".to_owned(),
            value: "admin".to_owned(),
        }],
    };
    (mappings, role_mapping)
}

fn compiled_example() -> CompiledMappings {
    let (mappings, role_mapping) = design_example();
    compile(&mappings, Some(&role_mapping)).expect("the DESIGN example compiles")
}

// ---------------------------------------------------------------------------------------------
// Rendering

#[test]
fn design_example_renders_the_exact_scim_user() {
    let rendered = render_user(&compiled_example(), &ada());
    let expected = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "ada@example.com",
        "name": {"givenName": "Ada", "familyName": "Lovelace"},
        "emails": [{"type": "work", "value": "ada@example.com", "primary": true}],
        "title": "Chair",
        "externalId": "E100",
        "active": true,
        "roles": [{"primary": true, "value": "member"}]
    });
    assert_eq!(rendered, expected);
    // Deterministic down to the bytes, since snapshots are hashed.
    assert_eq!(
        serde_json::to_string(&rendered).ok(),
        serde_json::to_string(&render_user(&compiled_example(), &ada())).ok()
    );
}

#[test]
fn role_follows_rule_order_then_default() {
    fn check(role_mapping: RoleMapping, groups: &[&str], expect: Option<&str>) {
        let compiled = compile(&[mapping("userName", "email")], Some(&role_mapping))
            .expect("role mapping compiles");
        let identity = IdentityView {
            groups: groups.iter().map(|group| (*group).to_owned()).collect(),
            ..ada()
        };
        let rendered = render_user(&compiled, &identity);
        let role = rendered.pointer("/roles/0/value").and_then(Value::as_str);
        assert_eq!(role, expect, "groups {groups:?}");
        assert_eq!(compiled.role_for(&identity), expect, "groups {groups:?}");
    }
    let rule = |group: &str, value: &str| RoleRule {
        group: group.to_owned(),
        value: value.to_owned(),
    };
    let ranked = RoleMapping {
        target: "roles[primary eq true].value".to_owned(),
        default: Some("member".to_owned()),
        rules: vec![rule("board-admins", "admin"), rule("editors", "editor")],
    };
    let no_default = RoleMapping {
        default: None,
        ..ranked.clone()
    };
    check(ranked.clone(), &[], Some("member"));
    check(ranked.clone(), &["board-admins"], Some("admin"));
    check(ranked.clone(), &["editors"], Some("editor"));
    // The rule listed first wins, whatever order the identity's groups are in.
    check(ranked.clone(), &["editors", "board-admins"], Some("admin"));
    check(ranked, &["Board-Admins"], Some("member"));
    check(no_default.clone(), &["editors"], Some("editor"));
    check(no_default, &["board-room"], None);
}

#[test]
fn rendering_covers_paths_constants_and_active() {
    fn check(mappings: Vec<AttributeMapping>, identity: IdentityView, expect: Value) {
        let compiled = compile(&mappings, None).expect("mappings compile");
        assert_eq!(render_user(&compiled, &identity), expect, "{mappings:?}");
    }
    let core = "urn:ietf:params:scim:schemas:core:2.0:User";
    let enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    check(
        vec![
            mapping(&format!("{enterprise}:department"), "department"),
            mapping(
                &format!("{enterprise}:manager.value"),
                "manager_employee_id",
            ),
            mapping(
                "addresses[type eq \"work\"].locality",
                "attributes.org.unit",
            ),
            mapping("addresses[type eq \"work\"].postalCode", "attributes.level"),
            mapping(
                "phoneNumbers[type eq \"mobile\"].value",
                "attributes.missing",
            ),
        ],
        ada(),
        json!({
            "schemas": [core, enterprise],
            "active": true,
            enterprise: {"department": "Board", "manager": {"value": "E001"}},
            "addresses": [{"type": "work", "locality": "Research", "postalCode": "7"}]
        }),
    );
    // Suspended and terminated people render inactive; an absent value leaves the attribute
    // out, and an extension with nothing in it is not declared.
    check(
        vec![
            mapping("displayName", "display_name"),
            mapping(&format!("{enterprise}:costCenter"), "attributes.empty"),
        ],
        IdentityView {
            status: "suspended".to_owned(),
            ..ada()
        },
        json!({"schemas": [core], "active": false}),
    );
    // Constants keep their JSON type; an explicit `active` mapping wins over the status.
    check(
        vec![
            AttributeMapping {
                target: "userType".to_owned(),
                source: None,
                value: Some(json!("Employee")),
                expression: None,
            },
            expression_mapping(
                "active",
                "switch(status, \"terminated\", \"false\", \"true\")",
            ),
        ],
        IdentityView {
            status: "suspended".to_owned(),
            ..ada()
        },
        json!({"schemas": [core], "userType": "Employee", "active": true}),
    );
    // Two filtered emails: only the first is marked primary.
    check(
        vec![
            mapping("emails[type eq \"work\"].value", "email"),
            expression_mapping("emails[type eq \"other\"].value", "\"ada@private.example\""),
        ],
        ada(),
        json!({
            "schemas": [core],
            "active": true,
            "emails": [
                {"type": "work", "value": "ada@example.com", "primary": true},
                {"type": "other", "value": "ada@private.example"}
            ]
        }),
    );
}

#[test]
fn matching_value_is_the_rendered_attribute() {
    fn check(target_attribute: &str, expect: Option<&str>) {
        let rendered = render_matching_value(&compiled_example(), &ada(), target_attribute);
        assert_eq!(rendered.as_deref(), expect, "{target_attribute:?}");
    }
    check("userName", Some("ada@example.com"));
    check("", Some("ada@example.com"));
    check("externalId", Some("E100"));
    check("emails[type eq \"work\"].value", Some("ada@example.com"));
    check("displayName", None);
    check("not a path", None);
}

/// The matching value renders only the mappings of its attribute; it is always the value at
/// that path in the whole rendered user, also where steps after the mappings write (`active`,
/// the primary email, the role) and where several mappings share an attribute.
#[test]
fn matching_value_equals_the_whole_rendered_user_at_its_path() {
    let (mut mappings, role_mapping) = design_example();
    mappings.push(mapping("name.formatted", "display_name"));
    mappings.push(mapping("nickName", "attributes.cost_center"));
    // Two emails, neither marked: only the whole rendering marks the first one primary.
    mappings.push(mapping("emails[type eq \"home\"].value", "title"));
    mappings.push(mapping(
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
        "department",
    ));
    let compiled = compile(&mappings, Some(&role_mapping)).expect("the mappings compile");
    let mut people = vec![ada()];
    let mut left = ada();
    left.status = "terminated".to_owned();
    left.email = None;
    people.push(left);
    for person in &people {
        let whole = render_user(&compiled, person);
        for path in [
            "userName",
            "USERNAME",
            "externalId",
            "emails[type eq \"work\"].value",
            "emails[primary eq true].value",
            "name.givenName",
            "name.formatted",
            "nickName",
            "title",
            "active",
            "roles[primary eq true].value",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
            "displayName",
        ] {
            let expected = ScimPath::parse(path)
                .ok()
                .and_then(|p| p.lookup(&whole).cloned())
                .and_then(|v| match v {
                    Value::String(text) if !text.is_empty() => Some(text),
                    Value::Number(number) => Some(number.to_string()),
                    Value::Bool(flag) => Some(flag.to_string()),
                    _ => None,
                });
            assert_eq!(
                render_matching_value(&compiled, person, path),
                expected,
                "{path} of {}",
                person.status
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Expressions

#[test]
fn expressions_evaluate_as_documented() {
    fn check(input: &str, expect: Option<&str>) {
        let expression = Expression::parse(input)
            .unwrap_or_else(|error| panic!("{input:?} should parse: {error}"));
        assert_eq!(expression.evaluate(&ada()).as_deref(), expect, "{input:?}");
    }
    check("email", Some("ada@example.com"));
    check("  given_name  ", Some("Ada"));
    check("display_name", None);
    check("status", Some("active"));
    check("attributes.cost_center", Some("CC-42"));
    check("attributes.level", Some("7"));
    check("attributes.remote", Some("true"));
    check("attributes.org.unit", Some("Research"));
    check("attributes.tags", None);
    check("attributes.empty", None);
    check("attributes.nope.deeper", None);
    check(r#""a\"b\u00e9""#, Some("a\"bé"));
    check(r#""""#, None);
    check("lower(email)", Some("ada@example.com"));
    check("upper(given_name)", Some("ADA"));
    check(r#"trim("  x  ")"#, Some("x"));
    check(
        r#"concat(given_name, " ", family_name)"#,
        Some("Ada Lovelace"),
    );
    check(r#"concat(display_name, "")"#, None);
    check(
        r#"default(display_name, concat(given_name, " ", family_name))"#,
        Some("Ada Lovelace"),
    );
    check("default(display_name, attributes.empty)", None);
    check(
        r#"switch(department, "Board", "exec", "Sales", "sales")"#,
        Some("exec"),
    );
    check(r#"switch(department, "board", "exec")"#, None);
    check(
        r#"switch(department, "Sales", "sales", "staff")"#,
        Some("staff"),
    );
    check(
        r#"switch(display_name, "", "unnamed", "named")"#,
        Some("unnamed"),
    );
    check(r#"split_part(email, "@", 0)"#, Some("ada"));
    check(r#"split_part(email, "@", 1)"#, Some("example.com"));
    check(r#"split_part(email, "@", 2)"#, None);
    check(r#"split_part(email, "", 0)"#, None);
    check("email_local(email)", Some("ada"));
    check("email_domain(upper(email))", Some("EXAMPLE.COM"));
    check("email_domain(given_name)", None);
    check(
        r#"default(lower(attributes.upn), concat(lower(given_name), ".", lower(family_name), "@example.com"))"#,
        Some("ada.lovelace@example.com"),
    );
}

#[test]
fn bad_expressions_are_rejected_with_a_column() {
    fn check(input: &str, expect: &str) {
        match Expression::parse(input) {
            Ok(parsed) => panic!("{input:?} parsed as {parsed:?}"),
            Err(error) => assert!(
                error.to_string().contains(expect),
                "{input:?}: {error} does not contain {expect:?}"
            ),
        }
    }
    check("", "column 1: expected an expression");
    check("   ", "column 4: expected an expression");
    check("emial", "column 1: unknown source `emial`");
    check("lower(emial)", "column 7: unknown source");
    check("attributes.", "must be non-empty");
    check("attributes..x", "must be non-empty");
    check("shout(email)", "column 1: unknown function `shout`");
    check("lower(email", "column 12: expected `,` or `)`");
    check("lower(email, email)", "`lower` takes 1 argument(s), got 2");
    check("default(email)", "takes at least 2");
    check("switch(email, \"a\")", "takes at least 3");
    check("split_part(email, \"@\", email)", "integer literal");
    check(
        "split_part(email, \"@\", 99999999999)",
        "integer out of range",
    );
    check("\"open", "unterminated string");
    check(r#""\x""#, "invalid string literal");
    check("email email", "column 7: unexpected input");
    check("concat(email,)", "column 14: expected a string");
    check("é", "column 1: expected a string");
}

#[test]
fn hostile_expressions_fail_without_panicking() {
    fn check(input: &str, expect: &str) {
        let error = Expression::parse(input).expect_err("hostile input must be refused");
        assert!(error.to_string().contains(expect), "{error}");
    }
    let deep = |levels: usize| format!("{}email{}", "lower(".repeat(levels), ")".repeat(levels));
    assert!(Expression::parse(&deep(MAX_EXPRESSION_DEPTH - 1)).is_ok());
    check(&deep(MAX_EXPRESSION_DEPTH), "nests deeper than 16");
    check(&"lower(".repeat(100_000), "bytes long");
    check(&"lower(".repeat(150), "nests deeper than 16");
    check(&format!("\"{}\"", "x".repeat(10_000)), "the limit is 1024");
    check(&"\\".repeat(1000), "expected a string");
    check(&format!("\"{}", "\\".repeat(1001)), "unterminated string");
}

// ---------------------------------------------------------------------------------------------
// Target paths and compile

#[test]
fn target_paths_parse_to_their_canonical_form() {
    fn check(raw: &str, expect: Result<&str, &str>) {
        match (ScimPath::parse(raw), expect) {
            (Ok(path), Ok(text)) => assert_eq!(path.as_str(), text, "{raw:?}"),
            (Err(error), Err(part)) => {
                assert!(error.contains(part), "{raw:?}: {error} lacks {part:?}");
            }
            (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
        }
    }
    let enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    check("userName", Ok("userName"));
    check("name.givenName", Ok("name.givenName"));
    check("active", Ok("active"));
    check(
        "emails[type eq \"work\"].value",
        Ok("emails[type eq \"work\"].value"),
    );
    check(
        "emails[ type  EQ \"work\" ].value",
        Ok("emails[type eq \"work\"].value"),
    );
    check(
        "roles[primary eq true].value",
        Ok("roles[primary eq true].value"),
    );
    check(
        "phoneNumbers[type eq \"mobile\"].value",
        Ok("phoneNumbers[type eq \"mobile\"].value"),
    );
    check(
        "addresses[type eq \"work\"].locality",
        Ok("addresses[type eq \"work\"].locality"),
    );
    check(
        &format!("{enterprise}:department"),
        Ok(&format!("{enterprise}:department")),
    );
    check(
        &format!("{enterprise}:manager.value"),
        Ok(&format!("{enterprise}:manager.value")),
    );
    check(
        "urn:ietf:params:scim:schemas:core:2.0:User:title",
        Ok("title"),
    );
    check(
        "urn:example:custom:1.0:User:badge[kind eq \"a:b\"].code",
        Ok("urn:example:custom:1.0:User:badge[kind eq \"a:b\"].code"),
    );
    check("", Err("empty"));
    check("id", Err("managed by the service provider"));
    check("meta", Err("managed by the service provider"));
    check("Schemas", Err("managed by the service provider"));
    check(
        "groups[type eq \"direct\"].value",
        Err("managed by the service provider"),
    );
    check("emails", Err("multi-valued"));
    check("emails.value", Err("multi-valued"));
    check("userName.first", Err("simple attribute"));
    check("name", Err("`name` is complex"));
    check(
        &format!("{enterprise}:manager"),
        Err("`manager` is complex"),
    );
    check(
        &format!("{enterprise}:department.x"),
        Err("simple attribute"),
    );
    check("emails[type eq \"work\"]", Err("multi-valued"));
    check(
        "emails[type eq \"work\"].type",
        Err("the filter already fixes"),
    );
    check("emails[type ne \"work\"].value", Err("only `eq`"));
    check(
        "emails[type eq work].value",
        Err("expected a string or true/false"),
    );
    check("emails[type eq \"work\".value", Err("expected `]`"));
    check("user name", Err("unexpected characters"));
    check("1abc", Err("expected an attribute name"));
    check("urn:", Err("invalid schema URN"));
    check(&"a".repeat(600), Err("longer than 512"));
}

#[test]
fn compile_errors_point_at_the_offending_field() {
    fn check(
        mappings: &[AttributeMapping],
        role_mapping: Option<RoleMapping>,
        path: &str,
        part: &str,
    ) {
        match compile(mappings, role_mapping.as_ref()) {
            Ok(_) => panic!("{mappings:?} compiled; expected an error at {path}"),
            Err(error) => {
                assert_eq!(error.path, path, "{error}");
                assert!(error.message.contains(part), "{error} lacks {part:?}");
            }
        }
    }
    let (example, role) = design_example();
    let with = |extra: AttributeMapping| {
        let mut mappings = example.clone();
        mappings.insert(3, extra);
        mappings
    };
    check(
        &with(mapping("displayName", "nickname")),
        None,
        "mappings[3].source",
        "unknown source `nickname`",
    );
    check(
        &with(expression_mapping("displayName", "lower(")),
        None,
        "mappings[3].expression",
        "column 7",
    );
    check(
        &with(mapping("id", "employee_id")),
        None,
        "mappings[3].target",
        "managed by the service provider",
    );
    check(
        &with(mapping("USERNAME", "user_name")),
        None,
        "mappings[3].target",
        "overlaps mappings[0].target",
    );
    check(
        &with(mapping("name", "display_name")),
        None,
        "mappings[3].target",
        "`name` is complex",
    );
    check(
        &with(mapping("emails[type eq \"WORK\"].value", "email")),
        None,
        "mappings[4].target",
        "overlaps mappings[3].target",
    );
    let neither = AttributeMapping {
        target: "title".to_owned(),
        source: None,
        value: None,
        expression: None,
    };
    check(&[neither], None, "mappings[0]", "exactly one of");
    let both = AttributeMapping {
        target: "title".to_owned(),
        source: Some("title".to_owned()),
        value: Some(json!("x")),
        expression: None,
    };
    check(&[both], None, "mappings[0]", "exactly one of");
    let constant = |target: &str, value: Value| AttributeMapping {
        target: target.to_owned(),
        source: None,
        value: Some(value),
        expression: None,
    };
    check(
        &[constant("title", json!(null))],
        None,
        "mappings[0].value",
        "a constant must be",
    );
    check(
        &[constant("title", json!(["a"]))],
        None,
        "mappings[0].value",
        "a constant must be",
    );
    check(
        &[constant("active", json!("yes"))],
        None,
        "mappings[0].value",
        "boolean",
    );
    check(
        &example,
        Some(RoleMapping {
            target: "title".to_owned(),
            ..role.clone()
        }),
        "role_mapping.target",
        "overlaps mappings[4].target",
    );
    check(
        &example,
        Some(RoleMapping {
            target: "active".to_owned(),
            ..role.clone()
        }),
        "role_mapping.target",
        "boolean",
    );
    check(
        &example,
        Some(RoleMapping {
            rules: vec![RoleRule {
                group: String::new(),
                value: "x".to_owned(),
            }],
            ..role.clone()
        }),
        "role_mapping.rules[0].group",
        "must not be empty",
    );
    check(
        &example,
        Some(RoleMapping {
            default: Some(String::new()),
            ..role
        }),
        "role_mapping.default",
        "must not be empty",
    );
    let many: Vec<AttributeMapping> = (0..=MAX_MAPPINGS)
        .map(|index| mapping(&format!("urn:example:x:1.0:User:a{index}"), "email"))
        .collect();
    check(&many, None, "mappings", "at most 256");
}

#[test]
fn compile_accepts_constants_that_fit_their_target() {
    let constant = |target: &str, value: Value| AttributeMapping {
        target: target.to_owned(),
        source: None,
        value: Some(value),
        expression: None,
    };
    let compiled = compile(
        &[
            constant("active", json!("TRUE")),
            constant("userType", json!(3)),
        ],
        None,
    )
    .expect("constants compile");
    assert_eq!(
        render_user(&compiled, &IdentityView::default()),
        json!({"schemas": [CORE_USER_SCHEMA], "active": true, "userType": 3})
    );
    assert_eq!(compiled.mappings().len(), 2);
    assert!(compiled.role_mapping().is_none());
    let paths: Vec<&str> = compiled
        .compared_paths()
        .iter()
        .map(ScimPath::as_str)
        .collect();
    assert_eq!(paths, ["active", "userType"]);
}

// ---------------------------------------------------------------------------------------------
// Diff, patch changes, snapshot hash

#[test]
fn diff_compares_mapped_attributes_the_scim_way() {
    fn check(actual: Value, expect: &[(&str, Value, Value)]) {
        let compiled = compiled_example();
        let desired = render_user(&compiled, &ada());
        let found = diff(&compiled, &desired, &actual);
        let expect: Vec<Difference> = expect
            .iter()
            .map(|(path, roster, target)| Difference {
                path: (*path).to_owned(),
                roster: roster.clone(),
                target: target.clone(),
            })
            .collect();
        assert_eq!(found, expect, "actual {actual}");
    }
    let work = json!({"type": "work", "value": "ada@example.com", "primary": true});
    // What a target typically returns: extra attributes, other key and element order,
    // userName in another case, booleans as strings, roles under a sloppy primary.
    check(
        json!({
            "id": "t-1", "meta": {"resourceType": "User"},
            "roles": [{"value": "member", "primary": "True"}],
            "active": "true",
            "emails": [{"type": "home", "value": "ada@home.example"},
                       {"primary": true, "value": "ada@example.com", "type": "Work"}],
            "externalId": "E100", "title": "Chair",
            "name": {"familyName": "Lovelace", "givenName": "Ada", "formatted": "Ada Lovelace"},
            "USERNAME": "Ada@Example.com",
            "groups": [{"value": "g-1"}],
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]
        }),
        &[],
    );
    let mut hand_edited = render_user(&compiled_example(), &ada());
    hand_edited["name"]["givenName"] = json!("Augusta");
    hand_edited["title"] = json!("chair");
    check(
        hand_edited,
        &[
            ("name.givenName", json!("Ada"), json!("Augusta")),
            ("title", json!("Chair"), json!("chair")),
        ],
    );
    // Absent, null, "" and [] are all "no value"; missing roster values never surface here
    // because the desired resource has them all.
    check(
        json!({"userName": "ada@example.com", "name": {"givenName": "Ada", "familyName": "Lovelace"},
               "emails": [work.clone()], "title": "Chair", "externalId": "E100",
               "active": false, "roles": []}),
        &[
            ("active", json!(true), json!(false)),
            ("roles[primary eq true].value", json!("member"), Value::Null),
        ],
    );
    // A server that drops `type`: the single (or single primary) element is the work email.
    check(
        json!({"userName": "ada@example.com", "name": {"givenName": "Ada", "familyName": "Lovelace"},
               "emails": [{"value": "ada@example.com"}], "title": "Chair", "externalId": "E100",
               "active": true, "roles": {"value": "member"}}),
        &[],
    );
    check(
        json!({"userName": "ada@example.com", "name": {"givenName": "Ada", "familyName": "Lovelace"},
               "emails": [{"value": "x@example.com"}, {"value": "ada@example.com", "primary": "true"}],
               "title": "Chair", "externalId": "E100", "active": true,
               "roles": [{"value": "member", "primary": true}]}),
        &[],
    );
    // Two untyped emails and no primary: nothing identifies the work email.
    check(
        json!({"userName": "ada@example.com", "name": {"givenName": "Ada", "familyName": "Lovelace"},
               "emails": [{"value": "ada@example.com"}, {"value": "x@example.com"}],
               "title": "Chair", "externalId": "E100", "active": true,
               "roles": [{"value": "member", "primary": true}]}),
        &[(
            "emails[type eq \"work\"].value",
            json!("ada@example.com"),
            Value::Null,
        )],
    );
    // Typed elements, none of them work: the work email is missing, not the home one.
    check(
        json!({"userName": "ada@example.com", "name": {"givenName": "Ada", "familyName": "Lovelace"},
               "emails": [{"type": "home", "value": "ada@example.com", "primary": true}],
               "title": "Chair", "externalId": "E100", "active": true,
               "roles": [{"value": "member", "primary": true}]}),
        &[(
            "emails[type eq \"work\"].value",
            json!("ada@example.com"),
            Value::Null,
        )],
    );
}

#[test]
fn diff_treats_absent_and_empty_alike() {
    fn check(desired: Value, actual: Value, expect_paths: &[&str]) {
        let compiled = compile(
            &[
                mapping("displayName", "display_name"),
                mapping("title", "title"),
            ],
            None,
        )
        .expect("compiles");
        let paths: Vec<String> = diff(&compiled, &desired, &actual)
            .into_iter()
            .map(|difference| difference.path)
            .collect();
        assert_eq!(paths, expect_paths, "{desired} vs {actual}");
    }
    check(
        json!({"active": true}),
        json!({"active": true, "displayName": ""}),
        &[],
    );
    check(
        json!({"active": true, "title": null}),
        json!({"active": true, "title": []}),
        &[],
    );
    check(
        json!({"active": true}),
        json!({"active": true, "title": "CEO"}),
        &["title"],
    );
    check(
        json!({"active": true, "title": "CEO"}),
        json!({"active": true}),
        &["title"],
    );
    check(
        json!({"active": true}),
        json!({"active": "yes"}),
        &["active"],
    );
    check(json!({"active": true}), json!({}), &["active"]);
}

#[test]
fn patch_changes_replace_or_remove_each_difference_once() {
    fn check(differences: &[Difference], expect: &[(&str, Option<Value>)]) {
        let expect: Vec<Change> = expect
            .iter()
            .map(|(path, value)| Change {
                path: (*path).to_owned(),
                value: value.clone(),
            })
            .collect();
        assert_eq!(patch_changes(differences), expect);
    }
    let difference = |path: &str, roster: Value, target: Value| Difference {
        path: path.to_owned(),
        roster,
        target,
    };
    check(&[], &[]);
    check(
        &[
            difference("name.givenName", json!("Ada"), json!("Augusta")),
            difference("title", Value::Null, json!("CEO")),
            difference("displayName", json!(""), json!("x")),
            difference("emails[type eq \"work\"].value", json!("a@b"), Value::Null),
            difference("active", json!(false), json!(true)),
            difference("title", json!("again"), json!("CEO")),
        ],
        &[
            ("name.givenName", Some(json!("Ada"))),
            ("title", None),
            ("displayName", None),
            ("emails[type eq \"work\"].value", Some(json!("a@b"))),
            ("active", Some(json!(false))),
        ],
    );
    // Round trip: the changes applied to the target leave no difference.
    let compiled = compiled_example();
    let desired = render_user(&compiled, &ada());
    let mut actual = desired.clone();
    actual["title"] = json!("CEO");
    let changes = patch_changes(&diff(&compiled, &desired, &actual));
    assert_eq!(
        changes,
        [Change {
            path: "title".to_owned(),
            value: Some(json!("Chair"))
        }]
    );
}

#[test]
fn snapshot_hash_ignores_key_order_but_not_values() {
    fn check(a: &Value, b: &Value, expect_equal: bool) {
        let (hash_a, hash_b) = (snapshot_hash(a), snapshot_hash(b));
        assert_eq!(hash_a.len(), 16, "{hash_a}");
        assert!(hash_a.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_eq!(hash_a == hash_b, expect_equal, "{a} vs {b}");
    }
    let a: Value =
        serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "é\""}}"#).expect("json");
    let b: Value =
        serde_json::from_str(r#"{"a": {"x": "é\"", "y": [1, 2]}, "b": 1}"#).expect("json");
    check(&a, &b, true);
    check(&a, &json!({"b": 1, "a": {"y": [2, 1], "x": "é\""}}), false);
    check(&a, &json!({"b": 2, "a": {"y": [1, 2], "x": "é\""}}), false);
    check(&json!({"a": "1"}), &json!({"a": 1}), false);
    // FNV-1a 64 of the empty object's canonical text `{}`, pinned so that a change in the
    // canonical form (which would re-send every user) is noticed.
    assert_eq!(snapshot_hash(&json!({})), fnv1a_reference(b"{}"));
    // And of a value with every kind of member: keys sorted at each level, strings escaped as
    // JSON escapes them, numbers, booleans and null as JSON writes them, no whitespace.
    let every_kind: Value = serde_json::from_str(
        r#"{"b": "line\nbreak \"q\" é", "a": {"y": [1, 2.5, -3, true, null], "x": {}}}"#,
    )
    .expect("json");
    assert_eq!(
        snapshot_hash(&every_kind),
        fnv1a_reference(
            r#"{"a":{"x":{},"y":[1,2.5,-3,true,null]},"b":"line\nbreak \"q\" é"}"#.as_bytes()
        )
    );
}

/// The textbook FNV-1a 64, for pinning the hash.
fn fnv1a_reference(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf29ce484222325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3)
    });
    format!("{hash:016x}")
}

// ---------------------------------------------------------------------------------------------
// Scope

#[test]
fn scope_admits_active_members_of_managed_domains() {
    fn check(groups: &[&str], domains: Option<&[&str]>, identity: IdentityView, expect: bool) {
        let scope = ScopeSpec {
            groups: groups.iter().map(|group| (*group).to_owned()).collect(),
            email_domains: domains
                .map(|list| list.iter().map(|domain| (*domain).to_owned()).collect()),
        };
        assert_eq!(
            in_scope(&scope, &identity),
            expect,
            "{scope:?} {:?} {}",
            identity.email,
            identity.status
        );
    }
    let with_email = |email: &str| IdentityView {
        email: Some(email.to_owned()),
        ..ada()
    };
    let with_status = |status: &str| IdentityView {
        status: status.to_owned(),
        ..ada()
    };
    check(&[], None, ada(), true);
    check(&["board-room"], None, ada(), true);
    check(&["sales", "board-room"], None, ada(), true);
    check(&["sales"], None, ada(), false);
    check(&["Board-Room"], None, ada(), false);
    check(&[], None, with_status("suspended"), false);
    check(&[], None, with_status("terminated"), false);
    let managed: &[&str] = &["example.com"];
    check(&["board-room"], Some(managed), ada(), true);
    check(&[], Some(managed), with_email("Ada@EXAMPLE.COM"), true);
    check(
        &[],
        Some(managed),
        with_email("ada@evil-example.com"),
        false,
    );
    check(&[], Some(managed), with_email("ada@sub.example.com"), false);
    check(
        &[],
        Some(managed),
        with_email("ada@example.com.evil.net"),
        false,
    );
    check(&[], Some(managed), with_email("example.com"), false);
    check(&[], Some(managed), with_email("@example.com"), false);
    check(
        &[],
        Some(&["sub.example.com", "@example.org"]),
        with_email("ada@sub.example.com"),
        true,
    );
    check(
        &[],
        Some(&["sub.example.com", "@example.org"]),
        with_email("ada@example.org"),
        true,
    );
    check(
        &[],
        Some(managed),
        IdentityView {
            email: None,
            ..ada()
        },
        false,
    );
    check(&[], Some(&[]), ada(), false);
}

#[test]
fn domain_managed_tells_unmatched_from_unmanaged() {
    fn check(domains: Option<&[&str]>, address: &str, expect: bool) {
        let scope = ScopeSpec {
            groups: Vec::new(),
            email_domains: domains
                .map(|list| list.iter().map(|domain| (*domain).to_owned()).collect()),
        };
        assert_eq!(
            domain_managed(&scope, address),
            expect,
            "{domains:?} {address}"
        );
    }
    check(None, "anyone@anywhere.example", true);
    check(None, "bare-username", true);
    check(Some(&["example.com"]), "ghost@example.com", true);
    check(Some(&["example.com"]), "ghost@Example.Com", true);
    check(Some(&["example.com"]), "partner@evil-example.com", false);
    check(Some(&["example.com"]), "partner@sub.example.com", false);
    check(Some(&["example.com"]), "bare-username", false);
}

#[test]
fn scope_spec_deserializes_strictly_with_defaults() {
    fn check(input: &str, expect: Option<ScopeSpec>) {
        let parsed = serde_json::from_str::<ScopeSpec>(input).ok();
        assert_eq!(parsed, expect, "{input}");
    }
    check("{}", Some(ScopeSpec::default()));
    check(
        r#"{"groups": ["board-room"], "email_domains": ["example.com"]}"#,
        Some(ScopeSpec {
            groups: vec!["board-room".to_owned()],
            email_domains: Some(vec!["example.com".to_owned()]),
        }),
    );
    check(r#"{"group": ["typo"]}"#, None);
}

// ---------------------------------------------------------------------------------------------
// Group rules

fn rule(json: Value) -> GroupRule {
    serde_json::from_value(json).expect("a group rule")
}

#[test]
fn group_rules_evaluate_case_insensitively() {
    fn check(json: Value, expect: bool) {
        let parsed = rule(json.clone());
        assert_eq!(evaluate_group_rule(&parsed, &ada()), expect, "{json}");
    }
    check(
        json!({"attribute": "department", "op": "eq", "value": "Board"}),
        true,
    );
    check(
        json!({"attribute": "department", "op": "eq", "value": "BOARD"}),
        true,
    );
    check(
        json!({"attribute": "department", "op": "EQ", "value": "board"}),
        true,
    );
    check(
        json!({"attribute": "department", "op": "eq", "value": "Sales"}),
        false,
    );
    check(
        json!({"attribute": "department", "op": "ne", "value": "Sales"}),
        true,
    );
    check(
        json!({"attribute": "display_name", "op": "ne", "value": "Sales"}),
        true,
    );
    check(
        json!({"attribute": "display_name", "op": "eq", "value": "Sales"}),
        false,
    );
    check(
        json!({"attribute": "title", "op": "co", "value": "HAI"}),
        true,
    );
    check(
        json!({"attribute": "title", "op": "sw", "value": "ch"}),
        true,
    );
    check(
        json!({"attribute": "title", "op": "ew", "value": "AIR"}),
        true,
    );
    check(
        json!({"attribute": "title", "op": "sw", "value": "VP"}),
        false,
    );
    check(json!({"attribute": "title", "op": "pr"}), true);
    check(json!({"attribute": "display_name", "op": "pr"}), false);
    check(json!({"attribute": "attributes.empty", "op": "pr"}), false);
    check(
        json!({"attribute": "attributes.level", "op": "eq", "value": 7}),
        true,
    );
    check(
        json!({"attribute": "attributes.remote", "op": "eq", "value": true}),
        true,
    );
    check(
        json!({"attribute": "attributes.org.unit", "op": "in", "value": ["sales", "research"]}),
        true,
    );
    check(
        json!({"attribute": "department", "op": "in", "value": ["Sales"]}),
        false,
    );
    check(
        json!({"and": [{"attribute": "department", "op": "eq", "value": "Board"},
                       {"not": {"attribute": "title", "op": "sw", "value": "VP"}}]}),
        true,
    );
    check(
        json!({"or": [{"attribute": "department", "op": "eq", "value": "Sales"},
                      {"attribute": "title", "op": "eq", "value": "CEO"}]}),
        false,
    );
    // Invalid rules match nobody, even under `not`.
    check(
        json!({"not": {"attribute": "nickname", "op": "eq", "value": "x"}}),
        false,
    );
    check(
        json!({"not": {"attribute": "title", "op": "gt", "value": "x"}}),
        false,
    );
    check(json!({"not": {"and": []}}), false);
    check(
        json!({"or": [{"attribute": "title", "op": "pr"},
                        {"attribute": "title", "op": "pr", "value": "x"}]}),
        false,
    );
}

#[test]
fn group_rule_validation_names_the_bad_part() {
    fn check(json: Value, expect: Result<(), (&str, &str)>) {
        let parsed = rule(json.clone());
        match (validate_group_rule(&parsed), expect) {
            (Ok(()), Ok(())) => {}
            (Err(error), Err((path, part))) => {
                assert_eq!(error.path, path, "{json}: {error}");
                assert!(
                    error.message.contains(part),
                    "{json}: {error} lacks {part:?}"
                );
            }
            (got, want) => panic!("{json}: got {got:?}, want {want:?}"),
        }
    }
    let compare = json!({"attribute": "department", "op": "eq", "value": "Board"});
    check(compare.clone(), Ok(()));
    check(
        json!({"attribute": "nickname", "op": "eq", "value": "x"}),
        Err(("rule.attribute", "unknown source")),
    );
    check(
        json!({"attribute": "title", "op": "like", "value": "x"}),
        Err(("rule.op", "unknown operator `like`")),
    );
    check(
        json!({"attribute": "title", "op": "eq"}),
        Err(("rule.value", "`eq` needs a value")),
    );
    check(
        json!({"attribute": "title", "op": "pr", "value": "x"}),
        Err(("rule.value", "takes no value")),
    );
    check(
        json!({"attribute": "title", "op": "in", "value": "x"}),
        Err(("rule.value", "array")),
    );
    check(
        json!({"attribute": "title", "op": "in", "value": []}),
        Err(("rule.value", "at least one")),
    );
    check(
        json!({"attribute": "title", "op": "in", "value": ["a", {"b": 1}]}),
        Err(("rule.value[1]", "must be a string")),
    );
    check(
        json!({"attribute": "title", "op": "eq", "value": ["a"]}),
        Err(("rule.value", "needs a string")),
    );
    check(json!({"and": []}), Err(("rule.and", "at least one rule")));
    check(
        json!({"and": [compare, {"attribute": "title", "op": "gt", "value": "x"}]}),
        Err(("rule.and[1].op", "unknown operator")),
    );
    check(
        json!({"or": [{"not": {"and": [{"attribute": "x", "op": "pr"}]}}]}),
        Err(("rule.or[0].not.and[0].attribute", "unknown source")),
    );
    let nest = |levels: usize| {
        (0..levels).fold(
            json!({"attribute": "title", "op": "pr"}),
            |inner, _| json!({"not": inner}),
        )
    };
    check(nest(MAX_RULE_DEPTH - 1), Ok(()));
    check(
        nest(MAX_RULE_DEPTH),
        Err(("rule.not.not.not.not.not.not.not.not", "deeper than 8")),
    );
}

#[test]
fn group_rule_json_shape_is_stable() {
    let parsed = rule(
        json!({"or": [{"attribute": "department", "op": "eq", "value": "Sales"},
                                    {"not": {"attribute": "title", "op": "pr"}}]}),
    );
    assert_eq!(
        parsed,
        GroupRule::Or {
            or: vec![
                GroupRule::Compare {
                    attribute: "department".to_owned(),
                    op: "eq".to_owned(),
                    value: Some(json!("Sales")),
                },
                GroupRule::Not {
                    not: Box::new(GroupRule::Compare {
                        attribute: "title".to_owned(),
                        op: "pr".to_owned(),
                        value: None,
                    }),
                },
            ],
        }
    );
    assert_eq!(
        serde_json::to_value(&parsed).ok(),
        Some(
            json!({"or": [{"attribute": "department", "op": "eq", "value": "Sales"},
                            {"not": {"attribute": "title", "op": "pr"}}]})
        )
    );
}

#[test]
fn group_rule_strings_parse_like_scim_filters() {
    fn check(text: &str, expect: Result<Value, &str>) {
        match (parse_group_rule(text), expect) {
            (Ok(parsed), Ok(json)) => assert_eq!(parsed, rule(json), "{text}"),
            (Err(error), Err(part)) => {
                assert!(error.path.starts_with("rule"), "{error}");
                assert!(
                    error.message.contains(part),
                    "{text}: {error} lacks {part:?}"
                );
            }
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }
    let eq =
        |attribute: &str, value: &str| json!({"attribute": attribute, "op": "eq", "value": value});
    check(r#"department eq "Sales""#, Ok(eq("department", "Sales")));
    check(
        r#"department eq "Sales" and title sw "VP""#,
        Ok(
            json!({"and": [eq("department", "Sales"), {"attribute": "title", "op": "sw", "value": "VP"}]}),
        ),
    );
    // `and` binds tighter than `or`.
    check(
        r#"department eq "a" or department eq "b" AND title eq "c""#,
        Ok(
            json!({"or": [eq("department", "a"), {"and": [eq("department", "b"), eq("title", "c")]}]}),
        ),
    );
    check(
        r#"(department eq "a" or department eq "b") and title eq "c""#,
        Ok(
            json!({"and": [{"or": [eq("department", "a"), eq("department", "b")]}, eq("title", "c")]}),
        ),
    );
    check(r#"a_b eq "x""#, Err("unknown source `a_b`"));
    check(
        r#"not (title pr) and attributes.level in ["L7", 8, true]"#,
        Ok(json!({"and": [{"not": {"attribute": "title", "op": "pr"}},
                          {"attribute": "attributes.level", "op": "in", "value": ["L7", 8, true]}]})),
    );
    check(
        r#"attributes.remote EQ TRUE"#,
        Ok(json!({"attribute": "attributes.remote", "op": "eq", "value": true})),
    );
    check(
        r#"title eq "a \"quoted\" VP""#,
        Ok(eq("title", "a \"quoted\" VP")),
    );
    check("", Err("column 1: expected an attribute"));
    check(r#"department eq"#, Err("column 14: expected a string"));
    check(
        r#"department like "x""#,
        Err("column 12: unknown operator `like`"),
    );
    check(
        r#"department eq "x" title eq "y""#,
        Err("column 19: unexpected input"),
    );
    check(r#"not title pr"#, Err("column 5: expected `(` after `not`"));
    check(r#"(title pr"#, Err("column 10: expected `)`"));
    check(
        r#"title in ["a" "b"]"#,
        Err("column 15: expected `,` or `]`"),
    );
    check(r#"title eq "open"#, Err("unterminated string"));
    check("title eq 'x'", Err("column 10: unexpected character"));
    let deep = format!("{}title pr{}", "(".repeat(40), ")".repeat(40));
    check(&deep, Err("deeper than 32 parentheses"));
    let nested_not = format!("{}title pr{}", "not (".repeat(9), ")".repeat(9));
    check(&nested_not, Err("deeper than 8"));
    check(&"(".repeat(100_000), Err("longer than 4096"));
    // Parsed rules evaluate.
    let parsed =
        parse_group_rule(r#"department eq "board" and not (title sw "VP")"#).expect("parses");
    assert!(evaluate_group_rule(&parsed, &ada()));
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn rendering_then_diffing_against_itself_finds_nothing(
        user_name in ".{0,24}",
        email in ".{0,24}",
        given_name in ".{0,24}",
        family_name in ".{0,24}",
        title in ".{0,24}",
        department in ".{0,24}",
        status in prop::sample::select(vec!["active", "suspended", "terminated", ""]),
        admin in any::<bool>(),
    ) {
        let (mut mappings, role_mapping) = design_example();
        mappings.push(expression_mapping("displayName", r#"concat(given_name, " ", upper(family_name))"#));
        mappings.push(mapping(&format!("{ENTERPRISE_USER_SCHEMA}:department"), "department"));
        let compiled = compile(&mappings, Some(&role_mapping)).expect("compiles");
        let identity = IdentityView {
            user_name: Some(user_name),
            email: Some(email),
            given_name: Some(given_name),
            family_name: Some(family_name),
            title: Some(title),
            department: Some(department),
            status: status.to_owned(),
            groups: if admin { vec!["board-admins".to_owned()] } else { Vec::new() },
            ..ada()
        };
        let desired = render_user(&compiled, &identity);
        prop_assert_eq!(diff(&compiled, &desired, &desired), Vec::<Difference>::new());
        // Against the account written out here from the mappings (not rendered by the code
        // under test), as a target holds it: nothing to change either.
        let present = |s: &Option<String>| s.as_deref().filter(|v| !v.is_empty()).map(str::to_owned);
        if let (Some(email), Some(given), Some(family)) =
            (present(&identity.email), present(&identity.given_name), present(&identity.family_name))
        {
            let mut held = json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "id": "t-1",
                "userName": email,
                "name": {"givenName": given, "familyName": family},
                "emails": [{"type": "work", "value": email, "primary": true}],
                "externalId": "E100",
                "active": identity.status == "active",
                "roles": [{"primary": true, "value": if admin { "admin" } else { "member" }}],
                "displayName": format!("{given} {}", family.to_uppercase()),
            });
            if let Some(title) = present(&identity.title) {
                held["title"] = json!(title);
            }
            if let Some(department) = present(&identity.department) {
                held[ENTERPRISE_USER_SCHEMA] = json!({"department": department});
            }
            prop_assert_eq!(diff(&compiled, &desired, &held), Vec::<Difference>::new(), "{:#}", held);
        }
        // A snapshot stored as text and read back is still equal, and hashes the same.
        let reread: Value = serde_json::from_str(&desired.to_string()).expect("json round trip");
        prop_assert!(diff(&compiled, &desired, &reread).is_empty());
        prop_assert_eq!(snapshot_hash(&desired), snapshot_hash(&reread));
    }

    #[test]
    fn arbitrary_expression_text_never_panics(input in ".{0,64}") {
        let _ = Expression::parse(&input);
        let _ = parse_group_rule(&input);
        let _ = ScimPath::parse(&input);
    }
}

#[test]
fn emails_compare_ignoring_case_and_cannot_be_the_matching_attribute() {
    let compiled = compiled_example();
    let desired = render_user(&compiled, &ada());
    let mut lowered = desired.clone();
    lowered["userName"] = json!("ADA@example.com");
    lowered["emails"][0]["value"] = json!("ADA@EXAMPLE.COM");
    assert_eq!(diff(&compiled, &desired, &lowered), []);
    lowered["name"]["givenName"] = json!("ADA");
    assert_eq!(
        diff(&compiled, &desired, &lowered).len(),
        1,
        "other strings are exact"
    );
    let refusal = |raw: &str| ScimPath::parse(raw).ok().and_then(|p| p.matching_refusal());
    assert!(refusal("emails[type eq \"work\"].value").is_some());
    assert_eq!(refusal("userName"), None);
    assert_eq!(refusal("externalId"), None);
}

#[test]
fn changes_to_one_element_keep_the_elements_roster_does_not_render() {
    const ACME: &str = "urn:example:params:scim:schemas:extension:acme:2.0:User";
    let (mut mappings, role_mapping) = design_example();
    mappings.push(expression_mapping(
        &format!("{ACME}:badges[type eq \"door\"].value"),
        "\"D-1\"",
    ));
    let compiled = compile(&mappings, Some(&role_mapping)).expect("compiles");
    let mut person = ada();
    person.groups = vec!["board-admins".to_owned()];
    person.email = Some("ada.l@example.com".to_owned());
    let desired = render_user(&compiled, &person);
    // The target's copy: roster's elements as last applied, and elements added in the app.
    let mut current = render_user(&compiled, &ada());
    current["roles"] = json!([{"value": "billing", "type": "billing"},
                              {"primary": true, "value": "member", "display": "Member"}]);
    current["emails"] = json!([{"type": "home", "value": "ada@home.example"},
                               {"type": "work", "value": "ada@example.com", "primary": true}]);
    current[ACME] =
        json!({"badges": [{"type": "gym", "value": "G-7"}, {"type": "door", "value": "D-1"}]});
    let changes = patch_changes(&diff(&compiled, &desired, &current));
    let sent = keep_foreign_elements(&compiled, &changes, &desired, &current);
    let find = |path: &str| sent.iter().find(|c| c.path == path).cloned();
    assert_eq!(
        find("roles").and_then(|c| c.value),
        Some(json!([{"value": "billing", "type": "billing"},
                    {"primary": true, "value": "admin", "display": "Member"}])),
        "{sent:?}"
    );
    assert_eq!(
        find("emails").and_then(|c| c.value),
        Some(json!([{"type": "home", "value": "ada@home.example"},
                    {"type": "work", "value": "ada.l@example.com", "primary": true}]))
    );
    assert_eq!(
        find("userName").and_then(|c| c.value),
        Some(json!("ada.l@example.com"))
    );
    // The extension's element is in line: nothing is sent for it, least of all a remove.
    assert!(sent.iter().all(|c| !c.path.starts_with(ACME)), "{sent:?}");
    // A change to the extension's element replaces its attribute under the URN, keeping `gym`.
    current[ACME]["badges"][1]["value"] = json!("D-0");
    let changes = patch_changes(&diff(&compiled, &desired, &current));
    let sent = keep_foreign_elements(&compiled, &changes, &desired, &current);
    assert_eq!(
        sent.iter()
            .find(|c| c.path == format!("{ACME}:badges"))
            .and_then(|c| c.value.clone()),
        Some(json!([{"type": "gym", "value": "G-7"}, {"type": "door", "value": "D-1"}])),
        "{sent:?}"
    );
    // A missing element is added as rendered.
    current["roles"] = json!([{"value": "billing", "type": "billing"}]);
    let changes = patch_changes(&diff(&compiled, &desired, &current));
    let sent = keep_foreign_elements(&compiled, &changes, &desired, &current);
    assert_eq!(
        sent.iter()
            .find(|c| c.path == "roles")
            .and_then(|c| c.value.clone()),
        Some(json!([{"value": "billing", "type": "billing"}, {"primary": true, "value": "admin"}]))
    );
}
