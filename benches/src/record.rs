//! The value every benchmark caches: a user record of about 1 KB of JSON.

use serde::{Deserialize, Serialize};

/// A user record as a typical service caches it: scalars, nested objects, a list and some
/// free text; its JSON is about 1 KB ([`User::sample`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Primary key.
    pub id: u64,
    /// Login name.
    pub username: String,
    /// Display name.
    pub full_name: String,
    /// Contact address.
    pub email: String,
    /// Whether the account is enabled.
    pub active: bool,
    /// Role names.
    pub roles: Vec<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Last update time, RFC 3339.
    pub updated_at: String,
    /// Postal address.
    pub address: Address,
    /// User settings.
    pub preferences: Preferences,
    /// Free text.
    pub bio: String,
    /// Logins so far.
    pub login_count: u32,
    /// Account balance.
    pub balance: f64,
}

/// A postal address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Address {
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO country code.
    pub country: String,
}

/// User settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preferences {
    /// UI language.
    pub language: String,
    /// IANA time zone.
    pub timezone: String,
    /// UI theme.
    pub theme: String,
    /// Whether to send newsletters.
    pub newsletter: bool,
    /// Notification channels.
    pub notifications: Vec<String>,
}

impl User {
    /// The record benchmarked everywhere, for user `id`: about 1 KB of JSON.
    ///
    /// ```
    /// let user = cachekit_benches::User::sample(1);
    /// let len = serde_json::to_vec(&user).unwrap().len();
    /// assert!((900..=1200).contains(&len), "{len}");
    /// ```
    pub fn sample(id: u64) -> Self {
        Self {
            id,
            username: format!("user{id}"),
            full_name: "Ada Augusta King-Noel, Countess of Lovelace".into(),
            email: format!("user{id}@example.com"),
            active: true,
            roles: ["reader", "editor", "billing", "support"]
                .map(String::from)
                .to_vec(),
            created_at: "2024-03-18T09:21:44.512Z".into(),
            updated_at: "2025-11-02T17:05:09.031Z".into(),
            address: Address {
                street: "12 St James's Square".into(),
                city: "London".into(),
                postal_code: "SW1Y 4JH".into(),
                country: "GB".into(),
            },
            preferences: Preferences {
                language: "en-GB".into(),
                timezone: "Europe/London".into(),
                theme: "dark".into(),
                newsletter: false,
                notifications: ["email", "push", "sms"].map(String::from).to_vec(),
            },
            bio: "Mathematician and writer, chiefly known for her work on Charles Babbage's \
                  proposed mechanical general-purpose computer, the Analytical Engine. She was \
                  the first to recognise that the machine had applications beyond pure \
                  calculation, and published the first algorithm intended to be carried out \
                  by such a machine. Her notes describe how codes could be created for the \
                  device to handle letters and symbols along with numbers, and a method for \
                  the engine to repeat a series of instructions, a process known as looping \
                  that computer programs use today."
                .into(),
            login_count: 1843,
            balance: 1234.56,
        }
    }

    /// The JSON of [`User::sample`], as cachekit and raw redis-rs store it.
    pub fn sample_json(id: u64) -> Vec<u8> {
        serde_json::to_vec(&Self::sample(id)).expect("a user record encodes")
    }
}
