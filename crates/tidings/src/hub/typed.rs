//! Typed client contracts: what a `#[tidings::client]` trait compiles to.
//!
//! The macro turns a trait of client method declarations into an extension
//! trait implemented for every [`ClientTarget`] ([`ClientProxy`] and
//! [`SingleClientProxy`]); each generated method builds the
//! [`SerializedMessage`] of its invocation and hands it to the target. This
//! module owns the two target traits and the helpers the generated bodies
//! call, so that the macro's output stays small and its rules live in one
//! place.
//!
//! # Owned or borrowed arguments
//!
//! An untyped [`ClientProxy::send`] keeps its arguments and serializes them
//! later, once per protocol a recipient actually uses; that is why it wants
//! `'static` arguments. A typed method whose parameters are all owned types
//! (`String`, a struct) does the same. A method with a borrowed parameter
//! (`&str`, `&Room`) cannot keep the borrow, so it serializes its arguments
//! at once in both hub protocols ([`SerializedArguments`]) and sends the
//! bytes: the caller keeps its values and needs no clone, at the price of
//! serializing MessagePack (or JSON) even when no recipient uses it.

use std::sync::Arc;

use tidings_protocol::{EncodeError, Payload, Protocol, ToArguments};

use crate::{
    ClientInvocation, ClientInvoke, ClientProxy, InvokeError, SendError, SerializedMessage,
    SingleClientProxy, hub::context::SendFuture,
};

/// Recipients that a typed client contract can send to: implemented by
/// [`ClientProxy`] and [`SingleClientProxy`], whatever they target.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a set of clients",
    label = "client contract methods are called on `Clients` targets",
    note = "choose recipients first: `cx.clients().all()`, `.group(name)`, `.caller()`, `.client(id)`, ..."
)]
pub trait ClientTarget {
    /// Sends an invocation to the recipients without waiting for them.
    fn send_message(&self, message: Arc<SerializedMessage>) -> SendFuture<'_>;
}

/// One connection, which can also be asked for a result: implemented by
/// [`SingleClientProxy`] only.
#[diagnostic::on_unimplemented(
    message = "a client method with a result can only be invoked on a single connection",
    label = "`{Self}` may reach several connections",
    note = "use `cx.clients().caller()` or `cx.clients().client(id)`"
)]
pub trait SingleClientTarget: ClientTarget {
    /// Invokes a client method and waits for its result.
    fn invoke_message<T>(&self, invocation: ClientInvocation) -> ClientInvoke<'_, T>;

    /// A result that fails with `error` when awaited.
    fn failed_invoke<T>(&self, error: InvokeError) -> ClientInvoke<'_, T>;
}

impl ClientTarget for ClientProxy<'_> {
    fn send_message(&self, message: Arc<SerializedMessage>) -> SendFuture<'_> {
        self.send_boxed(message)
    }
}

impl ClientTarget for SingleClientProxy<'_> {
    fn send_message(&self, message: Arc<SerializedMessage>) -> SendFuture<'_> {
        self.proxy().send_boxed(message)
    }
}

impl SingleClientTarget for SingleClientProxy<'_> {
    fn invoke_message<T>(&self, invocation: ClientInvocation) -> ClientInvoke<'_, T> {
        self.invoke_prepared(Ok(invocation))
    }

    fn failed_invoke<T>(&self, error: InvokeError) -> ClientInvoke<'_, T> {
        self.invoke_prepared(Err(error))
    }
}

/// Arguments serialized at once in every hub protocol, so that a message
/// can be built from borrowed values and still be written later to any
/// connection.
///
/// Implements [`ToArguments`]: give it to [`SerializedMessage::invocation`]
/// or [`ClientInvocation::new`].
#[derive(Debug, Clone)]
pub struct SerializedArguments {
    json: Vec<Payload>,
    msgpack: Vec<Payload>,
}

impl SerializedArguments {
    /// Serializes `arguments` in JSON and in MessagePack.
    pub fn new(arguments: &(impl ToArguments + ?Sized)) -> Result<Self, EncodeError> {
        Ok(SerializedArguments {
            json: arguments.to_arguments(Protocol::Json)?,
            msgpack: arguments.to_arguments(Protocol::MessagePack)?,
        })
    }
}

impl ToArguments for SerializedArguments {
    fn to_arguments(&self, protocol: Protocol) -> Result<Vec<Payload>, EncodeError> {
        Ok(match protocol {
            Protocol::Json => self.json.clone(),
            Protocol::MessagePack => self.msgpack.clone(),
        })
    }
}

/// Sends an invocation whose arguments are owned: serialized lazily.
#[doc(hidden)]
pub fn send_owned<'a, C, A>(target: &'a C, method: &'static str, arguments: A) -> SendFuture<'a>
where
    C: ClientTarget + ?Sized,
    A: ToArguments + Send + Sync + 'static,
{
    target.send_message(Arc::new(SerializedMessage::invocation(method, arguments)))
}

/// Sends an invocation whose arguments borrow: serialized now.
#[doc(hidden)]
pub fn send_borrowed<'a, C, A>(target: &'a C, method: &'static str, arguments: &A) -> SendFuture<'a>
where
    C: ClientTarget + ?Sized,
    A: ToArguments + ?Sized,
{
    match SerializedArguments::new(arguments) {
        Ok(arguments) => {
            target.send_message(Arc::new(SerializedMessage::invocation(method, arguments)))
        }
        Err(error) => Box::pin(std::future::ready(Err(SendError::Encode(error)))),
    }
}

/// Invokes a client method with owned arguments and waits for its result.
#[doc(hidden)]
pub fn invoke_owned<'a, C, A, T>(
    target: &'a C,
    method: &'static str,
    arguments: A,
) -> ClientInvoke<'a, T>
where
    C: SingleClientTarget + ?Sized,
    A: ToArguments + Send + Sync + 'static,
{
    target.invoke_message(ClientInvocation::new(method, arguments))
}

/// Invokes a client method with borrowed arguments (serialized now) and
/// waits for its result.
#[doc(hidden)]
pub fn invoke_borrowed<'a, C, A, T>(
    target: &'a C,
    method: &'static str,
    arguments: &A,
) -> ClientInvoke<'a, T>
where
    C: SingleClientTarget + ?Sized,
    A: ToArguments + ?Sized,
{
    match SerializedArguments::new(arguments) {
        Ok(arguments) => target.invoke_message(ClientInvocation::new(method, arguments)),
        Err(error) => target.failed_invoke(InvokeError::Encode(error.to_string())),
    }
}
