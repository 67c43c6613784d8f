//! The driver: reads both attributes, validates, and rebuilds the function.
//!
//! `#[cached]` and `#[invalidates]` may stand on one function in either order. Whichever
//! expands first takes the other off the function and expands both, so the result does not
//! depend on the order: the invalidation runs inside the loader, after the body succeeds and
//! before its value is stored; a cache hit runs neither.

use crate::args::{CachedArgs, InvalidatesArgs};
use crate::valid::{self, Cached, Errors, Function, Invalidates, Receiver, ReceiverKind};
use crate::{cached, fallback, invalidates};
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::spanned::Spanned as _;
use syn::{AttrStyle, Attribute, Expr, FnArg, GenericParam, Ident, ItemFn, Meta, Pat, ReturnType};

/// Which attribute is expanding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Cached,
    Invalidates,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cached => "cached",
            Kind::Invalidates => "invalidates",
        }
    }

    /// Which of ours an attribute on the function is: `#[cached]`, `#[cachekit::cached]`, ...
    fn of(attribute: &Attribute) -> Option<Kind> {
        let path = attribute.path();
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        let name = match segments.as_slice() {
            [name] if path.leading_colon.is_none() => name,
            [krate, name] if krate == "cachekit" => name,
            _ => return None,
        };
        match name.as_str() {
            "cached" => Some(Kind::Cached),
            "invalidates" => Some(Kind::Invalidates),
            _ => None,
        }
    }
}

/// The arguments of both attributes, as far as they parsed.
#[derive(Default)]
struct Both {
    cached: Option<CachedArgs>,
    invalidates: Option<InvalidatesArgs>,
    /// Where `#[invalidates]` is written, for "needs at least one pattern".
    invalidates_span: Option<Span>,
    /// `#[cached]` is present, even if its arguments did not parse.
    has_cached: bool,
}

impl Both {
    fn read(&mut self, kind: Kind, tokens: TokenStream, span: Span, errors: &mut Errors) {
        match kind {
            Kind::Cached => {
                self.has_cached = true;
                match syn::parse2(tokens) {
                    Ok(args) => self.cached = Some(args),
                    Err(error) => errors.push(error),
                }
            }
            Kind::Invalidates => {
                self.invalidates_span = Some(span);
                match syn::parse2(tokens) {
                    Ok(args) => self.invalidates = Some(args),
                    Err(error) => errors.push(error),
                }
            }
        }
    }
}

pub(crate) fn expand(kind: Kind, args: TokenStream, input: TokenStream) -> TokenStream {
    let mut item: ItemFn = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(_) => {
            let message = format!("#[{}] applies to an `async fn` with a body", kind.name());
            let error = syn::Error::new(Span::call_site(), message).to_compile_error();
            return quote!(#error #input);
        }
    };

    let mut errors = Errors::default();
    let mut both = Both::default();
    both.read(kind, args, Span::call_site(), &mut errors);
    let mut absorbed = None;
    item.attrs.retain(|attribute| {
        let Some(other) = Kind::of(attribute) else {
            return true;
        };
        if other == kind || absorbed == Some(other) {
            errors.at(
                attribute,
                format!("#[{}] is given twice on one function", other.name()),
            );
        } else {
            absorbed = Some(other);
            let tokens = match &attribute.meta {
                Meta::Path(_) => TokenStream::new(),
                Meta::List(list) => list.tokens.clone(),
                Meta::NameValue(_) => {
                    errors.at(attribute, format!("write #[{}(...)]", other.name()));
                    return false;
                }
            };
            both.read(other, tokens, attribute.path().span(), &mut errors);
        }
        false
    });

    let function = valid::function(&item, kind.name(), both.has_cached, &mut errors);
    let cached = both
        .cached
        .map(|args| valid::cached(args, &item.sig, &function, &mut errors));
    let invalidates = both.invalidates.map(|args| {
        let span = both.invalidates_span.unwrap_or_else(Span::call_site);
        valid::invalidates(args, span, &function, &mut errors)
    });
    match errors.into_result() {
        Ok(()) => generate(item, &function, cached, invalidates),
        Err(error) => fallback::expand(&item, cached.as_ref(), &function, error),
    }
}

