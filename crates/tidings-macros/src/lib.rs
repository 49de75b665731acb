//! Procedural macros for tidings. Use them through the `tidings` crate
//! (`#[tidings::hub]`), whose documentation describes them.

use heck::ToUpperCamelCase;
use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::{
    Attribute, Error, FnArg, ImplItem, ImplItemFn, ItemImpl, LitStr, Pat, ReturnType, Type,
    parse_macro_input, spanned::Spanned,
};

mod client;
mod schema;

/// Turns an `impl` block into a hub; see the `tidings` crate documentation.
///
/// * Every method becomes a hub method named in PascalCase
///   (`send_message` → `SendMessage`), or as `#[hub(name = "...")]` says.
///   `#[hub(skip)]` leaves a method out.
/// * Parameters are deserialized from the invocation's arguments in order;
///   a `&Context` parameter (anywhere) receives the caller's context.
/// * `ClientStream<T>` parameters (anywhere) receive the client-to-server
///   streams of the invocation (its `streamIds`, in order); they are not
///   part of the arguments.
/// * A `CancellationToken` parameter (anywhere, streaming methods only)
///   receives the stream's cancellation token (`Call::cancellation`).
/// * The return type may be `()`, any `Serialize` type, or
///   `Result<T, E>` where `E: Into<HubError>`.
/// * `#[hub(stream)]` marks a streaming method: it returns a `Stream` of
///   `Serialize` items (or of `Result`s, where an `Err` ends the stream
///   with that error), possibly wrapped in `Result<_, E>`.
/// * `#[on_connected]` marks the connection hook (`&Context` parameter,
///   returns `()` or `Result<(), E>`); `#[on_disconnected]` the
///   disconnection hook (`&Context` and/or `Option<ConnectionError>`).
/// * `#[hub(client = ChatClient)]` on the `impl` block names the hub's
///   client contract (a `#[client]` trait), for generated client code.
/// * The hub implements `tidings::schema::HubSchema`: its methods'
///   parameter and result types, for generators.
/// * `#[authorize]` on a method requires an authenticated caller;
///   `#[authorize(roles = "Admin, Ops")]` one of these roles (`role` or
///   `roles` claims); `#[authorize(policy = "name")]` a policy registered on
///   the endpoint. `#[hub(authorize)]` (same options) on the `impl` block
///   requires it of every connection.
#[proc_macro_attribute]
pub fn hub(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut client: Option<syn::Path> = None;
    let mut authorize: Option<TokenStream2> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("authorize") {
            authorize = Some(parse_authorize_meta(&meta)?);
            Ok(())
        } else if meta.path.is_ident("client") {
            if client.is_some() {
                return Err(meta.error("`client` is given twice"));
            }
            client = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error(
                "#[hub] on an impl block takes only `client = ContractTrait` (a #[tidings::client] trait) and `authorize`",
            ))
        }
    });
    parse_macro_input!(attr with parser);
    let input = parse_macro_input!(item as ItemImpl);
    match expand(input, client, authorize) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// Declares a client contract: the methods a hub may invoke on its
/// clients; see the `tidings` crate documentation.
///
/// * Each `fn name(arg: Type, ...);` (no body, no `async`, optionally
///   `&self`) becomes a method of every `ClientTarget` (`ClientProxy`,
///   `SingleClientProxy`) that invokes the client method named in
///   PascalCase, or as `#[client(name = "...")]` says, and returns a
///   future of `Result<(), SendError>`.
/// * A method with a result type (`-> bool`) is a client result: it exists
///   only on a `SingleClientProxy` and returns a `ClientInvoke`.
/// * Borrowed parameters are serialized when the method is called; owned
///   ones lazily, like `ClientProxy::send`.
#[proc_macro_attribute]
pub fn client(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return Error::new(
            Span::call_site(),
            "#[client] takes no arguments (name methods with `#[client(name = \"...\")]`)",
        )
        .to_compile_error()
        .into();
    }
    let input = parse_macro_input!(item as syn::ItemTrait);
    match client::expand(input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// `authorize` or `authorize(roles = "...", policy = "...")` → an
/// `Authorize` expression.
fn parse_authorize_meta(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<TokenStream2> {
    let mut roles: Vec<String> = Vec::new();
    let mut policy: Option<String> = None;
    if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| roles_or_policy(&inner, &mut roles, &mut policy))?;
    }
    Ok(authorize_tokens(&roles, policy.as_deref()))
}

