//! Code generation for `#[invalidates]`: render the patterns, run the body, and invalidate
//! only when it succeeded.

use crate::cached;
use crate::template::Template;
use crate::valid::{Function, Invalidates};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::Ident;

/// Statements that render the patterns, await `body` (the function's own body as a future),
/// invalidate after a success, and end with the body's value.
///
/// Patterns are rendered before the body runs, because the body takes the arguments.
pub(crate) fn wrap(
    invalidates: &Invalidates,
    function: &Function,
    cache: &Ident,
    body: TokenStream,
) -> TokenStream {
    let patterns = invalidates
        .patterns
        .iter()
        .map(|template| render(template, function));
    let count = invalidates.patterns.len();
    let invalidate = quote! {
        ::cachekit::__private::invalidate(#cache, &__cachekit_patterns).await;
    };
    let after = if function.output.is_result() {
        quote! {
            if ::core::result::Result::is_ok(&__cachekit_out) {
                #invalidate
            }
        }
    } else {
        invalidate
    };
    quote! {
        let __cachekit_patterns: [::std::string::String; #count] = [#(#patterns),*];
        let __cachekit_out = #body.await;
        #after
        __cachekit_out
    }
}

/// A pattern with each placeholder replaced by the `Display` of its argument, escaped as in a
/// key (`escape_part`, so that it names the key `#[cached]` built from the same value) and
/// then glob-escaped (so that `*` cannot widen it); the literal text stays as written, globs
/// included.
fn render(template: &Template, function: &Function) -> TokenStream {
    let span = template.lit.span();
    let (format, args) = cached::format_template(template, function, |ident| {
        quote_spanned! {span=>
            ::cachekit::__private::escape_glob(&::cachekit::__private::escape_part(
                &::std::string::ToString::to_string(&#ident),
            ))
        }
    });
    cached::string(&format, &args)
}
