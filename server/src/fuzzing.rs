//! Entry points for fuzz targets: the server's per-connection protocol ([`crate::sim`], the same sessions as
//! the tokio server) without sockets. Not a stable API: hidden from the docs, and it may change with the code
//! it exercises.

use sockeye_core::time::Instant;

use crate::sim::SimOutput;
use crate::Server;

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
        // The built-in `sleep` creates a tokio timer when first polled: one runtime per thread, reused.
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds");
    }
    let handle = RUNTIME.with(|runtime| runtime.handle().clone());
    let _entered = handle.enter();
    let mut server = Server::builder().simulate();
    let now = Instant::ZERO;
    let connection = server
        .connect(now, None)
        .expect("a new server takes connections");
    let mut outcome = Outcome {
        frames_out: 0,
        closed: None,
    };
    let take = |server: &mut crate::sim::SimServer, outcome: &mut Outcome| {
        while let Some(output) = server.poll_output(connection) {
            match output {
                SimOutput::Text(_) | SimOutput::Binary(_) => outcome.frames_out += 1,
                SimOutput::Close { code, reason } => outcome.closed = Some((code.0, reason)),
                SimOutput::PeerClosed | SimOutput::Gone => {}
            }
        }
        server.is_open(connection)
    };
    take(&mut server, &mut outcome);
    for frame in frames {
        match frame {
            Frame::Text(text) => server.handle_text(now, connection, text),
            Frame::Binary(bytes) => server.handle_binary(now, connection, bytes),
        }
        if !take(&mut server, &mut outcome) {
            break;
        }
    }
    outcome
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
