//! sekisho's configuration: a TOML file read into typed, validated structs.
//!
//! What it is for: the one function that `sekisho check`, start-up and every reload share
//! ([`load`] / [`parse`]), so that a config accepted by one is accepted by all. Every error names
//! `FILE:LINE:COLUMN` and says what was expected; an unknown key gets a did-you-mean.
//!
//! What it refuses to do: it opens no sockets and resolves no names; it only reads the config
//! file and the TLS files it names. Runtime types of the other crates are built from these
//! structs by their owners; policy types never derive serde.
//!
//! ```
//! let config = sekisho_config::parse(
//!     r#"
//!     [server]
//!     listen = "127.0.0.1:8080"
//!     [upstreams.api]
//!     targets = ["127.0.0.1:9001"]
//!     [[routes]]
//!     name = "api"
//!     path_prefix = "/"
//!     upstream = "api"
//!     "#,
//!     "example.toml",
//! )
//! .unwrap();
//! assert_eq!(config.routes.len(), 1);
//! ```

mod duration;
mod model;
mod validate;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use duration::{
    format_duration, parse_duration, ConfigDuration, DurationError, NonZeroDuration,
};
pub use model::*;
pub use validate::parse_network;

/// One problem in a config file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as it was named.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// At least one.
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// The file at `path` could not be read.
    pub fn unreadable(path: &Path, error: &std::io::Error) -> Self {
        Self {
            diagnostics: vec![Diagnostic {
                file: path.to_owned(),
                line: 1,
                column: 1,
                message: format!("cannot read the config file: {error}"),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.diagnostics.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_contents(path).map(|(config, _)| config)
}

/// As [`load`], with the bytes the config was made of (a file watch compares against them).
pub fn load_with_contents(path: &Path) -> Result<(Config, Vec<u8>), ConfigError> {
    let bytes = std::fs::read(path).map_err(|error| ConfigError::unreadable(path, &error))?;
    let config = parse_file_contents(&bytes, path)?;
    Ok((config, bytes))
}

/// Parses `bytes`, read from the file at `path`, as [`load`] does: relative paths in the config
/// are taken relative to the file's directory.
pub fn parse_file_contents(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
    match std::str::from_utf8(bytes) {
        Ok(source) => parse_with_base(source, path, path.parent()),
        Err(error) => {
            let before = &bytes[..error.valid_up_to()];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            Err(ConfigError {
                diagnostics: vec![Diagnostic {
                    file: path.to_owned(),
                    line,
                    column,
                    message: "the config file is not valid UTF-8".to_owned(),
                }],
            })
        }
    }
}

/// Parses and validates config text; `file` names it in errors. Relative paths in the config
/// (TLS files) are taken relative to the working directory.
pub fn parse(source: &str, file: impl AsRef<Path>) -> Result<Config, ConfigError> {
    parse_with_base(source, file.as_ref(), None)
}

fn parse_with_base(
    source: &str,
    file: &Path,
    base_dir: Option<&Path>,
) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(source).map_err(|error| ConfigError {
        diagnostics: vec![diagnostic_from_toml(&error, source, file)],
    })?;
    let problems = validate::validate(&config, base_dir);
    if problems.is_empty() {
        return Ok(config);
    }
    let mut diagnostics: Vec<Diagnostic> = problems
        .into_iter()
        .map(|(span, message)| at_span(source, file, span, message))
        .collect();
    diagnostics.sort_by_key(|d| (d.line, d.column));
    Err(ConfigError { diagnostics })
}

/// The JSON Schema of the config file, for editors (`sekisho schema`).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

impl Config {
    /// One line: what this config runs.
    pub fn summary(&self) -> String {
        let targets: usize = self
            .upstreams
            .values()
            .map(|u| u.targets.get_ref().len())
            .sum();
        format!(
            "listen {}, admin {}, {} upstream{} ({} target{}), {} route{}",
            self.server.listen,
            self.admin.listen,
            self.upstreams.len(),
            plural(self.upstreams.len()),
            targets,
            plural(targets),
            self.routes.len(),
            plural(self.routes.len()),
        )
    }

    /// The upstream called `name`.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.get(name)
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

fn diagnostic_from_toml(error: &toml::de::Error, source: &str, file: &Path) -> Diagnostic {
    let message = improve_message(error.message().trim());
    let span = error.span().unwrap_or(0..0);
    at_span(source, file, span, message)
}

fn at_span(source: &str, file: &Path, span: Range<usize>, message: String) -> Diagnostic {
    let (line, column) = line_column(source, span.start);
    Diagnostic {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Adds a did-you-mean to serde's "unknown field `x`, expected one of `a`, `b`".
fn improve_message(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return match message.strip_prefix("missing field `") {
            Some(rest) => format!("missing key `{}`", rest.trim_end_matches('`')),
            None => message.to_owned(),
        };
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let candidates: Vec<&str> = expected
        .split('`')
        .enumerate()
        .filter(|(index, _)| index % 2 == 1)
        .map(|(_, name)| name)
        .collect();
    let best = candidates
        .iter()
        .map(|candidate| (strsim::jaro_winkler(unknown, candidate), *candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, suggestion)) => format!("unknown key `{unknown}`: did you mean `{suggestion}`?"),
        None => format!(
            "unknown key `{unknown}`; the keys here are: {}",
            candidates.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests;
