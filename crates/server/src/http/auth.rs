//! `/api/v1/auth/*`: status, setup, login, logout, media cookie, the caller's own account,
//! password generation and user administration (auth.md).

use crate::http::body::{Body, Fields, FromBody};
use crate::http::client::ClientInfo;
use crate::http::error::ApiError;
use crate::http::extract::{bearer_token, CurrentUser, StrictAdmin, StrictUser, MEDIA_COOKIE};
use crate::passwords::generate_password;
use crate::service::users::{CreateUserInput, Origin, UpdateUserInput};
use crate::service::{self, AdminProof};
use crate::state::AppState;
use crate::token::TokenSigner;
use atelier_domain::{User, UserId};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{NaiveDateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/status", get(status))
        .route("/api/v1/auth/setup", post(setup))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/media-cookie", post(media_cookie))
        .route("/api/v1/auth/me", get(get_me).patch(patch_me))
        .route("/api/v1/auth/generate-password", get(generate))
        .route("/api/v1/auth/users", get(list_users).post(create_user))
        .route(
            "/api/v1/auth/users/{user_id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
}

// ---- wire types -------------------------------------------------------------------------

/// A user as every auth endpoint returns it (auth.md §2.1).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserDTO {
    pub user_id: String,
    pub email: String,
    pub display_name: Option<String>,
    pub is_admin: bool,
    pub is_active: bool,
    /// Naive UTC, Python `isoformat` style (no zone suffix).
    pub created_at: String,
    pub updated_at: String,
    /// UTC with a `Z` suffix.
    pub last_login_at: Option<String>,
    pub token_epoch: i64,
}

/// Python's `datetime.isoformat()`: microseconds only when non-zero.
pub fn iso_naive(at: NaiveDateTime) -> String {
    if at.and_utc().timestamp_subsec_micros() == 0 {
        at.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
    }
}

