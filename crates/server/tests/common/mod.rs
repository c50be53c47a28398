//! The integration-test harness: a real server on 127.0.0.1:0 over a fresh root with a real
//! SQLite file, and a small typed client.

#![allow(dead_code)]

pub mod socket;

use atelier_server::config::Config;
use atelier_server::passwords::Hasher;
use atelier_server::RunningServer;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

/// A small opaque PNG (no text chunks).
pub fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
        w,
        h,
        image::Rgba([9, 9, 9, 255]),
    ));
    atelier_server::media::encode_png(&img, &atelier_server::media::PngText::default(), 1)
        .expect("png")
}

/// bcrypt cost used by test servers: the production cost (12) is checked by its own tests;
/// the rest of the suite uses a cheap one so it runs in seconds.
pub const TEST_COST: u32 = 4;

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "Admin-Pass-1";

pub struct TestServer {
    pub base: String,
    pub root: TempDir,
    pub client: reqwest::Client,
    running: Option<RunningServer>,
}

/// A response: status, headers and the body as JSON (`Value::Null` when empty or not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    /// Reads a response: status, headers, and the body as text and (when it is) JSON.
    pub async fn read(res: reqwest::Response) -> Self {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn detail(&self) -> &Value {
        &self.body["detail"]
    }

    /// Asserts the status and the exact `{"detail": …}` body.
    #[track_caller]
    pub fn assert_detail(&self, status: u16, detail: &str) {
        assert_eq!(
            (self.status, &self.body),
            (status, &json!({ "detail": detail })),
            "unexpected response: {}",
            self.text
        );
    }
}

pub struct Builder {
    root: TempDir,
    config: Config,
    cost: u32,
    paused: bool,
}

impl Builder {
    pub fn multiuser(mut self, on: bool) -> Self {
        self.config.set_multiuser(on);
        self
    }

    pub fn strict(mut self, on: bool) -> Self {
        self.config.set_strict_password_checking(on);
        self
    }

    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.config
            .set_value(key, value)
            .expect("valid config value");
        self
    }

    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// Starts with the queue processor paused, so enqueued items stay pending.
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }

    pub async fn start(self) -> TestServer {
        let mut state = atelier_server::build_state(self.config)
            .await
            .expect("state");
        state.hasher = Hasher::new(self.cost);
        state.processor.set_paused(self.paused);
        let listener = atelier_server::bind("127.0.0.1", 0).await.expect("bind");
        let running = atelier_server::start(state, listener).expect("start");
        TestServer {
            base: format!("http://{}", running.addr),
            root: self.root,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            running: Some(running),
        }
    }
}

impl TestServer {
    /// A builder over a fresh temporary root (single-user by default, like the product).
    pub fn builder() -> Builder {
        let root = tempfile::tempdir().expect("temp root");
        let config = Config::for_test(root.path());
        Builder {
            root,
            config,
            cost: TEST_COST,
            paused: false,
        }
    }

    pub async fn single_user() -> Self {
        Self::builder().start().await
    }

    pub async fn multiuser() -> Self {
        Self::builder().multiuser(true).start().await
    }

    /// A builder over an existing root (to restart on the same database).
    pub fn builder_at(root: TempDir) -> Builder {
        let config = Config::for_test(root.path());
        Builder {
            root,
            config,
            cost: TEST_COST,
            paused: false,
        }
    }

    pub fn state(&self) -> &atelier_server::state::AppState {
        &self.running.as_ref().expect("running").state
    }

    /// Stops the server and hands back its root for a restart.
    pub async fn stop(mut self) -> TempDir {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        assert_no_write_lock(self.root.path()).await;
        self.root
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with optional bearer token, JSON body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Resp::read(req.send().await.expect("request")).await
    }

