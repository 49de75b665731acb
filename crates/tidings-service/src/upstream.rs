//! The upstream: the HTTP backend a serverless hub forwards to.
//!
//! Each event is one `POST` to the URL template with `{hub}`, `{category}`
//! and `{event}` filled in (percent-encoded):
//!
//! | category | event | when |
//! |---|---|---|
//! | `connections` | `connected` | a client completed its handshake |
//! | `connections` | `disconnected` | a client left (`error` says why, if it failed) |
//! | `messages` | the method name | a client invoked a hub method |
//!
//! The body is JSON:
//!
//! ```json
//! {"hub": "chat", "category": "messages", "event": "SendMessage",
//!  "connectionId": "…", "userId": "alice", "claims": {"role": ["Admin"]},
//!  "invocationId": "3", "target": "SendMessage", "arguments": ["hi"]}
//! ```
//!
//! and the headers carry the same facts the way Azure SignalR Service
//! names them (`X-ASRS-Hub`, `X-ASRS-Category`, `X-ASRS-Event`,
//! `X-ASRS-Connection-Id`, `X-ASRS-User-Id`), plus the signatures of
//! [`crate::signature`]. A `2xx` answer to a message is its result: the
//! JSON body (an empty body is `null`). Anything else fails the
//! invocation with an [`UpstreamError`]; a `4xx`/`5xx` whose body is
//! `{"error": "text"}` fails it with that text.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use crate::{AccessKeys, signature};

/// Characters left as they are in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Longest error text taken from an upstream answer.
const MAX_ERROR_TEXT: usize = 1024;

/// Where and how a serverless hub reaches its backend.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    template: String,
    timeout: Duration,
    keys: AccessKeys,
}

impl UpstreamOptions {
    /// Posts to `template` (`http(s)://…` with optional `{hub}`,
    /// `{category}` and `{event}` placeholders), with a 10 s timeout,
    /// unsigned until [`keys`](Self::keys) are given.
    pub fn new(template: impl Into<String>) -> Self {
        UpstreamOptions {
            template: template.into(),
            timeout: Duration::from_secs(10),
            keys: AccessKeys::default(),
        }
    }

    /// How long one upstream call may take, connecting included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Signs every request with these keys.
    pub fn keys(mut self, keys: AccessKeys) -> Self {
        self.keys = keys;
        self
    }

    /// The URL template.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Checks the template: an absolute `http` or `https` URL once the
    /// placeholders are filled, and no unknown placeholder.
    pub fn validate(&self) -> Result<(), UpstreamConfigError> {
        let mut rest = self.template.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(UpstreamConfigError::Placeholder(after.to_owned()));
            };
            let name = &after[..close];
            if !matches!(name, "hub" | "category" | "event") {
                return Err(UpstreamConfigError::Placeholder(name.to_owned()));
            }
            rest = &after[close + 1..];
        }
        let sample = fill(&self.template, "hub", "category", "event");
        let url = url::Url::parse(&sample).map_err(|e| UpstreamConfigError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamConfigError::Url(format!(
                "the scheme must be http or https, not '{}'",
                url.scheme()
            )));
        }
        Ok(())
    }
}

/// An unusable upstream template.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamConfigError {
    /// `{name}` is not one of `{hub}`, `{category}`, `{event}`.
    #[error("unknown placeholder '{{{0}}}' (use {{hub}}, {{category}} or {{event}})")]
    Placeholder(String),
    /// Not an absolute http(s) URL.
    #[error("not a valid upstream URL: {0}")]
    Url(String),
}

fn fill(template: &str, hub: &str, category: &str, event: &str) -> String {
    let encode = |s: &str| utf8_percent_encode(s, SEGMENT).to_string();
    template
        .replace("{hub}", &encode(hub))
        .replace("{category}", &encode(category))
        .replace("{event}", &encode(event))
}

/// Why an upstream call did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No answer within the timeout.
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed (refused, reset, DNS, TLS).
    #[error("the upstream is unreachable")]
    Unreachable,
    /// A non-2xx answer; `message` is the `error` text of a JSON body.
    #[error("the upstream answered {status}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// `{"error": "…"}` from the body, if given.
        message: Option<String>,
    },
    /// A 2xx answer whose body is not JSON.
    #[error("the upstream's answer is not JSON")]
    InvalidBody,
}

impl UpstreamError {
    /// The text a client sees in its Completion error.
    pub fn client_text(&self) -> String {
        match self {
            UpstreamError::Status {
                message: Some(message),
                ..
            } => message.clone(),
            other => {
                let mut text = other.to_string();
                if let Some(first) = text.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                text.push('.');
                text
            }
        }
    }
}

/// Who an event is about.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The connection id.
    pub connection_id: String,
    /// The user identifier, if authenticated.
    pub user_id: Option<String>,
    /// The principal's claims, by kind.
    pub claims: Map<String, Value>,
}

