//! The types of the users example: what is cached, what is asked, what is written.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A user as everyone but the login sees it: everything but the password hash. This is the
/// type cached under `user:id:{id}` and in list and filter results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicUser {
    /// Primary key.
    pub id: i64,
    /// Unique, stored in lower case.
    pub email: String,
    /// Unique.
    pub username: String,
    /// Display name.
    pub full_name: String,
    /// Department.
    pub department: String,
    /// Whether the account may log in.
    pub active: bool,
}

/// A user to create. Holds a plain password, so it is neither `Serialize` nor shown by
/// `Debug`.
#[derive(Clone)]
pub struct NewUser {
    /// Email address; stored in lower case.
    pub email: String,
    /// Username.
    pub username: String,
    /// Display name.
    pub full_name: String,
    /// Department.
    pub department: String,
    /// The password, hashed before it is stored.
    pub password: String,
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("email", &self.email)
            .field("username", &self.username)
            .field("full_name", &self.full_name)
            .field("department", &self.department)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    /// New email address.
    pub email: Option<String>,
    /// New username.
    pub username: Option<String>,
    /// New display name.
    pub full_name: Option<String>,
    /// New department.
    pub department: Option<String>,
    /// Activate or deactivate the account.
    pub active: Option<bool>,
}

/// The column a filter sorts by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    /// Creation order.
    #[default]
    Id,
    /// Username.
    Username,
    /// Display name.
    FullName,
}

impl SortBy {
    pub(crate) fn column(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Username => "username",
            Self::FullName => "full_name",
        }
    }
}

/// The conditions, order and page of a filter query. Its serde_json form is hashed into the
/// cache key (`users:filter:{sha256}`): equal filters share an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFilter {
    /// Only active (or only inactive) users.
    pub active: Option<bool>,
    /// Only this department.
    pub department: Option<String>,
    /// Display name contains this text (case-insensitive for ASCII).
    pub name_contains: Option<String>,
    /// Sort column.
    pub sort_by: SortBy,
    /// Sort descending.
    pub descending: bool,
    /// Rows to skip.
    pub skip: u32,
    /// Page size, at most 100.
    pub limit: u32,
}

impl Default for UserFilter {
    /// Everyone, by id, 20 to a page.
    fn default() -> Self {
        Self {
            active: None,
            department: None,
            name_contains: None,
            sort_by: SortBy::Id,
            descending: false,
            skip: 0,
            limit: 20,
        }
    }
}

/// One page of a filter query, with the total count of matching rows (the seed's
/// `users:filter:paginated` answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// Rows matching the filter, over all pages.
    pub total: u64,
    /// Rows skipped.
    pub skip: u32,
    /// Page size.
    pub limit: u32,
}

/// What a user may do. A user's set is computed from their roles and cached for an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// See projects.
    ViewProjects,
    /// Change projects.
    EditProjects,
    /// See reports.
    ViewReports,
    /// Approve budgets.
    ApproveBudgets,
    /// Create, change and deactivate users.
    ManageUsers,
    /// Grant and revoke roles.
    ManageRoles,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Self; 6] = [
        Self::ViewProjects,
        Self::EditProjects,
        Self::ViewReports,
        Self::ApproveBudgets,
        Self::ManageUsers,
        Self::ManageRoles,
    ];

    /// The name stored in the database and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ViewProjects => "view_projects",
            Self::EditProjects => "edit_projects",
            Self::ViewReports => "view_reports",
            Self::ApproveBudgets => "approve_budgets",
            Self::ManageUsers => "manage_users",
            Self::ManageRoles => "manage_roles",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| s.to_owned())
    }
}

/// A role a user holds; each grants a fixed set of permissions (the `role_permissions` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Runs a program of projects.
    ProgramManager,
    /// Runs projects.
    ProjectManager,
    /// Reads.
    Viewer,
}

impl Role {
    /// Every role.
    pub const ALL: [Self; 4] = [
        Self::Admin,
        Self::ProgramManager,
        Self::ProjectManager,
        Self::Viewer,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::ProgramManager => "program_manager",
            Self::ProjectManager => "project_manager",
            Self::Viewer => "viewer",
        }
    }

    /// The permissions the role grants.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Self::Admin => &Permission::ALL,
            Self::ProgramManager => &[ViewProjects, EditProjects, ViewReports, ApproveBudgets],
            Self::ProjectManager => &[ViewProjects, EditProjects, ViewReports],
            Self::Viewer => &[ViewProjects],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.as_str())
            );
        }
        assert!("fly".parse::<Permission>().is_err());
    }
}
