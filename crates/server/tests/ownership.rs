//! Ownership across modes (boards-images.md §9.3, §10) and the reassign extension: legacy
//! `system` content, switching single ↔ multi-user on one root, and moving content between
//! owners through the API and the command line.

use crate::common::*;
use serde_json::{json, Value};
use std::process::Command;

async fn upload(s: &TestServer, token: Option<&str>) -> String {
    s.upload_image(token, None).await
}

async fn board(s: &TestServer, token: Option<&str>, name: &str) -> String {
    s.create_board(token, name).await["board_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn board_names(r: &Resp) -> Vec<String> {
    let mut v: Vec<String> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["board_name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn switching_modes_never_rewrites_ownership() {
    // 1. Single-user: everything belongs to `system`.
    let s = TestServer::single_user().await;
    let legacy_board = board(&s, None, "legacy").await;
    let legacy_image = upload(&s, None).await;
    let r = s.get(&format!("/api/v1/boards/{legacy_board}"), None).await;
    assert_eq!(r.body["user_id"], "system");
    let root = s.stop().await;

    // 2. Multi-user: legacy content is the administrators' until shared.
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let admin = s.setup_admin().await;
    let (user_id, user) = s.user_with_token(&admin, "u@example.com").await;
    assert_eq!(
        board_names(&s.get("/api/v1/boards/?all=true", Some(&user)).await),
        Vec::<String>::new()
    );
    s.get(&format!("/api/v1/boards/{legacy_board}"), Some(&user))
        .await
        .assert_detail(403, "Not authorized to access this board");
    s.get(&format!("/api/v1/images/i/{legacy_image}"), Some(&user))
        .await
        .assert_detail(403, "Not authorized to access this image");
    assert_eq!(s.get("/api/v1/images/", Some(&user)).await.body["total"], 0);
    let r = s.get("/api/v1/boards/?all=true", Some(&admin)).await;
    assert_eq!(
        (board_names(&r), r.body[0]["owner_username"].clone()),
        (vec!["legacy".to_owned()], json!("System"))
    );
    assert_eq!(
        s.get("/api/v1/images/?board_id=none", Some(&admin))
            .await
            .body["total"],
        1
    );
    let user_board = board(&s, Some(&user), "mine").await;
    let user_image = upload(&s, Some(&user)).await;
    let root = s.stop().await;

    // 3. Back to single-user: one consolidated view of everything.
    let s = TestServer::builder_at(root).start().await;
    assert_eq!(
        board_names(&s.get("/api/v1/boards/?all=true", None).await),
        ["legacy", "mine"]
    );
    assert_eq!(
        s.get("/api/v1/images/?board_id=none", None).await.body["total"],
        2
    );
    assert_eq!(
        s.get(&format!("/api/v1/images/i/{user_image}"), None)
            .await
            .status,
        200
    );
    let single_board = board(&s, None, "while-single").await;
    let root = s.stop().await;

    // 4. Multi-user again: nothing moved.
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let admin = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let user = s.login("u@example.com", "User-Pass-1").await;
    assert_eq!(
        board_names(&s.get("/api/v1/boards/?all=true", Some(&user)).await),
        ["mine"]
    );
    let r = s
        .get(&format!("/api/v1/boards/{single_board}"), Some(&admin))
        .await;
    assert_eq!(r.body["user_id"], "system");
    assert_eq!(
        s.get(&format!("/api/v1/boards/{user_board}"), Some(&user))
            .await
            .body["user_id"],
        user_id
    );
    // An admin shares the legacy board: now readable, still not the user's to change.
    let r = s
        .patch(
            &format!("/api/v1/boards/{legacy_board}"),
            Some(&admin),
            &json!({"board_visibility": "shared"}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        s.get(&format!("/api/v1/boards/{legacy_board}"), Some(&user))
            .await
            .status,
        200
    );
    s.patch(
        &format!("/api/v1/boards/{legacy_board}"),
        Some(&user),
        &json!({"board_name": "x"}),
    )
    .await
    .assert_detail(403, "Not authorized to update this board");
}

#[tokio::test]
async fn reassign_moves_everything_in_one_go_and_is_audited() {
    let s = TestServer::single_user().await;
    let legacy_board = board(&s, None, "legacy").await;
    let legacy_image = upload(&s, None).await;
    let workflow = json!({"name": "wf", "author": "", "description": "", "version": "1.0.0", "contact": "",
        "tags": "", "notes": "", "exposedFields": [], "meta": {"version": "3.0.0", "category": "user"},
        "nodes": [], "edges": []});
    let r = s
        .post("/api/v1/workflows/", None, &json!({"workflow": workflow}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let preset = r#"{"name": "p", "positive_prompt": "a", "negative_prompt": "b", "type": "user"}"#;
    let form = reqwest::multipart::Form::new().text("data", preset);
    let r = Resp::read(
        s.client
            .post(s.url("/api/v1/style_presets/"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let root = s.stop().await;
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let admin = s.setup_admin().await;
    let (user_id, user) = s.user_with_token(&admin, "u@example.com").await;
    let body = json!({"from_user_id": "system", "to_user_id": user_id});

    s.post("/api/v1/content/reassign", None, &body)
        .await
        .assert_detail(401, "Authentication required");
    s.post("/api/v1/content/reassign", Some(&user), &body)
        .await
        .assert_detail(403, "Admin privileges required");
    s.post(
        "/api/v1/content/reassign",
        Some(&admin),
        &json!({"from_user_id": "system", "to_user_id": "nobody"}),
    )
    .await
    .assert_detail(404, "Target user not found");
    s.post(
        "/api/v1/content/reassign",
        Some(&admin),
        &json!({"from_user_id": "system", "to_user_id": "system"}),
    )
    .await
    .assert_detail(404, "Target user not found");
    let r = s
        .post(
            "/api/v1/content/reassign",
            Some(&admin),
            &json!({"from_user_id": "system"}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["detail"][0]["loc"]),
        (422, &json!(["body", "to_user_id"]))
    );

    let r = s
        .post("/api/v1/content/reassign", Some(&admin), &body)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"boards": 1, "images": 1, "workflows": 1, "style_presets": 1}),
        "default workflows and presets stay with `system`"
    );
    // The user now owns and controls the legacy content.
    let r = s
        .patch(
            &format!("/api/v1/boards/{legacy_board}"),
            Some(&user),
            &json!({"board_name": "now mine"}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        s.get(&format!("/api/v1/images/i/{legacy_image}"), Some(&user))
            .await
            .status,
        200
    );
    let r = s
        .get("/api/v1/auth/audit?action=content_reassigned", Some(&admin))
        .await;
    assert_eq!(r.body["total"], 1);
    assert_eq!(r.body["items"][0]["subject_email"], "u@example.com");
    assert!(r.body["items"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("1 boards, 1 images"));
    // Nothing left to move.
    let r = s
        .post("/api/v1/content/reassign", Some(&admin), &body)
        .await;
    assert_eq!(
        (r.body["boards"].clone(), r.body["images"].clone()),
        (json!(0), json!(0))
    );
}

#[tokio::test]
async fn content_left_by_a_deleted_user_can_be_given_away_from_the_shell() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (gone_id, gone) = s.user_with_token(&admin, "gone@example.com").await;
    let (_, heir) = s.user_with_token(&admin, "heir@example.com").await;
    let orphan_board = board(&s, Some(&gone), "left behind").await;
    upload(&s, Some(&gone)).await;
    assert_eq!(
        s.delete(&format!("/api/v1/auth/users/{gone_id}"), Some(&admin))
            .await
            .status,
        204
    );
    // The content survives its owner; admins see it with no owner name.
    let r = s.get("/api/v1/boards/?all=true", Some(&admin)).await;
    assert_eq!(r.body[0]["owner_username"], Value::Null);
    let root = s.stop().await;

    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "content",
            "reassign",
            "--from",
            &gone_id,
            "--to",
            "heir@example.com",
        ])
        .env_remove("INVOKEAI_ROOT")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("✅ Content reassigned to heir@example.com"),
        "{stdout}"
    );
    assert!(stdout.contains("   Boards: 1\n   Images: 1\n"), "{stdout}");

    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "content",
            "reassign",
            "--from",
            "system",
            "--to",
            "nobody@example.com",
        ])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("❌ Error: No user found with email 'nobody@example.com'"));

    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let r = s
        .get(&format!("/api/v1/boards/{orphan_board}"), Some(&heir))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.get("/api/v1/images/", Some(&heir)).await;
    assert_eq!(r.body["total"], 1);
}
