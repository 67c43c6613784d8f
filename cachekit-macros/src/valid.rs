//! Validation: turns the options as written and the function's signature into the checked
//! facts that expansion needs, or into errors pointing at the offending tokens.
//!
//! Every check runs even after one fails, and the errors are combined, so the user sees all of
//! their mistakes at once.

use crate::args::{CachedArgs, CachedOption, InvalidatesArgs, InvalidatesOption};
use crate::template::{self, Template};
use proc_macro2::Span;
use quote::ToTokens;
use syn::ext::IdentExt as _;
use syn::{
    Expr, FnArg, GenericArgument, Ident, ItemFn, Lit, Pat, PathArguments, ReturnType, Signature,
    Type, UnOp,
};

/// Errors collected across checks.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn at<T: ToTokens>(&mut self, tokens: T, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn into_result(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// `#[cached]`, checked.
pub(crate) struct Cached {
    /// Seconds, at least 1.
    pub(crate) ttl: Option<u64>,
    pub(crate) key: Option<Template>,
    pub(crate) cache: Option<Expr>,
    pub(crate) cache_none: bool,
    /// The `status` keyword, when given.
    pub(crate) status: Option<Span>,
    /// Reads skip the in-process tier.
    pub(crate) no_local: bool,
    /// Refresh-ahead's beta, when on.
    pub(crate) refresh_ahead: Option<f64>,
    /// The grace period in seconds (stale-if-error), at least 1.
    pub(crate) grace: Option<u64>,
}

/// `#[invalidates]`, checked.
pub(crate) struct Invalidates {
    pub(crate) patterns: Vec<Template>,
    pub(crate) cache: Option<Expr>,
}

/// What the expansion needs to know about the annotated function.
pub(crate) struct Function {
    pub(crate) receiver: Option<Receiver>,
    /// The typed parameters, in declaration order.
    pub(crate) params: Vec<Param>,
    pub(crate) output: Output,
}

/// How the function takes `self`, which decides how the cache service is reached.
pub(crate) struct Receiver {
    pub(crate) kind: ReceiverKind,
    /// The `self` token, for spans.
    pub(crate) self_token: syn::token::SelfValue,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiverKind {
    /// `&self`: the service is borrowed from it while the body runs.
    Shared,
    /// `&mut self`: the body needs `self` exclusively, so the service handle is cloned first.
    Exclusive,
    /// `self`: moved into the body; the service handle is cloned first.
    Value,
    /// `self: Box<Self>`, `self: Arc<Self>`, `self: Pin<&mut Self>`...: as `Value`, through
    /// `Deref`.
    Pointer,
}

/// A parameter other than `self`.
pub(crate) struct Param {
    /// The binding, as written (possibly raw, `r#type`).
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
    /// `ident` without `r#`: the name templates use.
    pub(crate) name: String,
}

/// The declared return type, classified by its syntax.
pub(crate) struct Output {
    /// The return type as written; `()` when there is none.
    pub(crate) ty: Type,
    pub(crate) kind: OutputKind,
}

pub(crate) enum OutputKind {
    /// `Result<T, E>`, or any path whose last segment ends in `Result` with type arguments
    /// (`anyhow::Result<T>`, `io::Result<T>`, `DbResult<T>`): the first argument is the value.
    Result {
        ok: Box<Type>,
        /// `Result<Option<T>, E>`.
        ok_is_option: bool,
    },
    /// `Option<T>`.
    Option,
    /// `()`, or no return type.
    Unit,
    /// Anything else.
    Plain,
}

impl Output {
    pub(crate) fn is_result(&self) -> bool {
        matches!(self.kind, OutputKind::Result { .. })
    }

