//! Query-string parameters of the gateway routes, parsed as grpc-gateway does: proto field names
//! (`start_time`, `envelope_types`, …, and their JSON camelCase spellings), repeatable
//! `envelope_types` given as enum names or numbers, booleans as Go's `strconv.ParseBool`.

use loggregator_proto::logcache::v1::{EnvelopeType, ReadRequest};

/// A parameter that does not parse; answered 400 with code 3 (INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for {name}: {reason}")]
pub struct ParamError {
    pub name: String,
    pub value: String,
    pub reason: &'static str,
}

/// Decoded `key=value` pairs in order (`+` is a space, percent escapes decoded).
pub fn parse_pairs(raw_query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw_query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn parse_i64(name: &str, value: &str) -> Result<i64, ParamError> {
    value.parse().map_err(|_| ParamError { name: name.into(), value: value.into(), reason: "not a 64-bit integer" })
}

/// Go's `strconv.ParseBool`.
fn parse_bool(name: &str, value: &str) -> Result<bool, ParamError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ParamError { name: name.into(), value: value.into(), reason: "not a boolean" }),
    }
}

fn parse_envelope_type(name: &str, value: &str) -> Result<i32, ParamError> {
    if let Some(t) = EnvelopeType::from_str_name(value) {
        return Ok(t as i32);
    }
    match value.parse::<i32>() {
        Ok(n) if EnvelopeType::try_from(n).is_ok() => Ok(n),
        _ => Err(ParamError { name: name.into(), value: value.into(), reason: "not an envelope type" }),
    }
}

/// The `ReadRequest` of `GET /api/v1/read/{source_id}?…`. Unknown parameters are ignored.
pub fn parse_read_request(source_id: String, raw_query: &str) -> Result<ReadRequest, ParamError> {
    let mut request = ReadRequest { source_id, ..Default::default() };
    for (name, value) in parse_pairs(raw_query) {
        match name.as_str() {
            "start_time" | "startTime" => request.start_time = parse_i64(&name, &value)?,
            "end_time" | "endTime" => request.end_time = parse_i64(&name, &value)?,
            "limit" => request.limit = parse_i64(&name, &value)?,
            "descending" => request.descending = parse_bool(&name, &value)?,
            "name_filter" | "nameFilter" => request.name_filter = value,
            "envelope_types" | "envelopeTypes" => {
                // grpc-gateway also accepts a comma-separated list in one value.
                for part in value.split(',').filter(|p| !p.is_empty()) {
                    request.envelope_types.push(parse_envelope_type(&name, part)?);
                }
            }
            _ => {}
        }
    }
    Ok(request)
}

/// `local_only` of `GET /api/v1/meta`.
pub fn parse_meta_local_only(raw_query: &str) -> Result<bool, ParamError> {
    let mut local_only = false;
    for (name, value) in parse_pairs(raw_query) {
        if name == "local_only" || name == "localOnly" {
            local_only = parse_bool(&name, &value)?;
        }
    }
    Ok(local_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cf_cli_recent_logs_request_parses() {
        let q = "start_time=-6795364578871345152&envelope_types=LOG&limit=1000&descending=true";
        let request = parse_read_request("app".into(), q).expect("parses");
        assert_eq!(request.start_time, -6_795_364_578_871_345_152);
        assert_eq!(request.envelope_types, vec![EnvelopeType::Log as i32]);
        assert_eq!(request.limit, 1000);
        assert!(request.descending);
    }

    #[test]
    fn envelope_types_repeat_and_accept_numbers() {
        let request =
            parse_read_request("a".into(), "envelope_types=GAUGE&envelope_types=2&envelope_types=TIMER,EVENT")
                .expect("parses");
        assert_eq!(request.envelope_types, vec![3, 2, 4, 5]);
        assert!(parse_read_request("a".into(), "envelope_types=BOGUS").is_err());
        assert!(parse_read_request("a".into(), "envelope_types=9").is_err());
    }

    #[test]
    fn bad_numbers_and_booleans_are_errors() {
        let err = parse_read_request("a".into(), "start_time=abc").unwrap_err();
        assert_eq!(err.name, "start_time");
        assert!(parse_read_request("a".into(), "descending=yes").is_err());
        assert!(parse_read_request("a".into(), "descending=T").expect("Go bool").descending);
    }

    #[test]
    fn name_filter_is_percent_decoded() {
        let request = parse_read_request("a".into(), "name_filter=%5Ecpu%7Cmem%24").expect("parses");
        assert_eq!(request.name_filter, "^cpu|mem$");
    }

    #[test]
    fn meta_local_only() {
        assert!(parse_meta_local_only("local_only=true").expect("parses"));
        assert!(!parse_meta_local_only("").expect("parses"));
    }
}
