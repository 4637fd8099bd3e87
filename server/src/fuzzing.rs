//! Entry points for fuzz targets: the server's per-connection input handling without sockets. Not a stable
//! API: hidden from the docs, and it may change with the code it exercises.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Message;

use crate::app::App;
use crate::config::Config;
use crate::server::Shared;

/// One inbound WebSocket data message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// What the connection did with the frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// WebSocket messages it wrote (`ready` included).
    pub frames_out: usize,
    /// The close code and reason, when it closed.
    pub closed: Option<(u16, String)>,
}

/// Feeds `frames` in order to one fresh connection (past `ready`) of a server with the default settings
/// (built-in methods on, auth off), taking its output after each; stops at the first close. Every call
/// starts from a new server. A panic here is a bug in the server.
pub fn feed_frames(frames: &[Frame]) -> Outcome {
    thread_local! {
        // Built-in `sleep` needs tokio's timer; one runtime per thread, reused across calls.
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds");
    }
    let config = Config::default();
    let ws_config = config.limits.websocket_config(config.fragment_threshold);
    let shared = Arc::new(Shared::new(config, App::default(), ws_config, None));
    let messages = frames
        .iter()
        .map(|frame| match frame {
            Frame::Text(text) => Message::text(text.as_str()),
            Frame::Binary(bytes) => Message::binary(bytes.clone()),
        })
        .collect();
    let (frames_out, closed) = RUNTIME
        .with(|runtime| runtime.block_on(async { crate::connection::feed(shared, messages) }));
    Outcome { frames_out, closed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(cbor: &[u8]) -> Frame {
        let mut frame = vec![0x00];
        frame.extend_from_slice(cbor);
        Frame::Binary(frame)
    }

    #[test]
    fn frames_are_answered_without_a_socket() {
        // {"t": "req", "id": 1, "m": "echo"}
        let echo = complete(&[
            0xa3, 0x61, b't', 0x63, b'r', b'e', b'q', 0x62, b'i', b'd', 0x01, 0x61, b'm', 0x64,
            b'e', b'c', b'h', b'o',
        ]);
        let outcome = feed_frames(&[Frame::Text("ping".into()), echo]);
        // ready, pong, res
        assert_eq!(outcome.frames_out, 3);
        assert_eq!(outcome.closed, None);
    }

    #[test]
    fn bad_input_ends_in_the_documented_close() {
        let outcome = feed_frames(&[Frame::Binary(vec![0x07]), Frame::Text("ping".into())]);
        assert_eq!(outcome.closed.map(|(code, _)| code), Some(1002));
        let outcome = feed_frames(&[Frame::Text("hello".into())]);
        assert_eq!(outcome.closed.map(|(code, _)| code), Some(1002));
    }
}