    /// Whether `None` is a possible value that is skipped unless `cache_none` is given.
    pub(crate) fn is_optional(&self) -> bool {
        matches!(
            self.kind,
            OutputKind::Option
                | OutputKind::Result {
                    ok_is_option: true,
                    ..
                }
        )
    }
}

/// Checks the function itself: `async`, plain parameter names (when `plain_params`), and a
/// return type that is not `impl Trait`. `attribute` names the attribute in messages.
pub(crate) fn function(
    item: &ItemFn,
    attribute: &str,
    plain_params: bool,
    errors: &mut Errors,
) -> Function {
    let sig = &item.sig;
    if sig.asyncness.is_none() {
        errors.at(
            sig.fn_token,
            format!(
                "#[{attribute}] applies to `async fn` only: `{}` is not async",
                sig.ident.unraw()
            ),
        );
    }

    let mut receiver = None;
    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                let kind = match &*r.ty {
                    Type::Reference(reference) if reference.mutability.is_none() => {
                        ReceiverKind::Shared
                    }
                    Type::Reference(_) => ReceiverKind::Exclusive,
                    Type::Path(path) if path.qself.is_none() && path.path.is_ident("Self") => {
                        ReceiverKind::Value
                    }
                    _ => ReceiverKind::Pointer,
                };
                receiver = Some(Receiver {
                    kind,
                    self_token: r.self_token,
                });
            }
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                    params.push(Param {
                        ident: pat.ident.clone(),
                        ty: (*typed.ty).clone(),
                        name: pat.ident.unraw().to_string(),
                    });
                }
                pat if plain_params => errors.at(
                    pat,
                    format!(
                        "parameters of a #[{attribute}] function must be plain names, as in \
                         `id: u64`: the key is built from them; bind this pattern to a name \
                         and destructure it in the body"
                    ),
                ),
                _ => {}
            },
        }
    }

    let ty = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if let Some(impl_trait) = find_impl_trait(&ty) {
        errors.at(
            impl_trait,
            format!(
                "#[{attribute}] cannot wrap a function returning `impl Trait`: name the \
                 concrete type, which the cache must be able to deserialize"
            ),
        );
    }
    let kind = classify(&ty);
    Function {
        receiver,
        params,
        output: Output { ty, kind },
    }
}

/// Checks the options of `#[cached]` against the function.
pub(crate) fn cached(
    args: CachedArgs,
    sig: &Signature,
    function: &Function,
    errors: &mut Errors,
) -> Cached {
    let mut seen = Seen::default();
    let mut checked = Cached {
        ttl: None,
        key: None,
        cache: None,
        cache_none: false,
        status: None,
        no_local: false,
        refresh_ahead: None,
        grace: None,
    };
    for option in args.options {
        match option {
            CachedOption::Ttl(kw, value) => {
                if seen.first("ttl", kw, errors) {
                    checked.ttl = seconds("ttl", "to use the service's default", &value, errors);
                }
            }
            CachedOption::Key(kw, lit) => {
                if seen.first("key", kw, errors) {
                    match Template::parse(&lit) {
                        Ok(template) => {
                            placeholders(&template, "key", function, errors);
                            checked.key = Some(template);
                        }
                        Err(error) => errors.push(error),
                    }
                }
            }
            CachedOption::Cache(kw, expr) => {
                if seen.first("cache", kw, errors) {
                    checked.cache = Some(expr);
                }
            }
            CachedOption::CacheNone(kw) => {
                if seen.first("cache_none", kw, errors) {
                    checked.cache_none = true;
                }
            }
            CachedOption::Status(kw) => {
                if seen.first("status", kw, errors) {
                    checked.status = Some(kw.span);
                }
            }
            CachedOption::NoLocal(kw) => {
                if seen.first("no_local", kw, errors) {
                    checked.no_local = true;
                }
            }
            CachedOption::RefreshAhead(kw, beta) => {
                if seen.first("refresh_ahead", kw, errors) {
                    checked.refresh_ahead = match beta {
                        None => Some(DEFAULT_BETA),
                        Some(value) => self::beta(&value, errors),
                    };
                }
            }
            CachedOption::Grace(kw, value) => {
                if seen.first("grace", kw, errors) {
                    checked.grace = seconds("grace", "for no grace period", &value, errors);
                }
            }
            CachedOption::Unknown(name) => unknown_option(
                &name,
                "cached",
                &[
                    "ttl",
                    "key",
                    "cache",
                    "cache_none",
                    "status",
                    "no_local",
                    "refresh_ahead",
                    "grace",
                ],
                errors,
            ),
        }
    }

    match &function.output.kind {
        OutputKind::Unit => {
            let message = format!(
                "#[cached] needs a return value to cache, and `{}` returns `()`",
                sig.ident.unraw()
            );
            match &sig.output {
                ReturnType::Default => errors.at(&sig.ident, message),
                ReturnType::Type(_, ty) => errors.at(ty, message),
            }
        }
        _ if checked.cache_none && !function.output.is_optional() => errors.at(
            &function.output.ty,
            "`cache_none` applies to functions returning `Option<T>` or `Result<Option<T>, E>`",
        ),
        _ => {}
    }
    checked
}