/// One `roles = "A, B"` (comma-separated, added to `roles`) or
/// `policy = "name"` item of an authorization attribute.
fn roles_or_policy(
    inner: &syn::meta::ParseNestedMeta<'_>,
    roles: &mut Vec<String>,
    policy: &mut Option<String>,
) -> syn::Result<()> {
    let value: LitStr = inner.value()?.parse()?;
    if inner.path.is_ident("roles") {
        roles.extend(
            value
                .value()
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
        );
        Ok(())
    } else if inner.path.is_ident("policy") {
        *policy = Some(value.value());
        Ok(())
    } else {
        Err(inner.error("expected `roles = \"...\"` or `policy = \"...\"`"))
    }
}

fn authorize_tokens(roles: &[String], policy: Option<&str>) -> TokenStream2 {
    let policy = match policy {
        Some(p) => quote!(::core::option::Option::Some(#p)),
        None => quote!(::core::option::Option::None),
    };
    quote!(::tidings::__private::Authorize::new(&[#(#roles),*], #policy))
}

/// A method's `#[authorize]` attribute (bare, or with roles/policy).
fn parse_authorize_attr(attr: &Attribute) -> syn::Result<TokenStream2> {
    match &attr.meta {
        syn::Meta::Path(_) => Ok(authorize_tokens(&[], None)),
        syn::Meta::List(_) => {
            let (mut roles, mut policy) = (Vec::new(), None);
            attr.parse_nested_meta(|inner| roles_or_policy(&inner, &mut roles, &mut policy))?;
            Ok(authorize_tokens(&roles, policy.as_deref()))
        }
        syn::Meta::NameValue(nv) => Err(Error::new(
            nv.span(),
            "expected `#[authorize]` or `#[authorize(roles = \"...\", policy = \"...\")]`",
        )),
    }
}

enum Role {
    Method {
        name: String,
        stream: bool,
        authorize: Option<TokenStream2>,
    },
    Skip,
    OnConnected,
    OnDisconnected,
}

struct MethodInfo {
    ident: syn::Ident,
    name: String,
    arity: usize,
    stream_params: usize,
    handler: syn::Ident,
    stream: bool,
    schema: schema::Method,
    authorize: Option<TokenStream2>,
}

fn expand(
    mut input: ItemImpl,
    client: Option<syn::Path>,
    hub_authorize: Option<TokenStream2>,
) -> syn::Result<TokenStream2> {
    if !input.generics.params.is_empty() {
        return Err(Error::new(
            input.generics.span(),
            "#[hub] does not support generic hubs",
        ));
    }
    if let Some((_, path, _)) = &input.trait_ {
        return Err(Error::new(
            path.span(),
            "#[hub] goes on an inherent impl block, not a trait impl",
        ));
    }
    let self_ty = input.self_ty.clone();
    let mut methods = Vec::new();
    let mut handlers = Vec::new();
    let mut on_connected = None;
    let mut on_disconnected = None;

    for item in &mut input.items {
        let ImplItem::Fn(function) = item else {
            continue;
        };
        let role = take_role(function)?;
        match role {
            Role::Skip => {}
            Role::Method {
                name,
                stream,
                authorize,
            } => {
                let index = methods.len();
                let handler = format_ident!("__tidings_handler_{}", index);
                let (arity, stream_params, tokens) = method_handler(function, &handler, stream)?;
                handlers.push(tokens);
                let schema = schema::server_method(function, &name, stream);
                methods.push(MethodInfo {
                    ident: function.sig.ident.clone(),
                    name,
                    arity,
                    stream_params,
                    handler,
                    stream,
                    schema,
                    authorize,
                });
            }
            Role::OnConnected => {
                if on_connected.is_some() {
                    return Err(Error::new(
                        function.sig.span(),
                        "only one #[on_connected] method is allowed",
                    ));
                }
                on_connected = Some(connected_hook(function)?);
            }
            Role::OnDisconnected => {
                if on_disconnected.is_some() {
                    return Err(Error::new(
                        function.sig.span(),
                        "only one #[on_disconnected] method is allowed",
                    ));
                }
                on_disconnected = Some(disconnected_hook(function)?);
            }
        }
    }

    let mut seen = std::collections::HashMap::new();
    for method in &methods {
        if let Some(other) = seen.insert(method.name.to_lowercase(), &method.ident) {
            return Err(Error::new(
                method.ident.span(),
                format!(
                    "hub method name '{}' clashes with `{}` (names are matched case-insensitively)",
                    method.name, other
                ),
            ));
        }
    }

    let descriptors = methods.iter().map(|m| {
        let name = &m.name;
        let arity = m.arity;
        let stream_params = m.stream_params;
        let handler = &m.handler;
        let authorize = match &m.authorize {
            Some(tokens) => quote!(::core::option::Option::Some(&#tokens)),
            None => quote!(::core::option::Option::None),
        };
        let kind = if m.stream {
            quote!(::tidings::__private::MethodKind::Stream)
        } else {
            quote!(::tidings::__private::MethodKind::Unary)
        };
        quote! {
            ::tidings::__private::MethodDescriptor {
                name: #name,
                kind: #kind,
                arity: #arity,
                stream_params: #stream_params,
                handler: <#self_ty>::#handler,
                authorize: #authorize,
            }
        }
    });

    let authorization = hub_authorize.map(|tokens| {
        quote! {
            fn authorization() -> ::core::option::Option<&'static ::tidings::__private::Authorize> {
                const AUTHORIZE: ::tidings::__private::Authorize = #tokens;
                ::core::option::Option::Some(&AUTHORIZE)
            }
        }
    });

    let schemas: Vec<_> = methods.iter().map(|m| m.schema.clone()).collect();
    let schema = schema::hub_impl(&self_ty, &schemas, client.as_ref());

    Ok(quote! {
        #input

        #schema

        #[doc(hidden)]
        #[allow(non_snake_case, clippy::all)]
        impl #self_ty {
            #(#handlers)*
        }

        impl ::tidings::__private::Hub for #self_ty {
            fn methods() -> &'static [::tidings::__private::MethodDescriptor<Self>] {
                const METHODS: &[::tidings::__private::MethodDescriptor<#self_ty>] = &[
                    #(#descriptors),*
                ];
                METHODS
            }
            #on_connected
            #on_disconnected
            #authorization
        }
    })
}

/// Reads and removes the tidings attributes of a method.
fn take_role(function: &mut ImplItemFn) -> syn::Result<Role> {
    let mut role = None;
    let mut name = None;
    let mut stream = false;
    let mut authorize = None;
    let mut kept: Vec<Attribute> = Vec::new();
    for attr in std::mem::take(&mut function.attrs) {
        if attr.path().is_ident("authorize") {
            authorize = Some(parse_authorize_attr(&attr)?);
        } else if attr.path().is_ident("on_connected") {
            role = Some(Role::OnConnected);
        } else if attr.path().is_ident("on_disconnected") {
            role = Some(Role::OnDisconnected);
        } else if attr.path().is_ident("hub") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    let value: LitStr = meta.value()?.parse()?;
                    if value.value().is_empty() {
                        return Err(meta.error("a hub method name cannot be empty"));
                    }
                    name = Some(value.value());
                    Ok(())
                } else if meta.path.is_ident("skip") {
                    role = Some(Role::Skip);
                    Ok(())
                } else if meta.path.is_ident("stream") {
                    stream = true;
                    Ok(())
                } else {
                    Err(meta.error("expected `name = \"...\"`, `stream` or `skip`"))
                }
            })?;
        } else {
            kept.push(attr);
        }
    }
    function.attrs = kept;
    Ok(match role {
        Some(role) => role,
        None => Role::Method {
            name: name
                .unwrap_or_else(|| function.sig.ident.unraw().to_string().to_upper_camel_case()),
            stream,
            authorize,
        },
    })
}

