//! The HTTP caching rules of `http.rs`, one function at a time.

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::try_from(*name).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

fn wants(h: &HeaderMap) -> bool {
    wants_revalidation(&CacheControl::parse(h), h)
}

#[test]
fn the_clients_own_limits() {
    let cc = CacheControl::parse(&headers(&[("cache-control", "max-age=50, min-fresh=10")]));
    assert!(acceptable_to_client(&cc, 50_000, 10_000));
    assert!(
        !acceptable_to_client(&cc, 50_001, 10_000),
        "older than max-age"
    );
    assert!(
        !acceptable_to_client(&cc, 1_000, 9_999),
        "not fresh for min-fresh more"
    );
    assert!(acceptable_to_client(&CacheControl::default(), u64::MAX, -5));
    let any = CacheControl::parse(&headers(&[("cache-control", "max-stale")]));
    assert_eq!(any.max_stale, Some(u64::MAX));
    let some = CacheControl::parse(&headers(&[("cache-control", "max-stale=30")]));
    assert_eq!(some.max_stale, Some(30));
}

const TTL: Duration = Duration::from_secs(60);
const NEG: Duration = Duration::from_secs(5);

fn rules() -> Defaults {
    Defaults {
        targeted: Vec::new(),
        ttl: Some(TTL),
        negative_ttl: NEG,
        heuristic: None,
    }
}

#[test]
fn cache_control_directives_across_lines() {
    let cc = CacheControl::parse(&headers(&[
        ("cache-control", "public, max-age=30"),
        (
            "cache-control",
            "S-MAXAGE=\"90\", stale-while-revalidate=10, stale-if-error=300",
        ),
    ]));
    assert!(cc.public);
    assert_eq!(cc.max_age, Some(30));
    assert_eq!(cc.s_maxage, Some(90));
    assert_eq!(cc.stale_while_revalidate, Some(10));
    assert_eq!(cc.stale_if_error, Some(300));
    assert!(!cc.no_store);
}

#[test]
fn freshness_follows_the_response() {
    let ok = StatusCode::OK;
    assert_eq!(freshness(ok, &headers(&[]), false, &rules(), 0), Some(TTL));
    let max_age = headers(&[("cache-control", "max-age=30")]);
    assert_eq!(
        freshness(ok, &max_age, false, &rules(), 0),
        Some(Duration::from_secs(30))
    );
    let both = headers(&[("cache-control", "max-age=30, s-maxage=90")]);
    assert_eq!(
        freshness(ok, &both, false, &rules(), 0),
        Some(Duration::from_secs(90))
    );
    for refusal in ["no-store", "private", "no-cache", "max-age=0"] {
        // Without a validator: nothing to revalidate with, so not stored.
        let h = headers(&[("cache-control", refusal)]);
        assert_eq!(freshness(ok, &h, false, &rules(), 0), None, "{refusal}");
    }
    let cookie = headers(&[("set-cookie", "session=1")]);
    assert_eq!(freshness(ok, &cookie, false, &rules(), 0), None);
    assert_eq!(
        freshness(
            StatusCode::INTERNAL_SERVER_ERROR,
            &headers(&[]),
            false,
            &rules(),
            0
        ),
        None
    );
    assert_eq!(
        freshness(StatusCode::NOT_FOUND, &headers(&[]), false, &rules(), 0),
        Some(NEG)
    );
    assert_eq!(
        freshness(
            StatusCode::GONE,
            &headers(&[]),
            false,
            &Defaults {
                negative_ttl: Duration::ZERO,
                ..rules()
            },
            0
        ),
        None
    );
    assert_eq!(
        freshness(
            StatusCode::MOVED_PERMANENTLY,
            &headers(&[]),
            false,
            &rules(),
            0
        ),
        None
    );
}

