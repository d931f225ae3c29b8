//! Routing for the DPS APIs. Azure's clients disagree on path spelling
//! (`enrollmentGroups` vs `enrollmentgroups`, a trailing slash on
//! `/enrollments/`, percent-encoded IDs with either hex case), so literal
//! segments match case-insensitively and IDs are percent-decoded first.

use http::Method;
use percent_encoding::percent_decode_str;

/// The device a device-API path names: `/{scope}/registrations/{id}/…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePath {
    pub scope: String,
    pub registration_id: String,
}

impl DevicePath {
    fn new(scope: &str, registration_id: &str) -> Self {
        Self {
            scope: scope.to_owned(),
            registration_id: registration_id.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    DeviceRegister(DevicePath),
    DeviceOperation(DevicePath, String),
    DeviceStatus(DevicePath),
    Enrollment(String),
    EnrollmentAttestation(String),
    EnrollmentQuery,
    EnrollmentBulk,
    Group(String),
    GroupAttestation(String),
    GroupQuery,
    GroupBulk,
    Registration(String),
    RegistrationQuery(String),
    Certificates,
    Certificate(String),
    CertificateVerificationCode(String),
    CertificateVerify(String),
    /// Registration attempts of the service (an Onramp extension).
    Diagnostics,
    /// Onramp's extension: the caller's provisioning service.
    ServiceSummary,
    /// Onramp's extension: linked hubs with devices and latency.
    LinkedHubs,
    Health,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    Found(Route),
    /// The path is ours but not with this method.
    WrongMethod {
        allowed: &'static str,
    },
    /// Not a DPS path (the embedded hub may own it).
    NotMine,
}

fn lit(segment: &str, literal: &str) -> bool {
    segment.eq_ignore_ascii_case(literal)
}

pub fn route(method: &Method, path: &str) -> RouteMatch {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let m = method.clone();
    use RouteMatch::{Found, WrongMethod};
    // The route if the method is one of `allowed` ("GET, PUT, DELETE": the
    // text of the Allow header otherwise).
    let allow = |allowed: &'static str, route: Route| {
        if allowed.split(", ").any(|a| a == m.as_str()) {
            Found(route)
        } else {
            WrongMethod { allowed }
        }
    };
    const CRUD: &str = "GET, PUT, DELETE";
    match s.as_slice() {
        [] => RouteMatch::NotMine,
        [h] if lit(h, "health") => allow("GET", Route::Health),
        [d] if lit(d, "diagnostics") => allow("GET", Route::Diagnostics),

        [e] if lit(e, "enrollments") => allow("POST", Route::EnrollmentBulk),
        [e, q] if lit(e, "enrollments") && lit(q, "query") && m == Method::POST => {
            Found(Route::EnrollmentQuery)
        }
        [e, id] if lit(e, "enrollments") => allow(CRUD, Route::Enrollment(id.to_string())),
        [e, id, a] if lit(e, "enrollments") && lit(a, "attestationmechanism") => {
            allow("POST", Route::EnrollmentAttestation(id.to_string()))
        }

        [g] if lit(g, "enrollmentgroups") => allow("POST", Route::GroupBulk),
        [g, q] if lit(g, "enrollmentgroups") && lit(q, "query") && m == Method::POST => {
            Found(Route::GroupQuery)
        }
        [g, id] if lit(g, "enrollmentgroups") => allow(CRUD, Route::Group(id.to_string())),
        [g, id, a] if lit(g, "enrollmentgroups") && lit(a, "attestationmechanism") => {
            allow("POST", Route::GroupAttestation(id.to_string()))
        }

        [r, id, q] if lit(r, "registrations") && lit(q, "query") => {
            allow("POST", Route::RegistrationQuery(id.to_string()))
        }
        [r, id] if lit(r, "registrations") => {
            allow("GET, DELETE", Route::Registration(id.to_string()))
        }

        [c] if lit(c, "certificates") => allow("GET", Route::Certificates),
        [s] if lit(s, "service") => allow("GET", Route::ServiceSummary),
        [l] if lit(l, "linkedhubs") => allow("GET", Route::LinkedHubs),
        [c, name] if lit(c, "certificates") => allow(CRUD, Route::Certificate(name.to_string())),
        [c, name, v] if lit(c, "certificates") && lit(v, "generateverificationcode") => {
            allow("POST", Route::CertificateVerificationCode(name.to_string()))
        }
        [c, name, v] if lit(c, "certificates") && lit(v, "verify") => {
            allow("POST", Route::CertificateVerify(name.to_string()))
        }

        [scope, r, id, reg] if lit(r, "registrations") && lit(reg, "register") => {
            allow("PUT", Route::DeviceRegister(DevicePath::new(scope, id)))
        }
        [scope, r, id, ops, op] if lit(r, "registrations") && lit(ops, "operations") => {
            let device = DevicePath::new(scope, id);
            allow("GET", Route::DeviceOperation(device, op.to_string()))
        }
        [scope, r, id] if lit(r, "registrations") => {
            allow("POST", Route::DeviceStatus(DevicePath::new(scope, id)))
        }
        _ => RouteMatch::NotMine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sdk_spelling_routes() {
        let device = |id: &str| DevicePath::new("0ne0001A2B3", id);
        let found = RouteMatch::Found;
        let cases = [
            (Method::POST, "/enrollments/", found(Route::EnrollmentBulk)),
            (
                Method::POST,
                "/enrollmentgroups/g%2D1/attestationmechanism",
                found(Route::GroupAttestation("g-1".into())),
            ),
            (
                Method::PUT,
                "/enrollmentGroups/grp",
                found(Route::Group("grp".into())),
            ),
            (
                Method::GET,
                "/Enrollments/dev%3a1",
                found(Route::Enrollment("dev:1".into())),
            ),
            (
                Method::GET,
                "/enrollments/query",
                found(Route::Enrollment("query".into())),
            ),
            (
                Method::POST,
                "/enrollments/query",
                found(Route::EnrollmentQuery),
            ),
            (
                Method::POST,
                "/registrations/grp/query",
                found(Route::RegistrationQuery("grp".into())),
            ),
            (
                Method::PUT,
                "/0ne0001A2B3/registrations/dev-01/register",
                found(Route::DeviceRegister(device("dev-01"))),
            ),
            (
                Method::GET,
                "/0ne0001A2B3/registrations/dev%3A01/operations/1.abc.def",
                found(Route::DeviceOperation(device("dev:01"), "1.abc.def".into())),
            ),
            (
                Method::POST,
                "/0ne0001A2B3/registrations/dev-01",
                found(Route::DeviceStatus(device("dev-01"))),
            ),
            (
                Method::PATCH,
                "/enrollments/x",
                RouteMatch::WrongMethod {
                    allowed: "GET, PUT, DELETE",
                },
            ),
            (
                Method::GET,
                "/0ne0001A2B3/registrations/dev-01/register",
                RouteMatch::WrongMethod { allowed: "PUT" },
            ),
            (Method::GET, "/Diagnostics/", found(Route::Diagnostics)),
            (
                Method::DELETE,
                "/diagnostics",
                RouteMatch::WrongMethod { allowed: "GET" },
            ),
            (Method::GET, "/devices/x", RouteMatch::NotMine),
            (Method::GET, "/twins/x", RouteMatch::NotMine),
            // Metrics have a listener of their own, never the public one.
            (Method::GET, "/metrics", RouteMatch::NotMine),
            (Method::GET, "/linkedHubs", found(Route::LinkedHubs)),
            (Method::GET, "/Service", found(Route::ServiceSummary)),
        ];
        for (method, path, want) in cases {
            assert_eq!(route(&method, path), want, "{method} {path}");
        }
    }
}
