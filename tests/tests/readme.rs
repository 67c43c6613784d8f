//! The shell commands of the README, checked against the workspace so none rots. (Its Rust code
//! blocks are doc tests of `cachekit`, which includes the README.)
//!
//! Every command of every ```bash block of `README.md` is parsed as bash reads it (quotes, `\`
//! line continuations, `#` comments) and checked:
//!
//! - `bash scripts/X.sh`: the script exists. `scripts/quickstart.sh` must run the `quickstart`
//!   example and nothing else, and the README's quickstart commands are run, with `REDIS_URL`
//!   pointing at a private `redis-server`.
//! - `cargo test -p P --test T ... [-- --nocapture] [FILTER]`: P is a workspace member, T one of
//!   its test targets, and each filter part of the name of a test function of T.
//! - `cargo run -p P --bin B`: B is a binary of P.
//! - `NAME=value` before a command, or `NAME` / `NAME=...` in a comment: the workspace's code
//!   reads that environment variable.
//! - `curl ... localhost:3000/PATH`: the `roles_api` example listens on that port by default and
//!   registers the method and path, a request in `tests/tests/example_roles_api.rs` reaches that
//!   route, and a JSON body names only fields of the route's request type.
//! - Anything else fails as "README command not checked by tests/tests/readme.rs", so a new kind
//!   of command cannot slip in unchecked; so does a shell block fenced as ```sh.
//!
//! Further tests feed the checker altered copies of the README and show that each check catches
//! a renamed test, binary, package, script, variable, route or field.
//!
//! Run with `cargo test -p cachekit-tests --test readme`.

use std::fs;
use std::iter;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cachekit_examples::roles_api::DEFAULT_BIND;
use cachekit_tests::{RedisServer, init_tracing};
use serde_json::Value;

/// The script the README's quickstart commands run, relative to the workspace root.
const QUICKSTART_SCRIPT: &str = "scripts/quickstart.sh";

/// The command `scripts/quickstart.sh` ends with, split into words.
const QUICKSTART_RUN: &[&str] = &[
    "exec",
    "cargo",
    "run",
    "-p",
    "cachekit-examples",
    "--bin",
    "quickstart",
    "--",
    "$@",
];

/// The `roles_api` example's module, relative to the workspace root: `roles_api.rs` and the
/// files under `roles_api/`. Every `curl` of the README talks to this service.
const ROLES_API_MODULE: &str = "examples/src/roles_api";

/// The `roles_api` example's integration test, relative to the workspace root.
const ROLES_API_TEST: &str = "tests/tests/example_roles_api.rs";

/// Fence names of shell blocks that this file would not read: shell goes in ```bash blocks.
const OTHER_SHELL_FENCES: &[&str] = &["sh", "shell", "console", "zsh"];

/// Environment variables the workspace's code reads through a library rather than by name, and
/// the call that reads them: tracing-subscriber's `EnvFilter::try_from_default_env` reads
/// `RUST_LOG`.
const READ_BY_LIBRARIES: &[(&str, &str)] = &[("RUST_LOG", "from_default_env")];

/// What the checks need to know about the workspace, read once.
#[derive(Clone)]
struct Workspace {
    root: PathBuf,
    /// The workspace members, from `cargo metadata`.
    packages: Vec<Package>,
    /// Every `.rs` file under a member's `src/`: the code that may read a variable.
    sources: Vec<String>,
    /// The files of the `roles_api` example's module.
    roles_api: Vec<String>,
    /// The text of [`ROLES_API_TEST`].
    roles_api_test: String,
}

#[derive(Clone)]
struct Package {
    name: String,
    targets: Vec<Target>,
}

#[derive(Clone)]
struct Target {
    name: String,
    /// `bin`, `test`, `lib`, ...
    kind: Vec<String>,
    /// Canonical.
    src_path: PathBuf,
}

impl Workspace {
    fn load() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .canonicalize()
            .expect("the workspace root exists");
        // `--no-deps` reads the manifests only: no dependency resolution, no build lock.
        let output = Command::new(env!("CARGO"))
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml"))
            .output()
            .expect("cargo metadata starts");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: Value =
            serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
        let members = metadata["packages"].as_array().expect("a package list");

        let mut packages = Vec::new();
        let mut sources = Vec::new();
        for member in members {
            let manifest = Path::new(member["manifest_path"].as_str().expect("a manifest path"));
            let src = manifest.with_file_name("src");
            if src.is_dir() {
                rust_sources(&src, &mut sources);
            }
            let targets = member["targets"].as_array().expect("a target list");
            packages.push(Package {
                name: member["name"].as_str().expect("a name").to_owned(),
                targets: targets
                    .iter()
                    .map(|target| Target {
                        name: target["name"].as_str().expect("a name").to_owned(),
                        kind: serde_json::from_value(target["kind"].clone()).expect("kinds"),
                        src_path: Path::new(target["src_path"].as_str().expect("a path"))
                            .canonicalize()
                            .expect("a target's source exists"),
                    })
                    .collect(),
            });
        }