/// Checks the arguments of `#[invalidates]` against the function.
pub(crate) fn invalidates(
    args: InvalidatesArgs,
    attribute: Span,
    function: &Function,
    errors: &mut Errors,
) -> Invalidates {
    let mut seen = Seen::default();
    let mut checked = Invalidates {
        patterns: Vec::new(),
        cache: None,
    };
    let mut any_pattern = false;
    for option in args.options {
        match option {
            InvalidatesOption::Pattern(lit) => {
                any_pattern = true;
                if lit.value().is_empty() {
                    errors.at(
                        &lit,
                        "empty pattern: name the keys to remove, as in \"users:{id}\"",
                    );
                    continue;
                }
                match Template::parse(&lit) {
                    Ok(template) => {
                        placeholders(&template, "pattern", function, errors);
                        checked.patterns.push(template);
                    }
                    Err(error) => errors.push(error),
                }
            }
            InvalidatesOption::Cache(kw, expr) => {
                if seen.first("cache", kw, errors) {
                    checked.cache = Some(expr);
                }
            }
            InvalidatesOption::Unknown(name) => {
                unknown_option(&name, "invalidates", &["cache"], errors);
            }
        }
    }
    if !any_pattern {
        errors.push(syn::Error::new(
            attribute,
            "#[invalidates] needs at least one pattern, as in #[invalidates(\"users:{id}\")]",
        ));
    }
    checked
}

/// Options seen so far, to report the second occurrence of one.
#[derive(Default)]
struct Seen(Vec<&'static str>);

impl Seen {
    /// Records `name`; on a repeat reports it at `token` and returns false.
    fn first<T: ToTokens>(&mut self, name: &'static str, token: T, errors: &mut Errors) -> bool {
        if self.0.contains(&name) {
            errors.at(token, format!("`{name}` is given more than once"));
            false
        } else {
            self.0.push(name);
            true
        }
    }
}

fn unknown_option(name: &Ident, attribute: &str, known: &[&str], errors: &mut Errors) {
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let name_text = name.unraw().to_string();
    let hint = match known.iter().find(|k| close(k, &name_text)) {
        Some(k) => format!("; did you mean `{k}`?"),
        None => String::new(),
    };
    let message = if attribute == "invalidates" {
        format!(
            "unknown option `{name_text}`: #[invalidates] takes pattern strings, as in \
             \"users:{{id}}\", and {list}{hint}"
        )
    } else {
        format!("unknown option `{name_text}`: #[{attribute}] takes {list}{hint}")
    };
    errors.at(name, message);
}

/// Whether two option names are at most two edits apart (a typo).
fn close(a: &str, b: &str) -> bool {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()] <= 2
}

/// The longest `ttl` in seconds: 10 years, the value of `cachekit::MAX_TTL`, which this
/// crate cannot import. The expansion passes it to `cachekit::__private::checked_ttl_secs`,
/// which fails the build if the two ever disagree.
pub(crate) const MAX_TTL_SECS: u64 = 315_360_000;

/// Refresh-ahead's beta when `refresh_ahead` is given without one.
const DEFAULT_BETA: f64 = 1.0;

/// The largest beta, as `cachekit`'s builder allows.
const MAX_BETA: f64 = 100.0;

/// A beta must be a number literal above 0 and at most `MAX_BETA`.
fn beta(value: &Expr, errors: &mut Errors) -> Option<f64> {
    let parsed = match value {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Float(float) => float.base10_parse::<f64>().ok(),
            Lit::Int(int) => int.base10_parse::<u32>().ok().map(f64::from),
            _ => None,
        },
        _ => None,
    };
    match parsed {
        Some(beta) if beta.is_finite() && beta > 0.0 && beta <= MAX_BETA => Some(beta),
        _ => {
            errors.at(
                value,
                format!(
                    "`refresh_ahead` takes a beta above 0 and at most {MAX_BETA}, as in \
                     `refresh_ahead = 1.5`, or no value for 1.0"
                ),
            );
            None
        }
    }
}

