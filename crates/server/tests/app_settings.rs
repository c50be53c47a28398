//! `PATCH /api/v1/app/runtime_config` and `/api/v1/app/logging` (app-info.md §2–3).

use crate::common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn runtime_config_patch_persists_and_is_admin_only() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, user) = s.user_with_token(&admin, "u@example.com").await;
    let body = json!({"image_subfolder_strategy": "date", "max_queue_history": 5});
    s.patch("/api/v1/app/runtime_config", None, &body)
        .await
        .assert_detail(401, "Authentication required");
    s.patch("/api/v1/app/runtime_config", Some(&user), &body)
        .await
        .assert_detail(403, "Admin privileges required");

    let r = s
        .patch("/api/v1/app/runtime_config", Some(&admin), &body)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["config"]["image_subfolder_strategy"], "date");
    assert_eq!(r.body["config"]["max_queue_history"], 5);
    let set: Vec<&str> = r.body["set_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        set.contains(&"image_subfolder_strategy") && set.contains(&"max_queue_history"),
        "{set:?}"
    );
    // Reflected by GET and written to the file.
    let g = s.get("/api/v1/app/runtime_config", Some(&admin)).await;
    assert_eq!(g.body["config"]["image_subfolder_strategy"], "date");
    let file = std::fs::read_to_string(s.root.path().join("invokeai.yaml")).unwrap();
    assert!(file.contains("image_subfolder_strategy: date"), "{file}");
    assert!(file.contains("max_queue_history: 5"), "{file}");
    // Unknown keys are ignored; an empty body changes nothing.
    let r = s
        .patch(
            "/api/v1/app/runtime_config",
            Some(&admin),
            &json!({"port": 1}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["config"]["port"]),
        (200, &g.body["config"]["port"])
    );
}

#[tokio::test]
async fn runtime_config_patch_validation() {
    let s = TestServer::single_user().await;
    let r = s
        .patch(
            "/api/v1/app/runtime_config",
            None,
            &json!({"max_queue_history": -1}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body),
        (
            422,
            &json!({"detail": [{"type": "greater_than_equal", "loc": ["body", "max_queue_history"],
            "msg": "Input should be greater than or equal to 0", "input": -1, "ctx": {"ge": 0}}]})
        )
    );
    let r = s
        .patch(
            "/api/v1/app/runtime_config",
            None,
            &json!({"image_subfolder_strategy": "weekly"}),
        )
        .await;
    assert_eq!(r.body["detail"][0]["type"], "literal_error");
    let r = s
        .patch(
            "/api/v1/app/runtime_config",
            None,
            &json!({"image_subfolder_strategy": null}),
        )
        .await;
    assert_eq!(
        r.body,
        json!({"detail": [{"type": "value_error", "loc": ["body"],
            "msg": "Value error, image_subfolder_strategy may not be null",
            "input": {"image_subfolder_strategy": null}, "ctx": {"error": {}}}]})
    );
    let r = s
        .patch(
            "/api/v1/app/runtime_config",
            None,
            &json!({"generation_devices": []}),
        )
        .await;
    assert_eq!(
        r.body["detail"][0]["msg"],
        "Value error, generation_devices cannot be an empty list. Use 'auto' or a list of devices."
    );
    let r = s
        .patch(
            "/api/v1/app/runtime_config",
            None,
            &json!({"generation_devices": ["gpu0"]}),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = s
        .patch(
            "/api/v1/app/runtime_config",
            None,
            &json!({"generation_devices": "cuda:0"}),
        )
        .await;
    assert_eq!(r.body["detail"].as_array().unwrap().len(), 2);
    // A device this machine lacks: 422 with a plain-string detail.
    let r = s
        .patch(
            "/api/v1/app/runtime_config",
            None,
            &json!({"generation_devices": ["cuda:0"]}),
        )
        .await;
    r.assert_detail(
        422,
        "Generation device 'cuda:0' is not available on this machine",
    );
    let r = s
        .patch(
            "/api/v1/app/runtime_config",
            None,
            &json!({"generation_devices": ["cpu"]}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["config"]["generation_devices"]),
        (200, &json!(["cpu"]))
    );
}

#[tokio::test]
async fn logging_level_round_trip() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, user) = s.user_with_token(&admin, "u@example.com").await;
    assert_eq!(
        s.get("/api/v1/app/logging", Some(&admin)).await.body,
        json!(20)
    );
    s.get("/api/v1/app/logging", Some(&user))
        .await
        .assert_detail(403, "Admin privileges required");
    let r = s
        .post("/api/v1/app/logging", Some(&admin), &json!(10))
        .await;
    assert_eq!((r.status, &r.body), (200, &json!(10)));
    assert_eq!(
        s.get("/api/v1/app/logging", Some(&admin)).await.body,
        json!(10)
    );
    let r = s
        .post("/api/v1/app/logging", Some(&admin), &json!(15))
        .await;
    assert_eq!(
        (r.status, &r.body["detail"][0]["type"]),
        (422, &json!("enum"))
    );
    let r = s
        .send(Method::POST, "/api/v1/app/logging", Some(&admin), None, &[])
        .await;
    assert_eq!(
        (r.status, &r.body["detail"][0]["type"]),
        (422, &json!("missing"))
    );
}
