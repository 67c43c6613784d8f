//! Code generation for `#[cached]`: the key, the call into the cache-aside runtime, and the
//! types of the `status` companion.

use crate::expand::mentions;
use crate::template::{Part, Template};
use crate::valid::{Cached, Function, MAX_TTL_SECS, OutputKind, Param};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::spanned::Spanned as _;
use syn::{GenericArgument, Ident, PathArguments, Type};

/// `let __cachekit_key: String = ...;`, computed from borrowed arguments before the body takes
/// them. The format is the documented one: the rendered template (or `module::path::fn_name`),
/// its placeholder values escaped, then `:` and `hash_args` of the parameters the template
/// does not name, if any.
pub(crate) fn key(cached: &Cached, function: &Function, fn_name: &Ident) -> TokenStream {
    let named: Vec<&str> = cached.key.iter().flat_map(Template::placeholders).collect();
    // A parameter that the `cache` expression uses is the service, not part of the key.
    let service = cached.cache.as_ref().map(ToTokens::to_token_stream);
    let hashed: Vec<&Param> = function
        .params
        .iter()
        .filter(|param| !named.contains(&param.name.as_str()))
        .filter(|param| {
            let ident = param.ident.to_string();
            !service
                .clone()
                .is_some_and(|tokens| mentions(tokens, &ident))
        })
        .collect();

    // The format string and its arguments; `{}` for each placeholder and for the hash. Each
    // placeholder value is written escaped (`key::escape_part`), so that one containing `:`
    // cannot make two argument tuples share a key.
    let (mut format, mut args) = match &cached.key {
        Some(template) => format_template(template, function, |ident| {
            let span = ident.span();
            quote_spanned!(span=> ::cachekit::__private::key_part(::std::format_args!("{}", #ident)))
        }),
        None => (String::new(), Vec::new()),
    };

    let helper = if hashed.is_empty() {
        None
    } else {
        format.push_str(":{}");
        let values = hashed.iter().map(|param| {
            let ident = &param.ident;
            // Spanned at the parameter's type: one that is not `Serialize` is reported there.
            quote_spanned!(param.ty.span()=> &#ident)
        });
        args.push(quote!(__cachekit_hash(#(#values),*)));
        // One type parameter per argument, rather than one tuple, so that the compiler blames
        // the argument that is not `Serialize`. The tuple hashed is the same: `[a,b,...]`.
        let types: Vec<Ident> = (0..hashed.len())
            .map(|i| format_ident!("__CachekitArg{}", i))
            .collect();
        let names: Vec<Ident> = (0..hashed.len())
            .map(|i| format_ident!("__cachekit_arg{}", i))
            .collect();
        Some(quote! {
            #[inline(always)]
            fn __cachekit_hash<#(#types: ::cachekit::__private::Serialize),*>(
                #(#names: #types),*
            ) -> ::std::string::String {
                ::cachekit::__private::hash_args(&(#(#names,)*))
            }
        })
    };

    let value = if cached.key.is_some() {
        string(&format, &args)
    } else {
        let name = fn_name.unraw().to_string();
        quote! {
            ::std::format!(
                ::std::concat!("{}::", #name, #format),
                ::std::module_path!()
                #(, #args)*
            )
        }
    };
    quote! {
        #helper
        let __cachekit_key: ::std::string::String = #value;
    }
}

/// A template as a `format!` string and its arguments: the literal text with its braces
/// doubled, and `{}` for each placeholder, whose argument is `value` of the parameter it names.
pub(crate) fn format_template(
    template: &Template,
    function: &Function,
    value: impl Fn(&Ident) -> TokenStream,
) -> (String, Vec<TokenStream>) {
    let span = template.lit.span();
    let mut format = String::new();
    let mut args = Vec::new();
    for part in &template.parts {
        match part {
            Part::Literal(text) => format.push_str(&text.replace('{', "{{").replace('}', "}}")),
            Part::Placeholder(name) => {
                format.push_str("{}");
                // The parameter's own token, at the template's span: errors about the value
                // (not `Display`) point at the template.
                let param = function.params.iter().find(|param| param.name == *name);
                let mut ident =
                    param.map_or_else(|| Ident::new(name, span), |param| param.ident.clone());
                ident.set_span(span);
                args.push(value(&ident));
            }
        }
    }
    (format, args)
}

/// The `String` a `format!` string and its arguments produce: a plain literal when there are
/// no arguments.
pub(crate) fn string(format: &str, args: &[TokenStream]) -> TokenStream {
    if args.is_empty() {
        let text = format.replace("{{", "{").replace("}}", "}");
        quote!(::std::string::String::from(#text))
    } else {
        quote!(::std::format!(#format, #(#args),*))
    }
}

/// The call into the runtime, evaluating to `Result<Fetched<T>, E>` or `Fetched<T>`.
pub(crate) fn load(
    cached: &Cached,
    function: &Function,
    cache: &Ident,
    body: TokenStream,
) -> TokenStream {
    // Everything spanned at the cached type (`T` of a `Result<T, E>`): the compiler reports a
    // type that cannot be cached (not `Serialize` or not `DeserializeOwned`) there.
    let span = match &function.output.kind {
        OutputKind::Result { ok, .. } => ok.span(),
        _ => function.output.ty.span(),
    };
    // Not at the user's span: lints about `Duration` literals would apply to it.
    let ttl = match cached.ttl {
        Some(seconds) => {
            let seconds = syn::LitInt::new(&format!("{seconds}u64"), Span::call_site());
            let max = syn::LitInt::new(&format!("{MAX_TTL_SECS}u64"), Span::call_site());
            quote! {
                ::cachekit::__private::Some(::cachekit::__private::Duration::from_secs(
                    const { ::cachekit::__private::checked_ttl_secs(#seconds, #max) }
                ))
            }
        }
        None => quote!(::cachekit::__private::None),
    };
    let store_if = if function.output.is_optional() && !cached.cache_none {
        quote_spanned!(span=> ::cachekit::__private::is_some)
    } else {
        quote_spanned!(span=> ::cachekit::__private::always)
    };
    let load = if function.output.is_result() {
        quote_spanned!(span=> ::cachekit::__private::load_result)
    } else {
        quote_spanned!(span=> ::cachekit::__private::load_value)
    };
    let local = !cached.no_local;
    let beta = match cached.refresh_ahead {
        Some(beta) => {
            let beta = syn::LitFloat::new(&format!("{beta:?}f64"), Span::call_site());
            quote!(::cachekit::__private::Some(#beta))
        }
        None => quote!(::cachekit::__private::None),
    };
    let grace = match cached.grace {
        Some(seconds) => {
            let seconds = syn::LitInt::new(&format!("{seconds}u64"), Span::call_site());
            quote!(::cachekit::__private::Some(
                ::cachekit::__private::Duration::from_secs(#seconds)
            ))
        }
        None => quote!(::cachekit::__private::None),
    };
    let fresh = quote!(::cachekit::__private::Freshness::new(#beta, #grace));
    quote_spanned! {span=>
        #load(#cache, &__cachekit_key, #ttl, #local, #fresh, #store_if, #body).await
    }
}

/// The return type of the `status` companion: `Result<Fetched<T>, E>` for a `Result<T, E>`
/// (also through aliases such as `anyhow::Result<Fetched<T>>`), `Fetched<R>` for any other `R`.
pub(crate) fn fetched_output(function: &Function) -> Type {
    let output = &function.output;
    let mut ty = output.ty.clone();
    if let OutputKind::Result { ok, .. } = &output.kind
        && let Some(first) = first_type_argument(&mut ty)
    {
        *first = syn::parse_quote!(::cachekit::Fetched<#ok>);
        return ty;
    }
    syn::parse_quote!(::cachekit::Fetched<#ty>)
}

fn first_type_argument(ty: &mut Type) -> Option<&mut Type> {
    match ty {
        Type::Paren(inner) => first_type_argument(&mut inner.elem),
        Type::Group(inner) => first_type_argument(&mut inner.elem),
        Type::Path(path) => match &mut path.path.segments.last_mut()?.arguments {
            PathArguments::AngleBracketed(args) => args.args.iter_mut().find_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            }),
            _ => None,
        },
        _ => None,
    }
}

/// From the `Fetched` form back to the declared return type: `.value`, inside `Ok` for a
/// `Result`.
pub(crate) fn unwrap_fetched(function: &Function, fetched: TokenStream) -> TokenStream {
    if function.output.is_result() {
        quote! {
            ::core::result::Result::map(#fetched, |__cachekit_fetched| __cachekit_fetched.value)
        }
    } else {
        quote!((#fetched).value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valid::{self, Errors};

    fn fetched(sig: &str) -> String {
        let item: syn::ItemFn =
            syn::parse_str(&format!("async fn f() -> {sig} {{ todo!() }}")).unwrap();
        let function = valid::function(&item, "cached", true, &mut Errors::default());
        fetched_output(&function)
            .to_token_stream()
            .to_string()
            .replace(' ', "")
    }

    #[test]
    fn status_output_wraps_the_value_type() {
        assert_eq!(
            fetched("Result<User, DbError>"),
            "Result<::cachekit::Fetched<User>,DbError>"
        );
        assert_eq!(
            fetched("anyhow::Result<Option<User>>"),
            "anyhow::Result<::cachekit::Fetched<Option<User>>>"
        );
        assert_eq!(fetched("Vec<User>"), "::cachekit::Fetched<Vec<User>>");
        assert_eq!(fetched("Option<User>"), "::cachekit::Fetched<Option<User>>");
    }

    #[test]
    fn literal_braces_are_single_in_the_string() {
        let template = Template::parse(&syn::parse_quote!("{{users}}:list")).unwrap();
        let item: syn::ItemFn = syn::parse_quote!(
            async fn f() -> u8 {
                0
            }
        );
        let function = valid::function(&item, "cached", true, &mut Errors::default());
        let (format, args) = format_template(&template, &function, |ident| quote!(#ident));
        assert_eq!(format, "{{users}}:list");
        assert_eq!(
            string(&format, &args).to_string(),
            quote!(::std::string::String::from("{users}:list")).to_string()
        );
    }
}
