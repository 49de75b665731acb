//! The schema half of the macros: descriptions of each method's parameters
//! and result (`tidings::schema`), generic over the describer so that the
//! types need to support a generator only when that generator runs.

use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::{
    Attribute, Expr, FnArg, GenericArgument, ImplItemFn, Lit, Meta, Pat, PathArguments, ReturnType,
    Type, TypeParamBound, spanned::Spanned, visit_mut::VisitMut,
};

/// One method, as the schema sees it.
#[derive(Clone)]
pub(crate) struct Method {
    pub name: String,
    pub rust_name: String,
    pub docs: Vec<String>,
    pub stream: bool,
    /// `(name, type, client_stream)`
    pub params: Vec<(String, Type, bool)>,
    pub returns: Option<Type>,
}

/// The `///` lines of an item.
pub(crate) fn docs(attrs: &[Attribute]) -> Vec<String> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(lit) => match &lit.lit {
                    Lit::Str(s) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Replaces every lifetime with `'static` and every `impl Trait` with the
/// opaque stand-in, so that the type can appear in a where clause and be
/// inspected at run time.
struct Describable;

impl VisitMut for Describable {
    fn visit_lifetime_mut(&mut self, lifetime: &mut syn::Lifetime) {
        *lifetime = syn::Lifetime::new("'static", lifetime.apostrophe);
    }

    fn visit_type_mut(&mut self, ty: &mut Type) {
        match ty {
            Type::ImplTrait(_) | Type::Infer(_) => {
                *ty = syn::parse_quote!(::tidings::__private::Opaque);
            }
            _ => syn::visit_mut::visit_type_mut(self, ty),
        }
    }
}

/// The type that describes a parameter of type `ty`: references are
/// described by their referent.
pub(crate) fn describable(ty: &Type) -> Type {
    let mut ty = match ty {
        Type::Reference(r) => return describable(&r.elem),
        Type::Paren(p) => return describable(&p.elem),
        Type::Group(g) => return describable(&g.elem),
        other => other.clone(),
    };
    Describable.visit_type_mut(&mut ty);
    ty
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        _ => None,
    }
}

/// The first generic type argument of the last path segment.
fn first_type_argument(segment: &syn::PathSegment) -> Option<&Type> {
    let PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(t) if t.elems.is_empty())
}

/// `T` of `Result<T, E>`, else the type itself.
fn ok_type(ty: &Type) -> &Type {
    match last_segment(ty) {
        Some(s) if s.ident == "Result" => first_type_argument(s).unwrap_or(ty),
        _ => ty,
    }
}

/// The item type of a stream: `Item = T` of an `impl`/`dyn` bound (through
/// `Box`/`Pin`), or `T` of a `ClientStream<T>`; `None` if it cannot be read
/// from the syntax.
fn stream_item(ty: &Type) -> Option<Type> {
    let bounds = match ty {
        Type::ImplTrait(i) => Some(&i.bounds),
        Type::TraitObject(o) => Some(&o.bounds),
        Type::Paren(p) => return stream_item(&p.elem),
        _ => None,
    };
    if let Some(bounds) = bounds {
        for bound in bounds {
            let TypeParamBound::Trait(t) = bound else {
                continue;
            };
            let Some(last) = t.path.segments.last() else {
                continue;
            };
            let PathArguments::AngleBracketed(args) = &last.arguments else {
                continue;
            };
            for arg in &args.args {
                if let GenericArgument::AssocType(assoc) = arg
                    && assoc.ident == "Item"
                {
                    return Some(ok_type(&assoc.ty).clone());
                }
            }
        }
        return None;
    }
    let segment = last_segment(ty)?;
    if segment.ident == "ClientStream" {
        return first_type_argument(segment).cloned();
    }
    if segment.ident == "Box" || segment.ident == "Pin" {
        return stream_item(first_type_argument(segment)?);
    }
    None
}

fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => is_context(&r.elem),
        _ => last_segment(ty).is_some_and(|s| s.ident == "Context" && s.arguments.is_empty()),
    }
}

