//! The multi-user isolation matrix (boards-images.md §4, §9): every content endpoint ×
//! caller {anonymous, owner, other user, admin} × board visibility {private, shared, public}
//! × owner {a user, the legacy `system` owner}. The expected outcome of each cell is derived
//! from the contract's predicates, written out here independently of the server's code.
//!
//! To extend: add an `Endpoint` to `ENDPOINTS` with how to call it and which predicate
//! governs it; every cell of the matrix is then checked for it.

use crate::common::*;
use reqwest::Method;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Caller {
    Anonymous,
    Owner,
    Other,
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    BoardRead,
    BoardWrite,
    BoardAdmin,
    ImageRead,
    ImageWrite,
}

/// The contract's predicates (§4) for content whose board and image share one owner.
fn allowed(rule: Rule, caller: Caller, visibility: &str) -> bool {
    let privileged = matches!(caller, Caller::Owner | Caller::Admin);
    match rule {
        Rule::BoardRead | Rule::ImageRead => privileged || visibility != "private",
        Rule::BoardWrite | Rule::ImageWrite => privileged || visibility == "public",
        Rule::BoardAdmin => privileged,
    }
}

/// One content cell: a board of some visibility with one image on it.
struct Cell {
    board: String,
    image: String,
}

/// What an endpoint call looked like from the outside.
enum Outcome {
    Status(u16),
    /// A listing or batch: whether the item was included / applied.
    Included(bool),
}

struct Endpoint {
    name: &'static str,
    rule: Rule,
    listing: bool,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        name: "GET /boards/{id}",
        rule: Rule::BoardRead,
        listing: false,
    },
    Endpoint {
        name: "GET /boards/{id}/image_names",
        rule: Rule::BoardRead,
        listing: false,
    },
    Endpoint {
        name: "GET /boards/?all=true",
        rule: Rule::BoardRead,
        listing: true,
    },
    Endpoint {
        name: "GET /images/?board_id",
        rule: Rule::BoardRead,
        listing: false,
    },
    Endpoint {
        name: "GET /gallery/items/?board_id",
        rule: Rule::BoardRead,
        listing: false,
    },
    Endpoint {
        name: "PATCH /boards/{id}",
        rule: Rule::BoardAdmin,
        listing: false,
    },
    Endpoint {
        name: "POST /images/upload?board_id",
        rule: Rule::BoardWrite,
        listing: false,
    },
    Endpoint {
        name: "POST /board_images/",
        rule: Rule::BoardWrite,
        listing: false,
    },
    Endpoint {
        name: "GET /images/i/{name}",
        rule: Rule::ImageRead,
        listing: false,
    },
    Endpoint {
        name: "GET /images/i/{name}/metadata",
        rule: Rule::ImageRead,
        listing: false,
    },
    Endpoint {
        name: "GET /images/i/{name}/workflow",
        rule: Rule::ImageRead,
        listing: false,
    },
    Endpoint {
        name: "GET /images/i/{name}/urls",
        rule: Rule::ImageRead,
        listing: false,
    },
    Endpoint {
        name: "GET /images/i/{name}/full",
        rule: Rule::ImageRead,
        listing: false,
    },
    Endpoint {
        name: "GET /images/i/{name}/thumbnail",
        rule: Rule::ImageRead,
        listing: false,
    },
    Endpoint {
        name: "POST /images/images_by_names",
        rule: Rule::ImageRead,
        listing: true,
    },
    Endpoint {
        name: "PATCH /images/i/{name}",
        rule: Rule::ImageWrite,
        listing: false,
    },
    Endpoint {
        name: "POST /images/star",
        rule: Rule::ImageWrite,
        listing: true,
    },
    Endpoint {
        name: "POST /images/download",
        rule: Rule::ImageRead,
        listing: false,
    },
];

async fn upload(s: &TestServer, token: Option<&str>, board: Option<&str>) -> Resp {
    let mut query = "image_category=general&is_intermediate=false".to_owned();
    if let Some(b) = board {
        query.push_str(&format!("&board_id={b}"));
    }
    s.upload(token, &query, png_bytes(4, 4), "image/png").await
}

