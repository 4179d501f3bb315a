//! Query parameters: log-cache's `GET /api/v1/read/{source_id}` (`log_cache::gateway::parse_read_request`,
//! round-tripped through a query string of its own fields) and the RLP gateway's `GET /v2/read`
//! (`traffic_controller::gateway::parse_query`).

use log_cache::gateway::parse_read_request;
use loggregator_proto::logcache::v1::ReadRequest;
use loggregator_proto::v2::selector::Message;
use traffic_controller::gateway::parse_query;

/// The input (lossily UTF-8) as the query string of both routes.
pub fn fuzz(data: &[u8]) {
    let query = String::from_utf8_lossy(data);
    if let Ok(request) = parse_read_request("source".to_owned(), &query) {
        assert_eq!(request.source_id, "source");
        let again = parse_read_request("source".to_owned(), &to_query(&request)).expect("a request's own query parses");
        assert_eq!(again, request, "read request round trip");
    }
    match parse_query(Some(&query)) {
        Ok(read) => {
            let selectors = &read.request.selectors;
            assert!(!selectors.is_empty(), "a read without selectors");
            assert!(selectors.iter().all(|s| s.message.is_some()), "a selector without an envelope type");
            let sources = read.source_ids.len().max(1);
            assert_eq!(selectors.len() % sources, 0, "every source id gets the same selectors");
            for selector in selectors {
                if let Some(Message::Gauge(gauge)) = &selector.message {
                    assert!(gauge.names.iter().all(|n| !n.contains(',')), "gauge names are split on commas");
                }
            }
        }
        Err((status, error, _)) => {
            assert_eq!(status, http::StatusCode::BAD_REQUEST);
            assert!(!error.is_empty());
        }
    }
}

/// The query string of a request's fields, as a client would send it.
fn to_query(request: &ReadRequest) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("start_time", &request.start_time.to_string());
    query.append_pair("end_time", &request.end_time.to_string());
    query.append_pair("limit", &request.limit.to_string());
    query.append_pair("descending", &request.descending.to_string());
    query.append_pair("name_filter", &request.name_filter);
    for t in &request.envelope_types {
        query.append_pair("envelope_types", &t.to_string());
    }
    query.finish()
}
