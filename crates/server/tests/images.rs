//! Images (boards-images.md §6–7, §9.2): upload round trip, media, listing scope, the image
//! access matrix as a table, board membership, batch operations and crash safety.

use crate::common::*;
use atelier_server::media::{self, PngText};
use image::{DynamicImage, Rgba, RgbaImage};
use reqwest::multipart::{Form, Part};
use reqwest::Method;
use serde_json::{json, Value};

/// A small PNG with the given embedded metadata.
fn png(w: u32, h: u32, metadata: Option<&str>) -> Vec<u8> {
    let img = DynamicImage::ImageRgba8(RgbaImage::from_pixel(w, h, Rgba([200, 100, 50, 255])));
    let text = PngText {
        metadata: metadata.map(str::to_owned),
        workflow: None,
        graph: Some(r#"{"nodes":{},"edges":[]}"#.to_owned()),
    };
    media::encode_png(&img, &text, 1).unwrap()
}

async fn upload_with(
    s: &TestServer,
    token: Option<&str>,
    query: &str,
    bytes: Vec<u8>,
    mime: &str,
) -> Resp {
    s.upload(token, query, bytes, mime).await
}

async fn upload(s: &TestServer, token: Option<&str>, board: Option<&str>) -> String {
    let query = match board {
        Some(b) => format!("image_category=general&is_intermediate=false&board_id={b}"),
        None => "image_category=general&is_intermediate=false".to_owned(),
    };
    let r = upload_with(
        s,
        token,
        &query,
        png(64, 32, Some(r#"{"prompt":"a cat"}"#)),
        "image/png",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["image_name"].as_str().unwrap().to_owned()
}

async fn new_board(s: &TestServer, token: &str, visibility: &str) -> String {
    let id = s.create_board(Some(token), "b").await["board_id"]
        .as_str()
        .unwrap()
        .to_owned();
    if visibility != "private" {
        s.set_visibility(Some(token), &id, visibility).await;
    }
    id
}

async fn get_bytes(
    s: &TestServer,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    s.get_bytes(path, token, headers).await
}

#[tokio::test]
async fn upload_round_trip_keeps_metadata_and_makes_a_thumbnail() {
    let s = TestServer::single_user().await;
    let r = upload_with(
        &s,
        None,
        "image_category=general&is_intermediate=false",
        png(640, 320, Some(r#"{"seed":7}"#)),
        "image/png",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let name = r.body["image_name"].as_str().unwrap().to_owned();
    assert!(name.ends_with(".png") && name.len() == 40, "{name}");
    assert_eq!(
        r.header("location"),
        Some(format!("api/v1/images/i/{name}/full").as_str())
    );
    let dto = &r.body;
    assert_eq!(
        (
            dto["width"].clone(),
            dto["height"].clone(),
            dto["image_origin"].clone(),
            dto["has_workflow"].clone()
        ),
        (json!(640), json!(320), json!("external"), json!(true))
    );
    assert_eq!(
        dto["thumbnail_url"],
        format!("api/v1/images/i/{name}/thumbnail")
    );
    assert_eq!(dto["board_id"], Value::Null);
    assert!(dto.get("user_id").is_none(), "ownership is never exposed");

    let meta = s
        .get(&format!("/api/v1/images/i/{name}/metadata"), None)
        .await;
    assert_eq!(meta.body, json!({"seed": 7}));
    let wf = s
        .get(&format!("/api/v1/images/i/{name}/workflow"), None)
        .await;
    assert_eq!(
        wf.body,
        json!({"workflow": null, "graph": r#"{"nodes":{},"edges":[]}"#})
    );

    let (status, headers, bytes) =
        get_bytes(&s, &format!("/api/v1/images/i/{name}/full"), None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["cache-control"], "max-age=31536000");
    assert_eq!(
        headers["content-disposition"],
        format!("inline; filename=\"{name}\"").as_str()
    );
    assert_eq!(
        media::read_png_text(&bytes).metadata.as_deref(),
        Some(r#"{"seed":7}"#)
    );
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let (status, headers, bytes) = get_bytes(
        &s,
        &format!("/api/v1/images/i/{name}/full"),
        None,
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!((status, bytes.len()), (304, 0));
    assert_eq!(headers["etag"], etag.as_str());

    let (status, headers, bytes) =
        get_bytes(&s, &format!("/api/v1/images/i/{name}/thumbnail"), None, &[]).await;
    assert_eq!(
        (status, &headers["content-type"]),
        (
            200,
            &"image/webp"
                .parse::<reqwest::header::HeaderValue>()
                .unwrap()
        )
    );
    let thumb = image::load_from_memory(&bytes).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (256, 128));
    let tag = headers["etag"].to_str().unwrap().to_owned();
    let (status, _, _) = get_bytes(
        &s,
        &format!("/api/v1/images/i/{name}/thumbnail"),
        None,
        &[("if-none-match", &tag)],
    )
    .await;
    assert_eq!(status, 304);

    // Files live where the contract says.
    let stem = name.trim_end_matches(".png");
    assert!(s
        .root
        .path()
        .join(format!("outputs/images/{name}"))
        .is_file());
    assert!(s
        .root
        .path()
        .join(format!("outputs/images/thumbnails/{stem}.webp"))
        .is_file());
}

#[tokio::test]
async fn upload_refusals() {
    let s = TestServer::builder()
        .set("max_upload_bytes", json!(4096))
        .start()
        .await;
    let q = "image_category=general&is_intermediate=false";
    upload_with(&s, None, q, b"hello".to_vec(), "text/plain")
        .await
        .assert_detail(415, "Not an image");
    upload_with(&s, None, q, b"not really a png".to_vec(), "image/png")
        .await
        .assert_detail(415, "Failed to read image");
    let big = vec![0u8; 10_000];
    upload_with(&s, None, q, big, "image/png")
        .await
        .assert_detail(413, "Request body too large");
    let r = upload_with(
        &s,
        None,
        "is_intermediate=false",
        png(2, 2, None),
        "image/png",
    )
    .await;
    assert_eq!(
        r.body,
        json!({"detail": [{"type": "missing", "loc": ["query", "image_category"], "msg": "Field required", "input": null}]})
    );
    let r = upload_with(
        &s,
        None,
        "image_category=bogus&is_intermediate=maybe",
        png(2, 2, None),
        "image/png",
    )
    .await;
    let kinds: Vec<&str> = r.body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["enum", "bool_parsing"]);
    let r = s
        .send_raw(
            Method::POST,
            &format!("/api/v1/images/upload?{q}"),
            None,
            Some("multipart/form-data; boundary=xyz"),
            b"garbage".to_vec(),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = upload_with(
        &s,
        None,
        &format!("{q}&board_id=00000000-0000-4000-8000-000000000000"),
        png(2, 2, None),
        "image/png",
    )
    .await;
    r.assert_detail(404, "Board not found");
    // resize_to
    let form = Form::new()
        .part(
            "file",
            Part::bytes(png(10, 10, None))
                .file_name("a.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("resize_to", r#"{"width": 4, "height": 3}"#);
    let res = s
        .client
        .post(s.url(&format!("/api/v1/images/upload?{q}")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["width"].clone(), body["height"].clone()),
        (json!(4), json!(3))
    );
    let form = Form::new()
        .part(
            "file",
            Part::bytes(png(10, 10, None))
                .file_name("a.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("resize_to", "[4, 3]");
    let res = s
        .client
        .post(s.url(&format!("/api/v1/images/upload?{q}")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"detail": "Invalid resize_to format or size"})
    );
    assert_eq!(
        s.send(Method::POST, "/api/v1/images/", None, Some(&json!({})), &[])
            .await
            .status,
        501
    );
}

/// One row of the image access matrix (§9.2): who asks, where the image is, what they get.
struct Case {
    caller: &'static str,
    place: &'static str,
    read: u16,
    write: u16,
}

#[tokio::test]
async fn image_access_matrix() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, owner) = s.user_with_token(&admin, "owner@example.com").await;
    let (_, board_owner) = s.user_with_token(&admin, "boards@example.com").await;
    let (_, stranger) = s.user_with_token(&admin, "stranger@example.com").await;
    let token = |who: &str| match who {
        "owner" => owner.clone(),
        "board_owner" => board_owner.clone(),
        "stranger" => stranger.clone(),
        _ => admin.clone(),
    };

    // The image's owner puts one image in each place; the board owner's boards are made
    // writable for the owner by being public first, then set to their final visibility.
    let mut places = std::collections::HashMap::new();
    places.insert("uncategorized", upload(&s, Some(&owner), None).await);
    for vis in ["private", "shared", "public"] {
        let board = new_board(&s, &board_owner, "public").await;
        let name = upload(&s, Some(&owner), Some(&board)).await;
        let r = s
            .patch(
                &format!("/api/v1/boards/{board}"),
                Some(&board_owner),
                &json!({"board_visibility": vis}),
            )
            .await;
        assert_eq!(r.status, 201);
        places.insert(vis, name);
    }

    let cases = [
        Case {
            caller: "owner",
            place: "uncategorized",
            read: 200,
            write: 200,
        },
        Case {
            caller: "owner",
            place: "private",
            read: 200,
            write: 200,
        },
        Case {
            caller: "stranger",
            place: "uncategorized",
            read: 403,
            write: 403,
        },
        Case {
            caller: "stranger",
            place: "private",
            read: 403,
            write: 403,
        },
        Case {
            caller: "stranger",
            place: "shared",
            read: 200,
            write: 403,
        },
        Case {
            caller: "stranger",
            place: "public",
            read: 200,
            write: 200,
        },
        // Board ownership grants changes but not reading someone else's image.
        Case {
            caller: "board_owner",
            place: "private",
            read: 403,
            write: 200,
        },
        Case {
            caller: "board_owner",
            place: "shared",
            read: 200,
            write: 200,
        },
        Case {
            caller: "admin",
            place: "uncategorized",
            read: 200,
            write: 200,
        },
        Case {
            caller: "admin",
            place: "private",
            read: 200,
            write: 200,
        },
    ];
    for case in &cases {
        let name = &places[case.place];
        let t = token(case.caller);
        let label = format!("{} on {}", case.caller, case.place);
        for route in ["", "/metadata", "/urls", "/workflow", "/thumbnail", "/full"] {
            let r = s
                .get(&format!("/api/v1/images/i/{name}{route}"), Some(&t))
                .await;
            assert_eq!(r.status, case.read, "read {route} by {label}: {}", r.text);
            if case.read == 403 {
                r.assert_detail(403, "Not authorized to access this image");
            }
        }
        let r = s
            .post(
                "/api/v1/images/images_by_names",
                Some(&t),
                &json!({"image_names": [name]}),
            )
            .await;
        assert_eq!(
            r.body.as_array().unwrap().len(),
            usize::from(case.read == 200),
            "by_names {label}"
        );
        let r = s
            .patch(
                &format!("/api/v1/images/i/{name}"),
                Some(&t),
                &json!({"starred": true}),
            )
            .await;
        assert_eq!(r.status, case.write, "patch by {label}: {}", r.text);
        if case.write == 403 {
            r.assert_detail(403, "Not authorized to modify this image");
        }
        let r = s
            .post(
                "/api/v1/images/unstar",
                Some(&t),
                &json!({"image_names": [name]}),
            )
            .await;
        let applied = r.body["unstarred_images"].as_array().unwrap().len();
        assert_eq!(applied, usize::from(case.write == 200), "unstar by {label}");
    }
    // Anonymous: 401 on everything, media included.
    let name = &places["public"];
    s.get(&format!("/api/v1/images/i/{name}"), None)
        .await
        .assert_detail(401, "Authentication required");
    s.get(&format!("/api/v1/images/i/{name}/full"), None)
        .await
        .assert_detail(401, "Authentication required");
    // Missing images: 404 `Image not found` for users, `Not Found` for admins; writes are 403.
    let missing = "00000000-0000-4000-8000-000000000000.png";
    s.get(&format!("/api/v1/images/i/{missing}"), Some(&stranger))
        .await
        .assert_detail(404, "Image not found");
    s.get(&format!("/api/v1/images/i/{missing}"), Some(&admin))
        .await
        .assert_detail(404, "Not Found");
    s.patch(
        &format!("/api/v1/images/i/{missing}"),
        Some(&stranger),
        &json!({}),
    )
    .await
    .assert_detail(403, "Not authorized to modify this image");
    s.patch(
        &format!("/api/v1/images/i/{missing}"),
        Some(&admin),
        &json!({}),
    )
    .await
    .assert_detail(400, "Failed to update image");
    s.delete(&format!("/api/v1/images/i/{missing}"), Some(&admin))
        .await
        .assert_detail(404, "Image not found");
    s.delete(&format!("/api/v1/images/i/{missing}"), Some(&stranger))
        .await
        .assert_detail(403, "Not authorized to modify this image");
    // Deletion by a stranger of a public-board image is allowed, of a shared one not.
    s.delete(
        &format!("/api/v1/images/i/{}", places["shared"]),
        Some(&stranger),
    )
    .await
    .assert_detail(403, "Not authorized to modify this image");
    let r = s
        .delete(
            &format!("/api/v1/images/i/{}", places["public"]),
            Some(&stranger),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["deleted_images"], json!([places["public"]]));
}

#[tokio::test]
async fn media_accepts_the_cookie_and_prefers_the_bearer() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let name = upload(&s, Some(&admin), None).await;
    let path = format!("/api/v1/images/i/{name}/thumbnail");
    let cookie = format!("invokeai_media_token={admin}");
    let (status, headers, _) = get_bytes(&s, &path, None, &[("cookie", &cookie)]).await;
    assert_eq!(
        (status, headers["cache-control"].to_str().unwrap()),
        (200, "private, no-store")
    );
    // An invalid bearer is not retried with the cookie.
    let r = s
        .send(
            Method::GET,
            &path,
            Some("garbage"),
            None,
            &[("cookie", &cookie)],
        )
        .await;
    r.assert_detail(401, "Invalid or expired token");
    // The cookie does not work on non-media routes.
    let r = s
        .send(
            Method::GET,
            &format!("/api/v1/images/i/{name}"),
            None,
            None,
            &[("cookie", &cookie)],
        )
        .await;
    r.assert_detail(401, "Authentication required");
}

#[tokio::test]
async fn listing_is_owner_scoped_unless_a_board_is_named() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let shared = new_board(&s, &bob, "shared").await;
    let private = new_board(&s, &bob, "private").await;
    let a1 = upload(&s, Some(&alice), None).await;
    let b1 = upload(&s, Some(&bob), Some(&shared)).await;
    let _b2 = upload(&s, Some(&bob), None).await;

    let names = |r: &Resp| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["image_name"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = s.get("/api/v1/images/", Some(&alice)).await;
    assert_eq!(
        (names(&r), r.body["total"].clone()),
        (vec![a1.clone()], json!(1))
    );
    let r = s
        .get(&format!("/api/v1/images/?board_id={shared}"), Some(&alice))
        .await;
    assert_eq!(names(&r), vec![b1.clone()]);
    s.get(&format!("/api/v1/images/?board_id={private}"), Some(&alice))
        .await
        .assert_detail(403, "Not authorized to access this board");
    let r = s.get("/api/v1/images/?board_id=none", Some(&alice)).await;
    assert_eq!(names(&r), vec![a1.clone()]);
    let r = s
        .get("/api/v1/images/?board_id=none&limit=0", Some(&admin))
        .await;
    assert_eq!(
        (r.body["total"].clone(), r.body["items"].clone()),
        (json!(2), json!([]))
    );
    let r = s.get("/api/v1/images/?limit=1001", Some(&admin)).await;
    assert_eq!(
        (r.status, &r.body["detail"][0]["loc"]),
        (422, &json!(["query", "limit"]))
    );
    let r = s.get("/api/v1/images/?offset=-1", Some(&admin)).await;
    assert_eq!(r.body["detail"][0]["type"], "greater_than_equal");
    // Search looks into the metadata text.
    let r = s.get("/api/v1/images/?search_term=CAT", Some(&alice)).await;
    assert_eq!(names(&r), vec![a1.clone()]);
    let r = s.get("/api/v1/images/?search_term=dog", Some(&alice)).await;
    assert!(names(&r).is_empty());
    // Starred first.
    let a2 = upload(&s, Some(&alice), None).await;
    s.post(
        "/api/v1/images/star",
        Some(&alice),
        &json!({"image_names": [a1]}),
    )
    .await;
    let r = s.get("/api/v1/images/names", Some(&alice)).await;
    assert_eq!(
        r.body,
        json!({"image_names": [a1, a2], "starred_count": 1, "total_count": 2})
    );
    let r = s
        .get("/api/v1/images/names?starred_first=false", Some(&alice))
        .await;
    assert_eq!(r.body["starred_count"], 0);
    assert_eq!(r.body["image_names"], json!([a2, a1]));
}

#[tokio::test]
async fn board_membership_rules() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let alice_board = new_board(&s, &alice, "private").await;
    let bob_public = new_board(&s, &bob, "public").await;
    let bob_private = new_board(&s, &bob, "private").await;
    let mine = upload(&s, Some(&alice), None).await;
    let his = upload(&s, Some(&bob), None).await;

    let r = s
        .post(
            "/api/v1/board_images/",
            Some(&alice),
            &json!({"board_id": alice_board, "image_name": mine}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["added_images"], json!([mine]));
    let mut affected: Vec<&str> = r.body["affected_boards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    affected.sort_unstable();
    let mut expected = vec![alice_board.as_str(), "none"];
    expected.sort_unstable();
    assert_eq!(affected, expected);
    let r = s
        .get(&format!("/api/v1/boards/{alice_board}"), Some(&alice))
        .await;
    assert_eq!(
        (
            r.body["image_count"].clone(),
            r.body["cover_image_name"].clone()
        ),
        (json!(1), json!(mine))
    );

    // Someone else's image cannot be pulled onto my board.
    s.post(
        "/api/v1/board_images/",
        Some(&alice),
        &json!({"board_id": alice_board, "image_name": his}),
    )
    .await
    .assert_detail(403, "Not authorized to move this image");
    // My image onto someone's private board: the board refuses first.
    s.post(
        "/api/v1/board_images/",
        Some(&alice),
        &json!({"board_id": bob_private, "image_name": mine}),
    )
    .await
    .assert_detail(403, "Not authorized to modify this board");
    // A public board accepts my image (moving it).
    let r = s
        .post(
            "/api/v1/board_images/",
            Some(&alice),
            &json!({"board_id": bob_public, "image_name": mine}),
        )
        .await;
    assert_eq!(r.status, 201);
    // Batch: foreign and unknown names are skipped silently.
    let r = s
        .post(
            "/api/v1/board_images/batch",
            Some(&alice),
            &json!({"board_id": alice_board, "image_names": [mine, his, "nope.png", mine]}),
        )
        .await;
    assert_eq!((r.status, &r.body["added_images"]), (201, &json!([mine])));
    s.post(
        "/api/v1/board_images/batch",
        Some(&alice),
        &json!({"board_id": bob_private, "image_names": [mine]}),
    )
    .await
    .assert_detail(403, "Not authorized to modify this board");
    // Removing from a board: the board must be writable.
    let r = s
        .send(
            Method::DELETE,
            "/api/v1/board_images/",
            Some(&bob),
            Some(&json!({"image_name": mine})),
            &[],
        )
        .await;
    r.assert_detail(403, "Not authorized to modify this board");
    let r = s
        .send(
            Method::DELETE,
            "/api/v1/board_images/",
            Some(&alice),
            Some(&json!({"image_name": mine})),
            &[],
        )
        .await;
    assert_eq!((r.status, &r.body["removed_images"]), (201, &json!([mine])));
    let r = s
        .post(
            "/api/v1/board_images/batch/delete",
            Some(&alice),
            &json!({"image_names": [mine]}),
        )
        .await;
    assert_eq!(
        (
            r.status,
            &r.body["removed_images"],
            &r.body["affected_boards"]
        ),
        (201, &json!([mine]), &json!(["none"]))
    );
    // Too many names is a 422 on the list.
    let many: Vec<String> = (0..1001).map(|i| format!("{i}.png")).collect();
    let r = s
        .post(
            "/api/v1/images/delete",
            Some(&alice),
            &json!({"image_names": many}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["detail"][0]["type"]),
        (422, &json!("too_long"))
    );
}

#[tokio::test]
async fn deleting_a_board_with_images_deletes_only_the_owners_own() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let board = new_board(&s, &alice, "public").await;
    let hers = upload(&s, Some(&alice), Some(&board)).await;
    let his = upload(&s, Some(&bob), Some(&board)).await;
    let r = s
        .delete(
            &format!("/api/v1/boards/{board}?include_images=true"),
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (
            r.body["deleted_images"].clone(),
            r.body["deleted_board_images"].clone()
        ),
        (json!([hers]), json!([]))
    );
    assert_eq!(
        s.get(&format!("/api/v1/images/i/{hers}"), Some(&admin))
            .await
            .status,
        404
    );
    let r = s.get(&format!("/api/v1/images/i/{his}"), Some(&bob)).await;
    assert_eq!((r.status, &r.body["board_id"]), (200, &Value::Null));
    let stem = hers.trim_end_matches(".png");
    assert!(!s
        .root
        .path()
        .join(format!("outputs/images/{hers}"))
        .exists());
    assert!(!s
        .root
        .path()
        .join(format!("outputs/images/thumbnails/{stem}.webp"))
        .exists());
}

#[tokio::test]
async fn intermediates_and_uncategorized() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let r = upload_with(
        &s,
        Some(&alice),
        "image_category=general&is_intermediate=true",
        png(4, 4, None),
        "image/png",
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        s.get("/api/v1/images/intermediates", Some(&alice))
            .await
            .body,
        json!(1)
    );
    assert_eq!(
        s.get("/api/v1/images/intermediates", Some(&admin))
            .await
            .body,
        json!(1)
    );
    s.delete("/api/v1/images/intermediates", Some(&alice))
        .await
        .assert_detail(403, "Only admins can clear all intermediates");
    assert_eq!(
        s.delete("/api/v1/images/intermediates", Some(&admin))
            .await
            .body,
        json!(1)
    );
    assert_eq!(
        s.get("/api/v1/images/intermediates", Some(&alice))
            .await
            .body,
        json!(0)
    );

    let a = upload(&s, Some(&alice), None).await;
    let mine = upload(&s, Some(&admin), None).await;
    let r = s.delete("/api/v1/images/uncategorized", Some(&alice)).await;
    assert_eq!(r.body["deleted_images"], json!([a]));
    let r = s.delete("/api/v1/images/uncategorized", Some(&admin)).await;
    assert_eq!(r.body["deleted_images"], json!([mine]));
}

#[tokio::test]
async fn interrupted_writes_leave_a_consistent_state_after_restart() {
    let s = TestServer::single_user().await;
    let kept = upload(&s, None, None).await;
    let root = s.stop().await;
    // A crash after the files were written but before the row: files without a record, and a
    // temporary file from a write that never finished.
    let images = root.path().join("outputs/images");
    std::fs::write(
        images.join("11111111-1111-4111-8111-111111111111.png"),
        png(2, 2, None),
    )
    .unwrap();
    std::fs::write(
        images.join("thumbnails/11111111-1111-4111-8111-111111111111.webp"),
        b"x",
    )
    .unwrap();
    std::fs::write(
        images.join("22222222-2222-4222-8222-222222222222.png.abc.tmp"),
        b"x",
    )
    .unwrap();
    let s = TestServer::builder_at(root).start().await;
    assert!(!images
        .join("11111111-1111-4111-8111-111111111111.png")
        .exists());
    assert!(!images
        .join("thumbnails/11111111-1111-4111-8111-111111111111.webp")
        .exists());
    assert!(!images
        .join("22222222-2222-4222-8222-222222222222.png.abc.tmp")
        .exists());
    assert!(images.join(&kept).exists());
    let r = s.get("/api/v1/images/", None).await;
    assert_eq!(r.body["total"], 1);
    assert_eq!(
        get_bytes(&s, &format!("/api/v1/images/i/{kept}/full"), None, &[])
            .await
            .0,
        200
    );
}

/// Entry names of a stored ZIP, read through its central directory.
fn zip_names(zip: &[u8]) -> Vec<String> {
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([zip[i], zip[i + 1]]));
    let u32_at =
        |i: usize| u32::from_le_bytes([zip[i], zip[i + 1], zip[i + 2], zip[i + 3]]) as usize;
    let end = zip.len() - 22;
    assert_eq!(u32_at(end), 0x0605_4b50);
    let (count, mut at) = (u16_at(end + 10), u32_at(end + 16));
    let mut names = Vec::new();
    for _ in 0..count {
        let len = u16_at(at + 28);
        names.push(String::from_utf8(zip[at + 46..at + 46 + len].to_vec()).unwrap());
        at += 46 + len;
    }
    names.sort();
    names
}

/// Fetches a bulk download, polling until the background build has finished.
async fn fetch_download(s: &TestServer, token: &str, item: &str) -> (u16, Vec<u8>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, _, bytes) = get_bytes(
            s,
            &format!("/api/v1/images/download/{item}"),
            Some(token),
            &[],
        )
        .await;
        if status != 404 || std::time::Instant::now() > deadline {
            return (status, bytes);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bulk_download_zips_readable_images_once() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let board = new_board(&s, &alice, "private").await;
    let a1 = upload(&s, Some(&alice), Some(&board)).await;
    let a2 = upload(&s, Some(&alice), None).await;

    s.post("/api/v1/images/download", Some(&alice), &json!({}))
        .await
        .assert_detail(400, "No images or board id specified.");
    s.post(
        "/api/v1/images/download",
        Some(&bob),
        &json!({"board_id": board}),
    )
    .await
    .assert_detail(403, "Not authorized to access this board");
    s.post(
        "/api/v1/images/download",
        Some(&bob),
        &json!({"image_names": [a2]}),
    )
    .await
    .assert_detail(403, "Not authorized to access this image");
    s.post(
        "/api/v1/images/download",
        Some(&bob),
        &json!({"board_id": "none"}),
    )
    .await
    .assert_detail(404, "Board not found");

    let r = s
        .post(
            "/api/v1/images/download",
            Some(&alice),
            &json!({"board_id": board, "image_names": [a2]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["response"], Value::Null);
    let item = r.body["bulk_download_item_name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(item.starts_with("b_") && item.ends_with(".zip"), "{item}");
    // Someone else cannot fetch it; its owner can, exactly once.
    let (status, _) = fetch_download(&s, &bob, &item).await;
    assert_eq!(status, 403);
    let (status, zip) = fetch_download(&s, &alice, &item).await;
    assert_eq!(status, 200);
    let mut expected = vec![format!("general/{a1}"), format!("general/{a2}")];
    expected.sort();
    assert_eq!(zip_names(&zip), expected);
    let (status, _, _) = get_bytes(
        &s,
        &format!("/api/v1/images/download/{item}"),
        Some(&alice),
        &[],
    )
    .await;
    assert_eq!(status, 404);
}
