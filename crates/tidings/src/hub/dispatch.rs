//! Dispatch of one invocation: method lookup, argument binding, running the
//! handler, and turning its outcome into the Completion ASP.NET Core would
//! send — error texts included, since clients match on them.

use std::{collections::HashMap, panic::AssertUnwindSafe, sync::Arc};

use futures_util::{FutureExt, StreamExt};
use tidings_protocol::{Completion, HubMessage, Invocation, Payload};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    Context, HubError, Principal,
    auth::Policies,
    error::HubErrorKind,
    hub::{
        call::{Call, MethodOutput, UploadReceivers},
        definition::{Hub, MethodDescriptor, MethodKind},
    },
};

/// The method table of a hub, indexed case-insensitively.
pub(crate) struct Methods<H: 'static> {
    /// By the name as declared: what clients send, found without
    /// allocating.
    exact: HashMap<&'static str, &'static MethodDescriptor<H>>,
    /// By the lowercased name, for clients that spell it otherwise.
    by_name: HashMap<String, &'static MethodDescriptor<H>>,
}

impl<H: Hub> Methods<H> {
    pub(crate) fn new() -> Self {
        let mut exact = HashMap::new();
        let mut by_name = HashMap::new();
        for method in H::methods() {
            let previous = by_name.insert(method.name.to_lowercase(), method);
            assert!(
                previous.is_none(),
                "hub method names must differ case-insensitively: '{}'",
                method.name
            );
            exact.insert(method.name, method);
        }
        Methods { exact, by_name }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'static MethodDescriptor<H>> {
        if let Some(m) = self.exact.get(name) {
            return Some(m);
        }
        self.by_name.get(&name.to_lowercase()).copied()
    }
}

/// What the dispatcher decided before running anything.
pub(crate) enum Prepared<H: 'static> {
    /// Run this method.
    Run(&'static MethodDescriptor<H>),
    /// Reply with this error (if the invocation wants a reply).
    Reject(String),
}

/// Validates an invocation against the method table (ASP.NET Core's order
/// of checks: existence, kind, argument count, stream count).
pub(crate) fn prepare<H: Hub>(
    methods: &Methods<H>,
    invocation: &Invocation,
    streaming: bool,
    detailed: bool,
    (principal, policies): (&Principal, &Policies),
) -> Prepared<H> {
    let target = &invocation.target;
    let found = methods.get(target);
    // ASP.NET Core checks authorization right after finding the method.
    if let Some(requirement) = found.or_else(H::fallback).and_then(|m| m.authorize)
        && policies.check(requirement, principal).is_err()
    {
        return Prepared::Reject(format!(
            "Failed to invoke '{target}' because user is unauthorized"
        ));
    }
    let Some(method) = found else {
        return match H::fallback() {
            Some(fallback) => prepare_fallback(fallback, invocation, streaming),
            None => Prepared::Reject(format!(
                "Failed to invoke '{target}' due to an error on the server. HubException: Method does not exist."
            )),
        };
    };
    match (method.kind, streaming) {
        (MethodKind::Stream, false) => {
            return Prepared::Reject(format!(
                "The client attempted to invoke the streaming '{target}' method with a non-streaming invocation."
            ));
        }
        (MethodKind::Unary, true) => {
            return Prepared::Reject(format!(
                "The client attempted to invoke the non-streaming '{target}' method with a streaming invocation."
            ));
        }
        _ => {}
    }
    let provided = invocation.arguments.len();
    if provided != method.arity {
        let mut text = format!("Failed to invoke '{target}' due to an error on the server.");
        if detailed {
            text.push_str(&format!(
                " InvalidDataException: Invocation provides {provided} argument(s) but target expects {}.",
                method.arity
            ));
        }
        return Prepared::Reject(text);
    }
    let streams = invocation.stream_ids.len();
    if streams != method.stream_params {
        return Prepared::Reject(format!(
            "An unexpected error occurred invoking '{target}' on the server. HubException: Client sent {streams} stream(s), Hub method expects {}.",
            method.stream_params
        ));
    }
    Prepared::Run(method)
}

/// The checks of [`prepare`] that apply to a hub's fallback: a unary
/// method without client streams, taking any number of arguments.
fn prepare_fallback<H: Hub>(
    fallback: &'static MethodDescriptor<H>,
    invocation: &Invocation,
    streaming: bool,
) -> Prepared<H> {
    let target = &invocation.target;
    if streaming {
        return Prepared::Reject(format!(
            "The client attempted to invoke the non-streaming '{target}' method with a streaming invocation."
        ));
    }
    let streams = invocation.stream_ids.len();
    if streams > 0 {
        return Prepared::Reject(format!(
            "An unexpected error occurred invoking '{target}' on the server. HubException: Client sent {streams} stream(s), Hub method expects 0."
        ));
    }
    Prepared::Run(fallback)
}

/// Runs a unary method and builds its Completion (`None` for a
/// non-blocking invocation, which gets no answer).
pub(crate) async fn run_unary<H: Hub>(
    hub: Arc<H>,
    method: &'static MethodDescriptor<H>,
    cx: Context,
    invocation: Invocation,
    uploads: UploadReceivers,
) -> Option<HubMessage> {
    let detailed = cx.options().enable_detailed_errors;
    let protocol = cx.protocol();
    let target = invocation.target;
    let call = Call::new(cx, target.clone(), invocation.arguments, uploads, None);
    // A panicking method must not take the connection down with it: it is
    // reported like any other failure.
    let outcome = AssertUnwindSafe((method.handler)(hub, call))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the hub method panicked".to_owned());
            tracing::error!(%target, panic = %message, "hub method panicked");
            Err(HubError {
                kind: HubErrorKind::Internal {
                    type_name: "Panic".to_owned(),
                    message,
                },
            })
        });
    let id = invocation.invocation_id?;
    let completion = match outcome {
        Ok(MethodOutput::Void) => Completion::value(id, Payload::null(protocol)),
        Ok(MethodOutput::Value(payload)) => Completion::value(id, payload),
        Ok(MethodOutput::Stream(_)) => Completion::error(
            id,
            format!("The value returned by the streaming method '{target}' is not a stream."),
        ),
        Err(error) => Completion::error(id, error_text(&target, &error, detailed)),
    };
    Some(HubMessage::Completion(completion))
}