        let module = root.join(ROLES_API_MODULE);
        let mut roles_api = vec![read(&module.with_extension("rs"))];
        rust_sources(&module, &mut roles_api);
        Self {
            packages,
            sources,
            roles_api,
            roles_api_test: read(&root.join(ROLES_API_TEST)),
            root,
        }
    }

    fn readme(&self) -> PathBuf {
        self.root.join("README.md")
    }

    fn package(&self, name: &str) -> Result<&Package, String> {
        self.packages
            .iter()
            .find(|package| package.name == name)
            .ok_or_else(|| {
                let members: Vec<&str> = self.packages.iter().map(|p| p.name.as_str()).collect();
                format!(
                    "no workspace member is named `{name}` (members: {})",
                    members.join(", ")
                )
            })
    }
}

impl Package {
    /// The target of `kind` (`bin`, `test`) named `name`.
    fn target(&self, kind: &str, name: &str) -> Result<&Target, String> {
        let of_kind = self
            .targets
            .iter()
            .filter(|target| target.kind.iter().any(|k| k == kind));
        of_kind
            .clone()
            .find(|target| target.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = of_kind.map(|t| t.name.as_str()).collect();
                format!(
                    "package `{}` has no {kind} target `{name}` (its {kind} targets: {})",
                    self.name,
                    names.join(", ")
                )
            })
    }
}

/// The workspace, read by the first test that asks.
fn workspace() -> &'static Workspace {
    static WORKSPACE: OnceLock<Workspace> = OnceLock::new();
    WORKSPACE.get_or_init(Workspace::load)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// Appends the text of every `.rs` file under `dir`.
fn rust_sources(dir: &Path, sources: &mut Vec<String>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_sources(&path, sources);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            sources.push(read(&path));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the README's shell.

/// A simple command: its words, quotes and escapes removed, and the line it starts on.
#[derive(Debug, PartialEq)]
struct ShellCommand {
    line: usize,
    words: Vec<String>,
}

/// A `#` comment, without the `#`, and its line.
#[derive(Debug, PartialEq)]
struct ShellComment {
    line: usize,
    text: String,
}

/// A fenced code block of a Markdown file.
struct Block<'a> {
    /// The line of the opening fence.
    fence_line: usize,
    /// What follows the opening fence: `bash`, `rust,no_run`, ...
    info: &'a str,
    content: String,
}

fn fenced_blocks(markdown: &str) -> Vec<Block<'_>> {
    let mut blocks = Vec::new();
    let mut open: Option<Block<'_>> = None;
    for (index, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```").map(str::trim);
        match open.as_mut() {
            Some(_) if fence == Some("") => blocks.extend(open.take()),
            Some(block) => {
                block.content.push_str(line);
                block.content.push('\n');
            }
            None => {
                if let Some(info) = fence {
                    open = Some(Block {
                        fence_line: index + 1,
                        info,
                        content: String::new(),
                    });
                }
            }
        }
    }
    blocks
}

/// The commands and comments of every ```bash block of `markdown`, with their lines in it.
fn readme_shell(markdown: &str) -> (Vec<ShellCommand>, Vec<ShellComment>) {
    let mut commands = Vec::new();
    let mut comments = Vec::new();
    for block in fenced_blocks(markdown) {
        if block.info == "bash" {
            let (block_commands, block_comments) =
                parse_shell(&block.content, block.fence_line + 1);
            commands.extend(block_commands);
            comments.extend(block_comments);
        }
    }
    (commands, comments)
}

/// Splits shell text, whose first line is line `first_line`, into simple commands and comments,
/// as bash reads what the README writes: blanks separate words; `'...'`, `"..."` and `\`
/// escapes quote, and are removed; `\` at the end of a line joins the next one; `#` at the start
/// of a word begins a comment to the end of the line (so the `#` of `a#b` or of a quoted JSON
/// body is no comment); newlines, `;`, `&` and `|` end a command.
fn parse_shell(text: &str, first_line: usize) -> (Vec<ShellCommand>, Vec<ShellComment>) {
    let mut splitter = Splitter::default();
    let mut comments = Vec::new();
    let mut line = first_line;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\n') => line += 1,
                Some(escaped) => splitter.word(line).push(escaped),
                None => {}
            },
            '\'' => {
                let word = splitter.word(line);
                for quoted in chars.by_ref().take_while(|&q| q != '\'') {
                    line += usize::from(quoted == '\n');
                    word.push(quoted);
                }
            }
            '"' => {
                let word = splitter.word(line);
                while let Some(quoted) = chars.next() {
                    match quoted {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                            word.extend(chars.next());
                        }
                        _ => {
                            line += usize::from(quoted == '\n');
                            word.push(quoted);
                        }
                    }
                }
            }
            '#' if !splitter.in_word() => {
                let comment: String = iter::from_fn(|| chars.next_if(|&c| c != '\n')).collect();
                comments.push(ShellComment {
                    line,
                    text: comment.trim().to_owned(),
                });
            }
            ' ' | '\t' => splitter.end_word(),
            '\n' | ';' | '&' | '|' => {
                splitter.end_command();
                line += usize::from(c == '\n');
            }
            _ => splitter.word(line).push(c),
        }
    }
    splitter.end_command();
    (splitter.commands, comments)
}

