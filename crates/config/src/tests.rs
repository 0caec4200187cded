use super::*;

const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"

[upstreams.api]
targets = ["127.0.0.1:9001"]

[[routes]]
name = "api"
path_prefix = "/"
upstream = "api"
"#;

fn error_of(source: &str) -> ConfigError {
    match parse(source, "test.toml") {
        Ok(_) => panic!("config was accepted:\n{source}"),
        Err(error) => error,
    }
}

fn first(source: &str) -> Diagnostic {
    error_of(source).diagnostics.remove(0)
}

#[test]
fn the_contract_example_is_accepted_as_it_stands() {
    let config = parse(
        include_str!("../../../examples/contract.toml"),
        "contract.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.routes.len(), 3);
    let payments = config.upstream("payments").expect("payments upstream");
    assert_eq!(payments.balance, Balance::WeightedRoundRobin);
    assert_eq!(payments.targets.get_ref()[0].weight, 3);
    let breaker = payments.circuit_breaker.as_ref().expect("breaker");
    assert_eq!(breaker.minimum_calls.get(), 10);
    assert_eq!(
        breaker.slow_call_threshold.get(),
        std::time::Duration::from_secs(2)
    );
    let bulkhead = payments.bulkhead.as_ref().expect("bulkhead");
    assert_eq!(bulkhead.max_wait.0, std::time::Duration::from_millis(50));
    let orders_route = config.routes[0].get_ref();
    let retry = orders_route.retry.as_ref().expect("retry");
    assert_eq!(retry.attempts.get(), 3);
    assert_eq!(retry.retry_on, default_retry_on_for_test());
    let cache = config.routes[2].get_ref().cache.as_ref().expect("cache");
    assert_eq!(
        cache.ttl.map(|t| t.get()),
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(config.admin.token.as_deref(), Some("change-me"));
}

fn default_retry_on_for_test() -> Vec<FailureKind> {
    vec![
        FailureKind::ConnectError,
        FailureKind::Status(502),
        FailureKind::Status(503),
        FailureKind::Status(504),
    ]
}

#[test]
fn the_repository_examples_are_accepted() {
    for (name, source) in [
        (
            "sekisho.toml",
            include_str!("../../../examples/sekisho.toml"),
        ),
        ("bench.toml", include_str!("../../../examples/bench.toml")),
        ("auth.toml", include_str!("../../../examples/auth.toml")),
    ] {
        if let Err(error) = parse(source, name) {
            panic!("{error}");
        }
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = parse(MINIMAL, "minimal.toml").unwrap_or_else(|e| panic!("{e}"));
    let server = &config.server;
    assert!(server.access_log);
    assert_eq!(server.max_header_bytes, Bytes(16384));
    assert_eq!(server.max_body_bytes, Bytes(10 * 1024 * 1024));
    assert_eq!(server.header_read_timeout.get().as_secs(), 10);
    assert_eq!(server.idle_timeout.get().as_secs(), 60);
    assert_eq!(server.drain_timeout.0.as_secs(), 30);
    assert_eq!(server.max_connections.get(), 10_000);
    assert_eq!(config.admin.listen.0, "127.0.0.1:9901");
    assert_eq!(config.store.data_dir, "./data");
    let route = config.routes[0].get_ref();
    assert_eq!(route.timeout.get().as_secs(), 30);
    assert!(!route.strip_prefix);
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let diagnostic = first("[server]\nlisten = \"127.0.0.1:8080\n");
    assert_eq!(diagnostic.file, PathBuf::from("test.toml"));
    assert_eq!(diagnostic.line, 2);
    assert!(diagnostic.column >= 10, "{diagnostic}");
    assert!(
        diagnostic.to_string().starts_with("test.toml:2:"),
        "{diagnostic}"
    );
}

#[test]
fn an_unknown_key_gets_a_did_you_mean_at_its_place() {
    let source = MINIMAL.replace("[server]\n", "[server]\nworkrs = 2\n");
    let diagnostic = first(&source);
    assert_eq!((diagnostic.line, diagnostic.column), (3, 1), "{diagnostic}");
    assert!(
        diagnostic.message.contains("did you mean `workers`"),
        "{diagnostic}"
    );
}

#[test]
fn an_unknown_key_far_from_any_lists_the_known_ones() {
    let source = MINIMAL.replace("[server]\n", "[server]\nzzz = 2\n");
    let diagnostic = first(&source);
    assert!(diagnostic.message.contains("listen"), "{diagnostic}");
}

#[test]
fn a_route_naming_an_unknown_upstream_points_at_the_name() {
    let source = MINIMAL.replace("upstream = \"api\"", "upstream = \"apj\"");
    let diagnostic = first(&source);
    assert_eq!(diagnostic.line, 11, "{diagnostic}");
    assert_eq!(diagnostic.column, 12, "{diagnostic}");
    assert!(
        diagnostic.message.contains("did you mean `api`"),
        "{diagnostic}"
    );
}

#[test]
fn a_fallback_is_checked_where_it_stands() {
    let unknown = format!("{MINIMAL}\n[routes.fallback]\nupstream = \"apu\"\n");
    let diagnostic = first(&unknown);
    assert_eq!(diagnostic.line, 14, "{diagnostic}");
    assert!(
        diagnostic.message.contains("did you mean `api`"),
        "{diagnostic}"
    );
    let empty = format!("{MINIMAL}\n[routes.fallback]\non = [\"timeout\"]\n");
    assert!(first(&empty)
        .message
        .contains("fallback needs an `upstream`"));
    let bad_on = format!("{MINIMAL}\n[routes.fallback]\non = [\"tired\"]\nstatus = 200\n");
    assert!(first(&bad_on).message.contains("not a fallback condition"));
    let good = format!(
        "{MINIMAL}\n[routes.fallback]\non = [\"circuit_open\", 503]\nstatus = 200\nbody = \"{{}}\"\n"
    );
    let config = parse(&good, "test.toml").expect("a good fallback");
    let fallback = config.routes[0]
        .get_ref()
        .fallback
        .as_ref()
        .expect("parsed")
        .get_ref();
    assert_eq!(
        fallback.on,
        [FallbackOn::CircuitOpen, FallbackOn::Status(503)]
    );
}

#[test]
fn bad_values_are_reported_where_they_stand() {
    let cases = [
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"nowhere\"",
            "not an address",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nidle_timeout = \"5 parsecs\"",
            "not a duration",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nidle_timeout = 30",
            "has no unit",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nmax_connections = 0",
            "from 1",
        ),
        (
            "path_prefix = \"/\"",
            "path_prefix = \"api\"",
            "must start with `/`",
        ),
        (
            "targets = [\"127.0.0.1:9001\"]",
            "targets = []",
            "has no targets",
        ),
        (
            "targets = [\"127.0.0.1:9001\"]",
            "targets = [\"127.0.0.1:9001\"]\nbalance = \"random_robin\"",
            "unknown variant",
        ),
        (
            "upstream = \"api\"",
            "upstream = \"api\"\nmethods = [\"get\"]",
            "capitals",
        ),
    ];
    for (from, to, expected) in cases {
        let source = MINIMAL.replace(from, to);
        let diagnostic = first(&source);
        assert!(
            diagnostic.message.contains(expected),
            "{to:?}: expected {expected:?} in {diagnostic}"
        );
        let changed_line = source
            .lines()
            .position(|line| to.lines().last() == Some(line))
            .map(|index| index + 1);
        assert_eq!(Some(diagnostic.line), changed_line, "{to:?}: {diagnostic}");
    }
}

#[test]
fn missing_required_keys_are_named() {
    let diagnostic = first("[server]\n");
    assert!(diagnostic.message.contains("listen"), "{diagnostic}");
    let diagnostic = first(&MINIMAL.replace("upstream = \"api\"\n", ""));
    assert!(diagnostic.message.contains("upstream"), "{diagnostic}");
}

#[test]
fn several_problems_are_all_reported_in_file_order() {
    let source = format!(
        "{MINIMAL}\n[[routes]]\nname = \"api\"\npath_prefix = \"/x\"\nupstream = \"nope\"\n"
    );
    let error = error_of(&source);
    assert_eq!(error.diagnostics.len(), 2, "{error}");
    assert!(error.diagnostics[0].line <= error.diagnostics[1].line);
    assert!(error.to_string().contains("already defined"), "{error}");
    assert!(
        error.to_string().contains("unknown upstream `nope`"),
        "{error}"
    );
}

#[test]
fn redis_backends_need_a_redis_store() {
    let source = format!(
        "{MINIMAL}[routes.rate_limit]\nalgorithm = \"gcra\"\ncapacity = 5\nrefill_per_second = 1\nbackend = \"redis\"\n"
    );
    let diagnostic = first(&source);
    assert!(diagnostic.message.contains("store.redis"), "{diagnostic}");
    let with_store = source.replace(
        "[upstreams.api]",
        "[store]\nredis = \"redis://127.0.0.1:6379\"\n\n[upstreams.api]",
    );
    assert!(parse(&with_store, "t.toml").is_ok());
}

#[test]
fn an_open_admin_api_must_stay_on_loopback() {
    let source = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9901\"\n");
    let diagnostic = first(&source);
    assert!(diagnostic.message.contains("token"), "{diagnostic}");
    let with_token = source.replace("0.0.0.0:9901\"", "0.0.0.0:9901\"\ntoken = \"secret\"");
    assert!(parse(&with_token, "t.toml").is_ok());
}

#[test]
fn targets_take_strings_and_tables() {
    let source = MINIMAL.replace(
        "targets = [\"127.0.0.1:9001\"]",
        "targets = [\"127.0.0.1:9001\", { address = \"backend.internal:80\", weight = 5, backup = true }]",
    );
    let config = parse(&source, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let targets = config
        .upstream("api")
        .expect("api")
        .targets
        .get_ref()
        .clone();
    assert_eq!(targets[1].address, "backend.internal:80");
    assert_eq!(targets[1].weight, 5);
    assert!(targets[1].backup);
    let bad = MINIMAL.replace(
        "targets = [\"127.0.0.1:9001\"]",
        "targets = [{ address = \"127.0.0.1:9001\", wieght = 2 }]",
    );
    assert!(first(&bad).message.contains("wieght"));
}

#[test]
fn a_missing_file_is_a_diagnostic_too() {
    let error = load(Path::new("/nonexistent/sekisho.toml")).expect_err("missing file");
    assert!(error
        .to_string()
        .starts_with("/nonexistent/sekisho.toml:1:1: cannot read"));
}

#[test]
fn the_committed_json_schema_matches_the_types() {
    let committed = include_str!("../../../docs/config.schema.json");
    let generated = json_schema();
    assert!(
        committed == generated,
        "docs/config.schema.json is out of date: run `cargo run -p sekisho -- schema > docs/config.schema.json`"
    );
}

#[test]
fn line_column_counts_characters() {
    let text = "ab\nc関d\n";
    assert_eq!(line_column(text, 0), (1, 1));
    assert_eq!(line_column(text, 3), (2, 1));
    assert_eq!(line_column(text, "ab\nc関".len()), (2, 3));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_valid_route_timeout_round_trips(ms in 1u64..100_000_000) {
            let text = format_duration(std::time::Duration::from_millis(ms));
            let source = MINIMAL.replace("upstream = \"api\"", &format!("upstream = \"api\"\ntimeout = \"{text}\""));
            let config = parse(&source, "t.toml").map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(config.routes[0].get_ref().timeout.get().as_millis(), u128::from(ms));
        }

        #[test]
        fn arbitrary_text_never_panics_and_errors_have_a_place(source in "\\PC{0,200}") {
            if let Err(error) = parse(&source, "f.toml") {
                for diagnostic in error.diagnostics {
                    prop_assert!(diagnostic.line >= 1 && diagnostic.column >= 1);
                    prop_assert!(diagnostic.line <= source.lines().count().max(1) + 1);
                }
            }
        }

        #[test]
        fn mutating_a_valid_config_never_panics(position in 0usize..200, byte in any::<u8>()) {
            let mut bytes = MINIMAL.as_bytes().to_vec();
            let index = position % bytes.len();
            bytes[index] = byte;
            match String::from_utf8(bytes.clone()) {
                Ok(source) => {
                    let _ = parse(&source, "f.toml");
                }
                Err(_) => {
                    // Not UTF-8: refused with the place of the first bad byte.
                    let error = crate::parse_file_contents(&bytes, std::path::Path::new("f.toml"))
                        .expect_err("invalid UTF-8 accepted");
                    let line = bytes[..index].iter().filter(|&&b| b == b'\n').count() + 1;
                    prop_assert_eq!(error.diagnostics[0].line, line);
                    prop_assert!(error.diagnostics[0].message.contains("UTF-8"));
                }
            }
        }
    }
}

#[test]
fn adaptive_concurrency_is_read_with_defaults_and_checked_where_it_stands() {
    let good = format!(
        "{MINIMAL}\n[server.adaptive_concurrency]\nmax_limit = 200\n\n[routes.adaptive_concurrency]\nenabled = false\n"
    );
    let config = parse(&good, "test.toml").expect("good adaptive concurrency");
    let server = config
        .server
        .adaptive_concurrency
        .as_ref()
        .expect("server block")
        .get_ref();
    assert!(server.enabled);
    assert_eq!(server.algorithm, ConcurrencyAlgorithm::Gradient);
    assert_eq!((server.initial_limit.0, server.max_limit.0), (100, 200));
    let route = config.routes[0]
        .get_ref()
        .adaptive_concurrency
        .as_ref()
        .expect("route block");
    assert!(!route.get_ref().enabled);

    let inverted =
        format!("{MINIMAL}\n[server.adaptive_concurrency]\nmin_limit = 50\ninitial_limit = 10\n");
    let diagnostic = first(&inverted);
    assert_eq!(diagnostic.line, 13, "{diagnostic}");
    assert!(
        diagnostic.message.contains("min_limit ≤ initial_limit"),
        "{diagnostic}"
    );
    let ratio = format!(
        "{MINIMAL}\n[routes.adaptive_concurrency]\nalgorithm = \"aimd\"\nbackoff_ratio = 1.5\n"
    );
    assert!(first(&ratio)
        .message
        .contains("route `api`: adaptive_concurrency: backoff_ratio"));
    let typo = format!("{MINIMAL}\n[server.adaptive_concurrency]\nalgorythm = \"aimd\"\n");
    assert!(first(&typo).message.contains("algorithm"));
}

#[test]
fn the_overload_guard_is_read_and_checked_where_it_stands() {
    assert!(parse(MINIMAL, "test.toml")
        .expect("minimal")
        .server
        .overload
        .is_none());
    let good = format!("{MINIMAL}\n[server.overload]\nmax_loop_delay = \"200ms\"\n");
    let config = parse(&good, "test.toml").expect("good overload guard");
    assert_eq!(
        config.server.overload.expect("overload").max_loop_delay.0,
        std::time::Duration::from_millis(200)
    );
    let zero = format!("{MINIMAL}\n[server.overload]\nmax_loop_delay = \"0s\"\n");
    let diagnostic = first(&zero);
    assert_eq!(diagnostic.line, 14, "{diagnostic}");
    let missing = format!("{MINIMAL}\n[server.overload]\n");
    assert!(
        first(&missing).message.contains("max_loop_delay"),
        "{}",
        first(&missing)
    );
}

#[test]
fn trusted_proxies_and_a_server_wide_rate_limit_are_checked() {
    let good = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\", \"192.168.1.7\"]",
    ) + "\n[server.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 100\nwindow = \"1s\"\nkey = \"client_ip\"\n";
    let config = parse(&good, "test.toml").expect("good proxies and limit");
    assert_eq!(config.server.trusted_proxies.len(), 3);
    assert!(config.server.rate_limit.is_some());
    let bad = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\ntrusted_proxies = [\"10.0.0.0/33\"]",
    );
    let diagnostic = first(&bad);
    assert_eq!(
        (diagnostic.line, diagnostic.column),
        (4, 20),
        "{diagnostic}"
    );
    assert!(diagnostic.message.contains("10.0.0.0/33"), "{diagnostic}");
    let no_window =
        format!("{MINIMAL}\n[server.rate_limit]\nalgorithm = \"sliding_window_log\"\nlimit = 10\n");
    assert!(first(&no_window)
        .message
        .starts_with("server.rate_limit with SlidingWindowLog needs `limit` and `window`"));
    let dear =
        format!("{MINIMAL}\n[routes.rate_limit]\ncapacity = 5\nrefill_per_second = 1\ncost = 6\n");
    assert!(first(&dear)
        .message
        .contains("cost (6) is larger than the quota (5)"));
}

