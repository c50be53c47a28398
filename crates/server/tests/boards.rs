//! Boards (boards-images.md §5, §9.1): CRUD, listing scope and paging, visibility rules.

use crate::common::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn board(s: &TestServer, token: Option<&str>, name: &str) -> Value {
    s.create_board(token, name).await
}

async fn set_visibility(s: &TestServer, token: &str, id: &str, vis: &str) {
    s.set_visibility(Some(token), id, vis).await;
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| b["board_name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn create_returns_a_fresh_private_board() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, user) = s.user_with_token(&admin, "u@example.com").await;
    let b = board(&s, Some(&user), "Holiday").await;
    assert_eq!(b["board_name"], "Holiday");
    assert_eq!(b["user_id"], uid);
    assert_eq!(b["board_visibility"], "private");
    assert_eq!(
        (
            b["image_count"].clone(),
            b["asset_count"].clone(),
            b["video_count"].clone()
        ),
        (json!(0), json!(0), json!(0))
    );
    assert_eq!(b["cover_image_name"], Value::Null);
    assert_eq!(b["deleted_at"], Value::Null);
    assert_eq!(b["owner_username"], Value::Null);
    assert_eq!(b["archived"], false);
    let created = b["created_at"].as_str().unwrap();
    assert!(created.contains(' ') && !created.contains('T'), "{created}");

    let r = s
        .send(Method::POST, "/api/v1/boards/", Some(&user), None, &[])
        .await;
    assert_eq!(
        r.body,
        json!({"detail": [{"type": "missing", "loc": ["query", "board_name"], "msg": "Field required", "input": null}]})
    );
    let long = "x".repeat(301);
    let r = s
        .send(
            Method::POST,
            &format!("/api/v1/boards/?board_name={long}"),
            Some(&user),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (r.status, &r.body["detail"][0]["type"]),
        (422, &json!("string_too_long"))
    );
    let r = s
        .send(
            Method::POST,
            "/api/v1/boards/?board_name=x",
            None,
            None,
            &[],
        )
        .await;
    r.assert_detail(401, "Authentication required");
}

#[tokio::test]
async fn listing_is_scoped_to_what_the_caller_may_see() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    board(&s, Some(&alice), "a-private").await;
    let shared = board(&s, Some(&bob), "b-shared").await;
    let public = board(&s, Some(&bob), "b-public").await;
    board(&s, Some(&bob), "b-private").await;
    set_visibility(&s, &bob, shared["board_id"].as_str().unwrap(), "shared").await;
    set_visibility(&s, &bob, public["board_id"].as_str().unwrap(), "public").await;

    let r = s
        .get(
            "/api/v1/boards/?all=true&order_by=board_name&direction=ASC",
            Some(&alice),
        )
        .await;
    assert_eq!(names(&r.body), ["a-private", "b-public", "b-shared"]);
    assert!(r
        .body
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["owner_username"].is_null()));

    let r = s
        .get(
            "/api/v1/boards/?all=true&order_by=board_name&direction=ASC",
            Some(&admin),
        )
        .await;
    assert_eq!(
        names(&r.body),
        ["a-private", "b-private", "b-public", "b-shared"]
    );
    assert_eq!(r.body[0]["owner_username"], "alice@example.com");

    // Paged: total counts every match, not the page.
    let r = s
        .get("/api/v1/boards/?offset=1&limit=1", Some(&alice))
        .await;
    assert_eq!(
        (
            r.body["total"].clone(),
            r.body["items"].as_array().unwrap().len()
        ),
        (json!(3), 1)
    );
    assert_eq!(
        (r.body["offset"].clone(), r.body["limit"].clone()),
        (json!(1), json!(1))
    );
    // Neither paging nor all: the first hundred, paged shape.
    let r = s.get("/api/v1/boards/", Some(&alice)).await;
    assert_eq!(
        (r.body["total"].clone(), r.body["limit"].clone()),
        (json!(3), json!(100))
    );
    s.get("/api/v1/boards/?offset=1", Some(&alice))
        .await
        .assert_detail(
            400,
            "Invalid request: Must provide either 'all' or both 'offset' and 'limit'",
        );
    let r = s.get("/api/v1/boards/?order_by=nope", Some(&alice)).await;
    assert_eq!(
        (r.status, &r.body["detail"][0]["type"]),
        (422, &json!("enum"))
    );
    // The slash-less path redirects, keeping the query.
    let r = s.get("/api/v1/boards?all=true", Some(&alice)).await;
    assert_eq!(
        (r.status, r.header("location")),
        (307, Some("/api/v1/boards/?all=true"))
    );
}