/// The state of [`parse_shell`]: the commands so far, and the one being read.
#[derive(Default)]
struct Splitter {
    commands: Vec<ShellCommand>,
    words: Vec<String>,
    word: Option<String>,
    /// The line the command being read starts on.
    line: usize,
}

impl Splitter {
    /// The word being read; a new one, begun on `line`, if there is none.
    fn word(&mut self, line: usize) -> &mut String {
        if self.words.is_empty() && self.word.is_none() {
            self.line = line;
        }
        self.word.get_or_insert_with(String::new)
    }

    fn in_word(&self) -> bool {
        self.word.is_some()
    }

    fn end_word(&mut self) {
        self.words.extend(self.word.take());
    }

    fn end_command(&mut self) {
        self.end_word();
        if !self.words.is_empty() {
            self.commands.push(ShellCommand {
                line: self.line,
                words: std::mem::take(&mut self.words),
            });
        }
    }
}

/// The leading `NAME=value` words of a command, the environment it sets, and the rest.
fn split_assignments(words: &[String]) -> (Vec<(&str, &str)>, &[String]) {
    let count = words
        .iter()
        .take_while(|word| {
            word.split_once('=')
                .is_some_and(|(name, _)| is_variable(name))
        })
        .count();
    let (assignments, rest) = words.split_at(count);
    let assignments = assignments
        .iter()
        .filter_map(|w| w.split_once('='))
        .collect();
    (assignments, rest)
}

