//! Authentication (PROTOCOL §5) and the origin allowlist.

use std::time::Duration;

use futures_util::SinkExt;
use sockeye_server::{Identity, Server};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// Upgrades (which must succeed) and expects a close with `code` before any `ready`.
async fn expect_refused(url: &str, headers: &[(&str, &str)], code: u16) {
    let (mut ws, response) = connect_with(url, headers, true)
        .await
        .expect("the upgrade completes");
    assert_eq!(
        response.status(),
        101,
        "refusal is a close after the upgrade, never an HTTP status"
    );
    let texts = expect_close(&mut ws, code).await;
    assert!(
        !texts.iter().any(|t| t == "ready"),
        "ready was sent to a refused connection"
    );
}

#[tokio::test]
async fn a_valid_token_in_the_header_or_the_query_is_accepted() {
    let server = start(Server::builder().tokens(["alpha", "beta+/="])).await;
    let url = server.ws_url();
    let mut ws = connect_url(&url, &[("Authorization", "Bearer alpha")]).await;
    let reply = call(&mut ws, 1, "whoami", None).await;
    assert_eq!(
        get_text(&expect_res(&reply, 1).expect("d"), "identity"),
        Some("token-1")
    );

    let mut ws = connect_url(&format!("{url}?token=beta%2B%2F%3D"), &[]).await;
    let reply = call(&mut ws, 1, "whoami", None).await;
    assert_eq!(
        get_text(&expect_res(&reply, 1).expect("d"), "identity"),
        Some("token-2")
    );
    assert_eq!(server.stats().auth_failures, 0);
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_closed_with_4003_before_ready() {
    let server = start(Server::builder().tokens(["alpha"])).await;
    let url = server.ws_url();
    expect_refused(&url, &[], 4003).await;
    expect_refused(&url, &[("Authorization", "Bearer wrong")], 4003).await;
    expect_refused(&url, &[("Authorization", "Bearer alph")], 4003).await;
    expect_refused(&format!("{url}?token=wrong"), &[], 4003).await;
    expect_refused(&format!("{url}?token="), &[], 4003).await;
    assert_eq!(server.stats().auth_failures, 5);
    // A good connection is unaffected.
    let mut ws = connect_url(&url, &[("Authorization", "Bearer alpha")]).await;
    assert_alive(&mut ws, 1).await;
}

#[tokio::test]
async fn a_verifier_decides_the_identity() {
    let server = start(Server::builder().verifier(|credentials| async move {
        match credentials.token.as_deref() {
            Some(token) if token.starts_with("user:") => Some(Identity::new(&token[5..])),
            _ => None,
        }
    }))
    .await;
    let url = server.ws_url();
    let mut ws = connect_url(&format!("{url}?token=user:ada"), &[]).await;
    let reply = call(&mut ws, 1, "whoami", None).await;
    assert_eq!(
        get_text(&expect_res(&reply, 1).expect("d"), "identity"),
        Some("ada")
    );
    expect_refused(&url, &[("Authorization", "Bearer admin")], 4003).await;
    expect_refused(&url, &[], 4003).await;
}

#[tokio::test]
async fn a_binary_frame_before_ready_is_closed_with_1008() {
    // A slow verifier keeps the connection before `ready` long enough for the client to misbehave.
    let server = start(Server::builder().verifier(|_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(Identity::new("slow"))
    }))
    .await;
    let (mut ws, _) = connect_with(&server.ws_url(), &[], true)
        .await
        .expect("upgrade");
    send(&mut ws, &req(1, "echo", None)).await;
    let texts = expect_close(&mut ws, 1008).await;
    assert!(
        texts.is_empty(),
        "nothing may come before the close: {texts:?}"
    );

    // `ping` before ready is still answered, and `ready` follows once the verifier is done.
    let (mut ws, _) = connect_with(&server.ws_url(), &[], true)
        .await
        .expect("upgrade");
    ws.send(Message::text("ping")).await.expect("send ping");
    expect_text(&mut ws, "pong").await;
    expect_text(&mut ws, "ready").await;
    assert_alive(&mut ws, 1).await;
}

#[tokio::test]
async fn origins_outside_the_allowlist_are_closed_with_1008_before_ready() {
    let server = start(Server::builder().allow_origin("http://good.example")).await;
    let url = server.ws_url();
    let mut ws = connect_url(&url, &[("Origin", "http://good.example")]).await;
    assert_alive(&mut ws, 1).await;
    // Not a browser: no Origin header, allowed.
    let mut ws = connect_url(&url, &[]).await;
    assert_alive(&mut ws, 1).await;
    expect_refused(&url, &[("Origin", "http://evil.example")], 1008).await;
    expect_refused(&url, &[("Origin", "http://good.example.evil")], 1008).await;
}

/// Connects with headers appended as given (repeats kept, values as raw bytes), without waiting for `ready`.
async fn connect_raw_headers(url: &str, headers: &[(&str, &[u8])]) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut request = url.into_client_request().expect("a valid URL");
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid name"),
            HeaderValue::from_bytes(value).expect("a valid value"),
        );
    }
    let (ws, response) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
        .expect("the upgrade completes");
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test]
async fn repeated_or_non_text_origins_are_refused_with_1008() {
    let server = start(Server::builder().allow_origin("http://good.example")).await;
    let url = server.ws_url();
    for headers in [
        // Not text: it must not count as absent.
        &[("Origin", &b"http://good.example\xff"[..])][..],
        &[("Origin", b"http://\xc3\x28.example")],
        // Two of them: neither wins.
        &[
            ("Origin", b"http://evil.example"),
            ("Origin", b"http://good.example"),
        ],
        &[
            ("Origin", b"http://good.example"),
            ("Origin", b"http://good.example"),
        ],
    ] {
        let mut ws = connect_raw_headers(&url, headers).await;
        let texts = expect_close(&mut ws, 1008).await;
        assert!(texts.is_empty(), "{headers:?}: {texts:?}");
    }
    let mut ws = connect_raw_headers(&url, &[("Origin", b"http://good.example")]).await;
    expect_text(&mut ws, "ready").await;
}

#[tokio::test]
async fn repeated_or_non_text_credentials_are_refused_with_4003() {
    let server = start(Server::builder().tokens(["alpha"])).await;
    let url = server.ws_url();
    for (url, headers) in [
        (
            url.clone(),
            &[
                ("Authorization", &b"Bearer wrong"[..]),
                ("Authorization", b"Bearer alpha"),
            ][..],
        ),
        (
            url.clone(),
            &[
                ("Authorization", &b"Bearer alpha"[..]),
                ("Authorization", b"Bearer alpha"),
            ],
        ),
        // A header that is not text does not fall back to the query.
        (
            format!("{url}?token=alpha"),
            &[("Authorization", &b"Bearer \xff"[..])],
        ),
        (format!("{url}?token=wrong&token=alpha"), &[]),
    ] {
        let mut ws = connect_raw_headers(&url, headers).await;
        let texts = expect_close(&mut ws, 4003).await;
        assert!(texts.is_empty(), "{headers:?}: {texts:?}");
    }
    let mut ws = connect_raw_headers(&url, &[("Authorization", b"Bearer alpha")]).await;
    expect_text(&mut ws, "ready").await;
}
