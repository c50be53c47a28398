//! The workflow library (workflows-and-state.md §1): CRUD, validation, default workflows,
//! sharing and the shared read-only view, listings, tags and counts, thumbnails, and the
//! access matrix of §1.7 for anonymous, owner, other user and admin, across mode switches.

use crate::common::*;
use reqwest::Method;
use serde_json::{json, Value};

const WF: &str = "/api/v1/workflows";

/// A valid `WorkflowWithoutID` document.
fn doc(name: &str, tags: &str) -> Value {
    json!({
        "name": name, "author": "me", "description": format!("{name} description"),
        "version": "1.0.0", "contact": "", "tags": tags, "notes": "",
        "exposedFields": [{"nodeId": "n1", "fieldName": "prompt"}],
        "meta": {"version": "3.0.0", "category": "user"},
        "nodes": [{"id": "n1", "type": "invocation", "data": {"type": "compel"}}],
        "edges": [],
    })
}

async fn create(s: &TestServer, token: Option<&str>, name: &str, tags: &str) -> Value {
    let r = s
        .post(
            &format!("{WF}/"),
            token,
            &json!({"workflow": doc(name, tags)}),
        )
        .await;
    assert_eq!(r.status, 200, "create failed: {}", r.text);
    r.body
}

fn id(w: &Value) -> String {
    w["workflow_id"].as_str().unwrap().to_owned()
}

async fn set_public(s: &TestServer, token: Option<&str>, wid: &str, on: bool) -> Resp {
    s.patch(
        &format!("{WF}/i/{wid}/is_public"),
        token,
        &json!({"is_public": on}),
    )
    .await
}

async fn list(s: &TestServer, token: Option<&str>, query: &str) -> Value {
    let r = s.get(&format!("{WF}/?{query}"), token).await;
    assert_eq!(r.status, 200, "list failed: {}", r.text);
    r.body
}