#[test]
fn authorized_answers_only_when_public() {
    let ok = StatusCode::OK;
    assert_eq!(freshness(ok, &headers(&[]), true, &rules(), 0), None);
    let public = headers(&[("cache-control", "public")]);
    assert_eq!(freshness(ok, &public, true, &rules(), 0), Some(TTL));
    let must = headers(&[("cache-control", "must-revalidate, max-age=5")]);
    assert_eq!(
        freshness(ok, &must, true, &rules(), 0),
        Some(Duration::from_secs(5)),
        "§3.5: must-revalidate allows it too"
    );
    assert_eq!(
        request_bypass(
            &Method::GET,
            &headers(&[("authorization", "Bearer x")]),
            false
        ),
        Some("bypass")
    );
    assert_eq!(
        request_bypass(
            &Method::GET,
            &headers(&[("authorization", "Bearer x")]),
            true
        ),
        None
    );
    assert_eq!(
        request_bypass(&Method::POST, &headers(&[]), true),
        Some("method")
    );
}

#[test]
fn vary_names_and_variants() {
    let response = headers(&[
        ("vary", "Accept-Encoding, accept-language"),
        ("vary", "accept-encoding"),
    ]);
    let names = vary(&response).expect("cacheable");
    assert_eq!(names, ["accept-encoding", "accept-language"]);
    assert!(vary(&headers(&[("vary", "*")])).is_none());
    let a = variant(&names, &headers(&[("accept-encoding", "gzip")]));
    let b = variant(&names, &headers(&[("accept-encoding", "br")]));
    assert_ne!(a, b);
    assert_eq!(a, variant(&names, &headers(&[("accept-encoding", "gzip")])));
}

#[test]
fn if_none_match_compares_weakly() {
    let etag = HeaderValue::from_static("\"v1\"");
    assert!(none_match(&HeaderValue::from_static("\"v1\""), &etag));
    assert!(none_match(&HeaderValue::from_static("W/\"v1\""), &etag));
    assert!(none_match(
        &HeaderValue::from_static("\"v0\", \"v1\""),
        &etag
    ));
    assert!(none_match(&HeaderValue::from_static("*"), &etag));
    assert!(!none_match(&HeaderValue::from_static("\"v2\""), &etag));
}

#[test]
fn tags_from_both_headers() {
    let h = headers(&[
        ("cache-tag", "product-1, catalog"),
        ("surrogate-key", "catalog sale"),
    ]);
    assert_eq!(tags(&h), ["product-1", "catalog", "sale"]);
}

#[test]
fn client_revalidation() {
    assert!(wants(&headers(&[("cache-control", "no-cache")])));
    assert!(wants(&headers(&[("cache-control", "max-age=0")])));
    assert!(wants(&headers(&[("pragma", "no-cache")])));
    assert!(!wants(&headers(&[])));
    assert!(CacheControl::parse(&headers(&[("cache-control", "no-store")])).no_store);
}

/// 2026-01-01T00:00:00Z in Unix milliseconds, and the same instant in the three forms.
const JAN1: u64 = 1_767_225_600_000;

#[test]
fn http_dates_in_every_form() {
    for form in [
        "Thu, 01 Jan 2026 00:00:00 GMT",
        "Thursday, 01-Jan-26 00:00:00 GMT",
        "Thu Jan  1 00:00:00 2026",
    ] {
        assert_eq!(
            parse_date_ms(&HeaderValue::from_static(form)),
            Some(JAN1),
            "{form}"
        );
    }
    assert_eq!(parse_date_ms(&HeaderValue::from_static("0")), None);
    assert_eq!(parse_date_ms(&HeaderValue::from_static("yesterday")), None);
}

#[test]
fn freshness_from_expires_and_date() {
    let ok = StatusCode::OK;
    let none = Defaults {
        ttl: None,
        ..rules()
    };
    let expires = headers(&[
        ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ("expires", "Thursday, 01-Jan-26 00:10:00 GMT"),
    ]);
    assert_eq!(
        freshness(ok, &expires, false, &none, 0),
        Some(Duration::from_secs(600))
    );
    // Without Date: from when it arrived.
    let no_date = headers(&[("expires", "Thu, 01 Jan 2026 00:01:00 GMT")]);
    assert_eq!(
        freshness(ok, &no_date, false, &none, JAN1),
        Some(Duration::from_secs(60))
    );
    // max-age wins over Expires.
    let both = headers(&[
        ("cache-control", "max-age=5"),
        ("expires", "Thu, 01 Jan 2026 00:01:00 GMT"),
    ]);
    assert_eq!(
        freshness(ok, &both, false, &none, JAN1),
        Some(Duration::from_secs(5))
    );
    let twice = headers(&[
        ("expires", "Thu, 01 Jan 2026 00:01:00 GMT"),
        ("expires", "Thu, 01 Jan 2026 00:02:00 GMT"),
    ]);
    assert_eq!(
        freshness(ok, &twice, false, &none, JAN1),
        None,
        "two Expires: stale"
    );
    // Invalid Expires: already expired; stored stale only with a validator.
    for invalid in ["0", "-1", "soon"] {
        let h = headers(&[("expires", invalid)]);
        assert_eq!(freshness(ok, &h, false, &rules(), JAN1), None, "{invalid}");
        let h = headers(&[("expires", invalid), ("etag", "\"a\"")]);
        assert_eq!(
            freshness(ok, &h, false, &rules(), JAN1),
            Some(Duration::ZERO),
            "{invalid}"
        );
    }
}

