//! The page's static files, compiled into the binary: plain HTML, CSS and JavaScript (no build
//! step), and uPlot 1.6.32 as the npm package ships it built (`dist/uPlot.iife.min.js`,
//! `dist/uPlot.min.css`), with its MIT licence.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 5] = [
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("assets/app.js") },
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", body: include_bytes!("assets/app.css") },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/vendor/uPlot.min.css"),
    },
    Asset {
        name: "uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("assets/vendor/uPlot.LICENSE"),
    },
];

const INDEX: &str = include_str!("assets/index.html");

/// Scripts and styles come from this origin only; uPlot sizes its elements through `style`.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

pub async fn index() -> Response {
    with_headers("text/html; charset=utf-8", INDEX.as_bytes())
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => with_headers(asset.content_type, asset.body),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

fn with_headers(content_type: &'static str, body: &'static [u8]) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        // The assets change with the binary; revalidating is cheap on loopback.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
    ];
    (headers, body).into_response()
}
