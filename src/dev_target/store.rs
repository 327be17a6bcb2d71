//! The dev-target's in-memory Users and Groups, with SCIM semantics (uniqueness, versions,
//! filters, paging, PATCH). Pure data: no HTTP here.
use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use scim_v2::filter::{AttrPath, Filter};

use super::filter::{self, get_ci, is_extension_urn};
use super::patch;
use crate::scim::schemas;

/// A SCIM error answer: status, optional `scimType`, detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl Refusal {
    pub fn new(status: u16, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    fn not_found(kind: Kind, id: &str) -> Self {
        Self::new(
            404,
            None,
            format!("{} {id} not found", kind.resource_type()),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    User,
    Group,
}

impl Kind {
    pub fn resource_type(self) -> &'static str {
        match self {
            Kind::User => "User",
            Kind::Group => "Group",
        }
    }

    pub fn endpoint(self) -> &'static str {
        match self {
            Kind::User => "Users",
            Kind::Group => "Groups",
        }
    }

    fn schema(self) -> &'static str {
        match self {
            Kind::User => schemas::USER,
            Kind::Group => schemas::GROUP,
        }
    }
}

/// A page of a listing.
pub struct Page {
    pub total: usize,
    pub start_index: usize,
    pub resources: Vec<Value>,
}

#[derive(Default)]
pub struct Store {
    // Ids are UUIDv7, so id order is creation order and paging is stable under appends.
    users: BTreeMap<String, Value>,
    groups: BTreeMap<String, Value>,
    /// Lower-cased userName → id: uniqueness and the `userName eq` fast path.
    user_names: HashMap<String, String>,
    /// Lower-cased group displayName → id: uniqueness (`displayName` is `caseExact: false`).
    group_names: HashMap<String, String>,
    version: u64,
    /// Where resources say they live (`meta.location`).
    base_url: String,
    /// Bumped whenever an id is added or removed: a listing's position → id changes then.
    layout: u64,
    /// Where the unfiltered listings in progress stand: (kind, the next page's `startIndex`)
    /// → (the previous page's last id, `layout` then). The next page resumes after that id
    /// instead of skipping `startIndex - 1` entries, so that paging through n resources costs
    /// O(n), not O(n²) (a million accounts took minutes), as a real server's cursor does.
    cursors: std::sync::Mutex<HashMap<(Kind, usize), (String, u64)>>,
    /// Accounts may share a userName (no 409 `uniqueness`), as some SaaS targets allow: a
    /// client that creates before it looks, or retries a create whose reply was lost, makes
    /// a second account there. The userName index then misses all but one holder, so
    /// `userName eq` look-ups scan.
    duplicate_user_names: bool,
}

/// Listings in progress remembered at once; more (abandoned ones) are forgotten together.
const MAX_CURSORS: usize = 64;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Whether a PATCH path names an attribute of the resource's schema (RFC 7643 §4), so that a
/// typo is a 400 `invalidPath` as on real servers, not a new attribute. Extension attributes
/// (`urn:…:extension:…`) are accepted as they come.
fn known_path(kind: Kind, path: &AttrPath) -> bool {
    const USER: &[&str] = &[
        "userName",
        "name",
        "displayName",
        "nickName",
        "profileUrl",
        "title",
        "userType",
        "preferredLanguage",
        "locale",
        "timezone",
        "active",
        "password",
        "emails",
        "phoneNumbers",
        "ims",
        "photos",
        "addresses",
        "groups",
        "entitlements",
        "roles",
        "x509Certificates",
        "externalId",
    ];
    const GROUP: &[&str] = &["displayName", "members", "externalId"];
    if path.uri.as_deref().is_some_and(is_extension_urn) {
        return true;
    }
    let known = match kind {
        Kind::User => USER,
        Kind::Group => GROUP,
    };
    known.iter().any(|k| k.eq_ignore_ascii_case(&path.name))
}

