//! `#[client]`: a trait of client method declarations becomes an extension
//! trait of every `ClientTarget`, plus the contract's schema.

use heck::ToUpperCamelCase;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::{
    Attribute, Error, FnArg, ItemTrait, LitStr, Pat, ReturnType, TraitItem, TraitItemFn, Type,
    spanned::Spanned,
};

use crate::schema;

/// Methods of the proxies (inherent, or of the target traits) that a
/// client method must not shadow or be shadowed by.
const RESERVED: &[&str] = &[
    "send",
    "send_serialized",
    "target",
    "invoke",
    "send_message",
    "invoke_message",
    "failed_invoke",
    "send_boxed",
    "proxy",
    "invoke_prepared",
    "clone",
];

struct ClientMethod {
    function: TraitItemFn,
    schema: schema::Method,
    /// Parameter names and types, in order.
    params: Vec<(syn::Ident, Type)>,
    result: Option<Type>,
}

pub(crate) fn expand(input: ItemTrait) -> syn::Result<TokenStream2> {
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        return Err(Error::new(
            input.generics.span(),
            "a #[client] trait cannot be generic",
        ));
    }
    if !input.supertraits.is_empty() {
        return Err(Error::new(
            input.supertraits.span(),
            "a #[client] trait cannot have supertraits",
        ));
    }
    if let Some(unsafety) = &input.unsafety {
        return Err(Error::new(
            unsafety.span(),
            "a #[client] trait cannot be unsafe",
        ));
    }
    let mut methods = Vec::new();
    for item in &input.items {
        let TraitItem::Fn(function) = item else {
            return Err(Error::new(
                item.span(),
                "a #[client] trait holds only client method declarations (`fn name(arg: Type);`)",
            ));
        };
        methods.push(method(function.clone())?);
    }
    let mut seen = std::collections::HashMap::new();
    for m in &methods {
        if let Some(other) = seen.insert(m.schema.name.to_lowercase(), &m.function.sig.ident) {
            return Err(Error::new(
                m.function.sig.ident.span(),
                format!(
                    "client method name '{}' clashes with `{}` (clients match names case-insensitively)",
                    m.schema.name, other
                ),
            ));
        }
    }

    let vis = &input.vis;
    let ident = &input.ident;
    let attrs = &input.attrs;
    let trait_name = ident.unraw().to_string();

    let mut declarations = Vec::new();
    let mut definitions = Vec::new();
    for m in &methods {
        let (declaration, definition) = generate(m);
        declarations.push(declaration);
        definitions.push(definition);
    }
    let schemas: Vec<_> = methods.iter().map(|m| m.schema.clone()).collect();
    let (bounds, list) = schema::method_list(&schemas);

    Ok(quote! {
        #(#attrs)*
        #vis trait #ident {
            #[doc(hidden)]
            type __TidingsSchema: ?::core::marker::Sized;

            #(#declarations)*
        }

        const _: () = {
            #[doc(hidden)]
            #[derive(Debug)]
            pub struct __TidingsClientSchema;

            impl<__T: ::tidings::__private::ClientTarget + ?::core::marker::Sized> #ident for __T {
                type __TidingsSchema = __TidingsClientSchema;

                #(#definitions)*
            }

            #[allow(private_bounds, private_interfaces)]
            impl<__D: ::tidings::__private::Describer> ::tidings::__private::ClientSchema<__D>
                for __TidingsClientSchema
            where
                #(#bounds,)*
            {
                const NAME: &'static str = #trait_name;

                fn methods() -> ::tidings::__private::Vec<
                    ::tidings::__private::MethodSchema<<__D as ::tidings::__private::Describer>::Type>,
                > {
                    #list
                }
            }
        };
    })
}

/// Reads `#[client(name = "...")]` and removes it; keeps the other attributes.
fn take_name(attrs: &mut Vec<Attribute>) -> syn::Result<Option<String>> {
    let mut name = None;
    let mut kept = Vec::new();
    for attr in std::mem::take(attrs) {
        if attr.path().is_ident("client") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    let value: LitStr = meta.value()?.parse()?;
                    if value.value().is_empty() {
                        return Err(meta.error("a client method name cannot be empty"));
                    }
                    name = Some(value.value());
                    Ok(())
                } else {
                    Err(meta.error("expected `name = \"...\"`"))
                }
            })?;
        } else {
            kept.push(attr);
        }
    }
    *attrs = kept;
    Ok(name)
}

