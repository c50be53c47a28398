//! Style presets (workflows-and-state.md §3): defaults recreated at start-up, CRUD with
//! preview images, the access matrix of §3.4 for anonymous, owner, other user and admin,
//! import and export, bad input, and single-user mode.

use crate::common::*;
use reqwest::multipart::{Form, Part};
use reqwest::Method;
use serde_json::{json, Value};

const SP: &str = "/api/v1/style_presets";

fn data(name: &str, kind: &str, is_public: Option<bool>) -> String {
    let mut d = json!({"name": name, "positive_prompt": "a {prompt}", "negative_prompt": "blurry", "type": kind});
    if let Some(p) = is_public {
        d["is_public"] = json!(p);
    }
    d.to_string()
}

fn png_part(bytes: Vec<u8>, mime: &str) -> Part {
    Part::bytes(bytes)
        .file_name("p.png")
        .mime_str(mime)
        .unwrap()
}

async fn send_form(
    s: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    form: Form,
) -> Resp {
    let mut req = s.client.request(method, s.url(path)).multipart(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Resp::read(req.send().await.unwrap()).await
}

async fn create(s: &TestServer, token: Option<&str>, data: String, image: Option<Part>) -> Resp {
    let mut form = Form::new().text("data", data);
    if let Some(i) = image {
        form = form.part("image", i);
    }
    send_form(s, Method::POST, &format!("{SP}/"), token, form).await
}

async fn create_ok(s: &TestServer, token: Option<&str>, name: &str, is_public: bool) -> String {
    let r = create(s, token, data(name, "user", Some(is_public)), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn update(
    s: &TestServer,
    token: Option<&str>,
    id: &str,
    data: String,
    image: Option<Part>,
) -> Resp {
    let mut form = Form::new().text("data", data);
    if let Some(i) = image {
        form = form.part("image", i);
    }
    send_form(s, Method::PATCH, &format!("{SP}/i/{id}"), token, form).await
}

async fn import(s: &TestServer, token: Option<&str>, bytes: &[u8], mime: &str) -> Resp {
    let part = Part::bytes(bytes.to_vec())
        .file_name("presets")
        .mime_str(mime)
        .unwrap();
    send_form(
        s,
        Method::POST,
        &format!("{SP}/import"),
        token,
        Form::new().part("file", part),
    )
    .await
}

fn listed_names(r: &Resp) -> Vec<String> {
    r.body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn defaults_are_recreated_with_new_ids_at_every_start() {
    let s = TestServer::single_user().await;
    let r = s.get(&format!("{SP}/"), None).await;
    assert_eq!(r.status, 200);
    let list = r.body.as_array().unwrap().clone();
    assert_eq!(list.len(), 6);
    let first = &list[0];
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "id",
            "name",
            "preset_data",
            "type",
            "is_public",
            "user_id",
            "image"
        ]
    );
    assert_eq!(
        (
            first["type"].clone(),
            first["user_id"].clone(),
            first["is_public"].clone(),
            first["image"].clone()
        ),
        (json!("default"), json!("system"), json!(false), Value::Null)
    );
    assert!(first["preset_data"]["positive_prompt"]
        .as_str()
        .unwrap()
        .contains("{prompt}"));
    let names: Vec<String> = list
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_lowercase())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "ordered by lower-cased name");
    let old_id = first["id"].as_str().unwrap().to_owned();
    let root = s.stop().await;
    let s = TestServer::builder_at(root).start().await;
    let again = s.get(&format!("{SP}/"), None).await.body;
    assert_eq!(
        again.as_array().unwrap().len(),
        6,
        "replaced, not duplicated"
    );
    assert_ne!(again[0]["id"], old_id.as_str());
    s.get(&format!("{SP}/i/{old_id}"), None)
        .await
        .assert_detail(404, "Style preset not found");
}

