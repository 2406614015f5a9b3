//! Each kind of bad configuration, and that no secret leaks into an error or Debug.

use std::path::Path;

use super::*;

#[test]
fn bad_environment_value_names_the_variable() {
    let fixture = Fixture::new();
    let path = fixture.write("c.toml", &secrets_block());
    let vars = env(&[("COHORT_SYNC__ONEFLOW__CONCURRENCY", "lots")]);
    let message = load(&path, &vars).unwrap_err().to_string();
    assert!(message.contains("oneflow.concurrency"), "{message}");
    assert!(
        message.contains("COHORT_SYNC__ONEFLOW__CONCURRENCY"),
        "{message}"
    );
}

#[test]
fn syntax_error_gives_line_and_column() {
    let err = load_text("[log]\nlevel = \"info\"\nformat = json\n").unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Syntax {
                line: 3,
                column: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("cohort-sync.toml:3:10:"), "{err}");
}

#[test]
fn unknown_key_names_its_path_and_line() {
    let (err, message) = load_err(&cohort(
        "[cohorts.transform]\ntrim = true\nuppercase = true\n",
    ));
    assert_eq!(
        err.key(),
        Some("cohorts[0].transform.uppercase"),
        "{message}"
    );
    assert!(
        message.contains(":13: cohorts[0].transform.uppercase: unknown key"),
        "{message}"
    );

    let (err, message) = load_err("\n[amplitude_projects.x]\napi_kye = \"k\"\n");
    assert_eq!(err.key(), Some("amplitude_projects.x.api_kye"), "{message}");

    let (err, _) = load_err("\n[serverr]\nlisten = \"\"\n");
    assert_eq!(err.key(), Some("serverr"));
}

#[test]
fn wrong_type_names_the_key() {
    let (err, message) =
        load_err("\n[oneflow_accounts.b]\napi_key = \"k\"\nbatch_size = \"many\"\n");
    assert_eq!(
        err.key(),
        Some("oneflow_accounts.b.batch_size"),
        "{message}"
    );
    assert!(message.contains("expected an integer"), "{message}");

    let (err, message) = load_err(&cohort("enabled = 3\n"));
    assert_eq!(err.key(), Some("cohorts[0].enabled"), "{message}");

    let (err, message) = load_err("\n[log]\nlevel = [\"info\"]\n");
    assert_eq!(err.key(), Some("log.level"), "{message}");
    assert!(
        message.contains("expected a string, found an array"),
        "{message}"
    );
}

#[test]
fn out_of_range_numbers_name_key_and_value() {
    let (err, message) = load_err("\n[oneflow_accounts.b]\napi_key = \"k\"\nconcurrency = 65\n");
    assert_eq!(err.key(), Some("oneflow_accounts.b.concurrency"));
    assert!(message.contains("between 1 and 64, got 65"), "{message}");

    let text = secrets_block().replace("[oneflow]", "export_reserve = 600\n[oneflow]");
    let message = load_text(&text).unwrap_err().to_string();
    assert!(
        message.contains("amplitude.export_reserve: must be at most"),
        "{message}"
    );

    let (err, _) = load_err(&cohort("max_removal_ratio = 0\n"));
    assert_eq!(err.key(), Some("cohorts[0].max_removal_ratio"));
}

#[test]
fn bad_duration_names_key_and_value() {
    let text = secrets_block().replace(
        "[oneflow]\n",
        "[oneflow]\nmax_retry_after = \"5 parsecs\"\n",
    );
    let message = load_text(&text).unwrap_err().to_string();
    assert!(
        message.contains("oneflow.max_retry_after: invalid duration \"5 parsecs\""),
        "{message}"
    );

    let (err, message) = load_err("\n[daemon]\nshutdown_grace = 8\n");
    assert_eq!(err.key(), Some("daemon.shutdown_grace"), "{message}");
}

#[test]
fn unknown_time_zone_names_key_and_value() {
    let (err, message) = load_err(&format!(
        "{}{}",
        cohort(""),
        cohort("timezone = \"Mars/Base\"\n")
    ));
    assert_eq!(err.key(), Some("cohorts[1].timezone"));
    assert!(message.contains("\"Mars/Base\""), "{message}");
}

