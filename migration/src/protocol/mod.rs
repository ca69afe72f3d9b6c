//! tern's migration wire protocol: frames, messages, and its errors.
//! `migration/PROTOCOL.md` is the specification.

pub mod frame;
pub mod messages;
pub mod run_frame;

/// Everything that can go wrong reading or writing the stream.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer closed the stream at a frame boundary.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// The stream ended inside a frame.
    #[error("stream truncated at byte {offset} (inside the {what})")]
    Truncated {
        /// Stream offset.
        offset: u64,
        /// Which part of the frame.
        what: &'static str,
    },
    /// The bytes are not a valid frame.
    #[error("stream corrupt at byte {offset}: {what}")]
    Corrupt {
        /// Stream offset of the frame.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A well-framed message has invalid content.
    #[error("invalid message of kind {kind}: {what}")]
    BadMessage {
        /// Message kind.
        kind: u16,
        /// What is wrong.
        what: String,
    },
    /// The first message is not a tern handshake.
    #[error("not a tern migration stream")]
    NotTern,
    /// The peers speak different protocol versions.
    #[error("protocol version mismatch: this tern speaks {ours}, the peer {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// A message arrived where the protocol does not allow it.
    #[error("unexpected {got} while {state}")]
    Unexpected {
        /// What arrived.
        got: String,
        /// What the receiver was doing.
        state: &'static str,
    },
    /// Socket error.
    #[error("I/O error on the migration stream")]
    Io(#[source] std::io::Error),
}
