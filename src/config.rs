//! Settings from `ROSTER_*` environment variables (DESIGN §2). Read once at start.
use secrecy::SecretString;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub listen: String,
    pub admin_token: Option<SecretString>,
    pub secret_key: Option<SecretString>,
    /// The key being rotated away from: still opens old rows (`roster rotate-key`).
    pub secret_key_previous: Option<SecretString>,
    pub hr_webhook_secret: Option<SecretString>,
    pub workers: usize,
    pub allow_private_targets: bool,
    /// `ROSTER_ALLOW_INSECURE_HTTP`: plain `http://` app and token URLs on public hosts.
    pub allow_insecure_http: bool,
    /// `ROSTER_TLS_CERT` and `ROSTER_TLS_KEY`: PEM files; `serve` listens with TLS when set.
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// `ROSTER_HTTP_READ_TIMEOUT_SECS`: how long a client may take to send a request's head
    /// (and how long a connection may sit idle between requests), and its body.
    pub http_read_timeout: std::time::Duration,
    /// `ROSTER_MAX_CONNECTIONS`: connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Not from the environment: how often a quarantined app is probed (DESIGN: 5 minutes);
    /// tests shorten it.
    pub quarantine_probe: std::time::Duration,
    /// The HR snapshot leaver guard: a snapshot with more leavers than this is held.
    pub hr_snapshot_max_leavers: u64,
    /// … or with more leavers than this fraction of its source's active people (once they
    /// are at least 10).
    pub hr_snapshot_max_leaver_fraction: f64,
    /// `ROSTER_HR_SNAPSHOT_LEASE_SECS`: how long an instance's claim on an HR snapshot lasts
    /// without renewal; another instance (or this one after a restart) resumes it after that.
    pub hr_snapshot_lease: std::time::Duration,
    /// Whether `serve` runs the delivery engine (tests of the API alone turn it off).
    pub run_engine: bool,
    /// `ROSTER_RECONCILE_CONCURRENCY`: reconcile runs reading and classifying at once in this
    /// instance (scheduled, on demand and `roster reconcile` alike); more wait their turn.
    pub reconcile_concurrency: usize,
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://roster.db?mode=rwc";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.into(),
            listen: DEFAULT_LISTEN.into(),
            admin_token: None,
            secret_key: None,
            secret_key_previous: None,
            hr_webhook_secret: None,
            workers: 32,
            allow_private_targets: false,
            allow_insecure_http: false,
            tls_cert_file: None,
            tls_key_file: None,
            http_read_timeout: std::time::Duration::from_secs(30),
            max_connections: 4096,
            quarantine_probe: std::time::Duration::from_secs(300),
            run_engine: true,
            hr_snapshot_max_leavers: 50,
            hr_snapshot_max_leaver_fraction: 0.05,
            hr_snapshot_lease: std::time::Duration::from_secs(30),
            reconcile_concurrency: 2,
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Same as [`Config::from_env`] over any lookup, so tests need not touch the process env.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let non_empty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let defaults = Self::default();
        let workers = match non_empty("ROSTER_WORKERS") {
            None => defaults.workers,
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "ROSTER_WORKERS",
                        reason: format!("`{raw}` is not a number from 1 to 1024"),
                    });
                }
            },
        };
        let flag = |name: &'static str| -> Result<bool, ConfigError> {
            match non_empty(name).as_deref() {
                None => Ok(false),
                Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" => Ok(true),
                    "0" | "false" | "no" => Ok(false),
                    other => Err(ConfigError::Invalid {
                        name,
                        reason: format!("`{other}` is not true or false"),
                    }),
                },
            }
        };
        let number = |name: &'static str, range: std::ops::RangeInclusive<u64>, default: u64| {
            match non_empty(name) {
                None => Ok(default),
                Some(raw) => match raw.trim().parse::<u64>() {
                    Ok(n) if range.contains(&n) => Ok(n),
                    _ => Err(ConfigError::Invalid {
                        name,
                        reason: format!(
                            "`{raw}` is not a number from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    }),
                },
            }
        };
        let allow_private_targets = flag("ROSTER_ALLOW_PRIVATE_TARGETS")?;
        let allow_insecure_http = flag("ROSTER_ALLOW_INSECURE_HTTP")?;
        let http_read_timeout = std::time::Duration::from_secs(number(
            "ROSTER_HTTP_READ_TIMEOUT_SECS",
            1..=3600,
            defaults.http_read_timeout.as_secs(),
        )?);
        let max_connections = number(
            "ROSTER_MAX_CONNECTIONS",
            1..=1_000_000,
            defaults.max_connections as u64,
        )? as usize;
        let reconcile_concurrency = number(
            "ROSTER_RECONCILE_CONCURRENCY",
            1..=1024,
            defaults.reconcile_concurrency as u64,
        )? as usize;
        let tls_cert_file = non_empty("ROSTER_TLS_CERT").map(std::path::PathBuf::from);
        let tls_key_file = non_empty("ROSTER_TLS_KEY").map(std::path::PathBuf::from);
        if tls_cert_file.is_some() != tls_key_file.is_some() {
            return Err(ConfigError::Invalid {
                name: if tls_cert_file.is_some() {
                    "ROSTER_TLS_KEY"
                } else {
                    "ROSTER_TLS_CERT"
                },
                reason: "ROSTER_TLS_CERT and ROSTER_TLS_KEY are set together or not at all".into(),
            });
        }
        let hr_snapshot_max_leavers = number(
            "ROSTER_HR_SNAPSHOT_MAX_LEAVERS",
            0..=u64::MAX,
            defaults.hr_snapshot_max_leavers,
        )?;
        let hr_snapshot_max_leaver_fraction =
            match non_empty("ROSTER_HR_SNAPSHOT_MAX_LEAVER_FRACTION") {
                None => defaults.hr_snapshot_max_leaver_fraction,
                Some(raw) => match raw.trim().parse::<f64>() {
                    Ok(f) if (0.0..=1.0).contains(&f) => f,
                    _ => {
                        return Err(ConfigError::Invalid {
                            name: "ROSTER_HR_SNAPSHOT_MAX_LEAVER_FRACTION",
                            reason: format!("`{raw}` is not a number from 0 to 1"),
                        });
                    }
                },
            };
        let hr_snapshot_lease = std::time::Duration::from_secs(number(
            "ROSTER_HR_SNAPSHOT_LEASE_SECS",
            1..=3600,
            defaults.hr_snapshot_lease.as_secs(),
        )?);
        Ok(Self {
            hr_snapshot_max_leavers,
            hr_snapshot_lease,
            hr_snapshot_max_leaver_fraction,
            database_url: non_empty("ROSTER_DATABASE_URL").unwrap_or(defaults.database_url.clone()),
            listen: non_empty("ROSTER_LISTEN").unwrap_or(defaults.listen.clone()),
            admin_token: non_empty("ROSTER_ADMIN_TOKEN").map(SecretString::from),
            secret_key: non_empty("ROSTER_SECRET_KEY").map(SecretString::from),
            secret_key_previous: non_empty("ROSTER_SECRET_KEY_PREVIOUS").map(SecretString::from),
            hr_webhook_secret: non_empty("ROSTER_HR_WEBHOOK_SECRET").map(SecretString::from),
            workers,
            allow_private_targets,
            allow_insecure_http,
            tls_cert_file,
            tls_key_file,
            http_read_timeout,
            max_connections,
            reconcile_concurrency,
            ..defaults
        })
    }

    #[must_use]
    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_design() {
        let c = config(&[]).unwrap();
        assert_eq!(c.database_url, "sqlite://roster.db?mode=rwc");
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.workers, 32);
        assert!(!c.allow_private_targets);
        assert!(!c.allow_insecure_http);
        assert_eq!(c.http_read_timeout, std::time::Duration::from_secs(30));
        assert_eq!(c.max_connections, 4096);
        assert!(c.tls_cert_file.is_none() && c.tls_key_file.is_none());
        assert!(c.is_sqlite());
        assert_eq!(c.hr_snapshot_max_leavers, 50);
        assert!((c.hr_snapshot_max_leaver_fraction - 0.05).abs() < f64::EPSILON);
        assert_eq!(c.reconcile_concurrency, 2);
        assert_eq!(c.hr_snapshot_lease, std::time::Duration::from_secs(30));
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_name() {
        let err = config(&[("ROSTER_WORKERS", "lots")]).unwrap_err();
        assert!(err.to_string().contains("ROSTER_WORKERS"));
        let err = config(&[("ROSTER_HR_SNAPSHOT_MAX_LEAVER_FRACTION", "5%")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("ROSTER_HR_SNAPSHOT_MAX_LEAVER_FRACTION")
        );
        let err = config(&[("ROSTER_HR_SNAPSHOT_MAX_LEAVERS", "-1")]).unwrap_err();
        assert!(err.to_string().contains("ROSTER_HR_SNAPSHOT_MAX_LEAVERS"));
        let err = config(&[("ROSTER_ALLOW_PRIVATE_TARGETS", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("ROSTER_ALLOW_PRIVATE_TARGETS"));
        for name in [
            "ROSTER_ALLOW_INSECURE_HTTP",
            "ROSTER_HTTP_READ_TIMEOUT_SECS",
            "ROSTER_MAX_CONNECTIONS",
            "ROSTER_RECONCILE_CONCURRENCY",
            "ROSTER_HR_SNAPSHOT_LEASE_SECS",
        ] {
            let err = config(&[(name, "maybe")]).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
        let err = config(&[("ROSTER_RECONCILE_CONCURRENCY", "0")]).unwrap_err();
        assert!(
            err.to_string().contains("ROSTER_RECONCILE_CONCURRENCY"),
            "{err}"
        );
        assert_eq!(
            config(&[("ROSTER_RECONCILE_CONCURRENCY", "5")])
                .unwrap()
                .reconcile_concurrency,
            5
        );
        let err = config(&[("ROSTER_TLS_CERT", "/etc/roster/cert.pem")]).unwrap_err();
        assert!(err.to_string().contains("ROSTER_TLS_KEY"), "{err}");
        let c = config(&[
            ("ROSTER_ALLOW_INSECURE_HTTP", "true"),
            ("ROSTER_HTTP_READ_TIMEOUT_SECS", "2"),
            ("ROSTER_MAX_CONNECTIONS", "10"),
            ("ROSTER_HR_SNAPSHOT_LEASE_SECS", "3"),
        ])
        .unwrap();
        assert_eq!(c.hr_snapshot_lease, std::time::Duration::from_secs(3));
        assert!(c.allow_insecure_http);
        assert_eq!(c.http_read_timeout, std::time::Duration::from_secs(2));
        assert_eq!(c.max_connections, 10);
        assert!(
            config(&[("ROSTER_ALLOW_PRIVATE_TARGETS", "TRUE")])
                .unwrap()
                .allow_private_targets
        );
    }
}
