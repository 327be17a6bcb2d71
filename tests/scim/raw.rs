//! Servers that answer badly, written on raw TCP so they can lie about anything.
use std::net::SocketAddr;

use roster::scim::{Auth, ErrorClass, ScimError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::client;

/// Serves `head` then `body_chunks` (each written separately) to every connection.
async fn serve(head: String, body_chunks: Vec<Vec<u8>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let head = head.clone();
            let chunks = body_chunks.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for chunk in chunks {
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

async fn get_user(addr: SocketAddr, max_body: usize) -> ScimError {
    let (c, _) = client(&format!("http://{addr}/v2"), Auth::None, |cfg| {
        cfg.max_body_bytes = max_body;
        cfg.timeout = std::time::Duration::from_secs(5);
    });
    c.users().get("x").await.unwrap_err()
}

#[tokio::test]
async fn a_declared_huge_body_is_refused_before_reading() {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/scim+json\r\nContent-Length: 100000000000\r\nConnection: close\r\n\r\n";
    let addr = serve(head.into(), vec![b"{".to_vec()]).await;
    let err = get_user(addr, 8 * 1024 * 1024).await;
    assert!(matches!(err, ScimError::BadResponse { .. }), "{err:?}");
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[tokio::test]
async fn an_undeclared_huge_body_is_cut_off_at_the_limit() {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/scim+json\r\nConnection: close\r\n\r\n";
    let chunk = vec![b' '; 64 * 1024];
    let addr = serve(head.into(), vec![chunk; 32]).await; // 2 MiB, limit 1 MiB
    let err = get_user(addr, 1024 * 1024).await;
    assert!(err.to_string().contains("larger than"), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn malformed_json_is_a_permanent_error() {
    let body = br#"{"id": "x", "userName": "#;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let err = get_user(serve(head, vec![body.to_vec()]).await, 1024).await;
    assert!(err.to_string().contains("malformed JSON"), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn html_instead_of_scim_is_refused() {
    let body = b"<html>login</html>";
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let err = get_user(serve(head, vec![body.to_vec()]).await, 1024).await;
    assert!(err.to_string().contains("content type"), "{err}");
}

#[tokio::test]
async fn error_bodies_that_are_not_scim_are_truncated() {
    let body = "x".repeat(10_000);
    let head = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nRetry-After: 3\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let err = get_user(serve(head, vec![body.into_bytes()]).await, 1024 * 1024).await;
    assert_eq!(err.status(), Some(500));
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(3)));
    assert!(err.to_string().len() < 500, "{}", err.to_string().len());
}

#[tokio::test]
async fn string_status_and_missing_scim_type_parse() {
    let body = r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"404","detail":"gone"}"#;
    let head = format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let err = get_user(serve(head, vec![body.as_bytes().to_vec()]).await, 1024).await;
    assert!(err.is_not_found());
    assert_eq!(err.scim_type(), None);
    assert!(err.to_string().ends_with(": gone"), "{err}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let head = "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let err = get_user(serve(head.into(), vec![]).await, 1024).await;
    assert_eq!(err.status(), Some(302));
    assert_eq!(err.class(), ErrorClass::Permanent);
}
