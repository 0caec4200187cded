//! `POST /api/v1/config/validate`: a posted config checked as `sekisho check` and a reload would
//! check it, without applying it; and `GET /api/v1/bulkheads`, each upstream's bulkhead.

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use crate::{error, ok, AdminResponse, AdminState};

/// Largest config text accepted.
const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Validates the posted TOML: 200 `{"valid": true, "summary"}`, or 400 `BAD_REQUEST` whose
/// message holds every `FILE:LINE:COLUMN: what is wrong`. Relative paths (TLS files) are taken
/// from the directory of the config file in force, as a reload would.
pub(crate) async fn validate(state: &AdminState, request: Request<Incoming>) -> AdminResponse {
    let Ok(body) = http_body_util::Limited::new(request.into_body(), MAX_CONFIG_BYTES)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "the body could not be read (or is over 1 MiB)",
        );
    };
    let path = state
        .gateway
        .config_path()
        .map_or_else(|| std::path::PathBuf::from("posted.toml"), |p| p.to_owned());
    // Parsing reads TLS files named by the config: off the event loop.
    let checked =
        tokio::task::spawn_blocking(move || sekisho_config::parse_file_contents(&body, &path))
            .await;
    match checked {
        Ok(Ok(config)) => ok(
            StatusCode::OK,
            json!({ "valid": true, "summary": config.summary() }),
        ),
        Ok(Err(invalid)) => error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &invalid.to_string()),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "the validation task failed",
        ),
    }
}

/// Each upstream's bulkhead: slots in use, queued, the limit, rejections so far.
pub(crate) fn bulkheads(state: &AdminState) -> AdminResponse {
    let bulkheads: Vec<_> = state
        .gateway
        .upstreams()
        .into_iter()
        .filter_map(|upstream| {
            upstream.bulkhead.map(|b| {
                json!({
                    "upstream": upstream.name,
                    "in_use": b.in_use,
                    "queued": b.queued,
                    "max_concurrent": b.max_concurrent,
                    "rejected": b.rejected,
                })
            })
        })
        .collect();
    ok(StatusCode::OK, json!({ "bulkheads": bulkheads }))
}