#[test]
fn without_ttl_only_what_the_origin_allows() {
    let ok = StatusCode::OK;
    let none = Defaults {
        ttl: None,
        ..rules()
    };
    assert_eq!(freshness(ok, &headers(&[]), false, &none, JAN1), None);
    let modified = headers(&[
        ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ("last-modified", "Wed, 31 Dec 2025 00:00:00 GMT"),
    ]);
    assert_eq!(freshness(ok, &modified, false, &none, JAN1), None);
    let heuristic = Defaults {
        heuristic: Some((0.1, Duration::from_secs(3600))),
        ..none.clone()
    };
    assert_eq!(
        freshness(ok, &modified, false, &heuristic, JAN1),
        Some(Duration::from_secs(3600)),
        "10 % of a day, capped at an hour"
    );
    let recent = headers(&[
        ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ("last-modified", "Wed, 31 Dec 2025 23:50:00 GMT"),
    ]);
    assert_eq!(
        freshness(ok, &recent, false, &heuristic, JAN1),
        Some(Duration::from_secs(60))
    );
    // A 301 takes heuristic freshness too, never the forced ttl.
    assert_eq!(
        freshness(
            StatusCode::MOVED_PERMANENTLY,
            &recent,
            false,
            &heuristic,
            JAN1
        ),
        Some(Duration::from_secs(60))
    );
    // no-cache with a validator: stored, revalidated on every use.
    let no_cache = headers(&[("cache-control", "no-cache"), ("etag", "\"a\"")]);
    assert_eq!(
        freshness(ok, &no_cache, false, &none, JAN1),
        Some(Duration::ZERO)
    );
}

#[test]
fn initial_age_is_the_larger_of_apparent_and_corrected() {
    let h = headers(&[("date", "Thu, 01 Jan 2026 00:00:00 GMT"), ("age", "3")]);
    assert_eq!(initial_age_ms(&h, JAN1 + 10_000, 50), 10_000);
    assert_eq!(initial_age_ms(&h, JAN1 + 1_000, 50), 3_050);
    assert_eq!(initial_age_ms(&headers(&[]), JAN1, 7), 7);
    // A Date in the future (skew) makes no negative age.
    assert_eq!(initial_age_ms(&h, JAN1 - 5_000, 0), 3_000);
}

#[test]
fn a_304_updates_the_stored_fields() {
    let stored = headers(&[
        ("etag", "\"a\""),
        ("content-length", "11"),
        ("cache-control", "max-age=1"),
        ("x-kept", "1"),
    ]);
    let not_modified = headers(&[
        ("cache-control", "max-age=60"),
        ("content-length", "0"),
        ("x-new", "2"),
    ]);
    let updated = updated_headers(&stored, &not_modified);
    assert!(updated.contains_key("date"), "now, when the 304 has none");
    assert_eq!(updated["cache-control"], "max-age=60");
    assert_eq!(updated["content-length"], "11");
    assert_eq!(updated["x-kept"], "1");
    assert_eq!(updated["x-new"], "2");
}

