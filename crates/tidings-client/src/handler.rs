//! Client methods the server invokes: typed argument binding ([`FromArguments`]), the handler
//! registry (looked up case-insensitively, like the official clients), and running the handlers
//! of one invocation, including the client-result rules of the JavaScript client.

use std::{future::Future, marker::PhantomData, pin::Pin, sync::Arc};

use serde::{Serialize, de::DeserializeOwned};
use tidings_protocol::{Completion, Invocation, Payload, Protocol};

use crate::error::ArgumentError;

/// The argument list of a client method, bound from the invocation's arguments.
///
/// Implemented for `()` and tuples of up to 8 `DeserializeOwned` values (the argument count must
/// match exactly — write `(String,)` for one argument), and for `Vec<Payload>`, which takes any
/// number of arguments unparsed.
pub trait FromArguments: Sized + Send + 'static {
    /// Binds the arguments.
    fn from_arguments(args: &[Payload]) -> Result<Self, ArgumentError>;
}

impl FromArguments for () {
    fn from_arguments(args: &[Payload]) -> Result<Self, ArgumentError> {
        expect_count(args, 0)
    }
}

impl FromArguments for Vec<Payload> {
    fn from_arguments(args: &[Payload]) -> Result<Self, ArgumentError> {
        Ok(args.to_vec())
    }
}

fn expect_count(args: &[Payload], expected: usize) -> Result<(), ArgumentError> {
    if args.len() == expected {
        Ok(())
    } else {
        Err(ArgumentError::Count {
            expected,
            actual: args.len(),
        })
    }
}

fn bind<T: DeserializeOwned>(args: &[Payload], index: usize) -> Result<T, ArgumentError> {
    args[index]
        .deserialize()
        .map_err(|source| ArgumentError::Payload { index, source })
}

macro_rules! tuple_from_arguments {
    ($count:expr; $($name:ident : $idx:tt),+) => {
        impl<$($name: DeserializeOwned + Send + 'static),+> FromArguments for ($($name,)+) {
            fn from_arguments(args: &[Payload]) -> Result<Self, ArgumentError> {
                expect_count(args, $count)?;
                Ok(($(bind::<$name>(args, $idx)?,)+))
            }
        }
    };
}

tuple_from_arguments!(1; A: 0);
tuple_from_arguments!(2; A: 0, B: 1);
tuple_from_arguments!(3; A: 0, B: 1, C: 2);
tuple_from_arguments!(4; A: 0, B: 1, C: 2, D: 3);
tuple_from_arguments!(5; A: 0, B: 1, C: 2, D: 3, E: 4);
tuple_from_arguments!(6; A: 0, B: 1, C: 2, D: 3, E: 4, F: 5);
tuple_from_arguments!(7; A: 0, B: 1, C: 2, D: 3, E: 4, F: 5, G: 6);
tuple_from_arguments!(8; A: 0, B: 1, C: 2, D: 3, E: 4, F: 5, G: 6, H: 7);

/// What one handler produced.
pub(crate) enum Outcome {
    /// A plain handler, or nothing to report.
    Nothing,
    /// A client result.
    Value(Payload),
    /// A failed client-result handler (the text goes to the server).
    Error(String),
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A handler with its argument types erased.
pub(crate) trait ErasedHandler: Send + Sync {
    fn call(&self, args: &[Payload], protocol: Protocol) -> Result<HandlerFuture, ArgumentError>;
}

/// A handler without a result (`on`).
pub(crate) struct Plain<F, A> {
    f: F,
    _args: PhantomData<fn(A)>,
}

impl<F, A> Plain<F, A> {
    pub(crate) fn new(f: F) -> Self {
        Plain {
            f,
            _args: PhantomData,
        }
    }
}

impl<F, A, Fut> ErasedHandler for Plain<F, A>
where
    F: Fn(A) -> Fut + Send + Sync,
    A: FromArguments,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn call(&self, args: &[Payload], _protocol: Protocol) -> Result<HandlerFuture, ArgumentError> {
        let fut = (self.f)(A::from_arguments(args)?);
        Ok(Box::pin(async move {
            fut.await;
            Outcome::Nothing
        }))
    }
}

/// A handler that answers with a client result (`on_with_result`).
pub(crate) struct WithResult<F, A> {
    f: F,
    _args: PhantomData<fn(A)>,
}

impl<F, A> WithResult<F, A> {
    pub(crate) fn new(f: F) -> Self {
        WithResult {
            f,
            _args: PhantomData,
        }
    }
}

