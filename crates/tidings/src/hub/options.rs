//! [`HubOptions`]: per-hub settings, with ASP.NET Core SignalR's defaults.

use std::time::Duration;

use tidings_protocol::Protocol;

use crate::connections::options::ConnectionOptions;

/// Settings of one hub endpoint.
///
/// The defaults are ASP.NET Core's, so clients tuned for it behave the same:
///
/// | setting | default |
/// |---|---|
/// | [`keep_alive_interval`](Self::keep_alive_interval) | 15 s |
/// | [`client_timeout_interval`](Self::client_timeout_interval) | 30 s |
/// | [`handshake_timeout`](Self::handshake_timeout) | 15 s |
/// | [`maximum_receive_message_size`](Self::maximum_receive_message_size) | 32 KiB |
/// | [`enable_detailed_errors`](Self::enable_detailed_errors) | off |
/// | [`maximum_parallel_invocations_per_client`](Self::maximum_parallel_invocations_per_client) | 1 |
/// | [`stream_buffer_capacity`](Self::stream_buffer_capacity) | 10 |
/// | [`disconnect_timeout`](Self::disconnect_timeout) | 15 s |
/// | [`outbound_buffer_capacity`](Self::outbound_buffer_capacity) | 1024 messages |
/// | [`transport_send_timeout`](Self::transport_send_timeout) | 10 s |
/// | [`long_poll_timeout`](Self::long_poll_timeout) | 90 s |
/// | [`client_result_timeout`](Self::client_result_timeout) | 30 s |
/// | [`allow_stateful_reconnects`](Self::allow_stateful_reconnects) | off |
/// | [`stateful_reconnect_buffer_size`](Self::stateful_reconnect_buffer_size) | 100 000 bytes |
/// | [`close_on_authentication_expiration`](Self::close_on_authentication_expiration) | on |
/// | [`maximum_request_body_size`](Self::maximum_request_body_size) | 2 MiB |
/// | transports | WebSockets, Server-Sent Events, Long Polling |
///
/// ```
/// use std::time::Duration;
/// let options = tidings::HubOptions::default()
///     .keep_alive_interval(Duration::from_secs(10))
///     .enable_detailed_errors(true);
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub(crate) keep_alive_interval: Duration,
    pub(crate) client_timeout_interval: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) maximum_receive_message_size: Option<usize>,
    pub(crate) enable_detailed_errors: bool,
    pub(crate) maximum_parallel_invocations_per_client: usize,
    pub(crate) stream_buffer_capacity: usize,
    pub(crate) disconnect_timeout: Duration,
    pub(crate) outbound_buffer_capacity: usize,
    pub(crate) transport_send_timeout: Duration,
    pub(crate) supported_protocols: Vec<Protocol>,
    pub(crate) websockets: bool,
    pub(crate) server_sent_events: bool,
    pub(crate) long_polling: bool,
    pub(crate) long_poll_timeout: Duration,
    pub(crate) client_result_timeout: Duration,
    pub(crate) allow_stateful_reconnects: bool,
    pub(crate) stateful_reconnect_buffer_size: usize,
    pub(crate) close_on_authentication_expiration: bool,
    pub(crate) maximum_request_body_size: usize,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            keep_alive_interval: Self::DEFAULT_KEEP_ALIVE_INTERVAL,
            client_timeout_interval: Self::DEFAULT_CLIENT_TIMEOUT_INTERVAL,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            maximum_receive_message_size: Some(Self::DEFAULT_MAXIMUM_RECEIVE_MESSAGE_SIZE),
            enable_detailed_errors: false,
            maximum_parallel_invocations_per_client:
                Self::DEFAULT_MAXIMUM_PARALLEL_INVOCATIONS_PER_CLIENT,
            stream_buffer_capacity: Self::DEFAULT_STREAM_BUFFER_CAPACITY,
            disconnect_timeout: Self::DEFAULT_DISCONNECT_TIMEOUT,
            outbound_buffer_capacity: Self::DEFAULT_OUTBOUND_BUFFER_CAPACITY,
            transport_send_timeout: Self::DEFAULT_TRANSPORT_SEND_TIMEOUT,
            supported_protocols: vec![Protocol::Json, Protocol::MessagePack],
            websockets: true,
            server_sent_events: true,
            long_polling: true,
            long_poll_timeout: ConnectionOptions::DEFAULT_LONG_POLL_TIMEOUT,
            client_result_timeout: Self::DEFAULT_CLIENT_RESULT_TIMEOUT,
            allow_stateful_reconnects: false,
            stateful_reconnect_buffer_size: Self::DEFAULT_STATEFUL_RECONNECT_BUFFER_SIZE,
            close_on_authentication_expiration: true,
            maximum_request_body_size: Self::DEFAULT_MAXIMUM_REQUEST_BODY_SIZE,
        }
    }
}