fn group_name_of(resource: &Value) -> Option<&str> {
    resource
        .as_object()
        .and_then(|o| get_ci(o, "displayName"))
        .and_then(Value::as_str)
}

fn user_name_of(resource: &Value) -> Option<&str> {
    resource
        .as_object()
        .and_then(|o| get_ci(o, "userName"))
        .and_then(Value::as_str)
}

impl Store {
    pub fn new(base_url: String) -> Self {
        Self {
            base_url,
            ..Self::default()
        }
    }

    /// A store that accepts two users with one userName (see `duplicate_user_names`).
    #[must_use]
    pub fn allowing_duplicate_user_names(mut self, allow: bool) -> Self {
        self.duplicate_user_names = allow;
        self
    }

    pub fn clear(&mut self) {
        let base_url = std::mem::take(&mut self.base_url);
        *self = Self::new(base_url).allowing_duplicate_user_names(self.duplicate_user_names);
    }

    fn map(&self, kind: Kind) -> &BTreeMap<String, Value> {
        match kind {
            Kind::User => &self.users,
            Kind::Group => &self.groups,
        }
    }

    fn map_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Value> {
        match kind {
            Kind::User => &mut self.users,
            Kind::Group => &mut self.groups,
        }
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.map(kind).len()
    }

    pub fn snapshot(&self, kind: Kind) -> Vec<Value> {
        self.map(kind).values().cloned().collect()
    }

    /// A strong ETag: the stored resource is byte-exact, and `If-Match` compares strongly.
    fn next_version(&mut self) -> String {
        self.version += 1;
        format!("\"{}\"", self.version)
    }

    /// Checks the body and the userName's uniqueness (ignoring case, excluding `own_id`).
    fn validate(&self, kind: Kind, body: &Value, own_id: Option<&str>) -> Result<(), Refusal> {
        let object = body
            .as_object()
            .ok_or_else(|| Refusal::new(400, Some("invalidSyntax"), "body is not an object"))?;
        match kind {
            Kind::User => {
                let name = user_name_of(body)
                    .filter(|n| !n.trim().is_empty())
                    .ok_or_else(|| {
                        Refusal::new(400, Some("invalidValue"), "userName is required")
                    })?;
                if !self.duplicate_user_names
                    && let Some(holder) = self.user_names.get(&name.to_lowercase())
                    && Some(holder.as_str()) != own_id
                {
                    return Err(Refusal::new(
                        409,
                        Some("uniqueness"),
                        format!("userName {name} is already taken"),
                    ));
                }
            }
            Kind::Group => {
                let name = get_ci(object, "displayName")
                    .and_then(Value::as_str)
                    .filter(|n| !n.trim().is_empty())
                    .ok_or_else(|| {
                        Refusal::new(400, Some("invalidValue"), "displayName is required")
                    })?;
                if let Some(holder) = self.group_names.get(&name.to_lowercase())
                    && Some(holder.as_str()) != own_id
                {
                    return Err(Refusal::new(
                        409,
                        Some("uniqueness"),
                        format!("a group named {name} already exists"),
                    ));
                }
            }
        }
        // RFC 7643 §4.1.1: `active` is a boolean; `"False"` as a string is refused.
        if get_ci(object, "active").is_some_and(|a| !a.is_boolean()) {
            return Err(Refusal::new(
                400,
                Some("invalidValue"),
                "active must be a boolean",
            ));
        }
        Ok(())
    }