fn generate(
    item: ItemFn,
    function: &Function,
    cached: Option<Cached>,
    invalidates: Option<Invalidates>,
) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    let (inner, outer): (Vec<Attribute>, Vec<Attribute>) = attrs
        .into_iter()
        .partition(|attribute| matches!(attribute.style, AttrStyle::Inner(_)));

    // The user's body as a future whose output is the declared return type, so that `return`
    // and `?` inside it behave as in the original function. The `if false` branch fixes the
    // future's output type before the body is checked (as tracing-attributes does), which `?`
    // needs to pick its error conversion.
    let output = &function.output.ty;
    let body = quote_spanned! {output.span()=>
        async move {
            #[allow(
                unknown_lints,
                unreachable_code,
                clippy::diverging_sub_expression,
                clippy::empty_loop,
                clippy::let_unit_value,
                clippy::let_with_type_underscore,
                clippy::needless_return,
                clippy::unreachable
            )]
            if false {
                let __cachekit_unreachable: #output = loop {};
                return __cachekit_unreachable;
            }
            #block
        }
    };

    let cached_cache = format_ident!("__cachekit_cache");
    let invalidate_cache = format_ident!("__cachekit_invalidate_cache");
    let receiver = function.receiver.as_ref();
    let mut prelude = TokenStream::new();
    if let Some(cached) = &cached {
        prelude.extend(service(cached.cache.as_ref(), receiver, &cached_cache));
    }
    let body = match &invalidates {
        None => body,
        Some(invalidates) => {
            match (&cached, &invalidates.cache) {
                // The same service as #[cached]'s, unless #[invalidates] names its own.
                (Some(_), None) => prelude.extend(quote! {
                    let #invalidate_cache = #cached_cache;
                }),
                (_, cache) => prelude.extend(service(cache.as_ref(), receiver, &invalidate_cache)),
            }
            let statements = invalidates::wrap(invalidates, function, &invalidate_cache, body);
            if cached.is_none() {
                return quote! {
                    #(#outer)*
                    #vis #sig {
                        #(#inner)*
                        #prelude
                        #statements
                    }
                };
            }
            quote!(async move { #statements })
        }
    };
    let Some(cached) = cached else {
        unreachable!("a function reaches here only with #[cached]")
    };

    let key = cached::key(&cached, function, &sig.ident);
    let load = cached::load(&cached, function, &cached_cache, body);
    let Some(status) = cached.status else {
        let value = cached::unwrap_fetched(function, load);
        return quote! {
            #(#outer)*
            #vis #sig {
                #(#inner)*
                #key
                #prelude
                #value
            }
        };
    };

    // `status`: the work moves to `{name}_with_status`, returning `Fetched`; the function
    // itself delegates to it and keeps only the value.
    let companion = companion_signature(&sig, function);
    let companion_attrs = outer
        .iter()
        .filter(|attribute| carried_to_companion(attribute));
    let doc = companion_doc(&sig.ident);
    let call = delegate(&sig, function, &companion.ident, status);
    let value = cached::unwrap_fetched(function, quote!(#call.await));
    let mut sig = sig;
    strip_mut(&mut sig);
    quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #value
        }

        #(#companion_attrs)*
        #[doc = #doc]
        #vis #companion {
            #(#inner)*
            #key
            #prelude
            #load
        }
    }
}

