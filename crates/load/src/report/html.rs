//! `report.html`: one self-contained page (inline CSS and SVG, no script, nothing fetched).

use super::Report;

/// The page for `report`.
pub(super) fn render(report: &Report) -> String {
    format!(
        "<!doctype html><meta charset=utf-8><title>sekisho load</title><pre>{}</pre>",
        escape(&report.summary())
    )
}

/// Text made safe for HTML.
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