    /// Stores `body` as `id`, keeping `created`, setting `meta`, and indexing the userName.
    fn store(&mut self, kind: Kind, id: &str, body: Value, created: Option<String>) -> Value {
        let mut object = match body {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        object.retain(|k, _| !k.eq_ignore_ascii_case("id") && !k.eq_ignore_ascii_case("meta"));
        if !object.contains_key("schemas") {
            object.insert("schemas".into(), json!([kind.schema()]));
        }
        if kind == Kind::Group && get_ci(&object, "members").is_none() {
            object.insert("members".into(), json!([]));
        }
        let stamp = now();
        let version = self.next_version();
        object.insert("id".into(), Value::String(id.to_owned()));
        object.insert(
            "meta".into(),
            json!({
                "resourceType": kind.resource_type(),
                "created": created.unwrap_or_else(|| stamp.clone()),
                "lastModified": stamp,
                "location": format!("{}/{}/{id}", self.base_url, kind.endpoint()),
                "version": version,
            }),
        );
        let resource = Value::Object(object);
        let (names, name_of): (_, fn(&Value) -> Option<&str>) = match kind {
            Kind::User => (&mut self.user_names, user_name_of),
            Kind::Group => (&mut self.group_names, group_name_of),
        };
        let old = match kind {
            Kind::User => self.users.get(id),
            Kind::Group => self.groups.get(id),
        };
        if let Some(old) = old.and_then(name_of) {
            names.remove(&old.to_lowercase());
        }
        if let Some(name) = name_of(&resource) {
            names.insert(name.to_lowercase(), id.to_owned());
        }
        if self
            .map_mut(kind)
            .insert(id.to_owned(), resource.clone())
            .is_none()
        {
            self.layout += 1;
        }
        resource
    }

    /// RFC 7643 §3: a resource sent with POST or PUT names its schemas: its core schema and
    /// every extension whose object it carries. (Seeding through [`Store::create`] directly
    /// does not need them.)
    pub fn require_schemas(kind: Kind, body: &Value) -> Result<(), Refusal> {
        let object = body.as_object();
        let listed: Vec<&str> = object
            .and_then(|o| get_ci(o, "schemas"))
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let has = |urn: &str| listed.iter().any(|u| u.eq_ignore_ascii_case(urn));
        let extensions = object
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| k.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:")));
        match std::iter::once(kind.schema())
            .chain(extensions.map(String::as_str))
            .find(|urn| !has(urn))
        {
            None => Ok(()),
            Some(missing) => Err(Refusal::new(
                400,
                Some("invalidSyntax"),
                format!("`schemas` must include {missing}"),
            )),
        }
    }

    pub fn create(&mut self, kind: Kind, body: Value) -> Result<Value, Refusal> {
        self.validate(kind, &body, None)?;
        let id = uuid::Uuid::now_v7().to_string();
        Ok(self.store(kind, &id, body, None))
    }

    pub fn get(&self, kind: Kind, id: &str) -> Result<Value, Refusal> {
        self.map(kind)
            .get(id)
            .cloned()
            .ok_or_else(|| Refusal::not_found(kind, id))
    }

    /// 412 when `if_match` is given and is neither `*` nor the current version. RFC 9110
    /// §13.1.1: `If-Match` uses the strong comparison, so a weak tag (`W/"3"`) never matches.
    fn precondition(&self, kind: Kind, id: &str, if_match: Option<&str>) -> Result<Value, Refusal> {
        let current = self.get(kind, id)?;
        if let Some(wanted) = if_match {
            let version = current["meta"]["version"].as_str().unwrap_or_default();
            let strong = |tag: &str| !tag.starts_with("W/") && tag == version;
            let matches = wanted.trim() == "*" || wanted.split(',').any(|tag| strong(tag.trim()));
            if !matches {
                return Err(Refusal::new(412, None, "version mismatch"));
            }
        }
        Ok(current)
    }

    pub fn replace(
        &mut self,
        kind: Kind,
        id: &str,
        body: Value,
        if_match: Option<&str>,
    ) -> Result<Value, Refusal> {
        let current = self.precondition(kind, id, if_match)?;
        // RFC 7644 §3.5.1: `id` is the URL's; a body naming another resource is refused.
        if let Some(body_id) = body.as_object().and_then(|o| get_ci(o, "id"))
            && body_id.as_str() != Some(id)
        {
            return Err(Refusal::new(
                400,
                Some("mutability"),
                format!("the body's id {body_id} is not the URL's {id}"),
            ));
        }
        self.validate(kind, &body, Some(id))?;
        let created = current["meta"]["created"].as_str().map(str::to_owned);
        Ok(self.store(kind, id, body, created))
    }

    pub fn patch(
        &mut self,
        kind: Kind,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, Refusal> {
        let current = self.precondition(kind, id, if_match)?;
        let operations = patch::parse(body)?;
        for op in &operations {
            if let Some(attr) = op.attribute()
                && !known_path(kind, attr)
            {
                return Err(Refusal::new(
                    400,
                    Some("invalidPath"),
                    format!(
                        "no attribute `{}` in the {} schema",
                        op.raw_path().unwrap_or_default(),
                        kind.resource_type()
                    ),
                ));
            }
        }
        let mut patched = current.clone();
        patch::apply(&mut patched, &operations)?;
        self.validate(kind, &patched, Some(id))?;
        let created = current["meta"]["created"].as_str().map(str::to_owned);
        Ok(self.store(kind, id, patched, created))
    }

    pub fn delete(&mut self, kind: Kind, id: &str, if_match: Option<&str>) -> Result<(), Refusal> {
        self.precondition(kind, id, if_match)?;
        let removed = self.map_mut(kind).remove(id);
        if removed.is_some() {
            self.layout += 1;
        }
        if let Some(old) = &removed
            && kind == Kind::Group
            && let Some(name) = group_name_of(old)
        {
            self.group_names.remove(&name.to_lowercase());
        }
        if let Some(old) = removed
            && kind == Kind::User
        {
            if let Some(name) = user_name_of(&old) {
                self.user_names.remove(&name.to_lowercase());
            }
            // Unlike some servers, a deleted user leaves the groups it was in.
            self.leave_groups(id);
        }
        Ok(())
    }

    /// Takes user `id` out of every group's members.
    pub fn leave_groups(&mut self, id: &str) {
        for group in self.groups.values_mut() {
            if let Some(Value::Array(members)) = group.get_mut("members") {
                members.retain(|m| m.get("value").and_then(Value::as_str) != Some(id));
            }
        }
    }

    /// Applies `f` to a stored resource without any checks (tests simulate hand edits in the
    /// target with it). Returns whether the resource exists.
    pub fn edit(&mut self, kind: Kind, id: &str, f: impl FnOnce(&mut Value)) -> bool {
        let Some(mut resource) = self.map(kind).get(id).cloned() else {
            return false;
        };
        f(&mut resource);
        let created = resource["meta"]["created"].as_str().map(str::to_owned);
        self.store(kind, id, resource, created);
        true
    }

    /// A page of resources matching `filter`, 1-based `start_index`, at most `count`.
    /// `wrap`: a start past the end gives page 1, as some servers do.
    pub fn list(
        &self,
        kind: Kind,
        filter: Option<&Filter>,
        start_index: usize,
        count: usize,
        wrap: bool,
    ) -> Page {
        // Fast path for the matching look-ups delivery makes before creating: `userName eq`
        // one value, or several joined by `or`, answered from the userName index as a real
        // server would, in the order asked.
        if kind == Kind::User
            && !self.duplicate_user_names
            && let Some(names) = filter.and_then(filter::user_name_terms)
        {
            let mut seen = std::collections::HashSet::new();
            let found: Vec<Value> = names
                .iter()
                .filter_map(|name| self.user_names.get(&name.to_lowercase()))
                .filter(|id| seen.insert(id.as_str()))
                .filter_map(|id| self.users.get(id))
                .cloned()
                .collect();
            let total = found.len();
            let resources = found
                .into_iter()
                .skip(start_index - 1)
                .take(count)
                .collect();
            return Page {
                total,
                start_index,
                resources,
            };
        }
        let Some(filter) = filter else {
            return self.list_all(kind, start_index, count, wrap);
        };
        let matching = self
            .map(kind)
            .values()
            .filter(|r| filter::matches(filter, r));
        let total = matching.clone().count();
        let start_index = if wrap && start_index > total {
            1
        } else {
            start_index
        };
        let resources = matching
            .skip(start_index - 1)
            .take(count)
            .cloned()
            .collect();
        Page {
            total,
            start_index,
            resources,
        }
    }
}

impl Store {
    /// A page of every resource of `kind`, in id order; see [`Store::list`].
    fn list_all(&self, kind: Kind, start_index: usize, count: usize, wrap: bool) -> Page {
        use std::ops::Bound;
        let map = self.map(kind);
        let total = map.len();
        let start_index = if wrap && start_index > total {
            1
        } else {
            start_index
        };
        let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        let resume = cursors
            .remove(&(kind, start_index))
            .filter(|(_, layout)| *layout == self.layout)
            .map(|(after, _)| after);
        let page: Vec<(&String, &Value)> = match &resume {
            Some(after) => map
                .range::<str, _>((Bound::Excluded(after.as_str()), Bound::Unbounded))
                .take(count)
                .collect(),
            None => map.iter().skip(start_index - 1).take(count).collect(),
        };
        if let Some((last, _)) = page.last() {
            if cursors.len() >= MAX_CURSORS {
                cursors.clear();
            }
            cursors.insert(
                (kind, start_index + page.len()),
                ((*last).clone(), self.layout),
            );
        }
        Page {
            total,
            start_index,
            resources: page.into_iter().map(|(_, r)| r.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_unique_ignoring_case_and_freed_on_delete() {
        let mut store = Store::new("http://x/scim/v2".into());
        let ada = store
            .create(Kind::User, json!({"userName": "Ada"}))
            .unwrap();
        let err = store
            .create(Kind::User, json!({"userName": "ADA"}))
            .unwrap_err();
        assert_eq!((err.status, err.scim_type), (409, Some("uniqueness")));
        let id = ada["id"].as_str().unwrap();
        store.delete(Kind::User, id, None).unwrap();
        assert!(store.create(Kind::User, json!({"userName": "ada"})).is_ok());
        assert_eq!(store.create(Kind::User, json!({})).unwrap_err().status, 400);
    }

    #[test]
    fn a_store_allowing_duplicates_keeps_both_and_finds_both() {
        let mut store = Store::new("http://x/scim/v2".into()).allowing_duplicate_user_names(true);
        let first = store
            .create(Kind::User, json!({"userName": "Ada"}))
            .unwrap();
        let second = store
            .create(Kind::User, json!({"userName": "ada"}))
            .unwrap();
        assert_ne!(first["id"], second["id"]);
        let filter = crate::dev_target::filter::parse(r#"userName eq "ADA""#).unwrap();
        let page = store.list(Kind::User, Some(&filter), 1, 10, false);
        assert_eq!(page.total, 2, "{:?}", page.resources);
        store.clear();
        store
            .create(Kind::User, json!({"userName": "Ada"}))
            .unwrap();
        assert!(store.create(Kind::User, json!({"userName": "Ada"})).is_ok());
    }

    #[test]
    fn patch_paths_outside_the_schema_are_invalid() {
        let mut store = Store::new(String::new());
        let user = store.create(Kind::User, json!({"userName": "a"})).unwrap();
        let id = user["id"].as_str().unwrap();
        let op = |path: &str| {
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                   "Operations": [{"op": "replace", "path": path, "value": "x"}]})
        };
        let err = store
            .patch(Kind::User, id, &op("nosuchattr"), None)
            .unwrap_err();
        assert_eq!((err.status, err.scim_type), (400, Some("invalidPath")));
        assert!(store.patch(Kind::User, id, &op("title"), None).is_ok());
        let err = store
            .patch(Kind::User, id, &op(r#"emails[type eq "work"].value"#), None)
            .unwrap_err();
        assert_eq!(
            err.scim_type,
            Some("noTarget"),
            "a replace matching nothing"
        );
        let ext = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department";
        assert!(store.patch(Kind::User, id, &op(ext), None).is_ok());
        assert!(
            store
                .patch(
                    Kind::User,
                    id,
                    &op("urn:ietf:params:scim:schemas:core:2.0:User:title"),
                    None
                )
                .is_ok()
        );
    }

    #[test]
    fn versions_change_and_stale_if_match_fails() {
        let mut store = Store::new(String::new());
        let user = store.create(Kind::User, json!({"userName": "a"})).unwrap();
        let id = user["id"].as_str().unwrap();
        let v1 = user["meta"]["version"].as_str().unwrap().to_owned();
        let updated = store
            .replace(
                Kind::User,
                id,
                json!({"userName": "a", "title": "x"}),
                Some(&v1),
            )
            .unwrap();
        assert_ne!(updated["meta"]["version"], v1.as_str());
        let err = store
            .replace(Kind::User, id, json!({"userName": "a"}), Some(&v1))
            .unwrap_err();
        assert_eq!(err.status, 412);
        assert_eq!(updated["meta"]["created"], user["meta"]["created"]);
    }

    #[test]
    fn strict_where_a_lenient_server_would_hide_a_client_bug() {
        let mut store = Store::new(String::new());
        // POST and PUT name their schemas.
        let err = Store::require_schemas(Kind::User, &json!({"userName": "a"})).unwrap_err();
        assert_eq!((err.status, err.scim_type), (400, Some("invalidSyntax")));
        let group_schema = json!({"schemas": [schemas::GROUP], "displayName": "g"});
        assert!(Store::require_schemas(Kind::User, &group_schema).is_err());
        assert!(Store::require_schemas(Kind::Group, &group_schema).is_ok());
        let unlisted_extension = json!({"schemas": [schemas::USER], "userName": "a",
            (schemas::ENTERPRISE_USER): {"department": "R&D"}});
        let err = Store::require_schemas(Kind::User, &unlisted_extension).unwrap_err();
        assert!(err.detail.contains("enterprise"), "{}", err.detail);
        // A PUT body's id is the URL's.
        let user = store.create(Kind::User, json!({"userName": "a"})).unwrap();
        let id = user["id"].as_str().unwrap();
        let err = store
            .replace(
                Kind::User,
                id,
                json!({"id": "other", "userName": "a"}),
                None,
            )
            .unwrap_err();
        assert_eq!((err.status, err.scim_type), (400, Some("mutability")));
        assert!(
            store
                .replace(Kind::User, id, json!({"id": id, "userName": "a"}), None)
                .is_ok()
        );
        // `active` is a boolean.
        let err = store
            .replace(
                Kind::User,
                id,
                json!({"userName": "a", "active": "False"}),
                None,
            )
            .unwrap_err();
        assert_eq!(err.scim_type, Some("invalidValue"));
        // Group displayNames are unique ignoring case, also on rename, and freed on delete.
        let g = store
            .create(Kind::Group, json!({"displayName": "Board"}))
            .unwrap();
        let err = store
            .create(Kind::Group, json!({"displayName": "board"}))
            .unwrap_err();
        assert_eq!((err.status, err.scim_type), (409, Some("uniqueness")));
        let other = store
            .create(Kind::Group, json!({"displayName": "Staff"}))
            .unwrap();
        let other_id = other["id"].as_str().unwrap();
        let err = store
            .replace(Kind::Group, other_id, json!({"displayName": "BOARD"}), None)
            .unwrap_err();
        assert_eq!(err.status, 409);
        store
            .delete(Kind::Group, g["id"].as_str().unwrap(), None)
            .unwrap();
        assert!(
            store
                .create(Kind::Group, json!({"displayName": "board"}))
                .is_ok()
        );
    }

    #[test]
    fn if_match_compares_strongly() {
        let mut store = Store::new(String::new());
        let user = store.create(Kind::User, json!({"userName": "a"})).unwrap();
        let id = user["id"].as_str().unwrap();
        let version = user["meta"]["version"].as_str().unwrap().to_owned();
        assert!(!version.starts_with("W/"), "versions are strong ETags");
        let weak = format!("W/{version}");
        let err = store.delete(Kind::User, id, Some(&weak)).unwrap_err();
        assert_eq!(err.status, 412, "a weak tag never matches under If-Match");
        let list = format!("\"nope\", {version}");
        assert!(store.delete(Kind::User, id, Some(&list)).is_ok());
    }

    #[test]
    fn paging_resumes_where_the_last_page_ended_and_follows_changes() {
        let mut store = Store::new("http://t".into());
        let mut ids: Vec<String> = (0..10)
            .map(|i| {
                let user = store
                    .create(Kind::User, json!({"userName": format!("u{i}")}))
                    .expect("create");
                user["id"].as_str().expect("id").to_owned()
            })
            .collect();
        ids.sort();
        let page_ids = |page: &Page| -> Vec<String> {
            page.resources
                .iter()
                .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        let first = store.list(Kind::User, None, 1, 4, false);
        assert_eq!(page_ids(&first), ids[..4]);
        let second = store.list(Kind::User, None, 5, 4, false);
        assert_eq!(page_ids(&second), ids[4..8], "resumed after the first page");
        // A delete before the cursor moves positions: the next page is counted afresh.
        store.delete(Kind::User, &ids[0], None).expect("delete");
        let third = store.list(Kind::User, None, 9, 4, false);
        assert_eq!(page_ids(&third), ids[9..], "position 9 is now the tenth id");
        assert_eq!(third.total, 9);
        // Pages asked out of order, or again, are what the position says.
        assert_eq!(
            page_ids(&store.list(Kind::User, None, 2, 2, false)),
            ids[2..4]
        );
        assert_eq!(
            page_ids(&store.list(Kind::User, None, 2, 2, false)),
            ids[2..4]
        );
    }

    #[test]
    fn listing_pages_and_wraps_when_asked() {
        let mut store = Store::new(String::new());
        for i in 0..5 {
            store
                .create(Kind::User, json!({"userName": format!("u{i}")}))
                .unwrap();
        }
        let page = store.list(Kind::User, None, 4, 10, false);
        assert_eq!((page.total, page.resources.len()), (5, 2));
        assert_eq!(
            store.list(Kind::User, None, 9, 10, false).resources.len(),
            0
        );
        assert_eq!(store.list(Kind::User, None, 9, 10, true).resources.len(), 5);
        let f = filter::parse(r#"userName eq "U3""#).unwrap();
        assert_eq!(store.list(Kind::User, Some(&f), 1, 10, false).total, 1);
    }

    #[test]
    fn an_or_of_user_names_answers_from_the_index_as_the_full_scan_would() {
        let mut store = Store::new(String::new());
        for i in 0..5 {
            store
                .create(Kind::User, json!({"userName": format!("u{i}")}))
                .unwrap();
        }
        let f = filter::parse(
            r#"userName eq "U3" or userName eq "u1" or userName eq "nobody" or userName eq "u3""#,
        )
        .unwrap();
        let page = store.list(Kind::User, Some(&f), 1, 10, false);
        let names: Vec<&str> = page.resources.iter().filter_map(user_name_of).collect();
        assert_eq!((page.total, names), (2, vec!["u3", "u1"]));
        let scanned = store
            .snapshot(Kind::User)
            .into_iter()
            .filter(|r| filter::matches(&f, r))
            .count();
        assert_eq!(scanned, 2);
        // Anything else in the filter takes the full scan.
        let f = filter::parse(r#"userName eq "u1" or title eq "x""#).unwrap();
        assert_eq!(store.list(Kind::User, Some(&f), 1, 10, false).total, 1);
    }
}