fn check_receiver(function: &ImplItemFn) -> syn::Result<()> {
    match function.sig.inputs.first() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => Ok(()),
        _ => Err(Error::new(
            function.sig.span(),
            "hub methods take `&self` (the hub is shared by every connection)",
        )),
    }
}

/// Whether a type is `Context` or `&Context`; the first flag says "by reference".
fn context_param(ty: &Type) -> Option<bool> {
    match ty {
        Type::Reference(r) => context_param(&r.elem).map(|_| true),
        Type::Path(p) => {
            let last = p.path.segments.last()?;
            (last.ident == "Context" && last.arguments.is_empty()).then_some(false)
        }
        _ => None,
    }
}

/// Whether a type is `CancellationToken` or `&CancellationToken`; the
/// first flag says "by reference".
pub(crate) fn cancellation_param(ty: &Type) -> Option<bool> {
    match ty {
        Type::Reference(r) => cancellation_param(&r.elem).map(|_| true),
        Type::Path(p) => {
            let last = p.path.segments.last()?;
            (last.ident == "CancellationToken" && last.arguments.is_empty()).then_some(false)
        }
        _ => None,
    }
}

/// Whether a type is a `ClientStream<T>` (a client-to-server stream).
fn is_client_stream(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    p.path
        .segments
        .last()
        .is_some_and(|last| last.ident == "ClientStream" && !last.arguments.is_empty())
}