fn names(page: &Value) -> Vec<String> {
    let mut v: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

async fn upload_thumbnail(
    s: &TestServer,
    token: Option<&str>,
    wid: &str,
    bytes: Vec<u8>,
    mime: &str,
) -> Resp {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name("thumb.png")
        .mime_str(mime)
        .unwrap();
    let form = reqwest::multipart::Form::new().part("image", part);
    let mut req = s
        .client
        .put(s.url(&format!("{WF}/i/{wid}/thumbnail")))
        .multipart(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Resp::read(req.send().await.unwrap()).await
}

#[tokio::test]
async fn crud_round_trip_in_single_user_mode() {
    let s = TestServer::single_user().await;
    let mut body = doc("Alpha", "a, b");
    body["form_fields"] = json!({"x": 1});
    body["id"] = Value::Null;
    let r = s
        .post(&format!("{WF}/"), None, &json!({"workflow": body}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let w = r.body;
    let wid = id(&w);
    assert_eq!(w["user_id"], "system");
    assert_eq!(w["is_public"], true, "single-user creates are public");
    assert_eq!(w["opened_at"], Value::Null);
    assert_eq!(w["name"], "Alpha");
    assert_eq!(w["workflow"]["id"], wid.as_str());
    assert_eq!(w["workflow"]["form"], Value::Null);
    assert!(
        w["workflow"].get("form_fields").is_none(),
        "unknown keys dropped"
    );
    let keys: Vec<&String> = w.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "workflow_id",
            "name",
            "created_at",
            "updated_at",
            "opened_at",
            "user_id",
            "is_public",
            "workflow"
        ]
    );

    let r = s.get(&format!("{WF}/i/{wid}"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["thumbnail_url"], Value::Null);
    assert_eq!(
        r.body["call_saved_workflow_compatibility"],
        json!({"is_callable": false, "reason": "missing_workflow_return",
               "message": "The workflow must contain exactly one workflow_return node."})
    );
    assert_eq!(r.body["opened_at"], Value::Null, "get does not open");

    // Update targets the body's id; the path id is ignored.
    let mut changed = w["workflow"].clone();
    changed["name"] = json!("Beta");
    let r = s
        .patch(
            &format!("{WF}/i/not-the-id"),
            None,
            &json!({"workflow": changed}),
        )
        .await;
    assert_eq!((r.status, r.body["name"].clone()), (200, json!("Beta")));
    assert_eq!(r.body["workflow_id"], wid.as_str());

    let r = s
        .send(
            Method::PUT,
            &format!("{WF}/i/{wid}/opened_at"),
            None,
            None,
            &[],
        )
        .await;
    assert_eq!((r.status, r.body.clone()), (200, Value::Null));
    let r = s.get(&format!("{WF}/i/{wid}"), None).await;
    assert!(r.body["opened_at"].is_string());
    assert_ne!(r.body["updated_at"], w["updated_at"]);

    let r = s.delete(&format!("{WF}/i/{wid}"), None).await;
    assert_eq!((r.status, r.body.clone()), (200, Value::Null));
    s.get(&format!("{WF}/i/{wid}"), None)
        .await
        .assert_detail(404, "Workflow not found");
    s.delete(&format!("{WF}/i/{wid}"), None)
        .await
        .assert_detail(404, "Workflow not found");
    let mut ghost = changed.clone();
    ghost["id"] = json!("nope");
    s.patch(&format!("{WF}/i/nope"), None, &json!({"workflow": ghost}))
        .await
        .assert_detail(404, "Workflow not found");
    // The bare collection path redirects.
    let r = s.get(WF, None).await;
    assert_eq!(r.status, 307);
}

#[tokio::test]
async fn bad_documents_are_422_and_default_category_is_400() {
    let s = TestServer::single_user().await;
    let post = |body: Value| {
        let s = &s;
        async move { s.post(&format!("{WF}/"), None, &body).await }
    };
    let r = post(json!({})).await;
    assert_eq!(
        r.body,
        json!({"detail": [{"type": "missing", "loc": ["body", "workflow"], "msg": "Field required", "input": {}}]})
    );
    let r = post(json!({"workflow": []})).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["detail"][0]["type"], "model_type");

    let mut bad = doc("x", "");
    bad["meta"]["version"] = json!("1.0");
    bad["name"] = json!(3);
    bad.as_object_mut().unwrap().remove("edges");
    let r = post(json!({"workflow": bad})).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let issues: Vec<(Value, Value)> = r.body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["type"].clone(), i["loc"].clone()))
        .collect();
    assert_eq!(
        issues,
        [
            (json!("string_type"), json!(["body", "workflow", "name"])),
            (
                json!("value_error"),
                json!(["body", "workflow", "meta", "version"])
            ),
            (json!("missing"), json!(["body", "workflow", "edges"])),
        ]
    );
    assert_eq!(
        r.body["detail"][1]["msg"],
        "Value error, Invalid workflow meta version: 1.0"
    );

    let mut two = doc("two returns", "");
    let ret = json!({"id": "r", "type": "invocation", "data": {"type": "workflow_return"}});
    two["nodes"] = json!([ret, ret]);
    assert_eq!(post(json!({"workflow": two})).await.status, 422);
    let mut cat = doc("x", "");
    cat["meta"]["category"] = json!("system");
    let r = post(json!({"workflow": cat})).await;
    assert_eq!(
        r.body["detail"][0]["loc"],
        json!(["body", "workflow", "meta", "category"])
    );

    let mut default = doc("sneaky default", "");
    default["meta"]["category"] = json!("default");
    post(json!({"workflow": default}))
        .await
        .assert_detail(400, "Default workflows cannot be created via this method");
    let all = list(&s, None, "query=sneaky").await;
    assert_eq!(all["total"], 0, "nothing stored");

    // Update needs an id in the document.
    let w = create(&s, None, "has id", "").await;
    let r = s
        .patch(
            &format!("{WF}/i/{}", id(&w)),
            None,
            &json!({"workflow": doc("no id", "")}),
        )
        .await;
    assert_eq!(
        r.body["detail"][0]["loc"],
        json!(["body", "workflow", "id"])
    );
    let r = s
        .patch(&format!("{WF}/i/{}/is_public", id(&w)), None, &json!({}))
        .await;
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", "is_public"]));
    let r = s
        .patch(
            &format!("{WF}/i/{}/is_public", id(&w)),
            None,
            &json!({"is_public": "maybe"}),
        )
        .await;
    assert_eq!(r.body["detail"][0]["type"], "bool_parsing");
    // Query validation.
    let r = s
        .get(
            &format!("{WF}/?order_by=bogus&per_page=0&has_been_opened=x"),
            None,
        )
        .await;
    let kinds: Vec<&str> = r.body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["greater_than_equal", "enum", "bool_parsing"]);
    let r = s.get(&format!("{WF}/counts_by_tag"), None).await;
    assert_eq!(
        r.body,
        json!({"detail": [{"type": "missing", "loc": ["query", "tags"], "msg": "Field required", "input": null}]})
    );
    let r = s.get(&format!("{WF}/counts_by_category"), None).await;
    assert_eq!(r.body["detail"][0]["loc"], json!(["query", "categories"]));
    let r = s
        .get(&format!("{WF}/counts_by_category?categories=bogus"), None)
        .await;
    assert_eq!(r.body["detail"][0]["type"], "enum");
}