/// A number of seconds (`ttl`, `grace`) must be a positive integer literal, at most
/// `MAX_TTL_SECS`. `absent` says what leaving the option out means.
fn seconds(name: &str, absent: &str, value: &Expr, errors: &mut Errors) -> Option<u64> {
    let too_large = || {
        format!(
            "`{name}` is too large: at most {MAX_TTL_SECS} seconds (10 years, cachekit::MAX_TTL); \
             a longer one is likely a unit mistake"
        )
    };
    let message = match value {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Int(int) => match int.base10_parse::<u64>() {
                Ok(0) => format!("`{name}` must be at least 1 second; leave `{name}` out {absent}"),
                Ok(seconds) if seconds <= MAX_TTL_SECS => return Some(seconds),
                Ok(_) => too_large(),
                // Only a literal beyond u64::MAX fails to parse as one.
                Err(_) => too_large(),
            },
            Lit::Str(_) => {
                format!("`{name}` is a number of seconds, not a string: write `{name} = 300`")
            }
            Lit::Float(_) => format!("`{name}` is a whole number of seconds, as in `{name} = 300`"),
            _ => format!(
                "`{name}` must be a positive integer: the number of seconds, as in `{name} = 300`"
            ),
        },
        Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => {
            format!("`{name}` must be a positive number of seconds")
        }
        _ => format!(
            "`{name}` must be an integer literal: the number of seconds, as in `{name} = 300`"
        ),
    };
    errors.at(value, message);
    None
}

/// Every placeholder names a parameter other than `self`.
fn placeholders(template: &Template, what: &str, function: &Function, errors: &mut Errors) {
    for name in template.placeholders() {
        if name == "self" || name.starts_with("self.") {
            errors.at(
                &template.lit,
                format!(
                    "placeholder `{{{name}}}`: a {what} is built from the function's \
                     parameters, and `self` cannot be one; pass what identifies the entry as a \
                     parameter"
                ),
            );
        } else if !template::is_identifier(name) {
            errors.at(
                &template.lit,
                format!(
                    "placeholder `{{{name}}}` is not a parameter name: placeholders are \
                     written `{{param}}`, with no fields or format specs (write `{{{{` and `}}}}` \
                     for literal braces)"
                ),
            );
        } else if !function.params.iter().any(|param| param.name == name) {
            let names: Vec<String> = function
                .params
                .iter()
                .map(|param| format!("`{}`", param.name))
                .collect();
            let known = if names.is_empty() {
                "it has no parameters".to_owned()
            } else {
                format!("its parameters are {}", names.join(", "))
            };
            errors.at(
                &template.lit,
                format!("unknown placeholder `{{{name}}}`: the function has no parameter `{name}` ({known})"),
            );
        }
    }
}

/// The first `impl Trait` in a type, if any.
fn find_impl_trait(ty: &Type) -> Option<&Type> {
    match ty {
        Type::ImplTrait(_) => Some(ty),
        Type::Paren(inner) => find_impl_trait(&inner.elem),
        Type::Group(inner) => find_impl_trait(&inner.elem),
        Type::Reference(inner) => find_impl_trait(&inner.elem),
        Type::Array(inner) => find_impl_trait(&inner.elem),
        Type::Slice(inner) => find_impl_trait(&inner.elem),
        Type::Tuple(tuple) => tuple.elems.iter().find_map(find_impl_trait),
        Type::Path(path) => {
            path.path
                .segments
                .iter()
                .find_map(|segment| match &segment.arguments {
                    PathArguments::AngleBracketed(args) => {
                        args.args.iter().find_map(|arg| match arg {
                            GenericArgument::Type(ty) => find_impl_trait(ty),
                            _ => None,
                        })
                    }
                    _ => None,
                })
        }
        _ => None,
    }
}

