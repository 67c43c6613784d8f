//! Parsing the attribute arguments into options, as written.
//!
//! Parsing only reads tokens; whether an option is known, given once and well-formed is
//! decided in `valid.rs`, so that one pass can report every mistake at once.

use proc_macro2::Ident;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, LitStr, Token};

pub(crate) mod kw {
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(key);
    syn::custom_keyword!(cache);
    syn::custom_keyword!(cache_none);
    syn::custom_keyword!(status);
    syn::custom_keyword!(no_local);
    syn::custom_keyword!(refresh_ahead);
    syn::custom_keyword!(grace);
}

/// The arguments of `#[cached(...)]`.
pub(crate) struct CachedArgs {
    pub(crate) options: Vec<CachedOption>,
}

/// One option of `#[cached(...)]`.
pub(crate) enum CachedOption {
    /// `ttl = <expr>`; only a positive integer literal is valid.
    Ttl(kw::ttl, Expr),
    /// `key = "users:{id}"`.
    Key(kw::key, LitStr),
    /// `cache = <expr>`.
    Cache(kw::cache, Expr),
    /// `cache_none`.
    CacheNone(kw::cache_none),
    /// `status`.
    Status(kw::status),
    /// `no_local`.
    NoLocal(kw::no_local),
    /// `refresh_ahead`, or `refresh_ahead = <beta>`.
    RefreshAhead(kw::refresh_ahead, Option<Expr>),
    /// `grace = <seconds>`.
    Grace(kw::grace, Expr),
    /// Anything else that starts with an identifier; its value, if any, is skipped.
    Unknown(Ident),
}

/// The arguments of `#[invalidates(...)]`.
pub(crate) struct InvalidatesArgs {
    pub(crate) options: Vec<InvalidatesOption>,
}

/// One argument of `#[invalidates(...)]`.
pub(crate) enum InvalidatesOption {
    /// A pattern such as `"users:{id}"`.
    Pattern(LitStr),
    /// `cache = <expr>`.
    Cache(kw::cache, Expr),
    /// Anything else that starts with an identifier; its value, if any, is skipped.
    Unknown(Ident),
}

impl Parse for CachedArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let options = Punctuated::<CachedOption, Token![,]>::parse_terminated(input)?;
        Ok(CachedArgs {
            options: options.into_iter().collect(),
        })
    }
}

impl Parse for CachedOption {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::ttl) {
            let kw = input.parse()?;
            input.parse::<Token![=]>()?;
            Ok(CachedOption::Ttl(kw, input.parse()?))
        } else if lookahead.peek(kw::key) {
            let kw = input.parse()?;
            input.parse::<Token![=]>()?;
            Ok(CachedOption::Key(kw, input.parse()?))
        } else if lookahead.peek(kw::cache_none) {
            let kw = flag(input)?;
            Ok(CachedOption::CacheNone(kw))
        } else if lookahead.peek(kw::cache) {
            let kw = input.parse()?;
            input.parse::<Token![=]>()?;
            Ok(CachedOption::Cache(kw, input.parse()?))
        } else if lookahead.peek(kw::status) {
            Ok(CachedOption::Status(flag(input)?))
        } else if lookahead.peek(kw::no_local) {
            Ok(CachedOption::NoLocal(flag(input)?))
        } else if lookahead.peek(kw::refresh_ahead) {
            let kw = input.parse()?;
            let beta = if input.peek(Token![=]) {
                input.parse::<Token![=]>()?;
                Some(input.parse()?)
            } else {
                None
            };
            Ok(CachedOption::RefreshAhead(kw, beta))
        } else if lookahead.peek(kw::grace) {
            let kw = input.parse()?;
            input.parse::<Token![=]>()?;
            Ok(CachedOption::Grace(kw, input.parse()?))
        } else if input.peek(Ident::peek_any) {
            Ok(CachedOption::Unknown(unknown(input)?))
        } else {
            Err(lookahead.error())
        }
    }
}

impl Parse for InvalidatesArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let options = Punctuated::<InvalidatesOption, Token![,]>::parse_terminated(input)?;
        Ok(InvalidatesArgs {
            options: options.into_iter().collect(),
        })
    }
}