fn is_error_param(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    let Some(last) = p.path.segments.last() else {
        return false;
    };
    if last.ident != "Option" {
        return false;
    }
    quote!(#last).to_string().contains("ConnectionError")
}

fn returns_result(output: &ReturnType) -> bool {
    match output {
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
            _ => false,
        },
        ReturnType::Default => false,
    }
}

fn returns_unit(output: &ReturnType) -> bool {
    match output {
        ReturnType::Default => true,
        ReturnType::Type(_, ty) => matches!(&**ty, Type::Tuple(t) if t.elems.is_empty()),
    }
}

fn await_if_async(function: &ImplItemFn) -> TokenStream2 {
    if function.sig.asyncness.is_some() {
        quote!(.await)
    } else {
        TokenStream2::new()
    }
}

fn method_handler(
    function: &ImplItemFn,
    handler: &syn::Ident,
    stream: bool,
) -> syn::Result<(usize, usize, TokenStream2)> {
    check_receiver(function)?;
    let ident = &function.sig.ident;
    let mut bindings = Vec::new();
    let mut args = Vec::new();
    let mut arity = 0usize;
    let mut streams = 0usize;
    for input in function.sig.inputs.iter().skip(1) {
        let FnArg::Typed(pat_type) = input else {
            continue;
        };
        if let Pat::Ident(_) | Pat::Wild(_) = &*pat_type.pat {
        } else {
            return Err(Error::new(
                pat_type.pat.span(),
                "hub method parameters must be plain names",
            ));
        }
        let ty = &pat_type.ty;
        match context_param(ty) {
            Some(true) => args.push(quote!(__call.context())),
            Some(false) => args.push(quote!(::core::clone::Clone::clone(__call.context()))),
            None if cancellation_param(ty).is_some() => {
                if !stream {
                    return Err(Error::new(
                        ty.span(),
                        "a `CancellationToken` parameter is for streaming methods (`#[hub(stream)]`)",
                    ));
                }
                // A streaming call always has a token; the default (never
                // cancelled) only keeps the generated code free of panics.
                bindings.push(quote! {
                    let __cancel: ::tidings::__private::CancellationToken =
                        __call.cancellation().cloned().unwrap_or_default();
                });
                if cancellation_param(ty) == Some(true) {
                    args.push(quote!(&__cancel));
                } else {
                    args.push(quote!(::core::clone::Clone::clone(&__cancel)));
                }
            }
            None if is_client_stream(ty) => {
                let var = format_ident!("__stream{}", streams);
                let index = streams;
                bindings.push(quote_spanned! {ty.span()=>
                    let #var: #ty = __call.upload(#index)?;
                });
                args.push(quote!(#var));
                streams += 1;
            }
            None => {
                let var = format_ident!("__arg{}", arity);
                let index = arity;
                bindings.push(quote_spanned! {ty.span()=>
                    let #var: #ty = __call.arg(#index)?;
                });
                args.push(quote!(#var));
                arity += 1;
            }
        }
    }
    let awaited = await_if_async(function);
    let output = &function.sig.output;
    let finish = if stream {
        let text = quote!(#output).to_string().replace(' ', "");
        // A returned `ClientStream` (e.g. echoed back) yields `Result`s too.
        let convert = if text.contains("Item=Result<") || text.contains("ClientStream<") {
            quote!(try_stream)
        } else {
            quote!(stream)
        };
        if returns_result(output) {
            quote! {
                match __out {
                    ::tidings::__private::Result::Ok(__items) => __call.#convert(__items),
                    ::tidings::__private::Result::Err(__error) => ::tidings::__private::Result::Err(
                        ::core::convert::Into::<::tidings::__private::HubError>::into(__error),
                    ),
                }
            }
        } else {
            quote!(__call.#convert(__out))
        }
    } else if returns_unit(output) {
        quote! {
            let () = __out;
            ::tidings::__private::Result::Ok(::tidings::__private::MethodOutput::Void)
        }
    } else if returns_result(output) {
        quote! {
            match __out {
                ::tidings::__private::Result::Ok(__value) => __call.output(&__value),
                ::tidings::__private::Result::Err(__error) => ::tidings::__private::Result::Err(
                    ::core::convert::Into::<::tidings::__private::HubError>::into(__error),
                ),
            }
        }
    } else {
        quote!(__call.output(&__out))
    };
    // Taking a stream out of the call needs it mutable.
    let call = if streams > 0 {
        quote!(mut __call)
    } else {
        quote!(__call)
    };
    let tokens = quote! {
        fn #handler(
            __hub: ::tidings::__private::Arc<Self>,
            #call: ::tidings::__private::Call,
        ) -> ::tidings::__private::MethodFuture {
            ::tidings::__private::Box::pin(async move {
                #(#bindings)*
                let __out = __hub.#ident(#(#args),*)#awaited;
                #finish
            })
        }
    };
    Ok((arity, streams, tokens))
}

fn connected_hook(function: &ImplItemFn) -> syn::Result<TokenStream2> {
    check_receiver(function)?;
    let ident = &function.sig.ident;
    let mut args = Vec::new();
    for input in function.sig.inputs.iter().skip(1) {
        let FnArg::Typed(pat_type) = input else {
            continue;
        };
        match context_param(&pat_type.ty) {
            Some(true) => args.push(quote!(&__cx)),
            Some(false) => args.push(quote!(::core::clone::Clone::clone(&__cx))),
            None => {
                return Err(Error::new(
                    pat_type.ty.span(),
                    "#[on_connected] takes only a `&Context` parameter",
                ));
            }
        }
    }
    let awaited = await_if_async(function);
    let finish = if returns_result(&function.sig.output) {
        quote!(__out.map_err(::core::convert::Into::<::tidings::__private::HubError>::into))
    } else {
        quote! {
            let () = __out;
            ::tidings::__private::Result::Ok(())
        }
    };
    Ok(quote! {
        fn on_connected(
            self: ::tidings::__private::Arc<Self>,
            __cx: ::tidings::__private::Context,
        ) -> ::tidings::BoxFuture<'static, ::tidings::__private::Result<(), ::tidings::__private::HubError>> {
            ::tidings::__private::Box::pin(async move {
                let __out = self.#ident(#(#args),*)#awaited;
                #finish
            })
        }
    })
}

fn disconnected_hook(function: &ImplItemFn) -> syn::Result<TokenStream2> {
    check_receiver(function)?;
    let ident = &function.sig.ident;
    let mut args = Vec::new();
    for input in function.sig.inputs.iter().skip(1) {
        let FnArg::Typed(pat_type) = input else {
            continue;
        };
        if let Some(by_ref) = context_param(&pat_type.ty) {
            args.push(if by_ref {
                quote!(&__cx)
            } else {
                quote!(::core::clone::Clone::clone(&__cx))
            });
        } else if is_error_param(&pat_type.ty) {
            args.push(quote!(::core::clone::Clone::clone(&__error)));
        } else {
            return Err(Error::new(
                pat_type.ty.span(),
                "#[on_disconnected] takes `&Context` and/or `Option<ConnectionError>`",
            ));
        }
    }
    let awaited = await_if_async(function);
    Ok(quote! {
        fn on_disconnected(
            self: ::tidings::__private::Arc<Self>,
            __cx: ::tidings::__private::Context,
            __error: ::core::option::Option<::tidings::ConnectionError>,
        ) -> ::tidings::BoxFuture<'static, ()> {
            ::tidings::__private::Box::pin(async move {
                let _ = self.#ident(#(#args),*)#awaited;
            })
        }
    })
}