/// Runs a streaming method: StreamItems, then a Completion without result
/// (or with the error). Cancellation (CancelInvocation, the connection
/// ending, or the server shutting down) cancels `cancel`, which the method
/// may hold (see [`Call::cancellation`]), then drops the stream, which
/// stops its producer, and ends with a Completion.
///
/// The method itself always runs to the point where it returns its stream,
/// even when the cancellation came first (a CancelInvocation right behind
/// its StreamInvocation, possibly in the same frame): ASP.NET Core starts
/// the method before it reads the next message, so a client that streams
/// and disposes at once still sees the method's cleanup and a Completion.
/// A method that waits before returning its stream can watch `cancel`.
///
/// The producer is polled only when fewer than `stream_buffer_capacity` of
/// its items wait in the connection's queue: a client that reads slowly
/// holds the producer back instead of letting it fill the queue.
///
/// Returns the error text of the Completion when it carried one (the
/// outcome hub filters' `after` sees); `Ok` for a stream that ended, was
/// cancelled, or lost its connection.
pub(crate) async fn run_stream<H: Hub>(
    hub: Arc<H>,
    method: &'static MethodDescriptor<H>,
    cx: Context,
    invocation: Invocation,
    uploads: UploadReceivers,
    cancel: CancellationToken,
) -> Result<(), String> {
    let detailed = cx.options().enable_detailed_errors;
    let window = Arc::new(Semaphore::new(cx.options().stream_buffer_capacity));
    let connection = cx.connection().clone();
    let protocol = cx.protocol();
    let target = invocation.target;
    let Some(id) = invocation.invocation_id else {
        return Ok(());
    };
    let call = Call::new(
        cx,
        target.clone(),
        invocation.arguments,
        uploads,
        Some(cancel.clone()),
    );
    let started = AssertUnwindSafe((method.handler)(hub, call))
        .catch_unwind()
        .await;
    let send = |message: HubMessage| {
        let connection = connection.clone();
        async move {
            connection
                .send_frame(crate::hub::message::encode(protocol, &message))
                .await
        }
    };
    let mut items = match started {
        Ok(Ok(MethodOutput::Stream(items))) => items,
        Ok(Ok(_)) => {
            let text = format!(
                "The value returned by the streaming method '{target}' is not a ChannelReader<> or IAsyncEnumerable<>."
            );
            send(HubMessage::Completion(Completion::error(id, text.clone()))).await;
            return Err(text);
        }
        Ok(Err(error)) => {
            let text = error_text(&target, &error, detailed);
            send(HubMessage::Completion(Completion::error(id, text.clone()))).await;
            return Err(text);
        }
        Err(_) => {
            let text = format!("An unexpected error occurred invoking '{target}' on the server.");
            send(HubMessage::Completion(Completion::error(id, text.clone()))).await;
            return Err(text);
        }
    };
    let mut failure = None;
    loop {
        // A place in the window first, then the next item. Cancellation
        // is looked at first: a stream cancelled before (or while) its
        // method started sends no item after it.
        let place = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            place = Arc::clone(&window).acquire_owned() => place,
        };
        let Ok(place) = place else { break };
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            next = AssertUnwindSafe(items.next()).catch_unwind() => next,
        };
        match next {
            Ok(Some(Ok(item))) => {
                let message = HubMessage::StreamItem(tidings_protocol::StreamItem {
                    headers: Default::default(),
                    invocation_id: id.clone(),
                    item,
                });
                let frame = crate::hub::message::encode(protocol, &message);
                if !connection.send_windowed(frame, place).await {
                    // The connection is gone: nobody is told anything.
                    return Ok(());
                }
            }
            Ok(Some(Err(error))) => {
                failure = Some(error.detail(detailed));
                break;
            }
            Ok(None) => break,
            Err(_) => {
                failure = Some(None);
                break;
            }
        }
    }
    // Stop the producer before answering.
    drop(items);
    let completion = match failure {
        None => Completion {
            headers: Default::default(),
            invocation_id: id,
            result: tidings_protocol::CompletionResult::Void,
        },
        Some(detail) => {
            let mut text = "An error occurred on the server while streaming results.".to_owned();
            if let Some(detail) = detail {
                text.push(' ');
                text.push_str(&detail);
            }
            Completion::error(id, text)
        }
    };
    let outcome = match &completion.result {
        tidings_protocol::CompletionResult::Error(text) => Err(text.clone()),
        _ => Ok(()),
    };
    send(HubMessage::Completion(completion)).await;
    outcome
}

/// The error text of a failed invocation, as ASP.NET Core words it.
pub(crate) fn error_text(target: &str, error: &HubError, detailed: bool) -> String {
    let mut text = match error.kind {
        HubErrorKind::Binding(_) => {
            format!("Failed to invoke '{target}' due to an error on the server.")
        }
        _ => format!("An unexpected error occurred invoking '{target}' on the server."),
    };
    if let Some(detail) = error.detail(detailed) {
        text.push(' ');
        text.push_str(&detail);
    }
    text
}