#[test]
fn redis_timeout_defaults_to_50ms_and_is_refused_out_of_range_where_it_stands() {
    let config = parse(MINIMAL, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.store.redis_timeout.get(),
        std::time::Duration::from_millis(50)
    );
    assert_eq!(
        Store::default().redis_timeout.get(),
        std::time::Duration::from_millis(50)
    );
    for (text, millis) in [("250ms", 250), ("1m", 60_000)] {
        let custom = format!("[store]\nredis_timeout = \"{text}\"\n{MINIMAL}");
        let config = parse(&custom, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.store.redis_timeout.get(),
            std::time::Duration::from_millis(millis)
        );
    }
    for text in ["0s", "61s"] {
        let refused = format!("[store]\nredis_timeout = \"{text}\"\n{MINIMAL}");
        let diagnostic = first(&refused);
        assert!(
            diagnostic.to_string().starts_with("test.toml:2:17: "),
            "{diagnostic}"
        );
        assert!(
            diagnostic
                .message
                .contains("greater than zero and at most 1m"),
            "{diagnostic}"
        );
    }
    let bare = format!("[store]\nredis_timeout = 50\n{MINIMAL}");
    assert!(first(&bare).message.contains("has no unit"));
}

#[test]
fn alert_rules_and_receivers_are_read_and_checked_where_they_stand() {
    let good = format!(
        "{MINIMAL}\n[monitor]\ninterval = \"5s\"\n\n[alerts]\ngroup_wait = \"1s\"\ndisable = [\"HighCpu\"]\n\n\
         [[alerts.rules]]\nname = \"ApiFailing\"\nsignal = \"upstream_error_rate\"\nupstream = \"api\"\n\
         window = \"30s\"\nwarning = 0.05\ncritical = 0.5\nfor = \"10s\"\n\
         annotations = {{ runbook_url = \"https://example.com/rb\" }}\n\n\
         [[alerts.rules]]\nname = \"Meltdown\"\nall_of = [\"ApiFailing\", \"HighMemory\"]\nseverity = \"emergency\"\n\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://127.0.0.1:5001/hook\"\nmin_severity = \"warning\"\n\
         [[alerts.receivers]]\nname = \"mail\"\nemail = {{ smtp = \"mail.example.com:587\", from = \"Sekisho <sekisho@example.com>\", to = [\"ops@example.com\"], starttls = true, ca = \"ca.pem\" }}\n"
    );
    let config = parse(&good, "test.toml").expect("good alerts");
    assert_eq!(config.monitor.interval.0, std::time::Duration::from_secs(5));
    assert_eq!(config.alerts.rules.len(), 2);
    let rule = config.alerts.rules[0].get_ref();
    assert_eq!(
        rule.thresholds(),
        vec![
            (AlertSeverity::Warning, 0.05),
            (AlertSeverity::Critical, 0.5)
        ]
    );
    assert_eq!(rule.for_.0, std::time::Duration::from_secs(10));
    assert_eq!(
        config.alerts.receivers[0].get_ref().min_severity,
        AlertSeverity::Warning
    );
    let email = config.alerts.receivers[1]
        .get_ref()
        .email
        .as_ref()
        .expect("email");
    assert!(email.starttls && email.ca.as_deref() == Some("ca.pem"));
    // Defaults without any [alerts].
    let plain = parse(MINIMAL, "test.toml").expect("minimal");
    assert!(plain.alerts.default_rules && plain.alerts.rules.is_empty());
    assert_eq!(
        plain.alerts.group_interval.0,
        std::time::Duration::from_secs(300)
    );

    for (extra, line, says) in [
        (
            "[[alerts.rules]]\nname = \"X\"\nsignal = \"cpuu\"\ncritical = 0.9\n",
            13,
            "unknown signal `cpuu`",
        ),
        (
            "[[alerts.rules]]\nname = \"X\"\nsignal = \"cpu\"\n",
            13,
            "needs at least one threshold",
        ),
        (
            "[[alerts.rules]]\nname = \"X\"\nany_of = [\"Nope\"]\nseverity = \"critical\"\n",
            13,
            "`Nope` is not another alert rule",
        ),
        (
            "[[alerts.rules]]\nname = \"X\"\nsignal = \"upstream_error_rate\"\nupstream = \"nope\"\nwarning = 0.1\n",
            13,
            "no upstream named `nope`",
        ),
        (
            "[[alerts.receivers]]\nname = \"ops\"\n",
            13,
            "needs a channel",
        ),
        (
            "[[alerts.receivers]]\nname = \"ops\"\nslack = \"not a url\"\n",
            13,
            "is not an http(s) URL",
        ),
        (
            "[[alerts.receivers]]\nname = \"ops\"\nemail = { smtp = \"127.0.0.1\", from = \"a@b.c\", to = [\"o@b.c\"] }\n",
            13,
            "email.smtp `127.0.0.1` is not `host:port`",
        ),
        (
            "[[alerts.receivers]]\nname = \"ops\"\nemail = { smtp = \"127.0.0.1:25\", from = \"Ops <a@b.c\", to = [\"o@b.c\"] }\n",
            13,
            "`Ops <a@b.c` is not an e-mail address",
        ),
        (
            "[[alerts.receivers]]\nname = \"ops\"\nemail = { smtp = \"127.0.0.1:25\", from = \"a@b.c\", to = [\"ops\"] }\n",
            13,
            "`ops` is not an e-mail address",
        ),
        (
            "[[alerts.receivers]]\nname = \"ops\"\nemail = { smtp = \"127.0.0.1:25\", from = \"a@b.c\", to = [\"o@b.c\"], ca = \"ca.pem\" }\n",
            13,
            "email.ca is only used with `starttls = true`",
        ),
        (
            "[[alerts.receivers]]\nname = \"ops\"\nemail = { smtp = \"127.0.0.1:25\", from = \"a@b.c\", to = [\"o@b.c\"], starttls = true, username = \"u\" }\n",
            13,
            "email.username and email.password_file go together",
        ),
        (
            "[[alerts.receivers]]\nname = \"ops\"\nemail = { smtp = \"127.0.0.1:25\", from = \"a@b.c\", to = [\"o@b.c\"], username = \"u\", password_file = \"p\" }\n",
            13,
            "SMTP credentials are only sent over STARTTLS",
        ),
        (
            "[alerts]\ndisable = [\"HighCpu\", \"Typo\"]\n",
            14,
            "`Typo` is not a default rule",
        ),
        (
            "[alerts.outbox]\nbackoff_initial = \"2m\"\nbackoff_max = \"1m\"\n",
            13,
            "backoff_initial is longer than backoff_max",
        ),
        (
            "[alerts.outbox]\nmax_age = \"0s\"\n",
            14,
            "must be greater than zero",
        ),
    ] {
        let diagnostic = first(&format!("{MINIMAL}\n{extra}"));
        assert!(diagnostic.message.contains(says), "{extra}: {diagnostic}");
        assert_eq!(diagnostic.line, line, "{extra}: {diagnostic}");
    }
}

