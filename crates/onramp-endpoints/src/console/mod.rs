//! The web console: plain HTML, CSS and JavaScript modules embedded in the
//! binary (no build step, no CDN), served on the HTTPS listener at `/` to
//! browsers (a request that accepts `text/html`) and under `/console/`.
//! Everything else on `/` stays as it was: the console talks to the service
//! API like any other client, from the browser.
//!
//! Every answer carries a Content-Security-Policy that allows scripts,
//! styles and connections from this origin alone (no inline script or
//! style), refuses framing, and turns off MIME sniffing.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The embedded files, by name, each with its type.
macro_rules! assets {
    ($($name:literal => $content_type:expr),* $(,)?) => {
        &[$(Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("assets/", $name)),
        }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "console.css" => "text/css; charset=utf-8",
    "app.js" => JS,
    "api.js" => JS,
    "ui.js" => JS,
    "charts.js" => JS,
    "enrollments.js" => JS,
    "views.js" => JS,
    "certificates.js" => JS,
];

/// The policy of every console answer: this origin's files and API only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The console's answer to a request, or `None` when the request is not
/// the console's: anything but GET or HEAD, `/` asked for by a client that
/// does not accept HTML (the device and service APIs, the embedded hub),
/// and every other path outside `/console/`.
pub fn serve(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let name = if path == "/" {
        if !accepts_html(headers) {
            return None;
        }
        "index.html"
    } else {
        path.strip_prefix("/console/")?
    };
    Some(match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => answer(StatusCode::OK, asset),
        None => answer(
            StatusCode::NOT_FOUND,
            &Asset {
                name: "",
                content_type: "text/plain; charset=utf-8",
                body: "no such file in the console; open / instead",
            },
        ),
    })
}

fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let media = media.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("text/html")
        })
}

fn answer(status: StatusCode, asset: &Asset) -> Response {
    let mut resp = Response::new(Body::from(asset.body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    let fixed = [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // The files change with the binary: ask again each time (cheap, small).
        (header::CACHE_CONTROL, "no-cache"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html_accepting(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        h
    }

    #[test]
    fn only_browsers_get_the_page_at_the_root() {
        let browser = html_accepting("text/html,application/xhtml+xml;q=0.9,*/*;q=0.8");
        let page = serve(&Method::GET, "/", &browser).unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(
            page.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
        // API clients, the hub's callers and other methods keep their routes.
        assert!(serve(&Method::GET, "/", &html_accepting("application/json")).is_none());
        assert!(serve(&Method::GET, "/", &HeaderMap::new()).is_none());
        assert!(serve(&Method::POST, "/", &browser).is_none());
        assert!(serve(&Method::GET, "/enrollments/x", &browser).is_none());
        assert!(serve(&Method::PUT, "/console/app.js", &browser).is_none());
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        let mut referenced = vec!["console.css".to_owned(), "app.js".to_owned()];
        for asset in ASSETS {
            for line in asset.body.lines() {
                if let Some(rest) = line.split(" from './").nth(1)
                    && let Some(name) = rest.split('\'').next()
                {
                    referenced.push(name.to_owned());
                }
            }
        }
        for name in referenced {
            let resp = serve(&Method::GET, &format!("/console/{name}"), &HeaderMap::new())
                .unwrap_or_else(|| panic!("{name} is not the console's"));
            assert_eq!(resp.status(), StatusCode::OK, "{name}");
            assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        let missing = serve(&Method::GET, "/console/nope.js", &HeaderMap::new()).unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
