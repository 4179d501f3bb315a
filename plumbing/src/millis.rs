//! Durations in config files are integer milliseconds (`shutdown_grace = 5000`): every component's
//! `Config` reads them with `#[serde(with = "plumbing::millis")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(Duration::from_millis(u64::deserialize(d)?))
}

#[cfg(test)]
mod tests {
    use serde::de::value::{Error, StrDeserializer, U64Deserializer};
    use serde::de::IntoDeserializer;

    #[test]
    fn integers_are_milliseconds() {
        let ms: U64Deserializer<Error> = 1500u64.into_deserializer();
        assert_eq!(super::deserialize(ms).unwrap(), std::time::Duration::from_millis(1500));
        let text: StrDeserializer<Error> = "1s".into_deserializer();
        assert!(super::deserialize(text).is_err());
    }
}