#[tokio::test]
async fn crud_with_preview_images() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, user) = s.user_with_token(&admin, "u@example.com").await;
    let r = create(
        &s,
        Some(&user),
        data("Mine", "user", None),
        Some(png_part(png_bytes(512, 512), "image/png")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["user_id"], uid.as_str());
    assert_eq!(r.body["is_public"], false);
    assert_eq!(
        r.body["preset_data"],
        json!({"positive_prompt": "a {prompt}", "negative_prompt": "blurry"})
    );
    let image = r.body["image"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("api/v1/style_presets/i/{id}/image?")),
        "{image}"
    );

    let (status, headers, bytes) = s
        .get_bytes(&format!("{SP}/i/{id}/image"), Some(&user), &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["cache-control"], "max-age=31536000");
    assert_eq!(
        headers["content-disposition"],
        format!("inline; filename=\"{id}.png\"").as_str()
    );
    let stored = image::load_from_memory(&bytes).unwrap();
    assert_eq!((stored.width(), stored.height()), (256, 256));
    s.get(&format!("{SP}/i/{id}/image"), None)
        .await
        .assert_detail(401, "Authentication required");

    // Full replace: type ignored, omitted is_public → private, no image → preview removed.
    let r = update(
        &s,
        Some(&user),
        &id,
        data("Renamed", "default", Some(true)),
        Some(png_part(png_bytes(4, 4), "image/png")),
    )
    .await;
    assert_eq!(
        (
            r.status,
            r.body["name"].clone(),
            r.body["type"].clone(),
            r.body["is_public"].clone()
        ),
        (200, json!("Renamed"), json!("user"), json!(true))
    );
    assert!(r.body["image"].is_string());
    let r = update(&s, Some(&user), &id, data("Renamed", "user", None), None).await;
    assert_eq!(
        (r.body["is_public"].clone(), r.body["image"].clone()),
        (json!(false), Value::Null)
    );
    let file = s
        .root
        .path()
        .join("style_presets")
        .join("images")
        .join(format!("{id}.webp"));
    assert!(!file.exists());
    let r = s.get(&format!("{SP}/i/{id}/image"), Some(&user)).await;
    assert_eq!(r.status, 500, "no preview file: the contract's 500");

    let r = s.delete(&format!("{SP}/i/{id}"), Some(&user)).await;
    assert_eq!((r.status, r.body.clone()), (200, Value::Null));
    s.get(&format!("{SP}/i/{id}"), Some(&user))
        .await
        .assert_detail(404, "Style preset not found");
    s.delete(&format!("{SP}/i/{id}"), Some(&user))
        .await
        .assert_detail(404, "Style preset not found");
    // The bare collection path redirects.
    assert_eq!(s.get(SP, Some(&user)).await.status, 307);
}

#[tokio::test]
async fn bad_input_in_check_order() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, user) = s.user_with_token(&admin, "u@example.com").await;
    for bad in [
        "not json".to_owned(),
        "[]".to_owned(),
        json!({"name": "x", "positive_prompt": "p", "negative_prompt": "n"}).to_string(),
        json!({"name": "x", "positive_prompt": "p", "negative_prompt": "n", "type": "other"}).to_string(),
        json!({"name": 1, "positive_prompt": "p", "negative_prompt": "n", "type": "user"}).to_string(),
        json!({"name": "x", "positive_prompt": "p", "negative_prompt": "n", "type": "user", "is_public": "no"}).to_string(),
    ] {
        create(&s, Some(&user), bad.clone(), None)
            .await
            .assert_detail(400, "Invalid preset data");
    }
    // 400 comes before 403, which comes before 415.
    create(
        &s,
        Some(&user),
        "{".into(),
        Some(png_part(b"x".to_vec(), "text/plain")),
    )
    .await
    .assert_detail(400, "Invalid preset data");
    create(
        &s,
        Some(&user),
        data("d", "default", None),
        Some(png_part(b"x".to_vec(), "text/plain")),
    )
    .await
    .assert_detail(403, "Only admins can create default presets");
    create(
        &s,
        Some(&user),
        data("d", "user", None),
        Some(png_part(b"x".to_vec(), "text/plain")),
    )
    .await
    .assert_detail(415, "Not an image");
    create(
        &s,
        Some(&user),
        data("d", "user", None),
        Some(png_part(b"x".to_vec(), "image/png")),
    )
    .await
    .assert_detail(415, "Failed to read image");
    let r = send_form(
        &s,
        Method::POST,
        &format!("{SP}/"),
        Some(&user),
        Form::new().text("other", "x"),
    )
    .await;
    assert_eq!(
        r.body,
        json!({"detail": [{"type": "missing", "loc": ["body", "data"], "msg": "Field required", "input": null}]})
    );
    // PATCH checks the data before loading the record.
    update(&s, Some(&user), "missing", "{".into(), None)
        .await
        .assert_detail(400, "Invalid preset data");
    update(&s, Some(&user), "missing", data("x", "user", None), None)
        .await
        .assert_detail(404, "Style preset not found");
    let mine = create_ok(&s, Some(&user), "Mine", false).await;
    update(
        &s,
        Some(&user),
        &mine,
        data("x", "user", None),
        Some(png_part(b"x".to_vec(), "image/png")),
    )
    .await
    .assert_detail(415, "Failed to read image");
    assert_eq!(
        s.get(&format!("{SP}/i/{mine}"), Some(&user)).await.body["name"],
        "Mine",
        "nothing changed"
    );
    // Nothing of the failed creates was stored.
    let r = s.get(&format!("{SP}/"), Some(&user)).await;
    assert_eq!(
        r.body
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] == "user")
            .count(),
        1
    );
}