/// The HTTP client of one serverless hub.
#[derive(Clone)]
pub struct Upstream {
    hub: String,
    options: UpstreamOptions,
    client: reqwest::Client,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("hub", &self.hub)
            .field("template", &self.options.template)
            .field("timeout", &self.options.timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The upstream of hub `hub`.
    pub fn new(
        hub: impl Into<String>,
        options: UpstreamOptions,
    ) -> Result<Self, UpstreamConfigError> {
        options.validate()?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("tidings/", env!("CARGO_PKG_VERSION")))
            .timeout(options.timeout)
            .build()
            .map_err(|e| UpstreamConfigError::Url(e.to_string()))?;
        Ok(Upstream {
            hub: hub.into(),
            options,
            client,
        })
    }

    /// The URL of an event.
    pub fn url(&self, category: &str, event: &str) -> String {
        fill(&self.options.template, &self.hub, category, event)
    }

    /// Posts an event and returns the answer's JSON (`null` for an empty
    /// body). `fields` are added to the common ones (hub, category, event,
    /// connection, user, claims).
    pub async fn post(
        &self,
        category: &str,
        event: &str,
        caller: &Caller,
        fields: Map<String, Value>,
    ) -> Result<Value, UpstreamError> {
        let mut body = Map::new();
        body.insert("hub".into(), Value::from(self.hub.clone()));
        body.insert("category".into(), Value::from(category));
        body.insert("event".into(), Value::from(event));
        body.insert(
            "connectionId".into(),
            Value::from(caller.connection_id.clone()),
        );
        body.insert(
            "userId".into(),
            caller.user_id.clone().map_or(Value::Null, Value::from),
        );
        body.insert("claims".into(), Value::Object(caller.claims.clone()));
        body.extend(fields);
        let body = Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default());
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let keys = &self.options.keys;
        let mut request = self
            .client
            .post(self.url(category, event))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("X-ASRS-Hub", &self.hub)
            .header("X-ASRS-Category", category)
            .header("X-ASRS-Event", event)
            .header("X-ASRS-Connection-Id", &caller.connection_id)
            .header(signature::TIMESTAMP_HEADER, timestamp.to_string());
        if let Some(user) = &caller.user_id {
            request = request.header("X-ASRS-User-Id", user);
        }
        if !keys.is_empty() {
            request = request
                .header(
                    signature::SIGNATURE_HEADER,
                    signature::sign(keys, timestamp, &body),
                )
                .header(
                    signature::ASRS_SIGNATURE_HEADER,
                    signature::sign_connection_id(keys, &caller.connection_id),
                );
        }
        let timeout = self.options.timeout;
        // The client's own timeout covers connecting and the whole body;
        // this one also bounds anything else the call might wait on.
        let exchange = async {
            let response = request.body(body).send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(UpstreamError::Timeout(timeout)),
            Ok(Err(error)) if error.is_timeout() => return Err(UpstreamError::Timeout(timeout)),
            Ok(Err(error)) => {
                tracing::debug!(hub = %self.hub, %category, %event, error = %error, "upstream unreachable");
                return Err(UpstreamError::Unreachable);
            }
            Ok(Ok(answer)) => answer,
        };
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                .map(|mut text| {
                    if text.len() > MAX_ERROR_TEXT {
                        let mut end = MAX_ERROR_TEXT;
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        text.truncate(end);
                    }
                    text
                });
            return Err(UpstreamError::Status {
                status: status.as_u16(),
                message,
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|_| UpstreamError::InvalidBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_validate() {
        let options = UpstreamOptions::new("http://backend:8080/api/{hub}/{category}/{event}");
        assert!(options.validate().is_ok());
        let upstream = Upstream::new("chat", options).expect("upstream");
        assert_eq!(
            upstream.url("messages", "Send Message/ä"),
            "http://backend:8080/api/chat/messages/Send%20Message%2F%C3%A4"
        );
        assert!(matches!(
            UpstreamOptions::new("http://b/{nope}").validate(),
            Err(UpstreamConfigError::Placeholder(p)) if p == "nope"
        ));
        assert!(UpstreamOptions::new("ftp://b/{event}").validate().is_err());
        assert!(UpstreamOptions::new("not a url").validate().is_err());
        assert!(UpstreamOptions::new("http://b/{event").validate().is_err());
    }

    #[test]
    fn client_texts_are_sentences_or_the_upstream_message() {
        assert_eq!(
            UpstreamError::Unreachable.client_text(),
            "The upstream is unreachable."
        );
        assert_eq!(
            UpstreamError::Status {
                status: 500,
                message: None
            }
            .client_text(),
            "The upstream answered 500."
        );
        assert_eq!(
            UpstreamError::Status {
                status: 403,
                message: Some("not in this room".into())
            }
            .client_text(),
            "not in this room"
        );
    }
}
