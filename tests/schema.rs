//! The checked-in JSON Schema is generated from the Rust types; this fails when they drift.

#[test]
fn runbook_schema_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/runbook.schema.json");
    let generated = runbook::schema::runbook_schema();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(path, &generated).expect("write schema");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "schemas/runbook.schema.json is out of date with the Rust types: run `just schemas` (or UPDATE_SCHEMAS=1 cargo test --test schema) and commit it"
    );
}

#[test]
fn cli_prints_the_same_schema() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runbook"))
        .arg("schema")
        .output()
        .expect("run runbook schema");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        runbook::schema::runbook_schema()
    );
}

#[test]
fn triggers_schema_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/triggers.schema.json");
    let generated = runbook::schema::triggers_schema();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(path, &generated).expect("write schema");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "schemas/triggers.schema.json is out of date with the Rust types: run `just schemas` (or UPDATE_SCHEMAS=1 cargo test --test schema) and commit it"
    );
}

#[test]
fn drill_schema_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/drill.schema.json");
    let generated = runbook::schema::drill_schema();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(path, &generated).expect("write schema");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "schemas/drill.schema.json is out of date with the Rust types: run `just schemas` (or UPDATE_SCHEMAS=1 cargo test --test schema) and commit it"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["drill", "schema"])
        .output()
        .expect("run runbook drill schema");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), generated);
}
