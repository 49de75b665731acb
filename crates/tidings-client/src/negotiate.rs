//! The negotiate request (`POST {hub}/negotiate?negotiateVersion=1`), redirects, and the URLs
//! derived from a hub URL.

use http::{Method, StatusCode};
use tidings_protocol::NegotiateResponse;
use url::Url;

use crate::{
    StartError,
    transport::http::{Http, status_error},
};

/// Redirects followed before giving up, as in the JavaScript client.
const MAX_REDIRECTS: usize = 100;

/// A usable negotiate answer and the hub URL it applies to (after redirects).
#[derive(Debug)]
pub(crate) struct Negotiated {
    pub(crate) url: Url,
    pub(crate) response: NegotiateResponse,
}

impl Negotiated {
    /// The `id` to connect with: the connection token (version 1), or the connection id
    /// (version 0, where they are the same).
    pub(crate) fn token(&self) -> Option<&str> {
        self.response
            .connection_token
            .as_deref()
            .or(self.response.connection_id.as_deref())
    }
}

/// `{hub}/negotiate` with the hub URL's query, `negotiateVersion=1` unless the query already has a
/// version, and `useStatefulReconnect=true` when asked for.
pub(crate) fn negotiate_url(hub: &Url, stateful: bool) -> Url {
    let mut url = hub.clone();
    let path = url.path();
    let path = if path.ends_with('/') {
        format!("{path}negotiate")
    } else {
        format!("{path}/negotiate")
    };
    url.set_path(&path);
    let has = |key: &str| url.query_pairs().any(|(k, _)| k.eq_ignore_ascii_case(key));
    let add_version = !has("negotiateVersion");
    let add_stateful = stateful && !has("useStatefulReconnect");
    if add_version || add_stateful {
        let mut query = url.query_pairs_mut();
        if add_version {
            query.append_pair("negotiateVersion", "1");
        }
        if add_stateful {
            query.append_pair("useStatefulReconnect", "true");
        }
    }
    url
}

/// The hub URL with `id={token}` added (the URL of the transport requests).
pub(crate) fn connect_url(hub: &Url, token: Option<&str>) -> Url {
    let mut url = hub.clone();
    if let Some(token) = token {
        url.query_pairs_mut().append_pair("id", token);
    }
    url
}

/// Negotiates, following redirects (a redirect's `accessToken` becomes the bearer token).
pub(crate) async fn negotiate(
    http: &Http,
    hub: &Url,
    stateful: bool,
) -> Result<Negotiated, StartError> {
    let mut url = hub.clone();
    for _ in 0..MAX_REDIRECTS {
        let response = http
            .request(
                Method::POST,
                &negotiate_url(&url, stateful),
                Some(bytes::Bytes::new()),
                &[],
                Some(http.timeout),
                true,
            )
            .await
            .map_err(|e| StartError::Negotiate(e.to_string()))?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let error = status_error(response).await;
            let hint = if status == StatusCode::NOT_FOUND {
                " Either this is not a SignalR endpoint or there is a proxy blocking the connection."
            } else {
                ""
            };
            return Err(StartError::Negotiate(format!("{error}{hint}")));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| StartError::Negotiate(e.to_string()))?;
        let mut answer: NegotiateResponse = serde_json::from_slice(&body)
            .map_err(|e| StartError::Negotiate(format!("invalid negotiate response: {e}")))?;
        if let Some(error) = answer.error {
            return Err(StartError::NegotiateRejected(error));
        }
        if let Some(target) = answer.url.take() {
            url = Url::parse(&target).map_err(|e| {
                StartError::Negotiate(format!("invalid redirect URL '{target}': {e}"))
            })?;
            if let Some(token) = answer.access_token.take() {
                http.auth.set_fixed(token);
            }
            tracing::debug!("negotiate redirected");
            continue;
        }
        if answer.use_stateful_reconnect == Some(true) && !stateful {
            return Err(StartError::UnexpectedStatefulReconnect);
        }
        if answer.negotiate_version.unwrap_or(0) < 1 {
            // Version 0: the connection id is also the token.
            answer.connection_token = answer.connection_id.clone();
        }
        return Ok(Negotiated {
            url,
            response: answer,
        });
    }
    Err(StartError::RedirectLimit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("valid test URL")
    }

    #[test]
    fn negotiate_url_keeps_the_query_and_adds_the_version_once() {
        assert_eq!(
            negotiate_url(&url("http://h/hub"), false).as_str(),
            "http://h/hub/negotiate?negotiateVersion=1"
        );
        assert_eq!(
            negotiate_url(&url("http://h/hub/?a=b"), true).as_str(),
            "http://h/hub/negotiate?a=b&negotiateVersion=1&useStatefulReconnect=true"
        );
        assert_eq!(
            negotiate_url(&url("http://h/hub?negotiateVersion=0"), false).as_str(),
            "http://h/hub/negotiate?negotiateVersion=0"
        );
    }

    #[test]
    fn connect_url_appends_the_id() {
        assert_eq!(
            connect_url(&url("http://h/hub?x=1"), Some("tok")).as_str(),
            "http://h/hub?x=1&id=tok"
        );
        assert_eq!(
            connect_url(&url("http://h/hub"), None).as_str(),
            "http://h/hub"
        );
    }
}
