//! Descriptions of a hub's contract — its server methods and the client
//! methods of its `#[tidings::client]` contract, with their parameter and
//! result types — for generators of client code (see the `typescript`
//! module, feature `typescript`).
//!
//! `#[hub]` and `#[client]` implement [`HubSchema`] and [`ClientSchema`]
//! for every hub and contract, generic over a [`Describer`]: the types are
//! turned into descriptions only when a generator asks, and only that
//! generator's requirements apply (for TypeScript: every type implements
//! `ts_rs::TS`). A hub whose types a generator cannot describe still
//! compiles; asking that generator for it is what fails to compile.

/// Something that turns Rust types into descriptions (for example
/// TypeScript type expressions).
pub trait Describer {
    /// The description of one type.
    type Type;
}

/// A [`Describer`] that can describe `T`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot describe the type `{T}`",
    label = "used in a hub or client contract described by `{Self}`",
    note = "for TypeScript, derive `ts_rs::TS` for `{T}`"
)]
pub trait Describe<T: ?Sized>: Describer {
    /// The description of `T`.
    fn describe() -> Self::Type;
}

/// The stand-in for a type that the macros cannot name (for example the
/// items of a stream returned as an opaque type other than
/// `impl Stream<Item = T>`); generators describe it as "any value".
#[derive(Debug, Clone, Copy)]
pub struct Opaque;

/// One method of a contract: a hub method clients invoke, or a client
/// method the hub invokes.
#[derive(Debug, Clone)]
pub struct MethodSchema<T> {
    /// The name on the wire (`SendMessage`).
    pub name: &'static str,
    /// The Rust name (`send_message`).
    pub rust_name: &'static str,
    /// The method's documentation, one line per `///` line.
    pub docs: &'static [&'static str],
    /// Whether it answers with a stream (`#[hub(stream)]`).
    pub stream: bool,
    /// The parameters clients fill (a `Context` is not one).
    pub params: Vec<ParamSchema<T>>,
    /// The result (the item type of a stream); `None` for none.
    pub returns: Option<T>,
}

/// One parameter of a [`MethodSchema`].
#[derive(Debug, Clone)]
pub struct ParamSchema<T> {
    /// The Rust name.
    pub name: &'static str,
    /// The type (the item type of a client-to-server stream).
    pub ty: T,
    /// Whether it is a client-to-server stream (`ClientStream<T>`).
    pub client_stream: bool,
}

/// The contract of a hub, as described by `D`. Implemented by `#[hub]`.
pub trait HubSchema<D: Describer> {
    /// The hub's Rust type name.
    const NAME: &'static str;
    /// The methods clients invoke.
    fn server_methods() -> Vec<MethodSchema<D::Type>>;
    /// The methods the hub invokes on clients (its `#[hub(client = ...)]`
    /// contract); empty without one.
    fn client_methods() -> Vec<MethodSchema<D::Type>>;
}

/// The methods of a client contract, as described by `D`. Implemented by
/// `#[client]` on a type that the contract trait names.
pub trait ClientSchema<D: Describer> {
    /// The contract trait's name.
    const NAME: &'static str;
    /// The client methods.
    fn methods() -> Vec<MethodSchema<D::Type>>;
}