#[test]
fn bad_user_id_form_names_the_key() {
    for form in ["email", "property:", "userid"] {
        let (err, message) = load_err(&cohort(&format!("user_id = \"{form}\"\n")));
        assert_eq!(err.key(), Some("cohorts[0].user_id"), "{message}");
        assert!(message.contains("property:NAME"), "{message}");
    }
}

#[test]
fn duplicate_cohort_names_both_positions() {
    let (err, message) = load_err(&format!(
        "{}{}{}",
        cohort(""),
        cohort("name = \"x\"\n"),
        cohort("")
    ));
    assert_eq!(err.key(), Some("cohorts[1]"), "{message}");
    assert!(message.contains("duplicates cohorts[0]"), "{message}");

    // A different oneflow_account makes it a different sync.
    let text = format!(
        "{}\n[oneflow_accounts.other]\napi_key = \"k\"\n{}{}",
        secrets_block(),
        cohort(""),
        cohort("oneflow_account = \"other\"\n")
    );
    assert!(load_text(&text).is_ok());
}

#[test]
fn missing_secret_names_the_environment_variable() {
    let text = secrets_block().replace(&format!("secret_key = \"{AMP_SECRET}\"\n"), "");
    let err = load_text(&text).unwrap_err();
    assert!(
        matches!(&err, ConfigError::MissingSecret { key, .. } if key == "amplitude.secret_key")
    );
    assert!(
        err.to_string()
            .contains("COHORT_SYNC__AMPLITUDE__SECRET_KEY"),
        "{err}"
    );

    let text = secrets_block().replace(FLOW_KEY, "");
    let err = load_text(&text).unwrap_err();
    assert!(
        err.to_string().contains("oneflow.api_key: missing"),
        "{err}"
    );

    let (_, message) = load_err("\n[amplitude_projects.mobile]\napi_key = \"k\"\n");
    assert!(
        message.contains("COHORT_SYNC__AMPLITUDE_PROJECTS__MOBILE__SECRET_KEY"),
        "{message}"
    );
}

#[test]
fn unreadable_lookup_file_names_key_and_path() {
    let (err, message) = load_err(&cohort("lookup = \"missing/ids.csv\"\n"));
    assert_eq!(err.key(), Some("cohorts[0].lookup"));
    assert!(message.contains("missing/ids.csv"), "{message}");

    let (_, message) = load_err(&cohort("lookup = \".\"\n"));
    assert!(message.contains("not a regular file"), "{message}");
}

#[test]
fn state_path_and_url_are_exclusive() {
    let (err, message) = load_err("\n[state]\npath = \"s.db\"\nurl = \"postgres://h/db\"\n");
    assert_eq!(err.key(), Some("state.url"));
    assert!(
        message.contains("state.path") && message.contains("state.url"),
        "{message}"
    );

    let (_, message) = load_err("\n[state]\nurl = \"mysql://h/db\"\n");
    assert!(message.contains("must start with postgres://"), "{message}");
}

#[test]
fn unknown_project_or_account_names_cohort_and_name() {
    let (err, message) = load_err(&cohort("amplitude_project = \"web\"\n"));
    assert_eq!(err.key(), Some("cohorts[0].amplitude_project"));
    assert!(
        message.contains("\"123\"") && message.contains("\"web\""),
        "{message}"
    );

    let (err, _) = load_err(&cohort("oneflow_account = \"web\"\n"));
    assert_eq!(err.key(), Some("cohorts[0].oneflow_account"));
}

#[test]
fn bad_schedules_name_the_key_the_line_and_the_spec() {
    for spec in ["every 30s", "61 * * * *", "sometimes", "0 0 * * * * *"] {
        let text = cohort("").replace("0 * * * *", spec);
        let (err, message) = load_err(&text);
        assert_eq!(err.key(), Some("cohorts[0].schedule"), "{message}");
        assert!(message.contains(spec), "{message}");
        assert!(message.contains(".toml:10: "), "{message}");
    }
}

