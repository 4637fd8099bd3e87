//! The raw baseline: a tokio-tungstenite echo server with `sockeye-server`'s buffer sizes and TCP_NODELAY.
//!
//! Each connection runs in its own task and echoes every data frame back; it feeds every reply that is
//! ready (up to a batch) and flushes once (PERF.md: 1.41 M vs 0.23 M round trips/s). Prints
//! `listening on ADDR` on stdout, then runs until killed.

use std::io::Write;

use clap::Parser;
use futures_util::{FutureExt, SinkExt, StreamExt};
use sockeye_bench::{ws_config, SERVER_BUFFER};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Frames echoed before a flush, at most.
const BATCH: usize = 64;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: String,
    /// tungstenite read and write buffer size.
    #[arg(long, default_value_t = SERVER_BUFFER)]
    buffer: usize,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream, args.buffer));
    }
}

async fn serve(stream: TcpStream, buffer: usize) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) =
        tokio_tungstenite::accept_async_with_config(stream, Some(ws_config(buffer))).await
    else {
        return;
    };
    while let Some(Ok(first)) = ws.next().await {
        let mut next = Some(first);
        let mut fed = 0;
        while let Some(message) = next.take() {
            match message {
                Message::Binary(_) | Message::Text(_) => {
                    if ws.feed(message).await.is_err() {
                        return;
                    }
                }
                Message::Close(_) => return,
                // tungstenite queues the pong itself; the flush below sends it.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
            fed += 1;
            if fed < BATCH {
                next = match ws.next().now_or_never() {
                    Some(Some(Ok(message))) => Some(message),
                    Some(_) => return,
                    None => None,
                };
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}
