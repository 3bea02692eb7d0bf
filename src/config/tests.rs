use super::*;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn parse_ok(text: &str) -> Config {
    parse_with_env(text, &env(&[])).unwrap_or_else(|e| panic!("config refused:\n{e}"))
}

fn issues(text: &str) -> Vec<ConfigIssue> {
    match parse_with_env(text, &env(&[])) {
        Ok(_) => panic!("config accepted:\n{text}"),
        Err(e) => e.issues,
    }
}

const MINIMAL: &str = "version: 1\ntenants:\n  - id: acme\n    auth: { tickets: { dev: dev } }\n";

#[test]
fn minimal_config_gets_spec_defaults() {
    let cfg = parse_ok(MINIMAL);
    assert_eq!(cfg.gateway.listen, "0.0.0.0:8080");
    assert_eq!(cfg.gateway.admin_listen, "127.0.0.1:9090");
    assert_eq!(cfg.gateway.queues.reliable_capacity, 1024);
    assert_eq!(cfg.gateway.queues.lossy_capacity, 256);
    assert_eq!(cfg.gateway.queues.max_bytes, 1_048_576);
    assert_eq!(cfg.gateway.handshake_limit.per_ip_burst, 20);
    assert_eq!(cfg.gateway.plugins.call_timeout_ms, 50);
    assert_eq!(cfg.gateway.plugins.max_faults_per_session, 3);
    let t = &cfg.tenants[0];
    assert_eq!(t.limits.max_frame_bytes, 65536);
    assert_eq!(t.policy.rate_limit_rps, 100);
    assert_eq!(t.policy.max_bytes_per_sec, 1_048_576);
    assert_eq!(t.policy.sessions.max_sessions_per_user, 4);
    assert!(t.policy.ext_allowlist.is_empty());
    assert!(t.policy.hot_requires_active_room);
    assert_eq!(t.rooms.history_ttl_ms, 600_000);
    assert_eq!(t.limits.max_rooms_per_user, 128);
    assert_eq!(t.limits.max_rooms_total, 100_000);
    assert_eq!(t.limits.max_users_per_room, 0);
}

#[test]
fn unknown_fields_are_errors_with_their_path() {
    let e = issues("version: 1\ngateway:\n  listn: \"0.0.0.0:1\"\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].path, "gateway.listn");
    assert!(e[0].message.contains("unknown field"), "{}", e[0].message);

    let e = issues(
        "version: 1\ntenants:\n  - id: a\n    auth: { tickets: { t: u } }\n    limits: { max_frame_byte: 5 }\n",
    );
    assert_eq!(e[0].path, "tenants[0].limits.max_frame_byte");
}

#[test]
fn wrong_types_name_the_field() {
    let e = issues(
        "version: 1\ntenants:\n  - id: a\n    auth: { tickets: { t: u } }\n    limits: { max_frame_bytes: lots }\n",
    );
    assert_eq!(e[0].path, "tenants[0].limits.max_frame_bytes");
}

#[test]
fn version_is_required_and_must_be_one() {
    let e = issues("tenants: []\n");
    assert!(e[0].message.contains("version"), "{}", e[0].message);
    let e = issues("version: 2\n");
    assert_eq!(e[0].path, "version");
}

#[test]
fn semantic_errors_are_all_reported_at_once() {
    let text = r#"
version: 1
gateway:
  listen: "nowhere"
  queues: { reliable_capacity: 0, max_bytes: 0 }
tenants:
  - id: acme
    auth: { mode: jwt }
    limits: { max_frame_bytes: 1 }
    policy:
      ext_allowlist: ["room"]
      hot_allowlist: ["1:300"]
    routes:
      - { svc: chat, plugin: echo }
  - id: acme
    auth: { tickets: { dev: dev } }
"#;
    let paths: Vec<String> = issues(text).into_iter().map(|i| i.path).collect();
    for expected in [
        "gateway.listen",
        "gateway.queues.reliable_capacity",
        "gateway.queues.max_bytes",
        "tenants[0].auth.algorithm",
        "tenants[0].limits.max_frame_bytes",
        "tenants[0].policy.ext_allowlist[0]",
        "tenants[0].policy.hot_allowlist[0]",
        "tenants[0].routes[0].svc",
        "tenants[1].id",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "missing {expected} in {paths:?}"
        );
    }
}