// The defaults as constants, so that a configuration layer (the standalone
// server's flags and file) can show and reuse them instead of restating them.
impl HubOptions {
    /// Default of [`keep_alive_interval`](Self::keep_alive_interval).
    pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
    /// Default of [`client_timeout_interval`](Self::client_timeout_interval).
    pub const DEFAULT_CLIENT_TIMEOUT_INTERVAL: Duration = Duration::from_secs(30);
    /// Default of [`handshake_timeout`](Self::handshake_timeout).
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
    /// Default of [`maximum_receive_message_size`](Self::maximum_receive_message_size).
    pub const DEFAULT_MAXIMUM_RECEIVE_MESSAGE_SIZE: usize =
        ConnectionOptions::DEFAULT_MAXIMUM_RECEIVE_MESSAGE_SIZE;
    /// Default of [`maximum_parallel_invocations_per_client`](Self::maximum_parallel_invocations_per_client).
    pub const DEFAULT_MAXIMUM_PARALLEL_INVOCATIONS_PER_CLIENT: usize = 1;
    /// Default of [`stream_buffer_capacity`](Self::stream_buffer_capacity).
    pub const DEFAULT_STREAM_BUFFER_CAPACITY: usize = 10;
    /// Default of [`disconnect_timeout`](Self::disconnect_timeout).
    pub const DEFAULT_DISCONNECT_TIMEOUT: Duration = ConnectionOptions::DEFAULT_DISCONNECT_TIMEOUT;
    /// Default of [`outbound_buffer_capacity`](Self::outbound_buffer_capacity).
    pub const DEFAULT_OUTBOUND_BUFFER_CAPACITY: usize =
        ConnectionOptions::DEFAULT_OUTBOUND_BUFFER_CAPACITY;
    /// Default of [`transport_send_timeout`](Self::transport_send_timeout).
    pub const DEFAULT_TRANSPORT_SEND_TIMEOUT: Duration =
        ConnectionOptions::DEFAULT_TRANSPORT_SEND_TIMEOUT;
    /// Default of [`client_result_timeout`](Self::client_result_timeout).
    pub const DEFAULT_CLIENT_RESULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default of [`stateful_reconnect_buffer_size`](Self::stateful_reconnect_buffer_size).
    pub const DEFAULT_STATEFUL_RECONNECT_BUFFER_SIZE: usize = 100_000;
    /// Default of [`maximum_request_body_size`](Self::maximum_request_body_size).
    pub const DEFAULT_MAXIMUM_REQUEST_BODY_SIZE: usize =
        ConnectionOptions::DEFAULT_MAXIMUM_REQUEST_BODY_SIZE;
}

impl HubOptions {
    /// How long the server may stay silent before it sends a Ping.
    pub fn keep_alive_interval(mut self, value: Duration) -> Self {
        self.keep_alive_interval = value;
        self
    }

    /// How long a client may stay silent (no message, no Ping) before the
    /// server closes it. Armed by the client's first Ping, as in ASP.NET Core.
    pub fn client_timeout_interval(mut self, value: Duration) -> Self {
        self.client_timeout_interval = value;
        self
    }

    /// How long a client has to complete the handshake.
    pub fn handshake_timeout(mut self, value: Duration) -> Self {
        self.handshake_timeout = value;
        self
    }

    /// The largest single message (framed size) a client may send; `None`
    /// means unlimited. A larger message closes the connection with an error.
    pub fn maximum_receive_message_size(mut self, value: Option<usize>) -> Self {
        self.maximum_receive_message_size = value;
        self
    }

