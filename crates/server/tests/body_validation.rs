//! Request-body validation on the auth endpoints: the exact FastAPI/pydantic 422 bodies
//! (auth.md §4, notes §1.3 and §2), the 400/413 answers for bodies that cannot be read, and
//! where body checks sit relative to the guards and the single-user 403.

use crate::common::*;
use reqwest::Method;
use serde_json::{json, Value};

const LOGIN: &str = "/api/v1/auth/login";
const SETUP: &str = "/api/v1/auth/setup";
const USERS: &str = "/api/v1/auth/users";
const ME: &str = "/api/v1/auth/me";
const JSON: Option<&str> = Some("application/json");

/// One pydantic issue without `ctx`.
fn issue(kind: &str, loc: Value, msg: &str, input: Value) -> Value {
    json!({"type": kind, "loc": loc, "msg": msg, "input": input})
}

/// The `json_invalid` issue for a parse error at character `offset`.
fn json_invalid(offset: usize, reason: &str) -> Value {
    json!({"detail": [{"type": "json_invalid", "loc": ["body", offset], "msg": "JSON decode error",
                       "input": {}, "ctx": {"error": reason}}]})
}

fn missing_body() -> Value {
    json!({"detail": [issue("missing", json!(["body"]), "Field required", Value::Null)]})
}

fn not_an_object(input: Value) -> Value {
    json!({"detail": [issue(
        "model_attributes_type",
        json!(["body"]),
        "Input should be a valid dictionary or object to extract fields from",
        input,
    )]})
}

#[track_caller]
fn assert_422(r: &Resp, expected: &Value) {
    assert_eq!((r.status, &r.body), (422, expected), "{}", r.text);
}

/// A multi-user server with its admin; returns the server and the admin's token.
async fn server_with_admin() -> (TestServer, String) {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    (s, admin)
}

#[tokio::test]
async fn absent_empty_and_null_bodies_are_a_missing_body() {
    let (s, admin) = server_with_admin().await;
    for (path, token) in [(LOGIN, None), (SETUP, None), (USERS, Some(admin.as_str()))] {
        // No body and no content type at all.
        assert_422(&s.post_empty(path, token).await, &missing_body());
        // An empty body declared as JSON.
        let r = s
            .send_raw(Method::POST, path, token, JSON, Vec::new())
            .await;
        assert_422(&r, &missing_body());
        // A JSON `null` counts as no body.
        assert_422(&s.post(path, token, &Value::Null).await, &missing_body());
    }
}

#[tokio::test]
async fn an_empty_object_reports_each_missing_field_with_the_whole_body() {
    let (s, admin) = server_with_admin().await;
    let both_missing = json!({"detail": [
        issue("missing", json!(["body", "email"]), "Field required", json!({})),
        issue("missing", json!(["body", "password"]), "Field required", json!({})),
    ]});
    for (path, token) in [(LOGIN, None), (SETUP, None), (USERS, Some(admin.as_str()))] {
        assert_422(&s.post(path, token, &json!({})).await, &both_missing);
    }
    // A missing field's input is the whole body, other fields' errors come first in order.
    let r = s.post(LOGIN, None, &json!({"email": "notanemail"})).await;
    assert_422(
        &r,
        &json!({"detail": [
            issue("value_error", json!(["body", "email"]),
                  "Invalid email address: An email address must have an @-sign.", json!("notanemail")),
            issue("missing", json!(["body", "password"]), "Field required",
                  json!({"email": "notanemail"})),
        ]}),
    );
}

#[tokio::test]
async fn a_body_that_is_not_an_object_fails_at_the_body() {
    let (s, admin) = server_with_admin().await;
    for (path, token) in [(LOGIN, None), (SETUP, None), (USERS, Some(admin.as_str()))] {
        for body in [
            json!([]),
            json!("hello"),
            json!(5),
            json!([{"email": "a@example.com"}]),
        ] {
            assert_422(&s.post(path, token, &body).await, &not_an_object(body));
        }
    }
}