impl Parse for InvalidatesOption {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let lookahead = input.lookahead1();
        if lookahead.peek(LitStr) {
            Ok(InvalidatesOption::Pattern(input.parse()?))
        } else if lookahead.peek(kw::cache) {
            let kw = input.parse()?;
            input.parse::<Token![=]>()?;
            Ok(InvalidatesOption::Cache(kw, input.parse()?))
        } else if input.peek(Ident::peek_any) {
            Ok(InvalidatesOption::Unknown(unknown(input)?))
        } else {
            Err(lookahead.error())
        }
    }
}

/// A flag option: the keyword alone, with no `= value`.
fn flag<K: Parse + quote::ToTokens>(input: ParseStream<'_>) -> syn::Result<K> {
    let kw: K = input.parse()?;
    if input.peek(Token![=]) {
        return Err(syn::Error::new_spanned(
            &kw,
            format!(
                "`{}` is a flag and takes no value: write `{}` alone",
                quote::quote!(#kw),
                quote::quote!(#kw),
            ),
        ));
    }
    Ok(kw)
}

/// An unknown option: its name, with its value (up to the next top-level comma) skipped, so
/// that the options after it are still read and checked.
fn unknown(input: ParseStream<'_>) -> syn::Result<Ident> {
    let name = Ident::parse_any(input)?;
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_cached_option() {
        let args: CachedArgs = syn::parse_quote!(
            ttl = 300,
            key = "users:{id}",
            cache = self.cache,
            cache_none,
            status,
            no_local,
            refresh_ahead,
            refresh_ahead = 2.0,
            grace = 600,
        );
        let names: Vec<&str> = args
            .options
            .iter()
            .map(|option| match option {
                CachedOption::Ttl(..) => "ttl",
                CachedOption::Key(..) => "key",
                CachedOption::Cache(..) => "cache",
                CachedOption::CacheNone(..) => "cache_none",
                CachedOption::Status(..) => "status",
                CachedOption::NoLocal(..) => "no_local",
                CachedOption::RefreshAhead(_, None) => "refresh_ahead",
                CachedOption::RefreshAhead(_, Some(_)) => "refresh_ahead = beta",
                CachedOption::Grace(..) => "grace",
                CachedOption::Unknown(..) => "unknown",
            })
            .collect();
        assert_eq!(
            names,
            [
                "ttl",
                "key",
                "cache",
                "cache_none",
                "status",
                "no_local",
                "refresh_ahead",
                "refresh_ahead = beta",
                "grace"
            ]
        );
    }

    #[test]
    fn skips_the_value_of_an_unknown_option() {
        let args: CachedArgs = syn::parse_quote!(tll = foo::<A, B>(1, 2), type = 3, ttl = 1);
        assert!(matches!(&args.options[0], CachedOption::Unknown(name) if name == "tll"));
        // `foo::<A, B>` has a top-level comma, so the skip stops early at `B>(1, 2)`: that is
        // read as a second unknown option, which is still reported at the right place.
        assert!(matches!(&args.options[1], CachedOption::Unknown(name) if name == "B"));
        assert!(matches!(&args.options[2], CachedOption::Unknown(name) if name == "type"));
        assert!(matches!(&args.options[3], CachedOption::Ttl(..)));
    }

    #[test]
    fn a_flag_rejects_a_value() {
        let error = syn::parse_str::<CachedArgs>("cache_none = true")
            .err()
            .expect("a flag with a value is an error");
        assert!(error.to_string().contains("takes no value"), "{error}");
    }

    #[test]
    fn reads_invalidates_patterns_and_cache() {
        let args: InvalidatesArgs = syn::parse_quote!("users:*", cache = CACHE, "roles:{id}");
        assert!(
            matches!(&args.options[0], InvalidatesOption::Pattern(p) if p.value() == "users:*")
        );
        assert!(matches!(&args.options[1], InvalidatesOption::Cache(..)));
        assert!(matches!(&args.options[2], InvalidatesOption::Pattern(..)));
    }
}
