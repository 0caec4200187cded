//! The gateway's modules form layers: each imports only modules below it, so the crate has no
//! circle of modules and a reader can learn it from the bottom up (ARCHITECTURE.md, "Module
//! layers"). This test draws the imports from the sources (every `crate::…` path outside test
//! code) and fails when a module imports one at its own level or above, or when a module is
//! missing from the order below — a new module must be placed in it.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The gateway's modules from the lowest to the highest. `crate` (lib.rs, the `Gateway`
/// handle) is above them all; only `reload` and `views`, which hold `impl Gateway` blocks of
/// lib.rs split out, may name it.
const ORDER: &[&str] = &[
    // Leaves: import nothing of the gateway (`body` only `client_body`, `retry` only
    // `status_set`).
    "client_body",
    "status_set",
    "sync",
    "woken",
    "boxed",
    "worker",
    "interim",
    "clock",
    "lag",
    "build_error",
    "request_id",
    "body",
    "client_ip",
    "retry",
    // Connections to targets and errors.
    "tls",
    "pool",
    "edge",
    "store_link",
    // What a request meets, compiled per generation.
    "upstream",
    "ratelimit",
    "cache",
    "fallback",
    "metrics",
    "router",
    // A generation and what survives it.
    "registry",
    "runtime",
    "health",
    "state",
    // The request path.
    "connection",
    "proxy",
    "http2",
    "h1",
    "server",
    "loops",
    // The gateway's faces (impl blocks of lib.rs's `Gateway`).
    "reload",
    "views",
];

/// Modules allowed to name items of the crate root.
const ROOT_FACES: &[&str] = &["reload", "views"];

#[test]
fn every_module_imports_only_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let imports = imports_by_module(&src);
    let rank: BTreeMap<&str, usize> = ORDER.iter().enumerate().map(|(i, m)| (*m, i)).collect();

    let found: BTreeSet<&str> = imports.keys().map(String::as_str).collect();
    let listed: BTreeSet<&str> = ORDER.iter().copied().collect();
    assert_eq!(
        found, listed,
        "every module of src/ must be placed in ORDER (and ORDER names only modules that exist)"
    );

    let mut wrong = Vec::new();
    for (module, used) in &imports {
        let own = rank[module.as_str()];
        for other in used {
            if other == "crate" {
                if !ROOT_FACES.contains(&module.as_str()) {
                    wrong.push(format!("{module} names an item of the crate root (lib.rs)"));
                }
                continue;
            }
            match rank.get(other.as_str()) {
                Some(&their) if their < own => {}
                Some(_) => wrong.push(format!("{module} imports {other}, which is not below it")),
                None => wrong.push(format!("{module} imports unknown module {other}")),
            }
        }
    }
    assert!(wrong.is_empty(), "layer violations:\n{}", wrong.join("\n"));
}

#[test]
fn the_import_scanner_sees_every_form_of_path() {
    let text =
        "use crate::body::Held;\nuse crate::{edge::GatewayError, pool::{Lease, CallError}};\n\
                fn f() { crate::clock::unix_ms(\"crate::router */*\"); }\n// crate::proxy\n\
                use crate::Gateway;\n#[cfg(test)]\nmod tests { use crate::server; }\n";
    let used = scan(text, false);
    let expected: BTreeSet<String> = ["body", "edge", "pool", "clock", "crate"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(used, expected);
}

/// For each top-level module of `src`, the modules its non-test code names.
fn imports_by_module(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap();
            let top = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if top == "lib" {
                continue;
            }
            // In a top-level file `super` is the crate root; in a folder, the folder's module.
            let top_level_file = relative.components().count() == 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let mut used = scan(&text, top_level_file);
            used.remove(&top);
            modules.entry(top).or_default().extend(used);
        }
    }
    modules
}

/// The modules (or `crate` for root items) that `text` names through `crate::` paths (and
/// `super::` paths when `super` is the root), leaving out comments and `#[cfg(test)]` code.
fn scan(text: &str, super_is_root: bool) -> BTreeSet<String> {
    let code = strip_tests(&strip_comments(text));
    let mut used = BTreeSet::new();
    let mut prefixes = vec!["crate::"];
    if super_is_root {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                for name in top_level_names(group) {
                    used.insert(module_of(&name));
                }
            } else {
                used.insert(module_of(&identifier(rest)));
            }
        }
    }
    used.retain(|name| !name.is_empty() && name != "self");
    used
}

/// A path's first segment as a module, or `crate` for an item of the root (a type, a macro).
fn module_of(segment: &str) -> String {
    if segment.starts_with(|c: char| c.is_ascii_uppercase()) {
        "crate".to_owned()
    } else {
        segment.to_owned()
    }
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The first segment of each path in a `{…}` group (nested groups skipped), up to its `}`.
fn top_level_names(group: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut expecting = true;
    for (index, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expecting = true,
            c if depth == 0 && expecting && (c.is_alphanumeric() || c == '_') => {
                names.push(identifier(&group[index..]));
                expecting = false;
            }
            _ => {}
        }
    }
    names
}

/// `text` without comments, and with string and character literals emptied (a `"*/*"` or a
/// `"http://…"` must not be read as a comment, nor a path in a string as an import).
fn strip_comments(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal (a lifetime has no closing quote two characters on).
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], at: usize) -> bool {
    at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_')
}

/// Everything before the first `#[cfg(test)]` (test modules sit at the end of a file).
fn strip_tests(text: &str) -> String {
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}