#[tokio::test]
async fn wrong_types_are_reported_for_every_field() {
    let (s, admin) = server_with_admin().await;
    let expected = json!({"detail": [
        issue("string_type", json!(["body", "email"]), "Input should be a valid string", json!(1)),
        issue("string_type", json!(["body", "password"]), "Input should be a valid string", json!(2)),
    ]});
    for (path, token) in [(LOGIN, None), (SETUP, None), (USERS, Some(admin.as_str()))] {
        let r = s
            .post(path, token, &json!({"email": 1, "password": 2}))
            .await;
        assert_422(&r, &expected);
    }
    let r = s
        .post(LOGIN, None, &json!({"email": {"a": 1}, "password": ["x"]}))
        .await;
    assert_422(
        &r,
        &json!({"detail": [
            issue("string_type", json!(["body", "email"]), "Input should be a valid string", json!({"a": 1})),
            issue("string_type", json!(["body", "password"]), "Input should be a valid string", json!(["x"])),
        ]}),
    );
    let r = s
        .post(LOGIN, None, &json!({"email": null, "password": "x"}))
        .await;
    assert_422(
        &r,
        &json!({"detail": [issue("string_type", json!(["body", "email"]),
                                 "Input should be a valid string", Value::Null)]}),
    );
    let r = s
        .post(
            SETUP,
            None,
            &json!({"email": "b@example.com", "password": "x", "display_name": 7}),
        )
        .await;
    assert_422(
        &r,
        &json!({"detail": [issue("string_type", json!(["body", "display_name"]),
                                 "Input should be a valid string", json!(7))]}),
    );
}

#[tokio::test]
async fn invalid_emails_are_value_errors_without_ctx() {
    let (s, admin) = server_with_admin().await;
    let cases = [
        (
            "notanemail",
            "Invalid email address: An email address must have an @-sign.",
        ),
        ("a@b", "Email domain must contain a dot or be 'localhost'"),
        (
            "@example.com",
            "Invalid email address: There must be something before the @-sign.",
        ),
        (
            "admin@",
            "Invalid email address: There must be something after the @-sign.",
        ),
        (
            "",
            "Invalid email address: An email address must have an @-sign.",
        ),
    ];
    for (path, token) in [(LOGIN, None), (SETUP, None), (USERS, Some(admin.as_str()))] {
        for (email, msg) in cases {
            let r = s
                .post(path, token, &json!({"email": email, "password": "x"}))
                .await;
            assert_422(
                &r,
                &json!({"detail": [issue("value_error", json!(["body", "email"]), msg, json!(email))]}),
            );
        }
    }
    // Every failing field, in model order.
    let r = s
        .post(
            LOGIN,
            None,
            &json!({"remember_me": "x", "password": 5, "email": "notanemail"}),
        )
        .await;
    assert_422(
        &r,
        &json!({"detail": [
            issue("value_error", json!(["body", "email"]),
                  "Invalid email address: An email address must have an @-sign.", json!("notanemail")),
            issue("string_type", json!(["body", "password"]), "Input should be a valid string", json!(5)),
            issue("bool_parsing", json!(["body", "remember_me"]),
                  "Input should be a valid boolean, unable to interpret input", json!("x")),
        ]}),
    );
}

