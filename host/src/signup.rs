//! The sign-up wire format: decoding and validating one input record.
//!
//! Decoding borrows from the input line, so a valid record costs no
//! allocation until it crosses into a module.

use std::borrow::Cow;

use serde::Deserialize;

use crate::catalog::{Segment, day};

/// Largest accepted record. Real sign-ups are about 300 bytes; anything near
/// Kinesis' 1 MiB record limit is an error upstream, not a customer.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Why a record is not a usable sign-up. Goes to the dead letter's `detail`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRecord {
    #[error("record is {0} bytes; the limit is {MAX_RECORD_BYTES}")]
    TooLarge(usize),
    #[error("record is not UTF-8: {0}")]
    NotUtf8(String),
    #[error("record is not a JSON sign-up: {0}")]
    NotJson(String),
    #[error("user_id is empty")]
    EmptyUserId,
    /// The user id is the offer record's partition key, which Kinesis caps.
    #[error("user_id is {0} characters; the limit is {max}", max = crate::record::MAX_PARTITION_KEY_CHARS)]
    UserIdTooLong(usize),
    #[error("location.country {0:?} is not an ISO 3166-1 alpha-2 code")]
    BadCountry(String),
    #[error("location has {0} without {1}; give both or neither")]
    HalfCoordinates(&'static str, &'static str),
    #[error("location.{0} {1} is out of range")]
    CoordinateOutOfRange(&'static str, f64),
    #[error("signed_up_at {0:?} is not an RFC 3339 time")]
    BadTime(String),
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    location: WireLocation<'a>,
    #[serde(default)]
    segment: Option<Segment>,
    #[serde(borrow, default)]
    signed_up_at: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    region: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireLocation<'a> {
    #[serde(borrow)]
    country: Cow<'a, str>,
    #[serde(borrow, default)]
    postal_code: Option<Cow<'a, str>>,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
}

/// A valid sign-up, borrowing from its input line.
#[derive(Debug, Clone, PartialEq)]
pub struct SignUp<'a> {
    pub user_id: Cow<'a, str>,
    pub country: Cow<'a, str>,
    pub postal_code: Option<Cow<'a, str>>,
    pub coordinates: Option<(f64, f64)>,
    pub segment: Segment,
    /// Days since 1970-01-01 UTC of `signed_up_at`.
    pub signed_up_day: Option<i32>,
    /// Explicit routing override.
    pub region: Option<Cow<'a, str>>,
}