#[tokio::test]
async fn access_matrix_in_multiuser_mode() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, owner) = s.user_with_token(&admin, "owner@example.com").await;
    let (_, other) = s.user_with_token(&admin, "other@example.com").await;
    let private = create_ok(&s, Some(&owner), "Private", false).await;
    let public = create_ok(&s, Some(&owner), "Public", true).await;
    let default = s
        .get(&format!("{SP}/"), Some(&owner))
        .await
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "default")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Listing: the other user sees public and default presets, not the private one.
    let other_list = listed_names(&s.get(&format!("{SP}/"), Some(&other)).await);
    assert!(
        other_list.contains(&"Public".to_owned()) && !other_list.contains(&"Private".to_owned())
    );
    assert_eq!(other_list.len(), 7);
    assert_eq!(
        listed_names(&s.get(&format!("{SP}/"), Some(&owner)).await).len(),
        8
    );
    assert_eq!(
        listed_names(&s.get(&format!("{SP}/"), Some(&admin)).await).len(),
        8
    );
    s.get(&format!("{SP}/"), None)
        .await
        .assert_detail(401, "Authentication required");

    // (preset, caller, get status, write refusal or None when allowed)
    let cases: [(&str, &str, u16, Option<&str>); 8] = [
        (&private, &owner, 200, None),
        (
            &private,
            &other,
            403,
            Some("Not authorized to modify this style preset"),
        ),
        (&private, &admin, 200, None),
        (
            &public,
            &other,
            200,
            Some("Not authorized to modify this style preset"),
        ),
        (&public, &owner, 200, None),
        (
            &default,
            &other,
            200,
            Some("Default style presets cannot be modified"),
        ),
        (
            &default,
            &owner,
            200,
            Some("Default style presets cannot be modified"),
        ),
        (&default, &admin, 200, None),
    ];
    for (id, token, read, refusal) in cases {
        let r = s.get(&format!("{SP}/i/{id}"), Some(token)).await;
        assert_eq!(r.status, read, "{}", r.text);
        if read == 403 {
            r.assert_detail(403, "Not authorized to access this style preset");
            s.get(&format!("{SP}/i/{id}/image"), Some(token))
                .await
                .assert_detail(403, "Not authorized to access this style preset");
        }
        let r = update(
            &s,
            Some(token),
            id,
            data("Changed", "user", Some(id == public.as_str())),
            None,
        )
        .await;
        match refusal {
            Some(detail) => {
                r.assert_detail(403, detail);
                s.delete(&format!("{SP}/i/{id}"), Some(token))
                    .await
                    .assert_detail(403, detail);
            }
            None => assert_eq!(r.status, 200, "{}", r.text),
        }
    }
    // Anonymous callers are refused everywhere.
    s.get(&format!("{SP}/i/{public}"), None)
        .await
        .assert_detail(401, "Authentication required");
    s.delete(&format!("{SP}/i/{public}"), None)
        .await
        .assert_detail(401, "Authentication required");
    create(&s, None, data("x", "user", None), None)
        .await
        .assert_detail(401, "Authentication required");
    // Admins create defaults, delete others' presets (defaults included).
    let r = create(
        &s,
        Some(&admin),
        data("Admin default", "default", None),
        None,
    )
    .await;
    assert_eq!((r.status, r.body["type"].clone()), (200, json!("default")));
    assert_eq!(
        s.delete(&format!("{SP}/i/{private}"), Some(&admin))
            .await
            .status,
        200
    );
    assert_eq!(
        s.delete(&format!("{SP}/i/{default}"), Some(&admin))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn import_and_export_are_admin_only() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, user) = s.user_with_token(&admin, "u@example.com").await;
    create_ok(&s, Some(&user), "Quoted, \"one\"", true).await;

    import(&s, Some(&user), b"name\nx\n", "text/csv")
        .await
        .assert_detail(403, "Admin privileges required");
    s.get(&format!("{SP}/export"), Some(&user))
        .await
        .assert_detail(403, "Admin privileges required");
    s.get(&format!("{SP}/export"), None)
        .await
        .assert_detail(401, "Authentication required");

    let csv = "name,prompt,negative_prompt\r\n  From CSV , p1 ,n1\r\n\"Multi, line\",\"a\nb\",\r\n";
    let r = import(&s, Some(&admin), csv.as_bytes(), "text/csv").await;
    assert_eq!((r.status, r.body.clone()), (200, Value::Null), "{}", r.text);
    let json_file = json!([{"name": "From JSON", "positive_prompt": "p2"}]).to_string();
    assert_eq!(
        import(&s, Some(&admin), json_file.as_bytes(), "application/json")
            .await
            .status,
        200
    );
    let mine = s.get(&format!("{SP}/"), Some(&admin)).await.body;
    let imported = mine
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "From CSV")
        .unwrap();
    assert_eq!(
        (
            imported["preset_data"].clone(),
            imported["type"].clone(),
            imported["is_public"].clone()
        ),
        (
            json!({"positive_prompt": "p1", "negative_prompt": "n1"}),
            json!("user"),
            json!(false)
        )
    );
    assert_ne!(imported["user_id"], uid.as_str());
    assert!(!listed_names(&s.get(&format!("{SP}/"), Some(&user)).await)
        .contains(&"From CSV".to_owned()));

    let r = import(&s, Some(&admin), b"name\nx\n", "text/plain").await;
    assert_eq!((r.status, r.body.clone()), (415, json!({"detail": ""})));
    let csv_error = "Invalid CSV format: must include columns 'name', 'prompt', and 'negative_prompt' and name cannot be blank";
    let json_error = "Invalid JSON format: must be a list of objects with keys 'name', 'prompt', and 'negative_prompt' and name cannot be blank";
    for bad in [
        &b"prompt,negative_prompt\np,n\n"[..],
        b"name,prompt,color\nx,p,red\n",
        b"name,prompt\n  ,p\n",
        b"\"open",
    ] {
        import(&s, Some(&admin), bad, "text/csv")
            .await
            .assert_detail(400, csv_error);
    }
    for bad in [
        &br#"{"name": "x"}"#[..],
        br#"[{"name": " "}]"#,
        br#"[{"name": "x", "other": 1}]"#,
        b"nope",
    ] {
        import(&s, Some(&admin), bad, "application/json")
            .await
            .assert_detail(400, json_error);
    }
    let r = send_form(
        &s,
        Method::POST,
        &format!("{SP}/import"),
        Some(&admin),
        Form::new().text("x", "y"),
    )
    .await;
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", "file"]));

    let (status, headers, bytes) = s
        .get_bytes(&format!("{SP}/export"), Some(&admin), &[])
        .await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=prompt_templates.csv"
    );
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.starts_with("name,prompt,negative_prompt\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\"Quoted, \"\"one\"\"\",a {prompt},blurry\r\n"),
        "{text}"
    );
    assert!(text.contains("\"Multi, line\",\"a\nb\",\r\n"), "{text}");
    assert!(
        !text.contains("Pixel Art"),
        "default presets are not exported"
    );
    assert_eq!(text.matches("\r\n").count(), 5);
}

