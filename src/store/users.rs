//! Users and the identities (phone, email) that lead to them.

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{decode, encode, flatten, unix_now, Store, StoreError};
use crate::domain::{Email, Identity, PhoneNumber, UserId};

/// An account. Created by the first successful verify of a phone or email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub phone: Option<PhoneNumber>,
    pub email: Option<Email>,
    pub display_name: Option<String>,
    pub forward_sms: bool,
    pub forward_email: bool,
    pub created_at: u64,
}

impl Store {
    pub fn user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.inner
            .users
            .get(id.as_bytes())?
            .map(|bytes| decode("users", &bytes))
            .transpose()
    }

    pub fn user_id_by_identity(&self, identity: &Identity) -> Result<Option<UserId>, StoreError> {
        Ok(self
            .inner
            .identities
            .get(identity.key().as_bytes())?
            .and_then(|bytes| <[u8; UserId::BYTES]>::try_from(bytes.as_ref()).ok())
            .map(UserId::from_bytes))
    }

    /// The account of `identity`, created if there is none; `true` when it was created.
    /// Atomic: two concurrent first logins of one identity make one account.
    pub fn user_for_identity(&self, identity: &Identity) -> Result<(User, bool), StoreError> {
        let key = identity.key();
        let fresh = User {
            id: UserId::random(),
            phone: match identity {
                Identity::Phone(p) => Some(p.clone()),
                Identity::Email(_) => None,
            },
            email: match identity {
                Identity::Email(e) => Some(e.clone()),
                Identity::Phone(_) => None,
            },
            display_name: None,
            forward_sms: false,
            forward_email: false,
            created_at: unix_now(),
        };
        let result = (&self.inner.identities, &self.inner.users).transaction(|(ids, users)| {
            if let Some(existing) = ids.get(key.as_bytes())? {
                let user = users
                    .get(&existing)?
                    .ok_or_else(|| {
                        ConflictableTransactionError::Abort(StoreError::Corrupt {
                            tree: "identities",
                            detail: format!("{key} points at a missing user"),
                        })
                    })
                    .and_then(|bytes| {
                        decode::<User>("users", &bytes).map_err(ConflictableTransactionError::Abort)
                    })?;
                return Ok((user, false));
            }
            ids.insert(key.as_bytes(), fresh.id.as_bytes().as_slice())?;
            users.insert(fresh.id.as_bytes().as_slice(), encode(&fresh))?;
            Ok((fresh.clone(), true))
        });
        result.map_err(flatten)
    }
}