fn is_variable(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The environment variables a comment names: words of capitals, digits and `_` that hold a `_`
/// or are followed by `=` (`DATABASE_URL`, `BIND=host:port`), but not plain capitals (`URL`).
fn variables_named(comment: &str) -> Vec<&str> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = Vec::new();
    let mut rest = comment;
    while let Some(start) = rest.find(is_name_char) {
        rest = &rest[start..];
        let end = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        if word.starts_with(|c: char| c.is_ascii_uppercase())
            && !word.contains(|c: char| c.is_ascii_lowercase())
            && (word.contains('_') || after.starts_with('='))
        {
            names.push(word);
        }
        rest = after;
    }
    names
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Every problem of the README at `path`, each naming its line: `path:line: problem`.
fn check_readme(path: &Path, ws: &Workspace) -> Vec<String> {
    let markdown = read(path);
    let at = |line: usize, problem: String| format!("{}:{line}: {problem}", path.display());
    let mut problems: Vec<String> = fenced_blocks(&markdown)
        .iter()
        .filter(|block| OTHER_SHELL_FENCES.contains(&block.info))
        .map(|block| {
            let problem = format!(
                "a ```{} block, which tests/tests/readme.rs does not read: fence shell as ```bash",
                block.info
            );
            at(block.fence_line, problem)
        })
        .collect();
    let (commands, comments) = readme_shell(&markdown);
    for command in &commands {
        if let Err(problem) = check_command(&command.words, ws) {
            problems.push(at(
                command.line,
                format!("`{}`: {problem}", command.words.join(" ")),
            ));
        }
    }
    for comment in &comments {
        for name in variables_named(&comment.text) {
            if let Err(problem) = check_variable(name, ws) {
                problems.push(at(
                    comment.line,
                    format!("comment `# {}`: {problem}", comment.text),
                ));
            }
        }
    }
    problems
}

/// The problem for a command this file does not know how to check.
fn unchecked(what: &str) -> String {
    format!("README command not checked by tests/tests/readme.rs: {what}")
}

fn check_command(words: &[String], ws: &Workspace) -> Result<(), String> {
    let (assignments, command) = split_assignments(words);
    for (name, _) in assignments {
        check_variable(name, ws)?;
    }
    let Some((program, args)) = command.split_first() else {
        return Err(unchecked(&words.join(" ")));
    };
    match program.as_str() {
        "bash" => check_script(args, ws),
        "cargo" => check_cargo(args, ws),
        "curl" => check_curl(args, ws),
        _ => Err(unchecked(&command.join(" "))),
    }
}

/// The workspace's code reads the environment variable `name`: `"NAME"` appears in a member's
/// `src/`, or the library call that reads it does ([`READ_BY_LIBRARIES`]).
fn check_variable(name: &str, ws: &Workspace) -> Result<(), String> {
    let evidence = READ_BY_LIBRARIES
        .iter()
        .find(|(variable, _)| *variable == name)
        .map_or_else(|| format!("\"{name}\""), |(_, call)| (*call).to_owned());
    if ws.sources.iter().any(|source| source.contains(&evidence)) {
        Ok(())
    } else {
        Err(format!(
            "the environment variable `{name}` is read nowhere \
             (no `{evidence}` in any member's src/)"
        ))
    }
}

/// `bash SCRIPT`: the script exists; the quickstart's must run what the tests run.
fn check_script(args: &[String], ws: &Workspace) -> Result<(), String> {
    let [script] = args else {
        return Err(unchecked(
            "`bash` with other than one script and no arguments",
        ));
    };
    if !ws.root.join(script).is_file() {
        return Err(format!("`{script}` does not exist"));
    }
    if script == QUICKSTART_SCRIPT {
        check_quickstart_script(ws)
    } else {
        Ok(())
    }
}

/// `scripts/quickstart.sh` only sets shell options, changes to the workspace root and runs
/// [`QUICKSTART_RUN`], whose binary is built from the same source as this package's
/// `quickstart-under-test`: so running that binary from the root runs what the script runs.
fn check_quickstart_script(ws: &Workspace) -> Result<(), String> {
    let (commands, _) = parse_shell(&read(&ws.root.join(QUICKSTART_SCRIPT)), 1);
    let Some((run, setup)) = commands.split_last() else {
        return Err(format!("{QUICKSTART_SCRIPT} runs nothing"));
    };
    if let Some(other) = setup
        .iter()
        .find(|c| !matches!(c.words[0].as_str(), "set" | "cd"))
    {
        return Err(format!(
            "{QUICKSTART_SCRIPT}:{}: `{}` is more than `set` and `cd` before the quickstart \
             runs, and tests/tests/readme.rs runs the quickstart without it",
            other.line,
            other.words.join(" ")
        ));
    }
    if run.words != QUICKSTART_RUN {
        return Err(format!(
            "{QUICKSTART_SCRIPT}:{}: runs `{}`, and tests/tests/readme.rs runs `{}`",
            run.line,
            run.words.join(" "),
            QUICKSTART_RUN.join(" ")
        ));
    }
    let script_runs = &ws
        .package("cachekit-examples")?
        .target("bin", "quickstart")?
        .src_path;
    let tests_run = &ws
        .package("cachekit-tests")?
        .target("bin", "quickstart-under-test")?
        .src_path;
    if script_runs != tests_run {
        return Err(format!(
            "{QUICKSTART_SCRIPT} runs {}, and tests/tests/readme.rs runs quickstart-under-test, \
             built from {}",
            script_runs.display(),
            tests_run.display()
        ));
    }
    Ok(())
}

/// The value of `option`, the next argument.
fn value<'a>(args: &mut std::slice::Iter<'a, String>, option: &str) -> Result<&'a str, String> {
    args.next()
        .map(String::as_str)
        .ok_or_else(|| format!("`{option}` without a value"))
}

/// `cargo test -p P --test T... [FILTER] [-- --nocapture FILTER...]` and `cargo run -p P --bin
/// B`: P is a workspace member, each T one of its test targets, B one of its binaries, and each
/// filter part of the name of a test function of the Ts (as libtest matches it).
fn check_cargo(args: &[String], ws: &Workspace) -> Result<(), String> {
    let Some((subcommand, args)) = args.split_first() else {
        return Err(unchecked("`cargo` without a subcommand"));
    };
    let subcommand = subcommand.as_str();
    let mut package = None;
    let mut tests = Vec::new();
    let mut bin = None;
    let mut filters = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-p" | "--package" => package = Some(value(&mut args, arg)?),
            "--test" => tests.push(value(&mut args, arg)?),
            "--bin" => bin = Some(value(&mut args, arg)?),
            // The rest goes to libtest.
            "--" if subcommand == "test" => {
                for arg in args.by_ref() {
                    match arg.as_str() {
                        "--nocapture" => {}
                        option if option.starts_with('-') => {
                            return Err(unchecked(&format!("the test harness option `{option}`")));
                        }
                        filter => filters.push(filter),
                    }
                }
            }
            option if option.starts_with('-') => {
                return Err(unchecked(&format!("the cargo option `{option}`")));
            }
            filter if subcommand == "test" => filters.push(filter),
            other => return Err(unchecked(&format!("the argument `{other}`"))),
        }
    }
    let package = ws.package(package.ok_or_else(|| unchecked("cargo without `-p`"))?)?;
    match (subcommand, bin) {
        ("test", None) if !tests.is_empty() => {
            let sources = tests
                .iter()
                .map(|test| package.target("test", test).map(|t| read(&t.src_path)))
                .collect::<Result<Vec<_>, _>>()?;
            let functions: Vec<&str> = sources.iter().flat_map(|s| test_functions(s)).collect();
            match filters
                .into_iter()
                .find(|filter| !functions.iter().any(|f| f.contains(filter)))
            {
                Some(filter) => Err(format!(
                    "the filter `{filter}` is part of no test function's name in --test {}",
                    tests.join(", --test ")
                )),
                None => Ok(()),
            }
        }
        ("run", Some(bin)) if tests.is_empty() => package.target("bin", bin).map(|_| ()),
        _ => Err(unchecked(&format!("`cargo {subcommand}` in this form"))),
    }
}