impl From<&User> for UserDTO {
    fn from(u: &User) -> Self {
        Self {
            user_id: u.user_id.to_string(),
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            is_admin: u.is_admin,
            is_active: u.is_active,
            created_at: iso_naive(u.created_at),
            updated_at: iso_naive(u.updated_at),
            last_login_at: u.last_login_at.map(|t| format!("{}Z", iso_naive(t))),
            token_epoch: u.token_epoch,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SetupStatusResponse {
    pub setup_required: bool,
    pub multiuser_enabled: bool,
    pub strict_password_checking: bool,
    pub admin_email: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SetupResponse {
    pub success: bool,
    pub user: UserDTO,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub user: UserDTO,
    pub expires_in: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuccessResponse {
    pub success: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratePasswordResponse {
    pub password: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the body for OpenAPI; parsing goes through `FromBody`
pub struct SetupRequest {
    email: String,
    display_name: Option<String>,
    password: String,
}

impl FromBody for service::auth::SetupInput {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let email = f.required_email("email");
        let display_name = f.optional_str("display_name");
        let password = f.required_str("password");
        Some(Self {
            email: email?,
            display_name: display_name?,
            password: password?,
        })
    }
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct LoginRequest {
    email: String,
    password: String,
    #[schema(default = false)]
    remember_me: bool,
}

impl FromBody for service::auth::LoginInput {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let email = f.required_email("email");
        let password = f.required_str("password");
        let remember_me = f.bool_or("remember_me", false);
        Some(Self {
            email: email?,
            password: password?,
            remember_me: remember_me?,
        })
    }
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UserProfileUpdateRequest {
    display_name: Option<String>,
    current_password: Option<String>,
    new_password: Option<String>,
}

impl FromBody for service::auth::UpdateMeInput {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let display_name = f.optional_str("display_name");
        let current_password = f.optional_str("current_password");
        let new_password = f.optional_str("new_password");
        Some(Self {
            display_name: display_name?,
            current_password: current_password?,
            new_password: new_password?,
        })
    }
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UserCreateRequest {
    email: String,
    display_name: Option<String>,
    password: String,
    #[schema(default = false)]
    is_admin: bool,
}

impl FromBody for CreateUserInput {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let email = f.required_email("email");
        let display_name = f.optional_str("display_name");
        let password = f.required_str("password");
        let is_admin = f.bool_or("is_admin", false);
        Some(Self {
            email: email?,
            display_name: display_name?,
            password: password?,
            is_admin: is_admin?,
        })
    }
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct AdminUserUpdateRequest {
    display_name: Option<String>,
    password: Option<String>,
    is_admin: Option<bool>,
    is_active: Option<bool>,
}

impl FromBody for UpdateUserInput {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let display_name = f.optional_str("display_name");
        let password = f.optional_str("password");
        let is_admin = f.optional_bool("is_admin");
        let is_active = f.optional_bool("is_active");
        Some(Self {
            display_name: display_name?,
            password: password?,
            is_admin: is_admin?,
            is_active: is_active?,
        })
    }
}

// ---- cookies ----------------------------------------------------------------------------

/// `Set-Cookie` for the media cookie (auth.md §3.4); an empty token clears it.
pub fn media_cookie_header(
    state: &AppState,
    token: &str,
    max_age: i64,
    https: bool,
) -> HeaderValue {
    let path = format!("{}/api/v1", state.config.base_url().unwrap_or(""));
    let secure = if https { "; Secure" } else { "" };
    let cookie = if token.is_empty() {
        // Deletion, as Starlette writes it.
        let now = Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
        format!("{MEDIA_COOKIE}=\"\"; expires={now}; Max-Age=0; Path={path}; SameSite=lax{secure}")
    } else {
        format!("{MEDIA_COOKIE}={token}; HttpOnly; Max-Age={max_age}; Path={path}; SameSite=lax{secure}")
    };
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn with_cookie(mut response: Response, cookie: HeaderValue) -> Response {
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// Adds the replacement token after a password change: `X-Refreshed-Token` and a fresh cookie.
fn with_replacement_token(
    state: &AppState,
    response: Response,
    token: Option<String>,
    remember_me: bool,
    https: bool,
) -> Response {
    let Some(token) = token else { return response };
    let mut response = with_cookie(
        response,
        media_cookie_header(state, &token, crate::token::lifetime_s(remember_me), https),
    );
    if let Ok(value) = HeaderValue::from_str(&token) {
        response
            .headers_mut()
            .insert(crate::http::refresh::REFRESHED_TOKEN, value);
    }
    response
}

// ---- handlers ---------------------------------------------------------------------------

/// Whether setup is needed and which mode the server runs in.
#[utoipa::path(get, path = "/api/v1/auth/status", tag = "auth",
    responses((status = 200, body = SetupStatusResponse)))]
pub async fn status(State(state): State<AppState>) -> Result<Json<SetupStatusResponse>, ApiError> {
    let s = service::auth::status(&state).await?;
    Ok(Json(SetupStatusResponse {
        setup_required: s.setup_required,
        multiuser_enabled: s.multiuser_enabled,
        strict_password_checking: s.strict_password_checking,
        admin_email: None,
    }))
}

/// Creates the first administrator (multi-user mode, while no active admin exists).
#[utoipa::path(post, path = "/api/v1/auth/setup", tag = "auth", request_body = SetupRequest,
    responses((status = 200, body = SetupResponse), (status = 400), (status = 403), (status = 422)))]
pub async fn setup(
    State(state): State<AppState>,
    client: ClientInfo,
    Body(input): Body<service::auth::SetupInput>,
) -> Result<Json<SetupResponse>, ApiError> {
    let user = service::auth::setup(&state, input, client.addr, Utc::now()).await?;
    Ok(Json(SetupResponse {
        success: true,
        user: UserDTO::from(&user),
    }))
}

/// Signs in; returns a token and sets the media cookie.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401), (status = 403), (status = 422), (status = 429)))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    Body(input): Body<service::auth::LoginInput>,
) -> Result<Response, ApiError> {
    let out = service::auth::login(&state, input, client.addr, Utc::now()).await?;
    let cookie = media_cookie_header(&state, &out.token, out.expires_in, client.https);
    let body = LoginResponse {
        token: out.token,
        user: UserDTO::from(&out.user),
        expires_in: out.expires_in,
    };
    Ok(with_cookie(Json(body).into_response(), cookie))
}

/// Signs out: clears the media cookie (the token itself stays valid until it expires).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 200, body = SuccessResponse), (status = 401)), security(("bearer" = [])))]
pub async fn logout(
    State(state): State<AppState>,
    _user: StrictUser,
    client: ClientInfo,
) -> Response {
    with_cookie(
        Json(SuccessResponse { success: true }).into_response(),
        media_cookie_header(&state, "", 0, client.https),
    )
}

/// Sets the media cookie from the presented Bearer token.
#[utoipa::path(post, path = "/api/v1/auth/media-cookie", tag = "auth",
    responses((status = 200, body = SuccessResponse), (status = 401)), security(("bearer" = [])))]
pub async fn media_cookie(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientInfo,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ok = Json(SuccessResponse { success: true }).into_response();
    let (Some(claims), Some(token)) = (user.claims, bearer_token(&headers)) else {
        return Ok(ok); // single-user mode: nothing to set
    };
    let left = TokenSigner::seconds_left(&claims, Utc::now().timestamp());
    if left <= 0 {
        return Err(ApiError::unauthorized("Invalid or expired token"));
    }
    Ok(with_cookie(
        ok,
        media_cookie_header(&state, token, left, client.https),
    ))
}

/// The signed-in user.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = UserDTO), (status = 401)), security(("bearer" = [])))]
pub async fn get_me(
    State(state): State<AppState>,
    StrictUser(auth): StrictUser,
) -> Result<Json<UserDTO>, ApiError> {
    let user = service::auth::me(&state, &auth.identity).await?;
    Ok(Json(UserDTO::from(&user)))
}

/// Changes the signed-in user's display name or password.
#[utoipa::path(patch, path = "/api/v1/auth/me", tag = "auth", request_body = UserProfileUpdateRequest,
    responses((status = 200, body = UserDTO), (status = 400), (status = 401), (status = 422)), security(("bearer" = [])))]