#[test]
fn if_modified_since_and_unsafe_methods() {
    let modified = HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT");
    assert!(not_modified_since(
        &HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT"),
        &modified
    ));
    assert!(!not_modified_since(
        &HeaderValue::from_static("Wed, 31 Dec 2025 00:00:00 GMT"),
        &modified
    ));
    assert!(!not_modified_since(
        &HeaderValue::from_static("bad"),
        &modified
    ));
    assert!(invalidates(&Method::POST, StatusCode::CREATED));
    assert!(invalidates(&Method::DELETE, StatusCode::SEE_OTHER));
    assert!(!invalidates(&Method::PUT, StatusCode::CONFLICT));
    assert!(!invalidates(&Method::GET, StatusCode::OK));
}

#[test]
fn cache_control_parsed_strictly() {
    let cc = CacheControl::parse(&headers(&[(
        "cache-control",
        "Private=\"Set-Cookie, X-Id\", MAX-AGE=\"60\", stale-if-error=+5",
    )]));
    assert!(!cc.private, "qualified: only its fields");
    assert_eq!(cc.withheld, ["set-cookie", "x-id"]);
    assert_eq!(cc.max_age, Some(60), "the quoted comma does not split");
    assert_eq!(cc.stale_if_error, None, "delta-seconds are digits only");
    let conflicting = CacheControl::parse(&headers(&[
        ("cache-control", "max-age=60"),
        ("cache-control", "max-age=120"),
    ]));
    assert_eq!(
        conflicting.max_age,
        Some(0),
        "conflicting duplicates: stale"
    );
    let same = CacheControl::parse(&headers(&[("cache-control", "max-age=60, max-age=60")]));
    assert_eq!(same.max_age, Some(60));
    let invalid = CacheControl::parse(&headers(&[("cache-control", "max-age=soon")]));
    assert_eq!(invalid.max_age, Some(0), "invalid: stale");
    let huge = CacheControl::parse(&headers(&[(
        "cache-control",
        "s-maxage=99999999999999999999",
    )]));
    assert_eq!(huge.s_maxage, Some(1 << 31));
    assert_eq!(
        freshness(
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=soon")]),
            false,
            &rules(),
            0
        ),
        None,
        "invalid freshness is not replaced by the route's ttl"
    );
    // Pragma only without Cache-Control.
    assert!(!wants(&headers(&[
        ("pragma", "no-cache"),
        ("cache-control", "max-age=60")
    ])));
    assert!(wants(&headers(&[("pragma", "no-cache")])));
}

#[test]
fn byte_ranges() {
    assert_eq!(byte_range("bytes=0-3", 10), Some(Ok(0..4)));
    assert_eq!(byte_range("bytes=5-", 10), Some(Ok(5..10)));
    assert_eq!(byte_range("bytes=-3", 10), Some(Ok(7..10)));
    assert_eq!(byte_range("bytes=-30", 10), Some(Ok(0..10)));
    assert_eq!(byte_range("bytes=8-100", 10), Some(Ok(8..10)));
    assert_eq!(byte_range("bytes=10-", 10), Some(Err(())));
    assert_eq!(byte_range("bytes=-0", 10), Some(Err(())));
    assert_eq!(byte_range("bytes=0-1,4-5", 10), None);
    assert_eq!(byte_range("bytes=5-2", 10), None);
    assert_eq!(byte_range("items=0-1", 10), None);
    let stored = headers(&[
        ("etag", "\"s\""),
        ("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT"),
    ]);
    assert!(if_range_matches(
        &HeaderValue::from_static("\"s\""),
        &stored
    ));
    assert!(!if_range_matches(
        &HeaderValue::from_static("\"t\""),
        &stored
    ));
    assert!(if_range_matches(
        &HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT"),
        &stored
    ));
    let weak = headers(&[("etag", "W/\"s\"")]);
    assert!(!if_range_matches(
        &HeaderValue::from_static("W/\"s\""),
        &weak
    ));
}

