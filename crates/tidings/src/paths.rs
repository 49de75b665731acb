//! [`HubPaths`]: hub paths routed as ASP.NET Core routes them.
//!
//! ASP.NET Core matches a hub's route without regard to case and with or
//! without a trailing slash, so clients configured with `/Hubs/Chat` or
//! `/hubs/chat/` connect. axum's router matches paths exactly; this service
//! rewrites the path of a request for a hub (its negotiate endpoint or its
//! transport endpoint) to the path the hub was mounted at before the
//! router sees it. Other paths are left alone: their routes may well be
//! case-sensitive on purpose.

use std::sync::Arc;

use axum::{
    Router,
    extract::Request,
    http::{Uri, uri::PathAndQuery},
};
use tower::util::MapRequestLayer;

/// The paths hubs are mounted at, for routing their requests as ASP.NET
/// Core does: case-insensitively and with an optional trailing slash.
///
/// ```
/// # use tidings::{HubEndpoint, HubPaths};
/// # struct Chat;
/// # #[tidings::hub] impl Chat { async fn ping(&self) {} }
/// let app = axum::Router::new().nest("/hubs/chat", HubEndpoint::new(Chat).into_router());
/// // `/HUBS/Chat/negotiate/` now reaches the hub's negotiate endpoint.
/// let app = HubPaths::new(["/hubs/chat"]).route(app);
/// # let _ = app;
/// ```
#[derive(Clone, Debug)]
pub struct HubPaths {
    paths: Arc<[String]>,
}

impl HubPaths {
    /// The hubs mounted (with [`Router::nest`]) at `paths`.
    pub fn new<S: Into<String>>(paths: impl IntoIterator<Item = S>) -> Self {
        let paths = paths
            .into_iter()
            .map(|p| p.into().trim_end_matches('/').to_owned())
            .collect();
        HubPaths { paths }
    }

    /// `app`, with the requests for the hubs' paths routed to the paths the
    /// hubs are mounted at.
    pub fn route(self, app: Router) -> Router {
        let service = tower::Layer::layer(
            &MapRequestLayer::new(move |request: Request| self.rewrite(request)),
            app,
        );
        Router::new().fallback_service(service)
    }

    fn rewrite(&self, mut request: Request) -> Request {
        if let Some(uri) = self.canonical(request.uri()) {
            *request.uri_mut() = uri;
        }
        request
    }

    /// The URI with the mounted path of the hub `uri` is for, if that
    /// differs from it.
    fn canonical(&self, uri: &Uri) -> Option<Uri> {
        let path = self.canonical_path(uri.path())?;
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
        Uri::from_parts(parts).ok()
    }

    fn canonical_path(&self, path: &str) -> Option<String> {
        self.paths.iter().find_map(|hub| {
            let head = path.get(..hub.len())?;
            if !head.eq_ignore_ascii_case(hub) {
                return None;
            }
            let rest = &path[hub.len()..];
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let canonical = if rest.is_empty() {
                hub.clone()
            } else if rest.eq_ignore_ascii_case("/negotiate") {
                format!("{hub}/negotiate")
            } else {
                return None;
            };
            // The hub's own path for a hub mounted at the root.
            let canonical = if canonical.is_empty() {
                "/".to_owned()
            } else {
                canonical
            };
            (canonical != path).then_some(canonical)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_paths_of_any_case_and_trailing_slash_are_the_mounted_ones() -> anyhow::Result<()> {
        let paths = HubPaths::new(["/hubs/chat", "/hubs/Test/"]);
        let canonical = |p: &str| paths.canonical_path(p);
        assert_eq!(canonical("/hubs/chat"), None);
        assert_eq!(canonical("/hubs/chat/negotiate"), None);
        assert_eq!(canonical("/HUBS/CHAT"), Some("/hubs/chat".into()));
        assert_eq!(canonical("/hubs/chat/"), Some("/hubs/chat".into()));
        assert_eq!(
            canonical("/Hubs/Chat/Negotiate/"),
            Some("/hubs/chat/negotiate".into())
        );
        assert_eq!(
            canonical("/hubs/test/negotiate"),
            Some("/hubs/Test/negotiate".into())
        );
        // Other paths, under a hub's or not, are left alone.
        assert_eq!(canonical("/hubs/chatty"), None);
        assert_eq!(canonical("/hubs/chat/other"), None);
        assert_eq!(canonical("/health"), None);
        let uri: Uri = "/HUBS/chat/?id=a%2Fb&x=1".parse()?;
        assert_eq!(
            paths.canonical(&uri),
            Some(Uri::from_static("/hubs/chat?id=a%2Fb&x=1"))
        );
        Ok(())
    }
}