    /// Sends raw bytes with the given content type (None: no Content-Type header).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path)).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        Resp::read(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Method::GET, path, token, None, &[]).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.send(Method::POST, path, token, Some(body), &[]).await
    }

    pub async fn post_empty(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Method::POST, path, token, None, &[]).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.send(Method::PATCH, path, token, Some(body), &[]).await
    }

    pub async fn put_empty(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Method::PUT, path, token, None, &[]).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Method::DELETE, path, token, None, &[]).await
    }

    /// Runs `/auth/setup` for the default admin and logs in; returns the admin's token.
    pub async fn setup_admin(&self) -> String {
        let r = self
            .post(
                "/api/v1/auth/setup",
                None,
                &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "display_name": "Admin"}),
            )
            .await;
        assert_eq!(r.status, 200, "setup failed: {}", r.text);
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Logs in and returns the token (asserting success).
    pub async fn login(&self, email: &str, password: &str) -> String {
        let r = self
            .post(
                "/api/v1/auth/login",
                None,
                &json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(r.status, 200, "login failed: {}", r.text);
        r.body["token"].as_str().expect("token").to_owned()
    }

    /// Creates a user through the admin API; returns the UserDTO.
    pub async fn create_user(
        &self,
        admin: &str,
        email: &str,
        password: &str,
        is_admin: bool,
    ) -> Value {
        let r = self
            .post(
                "/api/v1/auth/users",
                Some(admin),
                &json!({"email": email, "password": password, "is_admin": is_admin}),
            )
            .await;
        assert_eq!(r.status, 201, "create failed: {}", r.text);
        r.body
    }

    /// Creates a user and logs in as them; returns `(user_id, token)`.
    pub async fn user_with_token(&self, admin: &str, email: &str) -> (String, String) {
        let user = self.create_user(admin, email, "User-Pass-1", false).await;
        let token = self.login(email, "User-Pass-1").await;
        (user["user_id"].as_str().expect("id").to_owned(), token)
    }

    /// Uploads `bytes` as the multipart `file` with the given query string.
    pub async fn upload(
        &self,
        token: Option<&str>,
        query: &str,
        bytes: Vec<u8>,
        mime: &str,
    ) -> Resp {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name("upload.png")
            .mime_str(mime)
            .expect("mime");
        let form = reqwest::multipart::Form::new().part("file", part);
        let mut req = self
            .client
            .post(self.url(&format!("/api/v1/images/upload?{query}")))
            .multipart(form);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Resp::read(req.send().await.expect("request")).await
    }

    /// Uploads a small general image (onto `board`, if given); returns its name.
    pub async fn upload_image(&self, token: Option<&str>, board: Option<&str>) -> String {
        let mut query = "image_category=general&is_intermediate=false".to_owned();
        if let Some(b) = board {
            query.push_str(&format!("&board_id={b}"));
        }
        let r = self
            .upload(token, &query, png_bytes(4, 4), "image/png")
            .await;
        assert_eq!(r.status, 201, "upload failed: {}", r.text);
        r.body["image_name"].as_str().expect("name").to_owned()
    }

    /// Creates a board; returns its DTO.
    pub async fn create_board(&self, token: Option<&str>, name: &str) -> Value {
        let r = self
            .send(
                Method::POST,
                &format!("/api/v1/boards/?board_name={name}"),
                token,
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, 201, "board creation failed: {}", r.text);
        r.body
    }

    /// Sets a board's visibility (asserting success).
    pub async fn set_visibility(&self, token: Option<&str>, board_id: &str, visibility: &str) {
        let r = self
            .patch(
                &format!("/api/v1/boards/{board_id}"),
                token,
                &json!({"board_visibility": visibility}),
            )
            .await;
        assert_eq!(r.status, 201, "visibility change failed: {}", r.text);
    }

    /// GETs raw bytes: status, headers, body.
    pub async fn get_bytes(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, HeaderMap, Vec<u8>) {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.bytes().await.expect("body").to_vec())
    }
}

/// A stopped server must leave no transaction open behind it: its database must take a
/// writer at once (a connection cancelled mid-`BEGIN` once kept the write lock for good).
async fn assert_no_write_lock(root: &std::path::Path) {
    use sqlx::{ConnectOptions, Connection};
    let db = root.join("databases").join("atelier.db");
    if !db.exists() {
        return;
    }
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&db)
        .busy_timeout(std::time::Duration::from_secs(2))
        .connect()
        .await
        .expect("open the stopped server's database");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .expect("the stopped server left the database write-locked");
    sqlx::query("ROLLBACK")
        .execute(&mut conn)
        .await
        .expect("rollback");
    conn.close().await.expect("close");
}