fn classify(ty: &Type) -> OutputKind {
    match peel(ty) {
        Type::Tuple(tuple) if tuple.elems.is_empty() => OutputKind::Unit,
        ty => match last_segment(ty) {
            Some((name, Some(first))) if name.ends_with("Result") => OutputKind::Result {
                ok: Box::new(first.clone()),
                ok_is_option: is_option(first),
            },
            Some((name, Some(_))) if name == "Option" => OutputKind::Option,
            _ => OutputKind::Plain,
        },
    }
}

fn is_option(ty: &Type) -> bool {
    matches!(last_segment(peel(ty)), Some((name, Some(_))) if name == "Option")
}

/// The name of a path type's last segment, and its first type argument.
fn last_segment(ty: &Type) -> Option<(String, Option<&Type>)> {
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let segment = path.path.segments.last()?;
    let first = match &segment.arguments {
        PathArguments::AngleBracketed(args) => args.args.iter().find_map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        }),
        _ => None,
    };
    Some((segment.ident.unraw().to_string(), first))
}

fn peel(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Paren(inner) => ty = &inner.elem,
            Type::Group(inner) => ty = &inner.elem,
            _ => return ty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ty: &str) -> &'static str {
        match classify(&syn::parse_str(ty).unwrap()) {
            OutputKind::Result {
                ok_is_option: true, ..
            } => "result-option",
            OutputKind::Result { .. } => "result",
            OutputKind::Option => "option",
            OutputKind::Unit => "unit",
            OutputKind::Plain => "plain",
        }
    }

    #[test]
    fn classifies_return_types_by_syntax() {
        assert_eq!(kind("Result<User, DbError>"), "result");
        assert_eq!(kind("std::result::Result<User, DbError>"), "result");
        assert_eq!(kind("anyhow::Result<User>"), "result");
        assert_eq!(kind("io::Result<Vec<u8>>"), "result");
        assert_eq!(kind("DbResult<User>"), "result");
        assert_eq!(kind("Result<Option<User>, DbError>"), "result-option");
        assert_eq!(
            kind("anyhow::Result<std::option::Option<User>>"),
            "result-option"
        );
        assert_eq!(kind("Option<User>"), "option");
        assert_eq!(kind("()"), "unit");
        assert_eq!(kind("(u32, u32)"), "plain");
        assert_eq!(kind("Vec<User>"), "plain");
        assert_eq!(kind("SearchResult"), "plain");
        assert_eq!(kind("u64"), "plain");
    }

    #[test]
    fn typos_are_close() {
        assert!(close("ttl", "tll"));
        assert!(close("cache_none", "cache_nones"));
        assert!(close("key", "keys"));
        assert!(!close("status", "ttl"));
    }

    #[test]
    fn finds_nested_impl_trait() {
        let ty: Type = syn::parse_quote!(Result<Vec<impl Serialize>, E>);
        assert!(find_impl_trait(&ty).is_some());
        let ty: Type = syn::parse_quote!(Result<Vec<u8>, E>);
        assert!(find_impl_trait(&ty).is_none());
    }

    #[test]
    fn beta_and_grace_are_checked() {
        let beta_of = |tokens: &str| {
            let mut errors = Errors::default();
            let value: Expr = syn::parse_str(tokens).unwrap();
            let beta = beta(&value, &mut errors);
            (beta, errors.into_result().err().map(|e| e.to_string()))
        };
        assert_eq!(beta_of("1.5").0, Some(1.5));
        assert_eq!(beta_of("2").0, Some(2.0));
        for bad in ["0.0", "-1.0", "101.0", "\"1\"", "x"] {
            let (beta, error) = beta_of(bad);
            assert_eq!(beta, None, "{bad}");
            assert!(error.unwrap().contains("refresh_ahead"), "{bad}");
        }
        let grace_of = |tokens: &str| {
            let mut errors = Errors::default();
            let value: Expr = syn::parse_str(tokens).unwrap();
            let grace = seconds("grace", "for no grace period", &value, &mut errors);
            (grace, errors.into_result().err().map(|e| e.to_string()))
        };
        assert_eq!(grace_of("600").0, Some(600));
        for bad in ["0", "1.5", "\"600\"", "-5", "315360001"] {
            let (grace, error) = grace_of(bad);
            assert_eq!(grace, None, "{bad}");
            assert!(error.unwrap().contains("`grace`"), "{bad}");
        }
    }
}