    /// Send the real error text of failing hub methods to clients.
    pub fn enable_detailed_errors(mut self, value: bool) -> Self {
        self.enable_detailed_errors = value;
        self
    }

    /// How many non-streaming invocations of one client may run at once.
    /// Further invocations wait (the server stops reading the connection).
    pub fn maximum_parallel_invocations_per_client(mut self, value: usize) -> Self {
        self.maximum_parallel_invocations_per_client = value.max(1);
        self
    }

    /// How many items of one stream may wait (ASP.NET Core's
    /// `StreamBufferCapacity`, default 10).
    ///
    /// * Client-to-server: each upload stream buffers at most this many
    ///   items the method has not read yet; when the buffer is full the
    ///   server stops reading the connection until the method reads.
    /// * Server-to-client: a streaming method's producer is polled only
    ///   while fewer than this many of its items wait in the connection's
    ///   outbound queue, so a slow client slows the producer down instead
    ///   of filling the queue (and other messages keep their room).
    pub fn stream_buffer_capacity(mut self, value: usize) -> Self {
        self.stream_buffer_capacity = value.max(1);
        self
    }

    /// How long a negotiated connection may wait for its transport, and how
    /// long a stateful-reconnect connection stays alive without a transport
    /// (its reconnect window).
    pub fn disconnect_timeout(mut self, value: Duration) -> Self {
        self.disconnect_timeout = value;
        self
    }

    /// How many messages may wait in one connection's outbound queue.
    ///
    /// This is one half of the slow-consumer rule: a message sent to a
    /// connection whose queue is full (a client that does not read) closes
    /// that connection with
    /// [`ConnectionError::SlowConsumer`](crate::ConnectionError), instead of
    /// letting its memory grow or slowing the sender down. Replies to the
    /// connection's own invocations are not dropped: they wait for room,
    /// which pauses reading from that client. The other half,
    /// [`transport_send_timeout`](Self::transport_send_timeout), bounds how
    /// long a stuck client may hold what is queued.
    pub fn outbound_buffer_capacity(mut self, value: usize) -> Self {
        self.outbound_buffer_capacity = value.max(1);
        self
    }

    /// How long a connection may make no write progress while it has
    /// something to deliver (ASP.NET Core's `TransportSendTimeout`, 10 s).
    ///
    /// This is the other half of the slow-consumer rule (see
    /// [`outbound_buffer_capacity`](Self::outbound_buffer_capacity)): the
    /// connection is closed with
    /// [`ConnectionError::SlowConsumer`](crate::ConnectionError), logged at
    /// WARN and counted under `signalr_connection_status="slow_consumer"`,
    /// when
    ///
    /// * WebSockets: one write (the messages queued at once, up to 64 KiB,
    ///   or a single larger message) has not completed for this long (the
    ///   client's TCP window and the socket's send buffer are full);
    /// * Server-Sent Events: messages have waited this long in the queue
    ///   without the response taking any (the HTTP response is not being
    ///   read);
    /// * Long Polling: messages have waited this long without a poll to
    ///   collect them.
    ///
    /// So a client that stops reading holds the server's memory for at
    /// most this long (after the kernel's socket buffers have filled), and
    /// never more than the queue's capacity. Its backlog is dropped, it
    /// gets no Close message (it would not read it), and its socket is
    /// closed (an SSE response's HTTP/1.1 connection only under
    /// [`serve`](crate::serve), which lets the hub end it).
    pub fn transport_send_timeout(mut self, value: Duration) -> Self {
        self.transport_send_timeout = value;
        self
    }

    /// The hub protocols clients may choose (default: JSON and MessagePack).
    pub fn supported_protocols(mut self, protocols: impl IntoIterator<Item = Protocol>) -> Self {
        self.supported_protocols = protocols.into_iter().collect();
        self
    }

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

    /// How long the server waits for a client result
    /// ([`SingleClientProxy::invoke`](crate::SingleClientProxy::invoke))
    /// before failing it with [`InvokeError::Timeout`](crate::InvokeError::Timeout);
    /// one call can choose its own with
    /// [`ClientInvoke::timeout`](crate::ClientInvoke::timeout).
    ///
    /// ASP.NET Core waits without limit unless the caller passes a
    /// cancellation token; a default limit here means a client that never
    /// answers cannot hold a hub method (and its memory) forever.
    pub fn client_result_timeout(mut self, value: Duration) -> Self {
        self.client_result_timeout = value;
        self
    }