#[tokio::test]
async fn default_workflows_are_synced_and_protected() {
    let s = TestServer::single_user().await;
    let defaults = list(&s, None, "categories=default").await;
    assert_eq!(defaults["total"], 3);
    let first = defaults["items"][0].clone();
    let did = id(&first);
    assert!(did.starts_with("default_"), "{did}");
    assert_eq!(
        (first["category"].clone(), first["user_id"].clone()),
        (json!("default"), json!("system"))
    );
    let callable = list(&s, None, "categories=default&callable=true").await;
    assert_eq!(callable["total"], 1);
    assert_eq!(
        callable["items"][0]["call_saved_workflow_compatibility"],
        json!({"is_callable": true, "reason": "ok", "message": null})
    );
    assert_eq!(
        list(&s, None, "categories=default&callable=false").await["total"],
        2
    );

    // Not through the API, even for the (single-user) administrator.
    let full = s.get(&format!("{WF}/i/{did}"), None).await.body;
    let mut changed = full["workflow"].clone();
    changed["name"] = json!("Hijacked");
    s.patch(
        &format!("{WF}/i/{did}"),
        None,
        &json!({"workflow": changed.clone()}),
    )
    .await
    .assert_detail(400, "Default workflows cannot be updated via this method");
    changed["meta"]["category"] = json!("user");
    s.patch(
        &format!("{WF}/i/{did}"),
        None,
        &json!({"workflow": changed}),
    )
    .await
    .assert_detail(400, "Default workflows cannot be updated via this method");
    s.delete(&format!("{WF}/i/{did}"), None)
        .await
        .assert_detail(400, "Default workflows cannot be deleted via this method");
    let r = set_public(&s, None, &did, true).await;
    assert_eq!(
        (r.status, r.body["workflow"]["tags"].clone()),
        (200, full["workflow"]["tags"].clone())
    );

    // A stale default row disappears at the next start; ids stay stable.
    let stale = json!({"id": "default_stale", "name": "Stale", "tags": "", "description": "",
                       "meta": {"version": "3.0.0", "category": "default"}});
    s.state()
        .store
        .insert_workflow(
            "default_stale",
            &stale.to_string(),
            &atelier_domain::UserId::new("system"),
            false,
        )
        .await
        .unwrap();
    assert_eq!(list(&s, None, "categories=default").await["total"], 4);
    let root = s.stop().await;
    let s = TestServer::builder_at(root).start().await;
    let again = list(&s, None, "categories=default").await;
    assert_eq!(again["total"], 3);
    assert_eq!(names(&again), names(&defaults));
    assert!(again["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["workflow_id"] == did.as_str()));
}

/// Multi-user fixture: admin, owner and other user tokens.
struct Users {
    admin: String,
    owner_id: String,
    owner: String,
    other: String,
}

async fn users(s: &TestServer) -> Users {
    let admin = s.setup_admin().await;
    let (owner_id, owner) = s.user_with_token(&admin, "owner@example.com").await;
    let (_, other) = s.user_with_token(&admin, "other@example.com").await;
    Users {
        admin,
        owner_id,
        owner,
        other,
    }
}

#[tokio::test]
async fn access_matrix_in_multiuser_mode() {
    // A legacy workflow created in single-user mode: `system`-owned and public.
    let s = TestServer::single_user().await;
    let legacy = id(&create(&s, None, "Legacy", "").await);
    let root = s.stop().await;
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let u = users(&s).await;
    let private = create(&s, Some(&u.owner), "Private", "").await;
    assert_eq!(
        (private["is_public"].clone(), private["user_id"].clone()),
        (json!(false), json!(u.owner_id.clone()))
    );
    let private = id(&private);
    let shared = id(&create(&s, Some(&u.owner), "Shared", "").await);
    assert_eq!(
        set_public(&s, Some(&u.owner), &shared, true).await.status,
        200
    );
    let default = id(&list(&s, Some(&u.owner), "categories=default").await["items"][0]);

    // (workflow, caller, expected GET status)
    let reads = [
        (&private, &u.owner, 200),
        (&private, &u.other, 403),
        (&private, &u.admin, 200),
        (&shared, &u.other, 200),
        (&default, &u.other, 200),
        (&legacy, &u.other, 200),
        (&legacy, &u.admin, 200),
    ];
    for (wid, token, status) in reads {
        let r = s.get(&format!("{WF}/i/{wid}"), Some(token)).await;
        assert_eq!(r.status, status, "GET {wid}: {}", r.text);
        if status == 403 {
            r.assert_detail(403, "Not authorized to access this workflow");
        }
    }
    s.get(&format!("{WF}/i/{private}"), None)
        .await
        .assert_detail(401, "Authentication required");
    s.get(&format!("{WF}/i/{private}"), Some("garbage"))
        .await
        .assert_detail(401, "Invalid or expired token");

    // Every write by the other user is refused, whatever the workflow's sharing.
    for wid in [&private, &shared, &default, &legacy] {
        let full = s.get(&format!("{WF}/i/{wid}"), Some(&u.admin)).await.body;
        let r = s
            .patch(
                &format!("{WF}/i/{wid}"),
                Some(&u.other),
                &json!({"workflow": full["workflow"]}),
            )
            .await;
        r.assert_detail(403, "Not authorized to update this workflow");
        set_public(&s, Some(&u.other), wid, false)
            .await
            .assert_detail(403, "Not authorized to update this workflow");
        s.send(
            Method::PUT,
            &format!("{WF}/i/{wid}/opened_at"),
            Some(&u.other),
            None,
            &[],
        )
        .await
        .assert_detail(403, "Not authorized to update this workflow");
        upload_thumbnail(&s, Some(&u.other), wid, png_bytes(8, 8), "image/png")
            .await
            .assert_detail(403, "Not authorized to update this workflow");
        s.delete(&format!("{WF}/i/{wid}/thumbnail"), Some(&u.other))
            .await
            .assert_detail(403, "Not authorized to update this workflow");
        s.delete(&format!("{WF}/i/{wid}"), Some(&u.other))
            .await
            .assert_detail(403, "Not authorized to delete this workflow");
        // Anonymous callers never get past the guard.
        s.delete(&format!("{WF}/i/{wid}"), None)
            .await
            .assert_detail(401, "Authentication required");
    }
    // Unknown ids are 404 for everyone, before any access check.
    s.delete(&format!("{WF}/i/missing"), Some(&u.other))
        .await
        .assert_detail(404, "Workflow not found");
    set_public(&s, Some(&u.other), "missing", true)
        .await
        .assert_detail(404, "Workflow not found");

    // The owner and the admin may write; the admin may edit the legacy workflow.
    for (wid, token) in [
        (&private, &u.owner),
        (&shared, &u.admin),
        (&legacy, &u.admin),
    ] {
        let r = s
            .send(
                Method::PUT,
                &format!("{WF}/i/{wid}/opened_at"),
                Some(token),
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let full = s.get(&format!("{WF}/i/{wid}"), Some(token)).await.body;
        let mut w = full["workflow"].clone();
        w["notes"] = json!("edited");
        let r = s
            .patch(
                &format!("{WF}/i/{wid}"),
                Some(token),
                &json!({"workflow": w}),
            )
            .await;
        assert_eq!(
            (r.status, r.body["workflow"]["notes"].clone()),
            (200, json!("edited"))
        );
        assert_eq!(
            r.body["user_id"], full["user_id"],
            "editing keeps the owner"
        );
    }
    // Admin may delete others' workflows; the owner their own.
    assert_eq!(
        s.delete(&format!("{WF}/i/{shared}"), Some(&u.admin))
            .await
            .status,
        200
    );
    assert_eq!(
        s.delete(&format!("{WF}/i/{private}"), Some(&u.owner))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn listings_scope_views_tags_and_counts() {
    let s = TestServer::single_user().await;
    create(&s, None, "Legacy", "old").await;
    let root = s.stop().await;
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let u = users(&s).await;
    let mine = id(&create(&s, Some(&u.owner), "Mine", "portrait, Sketch").await);
    let shared = id(&create(&s, Some(&u.owner), "Mine shared", "landscape").await);
    create(&s, Some(&u.other), "Theirs", "portrait").await;
    let r = set_public(&s, Some(&u.owner), &shared, true).await;
    assert_eq!(r.body["workflow"]["tags"], "landscape, shared");
    assert_eq!(r.body["is_public"], true);

    // "yours": own rows only for users, every user row for admins.
    assert_eq!(
        names(&list(&s, Some(&u.owner), "categories=user").await),
        ["Mine", "Mine shared"]
    );
    assert_eq!(
        names(&list(&s, Some(&u.other), "categories=user").await),
        ["Theirs"]
    );
    assert_eq!(
        names(&list(&s, Some(&u.admin), "categories=user").await),
        ["Legacy", "Mine", "Mine shared", "Theirs"]
    );
    // "shared": every public user workflow, for everyone.
    for token in [&u.owner, &u.other, &u.admin] {
        assert_eq!(
            names(&list(&s, Some(token), "categories=user&is_public=true").await),
            ["Legacy", "Mine shared"]
        );
    }
    // No categories: own rows plus defaults.
    let everything = list(&s, Some(&u.other), "").await;
    assert_eq!(everything["total"], 4);
    // "recent": opened ones, defaults included.
    s.send(
        Method::PUT,
        &format!("{WF}/i/{mine}/opened_at"),
        Some(&u.owner),
        None,
        &[],
    )
    .await;
    let recent = list(
        &s,
        Some(&u.owner),
        "categories=user&categories=default&has_been_opened=true",
    )
    .await;
    assert_eq!(names(&recent), ["Mine"]);
    assert_eq!(
        list(&s, Some(&u.other), "categories=user&has_been_opened=true").await["total"],
        0
    );

    // Filters: tags (case-insensitive substring), free-text query.
    assert_eq!(
        names(&list(&s, Some(&u.owner), "tags=SKETCH").await),
        ["Mine"]
    );
    assert_eq!(
        names(&list(&s, Some(&u.admin), "categories=user&tags=portrait").await),
        ["Mine", "Theirs"]
    );
    assert_eq!(
        names(&list(&s, Some(&u.owner), "query=%20shared%20").await),
        ["Mine shared"]
    );
    assert_eq!(
        names(&list(&s, Some(&u.owner), "query=description&categories=user").await),
        ["Mine", "Mine shared"]
    );

    // Paging and ordering.
    let page = list(
        &s,
        Some(&u.admin),
        "categories=user&per_page=3&page=1&order_by=name&direction=ASC",
    )
    .await;
    assert_eq!(
        (
            page["page"].clone(),
            page["pages"].clone(),
            page["per_page"].clone(),
            page["total"].clone()
        ),
        (json!(1), json!(2), json!(3), json!(4))
    );
    assert_eq!(names(&page), ["Theirs"]);
    let all = list(
        &s,
        Some(&u.admin),
        "categories=user&order_by=name&direction=DESC",
    )
    .await;
    assert_eq!(
        (all["per_page"].clone(), all["pages"].clone()),
        (json!(4), json!(1))
    );
    assert_eq!(all["items"][0]["name"], "Theirs");
    let empty = list(&s, Some(&u.admin), "categories=user&query=zzz&per_page=10").await;
    assert_eq!(
        (empty["pages"].clone(), empty["total"].clone()),
        (json!(0), json!(0))
    );
    let item = &all["items"][1];
    let keys: Vec<&String> = item.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "workflow_id",
            "name",
            "created_at",
            "updated_at",
            "opened_at",
            "user_id",
            "is_public",
            "description",
            "category",
            "tags",
            "thumbnail_url",
            "call_saved_workflow_compatibility"
        ]
    );

    // Tags and counts follow the same scope.
    let r = s
        .get(&format!("{WF}/tags?categories=user"), Some(&u.owner))
        .await;
    assert_eq!(r.body, json!(["Sketch", "landscape", "portrait", "shared"]));
    let r = s
        .get(
            &format!("{WF}/tags?categories=user&is_public=true"),
            Some(&u.other),
        )
        .await;
    assert_eq!(r.body, json!(["landscape", "old", "shared"]));
    let r = s
        .get(
            &format!("{WF}/counts_by_tag?tags=portrait&tags=shared&categories=user"),
            Some(&u.other),
        )
        .await;
    assert_eq!(r.body, json!({"portrait": 1, "shared": 0}));
    let r = s
        .get(
            &format!("{WF}/counts_by_tag?tags=portrait&tags=shared&categories=user"),
            Some(&u.admin),
        )
        .await;
    assert_eq!(r.body, json!({"portrait": 2, "shared": 1}));
    let r = s
        .get(
            &format!("{WF}/counts_by_category?categories=user&categories=default"),
            Some(&u.owner),
        )
        .await;
    assert_eq!(r.body, json!({"user": 2, "default": 3}));
    let r = s
        .get(
            &format!("{WF}/counts_by_category?categories=user&is_public=true"),
            Some(&u.other),
        )
        .await;
    assert_eq!(r.body, json!({"user": 2}));

    // Unsharing removes the tag again.
    let r = set_public(&s, Some(&u.owner), &shared, false).await;
    assert_eq!(r.body["workflow"]["tags"], "landscape");
    assert_eq!(
        names(&list(&s, Some(&u.other), "categories=user&is_public=true").await),
        ["Legacy"]
    );
    s.get(&format!("{WF}/i/{shared}"), Some(&u.other))
        .await
        .assert_detail(403, "Not authorized to access this workflow");
    s.get(&format!("{WF}/"), None)
        .await
        .assert_detail(401, "Authentication required");
}

#[tokio::test]
async fn thumbnails_upload_serve_and_delete() {
    let s = TestServer::multiuser().await;
    let u = users(&s).await;
    let wid = id(&create(&s, Some(&u.owner), "With thumb", "").await);
    // No thumbnail yet: 404 for the anonymous download and for delete.
    s.get(&format!("{WF}/i/{wid}/thumbnail"), None)
        .await
        .assert_detail(404, "Not Found");
    s.delete(&format!("{WF}/i/{wid}/thumbnail"), Some(&u.owner))
        .await
        .assert_detail(404, "Not Found");
    s.get(&format!("{WF}/i/unknown/thumbnail"), None)
        .await
        .assert_detail(404, "Not Found");

    upload_thumbnail(&s, Some(&u.owner), &wid, b"hello".to_vec(), "text/plain")
        .await
        .assert_detail(415, "Not an image");
    upload_thumbnail(&s, Some(&u.owner), &wid, b"not a png".to_vec(), "image/png")
        .await
        .assert_detail(415, "Failed to read image");
    upload_thumbnail(&s, Some(&u.owner), "unknown", png_bytes(8, 8), "image/png")
        .await
        .assert_detail(404, "Workflow not found");
    let r = s
        .send(
            Method::PUT,
            &format!("{WF}/i/{wid}/thumbnail"),
            Some(&u.owner),
            None,
            &[],
        )
        .await;
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", "image"]));

    let r = upload_thumbnail(&s, Some(&u.owner), &wid, png_bytes(600, 300), "image/png").await;
    assert_eq!((r.status, r.body.clone()), (200, Value::Null), "{}", r.text);
    let file = s
        .root
        .path()
        .join("workflow_thumbnails")
        .join(format!("{wid}.webp"));
    let stored = image::open(&file).unwrap();
    assert_eq!((stored.width(), stored.height()), (256, 128));

    let a = s.get(&format!("{WF}/i/{wid}"), Some(&u.owner)).await.body["thumbnail_url"].clone();
    let b = list(&s, Some(&u.owner), "categories=user").await["items"][0]["thumbnail_url"].clone();
    let prefix = format!("api/v1/workflows/i/{wid}/thumbnail?");
    assert!(a.as_str().unwrap().starts_with(&prefix), "{a}");
    assert!(b.as_str().unwrap().starts_with(&prefix), "{b}");
    assert_ne!(a, b, "cache-busting query changes");

    // Anyone may fetch it, even without credentials in multi-user mode.
    let (status, headers, bytes) = s
        .get_bytes(&format!("{WF}/i/{wid}/thumbnail"), None, &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["cache-control"], "max-age=31536000");
    assert_eq!(
        headers["content-disposition"],
        format!("inline; filename=\"{wid}.png\"").as_str()
    );
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WEBP");

    // Replace, then delete (the workflow deletion removes any file too).
    assert_eq!(
        upload_thumbnail(&s, Some(&u.admin), &wid, png_bytes(4, 4), "image/png")
            .await
            .status,
        200
    );
    let r = s
        .delete(&format!("{WF}/i/{wid}/thumbnail"), Some(&u.owner))
        .await;
    assert_eq!((r.status, r.body.clone()), (200, Value::Null));
    assert!(!file.exists());
    assert_eq!(
        s.get(&format!("{WF}/i/{wid}"), Some(&u.owner)).await.body["thumbnail_url"],
        Value::Null
    );
    upload_thumbnail(&s, Some(&u.owner), &wid, png_bytes(4, 4), "image/png").await;
    assert!(file.exists());
    assert_eq!(
        s.delete(&format!("{WF}/i/{wid}"), Some(&u.owner))
            .await
            .status,
        200
    );
    assert!(!file.exists());
    s.get(&format!("{WF}/i/{wid}/thumbnail"), None)
        .await
        .assert_detail(404, "Not Found");
}

#[tokio::test]
async fn owners_survive_mode_switches() {
    // Multi-user: a user's private workflow.
    let s = TestServer::multiuser().await;
    let u = users(&s).await;
    let private = id(&create(&s, Some(&u.owner), "Owner's", "").await);
    let root = s.stop().await;

    // Single-user: everything is readable and writable by `system`; new ones are public.
    let s = TestServer::builder_at(root).start().await;
    let r = s.get(&format!("{WF}/i/{private}"), None).await;
    assert_eq!(
        (r.status, r.body["user_id"].clone()),
        (200, json!(u.owner_id.clone()))
    );
    let solo = create(&s, None, "Solo", "").await;
    assert_eq!(
        (solo["user_id"].clone(), solo["is_public"].clone()),
        (json!("system"), json!(true))
    );
    let solo = id(&solo);
    assert_eq!(
        names(&list(&s, None, "categories=user").await),
        ["Owner's", "Solo"]
    );
    let root = s.stop().await;

    // Multi-user again: owners kept; the single-user workflow is shared read-only.
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let owner = s.login("owner@example.com", "User-Pass-1").await;
    let other = s.login("other@example.com", "User-Pass-1").await;
    assert_eq!(
        names(&list(&s, Some(&owner), "categories=user").await),
        ["Owner's"]
    );
    assert_eq!(
        names(&list(&s, Some(&other), "categories=user&is_public=true").await),
        ["Solo"]
    );
    assert_eq!(
        s.get(&format!("{WF}/i/{solo}"), Some(&other)).await.status,
        200
    );
    s.delete(&format!("{WF}/i/{solo}"), Some(&other))
        .await
        .assert_detail(403, "Not authorized to delete this workflow");
    s.get(&format!("{WF}/i/{private}"), Some(&other))
        .await
        .assert_detail(403, "Not authorized to access this workflow");
    assert_eq!(
        s.get(&format!("{WF}/i/{private}"), Some(&owner))
            .await
            .status,
        200
    );
}