/// Creates a board of `visibility` with one image, as `token` (None: single-user `system`).
async fn make_cell(s: &TestServer, token: Option<&str>, visibility: &str) -> Cell {
    let board = s.create_board(token, visibility).await["board_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let image = s.upload_image(token, Some(&board)).await;
    s.set_visibility(token, &board, visibility).await;
    Cell { board, image }
}

async fn call(
    s: &TestServer,
    ep: &Endpoint,
    token: Option<&str>,
    cell: &Cell,
    scratch: Option<&str>,
) -> Outcome {
    let (b, i) = (&cell.board, &cell.image);
    let status = |r: Resp| Outcome::Status(r.status);
    match ep.name {
        "GET /boards/{id}" => status(s.get(&format!("/api/v1/boards/{b}"), token).await),
        "GET /boards/{id}/image_names" => status(
            s.get(&format!("/api/v1/boards/{b}/image_names"), token)
                .await,
        ),
        "GET /boards/?all=true" => {
            let r = s.get("/api/v1/boards/?all=true", token).await;
            if r.status != 200 {
                return Outcome::Status(r.status);
            }
            Outcome::Included(
                r.body
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["board_id"] == json!(b)),
            )
        }
        "GET /images/?board_id" => {
            status(s.get(&format!("/api/v1/images/?board_id={b}"), token).await)
        }
        "GET /gallery/items/?board_id" => status(
            s.get(&format!("/api/v1/gallery/items/?board_id={b}"), token)
                .await,
        ),
        "PATCH /boards/{id}" => status(
            s.patch(&format!("/api/v1/boards/{b}"), token, &json!({}))
                .await,
        ),
        "POST /images/upload?board_id" => {
            let r = upload(s, token, Some(b)).await;
            if r.status == 201 {
                // Take the new image off again so the cell stays as it was.
                let name = r.body["image_name"].as_str().unwrap();
                s.send(
                    Method::DELETE,
                    &format!("/api/v1/images/i/{name}"),
                    token,
                    None,
                    &[],
                )
                .await;
            }
            Outcome::Status(r.status)
        }
        "POST /board_images/" => {
            let Some(scratch) = scratch else {
                return Outcome::Status(401);
            };
            let r = s
                .post(
                    "/api/v1/board_images/",
                    token,
                    &json!({"board_id": b, "image_name": scratch}),
                )
                .await;
            if r.status == 201 {
                s.send(
                    Method::DELETE,
                    "/api/v1/board_images/",
                    token,
                    Some(&json!({"image_name": scratch})),
                    &[],
                )
                .await;
            }
            Outcome::Status(r.status)
        }
        "POST /images/images_by_names" => {
            let r = s
                .post(
                    "/api/v1/images/images_by_names",
                    token,
                    &json!({"image_names": [i]}),
                )
                .await;
            if r.status != 200 {
                return Outcome::Status(r.status);
            }
            Outcome::Included(!r.body.as_array().unwrap().is_empty())
        }
        "PATCH /images/i/{name}" => status(
            s.patch(&format!("/api/v1/images/i/{i}"), token, &json!({}))
                .await,
        ),
        "POST /images/star" => {
            let r = s
                .post("/api/v1/images/star", token, &json!({"image_names": [i]}))
                .await;
            if r.status != 200 {
                return Outcome::Status(r.status);
            }
            let applied = !r.body["starred_images"].as_array().unwrap().is_empty();
            s.post("/api/v1/images/unstar", token, &json!({"image_names": [i]}))
                .await;
            Outcome::Included(applied)
        }
        "POST /images/download" => status(
            s.post(
                "/api/v1/images/download",
                token,
                &json!({"image_names": [i]}),
            )
            .await,
        ),
        other => {
            let route = other.trim_start_matches("GET /images/i/{name}");
            status(s.get(&format!("/api/v1/images/i/{i}{route}"), token).await)
        }
    }
}

/// The success status of each endpoint.
fn ok_status(ep: &Endpoint) -> u16 {
    match ep.name {
        "PATCH /boards/{id}" | "POST /images/upload?board_id" | "POST /board_images/" => 201,
        "POST /images/download" => 202,
        _ => 200,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_content_endpoint_honours_the_access_matrix() {
    // Legacy content first: created in single-user mode, so owned by `system`.
    let s = TestServer::single_user().await;
    let mut system_cells = Vec::new();
    for vis in ["private", "shared", "public"] {
        system_cells.push((vis, make_cell(&s, None, vis).await));
    }
    let root = s.stop().await;

    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let admin = s.setup_admin().await;
    let (_, owner) = s.user_with_token(&admin, "owner@example.com").await;
    let (_, other) = s.user_with_token(&admin, "other@example.com").await;
    let mut user_cells = Vec::new();
    for vis in ["private", "shared", "public"] {
        user_cells.push((vis, make_cell(&s, Some(&owner), vis).await));
    }
    // Each caller's own uncategorized image, for the "move onto the board" endpoint.
    let mut scratch = std::collections::HashMap::new();
    for (caller, token) in [
        (Caller::Owner, &owner),
        (Caller::Other, &other),
        (Caller::Admin, &admin),
    ] {
        let r = upload(&s, Some(token), None).await;
        scratch.insert(caller, r.body["image_name"].as_str().unwrap().to_owned());
    }

    let mut checked = 0;
    let mut failures = Vec::new();
    for (owner_kind, cells) in [("user-owned", &user_cells), ("system-owned", &system_cells)] {
        for (vis, cell) in cells.iter() {
            for caller in [
                Caller::Anonymous,
                Caller::Owner,
                Caller::Other,
                Caller::Admin,
            ] {
                // For legacy content no regular user is the owner: "owner" is just another user.
                let effective = if owner_kind == "system-owned" && caller == Caller::Owner {
                    Caller::Other
                } else {
                    caller
                };
                let token = match caller {
                    Caller::Anonymous => None,
                    Caller::Owner => Some(owner.as_str()),
                    Caller::Other => Some(other.as_str()),
                    Caller::Admin => Some(admin.as_str()),
                };
                for ep in ENDPOINTS {
                    let outcome = call(
                        &s,
                        ep,
                        token,
                        cell,
                        scratch.get(&caller).map(String::as_str),
                    )
                    .await;
                    let expected_ok =
                        effective != Caller::Anonymous && allowed(ep.rule, effective, vis);
                    let ok = match (&outcome, caller) {
                        (Outcome::Status(st), Caller::Anonymous) => *st == 401,
                        (Outcome::Status(_), _) if ep.listing => false,
                        (Outcome::Status(st), _) => {
                            if expected_ok {
                                *st == ok_status(ep)
                            } else {
                                *st == 403
                            }
                        }
                        (Outcome::Included(inc), _) => *inc == expected_ok,
                    };
                    checked += 1;
                    if !ok {
                        let got = match outcome {
                            Outcome::Status(st) => format!("status {st}"),
                            Outcome::Included(i) => format!("included={i}"),
                        };
                        failures.push(format!("{owner_kind} {vis} board, {caller:?}, {}: expected allowed={expected_ok}, got {got}", ep.name));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, 2 * 3 * 4 * ENDPOINTS.len());
}