    /// How long a poll is held open without data before an empty answer
    /// (ASP.NET Core's 90 s).
    pub fn long_poll_timeout(mut self, value: Duration) -> Self {
        self.long_poll_timeout = value;
        self
    }

    /// Allow clients to negotiate stateful reconnect (ASP.NET Core's
    /// `AllowStatefulReconnects`, off by default there too).
    ///
    /// A client that asks for it (`withStatefulReconnect()` in the
    /// JavaScript client) and handshakes with protocol version 2 over
    /// WebSockets keeps its connection — id, groups, user, running
    /// invocations and streams — when its socket drops: the server keeps
    /// the connection for [`disconnect_timeout`](Self::disconnect_timeout),
    /// the client opens a new WebSocket with the same connection token, and
    /// both sides replay what the other has not acknowledged, so no message
    /// is lost or delivered twice. A Close message or a WebSocket close
    /// frame from the client still ends the connection at once.
    pub fn allow_stateful_reconnects(mut self, value: bool) -> Self {
        self.allow_stateful_reconnects = value;
        self
    }

    /// How many bytes of sent, unacknowledged messages a stateful-reconnect
    /// connection keeps for replay (ASP.NET Core's
    /// `StatefulReconnectBufferSize`, 100 000 bytes).
    ///
    /// When the buffer is full the server stops taking messages off the
    /// connection's outbound queue until the client acknowledges some, so the
    /// queue fills and the slow-consumer policy of
    /// [`outbound_buffer_capacity`](Self::outbound_buffer_capacity) applies;
    /// a connected client that acknowledges nothing for
    /// [`client_timeout_interval`](Self::client_timeout_interval) while the
    /// buffer is full is closed as a slow consumer too. Memory per connection
    /// stays bounded by this size plus the queue.
    ///
    /// The official clients acknowledge once a second, so this is also about
    /// the most a stateful connection receives per second when it streams
    /// continuously (as with ASP.NET Core); raise it for high-volume streams.
    pub fn stateful_reconnect_buffer_size(mut self, value: usize) -> Self {
        self.stateful_reconnect_buffer_size = value.max(1);
        self
    }

    /// Close a connection when its credentials expire (the `exp` of its
    /// token, see [`Principal::with_expiry`](crate::Principal::with_expiry)),
    /// with a Close message saying so (ASP.NET Core's
    /// `CloseOnAuthenticationExpiration`). The close allows reconnecting, so
    /// a client with a token factory comes back with a fresh token. On by
    /// default.
    pub fn close_on_authentication_expiration(mut self, value: bool) -> Self {
        self.close_on_authentication_expiration = value;
        self
    }

    /// The largest body of one `POST` of the Server-Sent Events and Long
    /// Polling transports, in bytes (default 2 MiB); a larger one is refused
    /// with `413` before it is buffered. WebSocket frames are bounded by
    /// [`maximum_receive_message_size`](Self::maximum_receive_message_size).
    pub fn maximum_request_body_size(mut self, value: usize) -> Self {
        self.maximum_request_body_size = value.max(1);
        self
    }
}

impl HubOptions {
    /// The settings of the connection layer under this hub.
    pub(crate) fn connection_options(&self) -> ConnectionOptions {
        ConnectionOptions {
            websockets: self.websockets,
            server_sent_events: self.server_sent_events,
            long_polling: self.long_polling,
            long_poll_timeout: self.long_poll_timeout,
            disconnect_timeout: self.disconnect_timeout,
            outbound_buffer_capacity: self.outbound_buffer_capacity,
            transport_send_timeout: self.transport_send_timeout,
            maximum_request_body_size: self.maximum_request_body_size,
            maximum_receive_message_size: self.maximum_receive_message_size,
            allow_stateful_reconnects: self.allow_stateful_reconnects,
            stateful_reconnect_buffer_size: self.stateful_reconnect_buffer_size,
            client_timeout_interval: self.client_timeout_interval,
        }
    }
}