#[tokio::test]
async fn booleans_are_lax_like_pydantic() {
    let (s, admin) = server_with_admin().await;
    // Accepted words and numbers: the login goes through and remembers the choice.
    for (value, remembered) in [
        (json!("yes"), true),
        (json!("YES"), true),
        (json!("t"), true),
        (json!(1), true),
        (json!(1.0), true),
        (json!("off"), false),
        (json!(0), false),
    ] {
        let r = s
            .post(
                LOGIN,
                None,
                &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "remember_me": value}),
            )
            .await;
        assert_eq!(r.status, 200, "{value}: {}", r.text);
        let expected = if remembered { 604_800 } else { 86_400 };
        assert_eq!(r.body["expires_in"], expected, "{value}");
    }
    let parsing = "Input should be a valid boolean, unable to interpret input";
    let typed = "Input should be a valid boolean";
    for (value, kind, msg) in [
        (json!("notabool"), "bool_parsing", parsing),
        (json!(" true"), "bool_parsing", parsing),
        (json!(""), "bool_parsing", parsing),
        (json!(2), "bool_parsing", parsing),
        (json!(0.5), "bool_type", typed),
        (Value::Null, "bool_type", typed),
        (json!([true]), "bool_type", typed),
    ] {
        let r = s
            .post(
                LOGIN,
                None,
                &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "remember_me": value}),
            )
            .await;
        assert_422(
            &r,
            &json!({"detail": [issue(kind, json!(["body", "remember_me"]), msg, value)]}),
        );
    }
    // `is_admin` on create is a plain bool: null is the wrong type there.
    for (value, kind, msg) in [
        (json!(2), "bool_parsing", parsing),
        (Value::Null, "bool_type", typed),
    ] {
        let r = s
            .post(
                USERS,
                Some(&admin),
                &json!({"email": "u@example.com", "password": "pw", "is_admin": value}),
            )
            .await;
        assert_422(
            &r,
            &json!({"detail": [issue(kind, json!(["body", "is_admin"]), msg, value)]}),
        );
    }
}

#[tokio::test]
async fn patch_errors_follow_the_model_field_order() {
    let (s, admin) = server_with_admin().await;
    // The body is validated after the admin guard and before the user lookup.
    let r = s
        .patch(
            "/api/v1/auth/users/abc",
            Some(&admin),
            &json!({"is_admin": 2, "is_active": "maybe", "password": 5}),
        )
        .await;
    assert_422(
        &r,
        &json!({"detail": [
            issue("string_type", json!(["body", "password"]), "Input should be a valid string", json!(5)),
            issue("bool_parsing", json!(["body", "is_admin"]),
                  "Input should be a valid boolean, unable to interpret input", json!(2)),
            issue("bool_parsing", json!(["body", "is_active"]),
                  "Input should be a valid boolean, unable to interpret input", json!("maybe")),
        ]}),
    );
    let r = s
        .patch(
            ME,
            Some(&admin),
            &json!({"new_password": 123, "current_password": true}),
        )
        .await;
    assert_422(
        &r,
        &json!({"detail": [
            issue("string_type", json!(["body", "current_password"]), "Input should be a valid string", json!(true)),
            issue("string_type", json!(["body", "new_password"]), "Input should be a valid string", json!(123)),
        ]}),
    );
    // Optional fields: `{}` and explicit nulls are valid.
    let r = s
        .patch(
            "/api/v1/auth/users/abc",
            Some(&admin),
            &json!({"display_name": null, "password": null, "is_admin": null, "is_active": null}),
        )
        .await;
    r.assert_detail(404, "User not found");
    assert_422(
        &s.patch(ME, Some(&admin), &json!([])).await,
        &not_an_object(json!([])),
    );
}

