//! PEM certificates and private keys: the checks on an app's `tls` settings, and the rustls
//! server configuration of roster's own listener and of the dev-target.
//!
//! Pure: no IO, and the clock is passed in (`now`, Unix seconds).
use std::sync::Arc;

use rustls::pki_types::pem::SectionKind;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The largest `tls.ca_pem` accepted (a CA bundle; the system bundle is about 200 kB).
pub const MAX_CA_BUNDLE_BYTES: usize = 1_000_000;
/// The largest `tls.client_cert_pem` (a certificate and its chain).
pub const MAX_CERT_PEM_BYTES: usize = 256 * 1024;
/// The largest `tls.client_key_pem`.
pub const MAX_KEY_PEM_BYTES: usize = 64 * 1024;

/// Why PEM text was refused, with the field it came in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PemError {
    pub field: &'static str,
    pub reason: String,
}

fn refuse(field: &'static str, reason: impl Into<String>) -> PemError {
    PemError {
        field,
        reason: reason.into(),
    }
}

/// Every PEM section of `pem`, in order; an error when there is none or one is malformed.
fn sections(field: &'static str, pem: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, PemError> {
    let mut reader = pem;
    let mut found = Vec::new();
    loop {
        match rustls::pki_types::pem::from_buf(&mut reader) {
            Ok(Some(section)) => found.push(section),
            Ok(None) => break,
            Err(e) => return Err(refuse(field, format!("not valid PEM: {e}"))),
        }
    }
    if found.is_empty() {
        return Err(refuse(
            field,
            "no PEM block found (expected `-----BEGIN …-----`)",
        ));
    }
    Ok(found)
}

fn is_private_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// The certificates of `pem`, which must hold certificates only (a private key in a readable
/// field would be shown to every reader of the app).
pub fn certificates(
    field: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let mut certs = Vec::new();
    for (kind, der) in sections(field, pem)? {
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            kind if is_private_key(kind) => {
                return Err(refuse(
                    field,
                    "holds a private key: certificates only here (a client key goes in \
                     `tls.client_key_pem`, which is never shown)",
                ));
            }
            _ => {}
        }
    }
    if certs.is_empty() {
        return Err(refuse(field, "holds no `CERTIFICATE` block"));
    }
    Ok(certs)
}

/// The one private key of `pem`: exactly one key block and nothing else.
pub fn private_key(field: &'static str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    let mut keys = Vec::new();
    for (kind, der) in sections(field, pem)? {
        match kind {
            SectionKind::PrivateKey => keys.push(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => keys.push(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => keys.push(PrivateKeyDer::Sec1(der.into())),
            SectionKind::Certificate => {
                return Err(refuse(
                    field,
                    "holds a certificate: the private key only here (the certificate and its \
                     chain go in `tls.client_cert_pem`)",
                ));
            }
            _ => return Err(refuse(field, "holds something other than a private key")),
        }
    }
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 => Err(refuse(field, "holds no private key")),
        n => Err(refuse(field, format!("holds {n} private keys; give one"))),
    }
}

/// `Err(reason)` unless `cert` is valid at `now` (Unix seconds).
fn check_validity(cert: &CertificateDer<'_>, now: i64) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let validity = parsed.validity();
    let subject = parsed.subject().to_string();
    if now > validity.not_after.timestamp() {
        return Err(format!(
            "the certificate `{subject}` expired on {}",
            validity.not_after
        ));
    }
    if now < validity.not_before.timestamp() {
        return Err(format!(
            "the certificate `{subject}` is not valid before {}",
            validity.not_before
        ));
    }
    Ok(())
}

/// Checks a CA bundle (`tls.ca_pem`): at most [`MAX_CA_BUNDLE_BYTES`], certificates only,
/// each a parsable X.509 certificate, and at least one valid at `now` (a bundle may carry an
/// old root beside the current one). Returns how many certificates it holds.
pub fn check_ca_bundle(pem: &str, now: i64) -> Result<usize, PemError> {
    const FIELD: &str = "tls.ca_pem";
    if pem.len() > MAX_CA_BUNDLE_BYTES {
        return Err(refuse(
            FIELD,
            format!(
                "{} bytes; a CA bundle may have at most {MAX_CA_BUNDLE_BYTES}",
                pem.len()
            ),
        ));
    }
    let certs = certificates(FIELD, pem.as_bytes())?;
    let mut last_reason = None;
    let mut valid = 0;
    for cert in &certs {
        match check_validity(cert, now) {
            Ok(()) => valid += 1,
            Err(reason) if reason.starts_with("not a valid") => return Err(refuse(FIELD, reason)),
            Err(reason) => last_reason = Some(reason),
        }
    }
    if valid == 0 {
        return Err(refuse(
            FIELD,
            last_reason.unwrap_or_else(|| "no valid certificate".into()),
        ));
    }
    Ok(certs.len())
}

/// Checks a client certificate (`tls.client_cert_pem`, the certificate first, then its chain)
/// and its private key (`tls.client_key_pem`): sizes, PEM, the certificate valid at `now`, and
/// the key the certificate's.
pub fn check_client_identity(cert_pem: &str, key_pem: &[u8], now: i64) -> Result<(), PemError> {
    const CERT: &str = "tls.client_cert_pem";
    const KEY: &str = "tls.client_key_pem";
    if cert_pem.len() > MAX_CERT_PEM_BYTES {
        return Err(refuse(
            CERT,
            format!("more than {MAX_CERT_PEM_BYTES} bytes"),
        ));
    }
    if key_pem.len() > MAX_KEY_PEM_BYTES {
        return Err(refuse(KEY, format!("more than {MAX_KEY_PEM_BYTES} bytes")));
    }
    let chain = certificates(CERT, cert_pem.as_bytes())?;
    check_validity(&chain[0], now).map_err(|reason| refuse(CERT, reason))?;
    let key = private_key(KEY, key_pem)?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => refuse(
            KEY,
            "does not match the certificate in `tls.client_cert_pem` (its public key differs)",
        ),
        other => refuse(KEY, format!("not a usable private key: {other}")),
    })?;
    Ok(())
}

/// A rustls server configuration from PEM: the certificate (then its chain) and key, and,
/// when given, the CA whose client certificates are required (mutual TLS). ALPN offers
/// HTTP/1.1 only.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, PemError> {
    let chain = certificates("certificate", cert_pem)?;
    let key = private_key("key", key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| refuse("certificate", e.to_string()))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("client CA", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| refuse("client CA", e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| refuse("client CA", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| refuse("key", format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_pem_or_is_in_the_wrong_field_is_refused_with_the_reason() {
        let err = check_ca_bundle("not pem at all", 0).unwrap_err();
        assert_eq!(err.field, "tls.ca_pem");
        assert!(err.reason.contains("no PEM block"), "{err}");
        let garbage = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(check_ca_bundle(garbage, 0).is_err());
        let big = "x".repeat(MAX_CA_BUNDLE_BYTES + 1);
        assert!(
            check_ca_bundle(&big, 0)
                .unwrap_err()
                .reason
                .contains("at most")
        );
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = certificates("tls.client_cert_pem", key.as_bytes()).unwrap_err();
        assert!(err.reason.contains("private key"), "{err}");
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = private_key("tls.client_key_pem", cert.as_bytes()).unwrap_err();
        assert!(err.reason.contains("holds a certificate"), "{err}");
        let two = format!("{key}{key}");
        assert!(
            private_key("k", two.as_bytes())
                .unwrap_err()
                .reason
                .contains("2 private keys")
        );
    }
}