#[test]
fn env_vars_are_expanded_and_missing_ones_are_errors() {
    let text = "version: 1\ntenants:\n  - id: acme\n    api_keys: [\"${KEY}\"]\n    auth: { tickets: { dev: \"user-${WHO}\" } }\n";
    let cfg = parse_with_env(
        text,
        &env(&[("KEY", "0123456789abcdef0123"), ("WHO", "dev")]),
    )
    .expect("valid");
    assert_eq!(cfg.tenants[0].api_keys, vec!["0123456789abcdef0123"]);
    assert_eq!(cfg.tenants[0].auth.tickets["dev"], "user-dev");

    let e = parse_with_env(text, &env(&[("WHO", "x")])).expect_err("KEY missing");
    assert_eq!(e.issues[0].path, "tenants[0].api_keys[0]");
    assert!(e.issues[0].message.contains("KEY"));
}

#[test]
fn jwt_modes_need_the_right_key_material() {
    let base = "version: 1\ntenants:\n  - id: a\n    auth:\n      mode: jwt\n";
    let e = issues(&format!("{base}      algorithm: HS256\n"));
    assert_eq!(e[0].path, "tenants[0].auth.secret_env");
    let e = issues(&format!(
        "{base}      algorithm: RS256\n      secret_env: S\n      jwks_file: k.json\n"
    ));
    assert_eq!(e[0].path, "tenants[0].auth.secret_env");
    let e = issues(&format!("{base}      algorithm: none\n"));
    assert_eq!(e[0].path, "tenants[0].auth.algorithm");
    parse_ok(&format!(
        "{base}      algorithm: ES256\n      public_key_file: k.pem\n"
    ));
}

#[test]
fn webhook_and_events_must_name_defined_upstreams() {
    let text = r#"
version: 1
tenants:
  - id: a
    auth: { mode: webhook, upstream: main, path: /auth }
    backend:
      upstreams: { other: { url: "http://127.0.0.1:3000" } }
      events: { connect: nope }
"#;
    let paths: Vec<String> = issues(text).into_iter().map(|i| i.path).collect();
    assert!(
        paths.contains(&"tenants[0].auth.upstream".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"tenants[0].backend.events.connect".to_owned()),
        "{paths:?}"
    );
}

#[test]
fn broken_yaml_is_refused_with_a_location() {
    let e = issues("version: 1\ntenants: [\n");
    assert!(e[0].message.contains("invalid YAML"));
    assert!(issues("")[0].message.contains("empty"));
    assert!(issues("- 1\n- 2\n")[0].message.contains("mapping"));
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
        ));
    }
    text.push_str("version: 1\n");
    assert!(parse_with_env(&text, &env(&[])).is_err());
}

/// Deep flow nesting is refused, with its line, before the YAML scanner
/// (whose cost grows with the square of the depth) reads it; the parser's own
/// recursion limit still answers anything deeper than 128.
#[test]
fn deep_flow_nesting_is_refused_before_parsing() {
    let deep = |n: usize| {
        format!(
            "version: 1\n# [[[[ a comment\nx: \"[[[[\"\nnested: {}1{}\n",
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let e = issues(&deep(200_000));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].path, "line 4");
    assert!(e[0].message.contains("nested more than 1000 deep"), "{e:?}");
    // Within the bound, the parser's own answer stands.
    let e = issues(&deep(nesting::MAX_FLOW_DEPTH));
    assert!(e[0].message.contains("recursion limit exceeded"), "{e:?}");
    // An environment value is bounded too: a deep one stays a string and
    // the schema refuses it as one.
    let text = "version: 1\ngateway:\n  ping_interval_ms: ${PING}\ntenants:\n  - id: acme\n    auth: { tickets: { dev: dev } }\n";
    let value = "[".repeat(200_000);
    let e = match parse_with_env(text, &env(&[("PING", &value)])) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.issues,
    };
    assert_eq!(e[0].path, "gateway.ping_interval_ms", "{e:?}");
}

#[test]
fn a_byte_order_mark_is_not_content() {
    let text = "\u{feff}version: 1\ntenants:\n  - id: acme\n    auth: { tickets: { dev: dev } }\n";
    let cfg = parse_with_env(text, &env(&[])).expect("a config saved with a BOM");
    assert_eq!(cfg.tenants[0].id, "acme");
    // The deep-nesting bound sees past it too.
    let deep = format!("\u{feff}version: 1\na: {}\n", "[".repeat(2_000));
    assert!(
        issues(&deep)[0]
            .message
            .contains("nested more than 1000 deep")
    );
}

#[test]
fn reference_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("wsprism.yaml");
    let cfg = load(&path).unwrap_or_else(|e| panic!("wsprism.yaml refused:\n{e}"));
    let acme = cfg
        .tenants
        .iter()
        .find(|t| t.id == "acme")
        .expect("tenant acme");
    assert_eq!(acme.auth.mode, AuthMode::Static);
    assert!(acme.auth.tickets.contains_key("dev"));
    assert!(acme.routes.iter().any(|r| r.svc == "echo"));
}