/// `let #binding: Option<&CacheService> = ...;`: the service the call uses.
///
/// With `&self` (or no `self`), the service is borrowed for the whole call. With any other
/// receiver the body takes `self` by value or exclusively, so the service handle (an `Arc`) is
/// cloned first instead.
fn service(cache: Option<&Expr>, receiver: Option<&Receiver>, binding: &Ident) -> TokenStream {
    let private = quote!(::cachekit::__private);
    let owned = format_ident!("{}_source", binding);
    let ty = quote!(#private::Option<&::cachekit::CacheService>);
    let borrow = receiver.is_none_or(|receiver| receiver.kind == ReceiverKind::Shared);
    match (cache, receiver) {
        (Some(expr), _) => {
            let service = quote_spanned!(expr.span()=> #private::as_service);
            if borrow {
                quote! {
                    let #owned = &(#expr);
                    let #binding: #ty = #private::Some(#service(#owned));
                }
            } else {
                quote! {
                    let #owned: ::cachekit::CacheService =
                        ::core::clone::Clone::clone(#service(&(#expr)));
                    let #binding: #ty = #private::Some(&#owned);
                }
            }
        }
        (None, Some(receiver)) => {
            let self_token = receiver.self_token;
            let this = match receiver.kind {
                ReceiverKind::Shared => quote!(#self_token),
                ReceiverKind::Value => quote!(&#self_token),
                ReceiverKind::Exclusive | ReceiverKind::Pointer => quote!(&*#self_token),
            };
            // Spanned at `self`: a type that does not implement `HasCache` is reported there.
            let service = quote_spanned!(self_token.span=> #private::has_cache(#this));
            if borrow {
                quote!(let #binding: #ty = #private::Some(#service);)
            } else {
                quote! {
                    let #owned: ::cachekit::CacheService = ::core::clone::Clone::clone(#service);
                    let #binding: #ty = #private::Some(&#owned);
                }
            }
        }
        (None, None) => quote!(let #binding: #ty = #private::global();),
    }
}

/// `{name}_with_status`, with the same parameters, returning `Fetched`.
fn companion_signature(sig: &syn::Signature, function: &Function) -> syn::Signature {
    let mut companion = sig.clone();
    companion.ident = format_ident!("{}_with_status", sig.ident.unraw(), span = sig.ident.span());
    let output = cached::fetched_output(function);
    companion.output = ReturnType::Type(Default::default(), Box::new(output));
    companion
}

fn companion_doc(name: &Ident) -> String {
    format!(
        " Like `{name}`, and also tells whether the value came from the cache \
         (`Fetched::from_cache`).\n\n Generated by `#[cached(status)]` on `{name}`.",
        name = name.unraw()
    )
}

/// The attributes that apply to the companion as well: conditional compilation, lint levels
/// and deprecation. Docs and other attribute macros stay on the function itself.
fn carried_to_companion(attribute: &Attribute) -> bool {
    [
        "cfg",
        "cfg_attr",
        "allow",
        "warn",
        "deny",
        "forbid",
        "expect",
        "deprecated",
        "must_use",
    ]
    .iter()
    .any(|name| attribute.path().is_ident(name))
}

/// The function calling its companion: `Self::name_with_status(self, a, b)` in an impl (a
/// receiver or `Self` in the signature says so), `name_with_status(a, b)` otherwise.
fn delegate(
    sig: &syn::Signature,
    function: &Function,
    companion: &Ident,
    status: Span,
) -> TokenStream {
    let receiver = function.receiver.as_ref().map(|receiver| {
        let self_token = receiver.self_token;
        quote!(#self_token,)
    });
    let args = function.params.iter().map(|param| &param.ident);
    let generics: Vec<&Ident> = sig
        .generics
        .params
        .iter()
        .filter_map(|param| match param {
            GenericParam::Type(ty) => Some(&ty.ident),
            GenericParam::Const(constant) => Some(&constant.ident),
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    // Explicit generic arguments are not allowed when a parameter is `impl Trait`.
    let turbofish = if generics.is_empty() || mentions(sig.inputs.to_token_stream(), "impl") {
        None
    } else {
        Some(quote!(::<#(#generics),*>))
    };
    let in_impl = function.receiver.is_some() || mentions(sig.to_token_stream(), "Self");
    // Spanned at `status`, where a failure to find the companion is the user's to fix.
    if in_impl {
        quote_spanned!(status=> Self::#companion #turbofish(#receiver #(#args),*))
    } else {
        quote_spanned!(status=> #companion #turbofish(#(#args),*))
    }
}

/// Whether `tokens` contain the identifier `word`, at any depth.
pub(crate) fn mentions(tokens: TokenStream, word: &str) -> bool {
    tokens.into_iter().any(|token| match token {
        TokenTree::Ident(ident) => ident == word,
        TokenTree::Group(group) => mentions(group.stream(), word),
        _ => false,
    })
}

/// Drops `mut` from the parameters of the delegating function, which does not use them
/// mutably (`mut` on a binding is not part of the function's interface).
fn strip_mut(sig: &mut syn::Signature) {
    for input in &mut sig.inputs {
        match input {
            // `mut self`; in `&mut self` the `mut` belongs to the reference and stays.
            FnArg::Receiver(receiver) if receiver.reference.is_none() => {
                receiver.mutability = None;
            }
            FnArg::Receiver(_) => {}
            FnArg::Typed(typed) => {
                if let Pat::Ident(pat) = &mut *typed.pat {
                    pat.mutability = None;
                }
            }
        }
    }
}

/// The companion's signature and docs, for the fallback: callers of `name_with_status` then
/// see the real error, not a missing function.
pub(crate) fn status_stub(item: &ItemFn, function: &Function) -> TokenStream {
    let companion = companion_signature(&item.sig, function);
    let doc = companion_doc(&item.sig.ident);
    let vis = &item.vis;
    quote! {
        #[doc = #doc]
        #[allow(unused_variables, clippy::unused_async)]
        #vis #companion {
            ::core::unreachable!()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(attribute: &str) -> Option<&'static str> {
        let attribute: Attribute =
            syn::parse_str::<syn::ItemFn>(&format!("{attribute} fn f() {{}}"))
                .unwrap()
                .attrs
                .remove(0);
        Kind::of(&attribute).map(Kind::name)
    }

    #[test]
    fn recognizes_both_attributes_by_path() {
        assert_eq!(kind_of("#[cached]"), Some("cached"));
        assert_eq!(kind_of("#[cached(ttl = 1)]"), Some("cached"));
        assert_eq!(
            kind_of("#[cachekit::invalidates(\"a\")]"),
            Some("invalidates")
        );
        assert_eq!(kind_of("#[other::cached]"), None);
        assert_eq!(kind_of("#[::cached]"), None);
        assert_eq!(kind_of("#[inline]"), None);
    }

    #[test]
    fn finds_words_at_any_depth() {
        assert!(mentions(quote!(a.b(c, [Self])), "Self"));
        assert!(!mentions(quote!("Self" + self_), "Self"));
    }

    #[test]
    fn an_error_keeps_the_function() {
        let output = expand(
            Kind::Cached,
            quote!(ttl = 0),
            quote!(
                async fn f(id: u64) -> u64 {
                    id
                }
            ),
        )
        .to_string();
        assert!(output.contains("compile_error"), "{output}");
        assert!(
            output.contains("async fn f (id : u64) -> u64 { id }"),
            "{output}"
        );
    }

    #[test]
    fn the_other_attribute_is_taken_off_the_function() {
        let output = expand(
            Kind::Cached,
            quote!(key = "a:{id}"),
            quote! {
                #[invalidates("b:{id}")]
                async fn f(id: u64) -> Result<u64, ()> { Ok(id) }
            },
        )
        .to_string();
        assert!(!output.contains("# [invalidates"), "{output}");
        assert!(output.contains(":: invalidate ("), "{output}");
    }
}