#[test]
fn metric_rules_with_a_function_over_a_window_are_read_and_checked_where_they_stand() {
    let good = format!(
        "{MINIMAL}\n[[alerts.rules]]\nname = \"Orders5xx\"\nmetric = \"sekisho_requests_total\"\n\
         match = {{ route = \"api\", class = \"5xx\" }}\nfunction = \"rate\"\nwindow = \"30s\"\nwarning = 0.5\n\
         [[alerts.rules]]\nname = \"ApiFailing\"\nsignal = \"upstream_error_rate\"\nupstream = \"api\"\n\
         window = \"30s\"\nwarning = 0.05\n\
         [[alerts.rules]]\nname = \"InFlight\"\nmetric = \"sekisho_requests_in_flight\"\ncritical = 100\n"
    );
    let config = parse(&good, "test.toml").expect("metric rules");
    let rules: Vec<&AlertRule> = config.alerts.rules.iter().map(|r| r.get_ref()).collect();
    assert_eq!(
        rules[0].metric.as_ref().map(|m| m.get_ref().as_str()),
        Some("sekisho_requests_total")
    );
    let matchers = rules[0].match_labels.as_ref().expect("match").get_ref();
    assert_eq!(matchers.get("class").map(String::as_str), Some("5xx"));
    assert_eq!(rules[0].function(), AlertFunction::Rate);
    assert_eq!(
        rules[0].window.as_ref().map(|w| w.get_ref().0),
        Some(std::time::Duration::from_secs(30))
    );
    // The contract's example: a window without a function averages the signal over it.
    assert_eq!(rules[1].function(), AlertFunction::Avg);
    assert_eq!(rules[2].function(), AlertFunction::Value);

    let rule = "[[alerts.rules]]\nname = \"X\"\n";
    for (extra, line, says) in [
        (
            "metric = \"sekisho requests\"\nwarning = 1\n",
            15,
            "`sekisho requests` is not a metric name",
        ),
        (
            "metric = \"sekisho_requests_total\"\nsignal = \"cpu\"\nwarning = 1\n",
            13,
            "a `signal` or a `metric`, not both",
        ),
        (
            "metric = \"sekisho_requests_total\"\nroute = \"api\"\nwarning = 1\n",
            15,
            "picks its series with `match`",
        ),
        (
            "signal = \"cpu\"\nmatch = { route = \"api\" }\nwarning = 1\n",
            16,
            "`match` selects the series of a `metric`",
        ),
        (
            "metric = \"sekisho_requests_total\"\nfunction = \"rate\"\nwarning = 1\n",
            16,
            "`rate` needs a `window`",
        ),
        (
            "metric = \"sekisho_requests_total\"\nfunction = \"value\"\nwindow = \"1m\"\nwarning = 1\n",
            17,
            "takes the latest reading and no `window`",
        ),
        (
            "metric = \"sekisho_requests_total\"\nfunction = \"median\"\nwarning = 1\n",
            16,
            "unknown variant `median`",
        ),
        (
            "any_of = [\"HighCpu\"]\nseverity = \"critical\"\nwindow = \"1m\"\n",
            17,
            "`window` is for threshold rules",
        ),
    ] {
        let diagnostic = first(&format!("{MINIMAL}\n{rule}{extra}"));
        assert!(diagnostic.message.contains(says), "{extra}: {diagnostic}");
        assert_eq!(diagnostic.line, line, "{extra}: {diagnostic}");
    }
}

