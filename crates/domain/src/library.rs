//! The workflow library and style presets: their categories, the access predicates of
//! workflows-and-state.md §1.7 and §3.4, the listing scope of §1.6, and the small document
//! rules (the `shared` tag, semantic versions) that services apply before storing.
//!
//! Invariants kept here: in single-user mode the caller is the synthetic `system` admin, so
//! "single-user or admin" is simply `is_admin()`; a workflow's `is_public` never matters for
//! the `default` category (its column is inconsistent by history, §4.7).

use crate::ids::UserId;
use crate::user::Identity;

/// The category a workflow document declares in `meta.category`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowCategory {
    User,
    Default,
}

impl WorkflowCategory {
    pub const NAMES: [&'static str; 2] = ["user", "default"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Default => "default",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "user" => Some(Self::User),
            "default" => Some(Self::Default),
            _ => None,
        }
    }
}

/// What the workflow predicates need to know about a row.
#[derive(Debug, Clone, Copy)]
pub struct WorkflowAccess<'a> {
    pub owner: &'a UserId,
    pub category: WorkflowCategory,
    pub is_public: bool,
}

/// WfRead: admin (single-user included), a default workflow, the owner, or a shared one.
pub fn can_read_workflow(me: &Identity, w: WorkflowAccess<'_>) -> bool {
    me.is_admin()
        || w.category == WorkflowCategory::Default
        || &me.user_id == w.owner
        || w.is_public
}

/// WfWrite: admin (single-user included) or the owner. Default and `system` rows are
/// therefore administrators' only.
pub fn can_write_workflow(me: &Identity, w: WorkflowAccess<'_>) -> bool {
    me.owns_or_admin(w.owner)
}

/// Whether a listing (or tag/count query) is restricted to the caller's own rows plus the
/// default ones: non-admins only, when `user` workflows may be listed (`categories` absent
/// or naming `user`) and the caller did not ask for shared rows only (`is_public=true`).
pub fn workflow_listing_scoped(
    me: &Identity,
    categories: Option<&[WorkflowCategory]>,
    is_public: Option<bool>,
) -> bool {
    if me.is_admin() || is_public == Some(true) {
        return false;
    }
    categories.is_none_or(|c| c.contains(&WorkflowCategory::User))
}

/// The tag a shared workflow carries.
pub const SHARED_TAG: &str = "shared";

/// Rewrites a comma-separated tag list for a sharing change: adds `shared` when sharing,
/// removes it when unsharing; tags are trimmed, empty ones dropped, joined with `", "`.
pub fn retag_for_sharing(tags: &str, shared: bool) -> String {
    let mut list: Vec<&str> = tags
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if shared {
        if !list.contains(&SHARED_TAG) {
            list.push(SHARED_TAG);
        }
    } else {
        list.retain(|t| *t != SHARED_TAG);
    }
    list.join(", ")
}

/// Whether `value` is a semantic version (`MAJOR.MINOR.PATCH[-pre][+build]`, semver 2.0.0).
pub fn is_semver(value: &str) -> bool {
    let (rest, build) = match value.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (value, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let numeric = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        return false;
    }
    let pre_ok = pre.is_none_or(|p| {
        p.split('.')
            .all(|id| ident(id) && (!id.bytes().all(|b| b.is_ascii_digit()) || numeric(id)))
    });
    let build_ok = build.is_none_or(|b| b.split('.').all(ident));
    pre_ok && build_ok
}

/// A style preset's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresetType {
    User,
    Default,
}

impl PresetType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Default => "default",
        }
    }

    /// Parses a request value; stored values other than `default` read as `user`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "user" => Some(Self::User),
            "default" => Some(Self::Default),
            _ => None,
        }
    }

    pub fn from_stored(value: &str) -> Self {
        Self::parse(value).unwrap_or(Self::User)
    }
}

/// What the preset predicates need to know about a row.
#[derive(Debug, Clone, Copy)]
pub struct PresetAccess<'a> {
    pub owner: &'a UserId,
    pub kind: PresetType,
    pub is_public: bool,
}

/// PresetRead: admin, a default preset, a public one, or the owner.
pub fn can_read_preset(me: &Identity, p: PresetAccess<'_>) -> bool {
    me.is_admin() || p.kind == PresetType::Default || p.is_public || &me.user_id == p.owner
}

