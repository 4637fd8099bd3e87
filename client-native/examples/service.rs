//! A service talking to a Sockeye server: authentication headers, a token provider, typed requests, error
//! codes, a subscription, a handler for the server's requests, and why the connection was lost.
//!
//! ```text
//! cargo run -p sockeye --example service                              # starts its own reference server
//! cargo run -p sockeye --example service -- ws://127.0.0.1:8080/ws    # or talks to yours
//! ```
//!
//! Against your own server, the token comes from `SOCKEYE_TOKEN` (e.g. start the reference server with
//! `sockeye-server --token s3cret` and run with `SOCKEYE_TOKEN=s3cret`).

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sockeye::{Client, ClientEvent, Error, ErrorCode, SubscriptionItem};

/// The request and reply of the server's `add` method (in the embedded server below).
#[derive(Serialize, Deserialize, Debug)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Serialize, Deserialize, Debug)]
struct Sum {
    sum: i64,
}

#[derive(Deserialize, Debug)]
struct WhoAmI {
    identity: String,
    connection: u64,
}

/// A stand-in for a token service: called before every connection attempt, so a rotated token is picked up
/// on the next reconnect.
async fn fetch_token(embedded: Option<&str>) -> Result<String, std::io::Error> {
    match embedded {
        Some(token) => Ok(token.to_owned()),
        None => std::env::var("SOCKEYE_TOKEN")
            .map_err(|_| std::io::Error::other("SOCKEYE_TOKEN is not set")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("sockeye=info")
        .init();

    // Without a URL, run against an embedded reference server that accepts the token "s3cret".
    let (url, embedded_server) = match std::env::args().nth(1) {
        Some(url) => (url, None),
        None => {
            let server = sockeye_server::Server::builder()
                .bind("127.0.0.1:0".parse()?)
                .tokens(["s3cret"])
                .method(
                    "add",
                    |_ctx: sockeye_server::Context, req: Add| async move {
                        Ok::<_, sockeye_server::RpcError>(Sum { sum: req.a + req.b })
                    },
                )
                .start()
                .await?;
            (server.ws_url(), Some(server))
        }
    };

    let embedded = embedded_server.is_some().then_some("s3cret");
    let client = Client::builder(url)
        // Sent on every upgrade. Values are never logged.
        .header("X-Service-Name", "billing")
        .header("X-Request-Source", "example")
        // `Authorization: Bearer <token>`, fetched afresh for every attempt.
        .token_provider(move || fetch_token(embedded))
        .max_attempts(Some(5))
        .base_delay(Duration::from_millis(250))
        .request_timeout(Duration::from_secs(5))
        // Answer the server's own requests for `health`.
        .on_request("health", |_: ()| async { Ok::<_, Error>("ok") })
        .connect()
        .await?;

    // What happens to the connection, as it happens: the close code and reason, and whether it comes back.
    let mut lifecycle = client.events();
    tokio::spawn(async move {
        while let Some(event) = lifecycle.next().await {
            match event {
                Ok(ClientEvent::Disconnected {
                    code,
                    reason,
                    will_reconnect,
                }) => println!(
                    "disconnected with {code} {:?}; reconnecting: {will_reconnect}",
                    reason.as_str()
                ),
                Ok(other) => println!("{other:?}"),
                Err(e) => println!("{e}"), // fell behind: some events were dropped
            }
        }
    });

    let me: WhoAmI = client.request("whoami", &()).await?;
    println!(
        "connected as {} (connection {})",
        me.identity, me.connection
    );

    // A typed request; `add` may not exist on your server: the error says so with its protocol code.
    match client.request::<_, Sum>("add", &Add { a: 2, b: 40 }).await {
        Ok(Sum { sum }) => println!("2 + 40 = {sum}"),
        Err(e) if e.code() == ErrorCode::Unimplemented => {
            println!("the server has no `add` method")
        }
        Err(e) => return Err(e.into()),
    }

    // A request with its own deadline.
    match client
        .request::<_, ()>("sleep", &serde_json::json!({ "ms": 1000 }))
        .timeout(Duration::from_millis(100))
        .await
    {
        Err(Error::DeadlineExceeded { .. }) => println!("sleep timed out, as it should"),
        other => println!("sleep: {other:?}"),
    }

    // A subscription: events arrive as typed values; it survives reconnects.
    let mut ticks = client.subscribe::<u64>("ticks")?;
    // Events published before the server acknowledged the subscription would not be delivered.
    ticks.subscribed().await?;
    for n in 1..=3u64 {
        client.publish("ticks", &n).await?;
    }
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), ticks.next()).await
    {
        match event? {
            SubscriptionItem::Event(event) => println!("tick {} (seq {})", event.data, event.seq),
            SubscriptionItem::Gap { from, to } => println!("ticks {from}..={to} were lost"),
            other => println!("{other:?}"),
        }
    }

    client.close().await;
    Ok(())
}
