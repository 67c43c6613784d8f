//! What is emitted when the attributes are misused: the user's function unchanged next to the
//! errors, so that the function's callers and body still compile and the user sees the real
//! mistake, not a cascade of errors caused by a missing function.

use crate::expand;
use crate::valid::{Cached, Function};
use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

pub(crate) fn expand(
    item: &ItemFn,
    cached: Option<&Cached>,
    function: &Function,
    error: syn::Error,
) -> TokenStream {
    let error = error.to_compile_error();
    // With `status` the callers may use the companion too; give them its signature.
    let companion = cached
        .and_then(|cached| cached.status)
        .map(|_| expand::status_stub(item, function));
    quote! {
        #error
        #item
        #companion
    }
}
