//! Gallery items and virtual boards by date (boards-images.md §8).

use crate::common::*;
use serde_json::{json, Value};

async fn upload(s: &TestServer, token: &str, category: &str, intermediate: bool) -> String {
    let query = format!("image_category={category}&is_intermediate={intermediate}");
    let r = s
        .upload(Some(token), &query, png_bytes(8, 4), "image/png")
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["image_name"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn gallery_items_and_names_follow_the_image_scope() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let a1 = upload(&s, &alice, "general", false).await;
    let a2 = upload(&s, &alice, "user", false).await;
    let _b1 = upload(&s, &bob, "general", false).await;

    let r = s.get("/api/v1/gallery/items/?limit=10", Some(&alice)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], 2);
    let first = &r.body["items"][0];
    assert_eq!(first["kind"], "image");
    assert_eq!(
        first["full_url"],
        format!("api/v1/images/i/{}/full", first["name"].as_str().unwrap())
    );
    assert_eq!(
        (first["duration"].clone(), first["fps"].clone()),
        (Value::Null, Value::Null)
    );
    let r = s
        .get("/api/v1/gallery/items/?categories=user", Some(&alice))
        .await;
    assert_eq!(r.body["items"][0]["name"], a2);
    let r = s
        .get("/api/v1/gallery/items/?origin=internal", Some(&alice))
        .await;
    assert_eq!(r.body["total"], 0);
    let r = s
        .get(
            "/api/v1/gallery/item_names?order_dir=ASC&starred_first=false",
            Some(&alice),
        )
        .await;
    assert_eq!(
        r.body,
        json!({"item_names": [a1, a2], "starred_count": 0, "total_count": 2})
    );
    let r = s
        .get("/api/v1/gallery/items/names?order_dir=ASC", Some(&alice))
        .await;
    assert_eq!(
        r.body["items"],
        json!([{"kind": "image", "name": a1}, {"kind": "image", "name": a2}])
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let r = s
        .get(
            &format!("/api/v1/gallery/item_names?created_date={today}"),
            Some(&alice),
        )
        .await;
    assert_eq!(r.body["total_count"], 2);
    let r = s
        .get(
            "/api/v1/gallery/item_names?created_date=1999-01-01",
            Some(&alice),
        )
        .await;
    assert_eq!(r.body["total_count"], 0);
    let r = s
        .get(
            "/api/v1/gallery/item_names?created_date=yesterday",
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = s
        .get("/api/v1/gallery/items/?limit=5000", Some(&alice))
        .await;
    assert_eq!(r.status, 422);
    s.get("/api/v1/gallery/items/", None)
        .await
        .assert_detail(401, "Authentication required");
    let r = s.get("/api/v1/gallery/items/", Some(&admin)).await;
    assert_eq!(r.body["total"], 3);
}

#[tokio::test]
async fn virtual_boards_group_own_non_intermediate_images_by_day() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    upload(&s, &alice, "general", false).await;
    let newest = upload(&s, &alice, "mask", false).await;
    upload(&s, &alice, "general", true).await;
    upload(&s, &bob, "general", false).await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let r = s.get("/api/v1/virtual_boards/by_date", Some(&alice)).await;
    assert_eq!(
        r.body,
        json!([{"virtual_board_id": format!("by_date:{today}"), "board_name": today, "date": today,
                "image_count": 1, "asset_count": 1, "video_count": 0,
                "cover_image_name": newest, "cover_video_name": null}])
    );
    let r = s.get("/api/v1/virtual_boards/by_date", Some(&admin)).await;
    assert_eq!(r.body[0]["image_count"], 2);
    let r = s
        .get(
            &format!("/api/v1/virtual_boards/by_date/{today}/image_names"),
            Some(&alice),
        )
        .await;
    assert_eq!(r.body["total_count"], 2);
    let r = s
        .get(
            &format!("/api/v1/virtual_boards/by_date/{today}/item_names"),
            Some(&bob),
        )
        .await;
    assert_eq!(r.body["total_count"], 1);
}
