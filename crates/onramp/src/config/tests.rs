use super::*;

/// A configuration file holding `text` (kept while the folder lives), and
/// `serve` arguments that name it.
fn serve_with_file(text: &str) -> (tempfile::TempDir, PathBuf, ServeArgs) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("onramp.toml");
    std::fs::write(&file, text).unwrap();
    let args = ServeArgs {
        location: Location {
            config: Some(file.clone()),
            data_dir: None,
        },
        ..Default::default()
    };
    (dir, file, args)
}

#[test]
fn file_then_flags() {
    let (_dir, file, args) = serve_with_file(
        r#"
        public_host = "dps.example.net"
        [https]
        listen = "127.0.0.1:8443"
        [[linked_hubs]]
        connection_string = "HostName=h;SharedAccessKeyName=o;SharedAccessKey=a2V5"
        allocation_weight = 3
        "#,
    );
    let args = ServeArgs {
        https_listen: Some("127.0.0.1:9443".into()),
        ..args
    };
    let c = Config::for_serve(&args).unwrap();
    assert_eq!(c.public_host, "dps.example.net", "from the file");
    assert_eq!(c.https.listen, "127.0.0.1:9443", "the flag wins");
    assert_eq!(c.linked_hubs[0].allocation_weight, 3);
    assert_eq!(c.linked_hubs[0].location, "local");
    assert_eq!(
        c.metrics.listen, "127.0.0.1:9464",
        "metrics stay on loopback"
    );
    assert!(listening(&c.metrics.listen));
    let off = ServeArgs {
        metrics_listen: Some("off".into()),
        ..args.clone()
    };
    assert!(!listening(&Config::for_serve(&off).unwrap().metrics.listen));

    std::fs::write(&file, "public_hots = \"typo\"").unwrap();
    let err = Config::for_serve(&args).unwrap_err();
    assert!(format!("{err:#}").contains("public_hots"), "{err:#}");
}

#[test]
fn front_door_limits_from_the_file() {
    let (_dir, file, args) = serve_with_file(
        "[limits]\nheader_timeout_ms = 2500\nbody_timeout_ms = 4000\nshutdown_grace_ms = 3000\n",
    );
    let c = Config::for_serve(&args).unwrap();
    let l = c.limits.listener(700, 1 << 20);
    assert_eq!(l.header_timeout, std::time::Duration::from_millis(2500));
    assert_eq!(l.body_timeout, std::time::Duration::from_millis(4000));
    assert_eq!(l.handshake_timeout, std::time::Duration::from_secs(10));
    assert_eq!(l.close_timeout, std::time::Duration::from_secs(3));
    assert_eq!((l.max_connections, l.max_discard_bytes), (700, 1 << 20));

    std::fs::write(&file, "[limits]\nbody_timeout_ms = 0\n").unwrap();
    let err = Config::for_serve(&args).unwrap_err();
    assert!(
        format!("{err:#}").contains("limits.body_timeout_ms"),
        "{err:#}"
    );
}

#[test]
fn the_store_is_sqlite_unless_a_postgres_url_is_given() {
    let (_dir, file, args) = serve_with_file("");
    let c = Config::for_serve(&args).unwrap();
    if std::env::var_os("ONRAMP_STORE_URL").is_none() {
        assert_eq!(c.store_url(), None, "SQLite by default");
    }

    std::fs::write(
        &file,
        "[store]\nurl = \"postgres://onramp@db.example.net/onramp\"\n",
    )
    .unwrap();
    let from_file = Config::for_serve(&args).unwrap();
    if std::env::var_os("ONRAMP_STORE_URL").is_none() {
        assert_eq!(
            from_file.store_url(),
            Some("postgres://onramp@db.example.net/onramp")
        );
    }
    let flag = ServeArgs {
        store_url: Some("postgresql://other@127.0.0.1:5432/onramp".into()),
        ..args.clone()
    };
    assert_eq!(
        Config::for_serve(&flag).unwrap().store_url(),
        Some("postgresql://other@127.0.0.1:5432/onramp"),
        "the flag wins"
    );

    let wrong = ServeArgs {
        store_url: Some("mysql://onramp:s3cret@db/onramp".into()),
        ..args
    };
    let err = format!("{:#}", Config::for_serve(&wrong).unwrap_err());
    assert!(err.contains("not a postgres:// URL"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn a_service_may_have_throttle_rates_of_its_own() {
    let (_dir, file, args) = serve_with_file(
        "[throttle]\nregistrations_per_second = 20\nservice_api_requests_per_minute = 100\n\
         [throttle.services.factory-a]\nregistrations_per_second = 50\n\
         [throttle.services.lab]\nregistrations_per_second = 0\nservice_api_requests_per_minute = 0\n",
    );
    let engine = Config::for_serve(&args).unwrap().throttle.engine();
    let rates = |name: &str| {
        let r = engine.rates_of(name);
        let get = |n: Option<std::num::NonZeroU32>| n.map_or(0, std::num::NonZeroU32::get);
        (
            get(r.registrations_per_second),
            get(r.service_api_requests_per_minute),
        )
    };
    // A key left out is the default; 0 is none; a service not named, the defaults.
    assert_eq!(rates("factory-a"), (50, 100));
    assert_eq!(rates("lab"), (0, 0));
    assert_eq!(rates("default"), (20, 100));

    std::fs::write(
        &file,
        "[throttle.services.factory-a]\nregistrations_per_minute = 5\n",
    )
    .unwrap();
    let err = format!("{:#}", Config::for_serve(&args).unwrap_err());
    assert!(err.contains("registrations_per_minute"), "{err}");
}
