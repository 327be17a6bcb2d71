//! Who an app is for: its `scope`.
use serde::{Deserialize, Serialize};

use super::IdentityView;

/// An app's scope. `groups` empty means every active identity; `email_domains` absent means no
/// domain filter, present means only addresses in exactly those domains (an empty list then
/// admits nobody, which is the safe reading of "no managed domains").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSpec {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_domains: Option<Vec<String>>,
}

/// Whether `identity` should have an account in the app.
///
/// Only `active` identities are in scope: a `suspended` person is treated like a leaver for
/// the app (their account is deactivated by the deprovision policy, and comes back when they
/// return to `active`). Then the identity must be in one of `groups` (if any are listed), and
/// its `email` must be in one of `email_domains` (if the filter is set; no email → out).
#[must_use]
pub fn in_scope(scope: &ScopeSpec, identity: &IdentityView) -> bool {
    if identity.status != "active" {
        return false;
    }
    let in_groups = scope.groups.is_empty()
        || identity
            .groups
            .iter()
            .any(|group| scope.groups.contains(group));
    in_groups && domain_managed_option(scope, identity.email.as_deref())
}

/// Whether an address belongs to the app's managed domains: always when there is no domain
/// filter; otherwise its domain (after the last `@`) must equal a listed domain,
/// case-insensitively and exactly (`sub.example.com` and `evil-example.com` are not
/// `example.com`). A value without `@` (a bare user name) is not managed under a filter.
///
/// Reconcile uses this to tell `unmatched` (managed, no identity) from `unmanaged` (never touched).
#[must_use]
pub fn domain_managed(scope: &ScopeSpec, email_or_username: &str) -> bool {
    domain_managed_option(scope, Some(email_or_username))
}

fn domain_managed_option(scope: &ScopeSpec, address: Option<&str>) -> bool {
    let Some(domains) = &scope.email_domains else {
        return true;
    };
    let Some(domain) = address.and_then(email_domain) else {
        return false;
    };
    domains
        .iter()
        .map(|listed| listed.trim().trim_start_matches('@'))
        .any(|listed| !listed.is_empty() && listed.eq_ignore_ascii_case(domain))
}

/// The domain of `local@domain`, trimmed; `None` unless both parts are non-empty.
fn email_domain(address: &str) -> Option<&str> {
    let (local, domain) = address.trim().rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some(domain)
}
