//! The route table and request matching: pure functions over a snapshot, no I/O.

use crate::Route;

/// The host a request names, as routes compare it: lowercase, without the port.
///
/// Accepts `name`, `name:port`, `[v6]` and `[v6]:port`; anything else is returned
/// lowercased as it is, so a strange Host header matches only host-less routes.
pub fn normalize_host(raw: &str) -> String {
    normalized_host(raw).into_owned()
}

/// As [`normalize_host`], borrowing when the host is already in normal form, as it nearly
/// always is.
pub(crate) fn normalized_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let raw = raw.trim();
    let without_port = if let Some(rest) = raw.strip_prefix('[') {
        // An IPv6 literal keeps its brackets so that it cannot collide with a name.
        match rest.find(']') {
            Some(end) => &raw[..end + 2],
            None => raw,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => raw,
        }
    };
    let name = without_port.trim_end_matches('.');
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Whether `path` lies under `prefix` on a segment boundary: "/web" covers "/web" and
/// "/web/x" but not "/webx"; "/" covers everything.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// The index of the route that serves `host` (already normalised) and `path`: the longest
/// matching prefix wins, and at equal length a route naming the host beats a host-less one.
pub fn find(routes: &[Route], host: &str, path: &str) -> Option<usize> {
    routes
        .iter()
        .enumerate()
        .filter(|(_, route)| match &route.host {
            Some(route_host) => route_host.eq_ignore_ascii_case(host),
            None => true,
        })
        .filter(|(_, route)| prefix_matches(&route.path_prefix, path))
        // Earlier routes win exact ties so that the outcome does not depend on iteration quirks.
        .max_by_key(|(index, route)| {
            (
                route.path_prefix.trim_end_matches('/').len(),
                route.host.is_some(),
                std::cmp::Reverse(*index),
            )
        })
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(service: &str, host: Option<&str>, prefix: &str) -> Route {
        Route {
            service: service.to_string(),
            host: host.map(str::to_string),
            path_prefix: prefix.to_string(),
            replicas: Vec::new(),
            hold: Duration::from_secs(1),
            max_body: 1 << 20,
            api_keys: vec![],
        }
    }

    fn served_by(routes: &[Route], host: &str, path: &str) -> Option<String> {
        find(routes, &normalize_host(host), path).map(|i| routes[i].service.clone())
    }

    #[test]
    fn host_is_lowercased_and_loses_its_port() {
        assert_eq!(normalize_host("Chat.LAN:8080"), "chat.lan");
        assert_eq!(normalize_host("chat.lan"), "chat.lan");
        assert_eq!(normalize_host("chat.lan."), "chat.lan");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("10.0.0.1:80"), "10.0.0.1");
        assert_eq!(normalize_host(""), "");
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/web", "/web"));
        assert!(prefix_matches("/web", "/web/x"));
        assert!(prefix_matches("/web/", "/web/x"));
        assert!(prefix_matches("/web/", "/web"));
        assert!(!prefix_matches("/web", "/webx"));
        assert!(!prefix_matches("/web", "/"));
        assert!(prefix_matches("/", "/anything/at/all"));
        assert!(prefix_matches("/", "/"));
    }

    #[test]
    fn longest_prefix_wins() {
        let routes = vec![
            route("root", None, "/"),
            route("web", None, "/web"),
            route("api", None, "/web/api"),
        ];
        assert_eq!(
            served_by(&routes, "x", "/web/api/v1").as_deref(),
            Some("api")
        );
        assert_eq!(served_by(&routes, "x", "/web/apix").as_deref(), Some("web"));
        assert_eq!(served_by(&routes, "x", "/webx").as_deref(), Some("root"));
        assert_eq!(served_by(&routes, "x", "/").as_deref(), Some("root"));
    }

    #[test]
    fn host_specific_route_beats_host_less_one_of_the_same_prefix() {
        let routes = vec![
            route("any", None, "/"),
            route("chat", Some("chat.lan"), "/"),
        ];
        assert_eq!(
            served_by(&routes, "CHAT.lan:8080", "/x").as_deref(),
            Some("chat")
        );
        assert_eq!(
            served_by(&routes, "other.lan", "/x").as_deref(),
            Some("any")
        );
    }

    #[test]
    fn a_longer_host_less_prefix_beats_a_shorter_host_route() {
        let routes = vec![
            route("chat", Some("chat.lan"), "/"),
            route("metrics", None, "/metrics"),
        ];
        assert_eq!(
            served_by(&routes, "chat.lan", "/metrics").as_deref(),
            Some("metrics")
        );
        assert_eq!(
            served_by(&routes, "chat.lan", "/m").as_deref(),
            Some("chat")
        );
    }

    #[test]
    fn route_for_another_host_does_not_match() {
        let routes = vec![route("chat", Some("chat.lan"), "/")];
        assert_eq!(served_by(&routes, "video.lan", "/"), None);
        assert_eq!(served_by(&routes, "", "/"), None);
    }

    #[test]
    fn empty_table_matches_nothing() {
        assert_eq!(served_by(&[], "x", "/"), None);
    }
}
