//! `tally_http_requests_total` and `tally_http_request_duration_seconds`
//! by route template, method and status, with their handles kept: the
//! metrics registry would otherwise build and hash a labelled key, and
//! allocate the labels, twice per request.
//!
//! Counts are by route template, never by raw path, and by a known
//! method, never by whatever a client sends, so label values stay few.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use metrics::{Counter, Histogram, SharedString};

#[derive(Default)]
pub struct Counters {
    /// Route template to the handles of each method seen on it.
    routes: RwLock<HashMap<String, Vec<Arc<Route>>>>,
}

impl Counters {
    /// The handles for one route template and method, made on first use.
    pub fn route(&self, template: &str, method: &Method) -> Arc<Route> {
        let method = method_label(method);
        let found = |routes: &HashMap<String, Vec<Arc<Route>>>| {
            routes.get(template).and_then(|m| m.iter().find(|r| r.method == method).cloned())
        };
        if let Some(route) = found(&self.routes.read().unwrap_or_else(|e| e.into_inner())) {
            return route;
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(route) = found(&routes) {
            return route;
        }
        let route = Arc::new(Route::new(template, method));
        routes.entry(template.to_owned()).or_default().push(route.clone());
        route
    }
}

pub struct Route {
    template: SharedString,
    method: &'static str,
    duration: Histogram,
    by_status: RwLock<Vec<(StatusCode, Counter)>>,
}

impl Route {
    fn new(template: &str, method: &'static str) -> Route {
        let template: SharedString = Arc::<str>::from(template).into();
        let duration = metrics::histogram!(
            "tally_http_request_duration_seconds", "route" => template.clone(), "method" => method
        );
        Route { template, method, duration, by_status: RwLock::default() }
    }

    /// Counts an answer, and its duration unless the route never ran.
    pub fn answered(&self, status: StatusCode, took: Option<Duration>) {
        if let Some(took) = took {
            self.duration.record(took.as_secs_f64());
        }
        let known = {
            let by_status = self.by_status.read().unwrap_or_else(|e| e.into_inner());
            by_status.iter().find(|(s, _)| *s == status).map(|(_, c)| c.clone())
        };
        let counter = known.unwrap_or_else(|| {
            let counter = metrics::counter!(
                "tally_http_requests_total",
                "route" => self.template.clone(),
                "method" => self.method,
                "status" => status.as_u16().to_string()
            );
            self.by_status.write().unwrap_or_else(|e| e.into_inner()).push((status, counter.clone()));
            counter
        });
        counter.increment(1);
    }
}

/// The request methods this service answers; anything else is `_OTHER`
/// (OpenTelemetry's name for it), so invented methods add no series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    }
}