/// Why PresetWrite refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresetRefusal {
    /// `Default style presets cannot be modified`.
    DefaultPreset,
    /// `Not authorized to modify this style preset`.
    NotOwner,
}

/// PresetWrite: admins always; otherwise never a default preset, and only the owner's own.
pub fn check_preset_write(me: &Identity, p: PresetAccess<'_>) -> Result<(), PresetRefusal> {
    if me.is_admin() {
        Ok(())
    } else if p.kind == PresetType::Default {
        Err(PresetRefusal::DefaultPreset)
    } else if &me.user_id == p.owner {
        Ok(())
    } else {
        Err(PresetRefusal::NotOwner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, admin: bool) -> Identity {
        Identity {
            user_id: UserId::new(id),
            email: format!("{id}@x.com"),
            is_admin: admin,
            remember_me: false,
            token_epoch: 0,
        }
    }

    #[test]
    fn workflow_matrix() {
        let owner = UserId::new("o");
        let system = UserId::new("system");
        let (o, u, a) = (user("o", false), user("u", false), user("a", true));
        let wf = |owner, category, is_public| WorkflowAccess {
            owner,
            category,
            is_public,
        };
        let private = wf(&owner, WorkflowCategory::User, false);
        let shared = wf(&owner, WorkflowCategory::User, true);
        let default = wf(&system, WorkflowCategory::Default, false);
        let legacy = wf(&system, WorkflowCategory::User, true);
        assert!(can_read_workflow(&o, private) && can_write_workflow(&o, private));
        assert!(!can_read_workflow(&u, private) && !can_write_workflow(&u, private));
        for w in [shared, default, legacy] {
            assert!(can_read_workflow(&u, w) && !can_write_workflow(&u, w));
            assert!(can_read_workflow(&a, w) && can_write_workflow(&a, w));
        }
        assert!(can_write_workflow(&Identity::system_admin(), private));
    }

    #[test]
    fn listing_scope() {
        let u = user("u", false);
        let user_only = [WorkflowCategory::User];
        let defaults = [WorkflowCategory::Default];
        assert!(workflow_listing_scoped(&u, None, None));
        assert!(workflow_listing_scoped(&u, Some(&user_only), Some(false)));
        assert!(!workflow_listing_scoped(&u, Some(&user_only), Some(true)));
        assert!(!workflow_listing_scoped(&u, Some(&defaults), None));
        assert!(!workflow_listing_scoped(&user("a", true), None, None));
    }

    #[test]
    fn sharing_rewrites_tags() {
        assert_eq!(retag_for_sharing("a,b", true), "a, b, shared");
        assert_eq!(retag_for_sharing("", true), "shared");
        assert_eq!(retag_for_sharing(" shared , x ,", true), "shared, x");
        assert_eq!(retag_for_sharing("a, shared, b", false), "a, b");
        assert_eq!(retag_for_sharing("sharedx", false), "sharedx");
    }

    #[test]
    fn semantic_versions() {
        for ok in [
            "1.0.0",
            "3.0.0",
            "10.20.30",
            "1.0.0-alpha.1",
            "1.0.0+build.5",
            "0.0.0",
        ] {
            assert!(is_semver(ok), "{ok}");
        }
        for bad in [
            "1.0", "1", "01.0.0", "1.0.0-", "x.y.z", "", "1.0.0-01", "v1.0.0",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
    }

    #[test]
    fn preset_matrix() {
        let owner = UserId::new("o");
        let (o, u, a) = (user("o", false), user("u", false), user("a", true));
        let p = |kind, is_public| PresetAccess {
            owner: &owner,
            kind,
            is_public,
        };
        let private = p(PresetType::User, false);
        let public = p(PresetType::User, true);
        let default = p(PresetType::Default, false);
        assert!(can_read_preset(&o, private) && check_preset_write(&o, private).is_ok());
        assert!(!can_read_preset(&u, private));
        assert_eq!(
            check_preset_write(&u, private),
            Err(PresetRefusal::NotOwner)
        );
        assert!(can_read_preset(&u, public));
        assert_eq!(check_preset_write(&u, public), Err(PresetRefusal::NotOwner));
        assert!(can_read_preset(&u, default));
        assert_eq!(
            check_preset_write(&u, default),
            Err(PresetRefusal::DefaultPreset)
        );
        assert!(check_preset_write(&a, default).is_ok() && can_read_preset(&a, private));
    }
}