#[tokio::test]
async fn board_access_matrix() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, owner) = s.user_with_token(&admin, "o@example.com").await;
    let (_, other) = s.user_with_token(&admin, "u@example.com").await;
    for (vis, other_reads) in [("private", false), ("shared", true), ("public", true)] {
        let b = board(&s, Some(&owner), vis).await;
        let id = b["board_id"].as_str().unwrap();
        if vis != "private" {
            set_visibility(&s, &owner, id, vis).await;
        }
        let path = format!("/api/v1/boards/{id}");
        assert_eq!(s.get(&path, Some(&owner)).await.status, 200);
        assert_eq!(s.get(&path, Some(&admin)).await.status, 200);
        let r = s.get(&path, Some(&other)).await;
        if other_reads {
            assert_eq!(r.status, 200, "{vis}");
        } else {
            r.assert_detail(403, "Not authorized to access this board");
        }
        let r = s.get(&format!("{path}/image_names"), Some(&other)).await;
        assert_eq!(r.status, if other_reads { 200 } else { 403 }, "{vis}");
        // Only owner and admin may change or delete, whatever the visibility.
        s.patch(&path, Some(&other), &json!({"board_name": "x"}))
            .await
            .assert_detail(403, "Not authorized to update this board");
        s.delete(&path, Some(&other))
            .await
            .assert_detail(403, "Not authorized to delete this board");
        s.get(&path, None)
            .await
            .assert_detail(401, "Authentication required");
        let r = s
            .patch(
                &path,
                Some(&admin),
                &json!({"board_name": format!("{vis}!")}),
            )
            .await;
        assert_eq!(
            (r.status, &r.body["board_name"]),
            (201, &json!(format!("{vis}!")))
        );
    }
    let missing = "/api/v1/boards/00000000-0000-4000-8000-000000000000";
    s.get(missing, Some(&other))
        .await
        .assert_detail(404, "Board not found");
    s.get(missing, Some(&admin))
        .await
        .assert_detail(404, "Board not found");
    s.get("/api/v1/boards/none", Some(&admin))
        .await
        .assert_detail(404, "Board not found");
    s.patch(missing, Some(&admin), &json!({}))
        .await
        .assert_detail(404, "Board not found");
    s.delete(missing, Some(&admin))
        .await
        .assert_detail(404, "Board not found");
}

#[tokio::test]
async fn patch_validates_and_archives() {
    let s = TestServer::single_user().await;
    let b = board(&s, None, "b").await;
    let path = format!("/api/v1/boards/{}", b["board_id"].as_str().unwrap());
    let r = s
        .patch(
            &path,
            None,
            &json!({"bogus": 1, "board_visibility": "secret"}),
        )
        .await;
    assert_eq!(r.status, 422);
    let kinds: Vec<&str> = r.body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["enum", "extra_forbidden"]);
    let r = s
        .patch(&path, None, &json!({"board_name": "y".repeat(301)}))
        .await;
    assert_eq!(r.body["detail"][0]["type"], "string_too_long");
    let r = s.patch(&path, None, &json!({"archived": true})).await;
    assert_eq!((r.status, &r.body["archived"]), (201, &json!(true)));
    assert_eq!(r.body["board_name"], "b");
    let r = s.get("/api/v1/boards/?all=true", None).await;
    assert_eq!(r.body, json!([]));
    let r = s
        .get("/api/v1/boards/?all=true&include_archived=true", None)
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    // Single-user mode: everything belongs to `system`.
    assert_eq!(r.body[0]["user_id"], "system");
}

#[tokio::test]
async fn delete_keeps_images_by_default() {
    let s = TestServer::single_user().await;
    let b = board(&s, None, "gone").await;
    let id = b["board_id"].as_str().unwrap();
    let r = s.delete(&format!("/api/v1/boards/{id}"), None).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (
            200,
            json!({"board_id": id, "deleted_board_images": [], "deleted_images": [], "deleted_board_videos": [],
                     "deleted_videos": [], "failed_images": [], "failed_videos": []})
        )
    );
    assert_eq!(
        s.get(&format!("/api/v1/boards/{id}"), None).await.status,
        404
    );
    let r = s.get("/api/v1/boards/none/image_names", None).await;
    assert_eq!((r.status, r.body.clone()), (200, json!([])));
}