pub async fn patch_me(
    State(state): State<AppState>,
    StrictUser(auth): StrictUser,
    client: ClientInfo,
    Body(input): Body<service::auth::UpdateMeInput>,
) -> Result<Response, ApiError> {
    let (user, token) =
        service::auth::update_me(&state, &auth.identity, input, client.addr, Utc::now()).await?;
    let response = Json(UserDTO::from(&user)).into_response();
    Ok(with_replacement_token(
        &state,
        response,
        token,
        auth.identity.remember_me,
        client.https,
    ))
}

/// A random strong password (nothing is stored).
#[utoipa::path(get, path = "/api/v1/auth/generate-password", tag = "auth",
    responses((status = 200, body = GeneratePasswordResponse), (status = 401)), security(("bearer" = [])))]
pub async fn generate(_user: StrictUser) -> Json<GeneratePasswordResponse> {
    Json(GeneratePasswordResponse {
        password: generate_password(),
    })
}

fn origin(client: &ClientInfo) -> Origin {
    Origin {
        client: client.addr.map(|a| a.to_string()),
    }
}

/// Every account (newest first, at most 100; `system` hidden). Admins only.
#[utoipa::path(get, path = "/api/v1/auth/users", tag = "users",
    responses((status = 200, body = Vec<UserDTO>), (status = 401), (status = 403)), security(("bearer" = [])))]
pub async fn list_users(
    State(state): State<AppState>,
    StrictAdmin(auth): StrictAdmin,
) -> Result<Json<Vec<UserDTO>>, ApiError> {
    let proof = AdminProof::from_admin(&auth.identity);
    let users = service::users::list(&state, &proof).await?;
    Ok(Json(users.iter().map(UserDTO::from).collect()))
}

/// Creates an account. Admins only.
#[utoipa::path(post, path = "/api/v1/auth/users", tag = "users", request_body = UserCreateRequest,
    responses((status = 201, body = UserDTO), (status = 400), (status = 401), (status = 403), (status = 422)), security(("bearer" = [])))]
pub async fn create_user(
    State(state): State<AppState>,
    StrictAdmin(auth): StrictAdmin,
    client: ClientInfo,
    Body(input): Body<CreateUserInput>,
) -> Result<(StatusCode, Json<UserDTO>), ApiError> {
    let proof = AdminProof::from_admin(&auth.identity);
    let policy = service::auth::policy(&state);
    let user =
        service::users::create(&state, &proof, policy, input, &origin(&client), Utc::now()).await?;
    Ok((StatusCode::CREATED, Json(UserDTO::from(&user))))
}

/// One account, `system` included. Admins only.
#[utoipa::path(get, path = "/api/v1/auth/users/{user_id}", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 200, body = UserDTO), (status = 401), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn get_user(
    State(state): State<AppState>,
    StrictAdmin(auth): StrictAdmin,
    Path(user_id): Path<String>,
) -> Result<Json<UserDTO>, ApiError> {
    let proof = AdminProof::from_admin(&auth.identity);
    let user = service::users::get(&state, &proof, &UserId::new(user_id)).await?;
    Ok(Json(UserDTO::from(&user)))
}

/// Changes an account's name, password, role or status. Admins only.
#[utoipa::path(patch, path = "/api/v1/auth/users/{user_id}", tag = "users", request_body = AdminUserUpdateRequest,
    params(("user_id" = String, Path)),
    responses((status = 200, body = UserDTO), (status = 400), (status = 401), (status = 403), (status = 404), (status = 422)), security(("bearer" = [])))]
pub async fn update_user(
    State(state): State<AppState>,
    StrictAdmin(auth): StrictAdmin,
    client: ClientInfo,
    Path(user_id): Path<String>,
    Body(input): Body<UpdateUserInput>,
) -> Result<Response, ApiError> {
    let proof = AdminProof::from_admin(&auth.identity);
    let policy = service::auth::policy(&state);
    let (user, token) = service::users::update(
        &state,
        &proof,
        policy,
        &UserId::new(user_id),
        input,
        &origin(&client),
        Utc::now(),
    )
    .await?;
    let response = Json(UserDTO::from(&user)).into_response();
    Ok(with_replacement_token(
        &state,
        response,
        token,
        auth.identity.remember_me,
        client.https,
    ))
}

/// Deletes an account; its content stays. Admins only.
#[utoipa::path(delete, path = "/api/v1/auth/users/{user_id}", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn delete_user(
    State(state): State<AppState>,
    StrictAdmin(auth): StrictAdmin,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let proof = AdminProof::from_admin(&auth.identity);
    service::users::delete(
        &state,
        &proof,
        &UserId::new(user_id),
        &origin(&client),
        Utc::now(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