#[test]
fn vary_values_normalised_as_the_rfc_allows() {
    let names = [
        HeaderName::from_static("accept-encoding"),
        HeaderName::from_static("accept-language"),
        HeaderName::from_static("x-custom"),
    ];
    let a = variant(
        &names,
        &headers(&[
            ("accept-encoding", "gzip, BR;q=0.5"),
            ("accept-language", "en-GB ,fr"),
            ("x-custom", " A "),
        ]),
    );
    let b = variant(
        &names,
        &headers(&[
            ("accept-encoding", "br; q=0.5"),
            ("accept-encoding", "gzip"),
            ("accept-language", "en-gb, fr"),
            ("x-custom", "A"),
        ]),
    );
    assert_eq!(a, b);
    let c = variant(
        &names,
        &headers(&[
            ("accept-encoding", "gzip, br;q=0.5"),
            ("accept-language", "fr, en-gb"),
            ("x-custom", "A"),
        ]),
    );
    assert_ne!(a, c, "Accept-Language order is kept");
    let d = variant(&names[2..], &headers(&[("x-custom", "a")]));
    assert_ne!(d, variant(&names[2..], &headers(&[("x-custom", "A")])));
}

#[test]
fn targeted_fields_come_before_cache_control() {
    let cdn = Defaults {
        targeted: vec![HeaderName::from_static("cdn-cache-control")],
        ttl: None,
        ..rules()
    };
    let h = headers(&[
        ("cache-control", "no-store"),
        ("expires", "0"),
        ("cdn-cache-control", "max-age=600"),
    ]);
    assert_eq!(
        freshness(StatusCode::OK, &h, false, &cdn, JAN1),
        Some(Duration::from_secs(600))
    );
    assert_eq!(freshness(StatusCode::OK, &h, false, &rules(), JAN1), None);
    let only_cc = headers(&[("cache-control", "max-age=60")]);
    assert_eq!(
        freshness(StatusCode::OK, &only_cc, false, &cdn, JAN1),
        Some(Duration::from_secs(60))
    );
    let no_store = headers(&[
        ("cache-control", "max-age=60"),
        ("cdn-cache-control", "no-store"),
    ]);
    assert_eq!(
        freshness(StatusCode::OK, &no_store, false, &cdn, JAN1),
        None
    );
}

#[test]
fn surrogate_control_is_read_with_its_own_syntax() {
    let surrogate = Defaults {
        targeted: vec![HeaderName::from_static("surrogate-control")],
        ttl: None,
        ..rules()
    };
    let fresh = |value: &str| {
        let h = headers(&[("cache-control", "no-store"), ("surrogate-control", value)]);
        freshness(StatusCode::OK, &h, false, &surrogate, JAN1)
    };
    // `+stale` is the time a stale copy may answer when the origin cannot.
    assert_eq!(fresh("max-age=60+30"), Some(Duration::from_secs(60)));
    let h = headers(&[("surrogate-control", "max-age=60+30, content=\"ESI/1.0\"")]);
    let (policy, targeted) = CacheControl::policy(&h, &surrogate.targeted);
    assert!(targeted);
    assert_eq!(policy.max_age, Some(60));
    assert_eq!(policy.stale_if_error, Some(30));
    // A directive targeted at sekisho beats the untargeted one; others' are ignored.
    assert_eq!(
        fresh("max-age=10, max-age=300;sekisho, max-age=5;other-cdn"),
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        fresh("max-age=10, no-store;other-cdn"),
        Some(Duration::from_secs(10))
    );
    assert_eq!(fresh("max-age=10, no-store;sekisho"), None);
    assert_eq!(fresh("no-store"), None);
    // A surrogate next to the origin ignores no-store-remote.
    assert_eq!(
        fresh("max-age=10, no-store-remote"),
        Some(Duration::from_secs(10))
    );
    // Invalid freshness is stale, as in Cache-Control.
    let invalid = headers(&[("cache-control", "max-age=ten")]);
    assert_eq!(
        fresh("max-age=ten"),
        freshness(StatusCode::OK, &invalid, false, &rules(), JAN1)
    );
    assert_eq!(fresh("max-age=ten+30"), fresh("max-age=ten"));
}

#[test]
fn a_304_for_another_representation() {
    let stored = headers(&[("etag", "\"a\"")]);
    assert!(same_representation(&stored, &headers(&[("etag", "\"a\"")])));
    assert!(same_representation(
        &stored,
        &headers(&[("etag", "W/\"a\"")])
    ));
    assert!(same_representation(&stored, &headers(&[])));
    assert!(!same_representation(
        &stored,
        &headers(&[("etag", "\"b\"")])
    ));
    assert!(!same_representation(
        &stored,
        &headers(&[("etag", "W/\"b\"")])
    ));
}