#[test]
fn a_receivers_ca_file_is_read_relative_to_the_config_and_reported_where_it_stands() {
    let dir = std::env::temp_dir().join(format!("sekisho_ca_file_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .expect("ca.pem");
    std::fs::write(dir.join("notes.txt"), "not a certificate").expect("notes.txt");
    let receiver = |ca_file: &str, url: &str| {
        format!(
            "{MINIMAL}\n[[alerts.receivers]]\nname = \"ops\"\nslack = \"{url}\"\nca_file = \"{ca_file}\"\n"
        )
    };
    let path = dir.join("sekisho.toml");
    let good = receiver("ca.pem", "https://hooks.example.com/x");
    let config = parse_file_contents(good.as_bytes(), &path).expect("a readable ca_file");
    let ca_file = config.alerts.receivers[0].get_ref().ca_file.as_ref();
    assert_eq!(ca_file.map(|c| c.get_ref().as_str()), Some("ca.pem"));

    for (source, says) in [
        (
            receiver("missing.pem", "https://hooks.example.com/x"),
            "cannot read ca_file",
        ),
        (
            receiver("notes.txt", "https://hooks.example.com/x"),
            "holds no PEM certificate",
        ),
        (
            receiver("ca.pem", "http://hooks.example.com/x"),
            "only used with https:// URLs",
        ),
    ] {
        let error = parse_file_contents(source.as_bytes(), &path).expect_err(says);
        let diagnostic = &error.diagnostics[0];
        assert!(diagnostic.message.contains(says), "{diagnostic}");
        assert!(
            diagnostic.message.contains("alert receiver `ops`"),
            "{diagnostic}"
        );
        // At the value to change: the `ca_file` line, its value's column.
        assert_eq!(
            (diagnostic.line, diagnostic.column),
            (16, 11),
            "{diagnostic}"
        );
        assert_eq!(diagnostic.file, path);
    }
    let _ = std::fs::remove_dir_all(dir);
}

const AUTH_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"

[upstreams.orders]
targets = ["127.0.0.1:9001"]

[auth]
# path_prefix = "/auth"
# session_store = "local"
# access_ttl = "5m"
# refresh_ttl = "7d"
# session_absolute = "12h"
# cookie = false
argon2 = { memory_kib = 19456, iterations = 2, parallelism = 1 }
# max_concurrent_hashes = 0
lockout = { max_failures = 5, window = "5m", duration = "15m" }

[[routes]]
name = "orders-write"
path_prefix = "/api/orders"
methods = ["POST"]
upstream = "orders"
auth = { permission = "orders:write" }

[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "orders"
auth = { role = "admin" }

[[routes]]
name = "orders"
path_prefix = "/api"
upstream = "orders"
auth = "authenticated"
"#;

#[test]
fn the_contract_auth_example_is_accepted_with_its_defaults() {
    let config = parse(AUTH_EXAMPLE, "auth.toml").unwrap_or_else(|e| panic!("{e}"));
    let auth = config.auth.as_ref().expect("[auth]").get_ref();
    assert_eq!(auth.path_prefix, "/auth");
    assert_eq!(auth.session_store, SessionStore::Local);
    assert_eq!(auth.access_ttl.get(), std::time::Duration::from_secs(300));
    assert_eq!(
        auth.refresh_ttl.get(),
        std::time::Duration::from_secs(7 * 86_400)
    );
    assert_eq!(
        auth.session_absolute.get(),
        std::time::Duration::from_secs(12 * 3_600)
    );
    assert!(!auth.cookie);
    assert_eq!(auth.argon2, Argon2Params::default());
    assert_eq!(auth.argon2.memory_kib, 19_456);
    assert_eq!(auth.max_concurrent_hashes, 0);
    assert_eq!(auth.lockout, Lockout::default());
    assert_eq!(auth.lockout.max_failures, 5);
    let requirements: Vec<_> = config
        .routes
        .iter()
        .map(|r| r.get_ref().auth.as_ref().map(|a| a.get_ref().clone()))
        .collect();
    assert_eq!(
        requirements,
        vec![
            Some(RouteAuth::Permission("orders:write".to_owned())),
            Some(RouteAuth::Role("admin".to_owned())),
            Some(RouteAuth::Authenticated),
        ]
    );
    assert!(parse(MINIMAL, "t.toml").expect("valid").auth.is_none());
}

#[test]
fn a_route_with_auth_is_refused_without_an_auth_section() {
    let source = MINIMAL.replace(
        "upstream = \"api\"\n",
        "upstream = \"api\"\nauth = \"authenticated\"\n",
    );
    let diagnostic = first(&source);
    assert_eq!(
        (diagnostic.line, diagnostic.column),
        (12, 8),
        "{diagnostic}"
    );
    assert!(
        diagnostic.message.contains("no [auth] section"),
        "{diagnostic}"
    );
    assert!(diagnostic.to_string().starts_with("test.toml:12:8: "));
    assert!(parse(&format!("{source}\n[auth]\n"), "t.toml").is_ok());
}

#[test]
fn bad_auth_values_are_reported_where_they_stand() {
    let bad_requirement = MINIMAL.replace(
        "upstream = \"api\"\n",
        "upstream = \"api\"\nauth = \"anyone\"\n",
    );
    let diagnostic = first(&format!("{bad_requirement}\n[auth]\n"));
    assert_eq!(diagnostic.line, 12, "{diagnostic}");
    assert!(
        diagnostic.message.contains("\"authenticated\""),
        "{diagnostic}"
    );
    let two_keys = MINIMAL.replace(
        "upstream = \"api\"\n",
        "upstream = \"api\"\nauth = { role = \"a\", permission = \"b\" }\n",
    );
    let diagnostic = first(&format!("{two_keys}\n[auth]\n"));
    assert!(
        diagnostic.message.contains("one permission or one role"),
        "{diagnostic}"
    );
    let redis_sessions = format!("{MINIMAL}\n[auth]\nsession_store = \"redis\"\n");
    let diagnostic = first(&redis_sessions);
    assert!(diagnostic.message.contains("store.redis"), "{diagnostic}");
    let weak = format!(
        "{MINIMAL}\n[auth]\nargon2 = {{ memory_kib = 4, iterations = 1, parallelism = 1 }}\n"
    );
    assert!(first(&weak).message.contains("memory_kib"));
    let typo = format!("{MINIMAL}\n[auth]\naccess_tl = \"1m\"\n");
    assert!(first(&typo).message.contains("did you mean `access_ttl`"));
    let prefix = format!("{MINIMAL}\n[auth]\npath_prefix = \"auth\"\n");
    assert!(first(&prefix).message.contains("path_prefix"));
}

#[test]
fn scheduled_backups_default_to_a_day_and_seven_files_and_need_a_directory() {
    let config = parse(MINIMAL, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(config.store.backup.is_none());
    let on = format!("[store.backup]\ndir = \"backups\"\n{MINIMAL}");
    let config = parse(&on, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let backup = config.store.backup.expect("[store.backup] is set");
    assert_eq!(
        (backup.dir.as_str(), backup.interval.0, backup.keep.0),
        ("backups", std::time::Duration::from_secs(86_400), 7)
    );
    let empty = format!("[store.backup]\ndir = \"\"\n{MINIMAL}");
    let diagnostic = first(&empty);
    assert!(
        diagnostic.to_string().starts_with("test.toml:2:7: "),
        "{diagnostic}"
    );
    assert!(
        diagnostic.message.contains("must name the directory"),
        "{diagnostic}"
    );
    let zero = format!("[store.backup]\ndir = \"b\"\nkeep = 0\n{MINIMAL}");
    assert!(
        first(&zero).to_string().starts_with("test.toml:3:"),
        "{}",
        first(&zero)
    );
}
