//! `spec/openapi.json` is generated from the code and checked in; this test
//! fails when they drift. Regenerate with
//! `UPDATE_OPENAPI=1 cargo nextest run -p together-node -E 'binary(openapi)'`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[test]
fn checked_in_openapi_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/openapi.json");
    let generated = together_node::http::openapi_json_pretty();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "spec/openapi.json is out of date; regenerate it with UPDATE_OPENAPI=1 cargo nextest run -p together-node -E 'binary(openapi)'"
    );
}

#[test]
fn every_api_route_is_documented_with_errors() {
    let doc: serde_json::Value = serde_json::from_str(&together_node::http::openapi_json_pretty()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "only {} paths", paths.len());
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
            if path.starts_with("/api/") {
                assert!(
                    op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                    "{method} {path} has no tag"
                );
            }
        }
    }
}