#[test]
fn cluster_settings_are_checked_without_echoing_secrets() {
    let cfg = parse_ok(MINIMAL);
    assert_eq!(cfg.gateway.cluster.mode, ClusterMode::Local);
    assert_eq!(cfg.gateway.cluster.prefix, "wsprism");
    assert_eq!(cfg.gateway.cluster.node_ttl_ms, 15_000);
    let ok = parse_ok(&format!(
        "{MINIMAL}gateway:\n  cluster: {{ mode: redis, redis_url: \"rediss://:pw@cache.internal:6380/2\", node_id: edge-1 }}\n"
    ));
    assert_eq!(ok.gateway.cluster.mode, ClusterMode::Redis);

    let e = issues(&format!(
        "{MINIMAL}gateway:\n  cluster:\n    mode: redis\n    redis_url: \"redis://:s3cret@host:notaport\"\n    prefix: \"a{{b}}\"\n    node_id: \"no spaces\"\n    node_ttl_ms: 10\n"
    ));
    let paths: Vec<&str> = e.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "gateway.cluster.redis_url",
            "gateway.cluster.prefix",
            "gateway.cluster.node_id",
            "gateway.cluster.node_ttl_ms",
        ]
    );
    assert!(
        e.iter().all(|i| !i.message.contains("s3cret")),
        "a URL's password never reaches an error: {e:?}"
    );
    let e = issues(&format!(
        "{MINIMAL}gateway:\n  cluster: {{ redis_url: \"http://host\" }}\n"
    ));
    assert_eq!(e[0].path, "gateway.cluster.redis_url");
}

#[test]
fn sentinel_settings_are_checked() {
    let ok = parse_ok(&format!(
        "{MINIMAL}gateway:\n  cluster:\n    mode: redis\n    redis_url: \"redis://:pw@ignored/3\"\n    sentinel:\n      master_name: cache-main\n      urls: [\"redis://10.0.0.1:26379\", \"rediss://:sp@10.0.0.2:26379\"]\n"
    ));
    let s = ok.gateway.cluster.sentinel.expect("sentinel block");
    assert_eq!(s.master_name, "cache-main");
    assert_eq!(s.urls.len(), 2);

    let e = issues(&format!(
        "{MINIMAL}gateway:\n  cluster:\n    mode: redis\n    sentinel:\n      master_name: \"two words\"\n      urls: [\"redis://ok:26379\", \"tcp://:s3cret@host:1\", \"redis://:s3cret@host:notaport\"]\n"
    ));
    let paths: Vec<&str> = e.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "gateway.cluster.sentinel.master_name",
            "gateway.cluster.sentinel.urls[1]",
            "gateway.cluster.sentinel.urls[2]",
        ]
    );
    assert!(e.iter().all(|i| !i.message.contains("s3cret")), "{e:?}");

    let e = issues(&format!(
        "{MINIMAL}gateway:\n  cluster:\n    sentinel: {{ master_name: m, urls: [] }}\n"
    ));
    assert_eq!(e[0].path, "gateway.cluster.sentinel.urls");
    let e = issues(&format!(
        "{MINIMAL}gateway:\n  cluster:\n    sentinel: {{ master_name: m, urls: [\"redis://h:1\"], quorum: 2 }}\n"
    ));
    assert!(e[0].path.starts_with("gateway.cluster.sentinel"), "{e:?}");
}

#[test]
fn connection_and_proxy_settings_are_checked() {
    let cfg = parse_ok(MINIMAL);
    assert_eq!(cfg.gateway.max_connections, 100_000);
    assert_eq!(cfg.gateway.handshake_limit.ipv6_prefix_len, 64);
    assert!(cfg.gateway.trusted_proxies.is_empty() && !cfg.gateway.proxy_protocol);
    assert!(!cfg.gateway.tls.enabled());
    let ok = parse_ok(
        "version: 1\ngateway:\n  trusted_proxies: [\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.7\"]\n  proxy_protocol: true\ntenants:\n  - id: acme\n    auth: { tickets: { dev: dev } }\n",
    );
    let nets: Vec<&str> = ok
        .gateway
        .trusted_proxies
        .iter()
        .map(|p| p.as_str())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]);
    let text = r#"
version: 1
gateway:
  trusted_proxies: ["10.0.0.0/33", "proxy.internal"]
  proxy_protocol: true
  handshake_limit: { ipv6_prefix_len: 0 }
  tls: { cert_file: cert.pem }
tenants:
  - id: acme
    auth: { tickets: { dev: dev } }
