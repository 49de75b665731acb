//! The Server-Sent Events framing of the SignalR transport (server to client): every chunk of
//! outgoing hub messages becomes one event.

use bytes::BufMut;

/// Appends one event carrying `payload` (one or more whole hub messages): each line of the payload
/// as a `data: ` line (the space matters to the .NET client), lines ending in CRLF, then a blank
/// line. A client joins the `data` lines with `\n` and gets `payload` back.
///
/// Payloads are the server's own JSON, which never holds a raw CR or LF (JSON escapes them), so in
/// practice every event has exactly one `data` line; a payload with a CR would not survive
/// browsers' `EventSource`, which also ends lines at a lone CR.
///
/// ```
/// let mut out = Vec::new();
/// tidings_protocol::sse::write_event(b"{\"type\":6}\x1e", &mut out);
/// assert_eq!(out, b"data: {\"type\":6}\x1e\r\n\r\n");
/// ```
pub fn write_event(payload: &[u8], out: &mut impl BufMut) {
    for line in payload.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}