impl<'a> SignUp<'a> {
    /// Decodes and validates one record. Unknown fields are ignored.
    ///
    /// # Errors
    /// The first reason the record is not a usable sign-up.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, InvalidRecord> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(InvalidRecord::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| InvalidRecord::NotUtf8(e.to_string()))?;
        let wire: Wire<'a> = serde_json::from_str(text).map_err(|e| InvalidRecord::NotJson(e.to_string()))?;
        if wire.user_id.trim().is_empty() {
            return Err(InvalidRecord::EmptyUserId);
        }
        if !crate::record::partition_key_fits(&wire.user_id) {
            return Err(InvalidRecord::UserIdTooLong(wire.user_id.chars().count()));
        }
        let country = wire.location.country;
        if !(country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(InvalidRecord::BadCountry(country.into_owned()));
        }
        let coordinates = match (wire.location.lat, wire.location.lon) {
            (None, None) => None,
            (Some(_), None) => return Err(InvalidRecord::HalfCoordinates("lat", "lon")),
            (None, Some(_)) => return Err(InvalidRecord::HalfCoordinates("lon", "lat")),
            (Some(lat), Some(lon)) => {
                if !(-90.0..=90.0).contains(&lat) {
                    return Err(InvalidRecord::CoordinateOutOfRange("lat", lat));
                }
                if !(-180.0..=180.0).contains(&lon) {
                    return Err(InvalidRecord::CoordinateOutOfRange("lon", lon));
                }
                Some((lat, lon))
            }
        };
        let signed_up_day = match wire.signed_up_at {
            None => None,
            Some(at) => {
                let format = time::format_description::well_known::Rfc3339;
                let time =
                    time::OffsetDateTime::parse(&at, &format).map_err(|_| InvalidRecord::BadTime(at.to_string()))?;
                Some(day::from_date(time.to_offset(time::UtcOffset::UTC).date()))
            }
        };
        Ok(SignUp {
            user_id: wire.user_id,
            country,
            postal_code: wire.location.postal_code.filter(|p| !p.trim().is_empty()),
            coordinates,
            segment: wire.segment.unwrap_or(Segment::Residential),
            signed_up_day,
            region: wire.region,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<SignUp<'_>, InvalidRecord> {
        SignUp::decode(s.as_bytes())
    }

    #[test]
    fn the_documented_example_decodes() {
        let s = decode(r#"{"user_id": "u-1", "location": {"country": "DE", "city": "Berlin", "postal_code": "10115", "lat": 52.52, "lon": 13.405}, "segment": "residential", "signed_up_at": "2026-11-25T17:00:00Z", "extra": [1]}"#).unwrap();
        assert_eq!(s.user_id, "u-1");
        assert_eq!(s.coordinates, Some((52.52, 13.405)));
        assert_eq!(s.postal_code.as_deref(), Some("10115"));
        assert_eq!(s.signed_up_day, Some(20_782));
        assert_eq!(s.segment, Segment::Residential);
    }

    #[test]
    fn optional_fields_default() {
        let s = decode(r#"{"user_id": "u", "location": {"country": "FR"}}"#).unwrap();
        assert_eq!((s.coordinates, s.signed_up_day, s.segment), (None, None, Segment::Residential));
    }

    #[test]
    fn signup_time_is_taken_in_utc() {
        let s =
            decode(r#"{"user_id": "u", "location": {"country": "JP"}, "signed_up_at": "2026-11-26T01:00:00+09:00"}"#)
                .unwrap();
        assert_eq!(s.signed_up_day, Some(20_782));
    }

    #[test]
    fn each_bad_input_gets_its_own_reason() {
        type Expectation = fn(&InvalidRecord) -> bool;
        let cases: &[(&[u8], Expectation)] = &[
            (b"not json", |e| matches!(e, InvalidRecord::NotJson(_))),
            (b"[1, 2]", |e| matches!(e, InvalidRecord::NotJson(_))),
            (
                br#"{"location": {"country": "DE"}}"#,
                |e| matches!(e, InvalidRecord::NotJson(m) if m.contains("user_id")),
            ),
            (br#"{"user_id": " ", "location": {"country": "DE"}}"#, |e| *e == InvalidRecord::EmptyUserId),
            (br#"{"user_id": "u", "location": {"country": "Germany"}}"#, |e| matches!(e, InvalidRecord::BadCountry(_))),
            (br#"{"user_id": "u", "location": {"country": "DE", "lat": 1.0}}"#, |e| {
                *e == InvalidRecord::HalfCoordinates("lat", "lon")
            }),
            (br#"{"user_id": "u", "location": {"country": "DE", "lat": 91.0, "lon": 0}}"#, |e| {
                matches!(e, InvalidRecord::CoordinateOutOfRange("lat", _))
            }),
            (br#"{"user_id": "u", "location": {"country": "DE", "lat": 0, "lon": -181}}"#, |e| {
                matches!(e, InvalidRecord::CoordinateOutOfRange("lon", _))
            }),
            (
                br#"{"user_id": "u", "location": {"country": "DE"}, "segment": "enterprise"}"#,
                |e| matches!(e, InvalidRecord::NotJson(m) if m.contains("enterprise")),
            ),
            (br#"{"user_id": "u", "location": {"country": "DE"}, "signed_up_at": "yesterday"}"#, |e| {
                matches!(e, InvalidRecord::BadTime(_))
            }),
            (b"{\"user_id\": \"\xff\"}", |e| matches!(e, InvalidRecord::NotUtf8(_))),
        ];
        for (input, expected) in cases {
            let err = SignUp::decode(input).unwrap_err();
            assert!(expected(&err), "{}: got {err:?}", String::from_utf8_lossy(input));
        }
        let huge = format!(r#"{{"user_id": "u", "location": {{"country": "DE"}}, "pad": "{}"}}"#, "x".repeat(1 << 20));
        assert!(matches!(decode(&huge), Err(InvalidRecord::TooLarge(_))));
        // The user id becomes a partition key: 256 characters at most.
        let user = |id: String| format!(r#"{{"user_id": "{id}", "location": {{"country": "DE"}}}}"#);
        assert_eq!(decode(&user("ü".repeat(257))), Err(InvalidRecord::UserIdTooLong(257)));
        assert!(decode(&user("ü".repeat(256))).is_ok());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Sign-up-shaped JSON with hostile values in every field.
    fn signup_json() -> impl Strategy<Value = String> {
        let text = prop_oneof![
            Just(String::new()),
            "[a-zA-Z0-9 ]{0,20}".prop_map(|s| s),
            any::<String>(),
            (0usize..600).prop_map(|n| "ü".repeat(n)),
        ];
        let number =
            prop_oneof![any::<f64>().prop_map(|f| f.to_string()), Just("1e400".to_owned()), Just("null".into())];
        (text.clone(), text.clone(), text, number.clone(), number).prop_map(|(user, country, postal, lat, lon)| {
            format!(
                r#"{{"user_id": {}, "location": {{"country": {}, "postal_code": {}, "lat": {lat}, "lon": {lon}}}}}"#,
                serde_json::to_string(&user).unwrap(),
                serde_json::to_string(&country).unwrap(),
                serde_json::to_string(&postal).unwrap()
            )
        })
    }

    proptest! {
        /// Any bytes decode to a sign-up or a reason, never a panic; what
        /// decodes is within the documented bounds.
        #[test]
        fn any_bytes_are_a_signup_or_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = SignUp::decode(&bytes);
        }

        #[test]
        fn decoded_signups_respect_their_bounds(text in signup_json()) {
            if let Ok(s) = SignUp::decode(text.as_bytes()) {
                prop_assert!(crate::record::partition_key_fits(&s.user_id));
                prop_assert!(s.country.len() == 2);
                if let Some((lat, lon)) = s.coordinates {
                    prop_assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
                }
            }
        }
    }
}
