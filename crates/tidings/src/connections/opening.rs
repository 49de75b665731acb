//! Reading a new connection's opening: the bytes the application needs
//! before it accepts or refuses the connection (a hub's handshake), within
//! the application's time limit.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tidings_protocol::TransportType;
use tokio::time::{Instant, sleep_until};

use crate::connections::handler::{Accepted, Application, InboundChunk, Opening};

/// How the opening went.
pub(crate) enum Opened<T> {
    /// Accepted, with the bytes that followed the opening.
    Accepted(Accepted<T>, Vec<u8>),
    /// Refused: send this reply, if any, then close.
    Refused(Option<Bytes>),
    /// The client went away before completing it: send nothing.
    Gone,
}

/// Reads from `inbound` until the application decides.
pub(crate) async fn read<C, S>(
    app: &C,
    inbound: &mut S,
    transport: TransportType,
) -> Opened<C::Opened>
where
    C: Application,
    S: Stream<Item = InboundChunk> + Unpin,
{
    let deadline = sleep_until(Instant::now() + app.opening_timeout());
    tokio::pin!(deadline);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match app.open(&buf, transport) {
            Opening::Accept(accepted) => {
                let leftover = buf.split_off(accepted.consumed.min(buf.len()));
                return Opened::Accepted(accepted, leftover);
            }
            Opening::Refuse(reply) => return Opened::Refused(reply),
            Opening::Pending => {}
        }
        tokio::select! {
            () = &mut deadline => return Opened::Refused(app.opening_expired()),
            chunk = inbound.next() => match chunk {
                Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
                _ => return Opened::Gone,
            },
        }
    }
}