/// The names of the functions marked `#[test]` or `#[tokio::test...]` in `source`.
fn test_functions(source: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut marked = false;
    for line in source.lines().map(str::trim) {
        if line.starts_with("#[test]") || line.starts_with("#[tokio::test") {
            marked = true;
        } else if let Some(rest) = line.strip_prefix("async fn ").or(line.strip_prefix("fn ")) {
            if marked {
                names.extend(rest.split(['(', '<']).next());
            }
            marked = false;
        }
    }
    names
}

/// A route the `roles_api` example registers: `.route("/path", method(handler))`.
struct Route<'a> {
    method: String,
    path: &'a str,
    /// The handler function; `None` for a closure.
    handler: Option<&'a str>,
    /// The file that registers the route, where its handler is.
    file: &'a str,
}

fn routes(files: &[String]) -> Vec<Route<'_>> {
    files
        .iter()
        .flat_map(|file| file.split(".route(").skip(1).map(move |call| (file, call)))
        .filter_map(|(file, call)| {
            let (path, rest) = call.trim_start().strip_prefix('"')?.split_once('"')?;
            let (function, argument) = rest.trim_start().strip_prefix(',')?.split_once('(')?;
            let handler = argument.split_once(')').map(|(handler, _)| handler);
            Some(Route {
                method: function.trim().rsplit("::").next()?.to_ascii_uppercase(),
                path,
                handler: handler.filter(|h| h.chars().all(|c| c.is_alphanumeric() || c == '_')),
                file,
            })
        })
        .collect()
}

/// The route pattern among `patterns` that axum picks for `path`: each segment equal, or any
/// non-empty segment for a `{parameter}`; a literal segment wins over a parameter.
fn resolve<'a>(patterns: impl IntoIterator<Item = &'a str>, path: &str) -> Option<&'a str> {
    let segments: Vec<&str> = path.split('/').collect();
    patterns
        .into_iter()
        .filter_map(|pattern| {
            let parts: Vec<&str> = pattern.split('/').collect();
            let literal = (parts.len() == segments.len()).then(|| {
                iter::zip(&parts, &segments)
                    .map(|(part, segment)| {
                        if part.starts_with('{') && part.ends_with('}') {
                            (!segment.is_empty()).then_some(false)
                        } else {
                            (part == segment).then_some(true)
                        }
                    })
                    .collect::<Option<Vec<bool>>>()
            })??;
            Some((literal, pattern))
        })
        .max()
        .map(|(_, pattern)| pattern)
}

/// `T` of the `Json<T>` parameter of `fn handler(...)` in `source`, if it has one.
fn json_request_type<'a>(source: &'a str, handler: &str) -> Option<&'a str> {
    let start = source.find(&format!("fn {handler}("))? + handler.len() + 4;
    let mut depth = 1;
    let end = source[start..].find(|c| {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        depth == 0
    })?;
    let parameters = &source[start..start + end];
    let after = &parameters[parameters.find("Json<")? + "Json<".len()..];
    after
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .next()
}

/// The field names of `struct name { ... }` in `source`.
fn struct_fields<'a>(source: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let start = source.find(&format!("struct {name} {{"))? + name.len() + 9;
    let body = &source[start..start + source[start..].find('}')?];
    let fields = body
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with("//"))
        .filter_map(|line| line.split_once(':'))
        .map(|(field, _)| field.trim_start_matches("pub ").trim())
        .collect();
    Some(fields)
}