fn method(mut function: TraitItemFn) -> syn::Result<ClientMethod> {
    let name = take_name(&mut function.attrs)?;
    let sig = &function.sig;
    if let Some(body) = &function.default {
        return Err(Error::new(
            body.span(),
            "client methods are declarations without a body: the client implements them",
        ));
    }
    if let Some(asyncness) = &sig.asyncness {
        return Err(Error::new(
            asyncness.span(),
            "declare client methods without `async`: the generated methods return futures",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(Error::new(
            sig.generics.span(),
            "client methods cannot be generic: their argument types are the contract",
        ));
    }
    let rust_name = sig.ident.unraw().to_string();
    if RESERVED.contains(&rust_name.as_str()) {
        return Err(Error::new(
            sig.ident.span(),
            format!(
                "`{rust_name}` is a method of the client proxies; give the Rust method another name and keep the wire name with #[client(name = \"{}\")]",
                name.clone()
                    .unwrap_or_else(|| rust_name.to_upper_camel_case())
            ),
        ));
    }
    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) if r.reference.is_some() && r.mutability.is_none() => {}
            FnArg::Receiver(r) => {
                return Err(Error::new(
                    r.span(),
                    "client methods take no receiver (or `&self`)",
                ));
            }
            FnArg::Typed(pat_type) => {
                let Pat::Ident(pat) = &*pat_type.pat else {
                    return Err(Error::new(
                        pat_type.pat.span(),
                        "client method parameters must be plain names",
                    ));
                };
                if pat.by_ref.is_some() || pat.mutability.is_some() || pat.subpat.is_some() {
                    return Err(Error::new(
                        pat_type.pat.span(),
                        "client method parameters must be plain names",
                    ));
                }
                params.push((pat.ident.clone(), (*pat_type.ty).clone()));
            }
        }
    }
    if params.len() > 8 {
        return Err(Error::new(
            sig.inputs.span(),
            "client methods take at most 8 arguments",
        ));
    }
    let result = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) if matches!(&**ty, Type::Tuple(t) if t.elems.is_empty()) => None,
        ReturnType::Type(_, ty) => Some((**ty).clone()),
    };
    let wire_name = name.unwrap_or_else(|| rust_name.to_upper_camel_case());
    let schema = schema::Method {
        name: wire_name,
        rust_name,
        docs: schema::docs(&function.attrs),
        stream: false,
        params: params
            .iter()
            .map(|(ident, ty)| (ident.unraw().to_string(), ty.clone(), false))
            .collect(),
        returns: result.clone(),
    };
    Ok(ClientMethod {
        function,
        schema,
        params,
        result,
    })
}

/// Whether a type borrows (a reference or a lifetime anywhere in it).
fn borrows(ty: &Type) -> bool {
    struct Find(bool);
    impl<'ast> syn::visit::Visit<'ast> for Find {
        fn visit_lifetime(&mut self, _: &'ast syn::Lifetime) {
            self.0 = true;
        }
        fn visit_type_reference(&mut self, _: &'ast syn::TypeReference) {
            self.0 = true;
        }
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut find = Find(false);
    syn::visit::visit_type(&mut find, ty);
    find.0
}

/// The trait's declaration of a method and the blanket implementation's
/// definition of it.
fn generate(m: &ClientMethod) -> (TokenStream2, TokenStream2) {
    let ident = &m.function.sig.ident;
    let attrs = &m.function.attrs;
    let wire = &m.schema.name;
    let names: Vec<_> = m.params.iter().map(|(n, _)| n).collect();
    let types: Vec<_> = m.params.iter().map(|(_, t)| t).collect();
    let args = if names.is_empty() {
        quote!(())
    } else {
        quote!((#(#names,)*))
    };
    let borrowed = types.iter().any(|t| borrows(t));
    let how = if borrowed {
        "Its arguments are serialized now, in every hub protocol."
    } else {
        "Its arguments are serialized when first written, once per hub protocol."
    };
    let span = m.function.sig.ident.span();
    // Spans on the parameter types make a type error point at the
    // declaration that sets the contract.
    let inputs: Vec<_> = names
        .iter()
        .zip(&types)
        .map(|(n, t)| quote_spanned!(t.span()=> #n: #t))
        .collect();
    // A fire-and-forget send, or an invocation awaiting one client's result.
    let (doc, sig, call) = match &m.result {
        None => (
            format!("Invokes `{wire}` on the recipients without waiting for them. {how}"),
            quote_spanned! {span=>
                fn #ident(&self, #(#inputs),*) -> ::tidings::__private::SendFuture<'_>
            },
            if borrowed {
                quote!(::tidings::__private::send_borrowed(self, #wire, &#args))
            } else {
                quote!(::tidings::__private::send_owned(self, #wire, #args))
            },
        ),
        Some(result) => {
            let result_ty = quote_spanned!(result.span()=> #result);
            (
                format!(
                    "Invokes `{wire}` on one connection and waits for its result (await the returned `ClientInvoke`). {how}"
                ),
                quote_spanned! {span=>
                    fn #ident(&self, #(#inputs),*) -> ::tidings::__private::ClientInvoke<'_, #result_ty>
                    where
                        Self: ::tidings::__private::SingleClientTarget
                },
                if borrowed {
                    quote!(::tidings::__private::invoke_borrowed(self, #wire, &#args))
                } else {
                    quote!(::tidings::__private::invoke_owned(self, #wire, #args))
                },
            )
        }
    };
    (
        quote! {
            #(#attrs)*
            #[doc = ""]
            #[doc = #doc]
            #sig;
        },
        quote! {
            #[inline]
            #sig {
                #call
            }
        },
    )
}
