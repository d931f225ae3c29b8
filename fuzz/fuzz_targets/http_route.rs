//! Request targets as devices and operators send them: the URI, split into
//! path and query, routed (case-insensitive segments, percent-decoded IDs),
//! and the query decoded with its `api-version` checked. Never a panic.
#![no_main]

use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use onramp_endpoints::https::route::route;

const METHODS: [Method; 7] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
];

fuzz_target!(|data: &[u8]| {
    let Some((&m, target)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    // What hyper hands over: a URI that parsed.
    if let Ok(uri) = Uri::try_from(target) {
        let _ = route(method, uri.path());
        if let Some(query) = uri.query() {
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                if name.eq_ignore_ascii_case("api-version") {
                    let _ = onramp_model::ids::check_api_version(&value);
                }
            }
        }
    }
    // And any text as a path, for what a URI parser would have refused.
    if let Ok(path) = std::str::from_utf8(target) {
        let _ = route(method, path);
    }
});