/// `curl [-s] [-X METHOD] [-H 'content-type: application/json'] [-d JSON] localhost:PORT/PATH`:
/// the `roles_api` example listens on PORT by default and registers METHOD and PATH, a request
/// of its test reaches that route, and the JSON is an object of fields of the route's request
/// type, sent with the content type its `Json` extractor requires.
fn check_curl(args: &[String], ws: &Workspace) -> Result<(), String> {
    const JSON: &str = "content-type: application/json";
    let mut method = None;
    let mut sends_json = false;
    let mut body = None;
    let mut url = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-s" => {}
            "-X" => method = Some(value(&mut args, arg)?),
            "-H" => match value(&mut args, arg)? {
                header if header.eq_ignore_ascii_case(JSON) => sends_json = true,
                header => return Err(unchecked(&format!("the curl header `{header}`"))),
            },
            "-d" => body = Some(value(&mut args, arg)?),
            option if option.starts_with('-') => {
                return Err(unchecked(&format!("the curl option `{option}`")));
            }
            _ if url.is_some() => return Err(unchecked("curl with more than one URL")),
            _ => url = Some(arg.as_str()),
        }
    }
    let method = method.unwrap_or(if body.is_some() { "POST" } else { "GET" });
    let url = url.ok_or_else(|| unchecked("curl without a URL"))?;
    let url = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = url.split_at(url.find('/').unwrap_or(url.len()));
    let port = DEFAULT_BIND
        .parse::<SocketAddr>()
        .expect("DEFAULT_BIND is an address")
        .port();
    let listens = |host: &str| authority == format!("{host}:{port}");
    if !(listens("localhost") || listens("127.0.0.1")) {
        return Err(format!(
            "`{authority}` is not where the roles_api example listens by default ({DEFAULT_BIND})"
        ));
    }

    let routes = routes(&ws.roles_api);
    let pattern = resolve(routes.iter().map(|route| route.path), path).ok_or_else(|| {
        format!("no route of the roles_api example ({ROLES_API_MODULE}) matches `{path}`")
    })?;
    let route = routes
        .iter()
        .find(|route| route.path == pattern && route.method == method)
        .ok_or_else(|| {
            let methods: Vec<&str> = routes
                .iter()
                .filter(|route| route.path == pattern)
                .map(|route| route.method.as_str())
                .collect();
            format!(
                "the roles_api example's route `{pattern}` takes {}, not {method}",
                methods.join(", ")
            )
        })?;

    // Paths in the test are the strings that start with `/`; `format!("/role/{id}")` counts as
    // the shape `/role/{id}`.
    let tested = ws
        .roles_api_test
        .match_indices("\"/")
        .filter_map(|(start, _)| {
            let rest = &ws.roles_api_test[start + 1..];
            rest.find('"').map(|end| &rest[..end])
        })
        .any(|test_path| resolve(routes.iter().map(|r| r.path), test_path) == Some(pattern));
    if !tested {
        return Err(format!(
            "no request in {ROLES_API_TEST} reaches the roles_api example's route `{pattern}`"
        ));
    }

    let request_type = route
        .handler
        .and_then(|handler| json_request_type(route.file, handler));
    match (body, request_type) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(format!("sends a body, and `{method} {pattern}` reads none")),
        (None, Some(request)) => Err(format!(
            "sends no body, and `{method} {pattern}` reads a JSON `{request}`"
        )),
        (Some(_), Some(_)) if !sends_json => Err(format!(
            "sends JSON without `-H '{JSON}'`, \
             which the `Json` extractor of `{method} {pattern}` requires"
        )),
        (Some(body), Some(request)) => {
            let fields = struct_fields(route.file, request).ok_or_else(|| {
                format!("no `struct {request}` beside the route `{pattern}` in {ROLES_API_MODULE}")
            })?;
            let body: Value = serde_json::from_str(body)
                .map_err(|error| format!("the body `{body}` is not JSON: {error}"))?;
            let object = body
                .as_object()
                .ok_or_else(|| format!("the body `{body}` is not a JSON object"))?;
            match object.keys().find(|key| !fields.contains(&key.as_str())) {
                Some(key) => Err(format!(
                    "the body's field `{key}` is not one of `{request}`'s ({})",
                    fields.join(", ")
                )),
                None => Ok(()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The README as it is.

#[test]
fn every_readme_command_names_what_exists() {
    let ws = workspace();
    let problems = check_readme(&ws.readme(), ws);
    assert!(
        problems.is_empty(),
        "the README's commands no longer match the workspace:\n{}",
        problems.join("\n")
    );
    // The parser found commands for each checker, so the pass above was not vacuous.
    let (commands, _) = readme_shell(&read(&ws.readme()));
    for program in ["bash", "cargo", "curl"] {
        assert!(
            commands
                .iter()
                .any(|command| split_assignments(&command.words)
                    .1
                    .first()
                    .is_some_and(|p| p == program)),
            "no `{program}` command in the README's bash blocks: {commands:?}"
        );
    }
}

/// Runs the README's `bash scripts/quickstart.sh` commands, each with the environment the README
/// gives it, except that `REDIS_URL` points at a private `redis-server`.
///
/// Not through the script itself, whose `cargo run` would be a cargo build inside this `cargo
/// test`. It builds `cachekit-examples` with that package's own features, not the ones this
/// package unifies, so it recompiles much of the dependency graph (tried with cargo 1.95: the
/// nested build got the lock and began with `Compiling errno`): minutes on a small machine,
/// again whenever the library changes, competing for the target directory with other builds.
/// And where the running `cargo test` keeps the build directory's lock while its tests run, as
/// cargo has done (rust-lang/rust#35816), the nested cargo would wait forever for the outer one,
/// which waits for this test. Instead [`check_quickstart_script`] checks that the script only
/// changes to the workspace root and runs `cargo run -p cachekit-examples --bin quickstart`,
/// whose source is that of this package's `quickstart-under-test`, which cargo built for this
/// test (as for `tests/tests/example_quickstart.rs`); that binary runs here from the root.
#[test]
fn the_readme_quickstart_commands_run_against_a_private_redis_server() {
    init_tracing();
    let ws = workspace();
    check_quickstart_script(ws).unwrap();
    let server = RedisServer::start();
    let url = server.url();
    let (commands, _) = readme_shell(&read(&ws.readme()));
    let mut ran_on_redis = false;
    for command in &commands {
        let (assignments, run) = split_assignments(&command.words);
        if run != ["bash", QUICKSTART_SCRIPT] {
            continue;
        }
        let on_redis = assignments.iter().any(|(name, _)| *name == "REDIS_URL");
        ran_on_redis |= on_redis;
        // A cleared environment: a developer's own REDIS_URL never leaks in.
        let mut quickstart = Command::new(env!("CARGO_BIN_EXE_quickstart-under-test"));
        quickstart
            .current_dir(&ws.root)
            .env_clear()
            .env("RUST_LOG", "error");
        for (name, value) in assignments {
            quickstart.env(
                name,
                if name == "REDIS_URL" {
                    url.as_str()
                } else {
                    value
                },
            );
        }
        let output = quickstart.output().expect("the quickstart starts");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let context = format!("README.md:{}: `{}`", command.line, command.words.join(" "));
        assert!(
            output.status.success(),
            "{context} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let backend = if on_redis { "redis" } else { "memory" };
        assert!(
            stdout.starts_with(&format!("backend: {backend}, prefix: cachekit")),
            "{context}:\n{stdout}"
        );
        // What the README says it prints: a miss, a hit, an invalidation and the statistics.
        for (label, shows) in [
            ("first read", " miss "),
            ("second read", " hit "),
            ("renamed user 1", "invalidated"),
            ("stats:", "hits=2 misses=2"),
        ] {
            assert!(
                stdout
                    .lines()
                    .any(|line| line.starts_with(label) && line.contains(shows)),
                "{context}: no `{label}` line showing `{shows}`:\n{stdout}"
            );
        }
    }
    assert!(
        ran_on_redis,
        "no README command runs {QUICKSTART_SCRIPT} with REDIS_URL"
    );
    // It used the private server: the user it read last is there.
    let mut conn = server.client().get_connection().unwrap();
    let stored: bool = redis::cmd("EXISTS")
        .arg("cachekit:users:1")
        .query(&mut conn)
        .unwrap();
    assert!(
        stored,
        "the quickstart left nothing in the private redis-server"
    );
}

// ---------------------------------------------------------------------------------------------
// Each check can fail: altered copies of the README.

/// Checks a copy of the README, in a temporary directory, with the first `from` replaced by
/// `to`, and asserts one problem: on the line of the command holding the change, mentioning
/// `expected`.
fn assert_caught(from: &str, to: &str, expected: &str) {
    let ws = workspace();
    let readme = read(&ws.readme());
    let start = readme
        .find(from)
        .unwrap_or_else(|| panic!("the README no longer holds `{from}`: update this test"));
    let altered = readme.replacen(from, to, 1);
    // The command holding the change starts on the first of the lines continued by `\`.
    let lines: Vec<&str> = altered.lines().collect();
    let mut index = altered[..start].matches('\n').count();
    while index > 0 && lines[index - 1].ends_with('\\') {
        index -= 1;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("README.md");
    fs::write(&path, altered).expect("the copy is written");

    let problems = check_readme(&path, ws);
    let at = format!("{}:{}: ", path.display(), index + 1);
    assert!(
        problems.len() == 1 && problems[0].starts_with(&at) && problems[0].contains(expected),
        "`{from}` -> `{to}`: expected one problem at {at}about `{expected}`, got {problems:#?}"
    );
}

#[test]
fn a_renamed_test_target_package_binary_script_or_test_is_caught() {
    assert_caught(
        "--test example_users",
        "--test example_userz",
        "package `cachekit-tests` has no test target `example_userz`",
    );
    assert_caught(
        "-p cachekit-examples --bin users",
        "-p cachekit-example --bin users",
        "no workspace member is named `cachekit-example`",
    );
    assert_caught(
        "--bin roles_api",
        "--bin roles_apy",
        "package `cachekit-examples` has no bin target `roles_apy`",
    );
    assert_caught(
        "bash scripts/test.sh",
        "bash scripts/tests.sh",
        "`scripts/tests.sh` does not exist",
    );
    assert_caught(
        "--test consistency -- --nocapture",
        "--test consistency -- --nocapture no_such_test",
        "the filter `no_such_test` is part of no test function's name in --test consistency",
    );
}

#[test]
fn an_environment_variable_the_code_does_not_read_is_caught() {
    assert_caught(
        "REDIS_URL=redis://127.0.0.1:6379 bash",
        "REDIS_URI=redis://127.0.0.1:6379 bash",
        "the environment variable `REDIS_URI` is read nowhere",
    );
    assert_caught(
        "RUST_LOG=error cargo",
        "RUST_LOGGING=error cargo",
        "the environment variable `RUST_LOGGING` is read nowhere",
    );
    // In a comment.
    assert_caught(
        "(BIND=host:port",
        "(BIND_TO=host:port",
        "the environment variable `BIND_TO` is read nowhere",
    );
}

#[test]
fn a_request_the_roles_api_example_would_not_serve_is_caught() {
    assert_caught(
        "localhost:3000/role/get/1 ",
        "localhost:3000/role/fetch/1 ",
        "no route of the roles_api example (examples/src/roles_api) matches `/role/fetch/1`",
    );
    assert_caught(
        "-X DELETE localhost:3000/role/6",
        "-X PUT localhost:3000/role/6",
        "the roles_api example's route `/role/{role_id}` takes DELETE, not PUT",
    );
    assert_caught(
        r#"-d '{"user_id":1,"role":"auditor"}'"#,
        r#"-d '{"user_id":1,"role_name":"auditor"}'"#,
        "the body's field `role_name` is not one of `NewRole`'s (user_id, role)",
    );
    assert_caught(
        "-H 'content-type: application/json' ",
        "",
        "sends JSON without `-H 'content-type: application/json'`",
    );
    assert_caught(
        "localhost:3000/health",
        "localhost:8080/health",
        "`localhost:8080` is not where the roles_api example listens by default",
    );
}

#[test]
fn a_route_no_test_requests_is_caught() {
    let mut ws = workspace().clone();
    let tested = ws
        .roles_api_test
        .replace("\"/cache/stats\"", "\"/cache/statistics\"");
    assert_ne!(
        tested, ws.roles_api_test,
        "update this test: no \"/cache/stats\""
    );
    ws.roles_api_test = tested;
    let problems = check_readme(&ws.readme(), &ws);
    assert!(
        problems.len() == 1
            && problems[0].contains(
                "no request in tests/tests/example_roles_api.rs reaches the roles_api example's \
                 route `/cache/stats`"
            ),
        "{problems:#?}"
    );
}

#[test]
fn a_command_or_block_nothing_checks_is_caught() {
    assert_caught(
        "bash scripts/quickstart.sh   #",
        "make quickstart   #",
        "README command not checked by tests/tests/readme.rs: make quickstart",
    );
    assert_caught(
        "cargo test -p cachekit-tests --test example_quickstart",
        "cargo test --release -p cachekit-tests --test example_quickstart",
        "README command not checked by tests/tests/readme.rs: the cargo option `--release`",
    );
    assert_caught(
        "```bash\nbash scripts/quickstart.sh",
        "```sh\nbash scripts/quickstart.sh",
        "a ```sh block, which tests/tests/readme.rs does not read",
    );
}

#[test]
fn shell_parsing_joins_continued_lines_keeps_quoted_hashes_and_drops_comments() {
    let text = concat!(
        "A=1 cmd 'x # y' \"a\\\"b\" c#d \\\n",
        "  -d '{\"k\":\"#v\"}' # a comment; not a command\n",
        "# a line of comment\n",
        "first; second | third\n",
    );
    let (commands, comments) = parse_shell(text, 10);
    let command = |line: usize, words: &[&str]| ShellCommand {
        line,
        words: words.iter().map(|w| (*w).to_owned()).collect(),
    };
    assert_eq!(
        commands,
        [
            command(
                10,
                &[
                    "A=1",
                    "cmd",
                    "x # y",
                    "a\"b",
                    "c#d",
                    "-d",
                    r##"{"k":"#v"}"##
                ]
            ),
            command(13, &["first"]),
            command(13, &["second"]),
            command(13, &["third"]),
        ]
    );
    let comment = |line: usize, text: &str| ShellComment {
        line,
        text: text.to_owned(),
    };
    assert_eq!(
        comments,
        [
            comment(11, "a comment; not a command"),
            comment(12, "a line of comment"),
        ]
    );
    assert_eq!(
        variables_named("BIND=host:port or PORT=... ; DATABASE_URL, Invalid URL, Ctrl-C"),
        ["BIND", "PORT", "DATABASE_URL"]
    );
}
