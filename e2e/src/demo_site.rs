//! Serves the demo website (`examples/demo-site/`) on a loopback port: its files as they
//! are, except that in HTML pages the placeholder `__TALLY_COLLECTOR__` becomes the
//! collector's base URL, so the pages load `tracker.js` from, and send their events to,
//! the collector that runs next to them. `make dev` serves it; the browser tests too.

use std::path::{Component, Path, PathBuf};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What the pages say where the collector's base URL goes.
pub const COLLECTOR_PLACEHOLDER: &str = "__TALLY_COLLECTOR__";

/// The demo website's files in this checkout.
pub fn demo_dir() -> PathBuf {
    crate::examples_dir().join("demo-site")
}

#[derive(Clone)]
struct Site {
    dir: PathBuf,
    collector: String,
}

/// Serves `dir` on `listener` until the task is dropped; `collector` is the collector's
/// base URL (`http://127.0.0.1:8080`, no trailing slash).
pub async fn serve(
    listener: tokio::net::TcpListener,
    dir: PathBuf,
    collector: String,
) -> std::io::Result<()> {
    let site = Site {
        dir,
        collector: collector.trim_end_matches('/').to_owned(),
    };
    let app = Router::new().fallback(file).with_state(site);
    axum::serve(listener, app).await
}

async fn file(State(site): State<Site>, request: Request) -> Response {
    let Some(path) = local_path(&site.dir, request.uri().path()) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let Ok(bytes) = tokio::fs::read(&path).await else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let body = if extension == "html" {
        String::from_utf8_lossy(&bytes)
            .replace(COLLECTOR_PLACEHOLDER, &site.collector)
            .into_bytes()
    } else {
        bytes
    };
    (
        [
            (header::CONTENT_TYPE, content_type(extension)),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The file a URL path names inside `dir` (`/` and directories: their `index.html`), or
/// `None` for a path that would leave it.
fn local_path(dir: &Path, url_path: &str) -> Option<PathBuf> {
    let relative = Path::new(url_path.trim_start_matches('/'));
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let path = dir.join(relative);
    Some(if path.is_dir() {
        path.join("index.html")
    } else {
        path
    })
}

fn content_type(extension: &str) -> &'static str {
    match extension {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_site() {
        let dir = Path::new("/site");
        assert_eq!(
            local_path(dir, "/a.html"),
            Some(PathBuf::from("/site/a.html"))
        );
        assert_eq!(local_path(dir, "/../etc/passwd"), None);
        assert_eq!(local_path(dir, "/files/../../x"), None);
        assert_eq!(content_type("html"), "text/html; charset=utf-8");
    }
}