impl<F, A, Fut, R, E> ErasedHandler for WithResult<F, A>
where
    F: Fn(A) -> Fut + Send + Sync,
    A: FromArguments,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    R: Serialize,
    E: std::fmt::Display,
{
    fn call(&self, args: &[Payload], protocol: Protocol) -> Result<HandlerFuture, ArgumentError> {
        let fut = (self.f)(A::from_arguments(args)?);
        Ok(Box::pin(async move {
            match fut.await {
                Ok(value) => match protocol.encode_value(&value) {
                    Ok(payload) => Outcome::Value(payload),
                    Err(e) => {
                        Outcome::Error(format!("The client result could not be serialized: {e}"))
                    }
                },
                Err(error) => Outcome::Error(error.to_string()),
            }
        }))
    }
}

type Entry = (u64, Arc<dyn ErasedHandler>);

/// Handlers by method name. A short list scanned with an ASCII case-insensitive comparison: no
/// allocation per lookup, and hubs have few client methods.
#[derive(Default)]
pub(crate) struct HandlerMap {
    methods: Vec<(String, Arc<[Entry]>)>,
}

impl HandlerMap {
    fn position(&self, method: &str) -> Option<usize> {
        self.methods
            .iter()
            .position(|(name, _)| name.eq_ignore_ascii_case(method))
    }

    pub(crate) fn get(&self, method: &str) -> Option<Arc<[Entry]>> {
        self.position(method)
            .map(|i| Arc::clone(&self.methods[i].1))
    }

    pub(crate) fn add(&mut self, method: &str, id: u64, handler: Arc<dyn ErasedHandler>) {
        match self.position(method) {
            Some(i) => {
                let entries = &mut self.methods[i].1;
                let mut list: Vec<Entry> = entries.iter().cloned().collect();
                list.push((id, handler));
                *entries = list.into();
            }
            None => self
                .methods
                .push((method.to_owned(), Arc::from([(id, handler)]))),
        }
    }

    /// Removes one handler (by id) or every handler of `method`.
    pub(crate) fn remove(&mut self, method: &str, id: Option<u64>) {
        let Some(i) = self.position(method) else {
            return;
        };
        let list: Vec<Entry> = match id {
            Some(id) => self.methods[i]
                .1
                .iter()
                .filter(|(other, _)| *other != id)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        if list.is_empty() {
            self.methods.remove(i);
        } else {
            self.methods[i].1 = list.into();
        }
    }
}

/// Runs every handler of `invocation` one after another and returns the Completion to send when
/// the server expects a result, following the JavaScript client: no handler, or no handler
/// returning a value → `Client didn't provide a result.`; two values → `Client provided multiple
/// results.`; a failing result handler → its error text.
pub(crate) async fn run(
    handlers: Option<Arc<[Entry]>>,
    invocation: &Invocation,
    protocol: Protocol,
) -> Option<Completion> {
    let id = invocation.invocation_id.as_deref();
    let Some(handlers) = handlers else {
        tracing::warn!(method = %invocation.target, "no client method with this name");
        return id.map(|id| Completion::error(id, "Client didn't provide a result."));
    };
    let mut result: Option<Payload> = None;
    let mut error: Option<String> = None;
    let mut multiple = false;
    for (_, handler) in handlers.iter() {
        let fut = match handler.call(&invocation.arguments, protocol) {
            Ok(fut) => fut,
            Err(e) => {
                tracing::warn!(method = %invocation.target, error = %e, "client method arguments do not bind");
                error = Some(format!(
                    "The arguments of '{}' could not be bound: {e}",
                    invocation.target
                ));
                continue;
            }
        };
        match fut.await {
            Outcome::Nothing => {}
            Outcome::Value(value) => {
                multiple |= result.is_some();
                result = Some(value);
                // A later value wins over an earlier failure, as in the JavaScript client.
                error = None;
            }
            Outcome::Error(e) => {
                tracing::warn!(method = %invocation.target, error = %e, "client method failed");
                error = Some(e);
            }
        }
    }
    let Some(id) = id else {
        if result.is_some() {
            tracing::warn!(method = %invocation.target, "result given but the server is not expecting one");
        }
        return None;
    };
    Some(if multiple {
        Completion::error(id, "Client provided multiple results.")
    } else if let Some(error) = error {
        Completion::error(id, error)
    } else if let Some(value) = result {
        Completion::value(id, value)
    } else {
        Completion::error(id, "Client didn't provide a result.")
    })
}
