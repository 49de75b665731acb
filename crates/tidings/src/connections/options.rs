//! [`ConnectionOptions`]: the settings of the connection layer — which
//! transports are on, how long connections wait, how much they queue.

use std::time::Duration;

/// Settings of one connection endpoint (ASP.NET Core's
/// `HttpConnectionDispatcherOptions`). A hub takes them from its
/// [`HubOptions`](crate::HubOptions); a raw
/// [`ConnectionEndpoint`](crate::connections::ConnectionEndpoint) from
/// [`ConnectionEndpoint::options`](crate::connections::ConnectionEndpoint::options).
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    pub(crate) websockets: bool,
    pub(crate) server_sent_events: bool,
    pub(crate) long_polling: bool,
    pub(crate) long_poll_timeout: Duration,
    pub(crate) disconnect_timeout: Duration,
    pub(crate) outbound_buffer_capacity: usize,
    /// How long a connection may make no write progress while it has
    /// something to deliver before it is closed as a slow consumer.
    pub(crate) transport_send_timeout: Duration,
    pub(crate) maximum_request_body_size: usize,
    /// The largest application message a client may send (`None`:
    /// unlimited); WebSocket frame limits are derived from it.
    pub(crate) maximum_receive_message_size: Option<usize>,
    pub(crate) allow_stateful_reconnects: bool,
    pub(crate) stateful_reconnect_buffer_size: usize,
    /// How long a stateful connection with a full replay buffer may go
    /// without an acknowledgement before it is closed as a slow consumer.
    pub(crate) client_timeout_interval: Duration,
}

impl ConnectionOptions {
    /// Default of [`disconnect_timeout`](Self::disconnect_timeout).
    pub const DEFAULT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(15);
    /// Default of [`outbound_buffer_capacity`](Self::outbound_buffer_capacity).
    pub const DEFAULT_OUTBOUND_BUFFER_CAPACITY: usize = 1024;
    /// Default of [`transport_send_timeout`](Self::transport_send_timeout).
    pub const DEFAULT_TRANSPORT_SEND_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default of [`maximum_request_body_size`](Self::maximum_request_body_size).
    pub const DEFAULT_MAXIMUM_REQUEST_BODY_SIZE: usize = 2 << 20;
    /// Default of [`long_poll_timeout`](Self::long_poll_timeout).
    pub const DEFAULT_LONG_POLL_TIMEOUT: Duration = Duration::from_secs(90);
    /// Default of [`maximum_receive_message_size`](Self::maximum_receive_message_size).
    pub const DEFAULT_MAXIMUM_RECEIVE_MESSAGE_SIZE: usize = 32 * 1024;

    /// Enable or disable the WebSockets transport (enabled by default).
    pub fn websockets(mut self, enabled: bool) -> Self {
        self.websockets = enabled;
        self
    }

    /// Enable or disable the Server-Sent Events transport (enabled by default).
    pub fn server_sent_events(mut self, enabled: bool) -> Self {
        self.server_sent_events = enabled;
        self
    }

    /// Enable or disable the Long Polling transport (enabled by default).
    pub fn long_polling(mut self, enabled: bool) -> Self {
        self.long_polling = enabled;
        self
    }

    /// How long a poll is held open without data before an empty answer
    /// (ASP.NET Core's 90 s).
    pub fn long_poll_timeout(mut self, value: Duration) -> Self {
        self.long_poll_timeout = value;
        self
    }

    /// How long a negotiated connection may wait for its transport, and a
    /// Long Polling client between two polls (15 s).
    pub fn disconnect_timeout(mut self, value: Duration) -> Self {
        self.disconnect_timeout = value;
        self
    }

    /// How many messages may wait in one connection's outbound queue
    /// (1024); see [`Connection::try_send`](crate::connections::Connection::try_send).
    pub fn outbound_buffer_capacity(mut self, value: usize) -> Self {
        self.outbound_buffer_capacity = value.max(1);
        self
    }

    /// How long a connection may make no write progress while it has
    /// something to deliver (ASP.NET Core's `TransportSendTimeout`, 10 s)
    /// before it is closed as a slow consumer; see
    /// [`HubOptions::transport_send_timeout`](crate::HubOptions::transport_send_timeout).
    pub fn transport_send_timeout(mut self, value: Duration) -> Self {
        self.transport_send_timeout = value;
        self
    }

    /// The largest body of one `POST` of the Server-Sent Events and Long
    /// Polling transports, in bytes (2 MiB).
    pub fn maximum_request_body_size(mut self, value: usize) -> Self {
        self.maximum_request_body_size = value.max(1);
        self
    }

    /// The largest message a client may send over a WebSocket, in bytes
    /// (32 KiB; `None`: unlimited): frames are accepted up to four times
    /// that, at least 1 MiB.
    pub fn maximum_receive_message_size(mut self, value: Option<usize>) -> Self {
        self.maximum_receive_message_size = value;
        self
    }
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            websockets: true,
            server_sent_events: true,
            long_polling: true,
            long_poll_timeout: Self::DEFAULT_LONG_POLL_TIMEOUT,
            disconnect_timeout: Self::DEFAULT_DISCONNECT_TIMEOUT,
            outbound_buffer_capacity: Self::DEFAULT_OUTBOUND_BUFFER_CAPACITY,
            transport_send_timeout: Self::DEFAULT_TRANSPORT_SEND_TIMEOUT,
            maximum_request_body_size: Self::DEFAULT_MAXIMUM_REQUEST_BODY_SIZE,
            maximum_receive_message_size: Some(Self::DEFAULT_MAXIMUM_RECEIVE_MESSAGE_SIZE),
            allow_stateful_reconnects: false,
            stateful_reconnect_buffer_size: 100_000,
            client_timeout_interval: Duration::from_secs(30),
        }
    }
}