#[tokio::test]
async fn single_user_mode_allows_everything_and_legacy_presets_stay_private() {
    let s = TestServer::single_user().await;
    let solo = create_ok(&s, None, "Solo", false).await;
    let r = create(&s, None, data("Solo default", "default", None), None).await;
    assert_eq!(r.status, 200);
    let default = s.get(&format!("{SP}/"), None).await.body[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        update(
            &s,
            None,
            &default,
            data("Edited default", "user", None),
            None
        )
        .await
        .status,
        200
    );
    let r = import(&s, None, b"name,prompt\nImported,p\n", "text/csv").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.get(&format!("{SP}/export"), None).await.status, 200);
    let root = s.stop().await;

    // Multi-user: the `system` preset is private, so admins only.
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let admin = s.setup_admin().await;
    let (_, user) = s.user_with_token(&admin, "u@example.com").await;
    s.get(&format!("{SP}/i/{solo}"), Some(&user))
        .await
        .assert_detail(403, "Not authorized to access this style preset");
    assert_eq!(
        s.get(&format!("{SP}/i/{solo}"), Some(&admin)).await.body["user_id"],
        "system"
    );
    let names = listed_names(&s.get(&format!("{SP}/"), Some(&user)).await);
    assert!(!names.contains(&"Solo".to_owned()) && !names.contains(&"Imported".to_owned()));
    assert!(
        !names.iter().any(|n| n.contains("default")),
        "defaults were recreated: {names:?}"
    );
    assert_eq!(names.len(), 6);
}
