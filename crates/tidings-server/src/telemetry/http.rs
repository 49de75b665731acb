//! [`ExportClient`]: the HTTP client that carries OTLP requests.
//!
//! The SDK's batch span processor exports from a thread of its own, outside
//! any tokio runtime, while the async HTTP clients need one; the blocking
//! client that `opentelemetry-otlp` offers instead would bring a second
//! version of reqwest into the binary. So the request is handed to the
//! server's runtime, with the reqwest the server already links, and the
//! exporting thread only waits for its answer.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use opentelemetry_http::{HttpClient, HttpError};
use thiserror::Error;
use tokio::runtime::Handle;

/// The largest collector answer read: an OTLP answer is a few bytes (a
/// partial-success message at most), anything longer is not one.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Posts OTLP requests on the server's runtime.
#[derive(Debug, Clone)]
pub(crate) struct ExportClient {
    client: reqwest::Client,
    runtime: Handle,
}

/// Why a collector's answer was not read.
#[derive(Debug, Error)]
pub(crate) enum ExportError {
    #[error("the collector's answer is longer than {MAX_RESPONSE_BYTES} bytes")]
    AnswerTooLong,
    #[error("the request was cancelled: {0}")]
    Cancelled(#[from] tokio::task::JoinError),
}

impl ExportClient {
    /// A client whose requests give up after `timeout`, run on the runtime
    /// the caller is in.
    pub(crate) fn new(timeout: Duration) -> Result<ExportClient, reqwest::Error> {
        Ok(ExportClient {
            client: reqwest::Client::builder().timeout(timeout).build()?,
            runtime: Handle::current(),
        })
    }

    async fn exchange(
        client: reqwest::Client,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, HttpError> {
        let mut response = client.execute(reqwest::Request::try_from(request)?).await?;
        let mut answer = Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = std::mem::take(response.headers_mut());
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ExportError::AnswerTooLong.into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(answer.body(body.freeze())?)
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let exchange = self
            .runtime
            .spawn(Self::exchange(self.client.clone(), request));
        exchange.await.map_err(ExportError::Cancelled)?
    }
}