#[tokio::test]
async fn unparseable_json_reports_the_python_offset_and_reason() {
    let s = TestServer::multiuser().await;
    let cases: [(&str, usize, &str); 10] = [
        (r#"{"email":"#, 9, "Expecting value"),
        (
            "{bad}",
            1,
            "Expecting property name enclosed in double quotes",
        ),
        (
            "{'email':'a'}",
            1,
            "Expecting property name enclosed in double quotes",
        ),
        (
            r#"{"email":"a@example.com",}"#,
            25,
            "Expecting property name enclosed in double quotes",
        ),
        (r#"{"email":"a@ex"#, 9, "Unterminated string starting at"),
        (
            r#"{"email":"a@example.com","password":"x"} x"#,
            41,
            "Extra data",
        ),
        ("hello", 0, "Expecting value"),
        ("  ", 2, "Expecting value"),
        (
            "{\n  \"email\": \"a@example.com\",\n  \"password\": x\n}",
            44,
            "Expecting value",
        ),
        (r#"{"email" "a"}"#, 9, "Expecting ':' delimiter"),
    ];
    for (text, offset, reason) in cases {
        let r = s
            .send_raw(Method::POST, LOGIN, None, JSON, text.as_bytes().to_vec())
            .await;
        assert_eq!(
            (r.status, &r.body),
            (422, &json_invalid(offset, reason)),
            "{text:?}: {}",
            r.text
        );
    }
    // Half a megabyte of it is still a 422, not a 400 or 413.
    let mut big = br#"{"email":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 500_000));
    let r = s.send_raw(Method::POST, LOGIN, None, JSON, big).await;
    assert_422(&r, &json_invalid(9, "Unterminated string starting at"));
}

/// Offsets and reasons as Python's `json.loads` reports them (captured with CPython 3).
#[tokio::test]
async fn parse_errors_match_pythons_json_module() {
    let s = TestServer::multiuser().await;
    let cases: &[(&str, usize, &str)] = &[
        (
            "{\"email\":\"é\",x}",
            13,
            "Expecting property name enclosed in double quotes",
        ),
        (
            "{\"é\":1,,}",
            7,
            "Expecting property name enclosed in double quotes",
        ),
        ("{\"email\":\"a\"\n,\"p\":é}", 18, "Expecting value"),
        ("[1,2,]", 5, "Expecting value"),
        ("{\"a\":1 \"b\":2}", 7, "Expecting ',' delimiter"),
        ("{\"a\" 1}", 5, "Expecting ':' delimiter"),
        ("{\"a\":tru}", 5, "Expecting value"),
        ("{\"a\":nul}", 5, "Expecting value"),
        ("{\"a\":\"\\x\"}", 6, "Invalid \\escape"),
        ("{\"a\":\"\\u12\"}", 7, "Invalid \\uXXXX escape"),
        ("{\"a\":\"b\tc\"}", 7, "Invalid control character at"),
        ("{\"a\":01}", 6, "Expecting ',' delimiter"),
        ("{\"a\":1.}", 6, "Expecting ',' delimiter"),
        ("{\"a\":-}", 5, "Expecting value"),
        ("{", 1, "Expecting property name enclosed in double quotes"),
        ("[", 1, "Expecting value"),
        ("{\"a\":[1,2}", 9, "Expecting ',' delimiter"),
        ("{\"a\":{\"b\":1]}", 11, "Expecting ',' delimiter"),
        ("\"abc", 0, "Unterminated string starting at"),
        ("{\"a\":\"b\"}}", 9, "Extra data"),
        ("{\"a\":\"b\"} {\"c\":1}", 10, "Extra data"),
        ("\n\n  x", 4, "Expecting value"),
        ("{\"a\":\"é\\q\"}", 7, "Invalid \\escape"),
        ("{\"€€€\":1 x}", 9, "Expecting ',' delimiter"),
        (
            "{\"a\":1,}",
            7,
            "Expecting property name enclosed in double quotes",
        ),
        ("[1 2]", 3, "Expecting ',' delimiter"),
        ("{\"a\":.5}", 5, "Expecting value"),
        ("{\"a\":+1}", 5, "Expecting value"),
        ("{\"a\":True}", 5, "Expecting value"),
        ("{\"a\":1}x", 7, "Extra data"),
        ("{\"a\":\"\\ud800\\uzzzz\"}", 13, "Invalid \\uXXXX escape"),
        ("{\"a\":\"\\ud800\\u00\"}", 13, "Invalid \\uXXXX escape"),
        ("{\"a\":\"\\u00e9\\q\"}", 12, "Invalid \\escape"),
        ("{\"\n\":1}", 2, "Invalid control character at"),
        ("{\"a\":[1,{\"b\":[true,nul]}]}", 19, "Expecting value"),
        ("{\"a\":-01}", 7, "Expecting ',' delimiter"),
        ("{\"a\":1e}", 6, "Expecting ',' delimiter"),
        ("{\"a\":1e+}", 6, "Expecting ',' delimiter"),
        ("é", 0, "Expecting value"),
        ("{\"a\":\"x\"]", 8, "Expecting ',' delimiter"),
        (" ", 1, "Expecting value"),
        ("{\"a\":\"\\\"}", 5, "Unterminated string starting at"),
        ("{\"a\":\"b\"\n\n", 10, "Expecting ',' delimiter"),
        ("[1,\n2,\n\n]", 8, "Expecting value"),
    ];
    let mut wrong = Vec::new();
    for &(text, offset, reason) in cases {
        let r = s
            .send_raw(Method::POST, LOGIN, None, JSON, text.as_bytes().to_vec())
            .await;
        if (r.status, &r.body) != (422, &json_invalid(offset, reason)) {
            wrong.push(format!("{text:?} -> {} {}", r.status, r.text));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Python parses these; serde_json does not. Whatever the answer, it is a client error.
    for text in [
        r#"{"email":NaN}"#,
        r#"{"email":1e400}"#,
        r#"{"email":"\ud800"}"#,
    ] {
        let r = s
            .send_raw(Method::POST, LOGIN, None, JSON, text.as_bytes().to_vec())
            .await;
        assert_eq!(r.status, 422, "{text}: {}", r.text);
    }
}

#[tokio::test]
async fn json_content_types_are_recognised_loosely() {
    let (s, _) = server_with_admin().await;
    let body = br#"{"email":"admin@example.com","password":"wrong"}"#.to_vec();
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.api+json",
        "application/json-patch+json",
    ] {
        let r = s
            .send_raw(Method::POST, LOGIN, None, Some(ct), body.clone())
            .await;
        r.assert_detail(401, "Incorrect email or password");
    }
    // A UTF-8 BOM is accepted; duplicate keys: the last one wins; `\u0040` decodes.
    let mut bom = "\u{feff}".as_bytes().to_vec();
    bom.extend_from_slice(&body);
    let r = s.send_raw(Method::POST, LOGIN, None, JSON, bom).await;
    r.assert_detail(401, "Incorrect email or password");
    let dup =
        br#"{"email":"x@example.com","email":"admin\u0040example.com","password":"Admin-Pass-1"}"#;
    let r = s
        .send_raw(Method::POST, LOGIN, None, JSON, dup.to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user"]["email"], ADMIN_EMAIL);
}

#[tokio::test]
async fn bodies_without_a_json_content_type_are_not_parsed() {
    let (s, admin) = server_with_admin().await;
    let text = r#"{"email":"a@example.com","password":"x"}"#;
    for ct in [
        Some("text/plain"),
        Some("text/json"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        for (path, token) in [(LOGIN, None), (USERS, Some(admin.as_str()))] {
            let r = s
                .send_raw(Method::POST, path, token, ct, text.as_bytes().to_vec())
                .await;
            assert_422(&r, &not_an_object(json!(text)));
        }
    }
    // Not even attempted as JSON: no json_invalid for garbage.
    let r = s
        .send_raw(
            Method::POST,
            LOGIN,
            None,
            Some("text/plain"),
            b"{bad}".to_vec(),
        )
        .await;
    assert_422(&r, &not_an_object(json!("{bad}")));
}

#[tokio::test]
async fn unreadable_bodies_are_400() {
    let (s, admin) = server_with_admin().await;
    for (path, token) in [(LOGIN, None), (USERS, Some(admin.as_str()))] {
        let r = s
            .send_raw(
                Method::POST,
                path,
                token,
                JSON,
                b"{\"email\":\"\xff\"}".to_vec(),
            )
            .await;
        r.assert_detail(400, "There was an error parsing the body");
        let r = s
            .send_raw(Method::POST, path, token, JSON, vec![b'['; 200_000])
            .await;
        r.assert_detail(400, "There was an error parsing the body");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_json() {
    let s = TestServer::builder()
        .multiuser(true)
        .set("max_request_body_bytes", json!(2048))
        .start()
        .await;
    let admin = s.setup_admin().await;
    let padding = "p".repeat(4096);
    let body = json!({"email": "a@example.com", "password": "x", "padding": padding});
    let r = s.post(LOGIN, None, &body).await;
    r.assert_detail(413, "Request body too large");
    let r = s.post(USERS, Some(&admin), &body).await;
    r.assert_detail(413, "Request body too large");
    // Just under the limit is read normally.
    let fits = json!({"email": "a@example.com", "password": "x", "padding": "p".repeat(1900)});
    assert!(serde_json::to_vec(&fits).unwrap().len() < 2048);
    s.post(LOGIN, None, &fits)
        .await
        .assert_detail(401, "Incorrect email or password");
}

#[tokio::test]
async fn unparseable_json_is_422_before_the_guard_but_schema_errors_come_after_it() {
    let (s, admin) = server_with_admin().await;
    let (_, user) = s.user_with_token(&admin, "u@example.com").await;
    let broken = br#"{"display_name":"#.to_vec();
    for (method, path) in [
        (Method::PATCH, ME),
        (Method::POST, USERS),
        (Method::PATCH, "/api/v1/auth/users/abc"),
    ] {
        let r = s
            .send_raw(method.clone(), path, None, JSON, broken.clone())
            .await;
        assert_422(&r, &json_invalid(16, "Expecting value"));
        // Valid JSON with the wrong shape: the guard answers first.
        let r = s
            .send(
                method.clone(),
                path,
                None,
                Some(&json!({"display_name": 5})),
                &[],
            )
            .await;
        r.assert_detail(401, "Missing authentication credentials");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = s
            .send(method.clone(), path, None, Some(&json!([])), &[])
            .await;
        r.assert_detail(401, "Missing authentication credentials");
    }
    // The admin guard's 403 also precedes the schema check.
    for (method, path) in [
        (Method::POST, USERS),
        (Method::PATCH, "/api/v1/auth/users/abc"),
    ] {
        let r = s
            .send(
                method,
                path,
                Some(&user),
                Some(&json!({"is_admin": 2})),
                &[],
            )
            .await;
        r.assert_detail(403, "Admin privileges required");
    }
    let r = s
        .send_raw(Method::POST, USERS, Some(&user), JSON, broken)
        .await;
    assert_422(&r, &json_invalid(16, "Expecting value"));
}

#[tokio::test]
async fn single_user_login_and_setup_validate_the_body_before_the_403() {
    let s = TestServer::single_user().await;
    let both_missing = json!({"detail": [
        issue("missing", json!(["body", "email"]), "Field required", json!({})),
        issue("missing", json!(["body", "password"]), "Field required", json!({})),
    ]});
    for path in [LOGIN, SETUP] {
        assert_422(&s.post(path, None, &json!({})).await, &both_missing);
        assert_422(&s.post_empty(path, None).await, &missing_body());
        let r = s
            .post(path, None, &json!({"email": "a@b", "password": "x"}))
            .await;
        assert_422(
            &r,
            &json!({"detail": [issue("value_error", json!(["body", "email"]),
                                     "Email domain must contain a dot or be 'localhost'", json!("a@b"))]}),
        );
        let r = s
            .send_raw(Method::POST, path, None, JSON, b"{bad}".to_vec())
            .await;
        assert_422(
            &r,
            &json_invalid(1, "Expecting property name enclosed in double quotes"),
        );
    }
    s.post(
        LOGIN,
        None,
        &json!({"email": "a@example.com", "password": "x"}),
    )
    .await
    .assert_detail(
        403,
        "Multiuser mode is disabled. Authentication is not required in single-user mode.",
    );
    s.post(
        SETUP,
        None,
        &json!({"email": "a@example.com", "password": "x"}),
    )
    .await
    .assert_detail(
        403,
        "Multiuser mode is disabled. Admin setup is not required in single-user mode.",
    );
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let s = TestServer::multiuser().await;
    let r = s
        .post(
            SETUP,
            None,
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "role": "root", "is_admin": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user"]["is_admin"], true);
    let r = s
        .post(
            LOGIN,
            None,
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "extra": [1, 2], "user_id": "x"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let admin = r.body["token"].as_str().unwrap().to_owned();
    let r = s
        .post(
            USERS,
            Some(&admin),
            &json!({"email": "u@example.com", "password": "pw", "token_epoch": 9, "is_active": false}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        (&r.body["token_epoch"], &r.body["is_active"]),
        (&json!(0), &json!(true))
    );
    let r = s
        .patch(
            ME,
            Some(&admin),
            &json!({"email": "new@example.com", "is_admin": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (&r.body["email"], &r.body["is_admin"]),
        (&json!(ADMIN_EMAIL), &json!(true))
    );
}