/// The schema of a hub method.
pub(crate) fn server_method(function: &ImplItemFn, name: &str, stream: bool) -> Method {
    let mut params = Vec::new();
    for input in function.sig.inputs.iter().skip(1) {
        let FnArg::Typed(pat_type) = input else {
            continue;
        };
        let ty = &*pat_type.ty;
        // Filled in by the server, not sent by clients.
        if is_context(ty) || crate::cancellation_param(ty).is_some() {
            continue;
        }
        let param_name = match &*pat_type.pat {
            Pat::Ident(ident) => ident.ident.unraw().to_string(),
            _ => format!("arg{}", params.len()),
        };
        match last_segment(ty) {
            Some(s) if s.ident == "ClientStream" => {
                let item = first_type_argument(s)
                    .cloned()
                    .unwrap_or_else(|| ty.clone());
                params.push((param_name, item, true));
            }
            _ => params.push((param_name, ty.clone(), false)),
        }
    }
    let returns = match &function.sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) if stream => Some(
            stream_item(ok_type(ty))
                .unwrap_or_else(|| syn::parse_quote!(::tidings::__private::Opaque)),
        ),
        ReturnType::Type(_, ty) => {
            let ok = ok_type(ty);
            (!is_unit(ok)).then(|| ok.clone())
        }
    };
    Method {
        name: name.to_owned(),
        rust_name: function.sig.ident.unraw().to_string(),
        docs: docs(&function.attrs),
        stream,
        params,
        returns,
    }
}

/// The where clause bounds (`__D: Describe<T>`) and the expression of the
/// method list, for a set of methods.
pub(crate) fn method_list(methods: &[Method]) -> (Vec<TokenStream2>, TokenStream2) {
    let mut bounds = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut bound = |ty: &Type| {
        let ty = describable(ty);
        let key = quote!(#ty).to_string();
        if seen.insert(key) {
            bounds.push(quote!(__D: ::tidings::__private::Describe<#ty>));
        }
        quote!(<__D as ::tidings::__private::Describe<#ty>>::describe())
    };
    let entries: Vec<TokenStream2> = methods
        .iter()
        .map(|m| {
            let name = &m.name;
            let rust_name = &m.rust_name;
            let docs = &m.docs;
            let stream = m.stream;
            let params: Vec<TokenStream2> = m
                .params
                .iter()
                .map(|(pname, ty, client_stream)| {
                    let described = bound(ty);
                    quote! {
                        ::tidings::__private::ParamSchema {
                            name: #pname,
                            ty: #described,
                            client_stream: #client_stream,
                        }
                    }
                })
                .collect();
            let returns = match &m.returns {
                Some(ty) => {
                    let described = bound(ty);
                    quote!(::core::option::Option::Some(#described))
                }
                None => quote!(::core::option::Option::None),
            };
            quote! {
                ::tidings::__private::MethodSchema {
                    name: #name,
                    rust_name: #rust_name,
                    docs: &[#(#docs),*],
                    stream: #stream,
                    params: ::tidings::__private::Vec::from([#(#params),*]),
                    returns: #returns,
                }
            }
        })
        .collect();
    let list = quote!(::tidings::__private::Vec::from([#(#entries),*]));
    (bounds, list)
}

/// `impl HubSchema<__D> for Hub`.
pub(crate) fn hub_impl(
    self_ty: &Type,
    methods: &[Method],
    client: Option<&syn::Path>,
) -> TokenStream2 {
    let (mut bounds, list) = method_list(methods);
    let name = match last_segment(self_ty) {
        Some(s) => s.ident.unraw().to_string(),
        None => quote!(#self_ty).to_string(),
    };
    let client_methods = match client {
        Some(path) => {
            // Spanned on the path, so that naming a trait that is not a
            // #[client] contract is reported at the path.
            let schema = quote_spanned! {path.span()=>
                <::tidings::__private::ClientProxy<'static> as #path>::__TidingsSchema
            };
            bounds.push(quote!(#schema: ::tidings::__private::ClientSchema<__D>));
            quote!(<#schema as ::tidings::__private::ClientSchema<__D>>::methods())
        }
        None => quote!(::tidings::__private::Vec::new()),
    };
    quote! {
        #[allow(private_bounds, private_interfaces)]
        impl<__D: ::tidings::__private::Describer> ::tidings::__private::HubSchema<__D> for #self_ty
        where
            #(#bounds,)*
        {
            const NAME: &'static str = #name;

            fn server_methods() -> ::tidings::__private::Vec<
                ::tidings::__private::MethodSchema<<__D as ::tidings::__private::Describer>::Type>,
            > {
                #list
            }

            fn client_methods() -> ::tidings::__private::Vec<
                ::tidings::__private::MethodSchema<<__D as ::tidings::__private::Describer>::Type>,
            > {
                #client_methods
            }
        }
    }
}