"#;
    let paths: Vec<String> = issues(text).into_iter().map(|i| i.path).collect();
    for expected in [
        "gateway.trusted_proxies[0]",
        "gateway.trusted_proxies[1]",
        "gateway.handshake_limit.ipv6_prefix_len",
        "gateway.tls.key_file",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "missing {expected} in {paths:?}"
        );
    }
    let text = "version: 1\ngateway:\n  proxy_protocol: true\ntenants:\n  - id: acme\n    auth: { tickets: { dev: dev } }\n";
    let paths: Vec<String> = issues(text).into_iter().map(|i| i.path).collect();
    assert_eq!(paths, ["gateway.proxy_protocol"]);
}

/// Issue 11 item 8: config errors never echo secrets: a static ticket is a
/// map key (so part of the YAML path), API keys and `${VAR}`-expanded values
/// may be quoted by parser messages.
#[test]
fn config_errors_do_not_echo_secrets() {
    let text = r#"
version: 1
tenants:
  - id: acme
    auth: { tickets: { tkt-s3cret-1: [not, a, string], tkt-s3cret-2: "" } }
    api_keys: ["short-s3cret"]
"#;
    let all = issues(text);
    assert!(!all.is_empty());
    for i in &all {
        assert!(
            !i.path.contains("s3cret") && !i.message.contains("s3cret"),
            "{i}"
        );
    }
    assert!(all.iter().any(|i| i.path.contains("<ticket>")), "{all:?}");
    let text = r#"
version: 1
tenants:
  - id: acme
    auth: { tickets: { dev: dev } }
    backend:
      upstreams:
        main: { url: "${HOOK_URL}" }
"#;
    let all = match parse_with_env(text, &env(&[("HOOK_URL", "ftp://host/hook?token=s3cret")])) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.issues,
    };
    assert_eq!(
        all[0].path, "tenants[0].backend.upstreams.main.url",
        "{all:?}"
    );
    assert!(all.iter().all(|i| !i.message.contains("s3cret")), "{all:?}");
    let text = "version: 1\ngateway:\n  ping_interval_ms: \"${PING}\"\ntenants:\n  - id: acme\n    auth: { tickets: { dev: dev } }\n";
    let all = match parse_with_env(text, &env(&[("PING", "p4ssw0rd")])) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.issues,
    };
    assert!(
        all.iter().all(|i| !i.message.contains("p4ssw0rd")),
        "{all:?}"
    );
}

#[test]
fn env_vars_fill_numeric_and_boolean_fields() {
    let text = "version: 1\ngateway:\n  ping_interval_ms: ${PING}\n  plugins: { watch: \"${WATCH}\", max_memory_bytes: \"${MEM}\" }\ntenants:\n  - id: acme\n    auth: { tickets: { \"${TICKET}\": dev } }\n    api_keys: [\"${KEY}\"]\n";
    let cfg = parse_with_env(
        text,
        &env(&[
            ("PING", "25000"),
            ("WATCH", "false"),
            ("MEM", "33554432"),
            ("TICKET", "t"),
            ("KEY", "00000000000000000000"),
        ]),
    )
    .expect("numbers and booleans from the environment");
    assert_eq!(cfg.gateway.ping_interval_ms, 25000);
    assert!(!cfg.gateway.plugins.watch);
    assert_eq!(cfg.gateway.plugins.max_memory_bytes, 33_554_432);
    // A string field keeps the digits as text.
    assert_eq!(cfg.tenants[0].api_keys, vec!["00000000000000000000"]);

    // Not a number: the schema's error stands, at the field's path, without
    // the value (it came from the environment).
    let e = parse_with_env(
        text,
        &env(&[
            ("PING", "soon"),
            ("WATCH", "false"),
            ("MEM", "1"),
            ("TICKET", "t"),
            ("KEY", "00000000000000000000"),
        ]),
    )
    .expect_err("not a number");
    assert_eq!(e.issues[0].path, "gateway.ping_interval_ms", "{e}");
    assert!(!e.issues[0].message.contains("soon"), "{e}");
}

#[test]
fn socket_send_buffer_is_bounded() {
    let ok = format!("{MINIMAL}gateway:\n  queues: {{ socket_send_buffer_bytes: 32768 }}\n");
    assert_eq!(
        parse(&ok)
            .expect("valid")
            .gateway
            .queues
            .socket_send_buffer_bytes,
        32768
    );
    let big = format!("{MINIMAL}gateway:\n  queues: {{ socket_send_buffer_bytes: 1000000000 }}\n");
    let e = parse(&big).expect_err("too big");
    assert_eq!(e.issues[0].path, "gateway.queues.socket_send_buffer_bytes");
}
