//! The CRD YAML committed in `crds/` must be exactly what the Rust types generate.

#[test]
fn committed_crd_yaml_matches_the_types() {
    let crate_dir = tally_crds::crate_dir();
    let mut stale = Vec::new();
    for (name, expected) in tally_crds::crd_files() {
        let committed = std::fs::read_to_string(crate_dir.join(name)).unwrap_or_default();
        if committed != expected {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "CRD YAML out of date: {stale:?}; run `make crds` and commit the result"
    );
}

/// The `pattern` the committed CRD YAML declares for one field of the spec.
fn committed_pattern(file: &str, field: &[&str]) -> String {
    let text = std::fs::read_to_string(tally_crds::crate_dir().join(file)).unwrap();
    let crd: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for name in field {
        schema = &schema["properties"][*name];
    }
    schema["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{file} declares no pattern for spec.{}", field.join(".")))
        .to_owned()
}

#[test]
fn site_id_check_agrees_with_the_crd_pattern() {
    let pattern = committed_pattern("analyticssites.tally.dev.yaml", &["siteId"]);
    assert_eq!(pattern, tally_crds::SITE_ID_PATTERN);
    let regex = regex::Regex::new(&pattern).unwrap();
    let longest = "a".repeat(63);
    let too_long = "a".repeat(64);
    for (id, valid) in [
        ("shop", true),
        ("a", true),
        ("0", true),
        ("web-prod_eu", true),
        ("9lives", true),
        (longest.as_str(), true),
        ("a-", true),
        ("a_", true),
        ("", false),
        (too_long.as_str(), false),
        ("-shop", false),
        ("_shop", false),
        ("Shop", false),
        ("shop.example", false),
        ("shop site", false),
        ("shop\n", false),
        ("shop*", false),
        ("shop>", false),
        ("café", false),
    ] {
        assert_eq!(regex.is_match(id), valid, "the CRD pattern on {id:?}");
        assert_eq!(tally_crds::is_site_id(id), valid, "is_site_id on {id:?}");
    }
}

#[test]
fn duration_parser_agrees_with_the_crd_pattern() {
    let pattern = committed_pattern(
        "analyticspipelines.tally.dev.yaml",
        &["processor", "ackWait"],
    );
    let regex = regex::Regex::new(&pattern).unwrap();
    for (text, valid) in [
        ("500ms", true),
        ("30s", true),
        ("2m", true),
        ("1h30m", true),
        ("7d", true),
        ("1s250ms", true),
        ("", false),
        ("5", false),
        ("s", false),
        ("1 s", false),
        ("1w", false),
        ("-1s", false),
        ("1.5s", false),
        ("30s\n", false),
    ] {
        assert_eq!(regex.is_match(text), valid, "the CRD pattern on {text:?}");
        assert_eq!(
            tally_crds::parse_duration(text).is_ok(),
            valid,
            "parse_duration on {text:?}"
        );
    }
}
