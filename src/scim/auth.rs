//! Credentials for a target. Secrets stay `SecretString` until the header is built; `Debug`
//! prints `[REDACTED]`.
use std::time::{Duration, Instant};

use serde::Deserialize as _;

use secrecy::SecretString;

#[derive(Debug, Clone)]
pub enum Auth {
    /// No `Authorization` header (tests, targets protected another way).
    None,
    Bearer(SecretString),
    Basic {
        username: String,
        password: SecretString,
    },
    /// RFC 6749 §4.4. The client authenticates to `token_url` with HTTP Basic
    /// (`client_secret_basic`, the method every server must support, §2.3.1).
    OAuth2ClientCredentials {
        token_url: url::Url,
        client_id: String,
        client_secret: SecretString,
        scope: Option<String>,
    },
}

/// A fetched OAuth2 access token.
#[derive(Debug, Clone)]
pub(crate) struct CachedToken {
    pub token: SecretString,
    /// When to stop using it: shortly before the server's expiry.
    pub refresh_at: Instant,
}

/// Tokens without `expires_in` are kept this long.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Tokens are refreshed at least this often, whatever `expires_in` says: a server's
/// `expires_in` near `u64::MAX` would otherwise overflow the `Instant` addition below.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// When a token that lives `expires_in` seconds from `now` should be refreshed: 30 s early,
/// or at 90 % of a lifetime shorter than 5 minutes, so that a request never starts with a
/// token about to lapse.
#[must_use]
pub(crate) fn refresh_at(now: Instant, expires_in: Option<u64>) -> Instant {
    let lifetime = expires_in
        .map_or(DEFAULT_LIFETIME, Duration::from_secs)
        .min(MAX_LIFETIME);
    let margin = if lifetime >= Duration::from_secs(300) {
        Duration::from_secs(30)
    } else {
        lifetime / 10
    };
    now + lifetime.saturating_sub(margin)
}

/// Reads a token endpoint's 2xx body into a token to cache: `access_token` required,
/// `token_type` (when sent) must be `bearer`, `expires_in` sets the refresh time from `now`.
/// Errors are the reason for a `BadResponse`.
pub(crate) fn token_from(
    body: Option<serde_json::Value>,
    now: Instant,
) -> Result<CachedToken, &'static str> {
    let body = body.ok_or("token response without a body")?;
    let parsed: TokenResponse =
        serde_json::from_value(body).map_err(|_| "token response without access_token")?;
    if parsed
        .token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err("token_type is not bearer");
    }
    Ok(CachedToken {
        token: SecretString::from(parsed.access_token),
        refresh_at: refresh_at(now, parsed.expires_in),
    })
}

/// The parts of a token response (RFC 6749 §5.1) we use.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    /// Seconds; some servers send it as a string.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub expires_in: Option<u64>,
}

fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn debug_output_hides_secrets() {
        let all = [
            Auth::Bearer(SecretString::from("canary-bearer")),
            Auth::Basic {
                username: "u".into(),
                password: SecretString::from("canary-basic"),
            },
            Auth::OAuth2ClientCredentials {
                token_url: url::Url::parse("https://idp.example/token").unwrap(),
                client_id: "id".into(),
                client_secret: SecretString::from("canary-oauth"),
                scope: None,
            },
        ];
        for auth in all {
            let shown = format!("{auth:?}");
            assert!(!shown.contains("canary"), "{shown}");
        }
    }

    #[test]
    fn tokens_refresh_before_expiry() {
        let now = Instant::now();
        assert_eq!(refresh_at(now, Some(3600)), now + Duration::from_secs(3570));
        assert_eq!(refresh_at(now, Some(60)), now + Duration::from_secs(54));
        assert_eq!(refresh_at(now, Some(0)), now);
        assert_eq!(refresh_at(now, None), now + Duration::from_secs(270));
        // A hostile or broken token endpoint: capped at a day, no overflow panic.
        assert_eq!(
            refresh_at(now, Some(u64::MAX)),
            now + MAX_LIFETIME - Duration::from_secs(30)
        );
    }

    #[test]
    fn token_responses_parse_leniently() {
        let t: TokenResponse = serde_json::from_str(
            r#"{"access_token":"abc","token_type":"Bearer","expires_in":"3600"}"#,
        )
        .unwrap();
        assert_eq!(t.expires_in, Some(3600));
        assert_eq!(SecretString::from(t.access_token).expose_secret(), "abc");
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(t.expires_in, None);
        assert!(serde_json::from_str::<TokenResponse>(r#"{"token":"abc"}"#).is_err());
    }
}