#[test]
fn other_invalid_values_name_their_keys() {
    let cases = [
        (
            cohort("schedule = \" \"\n").replace("schedule = \"0 * * * *\"\n", ""),
            "cohorts[0].schedule",
        ),
        (
            "\n[[cohorts]]\nschedule = \"daily\"\n".to_owned(),
            "cohorts[0].amplitude_id",
        ),
        (
            "\n[server]\nlisten = \"localhost\"\n".to_owned(),
            "server.listen",
        ),
        ("\n[log]\nformat = \"xml\"\n".to_owned(), "log.format"),
        ("\n[log]\nlevel = \"info,[\"\n".to_owned(), "log.level"),
        // A bare word parses as a target filter and would silence every log line.
        ("\n[log]\nlevel = \"verbose\"\n".to_owned(), "log.level"),
        (
            "\n[amplitude_projects.Mobile]\napi_key = \"a\"\nsecret_key = \"b\"\n".to_owned(),
            "amplitude_projects.Mobile",
        ),
    ];
    for (text, key) in cases {
        let (err, message) = load_err(&text);
        assert_eq!(err.key(), Some(key), "{message}");
    }
    let text = secrets_block().replace("[oneflow]\n", "[oneflow]\nbase_url = \"ftp://x\"\n");
    assert_eq!(
        load_text(&text).unwrap_err().key(),
        Some("oneflow.base_url")
    );
    let text = secrets_block().replace("[oneflow]\n", "[oneflow]\nrequest_timeout = \"0s\"\n");
    assert_eq!(
        load_text(&text).unwrap_err().key(),
        Some("oneflow.request_timeout")
    );
}

#[test]
fn unreadable_config_file_is_a_read_error() {
    let err = load(Path::new("/nonexistent/cohort-sync.toml"), &no_env()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/cohort-sync.toml: cannot read"),
        "{err}"
    );
}

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let fixture = Fixture::new();
    fixture.write("ids.csv", "a,b\n");
    let path = fixture.write("c.toml", FULL);
    let config = load(&path, &no_env()).unwrap();
    let debug = format!("{config:?}");
    for secret in [
        AMP_KEY,
        AMP_SECRET,
        FLOW_KEY,
        "mobile-secret-key",
        "eu-team-key",
    ] {
        assert!(!debug.contains(secret), "{secret} in Debug");
    }

    // Secrets in places where they do not belong, and of the wrong type.
    let bad = [
        format!("{}max_retries = \"{AMP_SECRET}\"\n", secrets_block()),
        format!("{}poll_interval = \"{AMP_SECRET}\"\n", secrets_block()),
        secrets_block().replace(&format!("\"{FLOW_KEY}\""), "[\"oneflow-key-7720\"]"),
        secrets_block().replace(&format!("\"{FLOW_KEY}\""), "77201234"),
        format!(
            "{}[state]\nurl = \"mysql://u:{AMP_SECRET}@h/db\"\n",
            secrets_block()
        ),
        format!("{}[log]\nlevel = \"{AMP_SECRET},[\"\n", secrets_block()),
        format!("{}api_key = \"{AMP_SECRET}\n", secrets_block()),
    ];
    for text in bad {
        let err = load_text(&text).unwrap_err();
        for shown in [err.to_string(), format!("{err:?}")] {
            for secret in [AMP_KEY, AMP_SECRET, FLOW_KEY, "77201234"] {
                assert!(!shown.contains(secret), "{secret} shown in {shown}");
            }
        }
    }

    let fixture = Fixture::new();
    let path = fixture.write("c.toml", &secrets_block());
    let vars = env(&[
        ("COHORT_SYNC__ONEFLOW__MAX_RETRIES", "env-secret-5555"),
        ("COHORT_SYNC__AMPLITUDE__API_KEY", "env-secret-5555"),
    ]);
    let err = load(&path, &vars).unwrap_err();
    assert!(
        !format!("{err} {err:?}").contains("env-secret-5555"),
        "{err}"
    );
}
